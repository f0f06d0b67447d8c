//! A node's side of the election on a miss: claim, then either go upstream (fetcher, or no
//! election possible) or wait, bounded, for its source (the fetcher, or a node streaming from
//! it) to serve the blob as it arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use shoal_oci::Digest;

use super::{arbiter, claim};
use crate::client::{OpenError, Opened, PeerPath};
use crate::events::FetchEventKind;
use crate::source::{LocalPeer, Provider};
use crate::state::Shared;

/// How often a waiter asks its source again.
const POLL: Duration = Duration::from_millis(50);

/// What a miss turned into.
pub(crate) enum Elected {
    /// Answer 404: this node's containerd fetches the blob upstream (it was elected, or there
    /// is nobody to elect with).
    Upstream,
    /// The fetcher answered: stream the blob from this response.
    Stream(Box<Opened>),
}

/// Run the election for a miss of `digest` (a whole-blob GET from the local containerd).
pub(crate) async fn on_miss(
    shared: &Arc<Shared>,
    registry: &str,
    path: &PeerPath,
    digest: &Digest,
) -> Elected {
    let wait = shared.cfg.herd_wait;
    if wait.is_zero() {
        return Elected::Upstream;
    }
    let Some((me, peers)) = members(shared, None).await else {
        return Elected::Upstream;
    };
    if peers.is_empty() {
        return Elected::Upstream;
    }
    let key = digest.to_string();
    let arb = arbiter(&me.peer, &peers, digest);
    let arb_name = arb.map_or_else(|| me.peer.clone(), |a| a.peer.clone());
    let fetcher = match claim::ask(shared, &me, arb, digest, None).await {
        Ok(f) => f,
        Err(reason) => {
            tracing::warn!(digest = %digest, arbiter = %arb_name, %reason, "no answer from the herd arbiter; fetching upstream");
            // The miss event already explains the 404; the log and the metric say why no
            // election ran.
            shared.metrics.herd("no_arbiter");
            return Elected::Upstream;
        }
    };
    if fetcher.peer == me.peer {
        tracing::info!(digest = %digest, arbiter = %arb_name, "elected to fetch the blob upstream");
        shared.metrics.herd("fetcher");
        shared.event(&key, None, FetchEventKind::HerdFetch { arbiter: arb_name });
        return Elected::Upstream;
    }
    let started = Instant::now();
    let deadline = started + wait;
    let mut source = fetcher;
    // The first source, and at most one other if it fails: all within `herd_wait`.
    for attempt in 0..2 {
        let got = if shared.bad.is_bad(&source.peer, digest) {
            // It served bad bytes of this blob (say, its copy went bad since): never wait for it.
            Err("it served bad bytes of this blob".to_owned())
        } else {
            first_bytes(shared, &source, registry, path, (0, None), deadline).await
        };
        let reason = match got {
            Ok(o) => {
                let waited_ms = started.elapsed().as_millis() as u64;
                tracing::info!(digest = %digest, source = %source.peer, waited_ms, in_flight = o.in_flight, "streaming the blob from a node receiving it");
                shared.metrics.herd("streamed");
                shared.event(
                    &key,
                    Some(&source.peer),
                    FetchEventKind::HerdWait { waited_ms },
                );
                return Elected::Stream(Box::new(o));
            }
            Err(reason) => reason,
        };
        tracing::warn!(digest = %digest, source = %source.peer, %reason, "the node named by the herd arbiter did not serve the blob");
        shared.metrics.herd("timeout");
        shared.event(
            &key,
            Some(&source.peer),
            FetchEventKind::HerdGaveUp { reason },
        );
        // Reported, it is dropped: the arbiter names an earlier source, or this node (fetch).
        match claim::ask(shared, &me, arb, digest, Some(&source.peer)).await {
            Ok(next) if attempt == 0 && next.peer != me.peer && Instant::now() < deadline => {
                source = next;
            }
            _ => break,
        }
    }
    Elected::Upstream
}

/// This node and the peers it holds a live connection to (less `without`), among which the
/// arbiter is chosen; `None` without a DHT.
async fn members(shared: &Shared, without: Option<&str>) -> Option<(LocalPeer, Vec<Provider>)> {
    let me = shared.providers.local()?;
    let mut peers = tokio::time::timeout(super::CLAIM_TIMEOUT, shared.providers.connected())
        .await
        .unwrap_or_default();
    if let Some(w) = without {
        peers.retain(|p| p.peer != w);
    }
    Some((me, peers))
}

/// Ask `source` for the blob from `offset` (of `size`, once known) until it answers or
/// `deadline`; a node that refuses connections is not waited for.
async fn first_bytes(
    shared: &Arc<Shared>,
    source: &Provider,
    registry: &str,
    path: &PeerPath,
    (offset, size): (u64, Option<u64>),
    deadline: Instant,
) -> Result<Opened, String> {
    loop {
        let opened = shared
            .client
            .open(Method::GET, source.clone(), registry, path, offset, size)
            .await;
        let last = match opened {
            Ok(o) => return Ok(o),
            Err(OpenError::Http(e)) if e.is_connect() => {
                return Err(format!("cannot connect to it: {e}"));
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() + POLL >= deadline {
            return Err(format!("it did not serve it in time (last: {last})"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The node this one was streaming `digest` from while it downloaded (`failed`) stopped at
/// `offset`: report it to the arbiter. If this node becomes the fetcher, `None`: its body ends
/// and its containerd resumes from the registry with `Range` (its ingest keeps growing, for the
/// others). Otherwise wait, bounded, for the new fetcher to have the bytes from `offset`.
pub(crate) async fn take_over(
    shared: &Arc<Shared>,
    registry: &str,
    path: &PeerPath,
    digest: &Digest,
    failed: &str,
    (offset, size): (u64, u64),
) -> Option<Opened> {
    // The stopped source is left out of the arbiter's choice even while this node's DHT has
    // not noticed yet that it is gone: it was often its own arbiter (a local claim is the
    // fastest), and every node streaming from it saw it stop, so they all choose alike.
    let (me, peers) = members(shared, Some(failed)).await?;
    let arb = arbiter(&me.peer, &peers, digest);
    // Every node that was streaming from the stopped one asks at the same moment: one retry
    // keeps a claim that lost a race for a busy arbiter from sending this node upstream alone.
    let mut asked = claim::ask(shared, &me, arb, digest, Some(failed)).await;
    if asked.is_err() {
        asked = claim::ask(shared, &me, arb, digest, Some(failed)).await;
    }
    let fetcher = match asked {
        Ok(f) => f,
        Err(reason) => {
            tracing::warn!(digest = %digest, %failed, %reason, "no herd arbiter after the fetcher stopped; resuming upstream");
            return None;
        }
    };
    if fetcher.peer == me.peer {
        tracing::info!(digest = %digest, %failed, offset, "the fetcher stopped; this node takes over the upstream download");
        shared.metrics.herd("fetcher");
        return None;
    }
    if fetcher.peer == failed || shared.bad.is_bad(&fetcher.peer, digest) {
        return None;
    }
    let deadline = Instant::now() + shared.cfg.herd_wait;
    match first_bytes(
        shared,
        &fetcher,
        registry,
        path,
        (offset, Some(size)),
        deadline,
    )
    .await
    {
        Ok(o) => {
            tracing::info!(digest = %digest, %failed, source = %fetcher.peer, offset, "the source stopped; continuing from another node receiving the blob");
            shared.metrics.herd("streamed");
            Some(o)
        }
        Err(reason) => {
            tracing::warn!(digest = %digest, %failed, source = %fetcher.peer, %reason, "no node to continue from; resuming upstream");
            None
        }
    }
}
