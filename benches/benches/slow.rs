//! Slow readers against one node's mirror (root; not part of `cargo test`):
//! `cargo build --release -p shoal && SHOAL_BIN=$PWD/target/release/shoal cargo bench -p shoal-benches --bench slow --profile dev`.
//!
//! A two-node rig: node 0 holds the 200 MB image (and the small one) and runs the Shoal under
//! test with room for the readers (`--max-concurrent-requests 2048`, `--max-connections 4096`,
//! `--idle-timeout 10m` so that readers whose socket buffers stay full are not cut during the
//! run); node 1 pulls the 200 MB layer from it through its own Shoal (a peer pull). Measured,
//! each first without and then with 2,000 readers taking the 200 MB layer from node 0 at one
//! byte a second (this binary re-run with `--slow-readers` inside node 0's namespace):
//! - node 0's RSS, threads and open descriptors, and the kernel's TCP buffer memory;
//! - a normal request on node 0: 20 GETs of the 1 MiB layer, latency p50/max;
//! - the peer pull's time (median of 3);
//! - then readers are added up to the request limit, and 50 more requests are timed: the 503s.
//!
//! Bounded: at most 2,100 readers for at most 10 minutes, every curl with a time limit.

use std::time::{Duration, Instant};

use shoal_benches::{rss_kib, with_peak_rss};
use shoal_tests::{MIRROR_PORT, Node, Rig, TestImage};

const READERS: usize = 2000;
const LIMIT: usize = 2048;
const PULLS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn status_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Kernel memory in TCP buffers, all namespaces (`/proc/net/sockstat`, pages), in MB.
fn tcp_mem_mb() -> f64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("TCP:"))?;
            let mut w = l.split_whitespace();
            w.position(|x| x == "mem")?;
            w.next()?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |pages| pages * 4096.0 / 1e6)
}

/// `n` sequential requests over one `curl` (one connection): (status, seconds) each.
fn curl_n(node: &Node, url: &str, n: usize) -> Vec<(u16, f64)> {
    let mut argv = vec![
        "curl",
        "-s",
        "-m",
        "120",
        "-w",
        "%{http_code} %{time_total}\n",
    ];
    for _ in 0..n {
        argv.extend_from_slice(&["-o", "/dev/null", url]);
    }
    let out = node.exec(&argv);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (c, t) = l.split_once(' ')?;
            Some((c.parse().ok()?, t.parse().ok()?))
        })
        .collect()
}

/// Latencies in ms of `n` requests, and how many were answered `want`.
fn latencies(node: &Node, url: &str, n: usize, want: u16) -> (Vec<f64>, usize) {
    let r = curl_n(node, url, n);
    let ok = r.iter().filter(|(c, _)| *c == want).count();
    (r.into_iter().map(|(_, t)| t * 1e3).collect(), ok)
}

struct Snapshot {
    rss_mb: f64,
    threads: u64,
    fds: usize,
    tcp_mb: f64,
}

fn snapshot(pid: u32) -> Snapshot {
    Snapshot {
        rss_mb: rss_kib(pid) as f64 / 1024.0,
        threads: status_field(pid, "Threads:"),
        fds: open_fds(pid),
        tcp_mb: tcp_mem_mb(),
    }
}

/// One side of the comparison.
struct Side {
    snap: Snapshot,
    peak_rss_mb: f64,
    normal_ms: Vec<f64>,
    normal_ok: usize,
    pulls_s: Vec<f64>,
    pulls_ok: usize,
}

fn measure(holder_pid: u32, holder: &Node, puller: &Node, normal: &str, pull: &str) -> Side {
    let ((normal_ms, normal_ok, pulls_s, pulls_ok), peak) = with_peak_rss(holder_pid, || {
        let (normal_ms, normal_ok) = latencies(holder, normal, 20, 200);
        let mut pulls = Vec::new();
        let mut ok = 0;
        for _ in 0..PULLS {
            let r = curl_n(puller, pull, 1);
            if let Some(&(code, t)) = r.first() {
                ok += usize::from(code == 200);
                pulls.push(t);
            }
        }
        (normal_ms, normal_ok, pulls, ok)
    });
    Side {
        snap: snapshot(holder_pid),
        peak_rss_mb: peak as f64 / 1024.0,
        normal_ms,
        normal_ok,
        pulls_s,
        pulls_ok,
    }
}

fn spawn_readers(node: &Node, path: &str, n: usize) -> (shoal_tests::Process, String) {
    let exe = std::env::current_exe().expect("current exe");
    let addr = format!("127.0.0.1:{MIRROR_PORT}");
    let p = node.spawn(
        &exe,
        &["--slow-readers", &addr, path, &n.to_string(), "600"],
    );
    p.wait_for_log("ready", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("slow readers: {e}"));
    let statuses = format!("{:?}", shoal_tests::slow::statuses(&p.log()));
    (p, statuses)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--slow-readers") {
        std::process::exit(shoal_tests::slow::main(&args[i + 1..]));
    }
    let rig = Rig::builder().nodes(2).start();
    let (holder, puller) = (rig.node(0), rig.node(1));
    let (big, small) = (TestImage::big(), TestImage::small());
    rig.registry().push(&big);
    rig.registry().push(&small);
    holder.configure_shoal();
    puller.configure_shoal();
    holder.pull(big.reference()).unwrap();
    holder.pull(small.reference()).unwrap();
    let (limit, conns) = (LIMIT.to_string(), (2 * LIMIT).to_string());
    let d0 = holder
        .shoal()
        .args(&[
            "--max-concurrent-requests",
            &limit,
            "--max-connections",
            &conns,
            "--idle-timeout",
            "10m",
        ])
        .start();
    let d1 = puller.shoal().bootstrap(&d0).start();
    d0.wait_ready(Duration::from_secs(20));
    d1.wait_ready(Duration::from_secs(20));
    let (layer, size) = big.layers()[0].clone();
    let (small_layer, _) = small.layers()[0].clone();
    d0.wait_found(&small, &small_layer);
    d1.wait_found(&big, &layer);
    let normal = d0.blob_url(&small, &small_layer);
    let pull = d1.blob_url(&big, &layer);
    let path = d0
        .blob_url(&big, &layer)
        .trim_start_matches(&d0.local_mirror_url())
        .to_owned();
    let pid = d0.process().pid();
    std::thread::sleep(Duration::from_secs(1));
    let idle = snapshot(pid);

    // Without slow readers.
    let without = measure(pid, holder, puller, &normal, &pull);

    // With them.
    let t = Instant::now();
    let (readers, statuses) = spawn_readers(holder, &path, READERS);
    let setup_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    let with = measure(pid, holder, puller, &normal, &pull);

    // Up to the limit, then beyond it.
    let (more, more_statuses) = spawn_readers(holder, &path, LIMIT - READERS);
    let (over_ms, over_503) = latencies(holder, &normal, 50, 503);
    let full = snapshot(pid);
    drop(more);
    drop(readers);

    println!("## Slow readers: {READERS} at 1 byte/s of a {size} B blob, request limit {LIMIT}\n");
    println!(
        "readers' answers: {statuses} (set up in {setup_s:.1} s); up to the limit: {more_statuses}\n"
    );
    println!("| measurement | without slow readers | with {READERS} slow readers | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| holder RSS now / peak during the measurement | {:.1} / {:.1} MB | {:.1} / {:.1} MB | |",
        without.snap.rss_mb, without.peak_rss_mb, with.snap.rss_mb, with.peak_rss_mb
    );
    println!(
        "| holder threads / open fds | {} / {} | {} / {} | |",
        without.snap.threads, without.snap.fds, with.snap.threads, with.snap.fds
    );
    println!(
        "| kernel TCP buffers (whole machine) | {:.1} MB | {:.1} MB | |",
        without.snap.tcp_mb, with.snap.tcp_mb
    );
    println!(
        "| normal GET (1 MiB layer) on the holder, 20: answered 200 / p50 / max | {} / {:.1} ms / {:.1} ms | {} / {:.1} ms / {:.1} ms | {:.2}× p50 |",
        without.normal_ok,
        median(without.normal_ms.clone()),
        max(&without.normal_ms),
        with.normal_ok,
        median(with.normal_ms.clone()),
        max(&with.normal_ms),
        median(with.normal_ms.clone()) / median(without.normal_ms.clone())
    );
    println!(
        "| peer pull of the 200 MB layer from the holder, {PULLS}: answered 200 / median | {} / {:.2} s | {} / {:.2} s | {:.2}× time |",
        without.pulls_ok,
        median(without.pulls_s.clone()),
        with.pulls_ok,
        median(with.pulls_s.clone()),
        median(with.pulls_s.clone()) / median(without.pulls_s.clone())
    );
    println!(
        "\nAt the limit ({LIMIT} held): 50 more requests: {over_503} answered 503, p50 {:.2} ms, max {:.2} ms; holder RSS {:.1} MB, threads {}, fds {}, kernel TCP {:.1} MB",
        median(over_ms.clone()),
        max(&over_ms),
        full.rss_mb,
        full.threads,
        full.fds,
        full.tcp_mb
    );
    println!(
        "idle: RSS {:.1} MB, threads {}, fds {}, kernel TCP {:.1} MB",
        idle.rss_mb, idle.threads, idle.fds, idle.tcp_mb
    );
    println!(
        "raw: normal without {:?} with {:?}; pulls without {:?} with {:?}; over {:?}",
        without.normal_ms, with.normal_ms, without.pulls_s, with.pulls_s, over_ms
    );
}
