//! Provider lookups.
//!
//! A lookup is one Kademlia `GET_PROVIDERS` query. Kademlia tells us provider *peer ids* as
//! responses arrive; a provider is yielded once we hold a connection to it and identify told us
//! its mirror port, so every yielded address is one we could just reach. For a provider we are
//! not connected to, the lookup dials it (kad knows the addresses the query learned) and yields
//! it when identify arrives, or drops it if the dial fails. Departed nodes are therefore never
//! yielded, whatever the record TTL.
//!
//! Results go out with `try_send` into a channel sized `max_providers`, and a lookup ends after
//! `max_providers` results, so the channel cannot be full while the lookup lives; should it be
//! anyway, the lookup ends rather than wait. Nothing here ever awaits a reader.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Instant;

use libp2p::PeerId;
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult, RecordKey};
use libp2p::swarm::DialError;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::Provider;
use crate::node::Node;

pub(crate) struct Find {
    tx: mpsc::Sender<Provider>,
    label: String,
    seen: HashSet<PeerId>,
    /// Providers found but not yet identified (dialling, or identify pending).
    waiting: HashSet<PeerId>,
    kad_done: bool,
    emitted: usize,
    started: Instant,
}

impl Node {
    pub(crate) fn start_find(&mut self, key: RecordKey, label: String, tx: mpsc::Sender<Provider>) {
        let id = self.swarm.behaviour_mut().kad.get_providers(key);
        tracing::trace!(key = %label, query = ?id, "lookup started");
        self.finds.insert(
            id,
            Find {
                tx,
                label,
                seen: HashSet::new(),
                waiting: HashSet::new(),
                kad_done: false,
                emitted: 0,
                started: Instant::now(),
            },
        );
    }

    pub(crate) fn on_kad_event(&mut self, ev: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = ev
        else {
            match ev {
                kad::Event::RoutingUpdated { peer, .. } => {
                    tracing::trace!(peer = %peer, "routing table updated");
                    self.publish_after_first_peer();
                }
                kad::Event::InboundRequest { request } => {
                    self.traffic
                        .kad_request(matches!(request, kad::InboundRequest::AddProvider { .. }));
                    if let kad::InboundRequest::AddProvider {
                        record: Some(record),
                    } = request
                    {
                        self.on_add_provider(record);
                    }
                }
                _ => {}
            }
            return;
        };
        match result {
            QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders { providers, .. })) => {
                self.on_providers(id, providers);
                if step.last {
                    self.kad_finished(id);
                }
            }
            QueryResult::GetProviders(Ok(GetProvidersOk::FinishedWithNoAdditionalRecord {
                ..
            })) => self.kad_finished(id),
            QueryResult::GetProviders(Err(e)) => {
                tracing::debug!(query = ?id, error = %e, "lookup ended with an error");
                self.kad_finished(id);
            }
            QueryResult::StartProviding(r) => self.on_published(id, r.is_ok()),
            _ => {}
        }
    }

    fn on_providers(&mut self, id: QueryId, providers: HashSet<PeerId>) {
        let Some(find) = self.finds.get_mut(&id) else {
            return;
        };
        let mut ready = Vec::new();
        let mut dial = Vec::new();
        for p in providers {
            if p == self.local || !find.seen.insert(p) {
                continue;
            }
            match self.peers.get(&p) {
                Some(state) if state.mirror().is_some() => {
                    ready.extend(state.mirror().map(|m| (p, m)))
                }
                connected => {
                    find.waiting.insert(p);
                    self.awaiting.entry(p).or_default().push(id);
                    if connected.is_none() {
                        dial.push(p);
                    }
                }
            }
        }
        for (peer_id, mirror) in ready {
            self.emit(id, Provider { peer_id, mirror });
        }
        for p in dial {
            let opts = DialOpts::peer_id(p)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            match self.swarm.dial(opts) {
                Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
                Err(e) => {
                    tracing::debug!(peer = %p, error = %e, "cannot dial provider");
                    self.provider_unreachable(p);
                }
            }
        }
    }

    /// A provider some lookup waited for is now identified: yield it.
    pub(crate) fn provider_identified(&mut self, peer: PeerId, mirror: SocketAddr) {
        for id in self.awaiting.remove(&peer).unwrap_or_default() {
            if let Some(f) = self.finds.get_mut(&id) {
                f.waiting.remove(&peer);
                self.emit(
                    id,
                    Provider {
                        peer_id: peer,
                        mirror,
                    },
                );
                self.maybe_complete(id);
            }
        }
    }

    /// A provider some lookup waited for cannot be reached: stop waiting for it.
    pub(crate) fn provider_unreachable(&mut self, peer: PeerId) {
        for id in self.awaiting.remove(&peer).unwrap_or_default() {
            if let Some(f) = self.finds.get_mut(&id) {
                f.waiting.remove(&peer);
                self.maybe_complete(id);
            }
        }
    }

    fn emit(&mut self, id: QueryId, provider: Provider) {
        let Some(f) = self.finds.get_mut(&id) else {
            return;
        };
        match f.tx.try_send(provider) {
            Ok(()) => {
                f.emitted += 1;
                if f.emitted >= self.cfg.max_providers {
                    self.end_find(id, "enough providers");
                }
            }
            Err(TrySendError::Full(_)) => {
                tracing::warn!(key = %f.label, "lookup reader too slow; ending lookup");
                self.end_find(id, "reader too slow");
            }
            Err(TrySendError::Closed(_)) => self.end_find(id, "reader gone"),
        }
    }

    fn kad_finished(&mut self, id: QueryId) {
        if let Some(f) = self.finds.get_mut(&id) {
            f.kad_done = true;
            self.maybe_complete(id);
        }
    }

    fn maybe_complete(&mut self, id: QueryId) {
        if self
            .finds
            .get(&id)
            .is_some_and(|f| f.kad_done && f.waiting.is_empty())
        {
            self.end_find(id, "lookup finished");
        }
    }

    /// Ends a lookup: its stream ends (the sender is dropped) and the kad query stops.
    fn end_find(&mut self, id: QueryId, why: &'static str) {
        let Some(f) = self.finds.remove(&id) else {
            return;
        };
        for p in &f.waiting {
            if let Some(ids) = self.awaiting.get_mut(p) {
                ids.retain(|q| *q != id);
                if ids.is_empty() {
                    self.awaiting.remove(p);
                }
            }
        }
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            q.finish();
        }
        tracing::debug!(
            key = %f.label,
            providers = f.emitted,
            elapsed_ms = f.started.elapsed().as_secs_f64() * 1e3,
            why,
            "lookup done"
        );
    }

    /// Ends lookups past `query_timeout` and lookups whose reader went away.
    pub(crate) fn expire_finds(&mut self, now: Instant) {
        let timeout = self.cfg.query_timeout;
        let expired: Vec<(QueryId, &'static str)> = self
            .finds
            .iter()
            .filter_map(|(id, f)| {
                if f.tx.is_closed() {
                    Some((*id, "reader gone"))
                } else if now.duration_since(f.started) >= timeout {
                    Some((*id, "timed out"))
                } else {
                    None
                }
            })
            .collect();
        for (id, why) in expired {
            self.end_find(id, why);
        }
    }
}
