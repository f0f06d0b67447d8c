//! The daemon, as a library: [`App::start`] binds every listener, starts the DHT, connects to
//! containerd and follows it, and serves the mirror and metrics; [`Running::shutdown`] drains.
//!
//! Tests build exactly this (with port 0 listeners) so what is tested is what runs.

mod adapters;
pub mod fd_limit;
mod ready;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use shoal_containerd::{CancellationToken, Change, ContentSource, WatchConfig};
use shoal_mirror::{
    EventLog, Metrics, MirrorConfig, MirrorState, PeerAuth, Readiness, ServerLimits,
};
use shoal_oci::{Allowlist, Key};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use adapters::{Advertised, ContainerdStore, DhtProviders};

/// Everything `shoal daemon` needs, already parsed and validated.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub containerd_socket: PathBuf,
    pub containerd_namespace: String,
    pub containerd_content_dir: Option<PathBuf>,
    pub allowlist: Allowlist,
    pub mirror_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub mirror: MirrorConfig,
    /// Who may read from the mirror and how this node signs its peer requests
    /// ([`shoal_mirror::HmacAuth`] from the PSK; see `docs/security.md`).
    pub peer_auth: Arc<dyn PeerAuth>,
    /// Connection-level limits of the mirror and metrics servers.
    pub server: ServerLimits,
    pub p2p: shoal_p2p::Config,
    pub watch: WatchConfig,
    /// How long in-flight requests may take to finish after shutdown was asked for.
    pub shutdown_grace: Duration,
    /// Capacity of the in-memory fetch event log (`shoal explain`).
    pub event_log_capacity: usize,
    /// Unix socket of the admin API (`shoal status|peers|find|explain`); `None` disables it.
    pub admin_socket: Option<PathBuf>,
}

/// A started daemon.
#[derive(Debug)]
pub struct Running {
    /// Where the mirror listens (port resolved when 0 was asked for).
    pub mirror_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub p2p: shoal_p2p::Handle,
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub events: Arc<EventLog>,
    pub store: ContainerdStore,
    pub advertised: Advertised,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    p2p_task: tokio::task::JoinHandle<()>,
    grace: Duration,
}

/// Entry point of the daemon's wiring.
#[derive(Debug)]
pub struct App;

impl App {
    /// Binds the mirror and metrics listeners, starts the DHT and the background tasks, and
    /// returns at once: containerd is connected in the background (with backoff), and until then
    /// the mirror answers fast 404s so containerd falls back upstream.
    pub async fn start(cfg: DaemonConfig) -> anyhow::Result<Running> {
        let mirror_listener = TcpListener::bind(cfg.mirror_addr)
            .await
            .with_context(|| format!("cannot listen on --mirror-addr {}", cfg.mirror_addr))?;
        let metrics_listener = TcpListener::bind(cfg.metrics_addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {}", cfg.metrics_addr))?;
        let mirror_addr = mirror_listener.local_addr()?;
        let metrics_addr = metrics_listener.local_addr()?;
        let admin_listener = match &cfg.admin_socket {
            Some(path) => Some((crate::admin::bind(path)?, path.clone())),
            None => None,
        };

        let mut p2p_cfg = cfg.p2p.clone();
        p2p_cfg.mirror_port = mirror_addr.port();
        let (p2p, p2p_task) = shoal_p2p::spawn(p2p_cfg)
            .await
            .context("cannot start the peer-to-peer node")?;
        tracing::info!(peer = %p2p.peer_id(), mirror = %mirror_addr, metrics = %metrics_addr, "shoal started");

        let shutdown = CancellationToken::new();
        let advertised = Advertised::default();
        let store = ContainerdStore::new(advertised.clone(), cfg.allowlist.clone());
        let metrics = Metrics::new();
        let readiness = Readiness::new();
        let events = Arc::new(EventLog::new(cfg.event_log_capacity));
        let mut mirror_cfg = cfg.mirror.clone();
        mirror_cfg.allowlist = cfg.allowlist.clone();
        let state = MirrorState::builder(
            mirror_cfg,
            Arc::new(store.clone()),
            Arc::new(DhtProviders {
                handle: p2p.clone(),
                mirror_port: mirror_addr.port(),
            }),
        )
        .metrics(metrics.clone())
        .events(events.clone())
        .peer_auth(cfg.peer_auth.clone())
        .ingest(Arc::new(store.clone()))
        .build()
        .context("invalid mirror configuration")?;

        let mut tasks = JoinSet::new();
        let mirror_up = Arc::new(AtomicBool::new(true));
        let mirror = shoal_mirror::serve(
            "mirror",
            mirror_listener,
            shoal_mirror::router(state.clone()),
            cfg.server.clone(),
            metrics.refusals().clone(),
            shutdown.clone(),
        );
        let up = mirror_up.clone();
        tasks.spawn(async move {
            mirror.await;
            up.store(false, Ordering::Relaxed);
        });
        // Same bounds as the mirror: the kubelet's probes get through a flood of idle
        // connections because a newcomer takes an idle connection's place (`server.rs`).
        tasks.spawn(shoal_mirror::serve(
            "metrics",
            metrics_listener,
            shoal_mirror::metrics_router(metrics.clone(), readiness.clone()),
            cfg.server.clone(),
            metrics.refusals().clone(),
            shutdown.clone(),
        ));
        tasks.spawn(follow_containerd(
            cfg.clone(),
            state.clone(),
            store.clone(),
            advertised.clone(),
            p2p.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        if let Some((listener, path)) = admin_listener {
            let admin = crate::admin::AdminState {
                p2p: p2p.clone(),
                events: events.clone(),
                event_log_capacity: cfg.event_log_capacity,
                store: store.clone(),
                advertised: advertised.clone(),
                allowlist: cfg.allowlist.clone(),
                containerd_socket: cfg.containerd_socket.clone(),
                containerd_namespace: cfg.containerd_namespace.clone(),
                mirror_addr,
                metrics_addr,
                started: std::time::SystemTime::now(),
                http: reqwest::Client::new(),
            };
            tasks.spawn(crate::admin::serve(listener, path, admin, shutdown.clone()));
        }
        tasks.spawn(ready::report_status(
            ready::Checks {
                store: store.clone(),
                p2p: p2p.clone(),
                metrics: metrics.clone(),
                readiness: readiness.clone(),
                spool_dir: cfg.mirror.spool_dir.clone(),
                mirror_up,
            },
            shutdown.clone(),
        ));

        Ok(Running {
            mirror_addr,
            metrics_addr,
            p2p,
            metrics,
            readiness,
            events,
            store,
            advertised,
            shutdown,
            tasks,
            p2p_task,
            grace: cfg.shutdown_grace,
        })
    }
}

impl Running {
    /// A token that, once cancelled, starts the drain (e.g. from a signal handler).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for the shutdown token, then drains: servers stop accepting and finish in-flight
    /// requests within the grace period; the DHT node stops last.
    pub async fn wait(mut self) {
        self.shutdown.cancelled().await;
        tracing::info!(grace = ?self.grace, "draining");
        self.readiness.set_ready(false);
        let drain = async {
            while let Some(res) = self.tasks.join_next().await {
                if let Err(e) = res {
                    tracing::error!(error = %e, "daemon task failed");
                }
            }
        };
        if tokio::time::timeout(self.grace, drain).await.is_err() {
            tracing::warn!("grace period over; aborting remaining requests");
            self.tasks.abort_all();
        }
        self.p2p.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.p2p_task).await;
        tracing::info!("stopped");
    }

    /// Asks for shutdown and drains.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// Connects to containerd (retrying with capped backoff: containerd may start after Shoal),
/// then follows its content and mirrors every change onto the DHT.
async fn follow_containerd(
    cfg: DaemonConfig,
    mirror: MirrorState,
    store: ContainerdStore,
    advertised: Advertised,
    p2p: shoal_p2p::Handle,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let source = loop {
        let attempt = ContentSource::connect(
            &cfg.containerd_socket,
            &cfg.containerd_namespace,
            cfg.containerd_content_dir.clone(),
        );
        match attempt.await {
            Ok(source) => break source,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "containerd not reachable yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    match source.version().await {
        Ok(v) => tracing::info!(version = %v.version, "connected to containerd"),
        Err(e) => tracing::warn!(error = %e, "containerd version unknown"),
    }
    store.set_source(source.clone());
    let (mut changes, watcher) =
        source.watch(cfg.allowlist.clone(), cfg.watch.clone(), shutdown.clone());
    while let Some(change) = changes.recv().await {
        let result = match &change {
            Change::Added(keys) => {
                // Serve before advertising: a peer that finds us must get the bytes.
                advertised.add(keys);
                // Piece lists for what peers may now pull (computed once, in the background).
                mirror.prepare_pieces(
                    keys.iter()
                        .filter_map(|k| match k {
                            Key::Digest(d) => Some(d.clone()),
                            Key::Tag(_) => None,
                        })
                        .collect(),
                );
                p2p.provide(keys.clone()).await.map(|_| ())
            }
            Change::Removed(keys) => {
                // Withdraw before we stop serving, for the same reason in reverse.
                let r = p2p.withdraw(keys.clone()).await.map(|_| ());
                advertised.remove(keys);
                r
            }
        };
        metrics.set_advertised_keys(i64::try_from(advertised.len()).unwrap_or(i64::MAX));
        match (&change, result) {
            (_, Err(e)) => tracing::warn!(error = %e, "DHT update failed"),
            (Change::Added(k), Ok(())) => tracing::debug!(keys = k.len(), "advertised"),
            (Change::Removed(k), Ok(())) => tracing::debug!(keys = k.len(), "withdrawn"),
        }
    }
    let _ = watcher.await;
}
