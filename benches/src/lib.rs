//! What the benchmarks in `benches/benches` share: reading a process's resident memory while a
//! measurement runs. The benchmarks themselves drive the real rig (see each file's docs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Resident set size of `pid` in KiB (`VmRSS`), 0 when the process is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `f` while sampling the RSS of `pid` every 20 ms; returns (f's result, peak RSS in KiB).
pub fn with_peak_rss<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> (T, u64) {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            // Sample before checking, so even an instant `f` gets one sample.
            let mut peak = 0;
            loop {
                peak = peak.max(rss_kib(pid));
                if done.load(Ordering::Relaxed) {
                    break peak;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let r = f();
        done.store(true, Ordering::Relaxed);
        (r, sampler.join().unwrap_or(0))
    })
}

/// CPU seconds (user + system) `pid` has used so far, from `/proc/<pid>/stat` (the process's
/// own rusage, read from outside it); 0 when the process is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the `(comm)`, which may contain spaces: utime and stime are the 14th and
    // 15th fields of the line, the 12th and 13th after the closing parenthesis.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / clock_ticks()
}

/// `sysconf(_SC_CLK_TCK)`, via `getconf` (100 on Linux unless configured otherwise).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process_cpu_time() {
        let me = std::process::id();
        let before = super::cpu_seconds(me);
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(super::cpu_seconds(me) >= before);
        assert_eq!(super::cpu_seconds(u32::MAX), 0.0);
    }

    #[test]
    fn reads_this_process_rss_and_a_peak_at_least_as_large() {
        let me = std::process::id();
        let now = super::rss_kib(me);
        assert!(now > 0);
        let (v, peak) = super::with_peak_rss(me, || vec![1u8; 1 << 20].len());
        assert_eq!(v, 1 << 20);
        assert!(peak > 0);
        assert_eq!(super::rss_kib(u32::MAX), 0);
    }
}
