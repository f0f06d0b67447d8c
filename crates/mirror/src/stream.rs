//! Streaming a large peer blob to containerd as it arrives, piece by piece, without ever letting
//! containerd commit a byte that failed verification.
//!
//! What containerd does with a mirror's body (measured, see the crate docs and
//! `docs/architecture.md`): a body closed normally (FIN) part-way makes it resume at once with
//! `Range: bytes=<received>-`, mirror first, then the registry, and it stitches the parts; a
//! response with headers and no body byte is retried three times on the mirror only and fails
//! the pull; an ingest aborted through the Content API fails the running pull and leaves nothing
//! behind, so the next attempt starts clean. Hence the rules here:
//!
//! * **No headers before the first piece is in hand.** The response is only returned once the
//!   first piece has arrived and passed its check; every failure before that is a clean 404.
//! * **Piece checks.** The piece list ([`crate::pieces`]) is fetched from a holder (one that
//!   publishes lists only for content that matched its digest). Each piece is sent only once it
//!   matched its list entry; a bad piece marks its peer bad for the blob and is fetched again
//!   from the next provider at the piece's offset, without restarting the blob. A piece that
//!   fails against the list from two peers drops the list.
//! * **Tail hold.** The final piece is sent only after the whole-blob digest matched, so a
//!   lying or stale list (or an unchecked body) never completes the body.
//! * **Ingest repair.** If bytes were sent that no list vouched for (no list, or it was dropped)
//!   and the blob then fails (final mismatch, no provider left, client gone), the local ingest
//!   of the digest is aborted through [`IngestControl`] before the body ends, so containerd's
//!   retry starts from zero instead of stitching a good suffix onto a bad prefix.
//! * **Cut after verified bytes only.** When every byte sent was list-checked and the providers
//!   run out, the body just ends (FIN): containerd resumes from the next host with `Range` and
//!   the stitched blob is correct.
//!
//! Memory: one piece being gathered plus at most [`QUEUE`] pieces queued to the client.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use http::Method;
use shoal_oci::{Digest, Hasher};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc;

use crate::client::Opened;
use crate::events::FetchEventKind;
use crate::fetch::{Fetch, GaveUp};
use crate::metrics::Source;
use crate::pieces::{self, PieceList};
use crate::source::{IngestControl, Provider};
use crate::state::Shared;

/// Whether a peer blob streams as it arrives, and through which ingest control: only when the
/// local containerd ingest can be aborted, the request is for the `whole` blob and one peer at a
/// time serves it (a multi-peer download is spooled and verified whole first).
pub(crate) fn ingest_for(
    shared: &Shared,
    whole: bool,
    size: u64,
) -> Option<Arc<dyn IngestControl>> {
    let cfg = &shared.cfg;
    let multi = size > cfg.multi_peer_threshold && cfg.max_peers_per_blob > 1;
    let ingest = shared.ingest.as_ref()?;
    (whole && !multi && ingest.available()).then(|| ingest.clone())
}

/// Pieces queued between the fetch task and the client body.
const QUEUE: usize = 2;
/// Longest wait for a piece list before streaming without one.
const LIST_WAIT: Duration = Duration::from_millis(500);
/// Holders asked for a list.
const LIST_TRIES: usize = 3;

/// One piece as the chunks it arrived in from the peer connection (slices of the HTTP client's
/// read buffers): gathering, hashing and sending it copies nothing.
#[derive(Default)]
struct Piece {
    chunks: Vec<Bytes>,
    len: u64,
}

impl Piece {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len() as u64;
        self.chunks.push(chunk);
    }
}

/// Where the piece list stands.
enum List {
    Checked { list: PieceList, holder: String },
    None,
}

/// Why the piece stream stopped before the end.
enum Stop {
    /// No provider left (or attempts used up).
    NoPeer(String),
    /// The client went away.
    ClientGone,
}

struct Streamer {
    fetch: Fetch,
    shared: Arc<Shared>,
    digest: Digest,
    size: u64,
    piece_size: u64,
    list: List,
    /// Failures of each piece against the list, for the piece being gathered.
    misses: usize,
    current: Option<Opened>,
    /// Bytes of the current response not yet used (past the end of the previous piece).
    carry: Bytes,
    whole: Option<Hasher>,
    sent: u64,
    /// Some byte sent was not checked against a list.
    unchecked_sent: bool,
    contributors: Vec<String>,
    ingest: Arc<dyn IngestControl>,
}

/// Start streaming blob `digest` (of `first.size` bytes, `first` opened at offset 0). Returns
/// the body once the first piece is verified; `Err` means nothing was sent (answer 404).
pub(crate) async fn start(
    fetch: Fetch,
    digest: Digest,
    first: Opened,
    ingest: Arc<dyn IngestControl>,
    slot: OwnedSemaphorePermit,
) -> Result<Body, GaveUp> {
    debug_assert_eq!(first.offset, 0);
    let shared = fetch.shared.clone();
    let size = first.size;
    let list = fetch_list(fetch.shared.clone(), &first.provider, &digest, size).await;
    let piece_size = match &list {
        List::Checked { list, .. } => list.piece_size,
        List::None => pieces::PIECE_SIZE,
    };
    let mut s = Streamer {
        contributors: vec![first.provider.peer.clone()],
        whole: Some(digest.algorithm().hasher()),
        fetch,
        shared,
        digest,
        size,
        piece_size,
        list,
        misses: 0,
        current: Some(first),
        carry: Bytes::new(),
        sent: 0,
        unchecked_sent: false,
        ingest,
    };
    let count = PieceList::count(size, piece_size);
    let first_piece = loop {
        let p = match s.piece(0).await {
            Ok(p) => p,
            Err(Stop::NoPeer(why)) => return Err(s.gave_up(why)),
            Err(Stop::ClientGone) => return Err(GaveUp("client went away".into())),
        };
        // A one-piece blob is also its own tail: it is checked whole before any header goes
        // out (headers followed by no byte would fail containerd's pull without fallback).
        if count > 1 || s.whole_matches() {
            break p;
        }
        s.one_piece_mismatch().await.map_err(|stop| match stop {
            Stop::NoPeer(why) => s.gave_up(why),
            Stop::ClientGone => GaveUp("client went away".into()),
        })?;
    };
    let (tx, rx) = mpsc::channel::<std::io::Result<Piece>>(QUEUE);
    tokio::spawn(async move {
        let _slot = slot;
        s.run(first_piece, count, tx).await;
    });
    // A piece goes out as the chunks it arrived in: no copy on the way to the client.
    let body = futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    })
    .flat_map(|item| {
        futures::stream::iter(match item {
            Ok(piece) => piece.chunks.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
    });
    Ok(Body::from_stream(body))
}

impl Streamer {
    /// Send piece 0 (already in hand) and every later piece, holding the last until the whole
    /// digest matched.
    async fn run(&mut self, first: Piece, count: u64, tx: mpsc::Sender<std::io::Result<Piece>>) {
        let mut next = Some(first);
        for i in 0..count {
            let piece = match next.take() {
                Some(p) => p,
                None => match self.piece(i).await {
                    Ok(p) => p,
                    Err(stop) => return self.stop(stop, &tx).await,
                },
            };
            if i + 1 == count {
                if count > 1 {
                    let got = self.whole.take().map(Hasher::finish);
                    if got.as_ref() != Some(&self.digest) {
                        return self.mismatch(got, &tx).await;
                    }
                }
                tracing::info!(digest = %self.digest, bytes = self.size, peers = ?self.contributors, checked = !self.unchecked_sent, "blob streamed and verified");
                self.shared.event(
                    &self.fetch.key,
                    self.contributors.last().map(String::as_str),
                    FetchEventKind::Verified { bytes: self.size },
                );
            }
            let len = piece.len;
            if !matches!(self.list, List::Checked { .. }) {
                self.unchecked_sent = true;
            }
            if tx.send(Ok(piece)).await.is_err() {
                return self.stop(Stop::ClientGone, &tx).await;
            }
            self.shared.metrics.add_bytes(Source::Peer, len);
            self.sent += len;
        }
    }

    /// Does the whole hash so far equal the digest? (Consumes the hash state.)
    fn whole_matches(&mut self) -> bool {
        let got = self.whole.take().map(Hasher::finish);
        if got.as_ref() == Some(&self.digest) {
            // Put a finished marker back: `run` will not hash again for a one-piece blob.
            self.whole = None;
            true
        } else {
            false
        }
    }

    /// A one-piece blob failed its digest before anything was sent: mark who served it and
    /// start again from the next provider, without a list.
    async fn one_piece_mismatch(&mut self) -> Result<(), Stop> {
        let peers = std::mem::take(&mut self.contributors);
        for p in &peers {
            self.shared.bad.mark(p, &self.digest);
        }
        tracing::warn!(digest = %self.digest, ?peers, "blob does not match its digest; nothing was sent, trying the next provider");
        let last = peers.last().cloned();
        self.shared.event(
            &self.fetch.key,
            last.as_deref(),
            FetchEventKind::DigestMismatch { peers },
        );
        self.list = List::None;
        self.whole = Some(self.digest.algorithm().hasher());
        self.current = None;
        self.reopen(0).await
    }

    /// The blob failed before its end: repair the ingest when unchecked bytes went out, then
    /// end the body with an error (a normal close; containerd resumes elsewhere).
    async fn stop(&mut self, stop: Stop, tx: &mpsc::Sender<std::io::Result<Piece>>) {
        let why = match stop {
            Stop::NoPeer(why) => why,
            Stop::ClientGone => "the client went away".into(),
        };
        tracing::warn!(digest = %self.digest, sent = self.sent, reason = %why, unchecked = self.unchecked_sent, "peer stream stopped before the end");
        self.shared.event(
            &self.fetch.key,
            None,
            FetchEventKind::GaveUp {
                reason: why.clone(),
            },
        );
        if self.unchecked_sent {
            self.abort_ingest().await;
        }
        let _ = tx
            .send(Err(std::io::Error::other(format!(
                "peer stream stopped: {why}"
            ))))
            .await;
    }

    /// The whole digest did not match: the tail is never sent, the ingest is aborted.
    async fn mismatch(&mut self, got: Option<Digest>, tx: &mpsc::Sender<std::io::Result<Piece>>) {
        let peers = match &self.list {
            // Every piece matched the list, so the list (and its holder) lied.
            List::Checked { holder, .. } => vec![holder.clone()],
            List::None => self.contributors.clone(),
        };
        for p in &peers {
            self.shared.bad.mark(p, &self.digest);
        }
        tracing::error!(digest = %self.digest, got = ?got.map(|d| d.to_string()), ?peers, sent = self.sent, "streamed blob does not match its digest; the last piece is withheld and the ingest aborted");
        let last = peers.last().cloned();
        self.shared.event(
            &self.fetch.key,
            last.as_deref(),
            FetchEventKind::DigestMismatch { peers },
        );
        self.abort_ingest().await;
        let _ = tx
            .send(Err(std::io::Error::other("blob failed verification")))
            .await;
    }

    async fn abort_ingest(&mut self) {
        match self.ingest.abort(&self.digest).await {
            Ok(n) => {
                tracing::warn!(digest = %self.digest, aborted = n, "aborted containerd's ingest of a blob that failed after bytes were sent");
                self.shared.metrics.ingest_abort(true);
            }
            Err(e) => {
                tracing::error!(digest = %self.digest, error = %e, "could not abort containerd's ingest");
                self.shared.metrics.ingest_abort(false);
            }
        }
    }

    fn gave_up(&self, why: String) -> GaveUp {
        tracing::warn!(digest = %self.digest, reason = %why, "no peer could start the blob; answering 404");
        self.shared.event(
            &self.fetch.key,
            None,
            FetchEventKind::GaveUp {
                reason: why.clone(),
            },
        );
        GaveUp(why)
    }

    /// Piece `i`, checked against the list when there is one, and added to the whole hash.
    async fn piece(&mut self, i: u64) -> Result<Piece, Stop> {
        let start = i * self.piece_size;
        let len = (self.size - start).min(self.piece_size) as usize;
        self.misses = 0;
        loop {
            let bytes = self.gather(start, len).await?;
            let expected = match &self.list {
                List::Checked { list, .. } => Some(list.hashes[i as usize]),
                List::None => None,
            };
            let whole = self.whole.take();
            let (ok, whole, bytes) = tokio::task::spawn_blocking(move || {
                let ok = expected.is_none_or(|h| pieces::hash_chunks(&bytes.chunks) == h);
                let mut whole = whole;
                if ok {
                    if let Some(w) = whole.as_mut() {
                        for c in &bytes.chunks {
                            w.update(c);
                        }
                    }
                }
                (ok, whole, bytes)
            })
            .await
            .map_err(|e| Stop::NoPeer(format!("hashing task failed: {e}")))?;
            self.whole = whole;
            if ok {
                return Ok(bytes);
            }
            self.bad_piece(i, start).await?;
        }
    }

    /// Piece `i` at `start` did not match the list: mark its peer, maybe drop the list, and
    /// open the next provider at the piece's start.
    async fn bad_piece(&mut self, i: u64, start: u64) -> Result<(), Stop> {
        let peer = self
            .current
            .take()
            .map(|o| o.provider.peer)
            .unwrap_or_default();
        self.carry = Bytes::new();
        self.misses += 1;
        self.shared.bad.mark(&peer, &self.digest);
        self.shared.metrics.bad_piece();
        // The list was made when its holder's copy matched the whole digest, so a holder whose
        // bytes no longer match its own list has a copy that went bad since: keep the list.
        // Only two different peers failing the same piece cast doubt on the list itself.
        let drop_list = matches!(self.list, List::Checked { .. }) && self.misses >= 2;
        tracing::warn!(digest = %self.digest, %peer, piece = i, offset = start, drop_list, "piece does not match the piece list; fetching it from another peer");
        self.shared.event(
            &self.fetch.key,
            Some(&peer),
            FetchEventKind::DigestMismatch {
                peers: vec![peer.clone()],
            },
        );
        if drop_list {
            self.list = List::None;
        }
        self.reopen(start).await
    }

    /// `len` bytes from `start`, from the current response and then the next providers.
    async fn gather(&mut self, start: u64, len: usize) -> Result<Piece, Stop> {
        let idle = self.shared.cfg.idle_timeout;
        let mut buf = Piece::default();
        loop {
            if !self.carry.is_empty() {
                let n = self.carry.len().min(len - buf.len as usize);
                buf.push(self.carry.split_to(n));
            }
            if buf.len as usize == len {
                return Ok(buf);
            }
            let offset = start + buf.len;
            let Some(cur) = self.current.as_mut() else {
                self.reopen(offset).await?;
                continue;
            };
            let failed = match tokio::time::timeout(idle, cur.body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    if offset + chunk.len() as u64 > self.size {
                        Some(("peer sent more than its size".to_owned(), false))
                    } else {
                        self.fetch.touch();
                        self.carry = chunk;
                        None
                    }
                }
                Ok(Some(Err(e))) => Some((format!("transfer broke: {e}"), false)),
                Ok(None) => Some((format!("body ended at {offset} of {}", self.size), false)),
                Err(_) => Some((format!("no data for {idle:?}"), true)),
            };
            if let Some((reason, stalled)) = failed {
                let peer = cur.provider.peer.clone();
                self.current = None;
                if stalled {
                    // A stall is a fault of the peer for this blob: counted, marked, logged.
                    self.shared.metrics.peer_stall();
                    self.shared.bad.mark(&peer, &self.digest);
                }
                tracing::warn!(digest = %self.digest, %peer, offset, %reason, "peer stream failed; continuing elsewhere");
                self.shared.event(
                    &self.fetch.key,
                    Some(&peer),
                    FetchEventKind::PeerFailed { offset, reason },
                );
                self.reopen(offset).await?;
            }
        }
    }

    async fn reopen(&mut self, offset: u64) -> Result<(), Stop> {
        self.carry = Bytes::new();
        match self
            .fetch
            .open(Method::GET, None, offset, Some(self.size))
            .await
        {
            Ok(o) => {
                if !self.contributors.contains(&o.provider.peer) {
                    self.contributors.push(o.provider.peer.clone());
                }
                self.current = Some(o);
                Ok(())
            }
            Err(GaveUp(why)) => Err(Stop::NoPeer(why)),
        }
    }
}

/// The piece list of `digest`, from `first` or (if it has none) from up to [`LIST_TRIES`] - 1
/// other providers, within [`LIST_WAIT`] in all.
async fn fetch_list(shared: Arc<Shared>, first: &Provider, digest: &Digest, size: u64) -> List {
    if digest.algorithm() != shoal_oci::Algorithm::Sha256 {
        return List::None;
    }
    let key = shoal_oci::Key::Digest(digest.clone());
    let find = async {
        let mut others = shared
            .providers
            .find(&key)
            .filter(|p| {
                let ok = p.peer != first.peer && !shared.bad.is_bad(&p.peer, digest);
                async move { ok }
            })
            .take(LIST_TRIES - 1)
            .boxed();
        let mut next = Some(first.clone());
        loop {
            let p = match next.take() {
                Some(p) => p,
                None => others.next().await?,
            };
            match shared.client.pieces(&p, digest, size).await {
                Ok(list) => return Some((list, p.peer)),
                Err(e) => {
                    tracing::debug!(digest = %digest, peer = %p.peer, error = %e, "no piece list from this holder");
                }
            }
        }
    };
    match tokio::time::timeout(LIST_WAIT, find).await {
        Ok(Some((list, holder))) => List::Checked { list, holder },
        _ => {
            tracing::debug!(digest = %digest, "streaming without a piece list");
            List::None
        }
    }
}
