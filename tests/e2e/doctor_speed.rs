//! Item 4 of `shoal doctor`'s coverage: the registry endpoints of hosts.toml timed as a pull
//! uses them, on a real node: the rig's registry directly (fast) and the same registry behind
//! a slow link on the node's loopback (the seeds' tailnet), in both orders; containerd's own
//! pull shows which endpoint it uses.

use std::time::Duration;

use shoal_tests::{Rig, SlowProxy, TestImage};

use crate::cli::{assert_finding, check, write};
use crate::doctor::doctor;

const SLOW_PORT: u16 = 5040;

fn hosts(server: &str, first: &str, second: &str) -> String {
    let table = |u: &str| format!("[host.\"{u}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n");
    format!("server = \"{server}\"\n\n{}{}", table(first), table(second))
}

/// A fast endpoint after a slow one that answers is one containerd does not use: doctor times
/// both (`/v2/` and a 256 KiB ranged read of a layer the node holds), WARNs with the figures and
/// says to put the faster first; in that order the slow endpoint is still reported slow but
/// no longer "unused", and containerd's pull no longer touches it.
#[test]
fn doctor_times_endpoints_and_flags_the_fast_one_containerd_does_not_use() {
    let rig = Rig::builder().nodes(1).start();
    let n = rig.node(0);
    let img = TestImage::small();
    rig.registry().push(&img);
    let upstream = rig.registry().url();
    let slow_url = format!("http://127.0.0.1:{SLOW_PORT}");
    // 8 KiB per 75 ms: about 100 KB/s, the order of the seeds' tailnet; a read through it is
    // slower than the direct one by far more than the noise of a loaded machine.
    let proxy = SlowProxy::start(
        n,
        SLOW_PORT,
        &rig.registry().addr(),
        Duration::from_millis(75),
    );
    let file = n.hosts_dir().join("docker.io/hosts.toml");
    n.pull(img.reference()).unwrap();
    write(&file, &hosts(&upstream, &slow_url, &upstream));
    // containerd resolves through the slow endpoint first and keeps to it.
    n.pull(img.reference()).unwrap();
    assert!(proxy.connections() > 0, "containerd never used {slow_url}");

    let plain = n.dir().join("config.toml");
    let flags = ["--slow-after", "1s", "--timeout", "10s"];
    let (_, r, text) = doctor(n, &plain, &flags);
    let c = check(&r, "mirror-speed");
    eprintln!("mirror-speed, slow endpoint first: {c:#}");
    let ev = c["evidence"].to_string();
    assert_finding(
        &r,
        "mirror-speed",
        "warn",
        &format!("{upstream} is unused: its ranged read takes "),
        &format!("put the faster endpoint first in {}", file.display()),
    );
    assert!(
        c["fix"].as_str().unwrap().contains(&format!(
            "move [host.\"{upstream}\"] above [host.\"{slow_url}\"]"
        )),
        "{c}"
    );
    // The figures: both endpoints' /v2/ and read, the slow one in KB/s and over --slow-after.
    for want in [
        format!("{slow_url} (docker.io): /v2/ in "),
        format!("{upstream} (docker.io): /v2/ in "),
        "256.0 KiB in ".to_owned(),
        "slower than --slow-after 1s".to_owned(),
    ] {
        assert!(ev.contains(&want), "evidence lacks {want:?}: {c}");
    }
    let slow_line = c["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .find(|e| e.starts_with(&format!("{slow_url} (docker.io)")))
        .unwrap();
    assert!(slow_line.contains(" KB/s)"), "{slow_line}");
    assert!(text.contains("[mirror-speed]"), "{text}");

    // The fix applied: the fast endpoint first. The slow one is still slow, no longer unused,
    // and containerd's pull goes to the fast one only.
    write(&file, &hosts(&upstream, &upstream, &slow_url));
    let (_, r, _) = doctor(n, &plain, &flags);
    let c = check(&r, "mirror-speed");
    eprintln!("mirror-speed, fast endpoint first: {c:#}");
    assert!(!c["evidence"].to_string().contains("is unused"), "{c}");
    assert_finding(&r, "mirror-speed", "warn", "slower than --slow-after", "");
    let before = proxy.connections();
    n.pull(img.reference()).unwrap();
    assert_eq!(proxy.connections(), before, "containerd used {slow_url}");
}
