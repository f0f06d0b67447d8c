//! Mirror benchmarks on the real rig (root; not part of `cargo test`):
//! `cargo bench -p shoal-benches --bench mirror`.
//!
//! Every figure is measured in this run next to its baseline, on the same machine, and reported
//! as medians and ratios (these machines are noisy):
//! - a miss (no node holds the blob): latency p50/p99 of the 404 containerd falls back on;
//! - a 1 GiB blob peer → peer through Shoal vs `curl` straight from the distribution registry,
//!   streamed (the puller runs with `--max-peers-per-blob 1`: one holder, pieces checked as they
//!   arrive), with the time to first byte and the CPU seconds per GiB of the puller's and the
//!   holder's Shoal (the holder's one-off piece-list computation measured separately);
//! - `ctr pull` of the 200 MB image through Shoal from a peer vs straight from the registry;
//! - Shoal's RSS idle and during the 1 GiB transfer.

use std::time::{Duration, Instant};

use shoal_benches::{cpu_seconds, rss_kib, with_peak_rss};
use shoal_tests::{Daemon, Node, Rig, TestImage};

const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// `curl` inside the node's namespace, one transfer per URL over one connection; returns
/// (seconds, bytes) per transfer.
fn curl_times(node: &Node, urls: &[String]) -> Vec<(f64, u64)> {
    curl_timed(node, urls)
        .into_iter()
        .map(|(t, _, n)| (t, n))
        .collect()
}

/// Like [`curl_times`], with the time to the first body byte: (total s, first byte s, bytes).
fn curl_timed(node: &Node, urls: &[String]) -> Vec<(f64, f64, u64)> {
    let mut argv = vec![
        "curl",
        "-s",
        "-w",
        "%{time_total} %{time_starttransfer} %{size_download}\n",
    ];
    for u in urls {
        // `-o` applies to one URL: give each its own so no body reaches stdout.
        argv.extend_from_slice(&["-o", "/dev/null", u]);
    }
    let out = node.exec(&argv);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            Some((
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
            ))
        })
        .collect()
}

fn timed_pull(node: &Node, reference: &str) -> f64 {
    let t = Instant::now();
    node.pull(reference).unwrap_or_else(|e| panic!("pull: {e}"));
    t.elapsed().as_secs_f64()
}

/// Waits (at most 5 min) for the holder's piece list file, in the cache directory of either
/// list version (so the same bench runs an older `SHOAL_BIN` for comparison); returns it.
fn wait_for(lists: &[std::path::PathBuf], holder: &Daemon) -> std::path::PathBuf {
    let since = Instant::now();
    loop {
        if let Some(found) = lists.iter().find(|l| l.exists()) {
            return found.clone();
        }
        assert!(
            since.elapsed() < Duration::from_secs(300),
            "no piece list\n{}",
            holder.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `SHOAL_BENCH_PERF=<dir>`: instead of the figures, one warm-up transfer, then one 1 GiB
/// transfer with `perf record` attached to each daemon (`<dir>/holder.data`,
/// `<dir>/puller.data`), then three more with their CPU seconds printed.
fn profile(dir: &std::path::Path, puller: &Node, d1: &Daemon, d2: &Daemon, url: &str, size: u64) {
    std::fs::create_dir_all(dir).expect("perf output directory");
    let once = || {
        let (c2, c1) = (
            cpu_seconds(d2.process().pid()),
            cpu_seconds(d1.process().pid()),
        );
        let t = curl_timed(puller, &[url.to_owned()]);
        assert_eq!(t[0].2, size, "full blob through Shoal");
        let gib = size as f64 / (1u64 << 30) as f64;
        println!(
            "{:.2} s, CPU s/GiB puller {:.2} holder {:.2}",
            t[0].0,
            (cpu_seconds(d2.process().pid()) - c2) / gib,
            (cpu_seconds(d1.process().pid()) - c1) / gib
        );
    };
    once();
    let record = |pid: u32, name: &str| {
        std::process::Command::new("perf")
            .args([
                "record",
                "-q",
                "-F",
                "1999",
                "-g",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(dir.join(format!("{name}.data")))
            .spawn()
            .expect("perf record")
    };
    let perfs = [
        record(d1.process().pid(), "holder"),
        record(d2.process().pid(), "puller"),
    ];
    std::thread::sleep(Duration::from_millis(500));
    once();
    for mut p in perfs {
        // SIGINT makes perf write its file and exit.
        let _ = std::process::Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
        let _ = p.wait();
    }
    for _ in 0..3 {
        once();
    }
}

fn main() {
    // `cargo bench` passes `--bench`; there are no options.
    let rig = Rig::builder().nodes(2).start();
    let (holder, puller) = (rig.node(0), rig.node(1));
    let big = TestImage::big();
    let huge = TestImage::huge();
    rig.registry().push(&big);
    rig.registry().push(&huge);
    holder.configure_shoal();
    let d1 = holder.shoal().start();
    let d2 = puller
        .shoal()
        .args(&["--max-peers-per-blob", "1"])
        .bootstrap(&d1)
        .start();
    d1.wait_ready(Duration::from_secs(20));
    d2.wait_ready(Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = rss_kib(d2.process().pid());

    // 1. Misses: digests nobody has.
    let urls: Vec<String> = (0..500u32)
        .map(|i| {
            let d = shoal_oci::Digest::sha256_of(&i.to_be_bytes());
            format!(
                "{}/v2/library/absent/blobs/{d}?ns=docker.io",
                d2.local_mirror_url()
            )
        })
        .collect();
    let misses: Vec<f64> = curl_times(puller, &urls)
        .into_iter()
        .map(|(t, _)| t * 1e3)
        .collect();
    assert_eq!(misses.len(), urls.len(), "every miss answered");

    // Holder gets the images straight from the registry.
    holder.pull(big.reference()).unwrap();
    holder.pull(huge.reference()).unwrap();
    let (layer, size) = huge.layers()[0].clone();
    d2.wait_found(&huge, &layer);
    // The holder computes the piece list once, in the background, when the blob appears: wait
    // for that one, then remove it and have a peer's HEAD (through the puller) ask for it again,
    // so its computation falls inside the measured window and nothing else runs on the holder.
    let lists = ["pieces-v2", "pieces"].map(|dir| {
        holder
            .dir()
            .join("spool")
            .join(dir)
            .join(format!("sha256-{}", layer.hex()))
    });
    let list = wait_for(&lists, &d1);
    std::fs::remove_file(&list).expect("remove the piece list");
    let via_shoal = d2.blob_url(&huge, &layer);
    let list_cpu_from = cpu_seconds(d1.process().pid());
    let head = puller.exec(&["curl", "-sfI", "-o", "/dev/null", &via_shoal]);
    assert!(head.status.success(), "HEAD through the puller");
    wait_for(&lists, &d1);
    let list_cpu = cpu_seconds(d1.process().pid()) - list_cpu_from;

    if let Ok(dir) = std::env::var("SHOAL_BENCH_PERF") {
        return profile(
            std::path::Path::new(&dir),
            puller,
            &d1,
            &d2,
            &via_shoal,
            size,
        );
    }

    // 2. 1 GiB blob: through Shoal (peer → peer) vs straight from the registry, alternating.
    let direct = format!(
        "{}/v2/{}/blobs/{layer}",
        rig.registry().url(),
        huge.repository()
    );
    let mut shoal_s = Vec::new();
    let mut registry_s = Vec::new();
    let (mut shoal_ttfb, mut registry_ttfb) = (Vec::new(), Vec::new());
    let (mut puller_cpu, mut holder_cpu) = (Vec::new(), Vec::new());
    let mut peak_rss = 0;
    for _ in 0..RUNS {
        let (c2, c1) = (
            cpu_seconds(d2.process().pid()),
            cpu_seconds(d1.process().pid()),
        );
        let (t, rss) = with_peak_rss(d2.process().pid(), || {
            curl_timed(puller, std::slice::from_ref(&via_shoal))
        });
        assert_eq!(t[0].2, size, "full blob through Shoal");
        puller_cpu.push(cpu_seconds(d2.process().pid()) - c2);
        holder_cpu.push(cpu_seconds(d1.process().pid()) - c1);
        shoal_s.push(t[0].0);
        shoal_ttfb.push(t[0].1);
        peak_rss = peak_rss.max(rss);
        let t = curl_timed(puller, std::slice::from_ref(&direct));
        assert_eq!(t[0].2, size, "full blob from the registry");
        registry_s.push(t[0].0);
        registry_ttfb.push(t[0].1);
    }

    // 3. ctr pull of the 200 MB image: through Shoal from the peer vs from the registry.
    let via_hosts = puller.hosts_dir();
    let mut pull_shoal = Vec::new();
    let mut pull_registry = Vec::new();
    for _ in 0..3 {
        puller.reset_images();
        pull_registry.push(timed_pull(puller, big.reference()));
        puller.reset_images();
        puller.configure_shoal();
        pull_shoal.push(timed_pull(puller, big.reference()));
        // Back to the registry only: uninstall restores the rig's own hosts.toml.
        let out = std::process::Command::new(shoal_tests::shoal_bin())
            .args(["configure", "--uninstall", "--hosts-dir"])
            .arg(&via_hosts)
            .args([
                "--mirror",
                "http://127.0.0.1:5000",
                "--registries",
                "docker.io,ghcr.io",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
    }

    let gib = size as f64 / (1u64 << 30) as f64;
    let (ms, mr) = (median(shoal_s.clone()), median(registry_s.clone()));
    println!("## Mirror benchmarks (this run)\n");
    println!("| measurement | Shoal | baseline | ratio |\n|---|---|---|---|");
    println!(
        "| miss (404) latency, 500 requests | p50 {:.2} ms, p99 {:.2} ms | target p99 ≤ 20 ms | |",
        percentile(misses.clone(), 0.5),
        percentile(misses, 0.99)
    );
    println!(
        "| 1 GiB blob peer → peer vs registry (median of {RUNS}) | {:.2} s ({:.0} MB/s) | {:.2} s ({:.0} MB/s) | {:.2}× throughput |",
        ms,
        size as f64 / ms / 1e6,
        mr,
        size as f64 / mr / 1e6,
        mr / ms
    );
    println!(
        "| time to first byte, 1 GiB blob (median) | {:.1} ms | {:.1} ms | |",
        median(shoal_ttfb.clone()) * 1e3,
        median(registry_ttfb.clone()) * 1e3
    );
    println!(
        "| CPU s per GiB, puller / holder Shoal (median) | {:.2} / {:.2} | — | |",
        median(puller_cpu.clone()) / gib,
        median(holder_cpu.clone()) / gib
    );
    println!(
        "| holder piece-list computation, once per blob | {:.2} CPU s per GiB | — | |",
        list_cpu / gib
    );
    let (ps, pr) = (median(pull_shoal), median(pull_registry));
    println!(
        "| `ctr pull` 200 MB image, peer via Shoal vs registry (median of 3) | {ps:.2} s | {pr:.2} s | {:.2}× time |",
        ps / pr
    );
    println!(
        "| Shoal RSS (puller) idle / peak during the {gib:.0} GiB transfers | {:.1} MB / {:.1} MB | target ≤ 20 / ≤ 40 MB | |",
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    println!("\nraw: shoal {shoal_s:?} registry {registry_s:?}");
    println!("raw first byte: shoal {shoal_ttfb:?} registry {registry_ttfb:?}");
    println!("raw CPU s: puller {puller_cpu:?} holder {holder_cpu:?}");
}
