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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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
        let activity = Activity::default();
        let io = TokioIo::new(IdleTimeout::new(tcp, limits.idle_timeout, activity.clone()));
        let router = router.clone();
        let svc_conn = conn.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            req.extensions_mut().insert(activity.clone());
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
mod tests;
