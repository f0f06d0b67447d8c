//! Adapters that give the mirror its two data sources: containerd's content store
//! ([`ContainerdStore`], a `LocalStore`) and the DHT ([`DhtProviders`], a `Providers`).
//!
//! The store only exposes what this node advertises: a digest or tag that is not in the
//! advertised set (content of a registry outside the allowlist, a private Harbor) is "absent",
//! so it can never leave the node through the mirror.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, OnceLock, RwLock};

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use shoal_containerd::ContentSource;
use shoal_mirror::{
    BlobInfo, ByteStream, Descriptor, Growing, IngestControl, LocalPeer, LocalStore, Provider,
    Providers,
};
use shoal_oci::{Allowlist, Digest, Key, TagKey};

/// The keys this node advertises, shared between the watcher (writer) and the mirror (reader).
#[derive(Debug, Clone, Default)]
pub struct Advertised(Arc<RwLock<HashSet<Key>>>);

impl Advertised {
    pub fn contains(&self, key: &Key) -> bool {
        self.0.read().map(|s| s.contains(key)).unwrap_or(false)
    }

    pub fn len(&self) -> usize {
        self.0.read().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn add(&self, keys: &[Key]) {
        if let Ok(mut s) = self.0.write() {
            s.extend(keys.iter().cloned());
        }
    }

    pub fn remove(&self, keys: &[Key]) {
        if let Ok(mut s) = self.0.write() {
            for k in keys {
                s.remove(k);
            }
        }
    }
}

/// containerd's content store, as the mirror sees it. Until containerd has been reached the
/// store is empty, so the mirror answers fast 404s and containerd falls back upstream.
#[derive(Debug, Clone)]
pub struct ContainerdStore {
    source: Arc<OnceLock<ContentSource>>,
    advertised: Advertised,
    /// The mirrored registries: content committed but not advertised yet is passed on only
    /// when containerd fetched it from one of them.
    allowlist: Allowlist,
}

impl ContainerdStore {
    pub fn new(advertised: Advertised, allowlist: Allowlist) -> Self {
        ContainerdStore {
            source: Arc::new(OnceLock::new()),
            advertised,
            allowlist,
        }
    }

    /// Called once the daemon has connected to containerd.
    pub fn set_source(&self, source: ContentSource) {
        let _ = self.source.set(source);
    }

    pub fn source(&self) -> Option<&ContentSource> {
        self.source.get()
    }
}

impl LocalStore for ContainerdStore {
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Option<BlobInfo>> {
        Box::pin(async move {
            let source = self.source.get()?;
            if !self.advertised.contains(&Key::Digest(digest.clone())) {
                return None;
            }
            match source.stat(digest).await {
                Ok(size) => size.map(|size| BlobInfo {
                    size,
                    media_type: None,
                }),
                Err(e) => {
                    tracing::warn!(digest = %digest, error = %e, "containerd stat failed");
                    None
                }
            }
        })
    }

    fn read<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: Option<u64>,
    ) -> BoxFuture<'a, io::Result<ByteStream>> {
        Box::pin(async move {
            let source = self
                .source
                .get()
                .ok_or_else(|| io::Error::other("containerd is not connected"))?;
            let blob = match len {
                Some(len) => source.read_range(digest, offset, len).await,
                None => source.read(digest, offset).await,
            }
            .map_err(io::Error::other)?;
            Ok(blob.stream.map(|r| r.map_err(io::Error::other)).boxed())
        })
    }

    /// An ingest of `digest` in this namespace, read while it grows, or the blob once it is
    /// committed. Which digests may be passed on this way is the mirror's rule (blobs the local
    /// containerd asked it for), not the advertised set: a blob still downloading, or committed
    /// by a pull still running (an image is advertised once its record exists, at the end of
    /// the pull), is not advertised yet.
    fn growing<'a>(&'a self, digest: &'a Digest, offset: u64) -> BoxFuture<'a, Option<Growing>> {
        Box::pin(async move {
            let source = self.source.get()?;
            match source.read_growing(digest, offset).await {
                Ok(Some(g)) => {
                    return Some(Growing {
                        total: g.total,
                        stream: g.stream.map(|r| r.map_err(io::Error::other)).boxed(),
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(digest = %digest, error = %e, "cannot read the ingest");
                    return None;
                }
            }
            // Committed between the request and now (containerd verified it on commit): passed
            // on only when containerd's own labels say it came from an allowlisted registry, so
            // a loopback client naming the digest of a private image's blob (a `hostNetwork`
            // pod) cannot make this node serve it.
            let sources = source.distribution_sources(digest).await.ok()?;
            if !sources.iter().any(|r| self.allowlist.allows(r)) {
                tracing::debug!(digest = %digest, ?sources, "committed blob not from an allowlisted registry; not passed on");
                return None;
            }
            let blob = source.read(digest, offset).await.ok()?;
            Some(Growing {
                total: blob.size,
                stream: blob.stream.map(|r| r.map_err(io::Error::other)).boxed(),
            })
        })
    }

    fn resolve_tag<'a>(&'a self, tag: &'a TagKey) -> BoxFuture<'a, Option<Descriptor>> {
        Box::pin(async move {
            let source = self.source.get()?;
            if !self.advertised.contains(&Key::Tag(tag.clone())) {
                return None;
            }
            match source.resolve_tag(tag).await {
                Ok(d) => d.map(|d| Descriptor {
                    digest: d.digest,
                    media_type: d.media_type,
                    size: d.size,
                }),
                Err(e) => {
                    tracing::warn!(tag = %tag, error = %e, "containerd tag lookup failed");
                    None
                }
            }
        })
    }
}

/// Ingest aborts go to the same containerd; until it is connected there is nothing to abort
/// with, and the mirror verifies peer blobs whole before sending them.
impl IngestControl for ContainerdStore {
    fn available(&self) -> bool {
        self.source.get().is_some()
    }

    fn abort<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<usize, String>> {
        Box::pin(async move {
            let source = self
                .source
                .get()
                .ok_or_else(|| "containerd is not connected".to_owned())?;
            source
                .abort_ingests(digest)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Providers of a key, from the DHT, as the mirror wants them (peer id and mirror address),
/// and this node's place among its peers (for the cold-rollout election).
#[derive(Debug, Clone)]
pub struct DhtProviders {
    pub handle: shoal_p2p::Handle,
    /// This node's mirror port, as peers reach it.
    pub mirror_port: u16,
}

impl Providers for DhtProviders {
    fn find(&self, key: &Key) -> BoxStream<'static, Provider> {
        let handle = self.handle.clone();
        let key = key.clone();
        stream::once(async move { handle.find_providers(&key).await })
            .flat_map(|found| match found {
                Ok(providers) => providers
                    .map(|p| Provider {
                        peer: p.peer_id.to_string(),
                        addr: p.mirror,
                    })
                    .boxed(),
                Err(e) => {
                    tracing::warn!(error = %e, "DHT lookup could not start");
                    stream::empty().boxed()
                }
            })
            .boxed()
    }

    fn local(&self) -> Option<LocalPeer> {
        Some(LocalPeer {
            peer: self.handle.peer_id().to_string(),
            mirror_port: self.mirror_port,
        })
    }

    fn connected(&self) -> BoxFuture<'static, Vec<Provider>> {
        let handle = self.handle.clone();
        Box::pin(async move {
            let Ok(status) = handle.status().await else {
                return Vec::new();
            };
            status
                .peers
                .into_iter()
                .filter_map(|p| {
                    Some(Provider {
                        peer: p.peer_id.to_string(),
                        addr: p.mirror?,
                    })
                })
                .collect()
        })
    }
}
