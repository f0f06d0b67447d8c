//! Piece lists: the SHA-256 chaining state of a blob at every piece boundary, so that a puller
//! can check bytes as they arrive, each byte hashed once, instead of only at the end of the blob.
//!
//! SHA-256 carries eight 32-bit words from one 64-byte block to the next ([`ChainHasher`]).
//! Pieces are a multiple of 64 bytes, so the state after pieces `0..k` is well defined: call it
//! `S_k` (`S_0` is SHA-256's initial value). A list publishes `S_1 ..= S_{n-1}` for a blob of
//! `n` pieces. Piece `k` is checked on its own: hashing it from `S_k` must give `S_{k+1}`; the
//! last piece, hashed from `S_{n-1}`, padded and finished, must give the blob's digest. So:
//!
//! * **Every byte is hashed once.** If every piece passed, then by induction from `S_0` the
//!   bytes `0..k·P` really leave SHA-256 in `S_k`, whatever the list says, and the last check
//!   *is* the whole-blob digest check: there is no second, whole-blob pass.
//! * **A lying or stale list is still caught, at the last piece.** A list can make wrong bytes
//!   pass pieces `0..n-1` (a holder serving its own wrong bytes with their states), but those
//!   states cannot be finished into the blob's digest with any last piece without a SHA-256
//!   collision. So the tail hold, the ingest repair and the "the list lied" blame of
//!   [`crate::stream`] stay: they are triggered by the last piece failing when every other
//!   piece passed. A last-piece failure is ambiguous (a bad last piece from an honest list, or
//!   a list that lied about an earlier state), so the puller first treats it as a bad piece
//!   (mark its peer, fetch it again from another). When it fails again, or no one else can
//!   send it, another holder whose list has the same state before the last piece
//!   corroborates the list (bytes that passed every earlier piece really are in that state,
//!   and two holders agree it is the blob's): the prefix is right and only the last piece's
//!   senders were bad. Without that, it is the whole-digest mismatch of a lying list.
//!
//! A holder computes the list of a blob it holds once, from its containerd content, in one
//! pass: the states are read off the same hash whose finish checks the content against its
//! digest, and a list is published only when that check passed, so a list never vouches for
//! corrupt local content (a holder whose disk flipped a byte publishes no list and stops
//! serving that blob, see [`Pieces::is_corrupt`]). Lists are kept in a small bounded on-disk
//! cache (`<spool_dir>/pieces-v2/`, written to a temp file then renamed).
//!
//! Lists are computed in the background, one blob at a time, when a peer first asks for the
//! list or the blob; until then the list route answers 404 and pullers stream without one (with
//! the tail hold and the ingest abort of [`crate::stream`]). The route
//! (`GET /shoal/v2/pieces/<digest>`, media type `application/vnd.shoal.pieces.v2`) answers
//! signed peers only.
//!
//! Versions: v1 lists (a SHA-256 per piece) are neither served, asked for nor read: their cache
//! directory was `pieces/`, this one is `pieces-v2/`. During a rolling upgrade an old holder
//! answers 404 on the v2 route (and a new one 404 on the v1 route), so the puller streams
//! without a list, which is safe (tail hold, ingest repair).
//!
//! Wire and cache format (big-endian): piece size (u64), blob size (u64), then the 32-byte
//! state (eight big-endian words) at the end of every piece but the last.
//!
//! Piece size: 1 MiB. The puller sends a piece only once it has arrived whole and matched, so
//! the piece size is the added first-byte latency (about 8 ms at 1 Gbit/s, 40 ms at
//! 200 Mbit/s) and the most memory a transfer buffers; a 1 GiB blob's list is 32 KiB.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use shoal_oci::{Algorithm, ChainHasher, ChainState, Digest, SHA256_BLOCK};

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
pub(crate) const ROUTE: &str = "/shoal/v2/pieces/";
/// Media type of a list.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.shoal.pieces.v2";
/// The cache directory under the spool directory (v1 lists lived in `pieces/`).
pub(crate) const CACHE_DIR: &str = "pieces-v2";
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
    #[error(
        "piece size {0} is outside {MIN_PIECE}..={MAX_PIECE} or not a multiple of {SHA256_BLOCK}"
    )]
    PieceSize(u64),
    #[error("piece list is for a blob of {got} bytes, not {want}")]
    Size { got: u64, want: u64 },
    #[error("piece list has {got} bytes of states, {want} expected")]
    Count { got: usize, want: u64 },
}

/// The SHA-256 chaining states of one blob at its piece boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PieceList {
    pub piece_size: u64,
    pub size: u64,
    /// The state after pieces `0..=k`, for every piece `k` but the last.
    pub states: Vec<ChainState>,
}

/// What piece `i` of a listed blob must hash to: from `start` (the state at `offset`) over the
/// piece, to `end`.
#[derive(Debug, Clone)]
pub(crate) struct Expect {
    pub start: ChainState,
    pub offset: u64,
    pub end: End,
}

/// The end of a piece's check.
#[derive(Debug, Clone)]
pub(crate) enum End {
    /// A piece before the last: the state after it.
    State(ChainState),
    /// The last piece: finished, the blob's digest.
    Digest(Digest),
}

impl Expect {
    /// Hash `chunks` (one piece) from the start state; `Err` carries the digest obtained when
    /// this was the last piece.
    pub(crate) fn check(&self, chunks: &[Bytes]) -> Result<(), Option<Digest>> {
        let Ok(mut h) = ChainHasher::resume(self.start, self.offset) else {
            return Err(None);
        };
        for c in chunks {
            h.update(c);
        }
        match &self.end {
            End::State(want) => match h.state() {
                Some(got) if got == *want => Ok(()),
                _ => Err(None),
            },
            End::Digest(want) => {
                let got = h.finish();
                if &got == want { Ok(()) } else { Err(Some(got)) }
            }
        }
    }
}

impl PieceList {
    /// Number of pieces of a blob of `size` bytes.
    pub(crate) fn count(size: u64, piece_size: u64) -> u64 {
        size.div_ceil(piece_size)
    }

    /// Number of pieces of this list's blob.
    pub(crate) fn pieces(&self) -> u64 {
        Self::count(self.size, self.piece_size)
    }

    /// What piece `i` of blob `digest` must hash to.
    pub(crate) fn expect(&self, i: u64, digest: &Digest) -> Expect {
        let start = match i.checked_sub(1) {
            None => ChainState::INITIAL,
            Some(k) => self.state(k),
        };
        let end = if i + 1 >= self.pieces() {
            End::Digest(digest.clone())
        } else {
            End::State(self.state(i))
        };
        Expect {
            start,
            offset: i * self.piece_size,
            end,
        }
    }

    /// The state after piece `k` (a piece before the last). A piece past the list compares
    /// against no real state: `decode` makes that impossible for a list from a peer.
    pub(crate) fn state(&self, k: u64) -> ChainState {
        self.states
            .get(k as usize)
            .copied()
            .unwrap_or(ChainState::from_bytes([0; 32]))
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 32 * self.states.len());
        out.extend_from_slice(&self.piece_size.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        for s in &self.states {
            out.extend_from_slice(&s.to_bytes());
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
        if !(MIN_PIECE..=MAX_PIECE).contains(&piece_size) || piece_size % SHA256_BLOCK != 0 {
            return Err(ListError::PieceSize(piece_size));
        }
        if got != size {
            return Err(ListError::Size { got, want: size });
        }
        let want = Self::count(size, piece_size).saturating_sub(1);
        let body = &bytes[HEADER..];
        if body.len() as u64 != want * 32 {
            return Err(ListError::Count {
                got: body.len(),
                want: want * 32,
            });
        }
        let states = body
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                ChainState::from_bytes(h)
            })
            .collect();
        Ok(PieceList {
            piece_size,
            size,
            states,
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

/// Hash `size` bytes of local sha256 blob `digest` into a piece list, in one pass: the states
/// at the piece boundaries, then the finish that checks the whole digest.
pub(crate) async fn compute(
    local: &dyn LocalStore,
    digest: &Digest,
    size: u64,
    piece_size: u64,
) -> Result<PieceList, ComputeError> {
    debug_assert_eq!(piece_size % SHA256_BLOCK, 0);
    let mut stream = local
        .read(digest, 0, Some(size))
        .await
        .map_err(ComputeError::Read)?;
    let mut hasher = ChainHasher::new();
    let mut states = Vec::with_capacity(PieceList::count(size, piece_size) as usize);
    // The chunks of the piece being gathered (slices of the reads: nothing is copied).
    let mut piece: Vec<Bytes> = Vec::new();
    let mut pending = 0u64;
    let mut got = 0u64;
    loop {
        let chunk = stream
            .next()
            .await
            .transpose()
            .map_err(ComputeError::Read)?;
        let end = chunk.is_none();
        if let Some(mut c) = chunk {
            got += c.len() as u64;
            if got > size {
                return Err(ComputeError::Length { got, want: size });
            }
            // Cut at the piece boundaries, hashing each whole piece off the async workers.
            while pending + c.len() as u64 >= piece_size {
                piece.push(c.split_to((piece_size - pending) as usize));
                hasher = hash_piece(hasher, std::mem::take(&mut piece)).await?;
                pending = 0;
                if hasher.len() < size {
                    states.extend(hasher.state());
                }
            }
            if !c.is_empty() {
                pending += c.len() as u64;
                piece.push(c);
            }
        }
        if end {
            break;
        }
    }
    if got != size {
        return Err(ComputeError::Length { got, want: size });
    }
    let actual = tokio::task::spawn_blocking(move || {
        let mut h = hasher;
        for c in &piece {
            h.update(c);
        }
        h.finish()
    })
    .await
    .map_err(|e| ComputeError::Task(e.to_string()))?;
    if &actual != digest {
        return Err(ComputeError::Corrupt(actual));
    }
    Ok(PieceList {
        piece_size,
        size,
        states,
    })
}

/// Feed one piece to `hasher` on a blocking thread.
async fn hash_piece(hasher: ChainHasher, piece: Vec<Bytes>) -> Result<ChainHasher, ComputeError> {
    tokio::task::spawn_blocking(move || {
        let mut h = hasher;
        for c in &piece {
            h.update(c);
        }
        h
    })
    .await
    .map_err(|e| ComputeError::Task(e.to_string()))
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
                        tracing::info!(digest = %digest, pieces = list.pieces(), elapsed = ?started.elapsed(), "piece list computed")
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

/// `GET /shoal/v2/pieces/<digest>`: the cached list of a local blob, to signed peers only.
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

#[cfg(test)]
mod tests;
