//! Load and soak test of one node's mirror (root; not part of `cargo test`):
//! `cargo bench -p shoal-benches --bench load`, or `scripts/soak <minutes>`.
//!
//! A one-node rig: containerd holds the small test image (a 1 MiB layer), `shoal daemon` serves
//! it. A second process, this binary re-run with `--generate` inside the node's namespace, is the
//! load: 500 concurrent blob GETs (each checks the full length), then 10,000 HEADs with 500 in
//! flight, all over loopback like the node's containerd. Reported: errors, latency p50/p99,
//! throughput, the daemon's RSS (idle, peak, after) and open file descriptors. With
//! `SHOAL_SOAK_MINUTES=N` the same round repeats for N minutes (bounded by that deadline) and RSS
//! is sampled every 10 s: a flat series means nothing accumulates per request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal_benches::rss_kib;
use shoal_tests::{Rig, TestImage};

const GETS: usize = 500;
const HEADS: usize = 10_000;
const CONCURRENCY: usize = 500;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// One phase's result: requests, errors, p50 and p99 in ms, wall seconds.
struct Phase {
    n: usize,
    errors: usize,
    p50: f64,
    p99: f64,
    secs: f64,
}

impl Phase {
    fn line(&self, name: &str) -> String {
        format!(
            "{name} n={} errors={} p50_ms={:.2} p99_ms={:.2} secs={:.2}",
            self.n, self.errors, self.p50, self.p99, self.secs
        )
    }

    fn parse(line: &str) -> Option<Phase> {
        let field = |k: &str| -> Option<f64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
        };
        Some(Phase {
            n: field("n")? as usize,
            errors: field("errors")? as usize,
            p50: field("p50_ms")?,
            p99: field("p99_ms")?,
            secs: field("secs")?,
        })
    }
}

async fn phase(client: &reqwest::Client, head: bool, url: &str, n: usize, size: u64) -> Phase {
    use futures::StreamExt;
    let started = Instant::now();
    let results: Vec<Result<f64, String>> = futures::stream::iter(0..n)
        .map(|_| async move {
            let t = Instant::now();
            let req = if head {
                client.head(url)
            } else {
                client.get(url)
            };
            let resp = req.send().await.map_err(|e| e.to_string())?;
            if resp.status() != reqwest::StatusCode::OK {
                return Err(format!("status {}", resp.status()));
            }
            if !head {
                let body = resp.bytes().await.map_err(|e| e.to_string())?;
                if body.len() as u64 != size {
                    return Err(format!("{} of {size} bytes", body.len()));
                }
            }
            Ok(t.elapsed().as_secs_f64() * 1e3)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let mut ok: Vec<f64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(e) = errors.first() {
        eprintln!("first error: {e}");
    }
    Phase {
        n,
        errors: errors.len(),
        p50: percentile(&mut ok, 0.5),
        p99: percentile(&mut ok, 0.99),
        secs,
    }
}

/// The load generator (`--generate <blob url> <blob size>`), run inside the node namespace.
fn generate(url: &str, size: u64) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(CONCURRENCY)
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .expect("client");
        let gets = phase(&client, false, url, GETS, size).await;
        println!("{}", gets.line("GET"));
        let heads = phase(&client, true, url, HEADS, size).await;
        println!("{}", heads.line("HEAD"));
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--generate") {
        let url = &args[i + 1];
        let size: u64 = args[i + 2].parse().expect("blob size");
        generate(url, size);
        return;
    }
    let soak = std::env::var("SHOAL_SOAK_MINUTES").ok().map(|m| {
        m.parse::<f64>()
            .expect("SHOAL_SOAK_MINUTES: a number of minutes")
    });

    let rig = Rig::builder().nodes(1).start();
    let node = rig.node(0);
    let img = TestImage::small();
    rig.registry().push(&img);
    node.configure_shoal();
    node.pull(img.reference()).unwrap();
    let d = node.shoal().start();
    d.wait_ready(Duration::from_secs(20));
    let (layer, size) = img.layers()[0].clone();
    d.wait_found(&img, &layer);
    let url = d.blob_url(&img, &layer);
    let pid = d.process().pid();
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = rss_kib(pid);
    let idle_fds = open_fds(pid);
    let exe = std::env::current_exe().expect("current exe");
    let exe = exe.to_str().expect("utf-8 path");
    let size_arg = size.to_string();

    let peak = AtomicU64::new(idle_rss);
    let done = AtomicBool::new(false);
    let deadline = soak.map(|m| Instant::now() + Duration::from_secs_f64(m * 60.0));
    let mut rounds: Vec<(Phase, Phase)> = Vec::new();
    // RSS and fds every 10 s, from the sampler thread.
    let samples = std::sync::Mutex::new(vec![(0u64, idle_rss, idle_fds)]);
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut last_sample = Instant::now();
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
                if last_sample.elapsed() >= Duration::from_secs(10) {
                    last_sample = Instant::now();
                    let sample = (started.elapsed().as_secs(), rss_kib(pid), open_fds(pid));
                    eprintln!(
                        "sample t={}s rss={} KiB fds={}",
                        sample.0, sample.1, sample.2
                    );
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(sample);
                }
            }
        });
        loop {
            let out = node.exec(&[exe, "--generate", &url, &size_arg]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "generator failed: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut lines = text.lines();
            let get = lines.next().and_then(Phase::parse).expect("GET line");
            let head = lines.next().and_then(Phase::parse).expect("HEAD line");
            eprintln!(
                "round {}: {} | {} | rss {} KiB",
                rounds.len() + 1,
                get.line("GET"),
                head.line("HEAD"),
                rss_kib(pid)
            );
            rounds.push((get, head));
            match deadline {
                Some(t) if Instant::now() < t => continue,
                _ => break,
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    std::thread::sleep(Duration::from_secs(2));
    let after_rss = rss_kib(pid);
    let after_fds = open_fds(pid);

    let (g, h) = &rounds[0];
    println!(
        "## Load: one node, {GETS} concurrent GETs of a {size} B blob, then {HEADS} HEADs ({CONCURRENCY} in flight)"
    );
    println!();
    println!("| phase | requests | errors | p50 | p99 | wall | rate |");
    println!("|---|---|---|---|---|---|---|");
    for (name, p) in [("GET blob", g), ("HEAD blob", h)] {
        println!(
            "| {name} | {} | {} | {:.1} ms | {:.1} ms | {:.2} s | {:.0} req/s |",
            p.n,
            p.errors,
            p.p50,
            p.p99,
            p.secs,
            p.n as f64 / p.secs
        );
    }
    println!();
    println!(
        "daemon RSS: idle {idle_rss} KiB, peak {} KiB, after {after_rss} KiB; open fds: idle {idle_fds}, after {after_fds}",
        peak.load(Ordering::Relaxed)
    );
    if soak.is_some() {
        let errors: usize = rounds.iter().map(|(g, h)| g.errors + h.errors).sum();
        let requests: usize = rounds.iter().map(|(g, h)| g.n + h.n).sum();
        println!();
        println!(
            "## Soak: {} rounds in {:.1} min, {requests} requests, {errors} errors",
            rounds.len(),
            started.elapsed().as_secs_f64() / 60.0
        );
        println!();
        println!("| t (s) | daemon RSS (KiB) | open fds |");
        println!("|---|---|---|");
        for (t, rss, fds) in samples.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            println!("| {t} | {rss} | {fds} |");
        }
    }
    let errors: usize = rounds.iter().map(|(g, h)| g.errors + h.errors).sum();
    assert_eq!(errors, 0, "requests failed under load");
}
