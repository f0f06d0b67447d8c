//! The server's bounds, exercised over real loopback sockets.

use super::*;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(limits: ServerLimits) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().fallback(|ConnectInfo(r): ConnectInfo<SocketAddr>| async move {
        format!("from {}", r.ip())
    });
    let token = CancellationToken::new();
    tokio::spawn(serve(
        "test",
        listener,
        router,
        limits,
        refusals(),
        token.clone(),
    ));
    (addr, token)
}

fn refusals() -> Refusals {
    crate::Metrics::new().refusals().clone()
}

async fn exchange(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn serves_with_the_remote_address() {
    let (addr, _t) = start(ServerLimits::default()).await;
    let out = exchange(
        addr,
        b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("from 127.0.0.1"), "{out}");
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let (addr, _t) = start(ServerLimits::default()).await;
    let big = format!(
        "GET /x HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let out = exchange(addr, big.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:.80}");
    let many: String = (0..100).map(|i| format!("x-h{i}: v\r\n")).collect();
    let out = exchange(
        addr,
        format!("GET /x HTTP/1.1\r\nhost: a\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:.80}");
}

#[tokio::test]
async fn silent_and_idle_clients_are_disconnected() {
    let limits = ServerLimits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(500),
        ..ServerLimits::default()
    };
    let (addr, _t) = start(limits).await;
    // Half a request line, then silence.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /x HT").await.unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(n.is_ok(), "connection still open after 5 s");
    assert!(started.elapsed() < Duration::from_secs(3));
    // A keep-alive connection with nothing more to say is closed after the idle timeout.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(n.is_ok(), "idle connection still open after 5 s");
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_new_connection_takes_the_place_of_an_idle_one() {
    let limits = ServerLimits {
        max_connections: 2,
        ..ServerLimits::default()
    };
    let (addr, _t) = start(limits).await;
    // One silent connection, one idle keep-alive connection after a request.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(idle.read(&mut buf).await.unwrap() > 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A newcomer takes the silent connection's place; it stays open, idle.
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let n = second.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The next one takes the place of the oldest idle keep-alive.
    let out = exchange(
        addr,
        b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    for s in [&mut silent, &mut idle] {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "not closed: {n:?}");
    }
}

#[tokio::test]
async fn when_every_connection_is_busy_a_new_one_is_closed_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let slow = Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        "slow"
    });
    let limits = ServerLimits {
        max_connections: 1,
        ..ServerLimits::default()
    };
    let r = refusals();
    let t = CancellationToken::new();
    tokio::spawn(serve("test", listener, slow, limits, r.clone(), t.clone()));
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let out = exchange(addr, b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(out.is_empty(), "{out}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(r.count("test", Refusal::ConnectionLimit), 1);
    t.cancel();
}

#[tokio::test]
async fn half_open_connections_are_counted_as_header_timeouts() {
    let limits = ServerLimits {
        header_read_timeout: Duration::from_millis(200),
        ..ServerLimits::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = refusals();
    let t = CancellationToken::new();
    let router = Router::new().fallback(|| async { "ok" });
    tokio::spawn(serve(
        "test",
        listener,
        router,
        limits,
        r.clone(),
        t.clone(),
    ));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nhost").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    let _ = exchange(addr, b"NOT HTTP AT ALL\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.count("test", Refusal::HeaderTimeout), 1);
    assert_eq!(r.count("test", Refusal::Malformed), 1);
    t.cancel();
}

#[tokio::test]
async fn shutdown_stops_accepting_and_returns() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn(serve(
        "test",
        listener,
        Router::new().fallback(|| async { "ok" }),
        ServerLimits::default(),
        refusals(),
        token.clone(),
    ));
    // An idle keep-alive connection must not hold the drain up.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = s.read(&mut buf).await.unwrap();
    token.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("drained")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn progress_on_the_peer_side_keeps_a_quiet_connection_open() {
    // The handler sends nothing for 1.5 s (three idle timeouts) while it records activity,
    // like a download still receiving from a peer before its first verified piece.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().fallback(|req: axum::extract::Request| async move {
        let a = req.extensions().get::<Activity>().cloned().unwrap();
        for _ in 0..15 {
            a.touch();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        "late but fine"
    });
    let limits = ServerLimits {
        idle_timeout: Duration::from_millis(500),
        ..ServerLimits::default()
    };
    let token = CancellationToken::new();
    tokio::spawn(serve(
        "test",
        listener,
        router,
        limits.clone(),
        refusals(),
        token.clone(),
    ));
    let out = exchange(
        addr,
        b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(out.ends_with("late but fine"), "{out}");
    // Without activity the same silence ends the connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        "too late"
    });
    tokio::spawn(serve("test", listener, router, limits, refusals(), token));
    let out = exchange(
        addr,
        b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(out.is_empty(), "{out}");
}
