//! Work stealing at the tail of a multi-peer download: when no range is left to hand out, an
//! idle worker takes over the rest of a range whose worker runs far below the median measured
//! throughput (first to finish wins). Slow is judged from bytes per second, not a timeout.

use tokio::time::Instant;

use super::run::{JobState, Run};
use crate::source::Provider;

/// A range is re-issued when its worker is this many times slower than the median.
const SLOW_FACTOR: f64 = 3.0;
/// What a re-issue costs before its first byte (a request round trip, a connection), in the
/// comparison of the slow worker's time to finish with the idle one's.
const REISSUE_COST: f64 = 0.1;

impl Run<'_> {
    /// The median measured rate of the running jobs, the idle workers and `candidate` (the
    /// idle worker asking for work, already taken off the idle list).
    pub(super) fn median_rate(&self, now: Instant, candidate: Option<f64>) -> Option<f64> {
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
            .chain(candidate)
            .collect();
        if r.is_empty() {
            return None;
        }
        r.sort_by(f64::total_cmp);
        Some(r[r.len() / 2])
    }

    /// The slot whose only worker is slowest compared with the median, if it is slow enough
    /// to hand to `p`.
    pub(super) fn slow_slot(&self, p: &Provider) -> Option<u64> {
        let now = Instant::now();
        let own = self.rates.get(&p.peer).copied();
        let median = self.median_rate(now, own)?;
        let candidate = own.unwrap_or(median);
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

    /// Re-issue the rest of a slow slot's range to `p`; the first to finish wins.
    pub(super) fn reissue(&mut self, slot: u64, p: Provider) {
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
}
