//! The arbiter's side of the election and the request a missing node sends it.
//!
//! `GET /shoal/v1/herd/<digest>?peer=<peer id>&port=<mirror port>[&failed=<peer id>]`, from
//! signed peers only. The answer is in its headers: `shoal-herd-source` (the peer id of the node
//! to read the blob from: the claimant itself means "fetch it upstream") and, unless that node is
//! the arbiter itself, `shoal-herd-source-addr` (its mirror endpoint: its address as the arbiter
//! saw its own claim's connection, with the port it gave). A claim has no
//! body and changes nothing but the arbiter's claim table, which is bounded
//! (see [`super::Herd::claim`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use shoal_oci::Digest;

use super::{CLAIM_TIMEOUT, Claim};
use crate::error::MirrorError;
use crate::metrics::Source;
use crate::source::{LocalPeer, Provider};
use crate::state::Shared;

/// Path prefix of the claim route.
pub(crate) const ROUTE: &str = "/shoal/v1/herd/";
const SOURCE: &str = "shoal-herd-source";
const SOURCE_ADDR: &str = "shoal-herd-source-addr";
/// Longest peer id accepted in a claim (libp2p ids are ~52 characters).
const MAX_PEER_ID: usize = 128;

/// Answer a claim from a peer (`rest` is the path after [`ROUTE`]).
pub(crate) fn serve(
    shared: &Arc<Shared>,
    from_peer: bool,
    rest: &str,
    query: &HashMap<String, String>,
    remote: Option<SocketAddr>,
) -> Result<(Response, Source), MirrorError> {
    if !from_peer {
        // Claims are for peers: the local containerd never sends one, and no one else may.
        return Err(MirrorError::Unauthenticated);
    }
    let bad = |why: &str| MirrorError::BlobUnknown(format!("{rest:?} (bad herd claim: {why})"));
    let digest: Digest = rest.parse().map_err(|_| bad("not a digest"))?;
    let peer = query
        .get("peer")
        .filter(|p| !p.is_empty() && p.len() <= MAX_PEER_ID)
        .ok_or_else(|| bad("no peer"))?;
    let port: u16 = query
        .get("port")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("no port"))?;
    let remote = remote.ok_or_else(|| bad("no remote address"))?;
    let failed = query.get("failed").map(String::as_str);
    let claim = shared.herd.claim(
        &digest,
        peer,
        Some(SocketAddr::new(remote.ip(), port)),
        failed,
    );
    tracing::debug!(digest = %digest, claimant = %peer, source = %claim.peer, ?failed, "herd claim");
    let mut res = StatusCode::OK.into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&claim.peer) {
        h.insert(SOURCE, v);
    }
    if let Some(Ok(v)) = claim.addr.map(|a| HeaderValue::from_str(&a.to_string())) {
        h.insert(SOURCE_ADDR, v);
    }
    Ok((res, Source::Local))
}

/// Ask `arbiter` (or this node, when `None`) whom to read `digest` from; `failed` reports a
/// source that never served it or stopped. Returns the source (this node: fetch upstream).
pub(crate) async fn ask(
    shared: &Arc<Shared>,
    me: &LocalPeer,
    arbiter: Option<&Provider>,
    digest: &Digest,
    failed: Option<&str>,
) -> Result<Provider, String> {
    let Some(arbiter) = arbiter else {
        let c = shared.herd.claim(digest, &me.peer, None, failed);
        return Ok(source(c, None, me));
    };
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let mut pq = format!(
        "{ROUTE}{digest}?peer={}&port={}",
        enc(&me.peer),
        me.mirror_port
    );
    if let Some(f) = failed {
        pq.push_str(&format!("&failed={}", enc(f)));
    }
    let headers = shared
        .client
        .get_headers(arbiter.addr, &pq, CLAIM_TIMEOUT)
        .await
        .map_err(|e| format!("arbiter {}: {e}", arbiter.peer))?;
    let text = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let peer = text(SOURCE).ok_or("the arbiter named no source")?;
    let addr = match text(SOURCE_ADDR) {
        Some(a) => Some(a.parse().map_err(|_| "bad source address")?),
        None => None,
    };
    let claim = Claim {
        peer: peer.to_owned(),
        addr,
    };
    Ok(source(claim, Some(arbiter), me))
}

/// The source a claim names, with the address to reach it (this node's own address is never
/// needed: a node that is its own source fetches upstream and contacts nobody).
fn source(c: Claim, arbiter: Option<&Provider>, me: &LocalPeer) -> Provider {
    let addr = c
        .addr
        .or(arbiter.map(|a| a.addr))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], me.mirror_port)));
    Provider { peer: c.peer, addr }
}
