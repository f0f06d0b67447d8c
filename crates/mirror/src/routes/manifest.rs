//! Manifest requests: by digest (verified against it) and by tag (resolved locally, or through
//! peers when the tag policy allows, verified against the digest the peer announces).

use std::sync::Arc;

use http::Method;
use shoal_oci::{Digest, Key, MAX_MANIFEST_BYTES, ManifestRef, Repository, Tag, TagKey};
use tracing::field;

use super::{Ask, Served, fetch, peer_slot, record_peer, resolve};
use crate::client::{Opened, PeerPath};
use crate::error::MirrorError;
use crate::events::FetchEventKind;
use crate::fetch::{Fetch, GaveUp};
use crate::herd::{self, Elected};
use crate::metrics::Source;
use crate::serve::{self, Meta};
use crate::source::{BlobInfo, Provider};
use crate::state::Shared;

fn manifest_limit(shared: &Shared) -> u64 {
    shared
        .cfg
        .small_blob_threshold
        .min(MAX_MANIFEST_BYTES as u64)
}

/// Serve a manifest from the local store (trusted; read whole, it is small).
async fn local_manifest(shared: &Arc<Shared>, ask: &Ask, digest: Digest, info: BlobInfo) -> Served {
    if info.size > manifest_limit(shared) {
        return Err(MirrorError::ManifestUnknown(format!(
            "{digest} ({} bytes is too large for a manifest)",
            info.size
        )));
    }
    if ask.head {
        if let Some(mt) = info.media_type.clone() {
            let meta = Meta {
                digest,
                size: info.size,
                content_type: mt,
            };
            return Ok((serve::head(&meta), Source::Local));
        }
    }
    let bytes =
        serve::local_bytes(shared.local.as_ref(), &shared.metrics, &digest, info.size).await?;
    let meta = Meta {
        content_type: serve::manifest_media_type(info.media_type.as_deref(), &bytes),
        digest,
        size: bytes.len() as u64,
    };
    shared.event(&meta.digest.to_string(), None, FetchEventKind::Local);
    if ask.head {
        return Ok((serve::head(&meta), Source::Local));
    }
    Ok((serve::buffered(&meta, None, bytes)?, Source::Local))
}

pub(super) async fn manifest_by_digest(
    shared: &Arc<Shared>,
    ask: &Ask,
    repository: Repository,
    digest: Digest,
) -> Served {
    tracing::Span::current().record("digest", field::display(&digest));
    if let Some(info) = shared.local.stat(&digest).await {
        return local_manifest(shared, ask, digest, info).await;
    }
    let unknown = || MirrorError::ManifestUnknown(digest.to_string());
    if ask.from_peer {
        // A manifest this node's containerd is fetching (a rollout) is passed on.
        let in_flight = herd::in_flight::serve(shared, ask.head, None, &digest).await;
        return in_flight.unwrap_or_else(|| Err(unknown()));
    }
    shared.herd.asked(&digest);
    let _slot = peer_slot(shared, unknown()).await?;
    let key = Key::Digest(digest.clone());
    let path = PeerPath::Manifest {
        repository,
        reference: ManifestRef::Digest(digest.clone()),
    };
    match resolve(shared, &key, Some(&digest)).await {
        Ok((pool, first)) => {
            peer_manifest(
                shared,
                ask,
                fetch(shared, ask, path, &key, pool),
                Some(first),
                None,
            )
            .await
        }
        // A `GET` of a manifest that peers miss too takes part in the rollout election, like a
        // blob: a registry's pull limit counts manifest `GET`s (see `herd`).
        Err(_) if ask.head => Err(unknown()),
        Err(pool) => match herd::on_miss(shared, &ask.registry, &path, &digest).await {
            Elected::Upstream => Err(unknown()),
            Elected::Stream(opened) => {
                let f = fetch(shared, ask, path, &key, pool);
                peer_manifest(shared, ask, f, None, Some(*opened)).await
            }
        },
    }
}

pub(super) async fn manifest_by_tag(
    shared: &Arc<Shared>,
    ask: &Ask,
    repository: Repository,
    tag: Tag,
) -> Served {
    let tk = TagKey::new(ask.registry.as_str(), repository.as_str(), tag.as_str());
    if let Some(desc) = shared.local.resolve_tag(&tk).await {
        if let Some(mut info) = shared.local.stat(&desc.digest).await {
            info.media_type = Some(desc.media_type);
            return local_manifest(shared, ask, desc.digest, info).await;
        }
    }
    let unknown = |why: &str| MirrorError::ManifestUnknown(format!("{tk}{why}"));
    if ask.from_peer {
        return Err(unknown(""));
    }
    if !shared.cfg.may_resolve_tag(tag.as_str()) {
        return Err(unknown(
            " (tag resolution through peers is disabled for this tag)",
        ));
    }
    let _slot = peer_slot(shared, unknown("")).await?;
    let key = Key::Tag(tk.clone());
    let (pool, first) = resolve(shared, &key, None).await.map_err(|_| unknown(""))?;
    let path = PeerPath::Manifest {
        repository,
        reference: ManifestRef::Tag(tag),
    };
    peer_manifest(
        shared,
        ask,
        fetch(shared, ask, path, &key, pool),
        Some(first),
        None,
    )
    .await
}

/// Fetch a manifest from peers whole (from `first`, or the response already `opened`), verify
/// it (against the requested digest, or for a tag the peer's `Docker-Content-Digest`), then
/// answer.
async fn peer_manifest(
    shared: &Arc<Shared>,
    ask: &Ask,
    mut f: Fetch,
    first: Option<Provider>,
    opened: Option<Opened>,
) -> Served {
    let key = f.key.clone();
    let gave_up =
        |GaveUp(why)| MirrorError::ManifestUnknown(format!("{key} (peers failed: {why})"));
    let opened = match opened {
        Some(o) => o,
        None => f.open(Method::GET, first, 0, None).await.map_err(gave_up)?,
    };
    let (bytes, opened) = f
        .buffered(opened, manifest_limit(shared))
        .await
        .map_err(gave_up)?;
    record_peer(&opened.provider.peer);
    let digest = opened
        .digest
        .clone()
        .ok_or_else(|| MirrorError::Internal("verified manifest without digest".into()))?;
    let meta = Meta {
        content_type: serve::manifest_media_type(opened.content_type.as_deref(), &bytes),
        digest,
        size: bytes.len() as u64,
    };
    if ask.head {
        return Ok((serve::head(&meta), Source::Peer));
    }
    Ok((serve::buffered(&meta, None, bytes)?, Source::Peer))
}
