//! The libp2p stack: TCP (+ optional private-network handshake) + noise + yamux, and the
//! behaviours (Kademlia, identify, ping, optional mDNS) composed into one.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport};
use libp2p::core::upgrade;
use libp2p::futures::{AsyncRead, AsyncWrite};
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{PeerId, StreamProtocol, identify, kad, mdns, noise, ping, tcp, yamux};

use crate::store::Store;
use crate::traffic::{Counted, Counters};
use crate::{Config, Error};

/// Shoal's own Kademlia protocol: Shoal nodes never join (or get confused with) another DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/kad/1.0.0");
/// Reported in identify's protocol version.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/shoal/1.0.0";
const MIRROR_PORT_TAG: &str = "mirror-port/";
/// Deadline of every kad query. Lookups are ended sooner by the node (`Config::query_timeout`,
/// see `find`); this bounds publications. Kad sends `ADD_PROVIDER` only once the closest-peers
/// walk has *finished*: a walk cut short by the deadline publishes nothing at all. With 5 s (the
/// lookup bound, once used for both) a walk slowed by one unresponsive peer among the closest
/// (kad waits 10 s for it) or by a busy node lost the publication until the next round.
pub(crate) const PUBLISH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub kad: kad::Behaviour<Store>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub keep: crate::keep::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

/// The identify agent version, which carries our mirror port: `shoal/<ver> mirror-port/<port>`.
pub fn agent_version(mirror_port: u16) -> String {
    format!(
        "shoal/{} {MIRROR_PORT_TAG}{mirror_port}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The mirror port announced in a peer's agent version, if it is a Shoal node.
pub fn parse_mirror_port(agent_version: &str) -> Option<u16> {
    agent_version
        .split_whitespace()
        .find_map(|t| t.strip_prefix(MIRROR_PORT_TAG))
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0)
}

pub(crate) fn build_transport(
    keypair: &Keypair,
    psk: Option<PreSharedKey>,
    timeout: Duration,
    counters: Arc<Counters>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Error> {
    let tcp =
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)).map(move |inner, _| {
            Counted {
                inner,
                counters: counters.clone(),
            }
        });
    match psk {
        // The pnet handshake runs on the raw socket before anything else: a peer without the
        // key cannot even negotiate a protocol.
        Some(psk) => secure(
            tcp.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket)),
            keypair,
            timeout,
        ),
        None => secure(tcp, keypair, timeout),
    }
}

fn secure<T>(
    base: T,
    keypair: &Keypair,
    timeout: Duration,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Error>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    let noise = noise::Config::new(keypair).map_err(|e| Error::Transport(e.to_string()))?;
    Ok(base
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(timeout)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

pub(crate) fn build_behaviour(
    keypair: &Keypair,
    cfg: &Config,
    mdns_on: bool,
) -> Result<Behaviour, Error> {
    let peer_id = keypair.public().to_peer_id();
    let store = Store::new(peer_id, cfg.max_stored_keys);
    let mut kcfg = kad::Config::new(KAD_PROTOCOL);
    kcfg.set_query_timeout(PUBLISH_TIMEOUT.max(cfg.query_timeout))
        .set_parallelism(NonZeroUsize::new(cfg.parallelism).unwrap_or(kad::ALPHA_VALUE))
        .set_provider_record_ttl(Some(cfg.record_ttl))
        // Re-publication is driven by the node (paced, skips withdrawn keys), not by kad's job.
        .set_provider_publication_interval(None)
        // Shoal stores no value records; disable their background jobs.
        .set_replication_interval(None)
        .set_publication_interval(None)
        // Inbound ADD_PROVIDERs are stored by the node, with an address (see `records`).
        .set_record_filtering(kad::StoreInserts::FilterBoth);
    let mut kad = kad::Behaviour::with_config(peer_id, store, kcfg);
    // Without autonat kad would stay a client on private addresses and answer nobody.
    kad.set_mode(Some(kad::Mode::Server));

    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL_VERSION.to_owned(), keypair.public())
            .with_agent_version(agent_version(cfg.mirror_port)),
    );
    let ping = ping::Behaviour::new(
        ping::Config::new()
            .with_interval(cfg.ping_interval)
            .with_timeout(cfg.ping_timeout),
    );
    let mdns = if mdns_on {
        Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id).map_err(Error::Mdns)?)
    } else {
        None
    };
    Ok(Behaviour {
        kad,
        identify,
        ping,
        keep: crate::keep::Behaviour::default(),
        mdns: mdns.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_version_carries_the_mirror_port() {
        assert_eq!(parse_mirror_port(&agent_version(5000)), Some(5000));
        assert_eq!(parse_mirror_port("rust-libp2p/0.57"), None);
        assert_eq!(parse_mirror_port("shoal/0.1.0 mirror-port/0"), None);
        assert_eq!(parse_mirror_port("shoal/0.1.0 mirror-port/x"), None);
    }
}
