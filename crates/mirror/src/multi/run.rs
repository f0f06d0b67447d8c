//! The scheduler of a multi-peer download: which provider fetches which range, failovers, the
//! re-issue of slow ranges, and the frontier the follower reads behind (see the parent module).
//! It also takes the follower's notes: a piece to fetch again (it failed its list entry), or
//! the blob verified (report who served it before the tail goes out).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shoal_oci::Digest;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{Id, JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Failure;
use super::range_job::RangeJob;
use super::spans::{Intervals, add_span, remove_span, total};
use crate::client::Opened;
use crate::events::FetchEventKind;
use crate::fetch::Fetch;
use crate::source::Provider;
use crate::state::Shared;

/// A job's throughput is judged only after it has run this long.
pub(super) const MIN_SAMPLE: Duration = Duration::from_millis(500);
/// How often idle workers look for a slow range to take over.
const STEAL_CHECK: Duration = Duration::from_millis(200);
/// How often the frontier is moved on with the progress of the range being written at it.
const PROGRESS_TICK: Duration = Duration::from_millis(20);

/// How one range job ended.
pub(super) enum JobEnd {
    /// Every byte of its range is on disk.
    Done,
    /// Stopped on request; what it counted in `progress` is on disk.
    Cancelled,
    /// The peer failed; what it counted in `progress` is on disk.
    Broke(String),
    Disk(io::Error),
}

/// What the follower tells the scheduler.
pub(super) enum Note {
    /// `[start, end)` failed its piece-list entry: fetch it again from someone else. The reply
    /// names the peers that wrote it (now marked bad for the blob).
    Refetch {
        start: u64,
        end: u64,
        reply: oneshot::Sender<Vec<String>>,
    },
    /// The whole blob matched its digest: report who served it, then reply.
    Verified { reply: oneshot::Sender<()> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JobState {
    Running,
    Done,
    Stopped,
}

/// One request for part of a range.
pub(super) struct Job {
    pub(super) id: Id,
    pub(super) provider: Provider,
    /// Absolute offset the job writes from.
    pub(super) start: u64,
    /// Bytes written from `start` so far.
    pub(super) progress: Arc<AtomicU64>,
    pub(super) started: Instant,
    pub(super) cancel: CancellationToken,
    pub(super) state: JobState,
}

impl Job {
    pub(super) fn written(&self) -> u64 {
        self.progress.load(Ordering::Acquire)
    }

    /// Observed bytes per second, once there is enough of a sample.
    pub(super) fn rate(&self, now: Instant) -> Option<f64> {
        let t = now.duration_since(self.started);
        (t >= MIN_SAMPLE).then(|| self.written() as f64 / t.as_secs_f64())
    }
}

/// A range `[start, end)` handed out: its original job and at most one re-issue.
pub(super) struct Slot {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) jobs: Vec<Job>,
    /// Bytes from here on are not to be kept (a bad piece starts here): the jobs were
    /// cancelled and the rest goes back to the queue when they have exited.
    pub(super) cap: Option<u64>,
}

pub(super) struct Run<'a> {
    pub(super) fetch: &'a mut Fetch,
    pub(super) shared: Arc<Shared>,
    pub(super) size: u64,
    pub(super) fd: Arc<File>,
    pub(super) queue: VecDeque<(u64, u64)>,
    pub(super) slots: HashMap<u64, Slot>,
    pub(super) slot_of: HashMap<Id, u64>,
    pub(super) jobs: JoinSet<JobEnd>,
    pub(super) idle: Vec<Provider>,
    /// Providers running a job or idle (not dropped).
    pub(super) in_use: usize,
    /// Every provider used, for a second pass after a mismatch.
    pub(super) known: Vec<Provider>,
    /// Bytes per second of each peer's last finished job.
    pub(super) rates: HashMap<String, f64>,
    pub(super) done: Intervals,
    pub(super) spans: HashMap<String, Vec<(u64, u64)>>,
    pub(super) failures: usize,
    pub(super) frontier: watch::Sender<u64>,
    /// Bytes before this were checked and used by the follower.
    pub(super) checked: u64,
    /// Peers whose bytes failed a check: nothing more they write past `checked` is kept.
    pub(super) blamed: HashSet<String>,
}

impl<'a> Run<'a> {
    pub(super) fn new(fetch: &'a mut Fetch, size: u64, fd: Arc<File>) -> Self {
        let shared = fetch.shared.clone();
        let piece = shared.cfg.piece_size.max(1);
        let queue = (0..size.div_ceil(piece))
            .map(|i| (i * piece, ((i + 1) * piece).min(size)))
            .collect();
        Run {
            fetch,
            shared,
            size,
            fd,
            queue,
            slots: HashMap::new(),
            slot_of: HashMap::new(),
            jobs: JoinSet::new(),
            idle: Vec::new(),
            in_use: 0,
            known: Vec::new(),
            rates: HashMap::new(),
            done: Intervals::default(),
            spans: HashMap::new(),
            failures: 0,
            frontier: watch::Sender::new(0),
            checked: 0,
            blamed: HashSet::new(),
        }
    }

    /// How far the file can be read in order: it only grows, except when a piece is to be
    /// fetched again. The channel closes when the run is dropped.
    pub(super) fn frontier(&self) -> watch::Receiver<u64> {
        self.frontier.subscribe()
    }

    /// Fetch ranges until `follower` (which reads behind the frontier) ends, and return what it
    /// returned; fetched ranges may be fetched again on its `notes`.
    pub(super) async fn run<T>(
        &mut self,
        first: Opened,
        follower: &mut JoinHandle<T>,
        mut notes: Option<&mut mpsc::Receiver<Note>>,
    ) -> Result<T, Failure> {
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let digest = self.fetch.path.digest().cloned();
        let budget = cfg.max_attempts * cfg.max_peers_per_blob;
        self.in_use = 1;
        self.known.push(first.provider.clone());
        if let Some((s, e)) = self.queue.pop_front() {
            self.spawn_slot(first.provider.clone(), s, e, Some(first));
        }
        loop {
            self.dispatch();
            if self.failures > budget {
                return Err(Failure::Peers(format!(
                    "{} peer failures for one blob",
                    self.failures
                )));
            }
            let complete = self.done.frontier() >= self.size;
            // Work is left and no provider is available: wait a little for another.
            let starved = self.jobs.is_empty() && !complete;
            let want_more = !complete
                && (starved
                    || self.in_use < cfg.max_peers_per_blob && !self.fetch.pool.exhausted());
            let wait = if starved {
                cfg.first_byte_timeout
            } else {
                Duration::from_secs(3600)
            };
            let may_steal = !self.idle.is_empty() && self.queue.is_empty() && !complete;
            let ticking =
                self.readable() < self.size && self.slots.contains_key(&self.done.frontier());
            tokio::select! {
                Some(joined) = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => self.on_end(joined)?,
                p = self.fetch.pool.next(&shared, digest.as_ref(), wait), if want_more => match p {
                    Some(p) => {
                        tracing::debug!(peer = %p.peer, key = %self.fetch.key, "another provider joins the download");
                        self.add_provider(p);
                    }
                    None if starved => {
                        // Providers whose request failed (a connection error, not a bad byte)
                        // are asked again while the failure budget lasts.
                        let again: Vec<Provider> = self
                            .known
                            .iter()
                            .filter(|p| !digest.as_ref().is_some_and(|d| shared.bad.is_bad(&p.peer, d)))
                            .cloned()
                            .collect();
                        if self.fetch.pool.requeue(again) == 0 {
                            return Err(Failure::Peers(format!(
                                "no provider left with {} of {} bytes fetched",
                                self.done.frontier(),
                                self.size
                            )));
                        }
                    }
                    None => {}
                },
                _ = tokio::time::sleep(STEAL_CHECK), if may_steal => {}
                _ = tokio::time::sleep(PROGRESS_TICK), if ticking => {}
                note = recv(&mut notes) => self.on_note(note),
                end = &mut *follower => {
                    return end.map_err(|e| Failure::Peers(format!("the follower task failed: {e}")));
                }
            }
            self.publish();
        }
    }

    /// The frontier: the end of the finished prefix, extended into the range being written at
    /// it while its single job is the only writer there.
    fn readable(&self) -> u64 {
        let f = self.done.frontier();
        match self.slots.get(&f) {
            Some(s) if s.jobs.len() == 1 && s.cap.is_none() && s.jobs[0].start == f => {
                (f + s.jobs[0].written()).min(s.end)
            }
            _ => f,
        }
    }

    /// Move the frontier on. It never moves back here: bytes a single job wrote stay as they
    /// are even once a re-issue joins the range (the re-issue starts after them).
    fn publish(&self) {
        let r = self.readable();
        self.frontier.send_if_modified(|v| {
            let changed = r > *v;
            *v = (*v).max(r);
            changed
        });
    }

    fn on_note(&mut self, note: Note) {
        match note {
            Note::Refetch { start, end, reply } => {
                let _ = reply.send(self.refetch(start, end));
            }
            Note::Verified { reply } => {
                if let Some(d) = self.fetch.path.digest().cloned() {
                    self.report_verified(&d, "blob streamed and verified (multi-peer)");
                }
                let _ = reply.send(());
            }
        }
    }

    /// `[start, end)` (the first piece not yet used) failed its check: mark whoever wrote it
    /// bad for the blob, stop their jobs, and queue again the piece and everything they wrote
    /// past it (unchecked, so no longer trusted). Returns the writers.
    fn refetch(&mut self, start: u64, end: u64) -> Vec<String> {
        self.checked = self.checked.max(start);
        let f = self.done.frontier();
        let mut writers: Vec<String> = self
            .spans
            .iter()
            .filter(|(_, s)| s.iter().any(|&(a, b)| a < end && start < b))
            .map(|(p, _)| p.clone())
            .collect();
        if let Some(slot) = self.slots.get_mut(&f).filter(|_| end > f) {
            // The part past the finished prefix is in the range being written at the frontier.
            let cut = start.max(f);
            slot.cap = Some(slot.cap.map_or(cut, |c| c.min(cut)));
            for j in &slot.jobs {
                j.cancel.cancel();
                if j.start < end && !writers.contains(&j.provider.peer) {
                    writers.push(j.provider.peer.clone());
                }
            }
        }
        if start < f {
            let e = end.min(f);
            self.done.remove(start, e);
            for s in self.spans.values_mut() {
                remove_span(s, start, e);
            }
            self.queue.push_front((start, e));
        }
        if let Some(d) = self.fetch.path.digest() {
            for w in &writers {
                self.shared.bad.mark(w, d);
            }
        }
        for w in &writers {
            self.blamed.insert(w.clone());
            self.drop_peer(w);
            self.forget_unchecked(w);
        }
        self.queue.make_contiguous().sort_unstable();
        self.failures += 1;
        // The only place the frontier moves back: to the start of what is fetched again.
        self.frontier.send_replace(self.readable());
        writers
    }

    /// What `peer` wrote past the checked prefix is no longer trusted: fetch it again.
    fn forget_unchecked(&mut self, peer: &str) {
        let from = self.checked;
        let Some(spans) = self.spans.get_mut(peer) else {
            return;
        };
        let gone: Vec<(u64, u64)> = spans
            .iter()
            .filter(|&&(_, b)| b > from)
            .map(|&(a, b)| (a.max(from), b))
            .collect();
        for &(a, b) in &gone {
            remove_span(spans, a, b);
            self.done.remove(a, b);
            self.queue.push_back((a, b));
        }
    }

    /// Stop using `peer` for this blob: cancel its jobs (their ranges are queued again when
    /// they exit) and forget it as an idle worker.
    fn drop_peer(&mut self, peer: &str) {
        for slot in self.slots.values() {
            for j in slot.jobs.iter().filter(|j| j.provider.peer == peer) {
                j.cancel.cancel();
            }
        }
        let before = self.idle.len();
        self.idle.retain(|p| p.peer != peer);
        self.in_use -= before - self.idle.len();
    }

    /// Log and explain who served which bytes of the verified blob, then that it verified.
    pub(super) fn report_verified(&self, digest: &Digest, what: &str) {
        let mut by_peer: Vec<(&String, &Vec<(u64, u64)>)> =
            self.spans.iter().filter(|(_, s)| !s.is_empty()).collect();
        by_peer.sort_by_key(|(_, s)| std::cmp::Reverse(total(s)));
        tracing::info!(digest = %digest, bytes = self.size, peers = ?by_peer.iter().map(|(p, s)| (p, total(s))).collect::<Vec<_>>(), "{what}");
        for (peer, s) in &by_peer {
            self.shared.event(
                &self.fetch.key,
                Some(peer),
                FetchEventKind::Served {
                    bytes: total(s),
                    spans: s.to_vec(),
                },
            );
        }
        self.shared.event(
            &self.fetch.key,
            by_peer.first().map(|(p, _)| p.as_str()),
            FetchEventKind::Verified { bytes: self.size },
        );
    }

    /// Every provider used, and the peers that wrote bytes (for a second, sequential pass).
    pub(super) fn into_peers(self) -> (Vec<Provider>, Vec<String>) {
        (self.known, self.spans.into_keys().collect())
    }

    /// Cancel every job and wait for all of them, so that no write lands after this returns.
    pub(super) async fn shutdown(&mut self) {
        for slot in self.slots.values() {
            for j in &slot.jobs {
                j.cancel.cancel();
            }
        }
        while self.jobs.join_next().await.is_some() {}
    }

    fn add_provider(&mut self, p: Provider) {
        self.in_use += 1;
        self.known.push(p.clone());
        self.idle.push(p);
    }

    /// Give idle providers work: the next queued range, else a slow worker's range.
    fn dispatch(&mut self) {
        // Fastest known first: they should get the next pieces.
        self.idle.sort_by(|a, b| {
            let ra = self.rates.get(&a.peer).copied().unwrap_or(0.0);
            let rb = self.rates.get(&b.peer).copied().unwrap_or(0.0);
            ra.total_cmp(&rb)
        });
        while let Some(p) = self.idle.pop() {
            if let Some((s, e)) = self.queue.pop_front() {
                self.spawn_slot(p, s, e, None);
                continue;
            }
            match self.slow_slot(&p) {
                Some(id) => self.reissue(id, p),
                None => {
                    self.idle.push(p);
                    break;
                }
            }
        }
    }

    fn spawn_slot(&mut self, p: Provider, start: u64, end: u64, pre: Option<Opened>) {
        self.slots.insert(
            start,
            Slot {
                start,
                end,
                jobs: Vec::new(),
                cap: None,
            },
        );
        self.spawn_job(start, p, start, end, pre);
    }

    pub(super) fn spawn_job(
        &mut self,
        slot: u64,
        p: Provider,
        start: u64,
        end: u64,
        pre: Option<Opened>,
    ) {
        let progress = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        let job = RangeJob {
            shared: self.shared.clone(),
            registry: self.fetch.registry.clone(),
            path: self.fetch.path.clone(),
            provider: p.clone(),
            start,
            end,
            size: self.size,
            fd: self.fd.clone(),
            progress: progress.clone(),
            cancel: cancel.clone(),
            activity: self.fetch.activity.clone(),
        };
        let handle = self.jobs.spawn(job.run(pre));
        let id = handle.id();
        self.slot_of.insert(id, slot);
        if let Some(s) = self.slots.get_mut(&slot) {
            s.jobs.push(Job {
                id,
                provider: p,
                start,
                progress,
                started: Instant::now(),
                cancel,
                state: JobState::Running,
            });
        }
    }

    fn on_end(&mut self, joined: Result<(Id, JobEnd), JoinError>) -> Result<(), Failure> {
        let (id, end) = match joined {
            Ok(x) => x,
            Err(e) => (e.id(), JobEnd::Broke(format!("range task failed: {e}"))),
        };
        let Some(slot_id) = self.slot_of.remove(&id) else {
            return Ok(());
        };
        let Some(slot) = self.slots.get_mut(&slot_id) else {
            return Ok(());
        };
        let Some(idx) = slot.jobs.iter().position(|j| j.id == id) else {
            return Ok(());
        };
        let now = Instant::now();
        let job = &mut slot.jobs[idx];
        let peer = job.provider.clone();
        let rate = job.written() as f64 / now.duration_since(job.started).as_secs_f64().max(1e-3);
        match end {
            JobEnd::Done | JobEnd::Cancelled => {
                if matches!(end, JobEnd::Done) {
                    job.state = JobState::Done;
                    for other in slot.jobs.iter().filter(|j| j.id != id) {
                        other.cancel.cancel();
                    }
                } else {
                    job.state = JobState::Stopped;
                }
                self.rates.insert(peer.peer.clone(), rate);
                // A peer marked bad meanwhile (one of its pieces failed) gets no more work.
                let bad = self
                    .fetch
                    .path
                    .digest()
                    .is_some_and(|d| self.shared.bad.is_bad(&peer.peer, d));
                if bad {
                    self.in_use -= 1;
                } else {
                    self.idle.push(peer);
                }
            }
            JobEnd::Broke(reason) => {
                job.state = JobState::Stopped;
                let offset = job.start + job.written();
                self.failures += 1;
                self.in_use -= 1;
                tracing::warn!(key = %self.fetch.key, peer = %peer.peer, offset, %reason, "peer range failed; continuing its rest from another peer");
                self.shared.event(
                    &self.fetch.key,
                    Some(&peer.peer),
                    FetchEventKind::PeerFailed { offset, reason },
                );
            }
            JobEnd::Disk(e) => return Err(Failure::Disk(e)),
        }
        if slot.jobs.iter().all(|j| j.state != JobState::Running) {
            if let Some(slot) = self.slots.remove(&slot_id) {
                self.finish_slot(slot);
            }
        }
        Ok(())
    }

    /// Every job of `slot` has exited: record what is on disk (short of its cap), and who
    /// wrote it, and queue what is missing.
    fn finish_slot(&mut self, slot: Slot) {
        let mut cap = slot.cap.unwrap_or(slot.end);
        let mut spans: Vec<(&str, u64, u64)> = Vec::new();
        let covered = match slot.jobs.iter().position(|j| j.state == JobState::Done) {
            Some(w) => {
                let winner = &slot.jobs[w];
                if w > 0 {
                    // The original job wrote up to where the re-issue started.
                    spans.push((&slot.jobs[0].provider.peer, slot.start, winner.start));
                }
                spans.push((&winner.provider.peer, winner.start, slot.end));
                slot.end
            }
            None => {
                let o = &slot.jobs[0];
                let mut end = o.start + o.written();
                spans.push((&o.provider.peer, slot.start, end));
                if let Some(d) = slot.jobs.get(1) {
                    let d_end = d.start + d.written();
                    if d.start <= end && d_end > end {
                        spans.push((&d.provider.peer, end, d_end));
                        end = d_end;
                    }
                }
                end
            }
        };
        for (peer, s, _) in &spans {
            if self.blamed.contains(*peer) {
                cap = cap.min((*s).max(self.checked));
            }
        }
        let covered = covered.min(cap);
        for (peer, s, e) in spans {
            let e = e.min(cap);
            if e > s {
                add_span(self.spans.entry(peer.to_owned()).or_default(), s, e);
            }
        }
        self.done.insert(slot.start, covered);
        if covered < slot.end {
            self.queue.push_front((covered, slot.end));
        }
        self.publish();
    }
}

/// The next note, or never when there is no one to send notes (or no longer).
async fn recv(notes: &mut Option<&mut mpsc::Receiver<Note>>) -> Note {
    match notes {
        Some(rx) => match rx.recv().await {
            Some(n) => n,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
