//! The arbiter's table: for each digest being fetched in a rollout, the fetcher and the nodes
//! streaming it, so that each new claimant is told whom to read from.
//!
//! The first claimant fetches upstream. Every later one reads from the earliest source (the
//! fetcher, then the claimants in arrival order) that has fewer than [`FANOUT`] readers, and
//! becomes a source itself: the blob spreads as a tree of depth log₄(nodes), so no node's
//! uplink carries the whole cluster's copies, and since a node only ever reads from one that
//! arrived before it, there is no cycle. A source reported as failed is dropped, and whoever
//! reads from it is given an earlier one; when the fetcher itself failed, its first reporter
//! takes its place (its containerd resumes upstream).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_oci::Digest;

/// How long an arbiter keeps a digest's entry: a fetcher's upstream download of a large layer,
/// so that a late miss still finds the nodes that have it in flight.
pub(crate) const LEASE: Duration = Duration::from_secs(120);
/// Most readers one source is given while an earlier or later source has room.
pub(crate) const FANOUT: usize = 4;
/// Most digests an arbiter keeps.
const MAX_DIGESTS: usize = 4096;
/// Most sources kept per digest (the cluster's nodes missing it; more are told to fetch).
const MAX_SOURCES: usize = 1024;
/// Most sources kept over all digests (a few MB at most, whatever peers claim).
const MAX_TOTAL_SOURCES: usize = 65_536;

/// Whom a claimant reads from: itself (it fetches upstream) or another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    pub peer: String,
    /// Its mirror endpoint; `None` when it is the arbiter itself.
    pub addr: Option<SocketAddr>,
}

#[derive(Debug)]
struct Source {
    claim: Claim,
    readers: usize,
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    /// In arrival order; the first is the fetcher.
    sources: Vec<Source>,
}

#[derive(Debug, Default)]
pub(crate) struct Table {
    entries: HashMap<Digest, Entry>,
}

impl Table {
    /// `peer` (at `addr`) misses `digest`, or lost its source `failed`: whom it reads from.
    pub(crate) fn claim(
        &mut self,
        digest: &Digest,
        peer: &str,
        addr: Option<SocketAddr>,
        failed: Option<&str>,
    ) -> Claim {
        let now = Instant::now();
        let me = Claim {
            peer: peer.to_owned(),
            addr,
        };
        let live = |e: &Entry| now.duration_since(e.at) < LEASE;
        if self.entries.get(digest).is_some_and(|e| !live(e)) {
            self.entries.remove(digest);
        }
        if !self.entries.contains_key(digest) {
            if self.entries.len() >= MAX_DIGESTS {
                self.entries.retain(|_, e| live(e));
            }
            // Full of live entries: the claimant fetches and nothing is recorded.
            if self.entries.len() < MAX_DIGESTS {
                let sources = vec![Source {
                    claim: me.clone(),
                    readers: 0,
                }];
                self.entries
                    .insert(digest.clone(), Entry { at: now, sources });
            }
            return me;
        }
        let total: usize = self.entries.values().map(|e| e.sources.len()).sum();
        let Some(entry) = self.entries.get_mut(digest) else {
            return me;
        };
        let sources = &mut entry.sources;
        if let Some(f) = failed.filter(|f| *f != peer) {
            if let Some(i) = sources.iter().position(|s| s.claim.peer == f) {
                if i == 0 {
                    // The fetcher failed: its first reporter fetches in its place.
                    sources.retain(|s| s.claim.peer != peer);
                    sources[0] = Source {
                        claim: me.clone(),
                        readers: 0,
                    };
                    return me;
                }
                sources.remove(i);
            }
        }
        let mine = match sources.iter().position(|s| s.claim.peer == peer) {
            Some(0) => return me,
            Some(i) => i,
            None if sources.len() >= MAX_SOURCES => return me,
            None if total >= MAX_TOTAL_SOURCES => return me,
            None => {
                sources.push(Source {
                    claim: me.clone(),
                    readers: 0,
                });
                sources.len() - 1
            }
        };
        // The earliest source with room; if every earlier one is full, the least loaded.
        let earlier = &mut sources[..mine];
        let pick = earlier
            .iter()
            .position(|s| s.readers < FANOUT)
            .or_else(|| (0..earlier.len()).min_by_key(|&i| earlier[i].readers))
            .unwrap_or(0);
        earlier[pick].readers += 1;
        earlier[pick].claim.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> Option<SocketAddr> {
        Some(SocketAddr::from(([10, 0, 0, i], 5000)))
    }

    #[test]
    fn the_first_claimant_fetches_and_the_others_spread_as_a_tree() {
        let mut t = Table::default();
        let d = Digest::sha256_of(b"x");
        assert_eq!(t.claim(&d, "n0", addr(0), None).peer, "n0");
        let sources: Vec<String> = (1..=9)
            .map(|i| t.claim(&d, &format!("n{i}"), addr(i as u8), None).peer)
            .collect();
        // Four read from the fetcher, the next four from the first waiter, then the second.
        assert_eq!(
            sources,
            ["n0", "n0", "n0", "n0", "n1", "n1", "n1", "n1", "n2"]
        );
        // A claimant asking again keeps reading from an earlier node, never a later one.
        let again = t.claim(&d, "n2", addr(2), None);
        assert!(["n0", "n1"].contains(&again.peer.as_str()), "{again:?}");
    }

    #[test]
    fn a_failed_source_is_dropped_and_a_failed_fetcher_replaced_by_its_first_reporter() {
        let mut t = Table::default();
        let d = Digest::sha256_of(b"x");
        for i in 0..6 {
            t.claim(&d, &format!("n{i}"), addr(i), None);
        }
        // n5 read from n1, which stopped: n5 is given the earliest source with room that
        // arrived before it (the fetcher has its four readers).
        let c = t.claim(&d, "n5", addr(5), Some("n1"));
        assert_eq!(c.peer, "n2");
        // Only the claimant's own report about the fetcher replaces it.
        assert_eq!(t.claim(&d, "n0", addr(0), Some("n0")).peer, "n0");
        let c = t.claim(&d, "n3", addr(3), Some("n0"));
        assert_eq!((c.peer.as_str(), c.addr), ("n3", addr(3)));
        // The others now read from the new fetcher (or a node that arrived before them).
        let c = t.claim(&d, "n4", addr(4), Some("n0"));
        assert_eq!(c.peer, "n3");
        assert_eq!(t.claim(&d, "n9", addr(9), None).peer, "n3");
    }

    #[test]
    fn the_sources_of_all_digests_are_bounded_together() {
        let mut t = Table::default();
        let per = MAX_SOURCES;
        for k in 0..(MAX_TOTAL_SOURCES / per) {
            let d = Digest::sha256_of(format!("{k}").as_bytes());
            for i in 0..per {
                t.claim(&d, &format!("n{i}"), None, None);
            }
        }
        let total: usize = t.entries.values().map(|e| e.sources.len()).sum();
        assert_eq!(total, MAX_TOTAL_SOURCES);
        // A new node missing a known digest is told to fetch, and is not recorded.
        let d = Digest::sha256_of(b"0");
        assert_eq!(t.claim(&d, "late", None, None).peer, "late");
        let total: usize = t.entries.values().map(|e| e.sources.len()).sum();
        assert_eq!(total, MAX_TOTAL_SOURCES);
    }

    #[test]
    fn entries_expire_and_the_table_is_bounded() {
        let mut t = Table::default();
        for i in 0..(MAX_DIGESTS + 10) {
            let d = Digest::sha256_of(format!("{i}").as_bytes());
            assert_eq!(t.claim(&d, "a", None, None).peer, "a");
        }
        assert!(t.entries.len() <= MAX_DIGESTS);
        let d = Digest::sha256_of(b"stale");
        t.entries.insert(
            d.clone(),
            Entry {
                at: Instant::now() - LEASE,
                sources: vec![Source {
                    claim: Claim {
                        peer: "old".into(),
                        addr: None,
                    },
                    readers: 0,
                }],
            },
        );
        assert_eq!(t.claim(&d, "b", None, None).peer, "b");
    }
}
