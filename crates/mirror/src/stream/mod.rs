//! Streaming a large peer blob to containerd as it arrives, piece by piece, without ever letting
//! containerd commit a byte that failed verification. This module streams from one peer at a
//! time; [`crate::multi::stream`] streams from several, and both keep the rules below through
//! [`outlet`].
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
//! * **Piece checks.** The piece list ([`crate::pieces`]: SHA-256 chaining states at the piece
//!   boundaries) is fetched from a holder (one that publishes lists only for content that
//!   matched its digest). Each piece is sent only once it hashed, from the list's state before
//!   it, to the list's state after it; a bad piece marks its peer bad for the blob and is
//!   fetched again from the next provider at the piece's offset, without restarting the blob.
//!   A piece before the last that fails against the list from two peers drops the list; the
//!   stream goes on with a whole-blob hash resumed from the state the checked prefix really
//!   has (the list's state before that piece: every earlier piece chained to it from the IV).
//! * **Tail hold.** The final piece is sent only after the whole-blob digest matched, so a
//!   lying or stale list (or an unchecked body) never completes the body. With a list, the
//!   last piece's check *is* that match (its hash finished from the list's last state), so
//!   every byte is hashed once. A last piece that fails is first a bad piece (its peer marked,
//!   fetched again from another). Failing again, or with no one left to send it, either the
//!   senders of the last piece were all bad or the list's states do not lead to the digest.
//!   Another holder publishing the same state before the last piece settles it for the
//!   former ([`outlet::corroborated`]: the prefix is right, the body ends after it);
//!   otherwise the list lied, its holder is marked, and the prefix it vouched for is suspect,
//!   so the tail is withheld and the ingest aborted.
//! * **Ingest repair.** If bytes were sent that no list vouched for (no list, or it was dropped)
//!   and the blob then fails (final mismatch, no provider left, client gone), the local ingest
//!   of the digest is aborted through [`IngestControl`] before the body ends, so containerd's
//!   retry starts from zero instead of stitching a good suffix onto a bad prefix.
//! * **Cut after verified bytes only.** When every byte sent was list-checked and the providers
//!   run out, the body just ends (FIN): containerd resumes from the next host with `Range` and
//!   the stitched blob is correct.
//!
//! Memory: one piece being gathered plus the few pieces [`outlet`] queues to the client.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use http::Method;
use shoal_oci::{Digest, Hasher};

use crate::pieces::Expect;
use tokio::sync::OwnedSemaphorePermit;

use crate::client::Opened;
use crate::events::FetchEventKind;
use crate::fetch::{Fetch, GaveUp};
use crate::pieces::{self, PieceList};
use crate::source::IngestControl;
use crate::state::Shared;

pub(crate) mod outlet;

use outlet::{Check, ClientGone, List, Outlet, Piece};

/// The ingest control to stream a peer blob with: only when the local containerd ingest can be
/// aborted and the request is for the `whole` blob. Without it, the blob is spooled and verified
/// whole before the first byte.
pub(crate) fn ingest_for(shared: &Shared, whole: bool) -> Option<Arc<dyn IngestControl>> {
    let ingest = shared.ingest.as_ref()?;
    (whole && ingest.available()).then(|| ingest.clone())
}

/// Why the piece stream stopped before the end.
enum Stop {
    /// No provider left (or attempts used up).
    NoPeer(String),
    /// The client went away.
    ClientGone,
    /// The last piece failed the list again, or could not be fetched again after failing: the
    /// list does not lead to the digest (`got`, when the last try computed one).
    TailFailed(Option<Digest>),
}

impl From<ClientGone> for Stop {
    fn from(_: ClientGone) -> Self {
        Stop::ClientGone
    }
}

struct Streamer {
    fetch: Fetch,
    shared: Arc<Shared>,
    digest: Digest,
    size: u64,
    piece_size: u64,
    list: List,
    /// Pieces of the blob.
    count: u64,
    /// Failures of each piece against the list, for the piece being gathered.
    misses: usize,
    current: Option<Opened>,
    /// Bytes of the current response not yet used (past the end of the previous piece).
    carry: Bytes,
    /// The running whole-blob hash, when there is no list (a list's pieces need none).
    whole: Option<Hasher>,
    contributors: Vec<String>,
    /// The node that was passing the blob on while downloading it, once it stopped: asked of
    /// the herd's arbiter who takes over (see [`crate::herd::take_over`]).
    stopped_source: Option<String>,
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
    // Bytes still arriving on their holder have no list, and they are not worth waiting for one.
    let in_flight = first.in_flight;
    let mut list = if in_flight {
        List::None
    } else {
        outlet::fetch_list(fetch.shared.clone(), &first.provider, &digest, size).await
    };
    let piece_size = match &list {
        List::Checked { list, .. } => list.piece_size,
        List::None => pieces::PIECE_SIZE,
    };
    let count = PieceList::count(size, piece_size);
    if count <= 1 {
        // A one-piece blob is checked whole before any header anyway: the list adds nothing.
        list = List::None;
    }
    let mut s = Streamer {
        contributors: vec![first.provider.peer.clone()],
        whole: (!list.is_checked()).then(|| digest.algorithm().hasher()),
        count,
        fetch,
        shared: shared.clone(),
        digest: digest.clone(),
        size,
        piece_size,
        list,
        misses: 0,
        current: Some(first),
        carry: Bytes::new(),
        stopped_source: None,
    };
    let first_piece = loop {
        let p = match s.piece(0).await {
            Ok(p) => p,
            Err(Stop::NoPeer(why)) => return Err(s.gave_up(why)),
            // Not before the first piece: a one-piece blob streams without a list.
            Err(Stop::TailFailed(_)) => {
                return Err(s.gave_up("the piece list does not lead to the digest".into()));
            }
            Err(Stop::ClientGone) => return Err(GaveUp("client went away".into())),
        };
        // A one-piece blob is also its own tail: it is checked whole before any header goes
        // out (headers followed by no byte would fail containerd's pull without fallback).
        if count > 1 || s.whole_matches() {
            break p;
        }
        s.one_piece_mismatch().await.map_err(|stop| match stop {
            Stop::NoPeer(why) => s.gave_up(why),
            Stop::TailFailed(_) => s.gave_up("the blob does not match its digest".into()),
            Stop::ClientGone => GaveUp("client went away".into()),
        })?;
    };
    let (mut out, rx) = Outlet::new(shared, s.fetch.key.clone(), digest, ingest);
    out.repair_on_stop = !in_flight;
    crate::trace::spawn(async move {
        let _slot = slot;
        s.run(first_piece, out).await;
    });
    Ok(outlet::body(None, rx))
}

impl Streamer {
    /// Send piece 0 (already in hand) and every later piece, holding the last until the whole
    /// digest matched.
    async fn run(&mut self, first: Piece, mut out: Outlet) {
        let count = self.count;
        let mut next = Some(first);
        for i in 0..count {
            let piece = match next.take() {
                Some(p) => p,
                None => match self.piece(i).await {
                    Ok(p) => p,
                    Err(Stop::TailFailed(got)) => return self.tail_failed(got, &mut out).await,
                    Err(stop) => return self.stop(stop, &mut out).await,
                },
            };
            if i + 1 == count {
                // With a list the last piece's check was the digest match; without one, the
                // running hash is finished here (a one-piece blob was checked in `start`).
                if count > 1 && !self.list.is_checked() {
                    let got = self.whole.take().map(Hasher::finish);
                    if got.as_ref() != Some(&self.digest) {
                        return self.mismatch(got, &mut out).await;
                    }
                }
                tracing::info!(digest = %self.digest, bytes = self.size, peers = ?self.contributors, checked = !out.unchecked_sent, "blob streamed and verified");
                self.shared.event(
                    &self.fetch.key,
                    self.contributors.last().map(String::as_str),
                    FetchEventKind::Verified { bytes: self.size },
                );
            }
            let checked = self.list.is_checked();
            if let Err(gone) = out.send(piece, checked).await {
                return self.stop(gone.into(), &mut out).await;
            }
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

    /// The blob failed before its end (see [`Outlet::stop`]).
    async fn stop(&mut self, stop: Stop, out: &mut Outlet) {
        let why = match stop {
            Stop::NoPeer(why) => why,
            Stop::ClientGone => "the client went away".into(),
            Stop::TailFailed(_) => "the last piece failed".into(),
        };
        out.stop(why).await;
    }

    /// The last piece failed against the list and could not be resolved: unless another holder
    /// corroborates the list (then only the senders of the last piece were bad and the body
    /// ends after the checked bytes), the list lied.
    async fn tail_failed(&mut self, got: Option<Digest>, out: &mut Outlet) {
        if let List::Checked { list, holder } = &self.list {
            if outlet::corroborated(&self.shared, &self.digest, list, holder).await {
                let why = "no holder could send a last piece that matches".to_owned();
                return self.stop(Stop::NoPeer(why), out).await;
            }
        }
        self.mismatch(got, out).await
    }

    /// The whole digest did not match: the tail is never sent, the ingest is aborted.
    async fn mismatch(&mut self, got: Option<Digest>, out: &mut Outlet) {
        let peers = match &self.list {
            // Every piece matched the list, so the list (and its holder) lied.
            List::Checked { holder, .. } => vec![holder.clone()],
            List::None => self.contributors.clone(),
        };
        out.mismatch(got, peers).await;
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

    /// Piece `i`, checked against the list when there is one, else added to the whole hash.
    async fn piece(&mut self, i: u64) -> Result<Piece, Stop> {
        let start = i * self.piece_size;
        let len = (self.size - start).min(self.piece_size) as usize;
        let last = i + 1 == self.count;
        self.misses = 0;
        // The last piece's failure, once it happened (see the module doc: the tail hold).
        let mut tail_failed = None;
        loop {
            let bytes = match self.gather(start, len).await {
                Ok(b) => b,
                Err(Stop::NoPeer(_)) if tail_failed.is_some() => {
                    return Err(Stop::TailFailed(tail_failed.flatten()));
                }
                Err(e) => return Err(e),
            };
            let how = match self.list.expect(i, &self.digest) {
                Some(expect) => Check::Listed(expect),
                None => Check::Whole(self.whole.take()),
            };
            let checked = outlet::check(bytes, how).await.map_err(Stop::NoPeer)?;
            if checked.whole.is_some() {
                self.whole = checked.whole;
            }
            let got = match checked.verdict {
                Ok(()) => return Ok(checked.piece),
                Err(got) => got,
            };
            if last && tail_failed.is_some() {
                // A second peer's last piece fails too: the list is what is wrong.
                return Err(Stop::TailFailed(got));
            }
            if last {
                tail_failed = Some(got);
            }
            match self.bad_piece(i, start).await {
                Err(Stop::NoPeer(_)) if last => {
                    return Err(Stop::TailFailed(tail_failed.flatten()));
                }
                r => r?,
            }
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
        // The list was made when its holder's copy matched the whole digest, so a holder whose
        // bytes no longer match its own list has a copy that went bad since: keep the list.
        // Only two different peers failing the same piece cast doubt on the list itself.
        let drop_list = self.list.is_checked() && self.misses >= 2;
        outlet::bad_piece(
            &self.shared,
            &self.fetch.key,
            &self.digest,
            &[peer],
            (i, start),
            drop_list,
        );
        if drop_list {
            // Every piece before this one chained from the IV to the list's state before it,
            // so that state is the real one of the bytes sent: the whole hash resumes there.
            let resumed = self
                .list
                .expect(i, &self.digest)
                .map(|Expect { start, offset, .. }| Hasher::resume_sha256(start, offset));
            self.whole = match resumed {
                Some(Ok(h)) => Some(h),
                _ => Some(self.digest.algorithm().hasher()),
            };
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
                if cur.in_flight {
                    self.stopped_source = Some(peer.clone());
                }
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
            Err(GaveUp(why)) => {
                let Some(failed) = self.stopped_source.take() else {
                    return Err(Stop::NoPeer(why));
                };
                let f = &self.fetch;
                let size = (offset, self.size);
                let next = crate::herd::take_over(
                    &self.shared,
                    &f.registry,
                    &f.path,
                    &self.digest,
                    &failed,
                    size,
                )
                .await;
                match next {
                    Some(o) => {
                        self.contributors.push(o.provider.peer.clone());
                        self.current = Some(o);
                        Ok(())
                    }
                    None => Err(Stop::NoPeer(format!("{why}; the node fetching it stopped"))),
                }
            }
        }
    }
}
