//! The HTTP/1.1 server under the mirror (and the metrics endpoint), with every per-connection
//! resource bounded.
//!
//! `axum::serve` has no header timeout, header size limit or idle timeout, and containerd has no
//! timeout of its own, so a silent or slow client (or a scanner) could pin tasks and buffers
//! forever. Here:
//! * request headers must arrive within `header_read_timeout` and fit `max_header_bytes`;
//! * a connection with no byte read or written for `idle_timeout`, and no [`Activity`] from the
//!   peer side of its request, is closed (a stalled reader of a blob, a silent keep-alive
//!   connection); a slow but moving transfer, on either side, is never cut;
//! * at most `max_connections` are open; one more is closed at once (containerd moves to the
//!   next host on a refused or reset connection, it does not wait);
//! * every request carries [`ConnectInfo`] with the TCP peer address (the loopback rule of
//!   [`crate::peer_auth`]);
//! * on shutdown, listening stops, open connections finish their in-flight request and close;
//!   the caller bounds that drain with its grace period (dropping the future aborts the rest).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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
/// docs). Returns when every connection has closed.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let http = Arc::new(http);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
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
                tracing::warn!(server = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(server = name, %remote, limit = limits.max_connections, "too many connections; closing a new one");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let activity = Activity::default();
        let io = TokioIo::new(IdleTimeout::new(tcp, limits.idle_timeout, activity.clone()));
        let router = router.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            req.extensions_mut().insert(activity.clone());
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let http = http.clone();
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let _slot = slot;
            let conn = http.serve_connection(io, svc);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(server = name, %remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Progress made for a connection's request away from its socket: bytes arriving from a peer
/// while the answer is prepared or streamed. Handlers find it in the request extensions and
/// touch it; the connection's idle timeout counts it as progress, so a transfer moving on
/// either side is never cut, and only a stall on both sides is.
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<AtomicU64>);

/// The base of [`Activity`] timestamps.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Activity {
    /// Record progress now.
    pub fn touch(&self) {
        let nanos = Instant::now().duration_since(epoch()).as_nanos();
        self.0
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn last(&self) -> Option<Instant> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            n => Some(epoch() + Duration::from_nanos(n)),
        }
    }
}

/// Closes a connection on which nothing was read or written for `idle` while the server was
/// waiting to read or write, and no [`Activity`] was recorded for it: the clock restarts on
/// every byte of progress on either side.
struct IdleTimeout<T> {
    io: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    activity: Activity,
}

impl<T> IdleTimeout<T> {
    fn new(io: T, idle: Duration, activity: Activity) -> Self {
        IdleTimeout {
            io,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            activity,
        }
    }

    fn progress(&mut self) {
        let at = Instant::now() + self.idle;
        self.deadline.as_mut().reset(at);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return false;
            }
            // Progress on the other side moves the deadline instead of ending the connection.
            match self.activity.last().map(|t| t + self.idle) {
                Some(at) if at > Instant::now() => self.deadline.as_mut().reset(at),
                _ => return true,
            }
        }
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
        tokio::spawn(serve("test", listener, router, limits, token.clone()));
        (addr, token)
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
    async fn progress_on_the_peer_side_keeps_a_quiet_connection_open() {
        // The handler sends nothing for 1.5 s (three idle timeouts) while it records activity,
        // like a verify-before-send download still receiving from a peer.
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
        tokio::spawn(serve("test", listener, router, limits, token.clone()));
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
        tokio::spawn(serve(
            "test",
            listener,
            router,
            limits_500ms(),
            token.clone(),
        ));
        let out = exchange(
            addr,
            b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(out.is_empty(), "{out}");
    }

    fn limits_500ms() -> ServerLimits {
        ServerLimits {
            idle_timeout: Duration::from_millis(500),
            ..ServerLimits::default()
        }
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_at_once() {
        let limits = ServerLimits {
            max_connections: 1,
            ..ServerLimits::default()
        };
        let (addr, _t) = start(limits).await;
        let _held = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        let out = exchange(addr, b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n").await;
        assert!(out.is_empty(), "{out}");
        assert!(started.elapsed() < Duration::from_secs(2));
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
