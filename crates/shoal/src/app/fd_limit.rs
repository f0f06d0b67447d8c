//! The open-file limit, checked against what the daemon's limits let clients hold.
//!
//! Every connection is a descriptor, and every blob being served from containerd's content
//! directory holds its file open until its last byte. If the process's `RLIMIT_NOFILE` is lower
//! than that, `accept` fails with `EMFILE` before the request limit is reached, and a client gets
//! a stalled connection instead of the fast 503 containerd falls back on. Go raises its soft
//! limit to the hard limit at start (containerd does); Rust does not, and container runtimes may
//! start a pod with a soft limit of 1024. So the daemon raises the soft limit to the hard one,
//! and if even that is too low, lowers its connection and request limits to fit, saying so.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use super::DaemonConfig;

/// Descriptors kept for everything else: containerd's socket, libp2p connections, spool files,
/// the admin socket, logs.
pub const RESERVED: u64 = 256;

/// Descriptors the limits of `cfg` may need at once: both servers' connections and one blob
/// file per request in flight, plus [`RESERVED`].
pub fn needed(cfg: &DaemonConfig) -> u64 {
    2 * cfg.server.max_connections as u64 + cfg.mirror.max_concurrent_requests as u64 + RESERVED
}

/// Connection and request limits that fit `nofile` descriptors, keeping their ratio and at least
/// one connection more than requests (so the request over the limit still reaches the 503).
pub fn fit(nofile: u64, connections: usize, requests: usize) -> (usize, usize) {
    let (c, r) = (connections as u64, requests as u64);
    let available = nofile.saturating_sub(RESERVED);
    if 2 * c + r <= available {
        return (connections, requests);
    }
    let scale = |v: u64| v * available / (2 * c + r).max(1);
    let c2 = scale(c).max(2);
    let r2 = scale(r).clamp(1, c2 - 1);
    (c2 as usize, r2 as usize)
}

/// Raises the soft open-file limit to the hard one, then lowers `cfg`'s limits if they still do
/// not fit. Logs what it did.
pub fn apply(cfg: &mut DaemonConfig) {
    let want = needed(cfg);
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; not checked");
            return;
        }
    };
    let mut nofile = soft;
    if soft < want && hard > soft {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => nofile = hard,
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        }
    }
    let (connections, requests) = fit(
        nofile,
        cfg.server.max_connections,
        cfg.mirror.max_concurrent_requests,
    );
    if (connections, requests)
        != (
            cfg.server.max_connections,
            cfg.mirror.max_concurrent_requests,
        )
    {
        tracing::warn!(
            nofile,
            needed = want,
            max_connections = connections,
            max_concurrent_requests = requests,
            "the open-file limit is too low for --max-connections and --max-concurrent-requests; lowered them to fit (raise the limit, e.g. the container runtime's RLIMIT_NOFILE)"
        );
        cfg.server.max_connections = connections;
        cfg.mirror.max_concurrent_requests = requests;
    } else {
        tracing::debug!(nofile, needed = want, "open-file limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_kept_when_they_fit_and_scaled_down_when_not() {
        assert_eq!(fit(1 << 20, 2048, 1024), (2048, 1024));
        assert_eq!(fit(2 * 2048 + 1024 + RESERVED, 2048, 1024), (2048, 1024));
        // A pod started with a soft and hard limit of 1024.
        let (c, r) = fit(1024, 2048, 1024);
        assert!(2 * c as u64 + r as u64 + RESERVED <= 1024, "{c} {r}");
        assert!(r < c && r > 0, "{c} {r}");
        // Absurdly low: still at least one request and one connection more.
        assert_eq!(fit(10, 2048, 1024), (2, 1));
    }
}
