//! Shoal's peer-to-peer routing: advertise which node holds which content, and find it.
//!
//! A node runs libp2p (TCP + optional private-network key + noise + yamux) with Kademlia in
//! server mode under Shoal's own protocol (`/shoal/kad/1.0.0`), identify and ping. One task owns
//! the `Swarm` ([`spawn`]); the rest of the daemon holds a cloneable [`Handle`] that sends
//! commands over a bounded channel and gets replies on oneshots.
//!
//! # Keys
//! A [`Key`] (digest or tag) is advertised under the Kademlia record key
//! `sha256("shoal/v1/" + key)`; see [`record_key`].
//!
//! # Where a provider's mirror is
//! Kademlia's provider lookups yield peer ids only. Each node announces its HTTP mirror port in
//! its identify agent version (`shoal/<ver> mirror-port/<port>`), so ports may differ per node.
//! The IP is the remote IP of our connection to that node: an address we demonstrably reach it
//! at (or that it reached us from), rather than one of the many interface addresses it might list.
//! A provider is therefore yielded only while we are connected to it; a lookup dials providers
//! it is not connected to. In a Kubernetes DaemonSet with `hostNetwork` the IP is the node IP.
//!
//! # Lifetimes
//! See [`Config`] for the TTL / re-provide defaults and their justification.

mod bootstrap;
mod config;
mod error;
mod find;
mod handle;
mod identity;
mod keep;
mod key;
mod liveness;
mod node;
mod psk;
mod publish;
mod records;
mod resolver;
mod store;
mod traffic;
mod transport;

pub use config::{Bootstrap, Config, DEFAULT_P2P_PORT};
pub use error::{BootstrapParseError, Error, ResolveError};
pub use handle::{Handle, PeerInfo, Provider, ProviderStream, Status};
pub use identity::IDENTITY_FILE;
pub use key::{KEY_NAMESPACE, record_key};
pub use libp2p::pnet::PreSharedKey;
pub use libp2p::{Multiaddr, PeerId};
pub use node::spawn;
pub use psk::{format_psk, load_psk, parse_psk, psk_secret};
pub use resolver::{Resolver, SystemResolver};
pub use shoal_oci::Key;
pub use traffic::Traffic;
pub use transport::{KAD_PROTOCOL, agent_version, parse_mirror_port};
