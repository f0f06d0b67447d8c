//! The read-only OCI distribution endpoint containerd uses as a `hosts.toml` mirror, and the
//! fetch orchestration behind it.
//!
//! A request from the local containerd is served from the local content store when the blob
//! is there, otherwise from peers found through [`Providers`], otherwise answered 404 within
//! `resolve_timeout` so containerd falls back to the next host. A request from a peer is served
//! from local content only.
//!
//! # Verification design
//!
//! containerd commits whatever a mirror sends if its length matches, and a blob that then fails
//! its digest fails the pull outright with no fallback (notes §4.3). So no response built from
//! peer bytes may complete cleanly unless those bytes hash to the digest:
//!
//! * **Small blobs and every manifest** (up to `small_blob_threshold`, 4 MiB): fetched whole,
//!   verified, and only then answered. A corrupt or broken peer is skipped for the next
//!   provider inside the same request; containerd never notices.
//! * **Large blobs** stream while being hashed ([`stream`]): the piece completing the response
//!   is held back until the digest is verified; on mismatch the body ends with an error, hyper
//!   resets the connection, and containerd sees a short body (never a complete one). The
//!   (peer, digest) pairs that contributed are excluded for `bad_peer_ttl`.
//! * **Broken transfers** continue from the next provider with `Range: bytes=<offset>-` inside
//!   the same response, with the same hasher; bounded by `max_attempts`.
//! * **Resumed downloads** (`Range: bytes=N-` from containerd) of a blob not held locally are
//!   fetched from offset 0 and the first N bytes are hashed and dropped, so the digest still
//!   covers every byte; the cost is re-reading N bytes from a peer.
//! * **Tags** resolved through peers are verified against the `Docker-Content-Digest` the peer
//!   announces. A lying peer could still point a tag at another valid manifest: tag resolution
//!   trusts peers inside the PSK-closed cluster, which is why it can be turned off
//!   (`resolve_tags`) and why the mutable `latest` is opt-in (`resolve_latest`).
//!
//! Limits: a corrupt large blob is detected only at its end, so that one containerd fetch
//! fails (kubelet retries; the retry avoids the marked peer). containerd keeps the partial
//! ingest of that failed fetch and may resume it with `Range`; the prefix it holds came from
//! the bad peer, so that commit can fail too until containerd discards the ingest. Peers only
//! serve what their own containerd verified on commit, so this needs a faulty or hostile node.
//! Local content is not re-hashed (see [`serve`]).

mod bad_peers;
mod client;
mod config;
mod error;
mod events;
mod fetch;
mod metrics;
mod peer_auth;
mod routes;
mod serve;
mod source;
mod state;
mod stream;

pub use client::DIGEST_HEADER;
pub use config::{DEFAULT_RESOLVE_TIMEOUT, DEFAULT_SMALL_BLOB_THRESHOLD, MirrorConfig};
pub use error::MirrorError;
pub use events::{EventLog, EventSink, FetchEvent, FetchEventKind, NoEvents};
pub use metrics::{Metrics, Readiness, Source, metrics_router};
pub use peer_auth::{HeaderMarker, PEER_HEADER, PeerAuth, PeerCheck};
pub use routes::router;
pub use source::{BlobInfo, ByteStream, Descriptor, LocalStore, Provider, Providers};
pub use state::{BuildError, MirrorState, MirrorStateBuilder};
