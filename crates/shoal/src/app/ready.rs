//! What `/readyz` means: this node's mirror can serve and fetch right now.
//!
//! Checked every half second, each check bounded so a hung dependency makes the node not ready
//! instead of hanging the checker (the probe itself only reads the last result, so it is
//! answered at once whatever happens here):
//! * containerd answers a `Version` call within [`CHECK_TIMEOUT`] (local content is served
//!   through it, and without it nothing is advertised);
//! * the spool directory accepts a new file (large blobs from peers are verified there);
//! * the mirror's server task is running (its listener was bound at start);
//! * the DHT is up (a peer in the routing table, or bootstrap found nobody but this node).
//!
//! Liveness (`/healthz`) is separate and deliberately weaker: it answers while the process and
//! its runtime do, so a containerd restart makes the node not ready (the kubelet stops counting
//! on it) without getting Shoal restarted.

use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shoal_containerd::CancellationToken;
use shoal_mirror::{Metrics, Readiness};

use super::ContainerdStore;

/// Bound of each check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the checks run.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// What the checker looks at.
#[derive(Debug)]
pub(super) struct Checks {
    pub store: ContainerdStore,
    pub p2p: shoal_p2p::Handle,
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub spool_dir: PathBuf,
    /// Cleared when the mirror's server task returns.
    pub mirror_up: Arc<AtomicBool>,
}

/// Publishes peer counts and readiness until `shutdown`.
pub(super) async fn report_status(c: Checks, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Result<(), String> = Err("starting".into());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = check(&c).await;
        if now != last {
            match &now {
                Ok(()) => tracing::info!("ready"),
                Err(why) => tracing::warn!(reason = %why, "not ready"),
            }
        }
        c.readiness.set(now.clone());
        last = now;
    }
}

async fn check(c: &Checks) -> Result<(), String> {
    if !c.mirror_up.load(Ordering::Relaxed) {
        return Err("the mirror server has stopped".into());
    }
    let dht_ready = match tokio::time::timeout(CHECK_TIMEOUT, c.p2p.status()).await {
        Ok(Ok(status)) => {
            c.metrics
                .set_peers(i64::try_from(status.peers.len()).unwrap_or(i64::MAX));
            status.ready
        }
        Ok(Err(e)) => return Err(format!("the DHT node is not running: {e}")),
        Err(_) => {
            return Err(format!(
                "the DHT node did not answer within {CHECK_TIMEOUT:?}"
            ));
        }
    };
    let Some(source) = c.store.source() else {
        return Err("containerd not connected yet".into());
    };
    match tokio::time::timeout(CHECK_TIMEOUT, source.version()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("containerd does not answer: {e}")),
        Err(_) => {
            return Err(format!(
                "containerd did not answer within {CHECK_TIMEOUT:?}"
            ));
        }
    }
    let dir = c.spool_dir.clone();
    match tokio::time::timeout(
        CHECK_TIMEOUT,
        tokio::task::spawn_blocking(move || spool_writable(&dir)),
    )
    .await
    {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => {
            return Err(format!(
                "spool directory {} is not writable: {e}",
                c.spool_dir.display()
            ));
        }
        Ok(Err(e)) => return Err(format!("spool check failed: {e}")),
        Err(_) => {
            return Err(format!(
                "spool directory {} did not answer within {CHECK_TIMEOUT:?}",
                c.spool_dir.display()
            ));
        }
    }
    if !dht_ready {
        return Err("the DHT is not bootstrapped yet".into());
    }
    Ok(())
}

/// Creates (0700, like the spool does), writes, syncs and removes a probe file in `dir`.
fn spool_writable(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let probe = dir.join(format!(".shoal-ready-probe-{}", std::process::id()));
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(b"ok")?;
        f.sync_data()
    });
    let removed = std::fs::remove_file(&probe);
    written.and(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_probe_needs_a_writable_directory() {
        let d = tempfile::tempdir().unwrap();
        let spool = d.path().join("spool");
        spool_writable(&spool).unwrap();
        assert_eq!(
            std::fs::read_dir(&spool).unwrap().count(),
            0,
            "probe left behind"
        );
        let file = d.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(spool_writable(&file).is_err());
    }
}
