//! How a mirror request is recognised as coming from another Shoal node.
//!
//! Peer requests are answered from the local content store only and never forwarded, so two
//! nodes can never bounce a request between them. Today the mark is a plain header; the security
//! work will replace it with an HMAC credential by implementing [`PeerAuth`] differently, without
//! touching the router or the peer client.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The header Shoal puts on requests it sends to other nodes.
pub const PEER_HEADER: &str = "x-shoal-peer";

/// What a request says about its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCheck {
    /// A local client (containerd): may be served from peers.
    Client,
    /// Another Shoal node: local content only.
    Peer,
    /// Claims to be a peer but the credential is wrong: refused.
    Rejected,
}

/// Marks outgoing peer requests and recognises incoming ones.
pub trait PeerAuth: Send + Sync + std::fmt::Debug + 'static {
    /// Headers to add to a request sent to a peer for `path_and_query`.
    fn sign(&self, method: &http::Method, path_and_query: &str) -> Vec<(HeaderName, HeaderValue)>;
    /// Classify an incoming request.
    fn check(&self, method: &http::Method, path_and_query: &str, headers: &HeaderMap) -> PeerCheck;
}

/// The plain-header marker (`X-Shoal-Peer: 1`). Any value of the header counts as a peer
/// request: that only ever narrows what the request may reach.
#[derive(Debug, Clone, Default)]
pub struct HeaderMarker;

impl PeerAuth for HeaderMarker {
    fn sign(&self, _: &http::Method, _: &str) -> Vec<(HeaderName, HeaderValue)> {
        vec![(
            HeaderName::from_static(PEER_HEADER),
            HeaderValue::from_static("1"),
        )]
    }

    fn check(&self, _: &http::Method, _: &str, headers: &HeaderMap) -> PeerCheck {
        if headers.contains_key(PEER_HEADER) {
            PeerCheck::Peer
        } else {
            PeerCheck::Client
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips() {
        let m = HeaderMarker;
        let mut h = HeaderMap::new();
        assert_eq!(m.check(&http::Method::GET, "/v2/", &h), PeerCheck::Client);
        for (k, v) in m.sign(&http::Method::GET, "/v2/") {
            h.insert(k, v);
        }
        assert_eq!(m.check(&http::Method::GET, "/v2/", &h), PeerCheck::Peer);
    }
}
