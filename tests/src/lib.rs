//! The Shoal test rig: real components (docker-registry, containerd, the `shoal` binary) in
//! network namespaces, driven from tests through a small synchronous API. See `rig-api.md` for
//! the contract; a sketch:
//!
//! ```no_run
//! use shoal_tests::{Rig, TestImage};
//! let rig = Rig::builder().nodes(2).start();
//! let img = TestImage::small();
//! rig.registry().push(&img);
//! rig.node(0).pull(img.reference()).unwrap();
//! ```
//!
//! Needs root and the Debian packages `scripts/test` installs; panics with a clear message
//! otherwise, never skips. Safety: every rig covers its subnet with an `unreachable` route in the
//! root namespace before creating namespaces, and talks to node addresses only from inside them.

mod alloc;
mod cmd;
mod containerd;
mod cri;
pub mod flood;
mod images;
mod layout;
mod net;
mod node;
mod process;
mod registry;
mod rig;
mod shoal;
pub mod slow;
mod slow_proxy;
mod token;

use std::path::PathBuf;

pub use cmd::tail;
pub use containerd::{BIN_DIR_ENV, ROUTED_REGISTRIES, ctr_bin, ctr_pull_local_args, hosts_toml};
pub use cri::CriImage;
pub use images::{BIG_FILE_BYTES, TestImage, split_reference};
pub use node::Node;
pub use process::Process;
pub use registry::Registry;
pub use rig::{Rig, RigBuilder, write_psk};
pub use shoal::{
    Daemon, DaemonBuilder, METRICS_PORT, MIRROR_PORT, P2P_PORT, metric_sum, shoal_cluster,
    shoal_cluster_with, wait_meshed,
};
pub use slow_proxy::SlowProxy;
pub use token::{BearerConfig, BearerRegistry, HangingListener, TOKEN_SERVICE, TokenCounts};

/// Tools the rig runs, with the Debian package providing each.
const TOOLS: [(&str, &str); 7] = [
    ("ip", "iproute2"),
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("curl", "curl"),
    ("iptables", "iptables"),
];

/// Panic unless we are root and every tool is installed.
fn preflight() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the shoal rig needs root (network namespaces, routes, containerd); run scripts/test as root"
    );
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(bin, pkg)| {
            if *pkg == "containerd" {
                !cmd::on_path(&containerd::bin_str(bin))
            } else {
                !cmd::on_path(bin)
            }
        })
        .map(|(bin, pkg)| format!("{bin} (Debian package {pkg})"))
        .collect();
    assert!(
        missing.is_empty(),
        "the shoal rig needs: {}; run scripts/test, which installs them",
        missing.join(", ")
    );
}

/// Path of the built `shoal` binary: `$SHOAL_BIN`, else `<target dir>/debug/shoal` next to the
/// running test or example. Panics if missing.
pub fn shoal_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHOAL_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "SHOAL_BIN={} does not exist", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    // Tests run from <target>/debug/deps/, examples from <target>/debug/examples/.
    let profile_dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") || d.ends_with("examples") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("the test binary lives in a target directory");
    let bin = profile_dir.join("shoal");
    assert!(
        bin.is_file(),
        "shoal binary not found at {}: run `cargo build -p shoal` first (or set SHOAL_BIN)",
        bin.display()
    );
    bin
}
