//! `scripts/demo`: a one-node rig, two images pulled over CRI (one from the allowlisted
//! docker.io, one from a private `harbor.test`), and what `shoal content` reports about the node.
//! Runs without `cargo test`; everything is torn down when it ends.

use std::process::ExitCode;

use shoal_tests::{Rig, TestImage, shoal_bin};

fn main() -> ExitCode {
    let shoal = shoal_bin();
    let rig = Rig::builder().nodes(1).start();
    let node = rig.node(0);
    println!(
        "rig up in {:.2?}: registry {} ({}), node {} {} ({})",
        rig.startup_time(),
        rig.registry().addr(),
        rig.registry().netns(),
        node.name(),
        node.ip(),
        node.netns()
    );
    let public = TestImage::small();
    let private = TestImage::small_at("harbor.test/team/app:v1");
    for img in [&public, &private] {
        rig.registry().push(img);
        match node.cri_pull(img.reference()) {
            Ok(took) => println!(
                "CRI pull {} ({}) in {took:.2?}",
                img.reference(),
                img.manifest_digest()
            ),
            Err(e) => {
                eprintln!("demo: pull failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let sock = node.containerd_socket().display().to_string();
    let content = node.content_dir().display().to_string();
    let shoal = shoal.to_str().expect("utf-8 path");
    let mut ok = true;
    for extra in [&["--json"][..], &[][..]] {
        let mut argv = vec![
            shoal,
            "content",
            "--containerd-socket",
            &sock,
            "--containerd-content-dir",
            &content,
        ];
        argv.extend_from_slice(extra);
        println!("\n$ {}", argv.join(" "));
        let out = node.exec(&argv);
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            eprintln!("demo: `shoal content` failed ({})", out.status);
            ok = false;
        }
    }
    drop(rig);
    println!("\nrig torn down");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
