//! The mirror router: request parsing, the allowlist and peer rules, and dispatch to the local
//! store or to peers.
//!
//! Order of checks, each answering at once: requests in flight (503 over the limit), method
//! (GET/HEAD), who is asking (loopback client, signed peer, or 401), the upstream registry
//! (`?ns=`, which containerd always sends to a mirror; without it, an explicit
//! `/v2/<registry>/<repository>/…` prefix; never guessed, since a guess could cross the
//! allowlist), path grammar, allowlist (404 before any lookup), `Range` syntax. Then local
//! content; then, for requests from the local containerd only, peers. Requests marked as coming
//! from a peer are answered from local content only, so requests never loop between nodes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};
use shoal_oci::{
    ApiPath, Digest, Key, ManifestRef, Range, Repository, TagKey, normalize_registry,
    split_registry,
};
use tracing::{Instrument, field};

use crate::client::PeerPath;
use crate::download;
use crate::error::MirrorError;
use crate::events::{FetchEventKind, RequestEnd};
use crate::fetch::{Fetch, GaveUp, Pool};
use crate::herd::{self, Elected};
use crate::metrics::Source;
use crate::multi;
use crate::peer_auth::PeerCheck;
use crate::pieces;
use crate::refusal::Refusal;
use crate::serve::{self, Meta};
use crate::server::Activity;
use crate::source::{BlobInfo, Provider};
use crate::spool::SpoolError;
use crate::state::{MirrorState, Shared};
use crate::stream;
use crate::trace::{RequestTrace, TracedBody};

mod manifest;

use manifest::{manifest_by_digest, manifest_by_tag};

type Served = Result<(Response, Source), MirrorError>;

/// The mirror's HTTP router (`/v2/…`). Every path goes through one handler so unknown routes
/// also get the OCI error JSON.
pub fn router(state: MirrorState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// One parsed content request.
struct Ask {
    registry: String,
    head: bool,
    from_peer: bool,
    range: Option<Range>,
    /// Peer-side progress for the connection's idle timeout (absent without the server).
    activity: Option<Activity>,
}

async fn handle(State(state): State<MirrorState>, req: Request) -> Response {
    let shared = state.0;
    let (parts, _) = req.into_parts();
    let remote = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    // Load shedding before any work: a 503 is cheap and containerd falls back to the next host.
    let Ok(permit) = shared.requests.clone().try_acquire_owned() else {
        shared.metrics.request("none", "other", "overloaded");
        let limit = shared.cfg.max_concurrent_requests;
        shared.metrics.refusals().refuse(
            SERVER,
            Refusal::RequestLimit,
            remote,
            &format_args!("limit {limit}"),
        );
        return MirrorError::Overloaded(limit).into_response();
    };
    let span = tracing::info_span!(
        "mirror",
        method = %parts.method,
        repo = field::Empty,
        digest = field::Empty,
        ns = field::Empty,
        source = field::Empty,
        peer = field::Empty,
    );
    let started = Instant::now();
    let trace = RequestTrace::new(shared.events.clone());
    let (kind, label, result) = trace
        .clone()
        .scope(dispatch(&shared, &parts, remote))
        .instrument(span.clone())
        .await;
    let outcome = match &result {
        Ok((_, source)) => source.as_str(),
        Err(e) => e.outcome(),
    };
    shared.metrics.request(&label, kind, outcome);
    let _g = span.enter();
    match result {
        Ok((res, source)) => {
            span.record("source", source.as_str());
            tracing::debug!(status = %res.status(), elapsed = ?started.elapsed(), "answered");
            if parts.method == Method::HEAD {
                trace.end(RequestEnd::Completed { sent: 0 });
            }
            // The permit lives as long as the body: a streaming blob counts until its last byte.
            let (res_parts, body) = res.into_parts();
            let length = res_parts.headers.get(header::CONTENT_LENGTH);
            let length = length.and_then(|v| v.to_str().ok()?.parse().ok());
            Response::from_parts(res_parts, TracedBody::wrap(body, trace, length, permit))
        }
        Err(e) => {
            let reason = e.to_string();
            trace.end(RequestEnd::Failed {
                status: e.status().as_u16(),
                reason: reason.clone(),
            });
            let refusal = match &e {
                MirrorError::Unauthenticated => Some(Refusal::Unauthorized),
                MirrorError::PeerRejected => Some(Refusal::Rejected),
                MirrorError::Path(_)
                | MirrorError::MissingNamespace
                | MirrorError::MethodNotAllowed(_) => Some(Refusal::Malformed),
                _ => None,
            };
            let mut res = e.into_response();
            match refusal {
                Some(r) => {
                    shared.metrics.refusals().refuse(
                        SERVER,
                        r,
                        remote,
                        &format_args!("{} {}", parts.method, parts.uri.path()),
                    );
                    // A refused client keeps no idle connection (and no slot) open.
                    res.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                None => {
                    tracing::debug!(error = %reason, status = %res.status(), elapsed = ?started.elapsed(), "not served");
                }
            }
            res
        }
    }
}

/// The `server` label of the mirror's refusals.
const SERVER: &str = "mirror";

/// Returns (kind, registry label, result) for metrics.
async fn dispatch(
    shared: &Arc<Shared>,
    parts: &http::request::Parts,
    remote: Option<SocketAddr>,
) -> (&'static str, String, Served) {
    let head = match parts.method {
        Method::GET => false,
        Method::HEAD => true,
        ref m => {
            return (
                "other",
                "none".into(),
                Err(MirrorError::MethodNotAllowed(m.clone())),
            );
        }
    };
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let from_peer = match shared.auth.check(&parts.method, pq, &parts.headers, remote) {
        PeerCheck::Client => false,
        PeerCheck::Peer => true,
        PeerCheck::Rejected => return ("other", "none".into(), Err(MirrorError::PeerRejected)),
        PeerCheck::Unauthenticated => {
            return ("other", "none".into(), Err(MirrorError::Unauthenticated));
        }
    };
    if let Some(rest) = parts.uri.path().strip_prefix(pieces::ROUTE) {
        let served = pieces::serve_list(shared, from_peer, head, rest).await;
        return ("pieces", "none".into(), served);
    }
    let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    if let Some(rest) = parts.uri.path().strip_prefix(herd::claim::ROUTE) {
        let served = herd::claim::serve(shared, from_peer, rest, &query, remote);
        return ("herd", "none".into(), served);
    }
    let ns = query.get("ns").cloned().filter(|ns| !ns.is_empty());
    // Without `?ns=` (clients other than containerd: skopeo, crane, oras), the registry may
    // lead the repository: `/v2/<registry>/<repository>/…`. Never guessed otherwise.
    let (path, ns) = match ns {
        Some(ns) => (parts.uri.path().to_owned(), Some(ns)),
        None => match split_registry(parts.uri.path()) {
            Some((registry, rest)) => (rest, Some(registry)),
            None => (parts.uri.path().to_owned(), None),
        },
    };
    let api = match ApiPath::parse(&path) {
        Ok(a) => a,
        Err(e) => return ("other", "none".into(), Err(e.into())),
    };
    let kind = match &api {
        ApiPath::Base => {
            let mut res = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{}",
            )
                .into_response();
            res.headers_mut().insert(
                "docker-distribution-api-version",
                HeaderValue::from_static("registry/2.0"),
            );
            return ("base", "none".into(), Ok((res, Source::Local)));
        }
        ApiPath::Manifest { .. } => "manifest",
        ApiPath::Blob { .. } => "blob",
    };
    let Some(ns) = ns else {
        return (kind, "none".into(), Err(MirrorError::MissingNamespace));
    };
    let registry = normalize_registry(&ns);
    if !shared.cfg.allowlist.allows(&registry) {
        // Bounded label: arbitrary ns values never become series.
        return (
            kind,
            "other".into(),
            Err(MirrorError::RegistryNotAllowed(registry)),
        );
    }
    let span = tracing::Span::current();
    span.record("ns", registry.as_str());
    if let Some(repo) = api.repository() {
        span.record("repo", repo.as_str());
    }
    let range = if head {
        Ok(None)
    } else {
        serve::parse_range(parts.headers.get(header::RANGE))
    };
    let range = match range {
        Ok(r) => r,
        Err(e) => return (kind, registry, Err(e)),
    };
    // The record of this request is kept under the key it asks for, from here on, so even an
    // answer that fails before any lookup (a bad range) is explained.
    let key = match &api {
        ApiPath::Blob { digest, .. }
        | ApiPath::Manifest {
            reference: ManifestRef::Digest(digest),
            ..
        } => digest.to_string(),
        ApiPath::Manifest {
            repository,
            reference: ManifestRef::Tag(tag),
        } => TagKey::new(registry.as_str(), repository.as_str(), tag.as_str()).to_string(),
        ApiPath::Base => String::new(),
    };
    RequestTrace::current_id(&key);
    let ask = Ask {
        registry: registry.clone(),
        head,
        from_peer,
        range,
        activity: parts.extensions.get::<Activity>().cloned(),
    };
    let result = match api {
        ApiPath::Blob { repository, digest } => blob(shared, &ask, repository, digest).await,
        ApiPath::Manifest {
            repository,
            reference: ManifestRef::Digest(d),
        } => manifest_by_digest(shared, &ask, repository, d).await,
        ApiPath::Manifest {
            repository,
            reference: ManifestRef::Tag(t),
        } => manifest_by_tag(shared, &ask, repository, t).await,
        ApiPath::Base => unreachable_base(),
    };
    (kind, registry, result)
}

fn unreachable_base() -> Served {
    Err(MirrorError::Internal("base route dispatched twice".into()))
}

/// A slot among `max_concurrent_peer_fetches`, waited for at most `first_byte_timeout`; none
/// free means 404 (containerd goes upstream) rather than an unbounded queue.
async fn peer_slot(
    shared: &Arc<Shared>,
    miss: MirrorError,
) -> Result<tokio::sync::OwnedSemaphorePermit, MirrorError> {
    let wait = shared.peer_fetches.clone().acquire_owned();
    match tokio::time::timeout(shared.cfg.first_byte_timeout, wait).await {
        Ok(Ok(p)) => Ok(p),
        _ => {
            tracing::warn!(
                limit = shared.cfg.max_concurrent_peer_fetches,
                "all peer fetch slots busy; answering 404"
            );
            Err(miss)
        }
    }
}

/// Wait (at most `resolve_timeout`) for the first provider of `key`. On a miss the pool is
/// returned too: its lookup goes on, for a transfer the rollout election starts (see `herd`).
async fn resolve(
    shared: &Arc<Shared>,
    key: &Key,
    digest: Option<&Digest>,
) -> Result<(Pool, Provider), Pool> {
    let started = Instant::now();
    let mut pool = Pool::new(shared.providers.find(key));
    let first = pool.next(shared, digest, shared.cfg.resolve_timeout).await;
    shared.metrics.observe_resolve(started.elapsed());
    match first {
        Some(p) => Ok((pool, p)),
        None => {
            tracing::debug!(key = %key, "no provider within the resolve timeout");
            shared.event(&key.to_string(), None, FetchEventKind::Miss);
            Err(pool)
        }
    }
}

fn fetch(shared: &Arc<Shared>, ask: &Ask, path: PeerPath, key: &Key, pool: Pool) -> Fetch {
    Fetch {
        shared: shared.clone(),
        registry: ask.registry.clone(),
        path,
        key: key.to_string(),
        pool,
        attempts: 0,
        activity: ask.activity.clone(),
    }
}

fn record_peer(p: &str) {
    tracing::Span::current().record("peer", p);
}

async fn blob(shared: &Arc<Shared>, ask: &Ask, repository: Repository, digest: Digest) -> Served {
    tracing::Span::current().record("digest", field::display(&digest));
    if let Some(info) = shared.local.stat(&digest).await {
        return local_blob(shared, ask, digest, info).await;
    }
    let unknown = || MirrorError::BlobUnknown(digest.to_string());
    if ask.from_peer {
        // A blob this node's containerd is still downloading is passed on as it arrives.
        let in_flight = herd::in_flight::serve(shared, ask.head, ask.range, &digest).await;
        return in_flight.unwrap_or_else(|| Err(unknown()));
    }
    shared.herd.asked(&digest);
    let slot = peer_slot(shared, unknown()).await?;
    let key = Key::Digest(digest.clone());
    let path = PeerPath::Blob {
        repository,
        digest: digest.clone(),
    };
    let gave_up = |GaveUp(why)| MirrorError::BlobUnknown(format!("{digest} (peers failed: {why})"));
    let (mut f, opened) = match resolve(shared, &key, Some(&digest)).await {
        Ok((pool, first)) => {
            let mut f = fetch(shared, ask, path, &key, pool);
            let method = if ask.head { Method::HEAD } else { Method::GET };
            let opened = f
                .open(method, Some(first), 0, None)
                .await
                .map_err(gave_up)?;
            (f, opened)
        }
        // Only a whole-blob GET takes part in the cold-rollout election (see `herd`).
        Err(_) if ask.head || ask.range.is_some() => return Err(unknown()),
        Err(pool) => match herd::on_miss(shared, &ask.registry, &path, &digest).await {
            Elected::Upstream => return Err(unknown()),
            Elected::Stream(opened) => (fetch(shared, ask, path, &key, pool), *opened),
        },
    };
    record_peer(&opened.provider.peer);
    let content_type = opened
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    let mut meta = Meta {
        digest: digest.clone(),
        size: opened.size,
        content_type,
    };
    if ask.head {
        shared.event(
            &f.key,
            Some(&opened.provider.peer),
            FetchEventKind::HeadAnswered { size: opened.size },
        );
        return Ok((serve::head(&meta), Source::Peer));
    }
    let threshold = shared.cfg.small_blob_threshold;
    if opened.size <= threshold {
        let (bytes, _) = f.buffered(opened, threshold).await.map_err(gave_up)?;
        meta.size = bytes.len() as u64;
        return Ok((serve::buffered(&meta, ask.range, bytes)?, Source::Peer));
    }
    let cfg = &shared.cfg;
    // A blob still downloading on its holder streams from that one node, as it arrives.
    let multi =
        opened.size > cfg.multi_peer_threshold && cfg.max_peers_per_blob > 1 && !opened.in_flight;
    let ingest = stream::ingest_for(shared, ask.range.is_none());
    let w = serve::window(ask.range, opened.size)?;
    if let Some(ingest) = ingest.clone().filter(|_| !multi) {
        let body = stream::start(f, digest.clone(), opened, ingest, slot)
            .await
            .map_err(gave_up)?;
        return Ok((serve::streamed(&meta, w, body), Source::Peer));
    }
    // A multi-peer blob streams only with a piece list (see `multi`).
    let asked = (multi && ingest.is_some()).then_some(&opened.provider);
    let list = multi::stream::list(shared, asked, &digest, opened.size).await;
    // A spool file: the reorder buffer of a streamed multi-peer blob, or where the blob is
    // verified whole before anything is sent (see `download`; a `Range` is served from it).
    let key = f.key.clone();
    let not_spooled = |e: SpoolError| {
        tracing::warn!(digest = %digest, size = meta.size, error = %e, "cannot spool the blob; answering 404");
        let reason = e.to_string();
        shared.event(&key, None, FetchEventKind::GaveUp { reason });
        MirrorError::BlobUnknown(format!("{digest} (not spooled: {e})"))
    };
    let mut file = shared
        .spool
        .create(meta.size, digest.algorithm(), cfg.first_byte_timeout)
        .await
        .map_err(not_spooled)?;
    if let (Some(ingest), Some(list)) = (ingest, list) {
        let body = multi::stream::start(f, digest.clone(), opened, list, ingest, (slot, file))
            .await
            .map_err(gave_up)?;
        return Ok((serve::streamed(&meta, w, body), Source::Peer));
    }
    if multi {
        multi::download(&mut f, &digest, opened, &mut file).await
    } else {
        download::download(&mut f, &digest, opened, &mut file).await
    }
    .map_err(gave_up)?;
    let body = file
        .into_body(w.start, w.end - w.start, shared.metrics.clone())
        .await
        .map_err(|e| not_spooled(e.into()))?;
    Ok((serve::streamed(&meta, w, body), Source::Peer))
}

async fn local_blob(shared: &Arc<Shared>, ask: &Ask, digest: Digest, info: BlobInfo) -> Served {
    if shared.pieces.is_corrupt(&digest) {
        return Err(MirrorError::BlobUnknown(format!(
            "{digest} (the local copy does not match its digest)"
        )));
    }
    if ask.from_peer && info.size > shared.cfg.small_blob_threshold {
        // Peers will want its piece list: compute it once, in the background.
        shared
            .pieces
            .ensure(shared.local.clone(), digest.clone(), info.size);
    }
    let meta = Meta {
        digest,
        size: info.size,
        content_type: info
            .media_type
            .unwrap_or_else(|| "application/octet-stream".into()),
    };
    if ask.head {
        return Ok((serve::head(&meta), Source::Local));
    }
    let w = serve::window(ask.range, info.size)?;
    let body = serve::local_body(
        shared.local.as_ref(),
        &shared.metrics,
        &meta.digest,
        w.start,
        w.end - w.start,
    )
    .await?;
    shared.event(&meta.digest.to_string(), None, FetchEventKind::Local);
    Ok((serve::streamed(&meta, w, body), Source::Local))
}
