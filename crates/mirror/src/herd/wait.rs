//! A node's side of the election on a miss: claim, then either go upstream (fetcher, or no
//! election possible) or wait, bounded, for the fetcher to serve the blob as it arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use shoal_oci::Digest;

use super::{arbiter, claim};
use crate::client::{Opened, PeerPath};
use crate::events::FetchEventKind;
use crate::source::{LocalPeer, Provider};
use crate::state::Shared;

/// How often a waiter asks the fetcher again.
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
    let Some(me) = shared.providers.local() else {
        return Elected::Upstream;
    };
    let peers = tokio::time::timeout(super::CLAIM_TIMEOUT, shared.providers.connected())
        .await
        .unwrap_or_default();
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
    if shared.bad.is_bad(&fetcher.peer, digest) {
        // It served bad bytes of this blob (say, it fetched the blob earlier and its copy went
        // bad since): never wait for it; the next claimant, this node, fetches upstream.
        return give_up(
            shared,
            &me,
            arb,
            digest,
            &fetcher.peer,
            "it served bad bytes of this blob".into(),
        )
        .await;
    }
    let started = Instant::now();
    let deadline = started + wait;
    let mut last;
    loop {
        let opened = shared
            .client
            .open(Method::GET, fetcher.clone(), registry, path, 0, None)
            .await;
        match opened {
            Ok(o) => {
                let waited_ms = started.elapsed().as_millis() as u64;
                tracing::info!(digest = %digest, fetcher = %fetcher.peer, waited_ms, in_flight = o.in_flight, "streaming the blob from the node fetching it");
                shared.metrics.herd("streamed");
                shared.event(
                    &key,
                    Some(&fetcher.peer),
                    FetchEventKind::HerdWait { waited_ms },
                );
                return Elected::Stream(Box::new(o));
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() + POLL >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let reason = format!("it did not serve it within {wait:?} (last: {last})");
    give_up(shared, &me, arb, digest, &fetcher.peer, reason).await
}

/// The fetcher did not serve the blob (or cannot be trusted with it): report it, so the next
/// claimant (this node, now) fetches upstream.
async fn give_up(
    shared: &Arc<Shared>,
    me: &LocalPeer,
    arb: Option<&Provider>,
    digest: &Digest,
    fetcher: &str,
    reason: String,
) -> Elected {
    tracing::warn!(digest = %digest, %fetcher, %reason, "not waiting for the elected fetcher; fetching upstream");
    shared.metrics.herd("timeout");
    shared.event(
        &digest.to_string(),
        Some(fetcher),
        FetchEventKind::HerdGaveUp { reason },
    );
    if let Err(e) = claim::ask(shared, me, arb, digest, Some(fetcher)).await {
        tracing::debug!(digest = %digest, error = %e, "could not report the failed fetcher");
    }
    Elected::Upstream
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
    let me = shared.providers.local()?;
    let mut peers = tokio::time::timeout(super::CLAIM_TIMEOUT, shared.providers.connected())
        .await
        .unwrap_or_default();
    // The stopped fetcher is left out of the arbiter's choice even while this node's DHT has
    // not noticed yet that it is gone: it was often its own arbiter (a local claim is the
    // fastest), and every node streaming from it saw it stop, so they all choose alike.
    peers.retain(|p| p.peer != failed);
    let arb = arbiter(&me.peer, &peers, digest);
    let fetcher = match claim::ask(shared, &me, arb, digest, Some(failed)).await {
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
    loop {
        let opened = shared
            .client
            .open(
                Method::GET,
                fetcher.clone(),
                registry,
                path,
                offset,
                Some(size),
            )
            .await;
        if let Ok(o) = opened {
            tracing::info!(digest = %digest, %failed, fetcher = %fetcher.peer, offset, "the fetcher stopped; continuing from the node that took over");
            shared.metrics.herd("streamed");
            return Some(o);
        }
        if Instant::now() + POLL >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}
