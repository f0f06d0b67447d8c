//! The shared state behind the mirror router: configuration, the two data sources, the peer
//! client and the observability hooks.

use std::sync::Arc;
use std::time::SystemTime;

use crate::bad_peers::BadPeers;
use crate::client::PeerClient;
use crate::config::MirrorConfig;
use crate::events::{EventSink, FetchEvent, FetchEventKind, NoEvents};
use crate::herd::Herd;
use crate::metrics::Metrics;
use crate::peer_auth::{HeaderMarker, PeerAuth};
use crate::pieces::Pieces;
use crate::source::{IngestControl, LocalStore, Providers};
use crate::spool::Spool;
use crate::timed_store::TimedStore;

/// Why the mirror state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot build the peer HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("invalid mirror configuration: {0}")]
    Config(&'static str),
}

pub(crate) struct Shared {
    pub cfg: MirrorConfig,
    pub local: Arc<dyn LocalStore>,
    pub providers: Arc<dyn Providers>,
    pub auth: Arc<dyn PeerAuth>,
    pub client: PeerClient,
    pub bad: BadPeers,
    pub metrics: Metrics,
    pub events: Arc<dyn EventSink>,
    pub spool: Spool,
    /// Piece lists of local blobs, served to peers.
    pub pieces: Arc<Pieces>,
    /// Aborts local ingests; without it (or while it is unavailable) peer blobs are verified
    /// whole before any byte is sent.
    pub ingest: Option<Arc<dyn IngestControl>>,
    /// One permit per request in flight (held until its body ends).
    pub requests: Arc<tokio::sync::Semaphore>,
    /// One permit per client request being served from peers.
    pub peer_fetches: Arc<tokio::sync::Semaphore>,
    /// The cold-rollout election's claims and the blobs the local containerd asked for.
    pub herd: Herd,
}

impl Shared {
    pub(crate) fn event(&self, key: &str, peer: Option<&str>, kind: FetchEventKind) {
        self.events.on_fetch_event(FetchEvent {
            at: SystemTime::now(),
            key: key.to_owned(),
            peer: peer.map(str::to_owned),
            request: crate::trace::RequestTrace::current_id(key),
            kind,
        });
    }
}

/// State of the mirror router; cheap to clone.
#[derive(Clone)]
pub struct MirrorState(pub(crate) Arc<Shared>);

impl std::fmt::Debug for MirrorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorState")
            .field("cfg", &self.0.cfg)
            .finish_non_exhaustive()
    }
}

impl MirrorState {
    /// Start building a state from the configuration and the two data sources.
    pub fn builder(
        cfg: MirrorConfig,
        local: Arc<dyn LocalStore>,
        providers: Arc<dyn Providers>,
    ) -> MirrorStateBuilder {
        MirrorStateBuilder {
            cfg,
            local,
            providers,
            metrics: None,
            auth: None,
            events: None,
            ingest: None,
        }
    }

    /// The metrics this mirror updates (share them with [`crate::metrics_router`]).
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn config(&self) -> &MirrorConfig {
        &self.0.cfg
    }

    /// Queue the piece lists of newly held local blobs (those above the small-blob threshold)
    /// for computation in the background, so the first peer to pull one can check its pieces.
    /// Bounded: one computation at a time and a short queue; the rest are computed when a peer
    /// first asks.
    pub fn prepare_pieces(&self, digests: Vec<shoal_oci::Digest>) {
        let shared = self.0.clone();
        tokio::spawn(async move {
            for d in digests {
                if let Some(info) = shared.local.stat(&d).await {
                    if info.size > shared.cfg.small_blob_threshold {
                        shared.pieces.ensure(shared.local.clone(), d, info.size);
                    }
                }
            }
        });
    }
}

/// Builder for [`MirrorState`]; metrics, peer auth and event sink have defaults.
pub struct MirrorStateBuilder {
    cfg: MirrorConfig,
    local: Arc<dyn LocalStore>,
    providers: Arc<dyn Providers>,
    metrics: Option<Metrics>,
    auth: Option<Arc<dyn PeerAuth>>,
    events: Option<Arc<dyn EventSink>>,
    ingest: Option<Arc<dyn IngestControl>>,
}

impl std::fmt::Debug for MirrorStateBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorStateBuilder")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl MirrorStateBuilder {
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// How peer requests are signed and who is let in (default: [`HeaderMarker`], which lets
    /// everyone in: the daemon always sets [`crate::HmacAuth`] or [`crate::LoopbackOnly`]).
    pub fn peer_auth(mut self, auth: Arc<dyn PeerAuth>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Where fetch events go (default: dropped).
    pub fn events(mut self, events: Arc<dyn EventSink>) -> Self {
        self.events = Some(events);
        self
    }

    /// How to abort the local containerd's ingests; needed to stream peer blobs before they
    /// are verified whole (default: none, every peer blob is verified before it is sent).
    pub fn ingest(mut self, ingest: Arc<dyn IngestControl>) -> Self {
        self.ingest = Some(ingest);
        self
    }

    pub fn build(self) -> Result<MirrorState, BuildError> {
        if self.cfg.max_attempts == 0 {
            return Err(BuildError::Config("max_attempts must be at least 1"));
        }
        if self.cfg.max_concurrent_requests == 0 {
            return Err(BuildError::Config(
                "max_concurrent_requests must be at least 1",
            ));
        }
        if self.cfg.max_concurrent_peer_fetches == 0 {
            return Err(BuildError::Config(
                "max_concurrent_peer_fetches must be at least 1",
            ));
        }
        if self.cfg.max_concurrent_spools == 0 {
            return Err(BuildError::Config(
                "max_concurrent_spools must be at least 1",
            ));
        }
        if self.cfg.max_peers_per_blob == 0 {
            return Err(BuildError::Config("max_peers_per_blob must be at least 1"));
        }
        if self.cfg.piece_size == 0 {
            return Err(BuildError::Config("piece_size must be at least 1 byte"));
        }
        let spool = Spool::new(self.cfg.spool_dir.clone(), self.cfg.max_concurrent_spools);
        // Not fatal: spooling creates and checks the directory again on every use.
        match spool.clean_stale() {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(dir = %self.cfg.spool_dir.display(), files = n, "removed stale spool files");
            }
            Err(e) => {
                tracing::warn!(dir = %self.cfg.spool_dir.display(), error = %e, "cannot clean the spool directory");
            }
        }
        let auth = self.auth.unwrap_or_else(|| Arc::new(HeaderMarker));
        let client = PeerClient::new(
            self.cfg.connect_timeout,
            self.cfg.first_byte_timeout,
            auth.clone(),
        )?;
        let requests = Arc::new(tokio::sync::Semaphore::new(
            self.cfg.max_concurrent_requests,
        ));
        let peer_fetches = Arc::new(tokio::sync::Semaphore::new(
            self.cfg.max_concurrent_peer_fetches,
        ));
        let pieces = Arc::new(Pieces::new(
            self.cfg.spool_dir.join(crate::pieces::CACHE_DIR),
        ));
        Ok(MirrorState(Arc::new(Shared {
            pieces,
            ingest: self.ingest,
            requests,
            peer_fetches,
            bad: BadPeers::new(self.cfg.bad_peer_ttl),
            local: Arc::new(TimedStore {
                inner: self.local,
                limit: self.cfg.local_timeout,
            }),
            cfg: self.cfg,
            providers: self.providers,
            auth,
            client,
            metrics: self.metrics.unwrap_or_default(),
            events: self.events.unwrap_or_else(|| Arc::new(NoEvents)),
            spool,
            herd: Herd::default(),
        })))
    }
}
