//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` router.
//!
//! Label values are bounded: the registry label is an allowlisted name or `other`, so a client
//! sending arbitrary `?ns=` values cannot blow up the series count.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    stream: Family<StreamLabels, Counter>,
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
        Metrics {
            stream,
            registry: Arc::new(registry),
            requests,
            bytes,
            resolve,
            peers,
            advertised,
        }
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

/// Whether the daemon is ready to serve (set once the content store and DHT are up).
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
struct MetricsState {
    metrics: Metrics,
    ready: Readiness,
}

/// `/metrics` (OpenMetrics text), `/healthz` (always 200 while the process runs), `/readyz`
/// (200 once `ready` is set, 503 before).
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
    if s.ready.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}
