//! Who may read from the mirror, and how a request is recognised as coming from another Shoal node.
//!
//! Two kinds of callers are let in:
//! * the node's own containerd, recognised by the TCP peer address being loopback (the DaemonSet
//!   runs on the host network and `shoal configure` points containerd at `http://127.0.0.1:<port>`;
//!   a pod on the pod network has its own network namespace and cannot reach the node's loopback);
//! * other Shoal nodes, which sign every request with `Authorization: Shoal <token>`, an
//!   HMAC-SHA256 keyed by a key derived from the cluster PSK (see [`HmacAuth`]).
//!
//! Anything else gets 401 (see `docs/security.md` for the threat model). Peer requests are
//! answered from the local content store only and never forwarded, so two nodes can never bounce
//! a request between them.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use sha2::Sha256;

/// The header the insecure [`HeaderMarker`] puts on requests it sends to other nodes.
pub const PEER_HEADER: &str = "x-shoal-peer";

/// The `Authorization` scheme of signed peer requests.
pub const AUTH_SCHEME: &str = "Shoal";

/// Domain separation: the mirror key is never the PSK itself (libp2p uses that one).
const KEY_LABEL: &[u8] = b"shoal-mirror-auth/v1";

/// Length of a signing window; tokens of the previous and next window are also accepted, so a
/// token lives at most three windows and clocks may differ by up to one window.
pub const AUTH_WINDOW_SECS: u64 = 60;

type HmacSha256 = Hmac<Sha256>;

/// What a request says about its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCheck {
    /// A local client (containerd): may be served from peers.
    Client,
    /// Another Shoal node: local content only.
    Peer,
    /// Carries a peer credential, but a wrong one: refused (401).
    Rejected,
    /// Neither local nor credentialed (a pod, another host): refused (401).
    Unauthenticated,
}

/// Marks outgoing peer requests and classifies incoming ones.
pub trait PeerAuth: Send + Sync + std::fmt::Debug + 'static {
    /// Headers to add to a request sent to a peer for `path_and_query`.
    fn sign(&self, method: &http::Method, path_and_query: &str) -> Vec<(HeaderName, HeaderValue)>;
    /// Classify an incoming request; `remote` is the TCP peer address when known.
    fn check(
        &self,
        method: &http::Method,
        path_and_query: &str,
        headers: &HeaderMap,
        remote: Option<SocketAddr>,
    ) -> PeerCheck;
}

/// Is this TCP peer the node itself? Unknown addresses are not.
pub fn is_loopback(remote: Option<SocketAddr>) -> bool {
    remote.is_some_and(|a| a.ip().to_canonical().is_loopback())
}

/// The plain-header marker (`X-Shoal-Peer: 1`) without any authentication: everyone is let in.
/// Only for `--insecure-allow-unauthenticated-peers` and tests. Any value of the header counts as
/// a peer request: that only ever narrows what the request may reach.
#[derive(Debug, Clone, Default)]
pub struct HeaderMarker;

impl PeerAuth for HeaderMarker {
    fn sign(&self, _: &http::Method, _: &str) -> Vec<(HeaderName, HeaderValue)> {
        vec![(
            HeaderName::from_static(PEER_HEADER),
            HeaderValue::from_static("1"),
        )]
    }

    fn check(&self, _: &http::Method, _: &str, h: &HeaderMap, _: Option<SocketAddr>) -> PeerCheck {
        if h.contains_key(PEER_HEADER) {
            PeerCheck::Peer
        } else {
            PeerCheck::Client
        }
    }
}

/// No cluster key: only the local containerd is served, and this node cannot sign requests to
/// peers. The fail-closed mode of a daemon started without `--p2p-psk-file`.
#[derive(Debug, Clone, Default)]
pub struct LoopbackOnly;

impl PeerAuth for LoopbackOnly {
    fn sign(&self, _: &http::Method, _: &str) -> Vec<(HeaderName, HeaderValue)> {
        Vec::new()
    }

    fn check(&self, _: &http::Method, _: &str, _: &HeaderMap, r: Option<SocketAddr>) -> PeerCheck {
        if is_loopback(r) {
            PeerCheck::Client
        } else {
            PeerCheck::Unauthenticated
        }
    }
}

/// HMAC credentials derived from the cluster PSK.
///
/// `token = hex(HMAC-SHA256(K, "v1\n" METHOD "\n" path?query "\n" window))` with
/// `K = HMAC-SHA256(psk, "shoal-mirror-auth/v1")` and `window = unix time / 60`. A token is bound
/// to one method and one path and query, and expires within three minutes; it proves knowledge of
/// the PSK without revealing it. Rotating the PSK rotates the key.
#[derive(Clone)]
pub struct HmacAuth {
    key: [u8; 32],
}

impl std::fmt::Debug for HmacAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacAuth { key: <redacted> }")
    }
}

impl HmacAuth {
    /// Derives the mirror key from the 32 bytes of the cluster PSK.
    pub fn from_psk(psk: &[u8; 32]) -> Self {
        let mut mac = HmacSha256::new_from_slice(psk).expect("HMAC takes any key length");
        mac.update(KEY_LABEL);
        HmacAuth {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, method: &http::Method, pq: &str, window: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"v1\n");
        mac.update(method.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(pq.as_bytes());
        mac.update(b"\n");
        mac.update(window.to_string().as_bytes());
        mac
    }

    /// The `Authorization` value for a request at `unix_secs`.
    pub fn token_at(&self, method: &http::Method, pq: &str, unix_secs: u64) -> String {
        let tag = self
            .mac(method, pq, unix_secs / AUTH_WINDOW_SECS)
            .finalize();
        format!("{AUTH_SCHEME} {}", hex::encode(tag.into_bytes()))
    }

    /// Checks a request at `unix_secs` (see [`PeerAuth::check`]).
    pub fn check_at(
        &self,
        method: &http::Method,
        pq: &str,
        headers: &HeaderMap,
        remote: Option<SocketAddr>,
        unix_secs: u64,
    ) -> PeerCheck {
        let Some(token) = shoal_token(headers) else {
            return if is_loopback(remote) {
                PeerCheck::Client
            } else {
                PeerCheck::Unauthenticated
            };
        };
        let mut tag = [0u8; 32];
        if hex::decode_to_slice(token, &mut tag).is_err() {
            return PeerCheck::Rejected;
        }
        let now = unix_secs / AUTH_WINDOW_SECS;
        // Every window is checked (no early exit) with a constant-time comparison.
        let ok = [now.saturating_sub(1), now, now + 1]
            .iter()
            .fold(false, |ok, &w| {
                self.mac(method, pq, w).verify_slice(&tag).is_ok() | ok
            });
        if ok {
            PeerCheck::Peer
        } else {
            PeerCheck::Rejected
        }
    }
}

/// The token of an `Authorization: Shoal <token>` header; other schemes count as no credential.
fn shoal_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case(AUTH_SCHEME)
        .then_some(token.trim())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl PeerAuth for HmacAuth {
    fn sign(&self, method: &http::Method, pq: &str) -> Vec<(HeaderName, HeaderValue)> {
        let token = self.token_at(method, pq, unix_now());
        match HeaderValue::from_str(&token) {
            Ok(mut v) => {
                v.set_sensitive(true);
                vec![(header::AUTHORIZATION, v)]
            }
            Err(_) => Vec::new(),
        }
    }

    fn check(
        &self,
        method: &http::Method,
        pq: &str,
        headers: &HeaderMap,
        remote: Option<SocketAddr>,
    ) -> PeerCheck {
        self.check_at(method, pq, headers, remote, unix_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    const PQ: &str = "/v2/library/a/blobs/sha256:00?ns=docker.io";

    fn remote(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn with(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(token).unwrap());
        h
    }

    #[test]
    fn marker_round_trips() {
        let m = HeaderMarker;
        let mut h = HeaderMap::new();
        assert_eq!(m.check(&Method::GET, "/v2/", &h, None), PeerCheck::Client);
        for (k, v) in m.sign(&Method::GET, "/v2/") {
            h.insert(k, v);
        }
        assert_eq!(m.check(&Method::GET, "/v2/", &h, None), PeerCheck::Peer);
    }

    #[test]
    fn loopback_is_recognised_in_every_form() {
        for a in [
            "127.0.0.1:1",
            "127.9.9.9:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback(remote(a)), "{a}");
        }
        for a in [
            "10.0.0.1:1",
            "[::ffff:10.0.0.1]:1",
            "0.0.0.0:1",
            "[fe80::1]:1",
        ] {
            assert!(!is_loopback(remote(a)), "{a}");
        }
        assert!(!is_loopback(None));
        let l = LoopbackOnly;
        let h = HeaderMap::new();
        assert_eq!(
            l.check(&Method::GET, PQ, &h, remote("127.0.0.1:9")),
            PeerCheck::Client
        );
        assert_eq!(
            l.check(&Method::GET, PQ, &h, remote("10.1.2.3:9")),
            PeerCheck::Unauthenticated
        );
        assert!(l.sign(&Method::GET, PQ).is_empty());
    }

    #[test]
    fn signed_requests_are_peers_within_the_window_only() {
        let a = HmacAuth::from_psk(&[7; 32]);
        let t = 1_000_000_000;
        let h = with(&a.token_at(&Method::GET, PQ, t));
        let far = remote("10.0.0.2:40000");
        for dt in [0i64, 59, -59, 61, -61] {
            let at = t.checked_add_signed(dt).unwrap();
            assert_eq!(a.check_at(&Method::GET, PQ, &h, far, at), PeerCheck::Peer);
        }
        for dt in [180i64, -180, 3600] {
            let at = t.checked_add_signed(dt).unwrap();
            assert_eq!(
                a.check_at(&Method::GET, PQ, &h, far, at),
                PeerCheck::Rejected
            );
        }
        // A signed request from loopback is still a peer (narrower), never a client.
        assert_eq!(
            a.check_at(&Method::GET, PQ, &h, remote("127.0.0.1:1"), t),
            PeerCheck::Peer
        );
    }

    #[test]
    fn tokens_are_bound_to_method_path_and_key() {
        let a = HmacAuth::from_psk(&[7; 32]);
        let t = 1_000_000_000;
        let far = remote("10.0.0.2:1");
        let h = with(&a.token_at(&Method::HEAD, PQ, t));
        assert_eq!(a.check_at(&Method::HEAD, PQ, &h, far, t), PeerCheck::Peer);
        assert_eq!(
            a.check_at(&Method::GET, PQ, &h, far, t),
            PeerCheck::Rejected
        );
        let other = "/v2/library/a/blobs/sha256:01?ns=docker.io";
        assert_eq!(
            a.check_at(&Method::HEAD, other, &h, far, t),
            PeerCheck::Rejected
        );
        let b = HmacAuth::from_psk(&[8; 32]);
        assert_eq!(
            b.check_at(&Method::HEAD, PQ, &h, far, t),
            PeerCheck::Rejected
        );
    }

    #[test]
    fn missing_or_malformed_credentials() {
        let a = HmacAuth::from_psk(&[7; 32]);
        let t = 1_000_000_000;
        let far = remote("10.0.0.2:1");
        let none = HeaderMap::new();
        assert_eq!(
            a.check_at(&Method::GET, PQ, &none, far, t),
            PeerCheck::Unauthenticated
        );
        assert_eq!(
            a.check_at(&Method::GET, PQ, &none, None, t),
            PeerCheck::Unauthenticated
        );
        assert_eq!(
            a.check_at(&Method::GET, PQ, &none, remote("127.0.0.1:1"), t),
            PeerCheck::Client
        );
        // The old marker header grants nothing any more.
        let mut marker = HeaderMap::new();
        marker.insert(PEER_HEADER, HeaderValue::from_static("1"));
        assert_eq!(
            a.check_at(&Method::GET, PQ, &marker, far, t),
            PeerCheck::Unauthenticated
        );
        for bad in [
            "Shoal",
            "Shoal zz",
            "Shoal 00",
            "shoal 1234",
            &"Shoal ".repeat(100),
        ] {
            assert_eq!(
                a.check_at(&Method::GET, PQ, &with(bad), far, t),
                if bad == "Shoal" {
                    PeerCheck::Unauthenticated
                } else {
                    PeerCheck::Rejected
                },
                "{bad:?}"
            );
        }
        // Another scheme (registry credentials) is not a peer credential.
        assert_eq!(
            a.check_at(&Method::GET, PQ, &with("Basic dXNlcjpwdw=="), far, t),
            PeerCheck::Unauthenticated
        );
        assert!(!format!("{a:?}").contains('7'));
    }
}
