//! Publication of our own keys, paced.
//!
//! Each key is published (closest-peers walk + `ADD_PROVIDER` to the k closest) by one kad
//! query. At most `publish_concurrency` run at once, fed from two queues: keys newly provided
//! first, then re-publications, so a burst of 10,000 keys never starves lookups or delays a key
//! that was just pulled. Re-publication is driven here rather than by kad's built-in job so that
//! it is paced the same way and never republishes a withdrawn key.

use std::collections::{HashMap, HashSet, VecDeque};

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
}

impl Publisher {
    pub fn provided_len(&self) -> usize {
        self.provided.len()
    }

    pub fn pending_len(&self) -> usize {
        self.queued.len()
    }

    /// Queues every provided key for re-publication (each at most once).
    pub fn schedule_republish(&mut self) {
        for k in &self.provided {
            if self.queued.insert(k.clone()) {
                self.again.push_back(k.clone());
            }
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

    /// Starts publications while there is room. Called after every loop iteration.
    pub(crate) fn pump_publications(&mut self) {
        while self.publish.inflight.len() < self.cfg.publish_concurrency {
            let Some(k) = self
                .publish
                .fresh
                .pop_front()
                .or_else(|| self.publish.again.pop_front())
            else {
                return;
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
            self.publish.schedule_republish();
        }
    }
}
