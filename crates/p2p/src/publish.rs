//! Publication of our own keys, paced.
//!
//! Each key is published (closest-peers walk + `ADD_PROVIDER` to the k closest) by one kad
//! query. At most `publish_concurrency` run at once, fed from two queues: keys newly provided
//! first, then re-publications, so a burst of 10,000 keys never starves lookups or delays a key
//! that was just pulled. Re-publication is driven here rather than by kad's built-in job so that
//! it is paced the same way and never republishes a withdrawn key.
//!
//! Re-publications are also spread over the first half of `reprovide_interval` (a token rate of
//! queued keys / half the interval) instead of leaving in one burst: 5,000 keys at once were
//! ~150 MB of cluster traffic within seconds every interval; spread out, a node's background
//! traffic is the average the sizing comment on `Config` budgets, and lookups never queue
//! behind a re-publication burst.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use libp2p::kad::store::RecordStore;
use libp2p::kad::{ProviderRecord, QueryId, RecordKey};

use crate::Error;
use crate::node::Node;

#[derive(Default)]
pub(crate) struct Publisher {
    /// Our keys. Bounded by `max_provided_keys`; the queues below hold at most one entry per key.
    provided: HashSet<RecordKey>,
    fresh: VecDeque<RecordKey>,
    again: VecDeque<RecordKey>,
    queued: HashSet<RecordKey>,
    inflight: HashMap<QueryId, RecordKey>,
    /// A publication completed while we knew no peer: publish everything again on the first.
    published_alone: bool,
    /// Re-publications that may start now, refilled at `again_rate` per second.
    again_tokens: f64,
    again_rate: f64,
    refilled: Option<Instant>,
}

impl Publisher {
    pub fn provided_len(&self) -> usize {
        self.provided.len()
    }

    /// Publications not finished: queued or in flight.
    pub fn pending_len(&self) -> usize {
        self.queued.len() + self.inflight.len()
    }

    /// Queues every provided key for re-publication (each at most once), to be spread over
    /// `spread`.
    pub fn schedule_republish(&mut self, spread: Duration) {
        for k in &self.provided {
            if self.queued.insert(k.clone()) {
                self.again.push_back(k.clone());
            }
        }
        self.again_rate = self.again.len() as f64 / spread.as_secs_f64().max(1.0);
    }

    /// Takes one re-publication token if one is available at `now`.
    fn take_again_token(&mut self, now: Instant, burst: usize) -> bool {
        let elapsed = self
            .refilled
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.refilled = Some(now);
        // At least one per second, so retries after timeouts are never starved.
        let rate = self.again_rate.max(1.0);
        self.again_tokens = (self.again_tokens + elapsed.as_secs_f64() * rate).min(burst as f64);
        if self.again_tokens >= 1.0 {
            self.again_tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Node {
    pub(crate) fn on_provide(&mut self, keys: Vec<RecordKey>) -> Result<usize, Error> {
        let mut new: Vec<RecordKey> = Vec::new();
        let mut dedup = HashSet::new();
        for k in keys {
            if !self.publish.provided.contains(&k) && dedup.insert(k.clone()) {
                new.push(k);
            }
        }
        let current = self.publish.provided.len();
        if current + new.len() > self.cfg.max_provided_keys {
            return Err(Error::TooManyKeys {
                requested: new.len(),
                current,
                max: self.cfg.max_provided_keys,
            });
        }
        let count = new.len();
        for k in new {
            // Stored locally at once, so lookups reaching this node see us before publication.
            let record = ProviderRecord::new(k.clone(), self.local, Vec::new());
            if let Err(e) = self
                .swarm
                .behaviour_mut()
                .kad
                .store_mut()
                .add_provider(record)
            {
                return Err(Error::Config(format!(
                    "local record store refused a key ({e}); raise max_stored_keys"
                )));
            }
            self.publish.provided.insert(k.clone());
            if self.publish.queued.insert(k.clone()) {
                self.publish.fresh.push_back(k);
            }
        }
        tracing::debug!(
            new = count,
            total = self.publish.provided.len(),
            "keys provided"
        );
        Ok(count)
    }

    pub(crate) fn on_withdraw(&mut self, keys: Vec<RecordKey>) -> usize {
        let mut n = 0;
        for k in keys {
            if self.publish.provided.remove(&k) {
                self.swarm.behaviour_mut().kad.stop_providing(&k);
                // Its queue entry is skipped when popped.
                self.publish.queued.remove(&k);
                n += 1;
            }
        }
        tracing::debug!(
            withdrawn = n,
            total = self.publish.provided.len(),
            "keys withdrawn"
        );
        n
    }

    /// Starts publications while there is room (re-publications at their paced rate). Called
    /// after every loop iteration, which runs at least every 100 ms (housekeeping).
    pub(crate) fn pump_publications(&mut self) {
        let now = Instant::now();
        while self.publish.inflight.len() < self.cfg.publish_concurrency {
            let k = match self.publish.fresh.pop_front() {
                Some(k) => k,
                None if self.publish.again.is_empty() => return,
                None if self
                    .publish
                    .take_again_token(now, self.cfg.publish_concurrency) =>
                {
                    match self.publish.again.pop_front() {
                        Some(k) => k,
                        None => return,
                    }
                }
                None => return,
            };
            if !self.publish.provided.contains(&k) || !self.publish.queued.remove(&k) {
                continue; // withdrawn while queued
            }
            match self.swarm.behaviour_mut().kad.start_providing(k.clone()) {
                Ok(id) => {
                    self.publish.inflight.insert(id, k);
                }
                Err(e) => tracing::warn!(error = %e, "cannot publish key"),
            }
        }
    }

    pub(crate) fn on_published(&mut self, id: QueryId, ok: bool) {
        let Some(key) = self.publish.inflight.remove(&id) else {
            return;
        };
        if !ok {
            // Kad's only failure is the deadline (`PUBLISH_TIMEOUT`), which also paces retries.
            tracing::debug!(query = ?id, "publication timed out; queued again");
            if self.publish.provided.contains(&key) && self.publish.queued.insert(key.clone()) {
                self.publish.again.push_back(key);
            }
        }
        if self.routing_table_size() == 0 {
            self.publish.published_alone = true;
        }
    }

    pub(crate) fn publish_after_first_peer(&mut self) {
        if std::mem::take(&mut self.publish.published_alone) {
            tracing::debug!("first peer joined; publishing all keys again");
            // Not paced: these keys were published nowhere yet.
            let p = &mut self.publish;
            for k in &p.provided {
                if p.queued.insert(k.clone()) {
                    p.fresh.push_back(k.clone());
                }
            }
        }
    }

    /// The re-publication round every `reprovide_interval`, spread over half of it.
    pub(crate) fn republish_round(&mut self) {
        self.publish
            .schedule_republish(self.cfg.reprovide_interval / 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn republications_are_spread_over_the_given_time() {
        let mut p = Publisher::default();
        for i in 0..100u32 {
            p.provided.insert(RecordKey::new(&i.to_be_bytes()));
        }
        p.schedule_republish(Duration::from_secs(10)); // 10 per second
        let t0 = Instant::now();
        let taken = |p: &mut Publisher, at: Instant| {
            (0..1000).filter(|_| p.take_again_token(at, 32)).count()
        };
        assert_eq!(taken(&mut p, t0), 0, "no burst at the start of a round");
        assert_eq!(taken(&mut p, t0 + Duration::from_secs(1)), 10);
        // After a long pause the burst is capped at the concurrency.
        assert_eq!(taken(&mut p, t0 + Duration::from_secs(60)), 32);
    }
}
