//! The swarm task: owns the `Swarm`, serves commands from [`Handle`]s, and reacts to network
//! events. Lookups, publication and bootstrap live in sibling modules as further `impl Node`
//! blocks; this one holds the loop, connection bookkeeping, identify and readiness.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use libp2p::kad::QueryId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, mdns};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::bootstrap::{BootState, DnsAnswer};
use crate::find::Find;
use crate::handle::{COMMAND_BUFFER, Command, Handle, PeerInfo, Status};
use crate::liveness::Liveness;
use crate::publish::Publisher;
use crate::traffic::Counters;
use crate::transport::{self, Behaviour, BehaviourEvent, KAD_PROTOCOL};
use crate::{Bootstrap, Config, Error, identity};

/// What we know about a connected peer. Dropped when its last connection closes, which is what
/// keeps departed nodes out of lookup results.
pub(crate) struct PeerState {
    pub connections: HashMap<ConnectionId, Multiaddr>,
    pub first_addr: Multiaddr,
    pub ip: Option<IpAddr>,
    pub since: SystemTime,
    pub rtt: Option<Duration>,
    pub mirror_port: Option<u16>,
    pub listen_addrs: Vec<Multiaddr>,
}

impl PeerState {
    /// Where this peer's mirror listens: the IP we see it at, and the port it announced.
    pub fn mirror(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.ip?, self.mirror_port?))
    }
}

/// How often the kept connection set follows the routing table.
const KEEP_REFRESH: Duration = Duration::from_secs(1);
/// How often expired provider records are dropped (one scan of every stored key).
const STORE_SWEEP: Duration = Duration::from_secs(60);

pub(crate) struct Node {
    pub swarm: Swarm<Behaviour>,
    pub local: PeerId,
    pub cfg: Config,
    pub commands: mpsc::Receiver<Command>,
    pub dns_tx: mpsc::Sender<DnsAnswer>,
    pub dns_rx: mpsc::Receiver<DnsAnswer>,
    pub dns_tasks: JoinSet<()>,
    pub peers: HashMap<PeerId, PeerState>,
    pub finds: HashMap<QueryId, Find>,
    /// Lookups waiting for a provider's identify (its mirror port) or for a dial to it.
    pub awaiting: HashMap<PeerId, Vec<QueryId>>,
    pub publish: Publisher,
    pub boot: BootState,
    pub listen_addrs: Vec<Multiaddr>,
    pub liveness: Liveness,
    pub traffic: Arc<Counters>,
}

/// Starts a node: binds every listen address, then runs the swarm on its own task.
/// Returns once the node is listening.
pub async fn spawn(config: Config) -> Result<(Handle, JoinHandle<()>), Error> {
    config.validate()?;
    let keypair = identity::load_or_create(config.data_dir.as_deref())?;
    let local = keypair.public().to_peer_id();
    let mdns_on = config.bootstrap.contains(&Bootstrap::Mdns);
    let traffic = Arc::new(Counters::default());
    let transport =
        transport::build_transport(&keypair, config.psk, config.dial_timeout, traffic.clone())?;
    let behaviour = transport::build_behaviour(&keypair, &config, mdns_on)?;
    let swarm_cfg = libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(config.idle_connection_timeout);
    let mut swarm = Swarm::new(transport, behaviour, local, swarm_cfg);

    let mut pending = HashMap::new();
    for sa in &config.listen {
        let ma = socket_multiaddr(*sa);
        let id = swarm.listen_on(ma).map_err(|e| Error::Listen {
            addr: sa.to_string(),
            reason: e.to_string(),
        })?;
        pending.insert(id, *sa);
    }
    let mut listen_addrs = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    while !pending.is_empty() {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    pending.remove(&listener_id);
                    listen_addrs.push(address);
                }
                SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                    let addr = pending.get(&listener_id).map(ToString::to_string).unwrap_or_default();
                    let reason = reason.err().map(|e| e.to_string()).unwrap_or("closed".into());
                    return Err(Error::Listen { addr, reason });
                }
                SwarmEvent::ListenerError { listener_id, error } => {
                    let addr = pending.get(&listener_id).map(ToString::to_string).unwrap_or_default();
                    return Err(Error::Listen { addr, reason: error.to_string() });
                }
                _ => {}
            },
            _ = &mut deadline => {
                let addrs: Vec<String> = pending.values().map(ToString::to_string).collect();
                return Err(Error::Listen { addr: addrs.join(", "), reason: "no listen address reported within 10 s".into() });
            }
        }
    }
    tracing::info!(peer = %local, addrs = ?listen_addrs, mirror_port = config.mirror_port, "p2p node listening");

    let (tx, commands) = mpsc::channel(COMMAND_BUFFER);
    let (dns_tx, dns_rx) = mpsc::channel(16);
    let handle = Handle {
        tx,
        peer_id: local,
        listen_addrs: Arc::new(
            listen_addrs
                .iter()
                .map(|a| a.clone().with(Protocol::P2p(local)))
                .collect(),
        ),
        max_providers: config.max_providers,
    };
    let node = Node {
        swarm,
        local,
        cfg: config,
        commands,
        dns_tx,
        dns_rx,
        dns_tasks: JoinSet::new(),
        peers: HashMap::new(),
        finds: HashMap::new(),
        awaiting: HashMap::new(),
        publish: Publisher::default(),
        boot: BootState::default(),
        listen_addrs,
        liveness: Liveness::default(),
        traffic,
    };
    let task = tokio::spawn(node.run());
    Ok((handle, task))
}

impl Node {
    async fn run(mut self) {
        self.start_bootstrap();
        let mut housekeeping = tokio::time::interval(Duration::from_millis(100));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = tokio::time::Instant::now();
        let mut reprovide = tokio::time::interval_at(
            start + self.cfg.reprovide_interval,
            self.cfg.reprovide_interval,
        );
        let mut redial =
            tokio::time::interval_at(start + self.cfg.dns_refresh, self.cfg.dns_refresh);
        let mut keep = tokio::time::interval(KEEP_REFRESH);
        keep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval_at(start + STORE_SWEEP, STORE_SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => break,
                    Some(cmd) => self.on_command(cmd),
                },
                Some(answer) = self.dns_rx.recv() => self.on_dns(answer),
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                _ = housekeeping.tick() => {
                    self.expire_finds(Instant::now());
                    self.close_silent(Instant::now());
                }
                _ = reprovide.tick() => self.republish_round(),
                _ = redial.tick() => self.redial_static(),
                _ = keep.tick() => self.refresh_kept(),
                _ = sweep.tick() => self.sweep_records(),
            }
            self.pump_publications();
        }
        self.dns_tasks.abort_all();
        tracing::info!(peer = %self.local, "p2p node stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Provide { keys, reply } => {
                let _ = reply.send(self.on_provide(keys));
            }
            Command::Withdraw { keys, reply } => {
                let _ = reply.send(self.on_withdraw(keys));
            }
            Command::Find { key, label, tx } => self.start_find(key, label, tx),
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Shutdown => {}
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } if !self.listen_addrs.contains(&address) => {
                tracing::debug!(addr = %address, "listening on new address");
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let remote = endpoint.get_remote_address().clone();
                tracing::debug!(peer = %peer_id, addr = %remote, "connected");
                self.boot.dial_finished(connection_id, true);
                let state = self.peers.entry(peer_id).or_insert_with(|| PeerState {
                    connections: HashMap::new(),
                    first_addr: remote.clone(),
                    ip: multiaddr_ip(&remote),
                    since: SystemTime::now(),
                    rtt: None,
                    mirror_port: None,
                    listen_addrs: Vec::new(),
                });
                state.connections.insert(connection_id, remote);
                self.liveness.opened(connection_id, peer_id, Instant::now());
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.liveness.closed(connection_id);
                if num_established == 0 {
                    tracing::debug!(peer = %peer_id, "disconnected");
                    self.peers.remove(&peer_id);
                    self.provider_unreachable(peer_id);
                } else if let Some(s) = self.peers.get_mut(&peer_id) {
                    s.connections.remove(&connection_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
                self.boot.dial_finished(connection_id, false);
                if let Some(p) = peer_id.filter(|p| !self.peers.contains_key(p)) {
                    self.provider_unreachable(p);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.on_identified(peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ev)) => match ev.result {
                Ok(rtt) => {
                    self.liveness.answered(ev.connection, Instant::now());
                    if let Some(s) = self.peers.get_mut(&ev.peer) {
                        s.rtt = Some(rtt);
                    }
                }
                Err(error) => {
                    tracing::info!(peer = %ev.peer, %error, "pings fail; closing the connection");
                    self.swarm.close_connection(ev.connection);
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    self.dial_known(peer, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => self.on_kad_event(ev),
            _ => {}
        }
    }

    /// See [`Liveness`]: connections that stopped answering pings are closed.
    fn close_silent(&mut self, now: Instant) {
        let limit = self.cfg.ping_interval + self.cfg.ping_timeout;
        for (id, peer) in self.liveness.silent(now, limit) {
            tracing::info!(peer = %peer, silent_for = ?limit, "peer stopped answering pings; closing the connection");
            self.swarm.close_connection(id);
        }
    }

    fn on_identified(&mut self, peer: PeerId, info: identify::Info) {
        let port = transport::parse_mirror_port(&info.agent_version);
        let speaks_kad = info.protocols.contains(&KAD_PROTOCOL);
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        state.mirror_port = port;
        state.listen_addrs = info.listen_addrs.clone();
        let remote_is_loopback = state.ip.is_some_and(|ip| ip.is_loopback());
        let mirror = state.mirror();
        if speaks_kad {
            // Identify is how kad learns dialable addresses of peers that dialled us. Loopback
            // addresses of a remote host would lead to ourselves, so they are skipped then.
            for addr in info.listen_addrs {
                let usable = socket_addr(&addr).is_some_and(|sa| {
                    !sa.ip().is_unspecified() && (remote_is_loopback || !sa.ip().is_loopback())
                });
                if usable {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                }
            }
        }
        match mirror {
            Some(ep) => self.provider_identified(peer, ep),
            None => {
                tracing::debug!(peer = %peer, agent = %info.agent_version, "peer announces no mirror port");
                self.provider_unreachable(peer);
            }
        }
    }

    /// The connections kept open while idle follow the routing table and connection ages (see
    /// `keep` and `Config::kept_connections`).
    fn refresh_kept(&mut self) {
        let table: Vec<PeerId> = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
            .collect();
        let connected: Vec<(PeerId, SystemTime)> =
            self.peers.iter().map(|(p, s)| (*p, s.since)).collect();
        let kept = crate::keep::choose(&table, connected, self.cfg.kept_connections);
        self.swarm.behaviour_mut().keep.set(kept);
    }

    pub(crate) fn routing_table_size(&mut self) -> usize {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum()
    }

    fn readiness(&mut self) -> (bool, String) {
        let rt = self.routing_table_size();
        if rt > 0 {
            return (true, format!("routing table has {rt} peer(s)"));
        }
        if let Some(waiting) = self.boot.waiting_for() {
            return (false, format!("bootstrapping: {waiting}"));
        }
        if self.peers.is_empty() {
            (
                true,
                "bootstrap found no other node; running as a one-node cluster".to_owned(),
            )
        } else {
            (
                false,
                format!(
                    "connected to {} peer(s), none in the routing table yet",
                    self.peers.len()
                ),
            )
        }
    }

    fn status(&mut self) -> Status {
        let (ready, ready_reason) = self.readiness();
        let routing_table_size = self.routing_table_size();
        let peers = self
            .peers
            .iter()
            .map(|(id, s)| PeerInfo {
                peer_id: *id,
                addr: s.first_addr.clone(),
                connected_since: s.since,
                rtt: s.rtt,
                mirror: s.mirror(),
            })
            .collect();
        Status {
            peer_id: self.local,
            listen_addrs: self.listen_addrs.clone(),
            ready,
            ready_reason,
            peers,
            routing_table_size,
            provided_keys: self.publish.provided_len(),
            stored_keys: self.swarm.behaviour_mut().kad.store_mut().keys(),
            pending_publications: self.publish.pending_len(),
            traffic: self.traffic.snapshot(),
        }
    }

    /// Whether `sa` is one of our own listen addresses (DNS answers include this node).
    pub(crate) fn is_own(&self, sa: SocketAddr) -> bool {
        self.listen_addrs
            .iter()
            .filter_map(socket_addr)
            .any(|own| own == sa)
    }

    /// Whether we already hold a connection to the node listening at `sa`.
    pub(crate) fn is_connected_to(&self, sa: SocketAddr) -> bool {
        self.peers.values().any(|s| {
            s.connections
                .values()
                .chain(s.listen_addrs.iter())
                .filter_map(socket_addr)
                .any(|a| a == sa)
        })
    }
}

/// `/ip4/a.b.c.d/tcp/p` or `/ip6/.../tcp/p` for a socket address.
pub(crate) fn socket_multiaddr(sa: SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(match sa.ip() {
            IpAddr::V4(ip) => Protocol::Ip4(ip),
            IpAddr::V6(ip) => Protocol::Ip6(ip),
        })
        .with(Protocol::Tcp(sa.port()))
}

/// The IP of a multiaddr starting with `/ip4` or `/ip6` (IPv4-mapped IPv6 made plain IPv4).
pub(crate) fn multiaddr_ip(ma: &Multiaddr) -> Option<IpAddr> {
    match ma.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip).to_canonical()),
        _ => None,
    }
}

/// The IP and TCP port of a multiaddr, if it has both.
pub(crate) fn socket_addr(ma: &Multiaddr) -> Option<SocketAddr> {
    let ip = multiaddr_ip(ma)?;
    match ma.iter().nth(1)? {
        Protocol::Tcp(port) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}
