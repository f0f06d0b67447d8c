//! Large blobs from several peers at once, still verified whole before containerd sees a byte.
//!
//! Above `multi_peer_threshold` a blob is cut into `piece_size` ranges that providers fetch in
//! parallel with `Range: bytes=a-b`, each written at its offset in the spool file (positional
//! writes, no reorder buffer). Scheduling is work stealing without a central component:
//!
//! * every provider in use is a worker; an idle worker takes the next unfetched range, so a
//!   fast peer simply serves more pieces than a slow one. Providers are added as the DHT
//!   streams them in, up to `max_peers_per_blob`.
//! * a worker that breaks, ends early or stalls for `idle_timeout` is dropped for this blob;
//!   what it wrote is kept and the rest of its range goes back to the front of the queue.
//! * when the queue is empty and a worker is idle, a range whose worker runs at less than a
//!   third of the median observed throughput is re-issued, from that worker's current
//!   position, to the idle one; the first to finish wins and the other is cancelled. Slow is
//!   judged from measured bytes per second, not from a timeout.
//!
//! The whole-blob hash must consume bytes in order. A hasher task follows the *frontier*, the
//! end of the contiguous prefix of finished ranges, and reads that prefix back from the file
//! (the page cache, in practice) in 1 MiB reads. A range counts as finished only once every job
//! that wrote to it has exited, so no late write can change bytes already hashed. Memory per
//! blob is bounded by one 1 MiB write batch per worker plus the hasher's buffer, whatever the
//! blob size.
//!
//! How this departs from the issue's "stream to containerd in order with a reorder buffer": no
//! byte goes to containerd before the whole blob verified (the rule of this crate, see
//! [`crate::download`] for the containerd 1.6 stale-ingest failure that forces it), so there is
//! nothing to stream early; the spool file is the reorder buffer, on disk.
//!
//! A digest mismatch cannot be blamed on one peer when several wrote the blob, and marking all
//! of them bad would let one liar exclude every honest holder. So no one is marked; the blob is
//! fetched again from one provider at a time through the sequential path ([`crate::download`]),
//! where a mismatch does identify its peer and marks it bad.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use shoal_oci::{Algorithm, Digest};
use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::Opened;
use crate::download::{self, disk_failed};
use crate::events::FetchEventKind;
use crate::fetch::{Fetch, GaveUp};
use crate::source::Provider;
use crate::spool::SpoolFile;
use crate::state::Shared;

mod frontier;
mod range_job;
mod spans;

use frontier::hash_frontier;
use range_job::RangeJob;
use spans::{Intervals, add_span, total};

/// Bytes a worker gathers before one positional write.
const WRITE_BATCH: usize = 1024 * 1024;
/// Bytes the hasher reads back per read.
const HASH_READ: usize = 1024 * 1024;
/// Most bytes hashed by one blocking task before the frontier is looked at again.
const HASH_STEP: u64 = 8 * 1024 * 1024;
/// A job's throughput is judged only after it has run this long.
const MIN_SAMPLE: Duration = Duration::from_millis(500);
/// How often idle workers look for a slow range to take over.
const STEAL_CHECK: Duration = Duration::from_millis(200);
/// A range is re-issued when its worker is this many times slower than the median.
const SLOW_FACTOR: f64 = 3.0;
/// What a re-issue costs before its first byte (a request round trip, a connection), in the
/// comparison of the slow worker's time to finish with the idle one's.
const REISSUE_COST: f64 = 0.1;

/// Fill `file` with the blob `digest` (of `first.size` bytes) from several providers,
/// starting with the already opened `first` (at offset 0), until it verifies. Same contract as
/// [`download::download`]: on `Ok` the file holds exactly the verified blob.
pub(crate) async fn download(
    fetch: &mut Fetch,
    digest: &Digest,
    first: Opened,
    file: &mut SpoolFile,
) -> Result<(), GaveUp> {
    debug_assert_eq!(first.offset, 0);
    let shared = fetch.shared.clone();
    let size = first.size;
    let fd = file
        .positional(size)
        .await
        .map_err(|e| disk_failed(fetch, e))?;
    let mut run = Run::new(fetch, size, fd, digest.algorithm());
    let outcome = run.run(first).await;
    run.shutdown().await;
    let Run { known, spans, .. } = run;
    match outcome {
        Ok(got) if &got == digest => {
            let mut by_peer: Vec<(String, Vec<(u64, u64)>)> = spans.into_iter().collect();
            by_peer.sort_by_key(|(_, s)| std::cmp::Reverse(total(s)));
            tracing::info!(digest = %digest, bytes = size, peers = ?by_peer.iter().map(|(p, s)| (p, total(s))).collect::<Vec<_>>(), "blob verified (multi-peer)");
            for (peer, s) in &by_peer {
                shared.event(
                    &fetch.key,
                    Some(peer),
                    FetchEventKind::Served {
                        bytes: total(s),
                        spans: s.clone(),
                    },
                );
            }
            shared.event(
                &fetch.key,
                by_peer.first().map(|(p, _)| p.as_str()),
                FetchEventKind::Verified { bytes: size },
            );
            Ok(())
        }
        Ok(got) => {
            let peers: Vec<String> = spans.into_keys().collect();
            tracing::error!(digest = %digest, got = %got, ?peers, "digest mismatch from several peers; nothing was sent, fetching again from one peer at a time");
            shared.event(&fetch.key, None, FetchEventKind::DigestMismatch { peers });
            file.truncate().await.map_err(|e| disk_failed(fetch, e))?;
            fetch.pool.requeue(known);
            fetch.attempts = 0;
            let opened = match fetch.open(Method::GET, None, 0, Some(size)).await {
                Ok(o) => o,
                Err(GaveUp(why)) => return Err(gave_up(fetch, why)),
            };
            download::download(fetch, digest, opened, file).await
        }
        Err(Failure::Disk(e)) => Err(disk_failed(fetch, e)),
        Err(Failure::Peers(why)) => Err(gave_up(fetch, why)),
    }
}

fn gave_up(fetch: &Fetch, why: String) -> GaveUp {
    tracing::warn!(key = %fetch.key, reason = %why, "multi-peer download gave up; answering 404");
    fetch.shared.event(
        &fetch.key,
        None,
        FetchEventKind::GaveUp {
            reason: why.clone(),
        },
    );
    GaveUp(why)
}

/// Why a multi-peer download stopped without a digest to compare.
enum Failure {
    Disk(io::Error),
    Peers(String),
}

/// How one range job ended.
enum JobEnd {
    /// Every byte of its range is on disk.
    Done,
    /// Stopped on request; what it counted in `progress` is on disk.
    Cancelled,
    /// The peer failed; what it counted in `progress` is on disk.
    Broke(String),
    Disk(io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Running,
    Done,
    Stopped,
}

/// One request for part of a range.
struct Job {
    id: Id,
    provider: Provider,
    /// Absolute offset the job writes from.
    start: u64,
    /// Bytes written from `start` so far.
    progress: Arc<AtomicU64>,
    started: Instant,
    cancel: CancellationToken,
    state: JobState,
}

impl Job {
    fn written(&self) -> u64 {
        self.progress.load(Ordering::Acquire)
    }

    /// Observed bytes per second, once there is enough of a sample.
    fn rate(&self, now: Instant) -> Option<f64> {
        let t = now.duration_since(self.started);
        (t >= MIN_SAMPLE).then(|| self.written() as f64 / t.as_secs_f64())
    }
}

/// A range `[start, end)` handed out: its original job and at most one re-issue.
struct Slot {
    start: u64,
    end: u64,
    jobs: Vec<Job>,
}

/// Aborts the hasher task if the download is abandoned.
struct HashTask(JoinHandle<io::Result<Digest>>);

impl Drop for HashTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Run<'a> {
    fetch: &'a mut Fetch,
    shared: Arc<Shared>,
    size: u64,
    fd: Arc<File>,
    algorithm: Algorithm,
    queue: VecDeque<(u64, u64)>,
    slots: HashMap<u64, Slot>,
    slot_of: HashMap<Id, u64>,
    jobs: JoinSet<JobEnd>,
    idle: Vec<Provider>,
    /// Providers running a job or idle (not dropped).
    in_use: usize,
    /// Every provider used, for a second pass after a mismatch.
    known: Vec<Provider>,
    /// Bytes per second of each peer's last finished job.
    rates: HashMap<String, f64>,
    done: Intervals,
    spans: HashMap<String, Vec<(u64, u64)>>,
    failures: usize,
    frontier: watch::Sender<u64>,
}

impl<'a> Run<'a> {
    fn new(fetch: &'a mut Fetch, size: u64, fd: Arc<File>, algorithm: Algorithm) -> Self {
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
            algorithm,
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
        }
    }

    /// Fetch every range and return the digest of the whole file.
    async fn run(&mut self, first: Opened) -> Result<Digest, Failure> {
        let hasher = HashTask(tokio::spawn(hash_frontier(
            self.fd.clone(),
            self.algorithm,
            self.size,
            self.frontier.subscribe(),
        )));
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let digest = self.fetch.path.digest().cloned();
        let budget = cfg.max_attempts * cfg.max_peers_per_blob;
        self.in_use = 1;
        self.known.push(first.provider.clone());
        if let Some((s, e)) = self.queue.pop_front() {
            self.spawn_slot(first.provider.clone(), s, e, Some(first));
        }
        while self.done.frontier() < self.size || !self.jobs.is_empty() {
            self.dispatch();
            if self.failures > budget {
                return Err(Failure::Peers(format!(
                    "{} peer failures for one blob",
                    self.failures
                )));
            }
            if self.jobs.is_empty() {
                // Work is left and no provider is available: wait a little for another.
                match self
                    .fetch
                    .pool
                    .next(&shared, digest.as_ref(), cfg.first_byte_timeout)
                    .await
                {
                    Some(p) => self.add_provider(p),
                    None => {
                        return Err(Failure::Peers(format!(
                            "no provider left with {} of {} bytes fetched",
                            self.done.frontier(),
                            self.size
                        )));
                    }
                }
                continue;
            }
            let want_more = self.in_use < cfg.max_peers_per_blob && !self.fetch.pool.exhausted();
            let may_steal = !self.idle.is_empty() && self.queue.is_empty();
            tokio::select! {
                Some(joined) = self.jobs.join_next_with_id() => self.on_end(joined)?,
                p = self.fetch.pool.next(&shared, digest.as_ref(), Duration::from_secs(3600)), if want_more => {
                    if let Some(p) = p {
                        tracing::debug!(peer = %p.peer, key = %self.fetch.key, "another provider joins the download");
                        self.add_provider(p);
                    }
                }
                _ = tokio::time::sleep(STEAL_CHECK), if may_steal => {}
            }
        }
        self.frontier.send_replace(self.size);
        let mut hasher = hasher;
        match (&mut hasher.0).await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err(Failure::Disk(e)),
            Err(e) => Err(Failure::Disk(io::Error::other(e))),
        }
    }

    /// Cancel every job and wait for all of them, so that no write lands after this returns.
    async fn shutdown(&mut self) {
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

    fn median_rate(&self, now: Instant) -> Option<f64> {
        let mut r: Vec<f64> = self
            .slots
            .values()
            .flat_map(|s| &s.jobs)
            .filter(|j| j.state == JobState::Running)
            .filter_map(|j| j.rate(now))
            .chain(
                self.idle
                    .iter()
                    .filter_map(|p| self.rates.get(&p.peer).copied()),
            )
            .collect();
        if r.is_empty() {
            return None;
        }
        r.sort_by(f64::total_cmp);
        Some(r[r.len() / 2])
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

    /// The slot whose only worker is slowest compared with the median, if it is slow enough
    /// to hand to `p`.
    fn slow_slot(&self, p: &Provider) -> Option<u64> {
        let now = Instant::now();
        let median = self.median_rate(now)?;
        let candidate = self.rates.get(&p.peer).copied().unwrap_or(median);
        self.slots
            .iter()
            .filter(|(_, s)| s.jobs.len() == 1 && s.jobs[0].state == JobState::Running)
            .filter_map(|(id, s)| {
                let j = &s.jobs[0];
                let rate = j.rate(now)?;
                let left = (s.end - (j.start + j.written())) as f64;
                let slow = rate * SLOW_FACTOR < median && rate * SLOW_FACTOR < candidate;
                let eta = left / rate.max(1.0);
                let worth = eta > left / candidate.max(1.0) + REISSUE_COST;
                (slow && worth).then_some((*id, eta))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(id, _)| id)
    }

    fn spawn_slot(&mut self, p: Provider, start: u64, end: u64, pre: Option<Opened>) {
        self.slots.insert(
            start,
            Slot {
                start,
                end,
                jobs: Vec::new(),
            },
        );
        self.spawn_job(start, p, start, end, pre);
    }

    /// Re-issue the rest of a slow slot's range to `p`; the first to finish wins.
    fn reissue(&mut self, slot: u64, p: Provider) {
        let Some(s) = self.slots.get(&slot) else {
            self.idle.push(p);
            return;
        };
        let j = &s.jobs[0];
        let from = j.start + j.written();
        let end = s.end;
        tracing::info!(key = %self.fetch.key, slow = %j.provider.peer, to = %p.peer, from, end, "re-issuing a slow peer's range");
        self.spawn_job(slot, p, from, end, None);
    }

    fn spawn_job(&mut self, slot: u64, p: Provider, start: u64, end: u64, pre: Option<Opened>) {
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
            JobEnd::Done => {
                job.state = JobState::Done;
                self.rates.insert(peer.peer.clone(), rate);
                for other in slot.jobs.iter().filter(|j| j.id != id) {
                    other.cancel.cancel();
                }
                self.idle.push(peer);
            }
            JobEnd::Cancelled => {
                job.state = JobState::Stopped;
                self.rates.insert(peer.peer.clone(), rate);
                self.idle.push(peer);
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

    /// Every job of `slot` has exited: record what is on disk, and who wrote it, and queue
    /// what is missing.
    fn finish_slot(&mut self, slot: Slot) {
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
        for (peer, s, e) in spans {
            if e > s {
                add_span(self.spans.entry(peer.to_owned()).or_default(), s, e);
            }
        }
        self.done.insert(slot.start, covered);
        if covered < slot.end {
            self.queue.push_front((covered, slot.end));
        }
        self.frontier.send_replace(self.done.frontier());
    }
}
