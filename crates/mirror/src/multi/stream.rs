//! Multi-peer streaming: while [`super::run`] has ranges fetched from several holders into the
//! spool file, a follower reads the file back in order, one piece-list piece at a time, as soon
//! as the frontier passes it, checks it against the list and hands it to containerd. The
//! safety rules are those of single-peer streaming, through [`crate::stream::outlet`]:
//!
//! * headers go out only with the first checked piece; any failure before it is a 404;
//! * a piece that fails its list entry marks whoever wrote it bad for the blob, and that piece
//!   (with whatever else they wrote that is not yet checked) is fetched again from other
//!   holders while the other ranges keep coming; the same piece failing from two peers casts
//!   doubt on the list, and the body ends after the checked bytes (containerd resumes with
//!   `Range`, served from a verified copy);
//! * the last piece is sent only after the whole digest matched: its check against the list
//!   (hashed from the list's last state and finished) is that match, so every byte is hashed
//!   once. A last piece that fails is refetched like any bad piece; failing again, or with the
//!   download ended before it came again, either its senders were all bad (another holder's
//!   list corroborates the state before it: the body ends after the checked bytes) or the
//!   list's states do not lead to the digest (every other piece matched a lying list): the
//!   list's holder is marked bad and the ingest aborted.
//!
//! Every byte sent was checked against the list, so a cut (no provider left, the client gone)
//! needs no repair, unless the last piece had failed: then the prefix the list vouched for is
//! suspect, and the ingest is aborted as on a mismatch. The follower runs in its own task so that a slow client never stalls the
//! scheduler (the ranges keep landing in the file, bounded by the blob's size on disk).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;
use shoal_oci::Digest;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};

use super::Failure;
use super::run::{Note, Run};
use crate::client::Opened;
use crate::fetch::{Fetch, GaveUp};
use crate::pieces::PieceList;
use crate::source::{IngestControl, Provider};
use crate::spool::SpoolFile;
use crate::state::Shared;
use crate::stream::outlet::{self, Check, List, Outlet, Piece};

/// The piece list to stream a multi-peer blob with, asked of `first` (and others) when there
/// is one to ask; `None`: verify the blob whole instead.
pub(crate) async fn list(
    shared: &Arc<Shared>,
    first: Option<&Provider>,
    digest: &Digest,
    size: u64,
) -> Option<List> {
    let list = outlet::fetch_list(shared.clone(), first?, digest, size).await;
    match &list {
        List::Checked { list: l, .. } if l.pieces() > 1 => Some(list),
        _ => None,
    }
}

/// Stream blob `digest` (of `first.size` bytes, `first` opened at offset 0) from several
/// providers, checked against `list`, through `file` (the reorder buffer). Returns the body
/// once the first piece passed; `Err` means nothing was sent (answer 404).
pub(crate) async fn start(
    mut fetch: Fetch,
    digest: Digest,
    first: Opened,
    list: List,
    ingest: Arc<dyn IngestControl>,
    (slot, mut file): (OwnedSemaphorePermit, SpoolFile),
) -> Result<Body, GaveUp> {
    let List::Checked { list, holder } = list else {
        return Err(GaveUp("no piece list".into()));
    };
    let size = first.size;
    let shared = fetch.shared.clone();
    let (mut out, mut rx) = Outlet::new(shared, fetch.key.clone(), digest.clone(), ingest);
    crate::trace::spawn(async move {
        let _slot = slot;
        let fd = match file.positional(size).await {
            Ok(fd) => fd,
            Err(e) => return out.stop(format!("spool file: {e}")).await,
        };
        let failed = Arc::new(Mutex::new(None));
        let (notes, mut notes_rx) = mpsc::channel(1);
        let mut run = Run::new(&mut fetch, size, fd.clone());
        let follower = Follower {
            fd,
            list,
            holder,
            frontier: run.frontier(),
            notes,
            failed: failed.clone(),
            tail_failed: None,
            out,
        };
        let mut task = crate::trace::spawn(follower.run());
        let outcome = run.run(first, &mut task, Some(&mut notes_rx)).await;
        run.shutdown().await;
        if let Err(f) = outcome {
            let why = match f {
                Failure::Disk(e) => format!("spool file: {e}"),
                Failure::Peers(why) => why,
            };
            *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            // Closing the frontier and the notes ends the follower's waits.
            drop(run);
            drop(notes_rx);
            let _ = task.await;
        }
    });
    match rx.recv().await {
        Some(Ok(piece)) => Ok(outlet::body(Some(piece), rx)),
        Some(Err(e)) => Err(GaveUp(e.to_string())),
        None => Err(GaveUp("the stream ended before its first piece".into())),
    }
}

/// Reads checked pieces behind the frontier and sends them on.
struct Follower {
    fd: Arc<File>,
    list: PieceList,
    /// The peer that gave the list (to blame if the whole digest does not match).
    holder: String,
    frontier: watch::Receiver<u64>,
    notes: mpsc::Sender<Note>,
    /// Why the scheduler gave up, once it has.
    failed: Arc<Mutex<Option<String>>>,
    /// The last piece failed the list once (with the digest it gave): the list may be lying.
    tail_failed: Option<Option<Digest>>,
    out: Outlet,
}

/// Why the follower cannot go on.
enum Halt {
    /// The scheduler ended (see `failed`).
    Ended,
    Stop(String),
    /// The last piece failed from two peers: the list does not lead to the digest.
    TailFailed(Option<Digest>),
}

impl Follower {
    async fn run(mut self) {
        let halt = match self.pieces().await {
            Ok(()) => return,
            Err(h) => h,
        };
        let why = match halt {
            Halt::TailFailed(got) => return self.tail_mismatch(got).await,
            // The last piece had failed once: the prefix the list vouched for is suspect.
            _ if self.tail_failed.is_some() => {
                let got = self.tail_failed.take().flatten();
                return self.tail_mismatch(got).await;
            }
            Halt::Stop(why) => why,
            Halt::Ended => self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_else(|| "the download ended".into()),
        };
        self.out.stop(why).await;
    }

    /// The last piece failed and could not be resolved. Unless another holder corroborates
    /// the list (then the checked prefix is right and the body ends after it), the list
    /// vouched for every byte sent and its states do not lead to the digest: its holder lied;
    /// the tail is withheld and the ingest aborted.
    async fn tail_mismatch(&mut self, got: Option<Digest>) {
        let holder = self.holder.clone();
        let o = &self.out;
        if outlet::corroborated(&o.shared, &o.digest, &self.list, &holder).await {
            let why = "no holder could send a last piece that matches".to_owned();
            return self.out.stop(why).await;
        }
        self.out.mismatch(got, vec![holder]).await;
    }

    /// Every piece in order, each checked on its own; the last (whose check is the whole
    /// digest) only once it matched.
    async fn pieces(&mut self) -> Result<(), Halt> {
        let (size, piece_size) = (self.list.size, self.list.piece_size);
        let count = PieceList::count(size, piece_size);
        let digest = self.out.digest.clone();
        let mut misses = 0;
        let mut i = 0;
        while i < count {
            let start = i * piece_size;
            let end = (start + piece_size).min(size);
            let last = i + 1 == count;
            let piece = self.read(start, end).await?;
            let expect = self.list.expect(i, &digest);
            let checked = outlet::check(piece, Check::Listed(expect))
                .await
                .map_err(Halt::Stop)?;
            if let Err(got) = checked.verdict {
                misses += 1;
                if last && misses >= 2 {
                    return Err(Halt::TailFailed(got));
                }
                if last {
                    self.tail_failed = Some(got);
                }
                let peers = self
                    .note(|reply| Note::Refetch { start, end, reply })
                    .await?;
                let drop_list = misses >= 2;
                let o = &self.out;
                outlet::bad_piece(&o.shared, &o.key, &digest, &peers, (i, start), drop_list);
                if drop_list {
                    // Without a list, bytes written by several peers cannot be blamed on one.
                    return Err(Halt::Stop(format!(
                        "piece {i} failed the piece list from two peers"
                    )));
                }
                continue;
            }
            misses = 0;
            if last {
                self.tail_failed = None;
                self.note(|reply| Note::Verified { reply }).await?;
            }
            if self.out.send(checked.piece, true).await.is_err() {
                return Err(Halt::Stop("the client went away".into()));
            }
            i += 1;
        }
        Ok(())
    }

    /// Tell the scheduler and wait for its answer.
    async fn note<T>(&self, note: impl FnOnce(oneshot::Sender<T>) -> Note) -> Result<T, Halt> {
        let (tx, rx) = oneshot::channel();
        self.notes.send(note(tx)).await.map_err(|_| Halt::Ended)?;
        rx.await.map_err(|_| Halt::Ended)
    }

    /// Bytes `[start, end)` of the file, once the frontier has passed them.
    async fn read(&mut self, start: u64, end: u64) -> Result<Piece, Halt> {
        let ready = tokio::select! {
            r = self.frontier.wait_for(|v| *v >= end) => r.is_ok(),
            _ = self.out.closed() => return Err(Halt::Stop("the client went away".into())),
        };
        if !ready {
            return Err(Halt::Ended);
        }
        let fd = self.fd.clone();
        let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut buf = vec![0u8; (end - start) as usize];
            fd.read_exact_at(&mut buf, start)?;
            Ok(buf)
        })
        .await
        .map_err(|e| Halt::Stop(format!("read task failed: {e}")))?
        .map_err(|e| Halt::Stop(format!("spool file: {e}")))?;
        let mut piece = Piece::default();
        piece.push(Bytes::from(bytes));
        Ok(piece)
    }
}
