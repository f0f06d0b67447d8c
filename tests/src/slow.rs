//! Slow readers: many HTTP/1.1 GETs that take their bodies at one byte a second, to hold a
//! server's per-request resources the way a stalled or throttled client does (the mirror's
//! bounds are measured and tested with them). Runs inside a node's namespace as the
//! `shoal-slow-readers` binary (e2e tests) or as a benchmark re-run with `--slow-readers`.
//!
//! Arguments: `<host:port> <path?query> <count> <hold seconds>`. Prints `status <code> <n>` per
//! status seen, then `ready` once every connection has its answer's status line (or failed,
//! counted as status 0), then keeps reading one byte a second on every 200/206 connection until
//! the hold time is over, prints `done bytes=<n>` and exits. Bounded in count and time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections being opened at once (the server's listen backlog is larger).
const CONNECTING: usize = 64;
/// Most connections one run may hold.
pub const MAX_READERS: usize = 10_000;
/// Longest hold.
pub const MAX_HOLD: Duration = Duration::from_secs(600);

/// Runs the slow readers described by `args` (see the module docs); returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let parsed = (|| -> Option<(SocketAddr, String, usize, u64)> {
        Some((
            args.first()?.parse().ok()?,
            args.get(1)?.clone(),
            args.get(2)?.parse().ok()?,
            args.get(3)?.parse().ok()?,
        ))
    })();
    let Some((addr, path, count, hold)) = parsed else {
        eprintln!("usage: <host:port> <path?query> <count> <hold seconds>");
        return 2;
    };
    let count = count.min(MAX_READERS);
    let hold = Duration::from_secs(hold).min(MAX_HOLD);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return 1;
        }
    };
    rt.block_on(run(addr, path, count, hold));
    0
}

async fn run(addr: SocketAddr, path: String, count: usize, hold: Duration) {
    let until = Instant::now() + hold;
    let request = Arc::new(format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: shoal-slow-reader\r\n\r\n"
    ));
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    let (status_tx, mut status_rx) = tokio::sync::mpsc::channel::<u16>(count.max(1));
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (request, gate, status_tx) = (request.clone(), gate.clone(), status_tx.clone());
        readers.spawn(async move {
            let opened = {
                let _g = gate.acquire().await;
                open(addr, &request).await
            };
            let (mut conn, status, mut got) = match opened {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("reader: {e}");
                    let _ = status_tx.send(0).await;
                    return 0;
                }
            };
            let _ = status_tx.send(status).await;
            if status != 200 && status != 206 {
                return 0;
            }
            let mut byte = [0u8; 1];
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match tokio::time::timeout_at(until.into(), conn.read(&mut byte)).await {
                    Ok(Ok(n)) if n > 0 => got += 1,
                    _ => break,
                }
            }
            got
        });
    }
    drop(status_tx);
    let mut statuses = BTreeMap::<u16, usize>::new();
    // Every reader keeps its sender while it reads: count answers, not closed senders.
    for _ in 0..count {
        match status_rx.recv().await {
            Some(s) => *statuses.entry(s).or_default() += 1,
            None => break,
        }
    }
    for (s, n) in &statuses {
        println!("status {s} {n}");
    }
    println!("ready");
    let mut total = 0u64;
    while let Some(r) = readers.join_next().await {
        total += r.unwrap_or(0);
    }
    println!("done bytes={total}");
}

/// Connects, sends the request and reads up to the end of the headers; returns the
/// connection, the status and how many body bytes came with the headers.
async fn open(addr: SocketAddr, request: &str) -> std::io::Result<(TcpStream, u16, u64)> {
    let mut conn = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    conn.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = tokio::time::timeout_at(deadline.into(), conn.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("no answer within 30 s"))??;
        if n == 0 {
            return Err(std::io::Error::other("closed before the headers"));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let status = std::str::from_utf8(&head[..end])
                .ok()
                .and_then(|h| h.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0);
            return Ok((conn, status, (head.len() - end - 4) as u64));
        }
        if head.len() > 64 * 1024 {
            return Err(std::io::Error::other("headers over 64 KiB"));
        }
    }
}

/// Parses the `status <code> <n>` lines of a run's output.
pub fn statuses(output: &str) -> BTreeMap<u16, usize> {
    output
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("status ")?.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}
