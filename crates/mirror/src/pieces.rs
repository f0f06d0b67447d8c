//! Piece lists: the SHA-256 of every fixed-size piece of a blob, so that a puller can check
//! bytes as they arrive instead of only at the end of the blob.
//!
//! A holder computes the list of a blob it holds once, from its containerd content, and keeps it
//! in a small bounded on-disk cache (`<spool_dir>/pieces/`, written to a temp file then
//! renamed). While computing it also hashes the whole blob: a list is published only when the
//! content matched its digest, so a list never vouches for corrupt local content (a holder whose
//! disk flipped a byte publishes no list and stops serving that blob, see [`Pieces::is_corrupt`]).
//!
//! Lists are computed in the background, one blob at a time, when a peer first asks for the
//! list or the blob; until then the list route answers 404 and pullers stream without one (with
//! the tail hold and the ingest abort of [`crate::stream`]). The route
//! (`GET /shoal/v1/pieces/<digest>`) answers signed peers only.
//!
//! Wire and cache format (big-endian): piece size (u64), blob size (u64), then 32 bytes per
//! piece, the last piece being the remainder.
//!
//! Piece size: 1 MiB. The puller sends a piece only once it has arrived whole and matched, so
//! the piece size is the added first-byte latency (about 8 ms at 1 Gbit/s, 40 ms at
//! 200 Mbit/s) and the most memory a transfer buffers; a 1 GiB blob's list is 32 KiB.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use shoal_oci::{Algorithm, Digest};

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, header};

use crate::error::MirrorError;
use crate::metrics::Source;
use crate::source::LocalStore;
use crate::state::Shared;

/// Piece size of the lists this node computes.
pub(crate) const PIECE_SIZE: u64 = 1024 * 1024;
/// Smallest and largest piece size accepted from a peer (bounds the list and the buffer).
const MIN_PIECE: u64 = 64 * 1024;
const MAX_PIECE: u64 = 16 * 1024 * 1024;
/// Path prefix of the peer-only route.
pub(crate) const ROUTE: &str = "/shoal/v1/pieces/";
/// Media type of a list.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.shoal.pieces.v1";
/// Most lists kept on disk (a 1 GiB blob's list is 32 KiB).
const MAX_CACHED: usize = 2048;
/// Most blobs waiting for their list to be computed; more requests are ignored until later.
const MAX_PENDING: usize = 64;
/// Most blobs remembered as corrupt.
const MAX_CORRUPT: usize = 1024;
const HEADER: usize = 16;

/// Why a piece list from a peer was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListError {
    #[error("piece list is {0} bytes, too short for its header")]
    Short(usize),
    #[error("piece size {0} is outside {MIN_PIECE}..={MAX_PIECE}")]
    PieceSize(u64),
    #[error("piece list is for a blob of {got} bytes, not {want}")]
    Size { got: u64, want: u64 },
    #[error("piece list has {got} bytes of digests, {want} expected")]
    Count { got: usize, want: u64 },
}

/// The digests of every piece of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PieceList {
    pub piece_size: u64,
    pub size: u64,
    pub hashes: Vec<[u8; 32]>,
}

impl PieceList {
    /// Number of pieces of a blob of `size` bytes.
    pub(crate) fn count(size: u64, piece_size: u64) -> u64 {
        size.div_ceil(piece_size)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 32 * self.hashes.len());
        out.extend_from_slice(&self.piece_size.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }

    /// Parse a list for a blob of `size` bytes, checking that it covers exactly that blob.
    pub(crate) fn decode(bytes: &[u8], size: u64) -> Result<PieceList, ListError> {
        if bytes.len() < HEADER {
            return Err(ListError::Short(bytes.len()));
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let (piece_size, got) = (word(0), word(8));
        if !(MIN_PIECE..=MAX_PIECE).contains(&piece_size) {
            return Err(ListError::PieceSize(piece_size));
        }
        if got != size {
            return Err(ListError::Size { got, want: size });
        }
        let want = Self::count(size, piece_size);
        let body = &bytes[HEADER..];
        if body.len() as u64 != want * 32 {
            return Err(ListError::Count {
                got: body.len(),
                want: want * 32,
            });
        }
        let hashes = body
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(PieceList {
            piece_size,
            size,
            hashes,
        })
    }

    /// Largest encoded size of a valid list for a blob of `size` bytes.
    pub(crate) fn max_encoded(size: u64) -> u64 {
        HEADER as u64 + 32 * Self::count(size, MIN_PIECE)
    }
}

/// Why a list could not be computed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ComputeError {
    #[error("reading the local blob: {0}")]
    Read(std::io::Error),
    #[error("local blob has {got} bytes, {want} expected")]
    Length { got: u64, want: u64 },
    #[error("local content does not match its digest (got {0})")]
    Corrupt(Digest),
    #[error("hashing task failed: {0}")]
    Task(String),
}

/// Hash `size` bytes of local blob `digest` into a piece list, checking the whole digest.
pub(crate) async fn compute(
    local: &dyn LocalStore,
    digest: &Digest,
    size: u64,
    piece_size: u64,
) -> Result<PieceList, ComputeError> {
    let mut stream = local
        .read(digest, 0, Some(size))
        .await
        .map_err(ComputeError::Read)?;
    let mut whole = digest.algorithm().hasher();
    let mut hashes = Vec::with_capacity(PieceList::count(size, piece_size) as usize);
    let mut piece = BytesMut::with_capacity(piece_size as usize);
    let mut got = 0u64;
    loop {
        let chunk = stream
            .next()
            .await
            .transpose()
            .map_err(ComputeError::Read)?;
        let end = chunk.is_none();
        if let Some(c) = chunk {
            got += c.len() as u64;
            if got > size {
                return Err(ComputeError::Length { got, want: size });
            }
            piece.extend_from_slice(&c);
        }
        // Hash whole pieces (and the remainder at the end) off the async workers.
        while piece.len() as u64 >= piece_size || (end && !piece.is_empty()) {
            let n = (piece_size as usize).min(piece.len());
            let p = piece.split_to(n).freeze();
            let (h, w) = tokio::task::spawn_blocking(move || {
                let mut w = whole;
                w.update(&p);
                (Sha256::digest(&p), w)
            })
            .await
            .map_err(|e| ComputeError::Task(e.to_string()))?;
            whole = w;
            hashes.push(h.into());
        }
        if end {
            break;
        }
    }
    if got != size {
        return Err(ComputeError::Length { got, want: size });
    }
    let actual = whole.finish();
    if &actual != digest {
        return Err(ComputeError::Corrupt(actual));
    }
    Ok(PieceList {
        piece_size,
        size,
        hashes,
    })
}

/// The holder side: the on-disk cache, the background computation and the corrupt set.
#[derive(Debug)]
pub(crate) struct Pieces {
    dir: PathBuf,
    pending: Mutex<HashSet<Digest>>,
    /// One computation at a time: lists are a background job, never in a request's path.
    running: Arc<tokio::sync::Semaphore>,
    corrupt: Mutex<HashSet<Digest>>,
}

impl Pieces {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Pieces {
            dir,
            pending: Mutex::new(HashSet::new()),
            running: Arc::new(tokio::sync::Semaphore::new(1)),
            corrupt: Mutex::new(HashSet::new()),
        }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(format!("{}-{}", digest.algorithm().as_str(), digest.hex()))
    }

    /// Is the local copy of `digest` known not to match its digest?
    pub(crate) fn is_corrupt(&self, digest: &Digest) -> bool {
        self.corrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(digest)
    }

    /// The encoded list of `digest` if it is cached and valid for `size`.
    pub(crate) async fn cached(&self, digest: &Digest, size: u64) -> Option<Bytes> {
        let path = self.path(digest);
        let bytes = tokio::fs::read(&path).await.ok()?;
        match PieceList::decode(&bytes, size) {
            Ok(_) => Some(Bytes::from(bytes)),
            Err(e) => {
                tracing::warn!(digest = %digest, error = %e, "cached piece list is invalid; removing it");
                let _ = tokio::fs::remove_file(&path).await;
                None
            }
        }
    }

    /// Compute and cache the list of local blob `digest` in the background, unless it is
    /// cached, already queued, or the queue is full.
    pub(crate) fn ensure(self: &Arc<Self>, local: Arc<dyn LocalStore>, digest: Digest, size: u64) {
        if digest.algorithm() != Algorithm::Sha256 || self.path(&digest).exists() {
            return;
        }
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.len() >= MAX_PENDING || !p.insert(digest.clone()) {
                return;
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = me.running.clone().acquire_owned().await else {
                return;
            };
            let started = std::time::Instant::now();
            match compute(local.as_ref(), &digest, size, PIECE_SIZE).await {
                Ok(list) => match me.store(&digest, &list).await {
                    Ok(()) => {
                        tracing::info!(digest = %digest, pieces = list.hashes.len(), elapsed = ?started.elapsed(), "piece list computed")
                    }
                    Err(e) => {
                        tracing::warn!(digest = %digest, error = %e, "cannot cache the piece list")
                    }
                },
                Err(ComputeError::Corrupt(got)) => {
                    tracing::error!(digest = %digest, got = %got, "local content does not match its digest; no longer serving it to peers");
                    let mut c = me.corrupt.lock().unwrap_or_else(|e| e.into_inner());
                    if c.len() >= MAX_CORRUPT {
                        c.clear();
                    }
                    c.insert(digest.clone());
                }
                Err(e) => {
                    tracing::warn!(digest = %digest, error = %e, "cannot compute the piece list")
                }
            }
            me.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&digest);
        });
    }

    /// Write the list (temp file, then rename) and keep the cache within [`MAX_CACHED`] files.
    async fn store(&self, digest: &Digest, list: &PieceList) -> std::io::Result<()> {
        let dir = self.dir.clone();
        let path = self.path(digest);
        let bytes = list.encode();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let mut tmp = tempfile::Builder::new()
                .prefix(".pieces-")
                .tempfile_in(&dir)?;
            tmp.write_all(&bytes)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            evict(&dir, MAX_CACHED)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// Remove the oldest lists beyond `max`.
fn evict(dir: &std::path::Path, max: usize) -> std::io::Result<()> {
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= max {
        return Ok(());
    }
    files.sort();
    for (_, p) in files.iter().take(files.len() - max) {
        std::fs::remove_file(p)?;
    }
    Ok(())
}

/// `GET /shoal/v1/pieces/<digest>`: the cached list of a local blob, to signed peers only.
/// Not cached yet: 404, and the list is computed in the background for the next asker.
pub(crate) async fn serve_list(
    shared: &Arc<Shared>,
    from_peer: bool,
    head: bool,
    rest: &str,
) -> Result<(Response, Source), MirrorError> {
    if !from_peer {
        // Lists are for peers: the local containerd never asks, and no one else may.
        return Err(MirrorError::Unauthenticated);
    }
    let digest: Digest = rest.parse().map_err(|e| {
        MirrorError::BlobUnknown(format!("{rest:?} is not a digest ({e}); no piece list"))
    })?;
    if digest.algorithm() != Algorithm::Sha256 {
        return Err(MirrorError::BlobUnknown(format!(
            "{digest} (piece lists are kept for sha256 blobs only)"
        )));
    }
    let Some(info) = shared.local.stat(&digest).await else {
        return Err(MirrorError::BlobUnknown(digest.to_string()));
    };
    if shared.pieces.is_corrupt(&digest) {
        return Err(MirrorError::BlobUnknown(format!(
            "{digest} (the local copy does not match its digest)"
        )));
    }
    let Some(bytes) = shared.pieces.cached(&digest, info.size).await else {
        shared
            .pieces
            .ensure(shared.local.clone(), digest.clone(), info.size);
        return Err(MirrorError::BlobUnknown(format!(
            "{digest} (piece list not computed yet)"
        )));
    };
    let len = bytes.len();
    let body = if head {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok((res, Source::Local))
}

/// SHA-256 of one piece held as consecutive chunks.
pub(crate) fn hash_chunks(chunks: &[Bytes]) -> [u8; 32] {
    let mut h = Sha256::new();
    for c in chunks {
        h.update(c);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_bad_lists_are_refused() {
        let size = 3 * MIN_PIECE + 5;
        let list = PieceList {
            piece_size: MIN_PIECE,
            size,
            hashes: vec![[1; 32], [2; 32], [3; 32], [4; 32]],
        };
        let enc = list.encode();
        assert_eq!(PieceList::decode(&enc, size).unwrap(), list);
        assert!(matches!(
            PieceList::decode(&enc, size + 1),
            Err(ListError::Size { .. })
        ));
        assert!(matches!(
            PieceList::decode(&enc[..enc.len() - 1], size),
            Err(ListError::Count { .. })
        ));
        assert!(matches!(
            PieceList::decode(&enc[..3], size),
            Err(ListError::Short(3))
        ));
        let mut tiny = enc.clone();
        tiny[..8].copy_from_slice(&16u64.to_be_bytes());
        assert!(matches!(
            PieceList::decode(&tiny, size),
            Err(ListError::PieceSize(16))
        ));
        assert!(enc.len() as u64 <= PieceList::max_encoded(size));
    }

    #[test]
    fn eviction_keeps_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..5 {
            std::fs::write(tmp.path().join(format!("f{i}")), b"x").unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i);
            let f = std::fs::File::options()
                .write(true)
                .open(tmp.path().join(format!("f{i}")))
                .unwrap();
            f.set_modified(t).unwrap();
        }
        evict(tmp.path(), 3).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["f2", "f3", "f4"]);
    }
}
