//! Generates the admin API (`proto/shoal/admin/v1/admin.proto`) with tonic-prost-build at build
//! time, so the Rust code always matches the checked-in proto and nothing generated is committed.
//! Needs `protoc` (Debian: protobuf-compiler), as containerd-client already does.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto = root.join("shoal/admin/v1/admin.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `--json` prints the API's own messages; field names are the proto's.
        .type_attribute(
            ".shoal.admin.v1",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .protoc_arg("--experimental_allow_proto3_optional")
        .compile_protos(&[proto], &[root])?;
    Ok(())
}
