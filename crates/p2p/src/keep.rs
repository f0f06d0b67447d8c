//! Which idle connections stay open: routing-table peers, then the longest-lived others up to
//! `Config::kept_connections`.
//!
//! Every lookup and publication walk opens connections to nodes near its key, which is to say
//! to random nodes: if all stayed open a node would end up connected to every other (measured:
//! 99 of 99 at 100 nodes, 299 of 299 at 300), each connection costing a descriptor, memory
//! and pings for as long as it is open. Routing-table peers (about 20 per bucket, ~100 at 300
//! nodes, ~130 at 1,000) are where every walk starts, so they are kept while they answer pings
//! (`liveness`); so are the longest-lived other connections up to the budget, which in a
//! cluster smaller than it means every node (stable, equal views of the cluster). Any other
//! connection closes once idle for `Config::idle_connection_timeout`. Past the budget the set
//! grows with the log of the cluster, not with the cluster.
//!
//! This behaviour speaks no protocol: its connection handler only answers "keep alive?", which
//! the node sets once a second (`Node::refresh_kept`, [`choose`]).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::SystemTime;

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour,
    NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};

/// The peers whose connections are kept: every routing-table peer, then connected peers
/// oldest first (ties by id, so the choice is stable) until `budget` connected peers are kept.
pub(crate) fn choose(
    table: &[PeerId],
    mut connected: Vec<(PeerId, SystemTime)>,
    budget: usize,
) -> HashSet<PeerId> {
    let mut kept: HashSet<PeerId> = table.iter().copied().collect();
    let in_table = connected.iter().filter(|(p, _)| kept.contains(p)).count();
    connected.retain(|(p, _)| !kept.contains(p));
    connected.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let room = budget.saturating_sub(in_table);
    kept.extend(connected.into_iter().take(room).map(|(p, _)| p));
    kept
}

/// Keeps connections to a set of peers open while idle.
#[derive(Default)]
pub(crate) struct Behaviour {
    kept: HashSet<PeerId>,
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Handlers to tell; at most one entry per open connection, drained on every poll.
    notify: Vec<(PeerId, ConnectionId, bool)>,
}

impl Behaviour {
    /// Makes `peers` the kept set; connections of peers leaving it start their idle timeout.
    pub fn set(&mut self, peers: HashSet<PeerId>) {
        let leaving: Vec<PeerId> = self.kept.difference(&peers).copied().collect();
        let joining: Vec<PeerId> = peers.difference(&self.kept).copied().collect();
        for (list, keep) in [(leaving, false), (joining, true)] {
            for p in list {
                for c in self.connections.get(&p).into_iter().flatten() {
                    self.notify.push((p, *c, keep));
                }
            }
        }
        self.kept = peers;
    }

    #[cfg(test)]
    pub fn kept(&self, peer: &PeerId) -> bool {
        self.kept.contains(peer)
    }

    fn opened(&mut self, peer: PeerId, id: ConnectionId) -> Handler {
        self.connections.entry(peer).or_default().push(id);
        Handler {
            keep: self.kept.contains(&peer),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.opened(peer, id))
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.opened(peer, id))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(c) = event {
            if let Some(list) = self.connections.get_mut(&c.peer_id) {
                list.retain(|id| *id != c.connection_id);
                if list.is_empty() {
                    self.connections.remove(&c.peer_id);
                }
            }
            self.notify.retain(|(_, id, _)| *id != c.connection_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        ev: THandlerOutEvent<Self>,
    ) {
        match ev {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.notify.pop() {
            Some((peer_id, id, keep)) => Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(id),
                event: keep,
            }),
            None => Poll::Pending,
        }
    }
}

/// One connection's answer to "keep alive?".
pub(crate) struct Handler {
    keep: bool,
}

impl libp2p::swarm::ConnectionHandler for Handler {
    type FromBehaviour = bool;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<DeniedUpgrade> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep
    }

    fn on_behaviour_event(&mut self, keep: bool) {
        self.keep = keep;
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Infallible>> {
        Poll::Pending
    }

    fn on_connection_event(&mut self, _: ConnectionEvent<DeniedUpgrade, DeniedUpgrade>) {}
}

#[cfg(test)]
mod tests {
    use libp2p::swarm::ConnectionHandler as _;

    use super::*;

    fn drain(b: &mut Behaviour) -> Vec<(PeerId, ConnectionId, bool)> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        while let Poll::Ready(ToSwarm::NotifyHandler {
            peer_id,
            handler: NotifyHandler::One(id),
            event,
        }) = b.poll(&mut cx)
        {
            out.push((peer_id, id, event));
        }
        out.sort_by_key(|(_, id, _)| format!("{id:?}"));
        out
    }

    #[test]
    fn connections_follow_the_kept_set() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/5001".parse().unwrap();
        let mut keep = Behaviour::default();
        let (c1, c2, c3) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
        );
        let h1 = keep
            .handle_established_inbound_connection(c1, a, &addr, &addr)
            .unwrap();
        assert!(!h1.connection_keep_alive(), "unknown peers are not kept");
        keep.handle_established_outbound_connection(c2, a, &addr, Endpoint::Dialer, PortUse::New)
            .unwrap();
        keep.handle_established_inbound_connection(c3, b, &addr, &addr)
            .unwrap();

        // `a` enters the table: both its connections are told, `b`'s is not.
        keep.set(HashSet::from([a]));
        assert_eq!(drain(&mut keep), vec![(a, c1, true), (a, c2, true)]);
        assert!(keep.kept(&a) && !keep.kept(&b));
        // A new connection of a kept peer is kept from the start.
        let h4 = keep
            .handle_established_inbound_connection(ConnectionId::new_unchecked(4), a, &addr, &addr)
            .unwrap();
        assert!(h4.connection_keep_alive());
        // The same set again changes nothing.
        keep.set(HashSet::from([a]));
        assert!(drain(&mut keep).is_empty());
        // `a` leaves, `b` enters.
        keep.set(HashSet::from([b]));
        let told = drain(&mut keep);
        assert!(told.contains(&(b, c3, true)));
        assert_eq!(told.iter().filter(|(p, _, k)| *p == a && !k).count(), 3);
    }

    #[test]
    fn the_routing_table_then_the_oldest_connections_within_the_budget() {
        let t = |s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let p: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        // p0, p1 in the table (p1 not connected); p2..p5 connected, p5 the oldest.
        let table = [p[0], p[1]];
        let connected = vec![
            (p[0], t(50)),
            (p[2], t(10)),
            (p[3], t(30)),
            (p[4], t(20)),
            (p[5], t(5)),
        ];
        // Budget 3: p0 uses one, the two oldest others follow.
        let kept = choose(&table, connected.clone(), 3);
        assert_eq!(kept, HashSet::from([p[0], p[1], p[5], p[2]]));
        // A budget below the table keeps the table anyway, and nothing else.
        assert_eq!(
            choose(&table, connected.clone(), 0),
            HashSet::from([p[0], p[1]])
        );
        // A budget above the connections keeps every one of them.
        let all = choose(&table, connected, 128);
        assert_eq!(all.len(), 6);
    }

    #[test]
    fn the_handler_answers_what_it_was_told() {
        let mut h = Handler { keep: false };
        h.on_behaviour_event(true);
        assert!(h.connection_keep_alive());
        h.on_behaviour_event(false);
        assert!(!h.connection_keep_alive());
    }
}
