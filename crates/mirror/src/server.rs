//! The HTTP/1.1 server under the mirror (and the metrics endpoint), with every per-connection
//! resource bounded.
//!
//! `axum::serve` has no header timeout, header size limit or idle timeout, and containerd has no
//! timeout of its own, so a silent or slow client (or a scanner) could pin tasks and buffers
//! forever. Here:
//! * request headers must arrive within `header_read_timeout` and fit `max_header_bytes`;
//! * a connection with no byte read or written for `idle_timeout` is closed (a stalled reader of
//!   a blob, a silent keep-alive connection); a slow but moving transfer is never cut;
//! * a client that stops reading leaves at most [`NOTSENT_LOWAT`] (plus one write) queued in
//!   the kernel's send buffer, not the autotuned maximum (4 MiB);
//! * at most `max_connections` are open; when full, a new connection takes the place of the
//!   oldest one with no request in progress (half-open, or idle between keep-alive requests),
//!   and only when every connection is busy is the new one closed at once (containerd moves to
//!   the next host on a refused or reset connection, it does not wait). So a flood of silent
//!   connections cannot lock out containerd, peers or the kubelet's probes ([`ConnTable`]);
//! * every refusal (full, headers too slow or malformed) is counted and logged at most once a
//!   second per reason ([`crate::refusal`]);
//! * every request carries [`ConnectInfo`] with the TCP peer address (the loopback rule of
//!   [`crate::peer_auth`]);
//! * on shutdown, listening stops, open connections finish their in-flight request and close;
//!   the caller bounds that drain with its grace period (dropping the future aborts the rest).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::refusal::{Refusal, Refusals};
use crate::trace::HoldBody;

/// Limits of one HTTP server.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
}

/// `--header-read-timeout` default: containerd sends its headers in one write.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// `--idle-timeout` default: below Go's 90 s idle pool timeout is fine (Go retries idempotent
/// requests on a fresh connection); long enough that a busy node's stalls are not cut.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Request line plus headers, at most (hyper's minimum is 8 KiB; containerd sends under 1 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// `--max-connections` default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 2048;
/// Most bytes a connection keeps queued in the kernel but not yet sent (`TCP_NOTSENT_LOWAT`):
/// enough to keep a fast link busy between two writes, little for a client that stopped reading.
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: 64,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then drains open connections (see the module
/// docs). Returns when every connection has closed. Refusals are counted and logged through
/// `refusals` under the label `name`.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    refusals: Refusals,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let http = Arc::new(http);
    let table = Arc::new(Mutex::new(ConnTable::default()));
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = listener.accept() => a,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                refusals.refuse(name, Refusal::AcceptFailed, None, &e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = lock(&table).admit(limits.max_connections, remote);
        let conn = match admitted {
            Admit::Room(conn) => conn,
            Admit::Evicted(conn, evicted) => {
                refusals.refuse(
                    name,
                    Refusal::ConnectionLimit,
                    Some(evicted),
                    &format_args!(
                        "limit {}; closed this idle connection to admit one from {remote}",
                        limits.max_connections
                    ),
                );
                conn
            }
            Admit::Full => {
                refusals.refuse(
                    name,
                    Refusal::ConnectionLimit,
                    Some(remote),
                    &format_args!(
                        "limit {}; every connection is busy, closed this new one",
                        limits.max_connections
                    ),
                );
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // Bound the bytes a client that stopped reading leaves queued in the kernel for us
        // (otherwise up to the send buffer's autotuned maximum, 4 MiB, per connection).
        let _ = socket2::SockRef::from(&tcp).set_tcp_notsent_lowat(NOTSENT_LOWAT);
        let io = TokioIo::new(IdleTimeout::new(tcp, limits.idle_timeout));
        let router = router.clone();
        let svc_conn = conn.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            let busy = Busy::start(svc_conn.clone());
            let call = router.clone().oneshot(req.map(axum::body::Body::new));
            async move {
                let res = call.await?;
                // Busy until the response body is dropped (sent, or the connection died).
                Ok::<_, std::convert::Infallible>(res.map(|body| HoldBody::wrap(body, busy)))
            }
        });
        let http = http.clone();
        let shutdown = shutdown.clone();
        let table = table.clone();
        let refusals = refusals.clone();
        conns.spawn(async move {
            let conn_io = http.serve_connection(io, svc);
            tokio::pin!(conn_io);
            let result = tokio::select! {
                r = conn_io.as_mut() => r,
                _ = conn.evict.cancelled() => Ok(()),
                _ = shutdown.cancelled() => {
                    conn_io.as_mut().graceful_shutdown();
                    conn_io.await
                }
            };
            lock(&table).remove(conn.id);
            if let Err(e) = result {
                let served = conn.requests.load(Ordering::Relaxed) > 0;
                match classify(&e, served) {
                    Some(kind) => refusals.refuse(name, kind, Some(remote), &e),
                    // A client that went away before asking anything: nothing to say, and a
                    // flood of them must not reach the log at any level.
                    None if !served => {}
                    None => {
                        tracing::debug!(server = name, %remote, error = %e, "connection ended with an error");
                    }
                }
            }
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Which refusal a connection error is: a client that never completed a request and timed out
/// (half-open) or sent garbage. Errors after a served request are ordinary disconnects.
fn classify(e: &hyper::Error, served: bool) -> Option<Refusal> {
    if e.is_parse() || e.is_parse_too_large() {
        Some(Refusal::Malformed)
    } else if served {
        None
    } else if e.is_timeout() || is_idle_timeout(e) {
        Some(Refusal::HeaderTimeout)
    } else {
        None
    }
}

fn is_idle_timeout(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
}

fn lock(table: &Mutex<ConnTable>) -> std::sync::MutexGuard<'_, ConnTable> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

/// One open connection, as the table sees it.
#[derive(Debug)]
struct Conn {
    id: u64,
    remote: SocketAddr,
    /// Requests whose response is not finished yet; 0 = idle (never asked, or between
    /// keep-alive requests) and therefore evictable.
    busy: AtomicUsize,
    /// Requests started on this connection.
    requests: AtomicUsize,
    evict: CancellationToken,
}

/// Marks its connection busy from the request's arrival until dropped with the response body.
struct Busy(Arc<Conn>);

impl Busy {
    fn start(conn: Arc<Conn>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        conn.requests.fetch_add(1, Ordering::Relaxed);
        Busy(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open connections in accept order, so the oldest idle one is found first.
///
/// Why evict rather than only refuse: with a plain limit, a stranger holding `max_connections`
/// half-open connections (or idle keep-alives) locks everyone out, including containerd, peers
/// and the kubelet's probes. A connection doing nothing yields its place to a new one instead;
/// the newcomer sends its request within milliseconds and is then busy, hence safe. Half-open
/// connections go first, then idle keep-alives, oldest first. Only when every connection has a
/// request in progress is the new one refused.
#[derive(Debug, Default)]
struct ConnTable {
    next: u64,
    open: BTreeMap<u64, Arc<Conn>>,
}

enum Admit {
    Room(Arc<Conn>),
    /// Admitted after closing the oldest idle connection (from that address).
    Evicted(Arc<Conn>, SocketAddr),
    Full,
}

impl ConnTable {
    fn admit(&mut self, max: usize, remote: SocketAddr) -> Admit {
        let mut evicted = None;
        if self.open.len() >= max {
            // Oldest first; a connection that never asked anything (half-open) before an idle
            // keep-alive of a client that did (containerd, a peer).
            let mut idle = None;
            for (id, c) in &self.open {
                if c.busy.load(Ordering::Acquire) != 0 {
                    continue;
                }
                if c.requests.load(Ordering::Relaxed) == 0 {
                    idle = Some(*id);
                    break;
                }
                idle = idle.or(Some(*id));
            }
            let Some(c) = idle.and_then(|id| self.open.remove(&id)) else {
                return Admit::Full;
            };
            c.evict.cancel();
            evicted = Some(c.remote);
        }
        self.next += 1;
        let conn = Arc::new(Conn {
            id: self.next,
            remote,
            busy: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            evict: CancellationToken::new(),
        });
        self.open.insert(conn.id, conn.clone());
        match evicted {
            Some(from) => Admit::Evicted(conn, from),
            None => Admit::Room(conn),
        }
    }

    fn remove(&mut self, id: u64) {
        self.open.remove(&id);
    }
}

/// Closes a connection on which nothing was read or written for `idle` while the server was
/// waiting to read or write: the clock restarts on every byte of progress.
struct IdleTimeout<T> {
    io: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<T> IdleTimeout<T> {
    fn new(io: T, idle: Duration) -> Self {
        IdleTimeout {
            io,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn progress(&mut self) {
        let at = Instant::now() + self.idle;
        self.deadline.as_mut().reset(at);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }

    /// `r`, what the inner I/O answered: progress restarts the clock, and still pending past
    /// the deadline becomes a timeout error.
    fn track<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<R>>,
        progressed: impl FnOnce(&R) -> bool,
    ) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(r) => {
                if r.as_ref().is_ok_and(progressed) {
                    self.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        let grew = buf.filled().len() > before;
        this.track(cx, r, |_| grew)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.track(cx, r, |n| *n > 0)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.track(cx, r, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.track(cx, r, |_| false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
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
}
