//! What every streamed peer blob shares, whether one peer at a time ([`super`]) or several at
//! once ([`crate::multi::stream`]): the piece list and the check of a piece against it, the
//! client channel with its counters, and the three ways a stream ends badly (a stop after
//! checked bytes, the tail withheld on a final mismatch, the ingest repair). Keeping them in
//! one place keeps the safety rules one rule, whoever fetched the bytes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{BoxStream, FuturesUnordered};
use shoal_oci::{Digest, Hasher};
use tokio::sync::mpsc;

use crate::events::FetchEventKind;
use crate::metrics::Source;
use crate::pieces::{Expect, PieceList};
use crate::source::{IngestControl, Provider};
use crate::state::Shared;

/// Pieces queued between the fetching task and the client body.
const QUEUE: usize = 2;
/// Longest wait for a piece list before streaming without one.
const LIST_WAIT: Duration = Duration::from_millis(500);
/// Holders asked for a list.
const LIST_TRIES: usize = 3;
/// How long the first holder has to answer with its list before others are asked too.
const LIST_HEDGE: Duration = Duration::from_millis(100);

/// One piece as the chunks it arrived in (slices of the HTTP client's read buffers, or one
/// read from the spool file): gathering, hashing and sending it copies nothing more.
#[derive(Default)]
pub(crate) struct Piece {
    pub(crate) chunks: Vec<Bytes>,
    pub(crate) len: u64,
}

impl Piece {
    pub(crate) fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len() as u64;
        self.chunks.push(chunk);
    }
}

/// Where the piece list stands.
pub(crate) enum List {
    Checked { list: PieceList, holder: String },
    None,
}

impl List {
    /// What piece `i` of blob `digest` must hash to, when a list vouches for it.
    pub(crate) fn expect(&self, i: u64, digest: &Digest) -> Option<Expect> {
        match self {
            List::Checked { list, .. } => Some(list.expect(i, digest)),
            List::None => None,
        }
    }

    pub(crate) fn is_checked(&self) -> bool {
        matches!(self, List::Checked { .. })
    }
}

/// How a piece is checked: on its own against the list (from the state before it to the state
/// after it, or to the digest for the last piece), or, without a list, only fed to the running
/// whole-blob hash (whose finish the caller compares at the end). Either way once per byte.
pub(crate) enum Check {
    Listed(Expect),
    Whole(Option<Hasher>),
}

/// A checked piece: `verdict` is `Err` when it failed its list entry (with the digest obtained
/// if it was the last piece); `whole` is the running hash of [`Check::Whole`].
pub(crate) struct Checked {
    pub(crate) piece: Piece,
    pub(crate) verdict: Result<(), Option<Digest>>,
    pub(crate) whole: Option<Hasher>,
}

/// Check `piece` as `how` says, off the async runtime.
pub(crate) async fn check(piece: Piece, how: Check) -> Result<Checked, String> {
    tokio::task::spawn_blocking(move || match how {
        Check::Listed(expect) => Checked {
            verdict: expect.check(&piece.chunks),
            piece,
            whole: None,
        },
        Check::Whole(mut whole) => {
            if let Some(w) = whole.as_mut() {
                for c in &piece.chunks {
                    w.update(c);
                }
            }
            Checked {
                piece,
                verdict: Ok(()),
                whole,
            }
        }
    })
    .await
    .map_err(|e| format!("hashing task failed: {e}"))
}

/// The client side of one streamed blob.
pub(crate) struct Outlet {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: String,
    pub(crate) digest: Digest,
    tx: mpsc::Sender<std::io::Result<Piece>>,
    ingest: Arc<dyn IngestControl>,
    /// Bytes handed to the client.
    pub(crate) sent: u64,
    /// Some byte sent was not checked against a list.
    pub(crate) unchecked_sent: bool,
    /// Abort the ingest when the stream stops after unchecked bytes. Off for bytes from a node
    /// still downloading the blob (see `herd`): when that node stops, the body ends and
    /// containerd resumes from the registry with `Range`, and checks the stitched blob's digest
    /// at commit, instead of failing the pull.
    pub(crate) repair_on_stop: bool,
}

/// The client went away.
pub(crate) struct ClientGone;

impl Outlet {
    /// An outlet and the receiving end its body is made from (see [`body`]).
    pub(crate) fn new(
        shared: Arc<Shared>,
        key: String,
        digest: Digest,
        ingest: Arc<dyn IngestControl>,
    ) -> (Outlet, mpsc::Receiver<std::io::Result<Piece>>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let outlet = Outlet {
            shared,
            key,
            digest,
            tx,
            ingest,
            sent: 0,
            unchecked_sent: false,
            repair_on_stop: true,
        };
        (outlet, rx)
    }

    /// Hand a piece to the client; `checked` says whether a list vouched for it.
    pub(crate) async fn send(&mut self, piece: Piece, checked: bool) -> Result<(), ClientGone> {
        let len = piece.len;
        if !checked {
            self.unchecked_sent = true;
        }
        self.tx.send(Ok(piece)).await.map_err(|_| ClientGone)?;
        self.shared.metrics.add_bytes(Source::Peer, len);
        self.sent += len;
        Ok(())
    }

    /// Resolves when the client has gone away.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }

    /// The blob failed before its end: repair the ingest when unchecked bytes went out, then
    /// end the body with an error (a normal close; containerd resumes elsewhere). Before the
    /// first byte this is the 404 of the request.
    pub(crate) async fn stop(&mut self, why: String) {
        tracing::warn!(digest = %self.digest, sent = self.sent, reason = %why, unchecked = self.unchecked_sent, "peer stream stopped before the end");
        self.shared.event(
            &self.key,
            None,
            FetchEventKind::GaveUp {
                reason: why.clone(),
            },
        );
        if self.unchecked_sent && self.repair_on_stop {
            self.abort_ingest().await;
        }
        let _ = self
            .tx
            .send(Err(std::io::Error::other(format!(
                "peer stream stopped: {why}"
            ))))
            .await;
    }

    /// The whole digest did not match (`got`): `peers` are marked, the tail is never sent and
    /// the ingest is aborted.
    pub(crate) async fn mismatch(&mut self, got: Option<Digest>, peers: Vec<String>) {
        for p in &peers {
            self.shared.bad.mark(p, &self.digest);
        }
        tracing::error!(digest = %self.digest, got = ?got.map(|d| d.to_string()), ?peers, sent = self.sent, "streamed blob does not match its digest; the last piece is withheld and the ingest aborted");
        let last = peers.last().cloned();
        self.shared.event(
            &self.key,
            last.as_deref(),
            FetchEventKind::DigestMismatch { peers },
        );
        self.abort_ingest().await;
        let _ = self
            .tx
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
}

/// A piece at `offset` (piece `i`) failed its list entry from `peers`: mark them bad for the
/// blob, count and explain it.
pub(crate) fn bad_piece(
    shared: &Shared,
    key: &str,
    digest: &Digest,
    peers: &[String],
    (i, offset): (u64, u64),
    drop_list: bool,
) {
    for p in peers {
        shared.bad.mark(p, digest);
    }
    shared.metrics.bad_piece();
    tracing::warn!(digest = %digest, ?peers, piece = i, offset, drop_list, "piece does not match the piece list; fetching it from another peer");
    shared.event(
        key,
        peers.last().map(String::as_str),
        FetchEventKind::DigestMismatch {
            peers: peers.to_vec(),
        },
    );
}

/// The response body: `first` (if any), then every piece from `rx`, each as the chunks it
/// arrived in, until the channel ends or carries an error.
pub(crate) fn body(first: Option<Piece>, rx: mpsc::Receiver<std::io::Result<Piece>>) -> Body {
    let rest = futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    });
    let items = futures::stream::iter(first.map(Ok)).chain(rest);
    Body::from_stream(items.flat_map(|item| {
        futures::stream::iter(match item {
            Ok(piece) => piece.chunks.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
    }))
}

/// The piece list of `digest`, from `first` or, if it has none or has not answered within
/// [`LIST_HEDGE`], from up to [`LIST_TRIES`] - 1 other providers asked at the same time (a
/// slow holder must not cost the list); the first list wins, within [`LIST_WAIT`] in all.
pub(crate) async fn fetch_list(
    shared: Arc<Shared>,
    first: &Provider,
    digest: &Digest,
    size: u64,
) -> List {
    if digest.algorithm() != shoal_oci::Algorithm::Sha256 {
        return List::None;
    }
    let key = shoal_oci::Key::Digest(digest.clone());
    let others = || {
        shared
            .providers
            .find(&key)
            .filter(|p| {
                let ok = p.peer != first.peer && !shared.bad.is_bad(&p.peer, digest);
                async move { ok }
            })
            .take(LIST_TRIES - 1)
            .boxed()
    };
    let ask = |p: Provider| {
        let shared = shared.clone();
        async move { (shared.client.pieces(&p, digest, size).await, p.peer) }
    };
    let find = async {
        let mut asks = FuturesUnordered::new();
        asks.push(ask(first.clone()));
        let mut more: Option<BoxStream<Provider>> = None;
        let hedge = tokio::time::sleep(LIST_HEDGE);
        tokio::pin!(hedge);
        loop {
            tokio::select! {
                Some((got, peer)) = asks.next() => match got {
                    Ok(list) => return Some((list, peer)),
                    Err(e) => {
                        tracing::debug!(digest = %digest, %peer, error = %e, "no piece list from this holder");
                        more.get_or_insert_with(others);
                    }
                },
                () = &mut hedge, if more.is_none() => more = Some(others()),
                Some(p) = async { more.as_mut()?.next().await }, if more.is_some() => {
                    asks.push(ask(p));
                }
                else => return None,
            }
        }
    };
    match tokio::time::timeout(LIST_WAIT, find).await {
        Ok(Some((list, holder))) => List::Checked { list, holder },
        _ => {
            tracing::debug!(digest = %digest, "no piece list within the wait");
            List::None
        }
    }
}

/// After the last piece of blob `digest` failed against `list` (from `holder`) and could not
/// be resolved (it failed again, or no one else could send it): does another holder publish the
/// same state before the last piece? Bytes that passed every earlier piece really leave SHA-256
/// in that state; if two holders agree on it, it is the blob's real state, so the checked
/// prefix is right and only the last piece's senders were bad (a cut after the checked bytes
/// is then safe, as for any other piece). Peers marked bad for the blob are asked too: a copy
/// that went bad after its list was made still has an honest list. Bounded by [`LIST_WAIT`].
pub(crate) async fn corroborated(
    shared: &Arc<Shared>,
    digest: &Digest,
    list: &PieceList,
    holder: &str,
) -> bool {
    let Some(want) = list.states.last().copied() else {
        return false;
    };
    let key = shoal_oci::Key::Digest(digest.clone());
    let mut others = shared
        .providers
        .find(&key)
        .filter(|p| futures::future::ready(p.peer != holder))
        .take(LIST_TRIES);
    let find = async {
        let mut asks = FuturesUnordered::new();
        loop {
            tokio::select! {
                Some(p) = others.next() => {
                    let shared = shared.clone();
                    asks.push(async move { (shared.client.pieces(&p, digest, list.size).await, p.peer) });
                }
                Some((got, peer)) = asks.next() => match got {
                    Ok(l) if l.piece_size == list.piece_size && l.states.last() == Some(&want) => {
                        return Some(peer);
                    }
                    Ok(_) => tracing::warn!(digest = %digest, %peer, "another holder's piece list disagrees"),
                    Err(e) => tracing::debug!(digest = %digest, %peer, error = %e, "no piece list to corroborate with"),
                },
                else => return None,
            }
        }
    };
    match tokio::time::timeout(LIST_WAIT, find).await {
        Ok(Some(peer)) => {
            tracing::info!(digest = %digest, %holder, by = %peer, "the piece list is corroborated: the checked prefix is right");
            true
        }
        _ => false,
    }
}
