//! Multi-peer benchmark on the real rig (root; not part of `cargo test`):
//! `cargo bench -p shoal-benches --bench multi`.
//!
//! Three holders (nodes 0–2) hold the 1 GiB image, each with its uplink limited by `tc tbf`
//! (`HOLDER_MBIT`). Two pullers ask their local Shoal for the 1 GiB layer with `curl`, in
//! alternating runs: node 3 with the defaults (multi-peer, up to 4 peers per blob) and node 4
//! with `--max-peers-per-blob 1` (one peer at a time, the pre-multi-peer behaviour). Both
//! stream checked pieces when the holders publish piece lists (as they do once they hold the
//! layer), so `curl` measures what containerd waits for: time to the first byte and to the
//! last. The puller daemons' RSS is sampled during every transfer.

use std::time::Duration;

use shoal_benches::{rss_kib, with_peak_rss};
use shoal_tests::{Node, Rig, TestImage};

const RUNS: usize = 3;
const HOLDER_MBIT: u32 = 200;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One `curl` GET inside the node's namespace; returns (seconds, seconds to the first body
/// byte, bytes).
fn curl_time(node: &Node, url: &str) -> (f64, f64, u64) {
    let out = node.exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{time_total} %{time_starttransfer} %{size_download}",
        url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.split_whitespace();
    let mut next = || f.next().expect("curl timing");
    let (t, first) = (next().parse().expect("time"), next().parse().expect("time"));
    (t, first, next().parse().expect("size"))
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
    let (mut multi_first, mut single_first) = (Vec::new(), Vec::new());
    let (mut multi_rss, mut single_rss) = (0, 0);
    for _ in 0..RUNS {
        let url = multi.blob_url(&huge, &layer);
        let ((t, first, n), rss) =
            with_peak_rss(multi.process().pid(), || curl_time(rig.node(3), &url));
        assert_eq!(n, size, "full blob, three holders\n{}", multi.log_tail());
        multi_s.push(t);
        multi_first.push(first);
        multi_rss = multi_rss.max(rss);
        let url = single.blob_url(&huge, &layer);
        let ((t, first, n), rss) =
            with_peak_rss(single.process().pid(), || curl_time(rig.node(4), &url));
        assert_eq!(n, size, "full blob, one holder\n{}", single.log_tail());
        single_s.push(t);
        single_first.push(first);
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
        "| time to first byte (median of {RUNS}) | {:.3} s | {:.3} s | |",
        median(multi_first.clone()),
        median(single_first.clone())
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
