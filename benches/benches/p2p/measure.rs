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

/// CPU time (user + system) this process used so far; `None` when `/proc` cannot be read (at
/// the open-file limit, say).
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11)? + f.get(12)?;
    Some(Duration::from_millis(ticks * 10)) // USER_HZ is 100 on Linux
}

/// Resident memory of this process, MiB.
pub fn rss_mib() -> f64 {
    shoal_benches::rss_kib(std::process::id()) as f64 / 1024.0
}

/// CPU cores used between `start` and now.
pub struct CpuMeter {
    wall: Instant,
    cpu: Option<Duration>,
}

impl CpuMeter {
    pub fn start() -> Self {
        CpuMeter {
            wall: Instant::now(),
            cpu: cpu_time(),
        }
    }

    /// NaN when either reading failed.
    pub fn cores(&self) -> f64 {
        match (self.cpu, cpu_time()) {
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

/// Descriptors this process holds per (node, connected peer) pair. Measured 2026-12-07 (release,
/// 100 nodes, 99 peers each after the publication round): 11,398 open files, 1.15 per pair
/// (both ends of each connection, plus simultaneous dials that briefly leave two connections
/// for one pair, listeners and the runtime); 126 nodes held 19,412 (1.23). 1.35 leaves a margin.
const FDS_PER_PEER: f64 = 1.35;
/// Descriptors of the harness itself (stdio, runtime, temp dirs).
const FDS_BASE: f64 = 200.0;

/// Descriptors `n` in-process nodes need once every node is connected to every other, which
/// the default `idle_connection_timeout` (10 min) leads to: the publication walks cover the key
/// space. That is n x (n - 1) connection ends here, where a real node holds n - 1.
pub fn fds_needed(n: usize) -> u64 {
    (n as f64 * n.saturating_sub(1) as f64 * FDS_PER_PEER + FDS_BASE) as u64
}

/// Most nodes one process can run under the open-file limit `limit`. Past it the process hits
/// EMFILE: at 300 nodes under a 20,000 limit, `accept4` failed ~600 times a second during
/// start-up, and the harness's own `/proc` reads failed.
pub fn nodes_that_fit(limit: u64) -> usize {
    (1..100_000)
        .take_while(|n| fds_needed(*n) <= limit)
        .last()
        .unwrap_or(1)
}
