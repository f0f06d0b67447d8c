//! A client without credentials, inside a rig namespace: a flood of half-open connections and
//! timed HTTP probes, run from threads that entered the namespace (`setns`), so every socket
//! they open lives there and talks only to rig addresses.
//!
//! Bounded: a fixed number of connection tasks per target, until a deadline; a task whose
//! connection fails waits before trying again.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;

/// Runs `f` on a new thread that first enters network namespace `netns` (a rig namespace).
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    assert!(
        netns.starts_with("shoal-"),
        "in_netns: {netns} is not a rig namespace"
    );
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

/// What a flood did.
#[derive(Debug, Default, Clone, Copy)]
pub struct FloodReport {
    /// Connections opened (each sent half a request and then nothing).
    pub opened: u64,
    /// Of those, closed by the server.
    pub closed_by_server: u64,
    /// Connection attempts that failed.
    pub connect_errors: u64,
    /// Most connections held open at once.
    pub peak_open: u64,
}

/// From namespace `netns`, holds `per_target` half-open connections against each of
/// `targets` for `duration`, reopening any the server closes. Returns at the deadline.
pub fn half_open_flood(
    netns: &str,
    targets: Vec<SocketAddr>,
    per_target: usize,
    duration: Duration,
) -> JoinHandle<FloodReport> {
    in_netns(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let deadline = tokio::time::Instant::now() + duration;
            let opened = Arc::new(AtomicU64::new(0));
            let closed = Arc::new(AtomicU64::new(0));
            let errors = Arc::new(AtomicU64::new(0));
            let open_now = Arc::new(AtomicU64::new(0));
            let peak = Arc::new(AtomicU64::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            for target in targets {
                for _ in 0..per_target {
                    let (opened, closed, errors, open_now, peak) = (
                        opened.clone(),
                        closed.clone(),
                        errors.clone(),
                        open_now.clone(),
                        peak.clone(),
                    );
                    tasks.spawn(async move {
                        while tokio::time::Instant::now() < deadline {
                            let held = tokio::time::timeout_at(deadline, async {
                                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                                let Ok(Ok(mut s)) = tokio::time::timeout(
                                    Duration::from_secs(2),
                                    tokio::net::TcpStream::connect(target),
                                )
                                .await
                                else {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    return;
                                };
                                opened.fetch_add(1, Ordering::Relaxed);
                                let n = open_now.fetch_add(1, Ordering::Relaxed) + 1;
                                peak.fetch_max(n, Ordering::Relaxed);
                                let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: flood\r\n").await;
                                let mut buf = [0u8; 512];
                                // Until the server closes it (or errors it).
                                while let Ok(n) = s.read(&mut buf).await {
                                    if n == 0 {
                                        break;
                                    }
                                }
                                closed.fetch_add(1, Ordering::Relaxed);
                                open_now.fetch_sub(1, Ordering::Relaxed);
                            })
                            .await;
                            if held.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
            while tasks.join_next().await.is_some() {}
            FloodReport {
                opened: opened.load(Ordering::Relaxed),
                closed_by_server: closed.load(Ordering::Relaxed),
                connect_errors: errors.load(Ordering::Relaxed),
                peak_open: peak.load(Ordering::Relaxed),
            }
        })
    })
}

/// One probe's result: the HTTP status (0 if none) and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub status: u16,
    pub took: Duration,
}

/// From namespace `netns`, `GET <path>` on `target` `count` times, `every` apart, each on a
/// new connection with a `timeout` for the whole exchange (like the kubelet's probes).
pub fn probes(
    netns: &str,
    target: SocketAddr,
    path: &'static str,
    count: usize,
    every: Duration,
    timeout: Duration,
) -> JoinHandle<Vec<Probe>> {
    in_netns(netns, move || {
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            if i > 0 {
                std::thread::sleep(every);
            }
            let started = Instant::now();
            let status = probe_once(target, path, timeout).unwrap_or(0);
            out.push(Probe {
                status,
                took: started.elapsed(),
            });
        }
        out
    })
}

fn probe_once(target: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&target, timeout).ok()?;
    let left = timeout.checked_sub(started.elapsed())?;
    s.set_read_timeout(Some(left)).ok()?;
    s.set_write_timeout(Some(left)).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    if started.elapsed() > timeout {
        return None;
    }
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}
