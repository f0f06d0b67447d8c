//! Cold-rollout benchmark on the real rig (root; not part of `cargo test`):
//! `cargo bench -p shoal-benches --bench herd` (set `SHOAL_BENCH_NODES`, default 10).
//!
//! Every node pulls the same new image (one 200 MiB layer) through the CRI at the same moment,
//! with the registry's uplink limited by `tc tbf` (`SHOAL_BENCH_REGISTRY_MBIT`, default 200: an
//! upstream slower than the cluster's own network; `0` leaves it unlimited, the case where
//! streaming from one node has the least to gain). Runs alternate between the election on (the default) and off
//! (`--herd-wait 0`: today's behaviour, every node fetches upstream), each on a fresh rig.
//! Reported: the layer's bytes the registry served (÷ its size) and the rollout's time (the
//! last node's pull), medians over the runs, and the CPU the Shoals spent during each rollout
//! (`SHOAL_BENCH_CPU_EACH=1` also prints each node's).

use std::sync::Barrier;
use std::time::{Duration, Instant};

use shoal_benches::cpu_seconds;
use shoal_tests::{Rig, TestImage, shoal_cluster_with, wait_meshed};

const RUNS: usize = 2;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One rollout on a fresh rig; returns (registry bytes ÷ layer size, every node's seconds, the
/// CPU seconds every Shoal spent during it, summed).
fn rollout(nodes: usize, herd: bool, mbit: u32) -> (f64, Vec<f64>, f64) {
    let rig = Rig::builder().nodes(nodes).start();
    let img = TestImage::big();
    rig.registry().push(&img);
    let extra: &[&str] = if herd { &[] } else { &["--herd-wait", "0"] };
    let daemons = shoal_cluster_with(&rig, extra);
    // The election picks its arbiter among connected peers: wait for the full mesh.
    wait_meshed(&daemons, Duration::from_secs(30));
    if mbit > 0 {
        rig.registry().limit_rate(mbit);
    }
    let (layer, size) = img.layers().last().expect("a layer").clone();
    let shoal_cpu = || -> f64 { daemons.iter().map(|d| cpu_seconds(d.process().pid())).sum() };
    let cpu_before = shoal_cpu();
    let start = Barrier::new(nodes);
    let times: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = rig
            .nodes()
            .iter()
            .map(|node| {
                let (start, img) = (&start, &img);
                s.spawn(move || {
                    start.wait();
                    let t = Instant::now();
                    node.cri_pull(img.reference()).expect("pull");
                    t.elapsed().as_secs_f64()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("pull")).collect()
    });
    let served: u64 = rig
        .registry()
        .access_log()
        .lines()
        .filter(|l| l.contains("\"GET ") && l.contains(layer.hex()))
        .filter_map(|l| {
            l.split("\" ")
                .nth(1)?
                .split(' ')
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum();
    let cpu = shoal_cpu() - cpu_before;
    if std::env::var_os("SHOAL_BENCH_CPU_EACH").is_some() {
        let each: Vec<f64> = daemons
            .iter()
            .map(|d| cpu_seconds(d.process().pid()))
            .collect();
        eprintln!("  Shoal CPU per node since start: {each:.2?}");
    }
    drop(daemons);
    (served as f64 / size as f64, times, cpu)
}

fn main() {
    let nodes: usize = std::env::var("SHOAL_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mbit: u32 = std::env::var("SHOAL_BENCH_REGISTRY_MBIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let (mut on_bytes, mut on_time, mut off_bytes, mut off_time) = (vec![], vec![], vec![], vec![]);
    let mut raw = Vec::new();
    for run in 0..RUNS {
        for herd in [true, false] {
            let (ratio, times, cpu) = rollout(nodes, herd, mbit);
            let last = times.iter().cloned().fold(0.0, f64::max);
            raw.push(format!(
                "run {run} herd {herd}: registry {ratio:.2}x, pulls {times:.1?} s, Shoal CPU {cpu:.2} s (all nodes)"
            ));
            eprintln!("{}", raw.last().expect("just pushed"));
            if herd {
                on_bytes.push(ratio);
                on_time.push(last);
            } else {
                off_bytes.push(ratio);
                off_time.push(last);
            }
        }
    }
    let (ton, toff) = (median(on_time), median(off_time));
    println!("## Cold-rollout benchmark (this run)\n");
    let link = if mbit > 0 {
        format!("{mbit} Mbit/s (tc tbf)")
    } else {
        "unlimited".into()
    };
    println!(
        "{nodes} nodes pull one new image (a 200 MiB layer) at once; registry uplink {link}; medians of {RUNS} runs each (the upper one), alternated\n"
    );
    println!(
        "| measurement | election on (default) | election off (`--herd-wait 0`) | ratio |\n|---|---|---|---|"
    );
    println!(
        "| layer bytes served by the registry ÷ layer size | {:.2}× | {:.2}× | {:.2}× less |",
        median(on_bytes.clone()),
        median(off_bytes.clone()),
        median(off_bytes) / median(on_bytes).max(1e-9)
    );
    println!(
        "| rollout time (the last node's pull) | {ton:.1} s | {toff:.1} s | {:.2}× faster |",
        toff / ton
    );
    println!("\n{}", raw.join("\n"));
}
