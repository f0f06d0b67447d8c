//! Provider records other nodes publish to this one, stored with an address that reaches them.
//!
//! Kademlia's `ADD_PROVIDER` carries the provider's *external* addresses, which Shoal nodes do not
//! have (no autonat; a DaemonSet node just listens on its node IP). Stored as is, the record has
//! no address, and kad answers `GET_PROVIDERS` for it only while the provider is in the storing
//! node's routing table. Up to ~50 nodes every routing table holds every node, so that went
//! unnoticed; from ~100 nodes on the far k-buckets are full, kad keeps the peers it met first,
//! and a node that joined later is in almost no full bucket: its records were stored and then
//! silently left out of every answer (measured: keys of late joiners unfindable at 100 nodes).
//!
//! Kad therefore hands inbound `ADD_PROVIDER`s to the node (`StoreInserts::FilterBoth`), which
//! stores them with the provider's addresses as this node knows them: the IP it sees the
//! provider at with the provider's listen port first (the same "address we demonstrably reach"
//! rule as for mirrors, see the crate docs), then the other addresses identify announced.
//! Value records (`PUT_VALUE`) are filtered out by the same switch: Shoal uses none.
//!
//! A key's list is bounded (`MAX_PROVIDERS_PER_KEY`). Kad's store ignores providers beyond the
//! bound, so a popular key's list would keep the first nodes that published it, departed or
//! not, until their records expire; here the least recently published one makes room instead.
//! Live providers re-publish every `reprovide_interval`, so the list converges on live nodes.

use std::time::Instant;

use libp2p::kad::ProviderRecord;
use libp2p::kad::store::RecordStore;
use libp2p::{Multiaddr, PeerId};

use crate::node::{Node, socket_addr, socket_multiaddr};
use crate::store::MAX_PROVIDERS_PER_KEY;

/// Most addresses stored per provider record.
const MAX_RECORD_ADDRS: usize = 4;

impl Node {
    /// An inbound `ADD_PROVIDER` (kad already checked that the sender is the provider).
    pub(crate) fn on_add_provider(&mut self, mut record: ProviderRecord) {
        let known = self.dialable_addrs(&record.provider);
        if !known.is_empty() {
            record.addresses = known;
        }
        record.addresses.truncate(MAX_RECORD_ADDRS);
        let local = self.local;
        let store = self.swarm.behaviour_mut().kad.store_mut();
        // A full list keeps the most recently published providers: kad's store would drop the
        // newcomer instead, and keep departed nodes' records until they expire.
        let held = store.providers(&record.key);
        if held.len() >= MAX_PROVIDERS_PER_KEY
            && !held.iter().any(|p| p.provider == record.provider)
        {
            if let Some(oldest) = held
                .iter()
                .filter(|p| p.provider != local)
                .min_by_key(|p| p.expires)
            {
                store.remove_provider(&record.key, &oldest.provider);
            }
        }
        if let Err(e) = store.add_provider(record) {
            tracing::debug!(error = %e, "provider record not stored");
        }
    }

    /// Drops expired provider records (kad itself drops them only when their key is asked for,
    /// so records of departed nodes for keys nobody asks for would stay).
    pub(crate) fn sweep_records(&mut self) {
        let gone = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .sweep(Instant::now());
        if gone > 0 {
            tracing::debug!(records = gone, "expired provider records dropped");
        }
    }

    /// Addresses at which `peer` can be dialled, best first; empty when we know none.
    pub(crate) fn dialable_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let Some(state) = self.peers.get(peer) else {
            return Vec::new();
        };
        let remote_is_loopback = state.ip.is_some_and(|ip| ip.is_loopback());
        let listen: Vec<_> = state
            .listen_addrs
            .iter()
            .filter_map(socket_addr)
            .filter(|sa| {
                !sa.ip().is_unspecified() && (remote_is_loopback || !sa.ip().is_loopback())
            })
            .collect();
        let mut out: Vec<Multiaddr> = Vec::new();
        if let (Some(ip), Some(port)) = (state.ip, listen.first().map(|sa| sa.port())) {
            // The IP we see it at, with its listen port (an inbound connection's remote port is
            // an ephemeral one). Preferably a port it listens on at exactly that IP.
            let port = listen
                .iter()
                .find(|sa| sa.ip() == ip)
                .map_or(port, |sa| sa.port());
            out.push(socket_multiaddr(std::net::SocketAddr::new(ip, port)));
        }
        for sa in listen {
            let ma = socket_multiaddr(sa);
            if !out.contains(&ma) {
                out.push(ma);
            }
        }
        out.truncate(MAX_RECORD_ADDRS);
        out
    }
}
