//! Mirror settings: which registries are served, how long a lookup may take, how hard to try peers.
//!
//! Every timeout here exists because containerd has none of its own (notes §4.3): a mirror that
//! stalls stalls the kubelet's pull. The defaults favour a fast 404 (containerd then falls back
//! upstream silently) over waiting for a slow peer.

use std::path::PathBuf;
use std::time::Duration;

use shoal_oci::Allowlist;

/// Configuration of the mirror router. Build with [`MirrorConfig::default`] and override fields.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// Registries served; anything else gets 404 before any lookup.
    pub allowlist: Allowlist,
    /// How long to wait for the first provider of a key before answering 404 (fast miss).
    pub resolve_timeout: Duration,
    /// Resolve `registry/repo:tag` through the DHT when the tag is not known locally.
    pub resolve_tags: bool,
    /// Also resolve the mutable `latest` tag through the DHT (needs `resolve_tags`).
    pub resolve_latest: bool,
    /// Upper bound on peer requests (first opens, hedges, continuations) for one client request.
    pub max_attempts: usize,
    /// TCP connect timeout towards a peer.
    pub connect_timeout: Duration,
    /// Time from sending a peer request to receiving its response headers.
    pub first_byte_timeout: Duration,
    /// Longest pause allowed between two body chunks of a peer before failing over.
    pub idle_timeout: Duration,
    /// Start a second (hedged) peer request if the first has not answered within this time.
    pub hedge_after: Duration,
    /// Blobs up to this size (and every manifest) are buffered in memory and verified before
    /// answering; larger ones go through a spool file in `spool_dir`, verified the same way.
    pub small_blob_threshold: u64,
    /// How long a (peer, digest) pair stays excluded after the peer served bad bytes.
    pub bad_peer_ttl: Duration,
    /// Where blobs above `small_blob_threshold` fetched from peers are written and verified
    /// before any byte goes to containerd. Created on demand (mode 0700); leftover spool files
    /// from an earlier run are removed when the state is built. Not to be shared by two daemons.
    pub spool_dir: PathBuf,
    /// Most spooled peer downloads (and their files) alive at once; a request finding none free
    /// within `first_byte_timeout` is answered 404 so containerd goes upstream.
    pub max_concurrent_spools: usize,
    /// Blobs larger than this are fetched from several providers at once, in disjoint
    /// `piece_size` ranges (see `multi`); smaller ones stream from one provider at a time.
    pub multi_peer_threshold: u64,
    /// Most providers one multi-peer download reads from at once (1 turns multi-peer off).
    pub max_peers_per_blob: usize,
    /// Size of the ranges a multi-peer download hands out to providers.
    pub piece_size: u64,
    /// Most requests in flight at once (a streaming body counts until it ends); one more is
    /// answered 503 at once, and containerd falls back to the next host.
    pub max_concurrent_requests: usize,
    /// Most client requests being served from peers at once (lookup, fetch, buffer or spool);
    /// one more waits at most `first_byte_timeout` for a slot, then gets 404 (upstream).
    pub max_concurrent_peer_fetches: usize,
    /// Longest a call into the local store (containerd) may take: a lookup, opening a read, or
    /// waiting for the next chunk. Past it a lookup counts as "not here" and a read fails.
    pub local_timeout: Duration,
    /// On a miss of a blob that peers also miss at about the same time (a rollout), how long a
    /// node that is not elected to fetch it upstream waits for the elected one to start serving
    /// it as it arrives (see `herd`). Zero turns the election off: every miss is a 404 at once.
    pub herd_wait: Duration,
}

/// `--resolve-timeout` default.
pub const DEFAULT_RESOLVE_TIMEOUT: Duration = Duration::from_millis(20);
/// Default buffering threshold: manifests are capped at 4 MiB by containerd too.
pub const DEFAULT_SMALL_BLOB_THRESHOLD: u64 = 4 * 1024 * 1024;
/// Default bound on requests in flight: far above what containerd sends (3 layers per pull by
/// default, a few pulls at once per node, plus peers), low enough to bound memory and tasks.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;
/// Default bound on client requests served from peers: each may buffer up to
/// `small_blob_threshold` (4 MiB) in memory, so this caps that memory at 256 MiB.
pub const DEFAULT_MAX_CONCURRENT_PEER_FETCHES: usize = 64;
/// Default bound on concurrent spooled downloads.
pub const DEFAULT_MAX_CONCURRENT_SPOOLS: usize = 8;
/// Default multi-peer threshold. Below it a single stream from one peer finishes in well under
/// a second on the links Shoal targets (1–10 Gbit/s), so extra connections and range requests
/// would add latency and disk seeks for no gain; above it the blob splits into at least four
/// `DEFAULT_PIECE_SIZE` pieces, enough to keep `DEFAULT_MAX_PEERS_PER_BLOB` providers busy.
pub const DEFAULT_MULTI_PEER_THRESHOLD: u64 = 64 * 1024 * 1024;
/// Default bound on providers read at once for one blob.
pub const DEFAULT_MAX_PEERS_PER_BLOB: usize = 4;
/// Default piece size: large enough that a range request's round trip is noise next to its
/// transfer, small enough that a 1 GiB layer gives 64 pieces to balance between peers.
pub const DEFAULT_PIECE_SIZE: u64 = 16 * 1024 * 1024;

/// Default `herd_wait`: long enough for the elected node's containerd to open its upstream
/// connection and receive the first bytes (a registry's first byte is well under a second),
/// short enough that a failed election costs a pull a few seconds, not a stall.
pub const DEFAULT_HERD_WAIT: Duration = Duration::from_secs(5);

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            allowlist: Allowlist::default(),
            resolve_timeout: DEFAULT_RESOLVE_TIMEOUT,
            resolve_tags: true,
            resolve_latest: false,
            max_attempts: 4,
            connect_timeout: Duration::from_millis(500),
            first_byte_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
            hedge_after: Duration::from_millis(300),
            small_blob_threshold: DEFAULT_SMALL_BLOB_THRESHOLD,
            bad_peer_ttl: Duration::from_secs(600),
            spool_dir: std::env::temp_dir().join("shoal-spool"),
            max_concurrent_spools: DEFAULT_MAX_CONCURRENT_SPOOLS,
            multi_peer_threshold: DEFAULT_MULTI_PEER_THRESHOLD,
            max_peers_per_blob: DEFAULT_MAX_PEERS_PER_BLOB,
            piece_size: DEFAULT_PIECE_SIZE,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_concurrent_peer_fetches: DEFAULT_MAX_CONCURRENT_PEER_FETCHES,
            local_timeout: Duration::from_secs(5),
            herd_wait: DEFAULT_HERD_WAIT,
        }
    }
}

impl MirrorConfig {
    /// Is `tag` allowed to be resolved through the DHT?
    pub fn may_resolve_tag(&self, tag: &str) -> bool {
        self.resolve_tags && (tag != "latest" || self.resolve_latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_rules() {
        let mut c = MirrorConfig::default();
        assert!(c.may_resolve_tag("v1"));
        assert!(!c.may_resolve_tag("latest"));
        c.resolve_latest = true;
        assert!(c.may_resolve_tag("latest"));
        c.resolve_tags = false;
        assert!(!c.may_resolve_tag("v1") && !c.may_resolve_tag("latest"));
    }
}
