//! Which connections have answered a ping recently.
//!
//! libp2p's ping keeps a connection open when pings fail, and reports only the second failure in
//! a row, whose outbound stream negotiation alone may take another 10 s. A peer that went silent
//! without closing its connections (powered off, partitioned by a firewall that drops) would stay
//! "connected", and be yielded as a provider, until TCP gives up (~15 min on Linux). The node
//! therefore closes every connection that has not answered a ping within
//! `ping_interval + ping_timeout`, counted from its last answer (or from when it was opened).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

#[derive(Default)]
pub(crate) struct Liveness {
    last_alive: HashMap<ConnectionId, (PeerId, Instant)>,
}

impl Liveness {
    pub fn opened(&mut self, id: ConnectionId, peer: PeerId, now: Instant) {
        self.last_alive.insert(id, (peer, now));
    }

    pub fn closed(&mut self, id: ConnectionId) {
        self.last_alive.remove(&id);
    }

    /// A ping on `id` was answered.
    pub fn answered(&mut self, id: ConnectionId, now: Instant) {
        if let Some((_, at)) = self.last_alive.get_mut(&id) {
            *at = now;
        }
    }

    /// Connections silent for longer than `limit`; each is returned once (forgotten here).
    pub fn silent(&mut self, now: Instant, limit: Duration) -> Vec<(ConnectionId, PeerId)> {
        let silent: Vec<(ConnectionId, PeerId)> = self
            .last_alive
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) > limit)
            .map(|(id, (peer, _))| (*id, *peer))
            .collect();
        for (id, _) in &silent {
            self.last_alive.remove(id);
        }
        silent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_silent_past_the_limit_are_reported_once() {
        let (a, b) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        let peer = PeerId::random();
        let t0 = Instant::now();
        let limit = Duration::from_secs(15);
        let mut l = Liveness::default();
        l.opened(a, peer, t0);
        l.opened(b, peer, t0);
        l.answered(b, t0 + Duration::from_secs(10));
        assert!(
            l.silent(t0 + limit, limit).is_empty(),
            "exactly at the limit"
        );
        assert_eq!(
            l.silent(t0 + Duration::from_secs(16), limit),
            vec![(a, peer)]
        );
        assert!(l.silent(t0 + Duration::from_secs(16), limit).is_empty());
        assert_eq!(
            l.silent(t0 + Duration::from_secs(26), limit),
            vec![(b, peer)]
        );
    }

    #[test]
    fn closed_connections_are_forgotten() {
        let a = ConnectionId::new_unchecked(1);
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.opened(a, PeerId::random(), t0);
        l.closed(a);
        l.answered(a, t0);
        assert!(
            l.silent(t0 + Duration::from_secs(60), Duration::from_secs(1))
                .is_empty()
        );
    }
}
