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
//! Rule: **containerd never commits a byte from a peer that failed verification, and a bad peer
//! never leaves a pull wedged.** containerd commits whatever a mirror sends if its length
//! matches; a body closed normally part-way makes it resume with `Range: bytes=<offset>-` from
//! its hosts in order and stitch the parts; an aborted ingest fails the running pull and leaves
//! nothing behind (measured, see `docs/architecture.md`). Hence:
//!
//! * **Small blobs and every manifest** (up to `small_blob_threshold`, 4 MiB): fetched whole
//!   into memory, verified, and only then answered.
//! * **Large blobs, streamed** ([`stream`]) when the local ingest can be aborted
//!   ([`IngestControl`]): sent piece by piece, each piece checked against the holder's piece
//!   list ([`pieces`]) first, the final piece held until the whole digest matched, and the
//!   ingest aborted before the close whenever unchecked bytes went out and the blob failed.
//! * **Large blobs, spooled** (no ingest control, containerd not connected, or a client
//!   `Range`): downloaded into a spool file in `spool_dir`, hashed as they arrive, and
//!   answered from the verified file only ([`download`], [`spool`]); spooling is bounded by
//!   `max_concurrent_spools` and by the free space of the spool directory.
//! * **Blobs above `multi_peer_threshold`** (64 MiB) are fetched from up to
//!   `max_peers_per_blob` providers at once, in `piece_size` ranges written at their offsets
//!   in the spool file and hashed in order behind the frontier of finished ranges ([`multi`]),
//!   still verified whole before sending; the spool file is the reorder buffer.
//! * **Broken transfers** (error, early end, stall) continue from the next provider with
//!   `Range: bytes=<offset>-`, keeping the hash state; a **digest mismatch** marks the
//!   contributing peers bad for `bad_peer_ttl` and starts over from the next provider. All of
//!   it happens before the response and is bounded by `max_attempts`.
//! * **When nothing verifies** (every provider failed, mismatch with no good provider left, no
//!   spool slot or space): 404, with nothing sent, so containerd fetches from upstream cleanly.
//! * **Resumed downloads** (`Range: bytes=N-` from containerd) of a blob not held locally are
//!   served from the verified spool file: the whole blob is fetched from peers and checked,
//!   then the suffix is sent.
//! * **Tags** resolved through peers are verified against the `Docker-Content-Digest` the peer
//!   announces. A lying peer could still point a tag at another valid manifest: tag resolution
//!   trusts peers inside the PSK-closed cluster, which is why it can be turned off
//!   (`resolve_tags`) and why the mutable `latest` is opt-in (`resolve_latest`).
//!
//! HEAD answers for peer blobs carry the size and digest the peer announced; they send no
//! content. Local content is not re-hashed (see [`serve`]): containerd verified it on commit.

mod bad_peers;
mod client;
mod config;
mod download;
mod error;
mod events;
mod fetch;
mod herd;
mod metrics;
mod multi;
mod peer_auth;
mod pieces;
mod refusal;
mod routes;
mod serve;
mod server;
mod source;
mod spool;
mod state;
mod stream;
mod timed_store;
mod trace;

pub use client::DIGEST_HEADER;
pub use config::{
    DEFAULT_HERD_WAIT, DEFAULT_MAX_CONCURRENT_PEER_FETCHES, DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_MAX_CONCURRENT_SPOOLS, DEFAULT_MAX_PEERS_PER_BLOB, DEFAULT_MULTI_PEER_THRESHOLD,
    DEFAULT_PIECE_SIZE, DEFAULT_RESOLVE_TIMEOUT, DEFAULT_SMALL_BLOB_THRESHOLD, MirrorConfig,
};
pub use error::MirrorError;
pub use events::{EventLog, EventSink, FetchEvent, FetchEventKind, NoEvents, RequestEnd};
pub use metrics::{Metrics, Readiness, Source, metrics_router};
pub use peer_auth::{
    AUTH_SCHEME, AUTH_WINDOW_SECS, HeaderMarker, HmacAuth, LoopbackOnly, PEER_HEADER, PeerAuth,
    PeerCheck, is_loopback,
};
pub use refusal::{Refusal, Refusals};
pub use routes::router;
pub use server::{
    Activity, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES, ServerLimits, serve,
};
pub use source::{
    BlobInfo, ByteStream, Descriptor, Growing, IngestControl, LocalPeer, LocalStore, Provider,
    Providers,
};
pub use state::{BuildError, MirrorState, MirrorStateBuilder};
