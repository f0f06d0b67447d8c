//! The one place where a refused connection or request is counted and logged.
//!
//! A stranger on the pod network can make the servers refuse thousands of connections a second
//! (half-open connections, a full connection table, no credential, garbage). Each refusal is
//! counted in `shoal_refusals_total{server, reason}`, but logged at most once a second per
//! reason, across both servers: the line carries how many refusals of that reason were not
//! logged since the previous one, so the log shows the rate without being flooded by it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Why a connection or request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server was full: the new connection was closed, or an idle one was closed to make
    /// room for it.
    ConnectionLimit,
    /// Too many requests in flight (503).
    RequestLimit,
    /// No credential: not loopback, not signed (401).
    Unauthorized,
    /// A peer credential that did not verify (401).
    Rejected,
    /// Unparseable request line or headers, oversized headers, an unknown route or method, a
    /// bad path (400/404/405/431, or the connection closed).
    Malformed,
    /// The request headers did not arrive within the header timeout (a half-open connection).
    HeaderTimeout,
    /// `accept` itself failed (out of file descriptors and the like).
    AcceptFailed,
}

const KINDS: usize = 7;

impl Refusal {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::RequestLimit => "request_limit",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Rejected => "rejected",
            Refusal::Malformed => "malformed",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::AcceptFailed => "accept_failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::ConnectionLimit => "connection limit reached; closed a connection",
            Refusal::RequestLimit => "too many requests in flight; answered 503",
            Refusal::Unauthorized => "refused a mirror request without a credential (401)",
            Refusal::Rejected => "refused a mirror request with a wrong peer credential (401)",
            Refusal::Malformed => "refused a malformed request",
            Refusal::HeaderTimeout => {
                "closed a connection that did not send its request headers in time"
            }
            Refusal::AcceptFailed => "accepting a connection failed",
        }
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusalLabels {
    server: String,
    reason: String,
}

#[derive(Debug, Default)]
struct Throttle {
    /// Unix second of the last line logged.
    last: AtomicU64,
    /// Refusals not logged since that line.
    suppressed: AtomicU64,
}

/// Counts and logs refusals; cheap to clone (shared). Obtained from
/// [`crate::Metrics::refusals`], so the counter is in the same exposition.
#[derive(Debug, Clone)]
pub struct Refusals {
    counter: Family<RefusalLabels, Counter>,
    throttles: Arc<[Throttle; KINDS]>,
}

impl Refusals {
    pub(crate) fn new(counter: Family<RefusalLabels, Counter>) -> Self {
        Refusals {
            counter,
            throttles: Arc::new(Default::default()),
        }
    }

    /// Count one refusal by `server` and log it unless a line for `kind` was already written
    /// this second. `detail` is added to the line (a path, a limit, an error).
    pub fn refuse(
        &self,
        server: &str,
        kind: Refusal,
        remote: Option<SocketAddr>,
        detail: &dyn std::fmt::Display,
    ) {
        self.counter
            .get_or_create(&RefusalLabels {
                server: server.to_owned(),
                reason: kind.as_str().to_owned(),
            })
            .inc();
        let Some(suppressed) = self.throttle(kind, unix_secs()) else {
            return;
        };
        let remote = remote.map_or_else(|| "unknown".to_owned(), |r| r.to_string());
        tracing::warn!(
            server,
            reason = kind.as_str(),
            %remote,
            %detail,
            suppressed,
            "{}",
            kind.message()
        );
    }

    /// Whether a line for `kind` may be written in second `now`: `Some(refusals not logged
    /// since the last line)` for the first refusal of a second, `None` for the rest.
    fn throttle(&self, kind: Refusal, now: u64) -> Option<u64> {
        let t = &self.throttles[kind.index()];
        if t.last.swap(now, Ordering::Relaxed) == now {
            t.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(t.suppressed.swap(0, Ordering::Relaxed))
    }

    /// Refusals counted so far for `server` and `kind` (tests, `shoal status`).
    pub fn count(&self, server: &str, kind: Refusal) -> u64 {
        self.counter
            .get_or_create(&RefusalLabels {
                server: server.to_owned(),
                reason: kind.as_str().to_owned(),
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_second_per_kind_carrying_what_was_suppressed() {
        let r = Refusals::new(Family::default());
        let lines = |second: u64, kind: Refusal, n: usize| -> Vec<u64> {
            (0..n).filter_map(|_| r.throttle(kind, second)).collect()
        };
        assert_eq!(lines(100, Refusal::ConnectionLimit, 1000), [0]);
        // Another kind in the same second has its own line.
        assert_eq!(lines(100, Refusal::HeaderTimeout, 10), [0]);
        // The next second's line says how many were not logged.
        assert_eq!(lines(101, Refusal::ConnectionLimit, 5), [999]);
        assert_eq!(lines(105, Refusal::ConnectionLimit, 1), [4]);
        assert_eq!(lines(105, Refusal::HeaderTimeout, 1), [9]);
    }

    #[test]
    fn every_refusal_is_counted_by_server_and_reason() {
        let r = Refusals::new(Family::default());
        for _ in 0..1000 {
            r.refuse("mirror", Refusal::ConnectionLimit, None, &"x");
            r.refuse("metrics", Refusal::HeaderTimeout, None, &"y");
        }
        assert_eq!(r.count("mirror", Refusal::ConnectionLimit), 1000);
        assert_eq!(r.count("metrics", Refusal::HeaderTimeout), 1000);
        assert_eq!(r.count("mirror", Refusal::HeaderTimeout), 0);
    }
}
