//! The two things the mirror needs from the rest of the daemon, as object-safe traits.
//!
//! The binary implements them with adapters over containerd (`LocalStore`) and the DHT
//! (`Providers`); tests implement them in memory. Keeping them here (not depending on
//! `shoal-containerd`/`shoal-p2p`) keeps the router testable without sockets.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use shoal_oci::{Digest, Key, TagKey};

/// What the local store knows about a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub size: u64,
    /// Known for manifests and indexes (from the image record); usually `None` for layers.
    pub media_type: Option<String>,
}

/// A resolved tag: the manifest (or index) it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// A stream of blob bytes.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Content this node already holds (containerd's content store).
///
/// Content here was verified by containerd when it was committed, so the mirror serves it
/// without hashing it again.
pub trait LocalStore: Send + Sync + 'static {
    /// Size (and media type when known) of a committed blob; `None` if absent.
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Option<BlobInfo>>;

    /// Bytes of a committed blob from `offset`, `len` bytes or to the end when `None`.
    fn read<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: Option<u64>,
    ) -> BoxFuture<'a, io::Result<ByteStream>>;

    /// The manifest a tag points at locally (from containerd's image records).
    fn resolve_tag<'a>(&'a self, tag: &'a TagKey) -> BoxFuture<'a, Option<Descriptor>>;

    /// A blob the local containerd is still writing (an upstream fetch in progress), or has
    /// committed since but does not advertise yet (its image's pull is still running), from
    /// `offset`: its expected size and its bytes as they are written. The bytes are **not
    /// verified** while they are written; whoever receives them checks the digest. `None` when
    /// containerd has neither.
    fn growing<'a>(&'a self, digest: &'a Digest, offset: u64) -> BoxFuture<'a, Option<Growing>> {
        let _ = (digest, offset);
        Box::pin(async { None })
    }
}

/// A blob being written by the local containerd (see [`LocalStore::growing`]).
pub struct Growing {
    /// The size the writer expects.
    pub total: u64,
    /// Its bytes from the requested offset, yielded as they are written; an error ends it.
    pub stream: ByteStream,
}

impl std::fmt::Debug for Growing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Growing")
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

/// A peer that advertised a key, reachable at `addr` (its mirror endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Provider {
    /// Stable peer identity (libp2p peer id), used for bad-peer marks and logs.
    pub peer: String,
    /// The peer's mirror HTTP address.
    pub addr: SocketAddr,
}

/// Who holds a key (the DHT).
pub trait Providers: Send + Sync + 'static {
    /// Providers of `key` as they arrive. The stream may stay pending forever; the mirror bounds
    /// every wait with its own timeouts. It should not yield this node itself.
    fn find(&self, key: &Key) -> BoxStream<'static, Provider>;

    /// This node as a member of the cluster; `None` without a DHT (then a miss is a plain 404:
    /// no election, see [`crate::herd`]).
    fn local(&self) -> Option<LocalPeer> {
        None
    }

    /// The peers this node holds a live connection to now, with their mirror endpoints.
    fn connected(&self) -> BoxFuture<'static, Vec<Provider>> {
        Box::pin(async { Vec::new() })
    }
}

/// This node's identity and mirror port, as its peers reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPeer {
    pub peer: String,
    pub mirror_port: u16,
}

/// Control over the local containerd's ingests (in-progress writes), used when bytes already
/// sent to containerd turn out wrong: aborting the ingest before the connection closes means
/// containerd's retry starts clean instead of stitching onto a bad prefix (see
/// [`crate::stream`]).
pub trait IngestControl: Send + Sync + 'static {
    /// Can an abort be attempted now (containerd connected)? When not, peer blobs are verified
    /// whole before any byte is sent.
    fn available(&self) -> bool;

    /// Abort every active ingest of `digest`; returns how many were aborted.
    fn abort<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<usize, String>>;
}
