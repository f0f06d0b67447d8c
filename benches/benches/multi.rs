//! Multi-peer benchmark on the real rig (root; not part of `cargo test`):
//! `cargo bench -p shoal-benches --bench multi`.
//!
//! Three holders (nodes 0–2) hold the 1 GiB image, each with its uplink limited by `tc tbf`
//! (`HOLDER_MBIT`). Two pullers ask their local Shoal for the 1 GiB layer with `curl`, in
//! alternating runs: node 3 with the defaults (multi-peer, up to 4 peers per blob) and node 4
//! with `--max-peers-per-blob 1` (one peer at a time, the pre-multi-peer behaviour). Both
//! measure the same thing a containerd pull waits for: download, whole-blob verification,
//! then the bytes. The puller daemons' RSS is sampled during every transfer.

use std::time::Duration;

use shoal_benches::{rss_kib, with_peak_rss};
use shoal_tests::{Node, Rig, TestImage};

const RUNS: usize = 3;
const HOLDER_MBIT: u32 = 200;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One `curl` GET inside the node's namespace; returns (seconds, bytes).
fn curl_time(node: &Node, url: &str) -> (f64, u64) {
    let out = node.exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{time_total} %{size_download}",
        url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let (t, n) = text.split_once(' ').expect("curl timing");
    (t.parse().expect("time"), n.trim().parse().expect("size"))
}

fn main() {
    // `cargo bench` passes `--bench`; there are no options.
    let rig = Rig::builder().nodes(5).start();
    let huge = TestImage::huge();
    rig.registry().push(&huge);
    let first = rig.node(0).shoal().start();
    let mut daemons = vec![];
    for i in 1..5 {
        let b = rig.node(i).shoal().bootstrap(&first);
        let b = if i == 4 {
            b.args(&["--max-peers-per-blob", "1"])
        } else {
            b
        };
        daemons.push(b.start());
    }
    daemons.insert(0, first);
    for d in &daemons {
        d.wait_ready(Duration::from_secs(20));
    }
    for i in 0..3 {
        rig.node(i).pull(huge.reference()).unwrap();
    }
    let (layer, size) = huge.layers()[0].clone();
    let (multi, single) = (&daemons[3], &daemons[4]);
    // Wait until the multi-peer puller sees all three holders on the DHT.
    let layer_s = layer.to_string();
    let seen = (0..100).any(|_| {
        let out = multi.cli(&["find", &layer_s, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let n = v["blobs"][0]["holders"].as_array().map_or(0, Vec::len);
        n >= 3 || {
            std::thread::sleep(Duration::from_millis(300));
            false
        }
    });
    assert!(seen, "three holders not found\n{}", multi.log_tail());
    single.wait_found(&huge, &layer);
    rig.registry().stop();
    for i in 0..3 {
        rig.node(i).limit_rate(HOLDER_MBIT);
    }
    let idle_rss = rss_kib(multi.process().pid());

    let (mut multi_s, mut single_s) = (Vec::new(), Vec::new());
    let (mut multi_rss, mut single_rss) = (0, 0);
    for _ in 0..RUNS {
        let url = multi.blob_url(&huge, &layer);
        let ((t, n), rss) = with_peak_rss(multi.process().pid(), || curl_time(rig.node(3), &url));
        assert_eq!(n, size, "full blob, three holders\n{}", multi.log_tail());
        multi_s.push(t);
        multi_rss = multi_rss.max(rss);
        let url = single.blob_url(&huge, &layer);
        let ((t, n), rss) = with_peak_rss(single.process().pid(), || curl_time(rig.node(4), &url));
        assert_eq!(n, size, "full blob, one holder\n{}", single.log_tail());
        single_s.push(t);
        single_rss = single_rss.max(rss);
    }
    let explain = multi.cli(&["explain", &layer_s]);

    let (m, s) = (median(multi_s.clone()), median(single_s.clone()));
    println!("## Multi-peer benchmark (this run)\n");
    println!("holders' uplinks limited to {HOLDER_MBIT} Mbit/s each (tc tbf); blob {size} bytes\n");
    println!("| measurement | three holders | one holder | ratio |\n|---|---|---|---|");
    println!(
        "| 1 GiB blob GET through the puller's Shoal (median of {RUNS}) | {m:.2} s ({:.0} MB/s) | {s:.2} s ({:.0} MB/s) | {:.2}× faster |",
        size as f64 / m / 1e6,
        size as f64 / s / 1e6,
        s / m
    );
    println!(
        "| puller Shoal RSS, peak during the transfers (idle {:.1} MB) | {:.1} MB | {:.1} MB | |",
        idle_rss as f64 / 1024.0,
        multi_rss as f64 / 1024.0,
        single_rss as f64 / 1024.0
    );
    println!("\nraw seconds: three holders {multi_s:?}, one holder {single_s:?}");
    println!(
        "\nlast multi-peer request, `shoal explain`:\n{}",
        String::from_utf8_lossy(&explain.stdout)
    );
}
