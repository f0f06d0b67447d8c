//! What the probes mean, against a real containerd: `/readyz` follows containerd (not ready
//! within 5 s of it stopping, ready within 5 s of it answering again) while `/healthz` stays up.

use std::time::{Duration, Instant};

use shoal_tests::{Daemon, METRICS_PORT, Rig};

const WITHIN: Duration = Duration::from_secs(5);

fn probe(d: &Daemon, path: &str) -> (u16, String) {
    let (code, body) = d.http_get(&format!("http://127.0.0.1:{METRICS_PORT}{path}"), &[]);
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `/readyz` until it answers `want`; returns how long that took and the last body.
fn until_readyz(d: &Daemon, want: u16) -> (Duration, String) {
    let started = Instant::now();
    loop {
        let (code, body) = probe(d, "/readyz");
        if code == want {
            return (started.elapsed(), body);
        }
        assert!(
            started.elapsed() < WITHIN,
            "/readyz still {code} ({body:?}) {WITHIN:?} after the change\n{}",
            d.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readyz_follows_containerd() {
    let rig = Rig::builder().nodes(1).start();
    let d = rig.node(0).shoal().start();
    d.wait_ready(Duration::from_secs(20));

    rig.node(0).kill_containerd();
    let (took, body) = until_readyz(&d, 503);
    println!("not ready {took:?} after containerd stopped: {body:?}");
    assert!(body.contains("containerd"), "{body:?}");
    // Liveness is not readiness: Shoal itself is fine and must not be restarted.
    assert_eq!(probe(&d, "/healthz").0, 200);

    rig.node(0).start_containerd();
    let (took, _) = until_readyz(&d, 200);
    println!("ready again {took:?} after containerd answered");
}
