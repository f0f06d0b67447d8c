//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` router.
//!
//! Label values are bounded: the registry label is an allowlisted name or `other`, so a client
//! sending arbitrary `?ns=` values cannot blow up the series count.

use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::refusal::Refusals;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    registry: String,
    kind: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

/// Where served bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Local,
    Peer,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Peer => "peer",
        }
    }
}

/// The mirror's metrics; cheap to clone (shared handles).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    bytes: Family<SourceLabels, Counter>,
    resolve: Histogram,
    peers: Gauge,
    advertised: Gauge,
    refusals: Refusals,
    stream: Family<StreamLabels, Counter>,
    herd: Family<HerdLabels, Counter>,
    in_flight: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HerdLabels {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    event: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("shoal");
        let requests = Family::<RequestLabels, Counter>::default();
        let bytes = Family::<SourceLabels, Counter>::default();
        // 0.5 ms .. ~2 s: the interesting range is around the 20 ms resolve timeout.
        let resolve = Histogram::new(exponential_buckets(0.0005, 2.0, 13));
        let peers = Gauge::default();
        let advertised = Gauge::default();
        let refused = Family::default();
        registry.register(
            "refusals",
            "Connections and requests turned away, by server and reason (connection_limit, \
             request_limit, unauthorized, rejected, malformed, header_timeout, accept_failed)",
            refused.clone(),
        );
        registry.register(
            "mirror_requests",
            "Mirror requests by registry, kind (manifest/blob/base) and outcome",
            requests.clone(),
        );
        registry.register(
            "mirror_bytes",
            "Bytes served by source (local content store or peer)",
            bytes.clone(),
        );
        registry.register(
            "mirror_resolve_seconds",
            "Time to find the first provider of a key (or give up)",
            resolve.clone(),
        );
        registry.register("peers", "Connected peers", peers.clone());
        registry.register(
            "advertised_keys",
            "Keys (digests and tags) this node advertises",
            advertised.clone(),
        );
        let stream = Family::<StreamLabels, Counter>::default();
        registry.register(
            "mirror_peer_faults",
            "Peer transfer faults by event: stall (no byte for the idle timeout), bad_piece \
             (a piece did not match its list), ingest_aborted / ingest_abort_failed (a blob \
             failed after bytes were sent and containerd's ingest was aborted)",
            stream.clone(),
        );
        let herd = Family::<HerdLabels, Counter>::default();
        registry.register(
            "mirror_herd",
            "Misses that went through the herd election, by outcome: fetcher (this node was \
             elected to fetch upstream), streamed (another node was fetching it and this node \
             streamed it from there: an upstream fetch avoided), timeout (the fetcher did not \
             serve it in time: fetched upstream), no_arbiter (the election could not run)",
            herd.clone(),
        );
        let in_flight = Counter::default();
        registry.register(
            "mirror_in_flight_bytes",
            "Bytes served to peers from a download still in progress on this node",
            in_flight.clone(),
        );
        Metrics {
            herd,
            in_flight,
            stream,
            registry: Arc::new(registry),
            requests,
            bytes,
            resolve,
            peers,
            advertised,
            refusals: Refusals::new(refused),
        }
    }

    /// Where refused connections and requests are counted and (rate-limited) logged.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Count one finished request.
    pub fn request(&self, registry: &str, kind: &str, outcome: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                registry: registry.to_owned(),
                kind: kind.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Requests counted so far for these labels (for tests and `shoal explain`).
    pub fn request_count(&self, registry: &str, kind: &str, outcome: &str) -> u64 {
        self.requests
            .get_or_create(&RequestLabels {
                registry: registry.to_owned(),
                kind: kind.to_owned(),
                outcome: outcome.to_owned(),
            })
            .get()
    }

    pub fn add_bytes(&self, source: Source, n: u64) {
        self.bytes
            .get_or_create(&SourceLabels {
                source: source.as_str().to_owned(),
            })
            .inc_by(n);
    }

    pub fn bytes(&self, source: Source) -> u64 {
        self.bytes
            .get_or_create(&SourceLabels {
                source: source.as_str().to_owned(),
            })
            .get()
    }

    pub fn observe_resolve(&self, d: Duration) {
        self.resolve.observe(d.as_secs_f64());
    }

    fn stream_event(&self, event: &str) {
        self.stream
            .get_or_create(&StreamLabels {
                event: event.to_owned(),
            })
            .inc();
    }

    /// A miss went through the herd election with `outcome`.
    pub(crate) fn herd(&self, outcome: &str) {
        self.herd
            .get_or_create(&HerdLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Bytes passed on to a peer from a download in progress.
    pub(crate) fn add_in_flight_bytes(&self, n: u64) {
        self.in_flight.inc_by(n);
    }

    /// A peer sent nothing for the idle timeout.
    pub fn peer_stall(&self) {
        self.stream_event("stall");
    }

    /// A piece did not match its piece list.
    pub fn bad_piece(&self) {
        self.stream_event("bad_piece");
    }

    /// An ingest abort was attempted (`ok`: containerd answered).
    pub fn ingest_abort(&self, ok: bool) {
        self.stream_event(if ok {
            "ingest_aborted"
        } else {
            "ingest_abort_failed"
        });
    }

    /// Peer faults counted so far for `event` (for tests and `shoal explain`).
    pub fn peer_faults(&self, event: &str) -> u64 {
        self.stream
            .get_or_create(&StreamLabels {
                event: event.to_owned(),
            })
            .get()
    }

    /// Set from the DHT side.
    pub fn set_peers(&self, n: i64) {
        self.peers.set(n);
    }

    /// Set by the advertiser.
    pub fn set_advertised_keys(&self, n: i64) {
        self.advertised.set(n);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Whether this node's mirror can serve and fetch, and if not why (the `/readyz` answer). The
/// daemon sets it from bounded checks (containerd answers, the spool directory is writable, the
/// mirror listener runs, the DHT is up); starts not ready.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<RwLock<Result<(), String>>>);

impl Default for Readiness {
    fn default() -> Self {
        Readiness(Arc::new(RwLock::new(Err("starting".into()))))
    }
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set_ready(&self, ready: bool) {
        self.set(if ready {
            Ok(())
        } else {
            Err("not ready".into())
        });
    }
    /// Ready, or not ready for the reason given.
    pub fn set(&self, state: Result<(), String>) {
        if let Ok(mut s) = self.0.write() {
            *s = state;
        }
    }
    pub fn is_ready(&self) -> bool {
        self.state().is_ok()
    }
    /// `Err(reason)` while not ready.
    pub fn state(&self) -> Result<(), String> {
        self.0
            .read()
            .map_or_else(|_| Err("readiness state poisoned".into()), |s| s.clone())
    }
}

#[derive(Debug, Clone)]
struct MetricsState {
    metrics: Metrics,
    ready: Readiness,
}

/// `/metrics` (OpenMetrics text), `/healthz` (liveness: 200 while the process and its runtime
/// answer), `/readyz` (200 while `ready` holds, else 503 with the reason). Every answer has a
/// `Content-Length` and is computed without waiting on anything: the checks behind readiness
/// run elsewhere, so a probe is answered at once even when containerd hangs.
pub fn metrics_router(metrics: Metrics, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(serve_ready))
        .with_state(MetricsState { metrics, ready })
}

async fn serve_metrics(State(s): State<MetricsState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn serve_ready(State(s): State<MetricsState>) -> Response {
    match s.ready.state() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}
