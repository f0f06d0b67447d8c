//! A cluster of in-process nodes shaped like the DaemonSet: every node has its own IP
//! (`127.10.x.y`, one per node, all on port 5001 like `hostNetwork` pods), bootstraps from a
//! `dns:` name whose answers, like a headless Service's, list live nodes (here a few random
//! ones per answer, so no single seed carries the cluster), keeps its identity in a data
//! directory across restarts, and leaves by stopping (its connections close).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use shoal_p2p::{Bootstrap, Config, Handle, Key, ResolveError, Resolver};
use tokio::task::JoinHandle;

use crate::workload::Rng;

pub const PORT: u16 = 5001;
const DNS_NAME: &str = "shoal.kube-system.svc.cluster.local";
/// Addresses per DNS answer.
const ANSWER: usize = 5;

/// The headless Service: live node addresses; each answer is a few random ones.
#[derive(Debug)]
pub struct Dns {
    live: Mutex<(Vec<SocketAddr>, Rng)>,
}

impl Dns {
    fn set(&self, addr: SocketAddr, live: bool) {
        let mut g = self.live.lock().unwrap();
        g.0.retain(|a| *a != addr);
        if live {
            g.0.push(addr);
        }
    }
}

impl Resolver for Dns {
    fn resolve<'a>(
        &'a self,
        _name: &'a str,
        _port: u16,
    ) -> BoxFuture<'a, Result<Vec<SocketAddr>, ResolveError>> {
        let mut g = self.live.lock().unwrap();
        let (live, rng) = &mut *g;
        let mut out = Vec::new();
        for _ in 0..ANSWER.min(live.len()) * 2 {
            let a = live[rng.below(live.len())];
            if !out.contains(&a) && out.len() < ANSWER {
                out.push(a);
            }
        }
        Box::pin(async move { Ok(out) })
    }
}

pub struct Member {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub keys: BTreeSet<Key>,
    pub node: Option<(Handle, JoinHandle<()>)>,
}

impl Member {
    pub fn handle(&self) -> Option<&Handle> {
        self.node.as_ref().map(|(h, _)| h)
    }
}

pub struct Cluster {
    pub dns: Arc<Dns>,
    pub members: Vec<Member>,
    root: tempfile::TempDir,
}

/// Node `i`'s address: its own loopback IP, the default port.
pub fn addr_of(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 10, (i / 250) as u8, (i % 250 + 1) as u8);
    SocketAddr::new(IpAddr::V4(ip), PORT)
}

impl Cluster {
    pub fn new(seed: u64) -> Self {
        Cluster {
            dns: Arc::new(Dns {
                live: Mutex::new((Vec::new(), Rng(seed))),
            }),
            members: Vec::new(),
            root: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Adds a member (not started) with a fresh identity; returns its index.
    pub fn add(&mut self, keys: BTreeSet<Key>) -> usize {
        let i = self.members.len();
        let dir = self.root.path().join(format!("node-{i}"));
        std::fs::create_dir_all(&dir).expect("node dir");
        self.members.push(Member {
            addr: addr_of(i),
            dir,
            keys,
            node: None,
        });
        i
    }

    /// Starts member `i` (same identity as before, if it ran before): spawn, then listed in DNS.
    pub async fn start(&mut self, i: usize) {
        let m = &mut self.members[i];
        let cfg = Config {
            listen: vec![m.addr],
            mirror_port: 5000,
            bootstrap: vec![Bootstrap::Dns {
                name: DNS_NAME.into(),
                port: PORT,
            }],
            data_dir: Some(m.dir.clone()),
            resolver: Some(self.dns.clone()),
            ..Config::default()
        };
        let node = shoal_p2p::spawn(cfg).await.expect("node starts");
        m.node = Some(node);
        self.dns.set(m.addr, true);
    }

    /// Stops member `i`: out of DNS, then the node stops and its connections close.
    pub async fn stop(&mut self, i: usize) {
        let m = &mut self.members[i];
        self.dns.set(m.addr, false);
        if let Some((h, task)) = m.node.take() {
            h.shutdown().await;
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].node.is_some())
            .collect()
    }

    /// Waits until member `i` reports ready; returns how long that took.
    pub async fn wait_ready(&self, i: usize, limit: Duration) -> Result<Duration, String> {
        let h = self.members[i].handle().expect("started");
        let t = Instant::now();
        loop {
            let st = h.status().await.map_err(|e| e.to_string())?;
            if st.ready && st.routing_table_size > 0 {
                return Ok(t.elapsed());
            }
            if t.elapsed() > limit {
                return Err(format!(
                    "node {i} not ready after {limit:?}: {}",
                    st.ready_reason
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until no live node has publications pending or in flight; returns the time taken.
    pub async fn wait_published(&self, limit: Duration) -> Result<Duration, String> {
        let t = Instant::now();
        loop {
            let mut pending = 0;
            for i in self.live() {
                let st = self.members[i].handle().unwrap().status().await;
                pending += st.map_err(|e| e.to_string())?.pending_publications;
            }
            if pending == 0 {
                return Ok(t.elapsed());
            }
            if t.elapsed() > limit {
                return Err(format!("{pending} publications pending after {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
