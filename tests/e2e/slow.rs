//! Slow readers against one node's mirror: a request limit's worth of clients taking a blob at a
//! byte a second hold their requests, and the node keeps answering: a normal request still gets
//! its bytes, and the request over the limit a fast 503 with the OCI error body. The limit (600)
//! is above tokio's blocking pool (512 threads), which a thread per reader used to exhaust.

use std::time::{Duration, Instant};

use shoal_tests::{MIRROR_PORT, Rig, TestImage};

const LIMIT: usize = 600;

/// Starts `n` slow readers of `path` in the node's namespace; waits for their statuses.
fn slow_readers(node: &shoal_tests::Node, path: &str, n: usize) -> shoal_tests::Process {
    let p = node.spawn(
        env!("CARGO_BIN_EXE_shoal-slow-readers"),
        &[
            &format!("127.0.0.1:{MIRROR_PORT}"),
            path,
            &n.to_string(),
            "120",
        ],
    );
    p.wait_for_log("ready", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("slow readers: {e}"));
    p
}

#[test]
fn slow_readers_at_the_request_limit_leave_a_normal_request_and_a_fast_503() {
    let rig = Rig::builder().nodes(1).start();
    let node = rig.node(0);
    let (big, small) = (TestImage::big(), TestImage::small());
    rig.registry().push(&big);
    rig.registry().push(&small);
    node.configure_shoal();
    node.pull(big.reference()).unwrap();
    node.pull(small.reference()).unwrap();
    let limit = LIMIT.to_string();
    let d = node
        .shoal()
        .args(&[
            "--max-concurrent-requests",
            &limit,
            "--max-connections",
            "1000",
        ])
        .start();
    d.wait_ready(Duration::from_secs(20));
    let (layer, _) = big.layers()[0].clone();
    let (small_layer, small_size) = small.layers()[0].clone();
    d.wait_found(&big, &layer);
    d.wait_found(&small, &small_layer);
    let path = d
        .blob_url(&big, &layer)
        .trim_start_matches(&d.local_mirror_url())
        .to_owned();

    // All but one slot held by readers that take a byte a second.
    let held = slow_readers(node, &path, LIMIT - 1);
    let statuses = shoal_tests::slow::statuses(&held.log());
    // For the record (benches/benches/slow.rs measures it properly).
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", d.process().pid())).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map_or_else(String::new, |l| l.to_owned())
    };
    eprintln!(
        "daemon beside {} slow readers: {statuses:?}; {}; {}",
        LIMIT - 1,
        field("VmRSS:"),
        field("Threads:")
    );
    assert_eq!(
        statuses.get(&200),
        Some(&(LIMIT - 1)),
        "every slow reader is served: {statuses:?}\n{}",
        d.log_tail()
    );
    // A normal request uses the last slot and gets every byte.
    let t = Instant::now();
    let (code, body) = d.http_get(&d.blob_url(&small, &small_layer), &[]);
    assert_eq!(code, 200, "{}", d.log_tail());
    assert_eq!(body.len() as u64, small_size);
    assert_eq!(shoal_oci::Digest::sha256_of(&body), small_layer);
    eprintln!(
        "normal GET beside {} slow readers: {:?}",
        LIMIT - 1,
        t.elapsed()
    );

    // The last slot taken too: the next request is refused at once, with the OCI error body.
    let last = slow_readers(node, &path, 1);
    assert_eq!(shoal_tests::slow::statuses(&last.log()).get(&200), Some(&1));
    let t = Instant::now();
    let (code, body) = d.http_get(&d.blob_url(&small, &small_layer), &[]);
    let elapsed = t.elapsed();
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body).expect("OCI error JSON");
    assert_eq!(json["errors"][0]["code"], "UNAVAILABLE");
    // Generous for a loaded CI machine; the old design answered after its 5 s local timeout.
    assert!(elapsed < Duration::from_secs(2), "503 after {elapsed:?}");
    // Health still answers.
    let (code, _) = d.http_get(
        &format!("http://127.0.0.1:{}/healthz", shoal_tests::METRICS_PORT),
        &[],
    );
    assert_eq!(code, 200);
    // Once the readers are gone, their slots are free again.
    drop(last);
    drop(held);
    let ok = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        d.http_get(&d.blob_url(&small, &small_layer), &[]).0 == 200
    });
    assert!(ok, "slots not released\n{}", d.log_tail());
}
