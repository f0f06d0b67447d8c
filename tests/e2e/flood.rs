//! A stranger (the registry's namespace: no loopback address, no key) holds 2,100 half-open
//! connections against a node's mirror port and 2,100 against its metrics port, more than the
//! default connection limit (2,048) on each. Meanwhile the kubelet-style probes answer, a real
//! P2P pull from that node succeeds, and the node's log gets at most two lines a second for it.
//!
//! CI runs it for 8 s; `scripts/flood` runs the same test for 30 s (`SHOAL_FLOOD_SECS`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_tests::flood::{self, Probe};
use shoal_tests::{Daemon, METRICS_PORT, MIRROR_PORT, Rig, TestImage, shoal_cluster};

/// Half-open connections per port: above the default `--max-connections` (2048).
const PER_PORT: usize = 2_100;
const PROBES: usize = 20;
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

fn flood_secs() -> u64 {
    std::env::var("SHOAL_FLOOD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
        .clamp(4, 120)
}

fn log_len(d: &Daemon) -> usize {
    std::fs::read(d.process().log_path()).map_or(0, |b| b.len())
}

fn check_probes(what: &str, probes: &[Probe]) {
    let bad: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.status != 200 || p.took > PROBE_TIMEOUT)
        .collect();
    let slowest = probes.iter().map(|p| p.took).max().unwrap_or_default();
    println!(
        "{what}: {}/{} answered 200 within {PROBE_TIMEOUT:?}, slowest {slowest:?}",
        probes.len() - bad.len(),
        probes.len()
    );
    assert_eq!(probes.len(), PROBES);
    assert!(
        bad.is_empty(),
        "{what} probes failed under the flood: {bad:?}"
    );
}

#[test]
fn a_flood_of_half_open_connections_changes_nothing_for_the_node() {
    let secs = flood_secs();
    let rig = Rig::builder().nodes(2).start();
    let img = TestImage::small();
    rig.registry().push(&img);
    let [d1, d2] = <[Daemon; 2]>::try_from(shoal_cluster(&rig)).unwrap();
    rig.node(0).pull(img.reference()).unwrap();
    for (digest, _, _) in img.blobs() {
        d2.wait_found(&img, &digest);
    }
    // Node 2 can now only get the image from node 1, through the flooded port.
    rig.registry().stop();

    let mirror = SocketAddr::from((d1.ip(), MIRROR_PORT));
    let metrics = SocketAddr::from((d1.ip(), METRICS_PORT));
    let log_from = log_len(&d1);
    let started = Instant::now();
    let flood = flood::half_open_flood(
        rig.registry().netns(),
        vec![mirror, metrics],
        PER_PORT,
        Duration::from_secs(secs),
    );
    // Let the flood fill both tables, then probe from the node itself like the kubelet.
    std::thread::sleep(Duration::from_secs(2));
    let every = Duration::from_millis((secs - 3) * 1000 / PROBES as u64);
    let ns = rig.node(0).netns();
    let health = flood::probes(ns, metrics, "/healthz", PROBES, every, PROBE_TIMEOUT);
    let ready = flood::probes(ns, metrics, "/readyz", PROBES, every, PROBE_TIMEOUT);
    let pulled = rig.node(1).pull(img.reference());
    let pulled_at = started.elapsed();
    let health = health.join().expect("health probes");
    let ready = ready.join().expect("readiness probes");
    let report = flood.join().expect("flood");
    let flood_took = started.elapsed();
    let log = std::fs::read(d1.process().log_path()).unwrap_or_default();
    let during = String::from_utf8_lossy(&log[log_from.min(log.len())..]).into_owned();

    println!("flood {secs} s: {report:?}");
    pulled.unwrap_or_else(|e| panic!("P2P pull during the flood: {e}"));
    assert!(
        pulled_at < flood_took,
        "the pull ended after the flood ({pulled_at:?})"
    );
    check_probes("/healthz", &health);
    check_probes("/readyz", &ready);
    // The flood was real: both tables full (the limit is per port), connections refused.
    assert!(
        report.peak_open >= 4_000,
        "the flood never held 4,000 connections: {report:?}"
    );
    let refused = d1.metric("shoal_refusals_total", &[]);
    assert!(refused >= 1_000.0, "only {refused} refusals counted");

    // The log: only the rate-limited refusal lines mention the stranger or a refusal.
    let stranger = format!("{}:", rig.registry().ip());
    let flood_lines: Vec<&str> = during
        .lines()
        .filter(|l| l.contains(&stranger) || l.contains("refusal"))
        .collect();
    let allowed = 2 * (flood_took.as_secs() as usize + 1);
    println!(
        "log during the flood: {} lines in {flood_took:?}, {} about the flood (at most {allowed})",
        during.lines().count(),
        flood_lines.len()
    );
    assert!(
        flood_lines.len() <= allowed,
        "{} log lines about the flood in {flood_took:?}:\n{}",
        flood_lines.len(),
        flood_lines.join("\n")
    );
    assert!(
        flood_lines.iter().any(|l| l.contains("suppressed=")),
        "no refusal line logged"
    );
    assert!(d2.metric("shoal_mirror_bytes_total", &["source=\"peer\""]) > 0.0);
}
