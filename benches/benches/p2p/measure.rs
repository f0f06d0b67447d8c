//! What the harness measures besides lookups: quantiles, the process's CPU and memory, and how
//! late the runtime wakes a timer (if the harness saturates the machine, latencies are the
//! harness's, not Shoal's; these figures say when).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// p50 / p99 / max in ms of a sample set, or dashes when empty.
pub fn quantiles(v: &mut [Duration]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort();
    let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(q(0.50)), ms(q(0.99)), ms(v[v.len() - 1]))
}

/// CPU time (user + system) process `pid` used so far; `None` when `/proc` cannot be read.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11)? + f.get(12)?;
    Some(Duration::from_millis(ticks * 10)) // USER_HZ is 100 on Linux
}

/// CPU time of this process and `pids` together.
pub fn cpu_total(pids: &[u32]) -> Option<Duration> {
    std::iter::once(std::process::id())
        .chain(pids.iter().copied())
        .map(cpu_time)
        .sum()
}

/// Open descriptors of `pids` together.
pub fn open_files(pids: &[u32]) -> usize {
    pids.iter()
        .map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).map_or(0, |d| d.count()))
        .sum()
}

/// Resident memory of `pids` together, MiB.
pub fn rss_mib(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|p| shoal_benches::rss_kib(*p) as f64 / 1024.0)
        .sum()
}

/// CPU cores used by the harness (this process and its workers) between `start` and now.
pub struct CpuMeter {
    wall: Instant,
    pids: Vec<u32>,
    cpu: Option<Duration>,
}

impl CpuMeter {
    pub fn start(pids: Vec<u32>) -> Self {
        CpuMeter {
            wall: Instant::now(),
            cpu: cpu_total(&pids),
            pids,
        }
    }

    /// NaN when either reading failed.
    pub fn cores(&self) -> f64 {
        match (self.cpu, cpu_total(&self.pids)) {
            (Some(a), Some(b)) => {
                b.saturating_sub(a).as_secs_f64() / self.wall.elapsed().as_secs_f64().max(1e-3)
            }
            _ => f64::NAN,
        }
    }
}

/// A task that sleeps 10 ms in a loop and records how late each wake-up is.
#[derive(Clone, Default)]
pub struct Lag(Arc<Mutex<Vec<Duration>>>);

impl Lag {
    pub fn spawn() -> Self {
        let lag = Lag::default();
        let l = lag.clone();
        tokio::spawn(async move {
            loop {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(10)).await;
                let late = t.elapsed().saturating_sub(Duration::from_millis(10));
                let mut g = l.0.lock().unwrap();
                if g.len() < 1_000_000 {
                    g.push(late);
                }
            }
        });
        lag
    }

    /// p99 lateness since the last call (and resets).
    pub fn take_p99(&self) -> f64 {
        let mut v = std::mem::take(&mut *self.0.lock().unwrap());
        quantiles(&mut v).1
    }
}

/// Raises this process's open-file limit (with `prlimit`, as root): every in-process
/// connection costs two descriptors, one per end, where a real node holds one. Returns the limit
/// in force afterwards (raising the hard limit needs `CAP_SYS_RESOURCE`, which containers often
/// lack: then it stays where it was).
pub fn raise_fd_limit(want: u64) -> u64 {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={want}:{want}")])
        .stderr(std::process::Stdio::null())
        .status();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0)
}

/// Descriptors a process holds per (node, connected peer) pair it hosts. Measured 2026-12-07
/// (release, one process, 100 nodes, 99 peers each after the publication round): 11,398 open
/// files, 1.15 per pair (the connection's end, plus simultaneous dials that briefly leave two
/// connections for one pair, listeners and the runtime); 126 nodes held 19,412 (1.23). 1.35
/// leaves a margin.
const FDS_PER_PEER: f64 = 1.35;
/// Descriptors of a worker itself (stdio, runtime, temp dirs).
const FDS_BASE: f64 = 200.0;

/// Most nodes of an `n`-node cluster one process can host under the open-file limit `limit`,
/// once every node is connected to every other, which the default `idle_connection_timeout`
/// (10 min) leads to (the publication walks cover the key space): each hosted node holds n - 1
/// connection ends. Past it the process hits EMFILE: 300 nodes in one process under a 20,000
/// limit had `accept4` failing ~600 times a second during start-up.
pub fn nodes_per_process(n: usize, limit: u64) -> usize {
    let per_node = n.saturating_sub(1) as f64 * FDS_PER_PEER;
    (((limit as f64 - FDS_BASE) / per_node.max(1.0)) as usize).clamp(1, n.max(1))
}
