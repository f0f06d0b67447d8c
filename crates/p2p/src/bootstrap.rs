//! Finding the first peers: static addresses, DNS names (re-resolved periodically: the
//! DaemonSet's headless Service), mDNS. Also tracks the first bootstrap round for readiness.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use crate::error::ResolveError;
use crate::node::{Node, socket_addr, socket_multiaddr};
use crate::{Bootstrap, Resolver, SystemResolver};

/// Bound on one resolution, so a dead DNS server cannot hold the first round forever.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct DnsAnswer {
    name: String,
    result: Result<Vec<SocketAddr>, ResolveError>,
}

/// The first bootstrap round: dials and first resolutions not yet concluded.
#[derive(Default)]
pub(crate) struct BootState {
    pending_dials: HashSet<ConnectionId>,
    pending_names: HashSet<String>,
    statics: Vec<(Multiaddr, Option<PeerId>)>,
}

impl BootState {
    pub fn dial_finished(&mut self, id: ConnectionId, _connected: bool) {
        self.pending_dials.remove(&id);
    }

    /// What the first round still waits for, or `None` once it is over.
    pub fn waiting_for(&self) -> Option<String> {
        if self.pending_dials.is_empty() && self.pending_names.is_empty() {
            return None;
        }
        let mut names: Vec<&str> = self.pending_names.iter().map(String::as_str).collect();
        names.sort_unstable();
        Some(format!(
            "{} dial(s) pending, resolving [{}]",
            self.pending_dials.len(),
            names.join(", ")
        ))
    }
}

impl Node {
    pub(crate) fn start_bootstrap(&mut self) {
        let mut resolver: Option<Arc<dyn Resolver>> = self.cfg.resolver.clone();
        for b in self.cfg.bootstrap.clone() {
            match b {
                Bootstrap::Static(ma) => {
                    // Not added to kad up front: the routing table (and so readiness) only
                    // gains peers we actually reached; kad adds them once connected.
                    self.boot.statics.push(Bootstrap::split_static(&ma));
                }
                Bootstrap::Dns { name, port } => {
                    let r = match &resolver {
                        Some(r) => r.clone(),
                        None => match SystemResolver::new() {
                            Ok(r) => {
                                let r: Arc<dyn Resolver> = Arc::new(r);
                                resolver = Some(r.clone());
                                r
                            }
                            Err(e) => {
                                tracing::error!(%e, bootstrap = %name, "no DNS resolver; skipping");
                                continue;
                            }
                        },
                    };
                    self.boot.pending_names.insert(name.clone());
                    let tx = self.dns_tx.clone();
                    let refresh = self.cfg.dns_refresh;
                    self.dns_tasks
                        .spawn(resolve_loop(r, name, port, refresh, tx));
                }
                Bootstrap::Mdns => {}
            }
        }
        self.dial_statics(true);
    }

    /// Periodic: dial static bootstrap nodes we are not connected to.
    pub(crate) fn redial_static(&mut self) {
        self.dial_statics(false);
    }

    fn dial_statics(&mut self, first_round: bool) {
        for (addr, peer) in self.boot.statics.clone() {
            let connected = match peer {
                Some(p) => self.peers.contains_key(&p),
                None => socket_addr(&addr).is_some_and(|sa| self.is_connected_to(sa)),
            };
            if connected || socket_addr(&addr).is_some_and(|sa| self.is_own(sa)) {
                continue;
            }
            let opts = match peer {
                Some(p) => DialOpts::peer_id(p)
                    .addresses(vec![addr.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
                None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
            };
            self.dial_bootstrap(opts, &addr, first_round);
        }
    }

    fn dial_bootstrap(&mut self, opts: DialOpts, addr: &Multiaddr, first_round: bool) {
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) if first_round => {
                self.boot.pending_dials.insert(id);
            }
            Ok(()) => {}
            Err(e) => tracing::debug!(%addr, error = %e, "bootstrap dial not started"),
        }
    }

    pub(crate) fn dial_known(&mut self, peer: PeerId, addr: Multiaddr) {
        if peer == self.local || self.peers.contains_key(&peer) {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(vec![addr])
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(peer = %peer, error = %e, "dial not started");
        }
    }

    pub(crate) fn on_dns(&mut self, answer: DnsAnswer) {
        let first_round = self.boot.pending_names.remove(&answer.name);
        let addrs = match answer.result {
            Ok(addrs) => addrs,
            Err(e) => {
                // Counted as "found nobody" for readiness; retried at the next refresh.
                tracing::warn!(bootstrap = %answer.name, error = %e, "bootstrap name did not resolve");
                return;
            }
        };
        tracing::debug!(bootstrap = %answer.name, ?addrs, "bootstrap name resolved");
        for sa in addrs {
            let sa = SocketAddr::new(sa.ip().to_canonical(), sa.port());
            if self.is_own(sa) || self.is_connected_to(sa) {
                continue;
            }
            let ma = socket_multiaddr(sa);
            let opts = DialOpts::unknown_peer_id().address(ma.clone()).build();
            self.dial_bootstrap(opts, &ma, first_round);
        }
    }
}

async fn resolve_loop(
    resolver: Arc<dyn Resolver>,
    name: String,
    port: u16,
    refresh: Duration,
    tx: mpsc::Sender<DnsAnswer>,
) {
    loop {
        let result =
            match tokio::time::timeout(RESOLVE_TIMEOUT, resolver.resolve(&name, port)).await {
                Ok(r) => r,
                Err(_) => Err(ResolveError {
                    name: name.clone(),
                    reason: format!("no answer within {RESOLVE_TIMEOUT:?}"),
                }),
            };
        let answer = DnsAnswer {
            name: name.clone(),
            result,
        };
        if tx.send(answer).await.is_err() {
            return;
        }
        tokio::time::sleep(refresh).await;
    }
}
