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

#[cfg(test)]
mod tests {
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
