//! The provider-record store: what Kademlia keeps of other nodes' (and our own) announcements.
//!
//! Kad's own `MemoryStore` keeps each key's providers in a `SmallVec` with room for 20 records
//! inline, so every stored key costs ~5.2 KB (measured: 5,188 bytes per key with one provider,
//! 5,796 with twenty) however many providers it has. In the sizing case (`Config` docs) a node
//! stores ~31,000 keys with ~72,000 records (the scale bench's image-shaped key sets, 5,000 keys
//! per node at 300 nodes, most keys held by one or two nodes): ~160 MB in `MemoryStore`, over
//! any sensible DaemonSet limit (measured at 30 nodes x 5,000 keys: 201 MiB per node, against
//! 14.6 MiB with this store; docs/benchmarks.md). This store keeps the records in a few bytes
//! each:
//!
//! - a provider's identity and addresses are kept once per peer (interned, reference-counted),
//!   a record is a peer index and an expiry in whole seconds (8 bytes);
//! - a key's records sit inline up to two (most keys), on the heap beyond;
//! - expired records are swept (`sweep`), not only dropped when their key is next looked up.
//!
//! Addresses are per peer, the latest non-empty set announced with any of its records: they are
//! where that node is reachable now (`records` stores what this node sees), not per key.
//! Semantics otherwise follow `MemoryStore`: a provider already listed is updated in place, a
//! full list ignores newcomers (`records` makes room first), a key stays while it has a record.
//! Value records (`PUT_VALUE`) are never stored: Shoal uses none and kad hands them to the node.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::kad::store::{Error, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::{Multiaddr, PeerId};
use smallvec::SmallVec;

/// Providers stored per key (kad's k): a lookup needs one live one.
pub(crate) const MAX_PROVIDERS_PER_KEY: usize = 20;

/// Expiry of a record that never expires (our own).
const NEVER: u32 = u32::MAX;

/// One provider of one key: index into the peer table, expiry in seconds after `epoch`.
#[derive(Clone, Copy, Debug)]
struct Slot {
    peer: u32,
    expires: u32,
}

struct Peer {
    id: PeerId,
    addresses: Vec<Multiaddr>,
    /// Slots that name this peer; the entry is freed at zero.
    slots: u32,
}

pub(crate) struct Store {
    local: PeerId,
    max_keys: usize,
    epoch: Instant,
    keys: HashMap<RecordKey, SmallVec<[Slot; 2]>>,
    peers: Vec<Option<Peer>>,
    free: Vec<u32>,
    index: HashMap<PeerId, u32>,
}

impl Store {
    /// An empty store holding at most `max_keys` distinct keys.
    pub(crate) fn new(local: PeerId, max_keys: usize) -> Self {
        Store {
            local,
            max_keys,
            epoch: Instant::now(),
            keys: HashMap::new(),
            peers: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Distinct keys held.
    pub(crate) fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Drops every record expired at `now`; returns how many.
    pub(crate) fn sweep(&mut self, now: Instant) -> usize {
        let now = self.secs_floor(now);
        let mut gone = Vec::new();
        self.keys.retain(|_, slots| {
            slots.retain(|s| {
                let keep = s.expires > now;
                if !keep {
                    gone.push(s.peer);
                }
                keep
            });
            !slots.is_empty()
        });
        for &p in &gone {
            self.release(p);
        }
        gone.len()
    }

    /// Seconds after `epoch`, rounded up so a record never outlives its expiry by less than 1 s.
    fn secs(&self, at: Option<Instant>) -> u32 {
        match at {
            None => NEVER,
            Some(at) => {
                let d = at.saturating_duration_since(self.epoch);
                let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                u32::try_from(s).unwrap_or(NEVER - 1).min(NEVER - 1)
            }
        }
    }

    fn secs_floor(&self, at: Instant) -> u32 {
        let s = at.saturating_duration_since(self.epoch).as_secs();
        u32::try_from(s).unwrap_or(NEVER - 1).min(NEVER - 1)
    }

    fn instant(&self, secs: u32) -> Option<Instant> {
        (secs != NEVER).then(|| self.epoch + Duration::from_secs(u64::from(secs)))
    }

    /// The peer's index, created if new; a non-empty `addresses` replaces the known ones.
    fn intern(&mut self, id: PeerId, addresses: Vec<Multiaddr>) -> u32 {
        if let Some(&i) = self.index.get(&id) {
            if !addresses.is_empty() {
                if let Some(p) = self.peers[i as usize].as_mut() {
                    p.addresses = addresses;
                }
            }
            return i;
        }
        let peer = Some(Peer {
            id,
            addresses,
            slots: 0,
        });
        let i = match self.free.pop() {
            Some(i) => {
                self.peers[i as usize] = peer;
                i
            }
            None => {
                self.peers.push(peer);
                u32::try_from(self.peers.len() - 1).expect("fewer than 2^32 peers")
            }
        };
        self.index.insert(id, i);
        i
    }

    /// One slot naming peer `i` is gone.
    fn release(&mut self, i: u32) {
        let entry = &mut self.peers[i as usize];
        let Some(p) = entry.as_mut() else { return };
        p.slots = p.slots.saturating_sub(1);
        if p.slots == 0 {
            self.index.remove(&p.id);
            *entry = None;
            self.free.push(i);
        }
    }

    fn record(&self, key: &RecordKey, s: Slot) -> Option<ProviderRecord> {
        let p = self.peers[s.peer as usize].as_ref()?;
        Some(ProviderRecord {
            key: key.clone(),
            provider: p.id,
            expires: self.instant(s.expires),
            addresses: p.addresses.clone(),
        })
    }
}

impl RecordStore for Store {
    type RecordsIter<'a> = std::iter::Empty<Cow<'a, Record>>;
    type ProvidedIter<'a> = std::vec::IntoIter<Cow<'a, ProviderRecord>>;

    fn get(&self, _: &RecordKey) -> Option<Cow<'_, Record>> {
        None
    }

    fn put(&mut self, _: Record) -> Result<()> {
        Err(Error::MaxRecords)
    }

    fn remove(&mut self, _: &RecordKey) {}

    fn records(&self) -> Self::RecordsIter<'_> {
        std::iter::empty()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        if !self.keys.contains_key(&record.key) && self.keys.len() >= self.max_keys {
            return Err(Error::MaxProvidedKeys);
        }
        let expires = self.secs(record.expires);
        let listed = self.index.get(&record.provider).copied().and_then(|i| {
            let slots = self.keys.get(&record.key)?;
            slots.iter().position(|s| s.peer == i)
        });
        let full = self
            .keys
            .get(&record.key)
            .is_some_and(|s| s.len() >= MAX_PROVIDERS_PER_KEY);
        if listed.is_none() && full {
            return Ok(());
        }
        let peer = self.intern(record.provider, record.addresses);
        let slots = self.keys.entry(record.key).or_default();
        match listed {
            Some(at) => slots[at].expires = expires,
            None => {
                slots.push(Slot { peer, expires });
                if let Some(p) = self.peers[peer as usize].as_mut() {
                    p.slots += 1;
                }
            }
        }
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.keys.get(key).map_or_else(Vec::new, |slots| {
            slots.iter().filter_map(|&s| self.record(key, s)).collect()
        })
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        // Kad calls this only from its own re-publication job, which Shoal turns off (the node
        // re-publishes, see `publish`); a scan is fine.
        let Some(&me) = self.index.get(&self.local) else {
            return Vec::new().into_iter();
        };
        self.keys
            .iter()
            .filter_map(|(k, slots)| slots.iter().find(|s| s.peer == me).map(|&s| (k, s)))
            .filter_map(|(k, s)| self.record(k, s).map(Cow::Owned))
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn remove_provider(&mut self, key: &RecordKey, provider: &PeerId) {
        let Some(&i) = self.index.get(provider) else {
            return;
        };
        let Some(slots) = self.keys.get_mut(key) else {
            return;
        };
        let Some(at) = slots.iter().position(|s| s.peer == i) else {
            return;
        };
        slots.remove(at);
        if slots.is_empty() {
            self.keys.remove(key);
        }
        self.release(i);
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
