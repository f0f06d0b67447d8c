//! Cold rollouts: when several nodes miss the same new blob at about the same time, one of
//! them lets its containerd fetch it upstream and the others stream it from that node while it
//! arrives, so the upstream registry serves each new blob about once per cluster instead of
//! once per node.
//!
//! # The election
//!
//! On a miss (no provider within the resolve timeout) of a `GET` from the local containerd, the
//! node picks the **arbiter** of the digest: among itself and the peers it holds
//! a live connection to, the one with the highest rendezvous score `H(peer id, digest)`. It
//! asks the arbiter for a **claim** (`GET /shoal/v1/herd/<digest>`, signed like every peer
//! request, [`claim`]). The arbiter keeps a table per digest for [`table::LEASE`]: the first
//! claimant becomes the **fetcher**, and every later one is told whom to read from: the fetcher
//! or, once it has [`table::FANOUT`] readers, an earlier claimant that streams the blob itself,
//! so the blob spreads as a tree and no node's uplink carries the whole cluster's copies.
//! - The fetcher answers its containerd 404 at once: containerd goes upstream as it does today,
//!   and its ingest (`<content>/ingest/<id>/data`) starts growing.
//! - A waiter asks its source for the blob until it answers or `MirrorConfig::herd_wait`
//!   (5 s) has passed. A source serves its growing ingest to signed peers as it is written
//!   ([`in_flight`]): only blobs its own containerd asked this mirror for, under an allowlisted
//!   registry, so an image from a registry outside the allowlist (a private Harbor) is never
//!   passed on. The waiter streams those bytes to its containerd with the whole-digest check
//!   and the tail hold of [`crate::stream`]; nothing vouches for single pieces (there is no
//!   piece list for bytes still arriving).
//! - A waiter that gets nothing within the wait answers 404 (its containerd goes upstream) and
//!   tells the arbiter the fetcher failed, so the next claimant becomes the fetcher.
//! - A fetcher that stops mid-way (killed, its pull cancelled) is reported the same way by the
//!   nodes streaming from it ([`take_over`]): the first report makes its sender the fetcher,
//!   whose body then ends after the bytes already sent, so its containerd resumes from the
//!   registry with `Range` and its ingest keeps growing; the others continue their bodies from
//!   the new fetcher's ingest at the offset they reached (their whole-digest check runs on).
//!
//! # Why it is correct
//!
//! *Safety* does not depend on the election: whatever it decides, a waiter's containerd only
//! completes a blob whose whole digest matched (tail hold; a mismatch aborts the ingest), and a
//! fetcher's containerd downloads from upstream and checks the digest itself.
//!
//! *Liveness:* every wait is bounded. A claim costs one request with a [`CLAIM_TIMEOUT`]; an
//! arbiter that does not answer means "fetch it yourself" (today's behaviour). A waiter waits at
//! most `herd_wait` for the first bytes and then streams under the mirror's usual idle timeout;
//! when the fetcher stops (killed, its upstream stalls, its pull cancelled) the waiter's body
//! ends after the bytes already sent and containerd resumes with `Range` from the next host,
//! the registry, whose bytes complete the blob (containerd checks the digest at commit).
//!
//! *At most one fetcher per view:* concurrent misses that pick the same arbiter get one fetcher,
//! because the arbiter decides alone (one lock, first claim wins). Nodes pick the same arbiter
//! when they see the same peers: in clusters where every node is connected to every other (the
//! DHT connects nodes that exchange records, and the liveness check keeps connections up), that
//! is all of them. A join, a leave or a partition can give two nodes different views; each
//! view's arbiter then elects its own fetcher: a few fetchers instead of one, never none and
//! never a wait beyond `herd_wait`. A node with no peers (or no DHT) never waits: its miss is
//! the same 404 as without the election.
//!
//! A whole-blob `GET` and a manifest `GET` by digest elect (a registry's pull limit counts
//! manifest `GET`s). A `Range` request (containerd resuming) and a `HEAD` miss are plain 404s:
//! the resumed bytes must come from where containerd goes next. Tags do not elect: a tag's
//! digest reaches the fetcher's Shoal only when its containerd records the image, at the end of
//! the pull.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use shoal_oci::Digest;

pub(crate) mod claim;
pub(crate) mod in_flight;
mod table;
mod wait;

pub(crate) use table::Claim;
use table::Table;
pub(crate) use wait::{Elected, on_miss, take_over};

use crate::source::Provider;

/// How long a blob the local containerd asked for stays shareable while it is written.
const ASKED_TTL: Duration = Duration::from_secs(3600);
/// Longest wait for the arbiter's answer.
pub(crate) const CLAIM_TIMEOUT: Duration = Duration::from_millis(500);
/// Most asked blobs remembered.
const MAX_ENTRIES: usize = 4096;

/// The election's state on one node: the claims it arbitrates, and the blobs its own containerd
/// asked for (which it may pass on while they are written).
#[derive(Debug, Default)]
pub(crate) struct Herd {
    table: Mutex<Table>,
    asked: Mutex<HashMap<Digest, Instant>>,
}

impl Herd {
    /// Record (as arbiter) that `peer` at `addr` misses `digest`, or lost its source `failed`;
    /// returns whom it reads from (itself: it fetches upstream). See [`table`].
    pub(crate) fn claim(
        &self,
        digest: &Digest,
        peer: &str,
        addr: Option<SocketAddr>,
        failed: Option<&str>,
    ) -> Claim {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.claim(digest, peer, addr, failed)
    }

    /// The local containerd asked this mirror for `digest` (under an allowlisted registry).
    pub(crate) fn asked(&self, digest: &Digest) {
        let now = Instant::now();
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        if asked.len() >= MAX_ENTRIES && !asked.contains_key(digest) {
            asked.retain(|_, at| now.duration_since(*at) < ASKED_TTL);
            // Still full: the oldest goes, so a loopback client asking for thousands of
            // digests cannot keep a real pull's blob from being passed on.
            if asked.len() >= MAX_ENTRIES {
                let oldest = asked
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(d, _)| d.clone());
                if let Some(d) = oldest {
                    asked.remove(&d);
                }
            }
        }
        asked.insert(digest.clone(), now);
    }

    /// Did the local containerd ask for `digest` recently (so its ingest may be passed on)?
    pub(crate) fn was_asked(&self, digest: &Digest) -> bool {
        let asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        asked.get(digest).is_some_and(|at| at.elapsed() < ASKED_TTL)
    }
}

/// The rendezvous score of `peer` for `digest`: every node computes the same order.
fn score(peer: &str, digest: &Digest) -> u64 {
    let mut h = Sha256::new();
    h.update(peer.as_bytes());
    h.update([0]);
    h.update(digest.to_string().as_bytes());
    let out = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&out[..8]);
    u64::from_be_bytes(b)
}

/// The arbiter of `digest` among this node (`me`) and `peers`: `None` means this node.
pub(crate) fn arbiter<'a>(
    me: &str,
    peers: &'a [Provider],
    digest: &Digest,
) -> Option<&'a Provider> {
    let mine = score(me, digest);
    peers
        .iter()
        .map(|p| (score(&p.peer, digest), p))
        .filter(|(s, p)| (*s, p.peer.as_str()) > (mine, me))
        .max_by(|a, b| (a.0, &a.1.peer).cmp(&(b.0, &b.1.peer)))
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: usize) -> Provider {
        Provider {
            peer: format!("peer-{i}"),
            addr: SocketAddr::from(([10, 0, 0, i as u8], 5000)),
        }
    }

    #[test]
    fn every_node_picks_the_same_arbiter() {
        let all: Vec<Provider> = (0..7).map(peer).collect();
        for k in 0..50 {
            let d = Digest::sha256_of(format!("blob {k}").as_bytes());
            let picks: Vec<String> = all
                .iter()
                .map(|me| {
                    let others: Vec<Provider> =
                        all.iter().filter(|p| p.peer != me.peer).cloned().collect();
                    arbiter(&me.peer, &others, &d).map_or(me.peer.clone(), |p| p.peer.clone())
                })
                .collect();
            assert!(picks.windows(2).all(|w| w[0] == w[1]), "{picks:?}");
        }
    }

    #[test]
    fn arbiters_spread_over_the_nodes() {
        let all: Vec<Provider> = (1..6).map(peer).collect();
        let mut chosen = std::collections::HashSet::new();
        for k in 0..200 {
            let d = Digest::sha256_of(format!("blob {k}").as_bytes());
            let a = arbiter("peer-0", &all, &d).map_or("peer-0".to_owned(), |p| p.peer.clone());
            chosen.insert(a);
        }
        assert_eq!(chosen.len(), 6, "every node arbitrates some digests");
    }

    #[test]
    fn asked_blobs_are_remembered_and_bounded() {
        let h = Herd::default();
        let d = Digest::sha256_of(b"x");
        assert!(!h.was_asked(&d));
        h.asked(&d);
        assert!(h.was_asked(&d));
        for i in 0..(MAX_ENTRIES + 10) {
            h.asked(&Digest::sha256_of(format!("{i}").as_bytes()));
        }
        assert!(h.asked.lock().unwrap().len() <= MAX_ENTRIES);
        // The newest is always remembered; the oldest made room.
        let newest = Digest::sha256_of(b"newest");
        h.asked(&newest);
        assert!(h.was_asked(&newest));
        assert!(!h.was_asked(&d));
    }
}
