//! The cheap, cloneable handle the rest of the daemon uses to talk to the swarm task.
//!
//! Every call sends one command over a bounded channel and, where it needs an answer, waits on a
//! oneshot. Lookups stream their results over a bounded per-lookup channel that the swarm task
//! only ever `try_send`s into, so a slow reader can never stall the swarm.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::Stream;
use libp2p::kad::RecordKey;
use libp2p::{Multiaddr, PeerId};
use shoal_oci::Key;
use tokio::sync::{mpsc, oneshot};

use crate::{Error, Traffic, record_key};

/// A node that provides a key, and where its mirror listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Provider {
    pub peer_id: PeerId,
    /// IP and mirror port; `Display` brackets IPv6 (`[fd00::1]:5000`).
    pub mirror: SocketAddr,
}

/// A connected peer, as reported by [`Handle::status`].
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    /// Remote address of the first connection to it.
    pub addr: Multiaddr,
    pub connected_since: SystemTime,
    /// Last ping round-trip time.
    pub rtt: Option<Duration>,
    /// Its mirror endpoint, once identify told us its port.
    pub mirror: Option<SocketAddr>,
}

/// A snapshot of the node.
#[derive(Debug, Clone)]
pub struct Status {
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    /// Ready once the routing table has a peer, or bootstrap found nobody but this node.
    pub ready: bool,
    pub ready_reason: String,
    pub peers: Vec<PeerInfo>,
    pub routing_table_size: usize,
    pub provided_keys: usize,
    /// Keys this node stores provider records for (its own and other nodes').
    pub stored_keys: usize,
    /// Publications not finished: waiting for a free slot or in flight (new keys and
    /// re-publications).
    pub pending_publications: usize,
    /// What this node exchanged with other nodes since it started.
    pub traffic: Traffic,
}

pub(crate) enum Command {
    Provide {
        keys: Vec<RecordKey>,
        reply: oneshot::Sender<Result<usize, Error>>,
    },
    Withdraw {
        keys: Vec<RecordKey>,
        reply: oneshot::Sender<usize>,
    },
    Find {
        key: RecordKey,
        label: String,
        tx: mpsc::Sender<Provider>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Shutdown,
}

/// Capacity of the command channel: callers wait (asynchronously) beyond this.
pub(crate) const COMMAND_BUFFER: usize = 1024;

/// Handle to a running node. Clone freely; the node stops when every handle is dropped or
/// [`Handle::shutdown`] is called.
#[derive(Clone)]
pub struct Handle {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) peer_id: PeerId,
    pub(crate) listen_addrs: Arc<Vec<Multiaddr>>,
    pub(crate) max_providers: usize,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("peer_id", &self.peer_id)
            .field("listen_addrs", &self.listen_addrs)
            .finish()
    }
}

impl Handle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses the node listened on at start (ports resolved), each with `/p2p/<id>`.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Starts advertising `keys`. Returns once the keys are stored locally and queued for
    /// publication (returns the number of keys that were new), not when every publication is done:
    /// publishing thousands of keys takes seconds and is paced so lookups keep flowing.
    pub async fn provide(&self, keys: Vec<Key>) -> Result<usize, Error> {
        let keys = keys.iter().map(record_key).collect();
        let (reply, rx) = oneshot::channel();
        self.send(Command::Provide { keys, reply }).await?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Stops advertising `keys` and removes them from the local store; returns how many were
    /// provided. Other nodes forget them when their records expire (`record_ttl`).
    pub async fn withdraw(&self, keys: Vec<Key>) -> Result<usize, Error> {
        let keys = keys.iter().map(record_key).collect();
        let (reply, rx) = oneshot::channel();
        self.send(Command::Withdraw { keys, reply }).await?;
        rx.await.map_err(|_| Error::Shutdown)
    }

    /// Looks up providers of `key`. Providers are yielded as they are found; the stream ends when
    /// the lookup finishes, times out (`query_timeout`) or reaches `max_providers`. Duplicates
    /// and this node are left out. Dropping the stream cancels the lookup.
    pub async fn find_providers(&self, key: &Key) -> Result<ProviderStream, Error> {
        let (tx, rx) = mpsc::channel(self.max_providers);
        let cmd = Command::Find {
            key: record_key(key),
            label: key.to_string(),
            tx,
        };
        self.send(cmd).await?;
        Ok(ProviderStream { rx })
    }

    pub async fn status(&self) -> Result<Status, Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Status { reply }).await?;
        rx.await.map_err(|_| Error::Shutdown)
    }

    /// Asks the node to stop; await the `JoinHandle` from [`crate::spawn`] to know it has.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
    }

    async fn send(&self, cmd: Command) -> Result<(), Error> {
        self.tx.send(cmd).await.map_err(|_| Error::Shutdown)
    }
}

/// Providers of one lookup, as they arrive.
#[derive(Debug)]
pub struct ProviderStream {
    rx: mpsc::Receiver<Provider>,
}

impl Stream for ProviderStream {
    type Item = Provider;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Provider>> {
        self.rx.poll_recv(cx)
    }
}
