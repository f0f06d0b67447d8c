//! Peers caught serving bytes that do not match a digest, excluded for that digest for a while.
//!
//! Bounded: at most [`CAPACITY`] marks; when full, expired marks go first, then the oldest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_oci::Digest;

/// Most (peer, digest) marks kept.
pub const CAPACITY: usize = 4096;

/// Set of (peer, digest) pairs not to ask again until their mark expires.
#[derive(Debug)]
pub struct BadPeers {
    ttl: Duration,
    marks: Mutex<HashMap<(String, Digest), Instant>>,
}

impl BadPeers {
    pub fn new(ttl: Duration) -> Self {
        BadPeers {
            ttl,
            marks: Mutex::new(HashMap::new()),
        }
    }

    /// Exclude `peer` for `digest` for the configured time.
    pub fn mark(&self, peer: &str, digest: &Digest) {
        let now = Instant::now();
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        if marks.len() >= CAPACITY {
            marks.retain(|_, until| *until > now);
        }
        if marks.len() >= CAPACITY {
            if let Some(oldest) = marks
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            {
                marks.remove(&oldest);
            }
        }
        marks.insert((peer.to_owned(), digest.clone()), now + self.ttl);
    }

    /// Is `peer` currently excluded for `digest`?
    pub fn is_bad(&self, peer: &str, digest: &Digest) -> bool {
        let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        marks
            .get(&(peer.to_owned(), digest.clone()))
            .is_some_and(|until| *until > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_expire_and_stay_bounded() {
        let d = Digest::sha256_of(b"x");
        let b = BadPeers::new(Duration::from_millis(30));
        b.mark("p1", &d);
        assert!(b.is_bad("p1", &d));
        assert!(!b.is_bad("p2", &d));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!b.is_bad("p1", &d));
        let long = BadPeers::new(Duration::from_secs(60));
        for i in 0..CAPACITY + 10 {
            long.mark(&format!("p{i}"), &d);
        }
        assert!(long.marks.lock().unwrap().len() <= CAPACITY);
        assert!(long.is_bad(&format!("p{}", CAPACITY + 9), &d));
    }
}
