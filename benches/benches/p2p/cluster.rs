//! A cluster shaped like the DaemonSet: every node has its own IP (`127.10.x.y`, one per node,
//! all on port 5001 like `hostNetwork` pods), bootstraps from a `dns:` name whose answers, like
//! a headless Service's, list live nodes (a few random ones per answer, so no single seed
//! carries the cluster), keeps its identity in a data directory across restarts, and leaves by
//! stopping (its connections close). The nodes run in worker processes (`worker.rs`), node `i`
//! in worker `i % workers`, so joiners spread over them.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_p2p::Key;

use crate::worker::{Link, PORT, Stat};

pub struct Member {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub keys: BTreeSet<Key>,
    pub live: bool,
}

pub struct Cluster {
    pub members: Vec<Member>,
    pub workers: Vec<Link>,
    root: tempfile::TempDir,
}

/// Node `i`'s address: its own loopback IP, the default port. The second octet comes from the
/// coordinator's pid (`127.10-209.x.y`), so two runs on one machine (say `cargo test` in two
/// checkouts) do not fight over the same addresses.
pub fn addr_of(i: usize) -> SocketAddr {
    let run = 10 + (std::process::id() % 200) as u8;
    let ip = Ipv4Addr::new(127, run, (i / 250) as u8, (i % 250 + 1) as u8);
    SocketAddr::new(IpAddr::V4(ip), PORT)
}

/// One node, wherever it runs.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    link: &'a Link,
    i: usize,
}

impl Node<'_> {
    pub async fn provide(&self, keys: &[Key]) {
        self.link.provide(self.i, keys, false).await
    }

    pub async fn withdraw(&self, keys: &[Key]) {
        self.link.provide(self.i, keys, true).await
    }

    /// Time to the first provider, and whether there was one.
    pub async fn lookup(&self, key: &Key) -> (Duration, bool) {
        self.link.lookup(self.i, key).await
    }

    pub async fn status(&self) -> Stat {
        self.link.status(self.i).await
    }
}

impl Cluster {
    pub fn new(seed: u64, workers: usize) -> Self {
        Cluster {
            members: Vec::new(),
            workers: (0..workers.max(1))
                .map(|w| Link::spawn(seed ^ w as u64))
                .collect(),
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
            live: false,
        });
        i
    }

    pub fn node(&self, i: usize) -> Node<'_> {
        assert!(self.members[i].live, "node {i} is not running");
        Node {
            link: &self.workers[i % self.workers.len()],
            i,
        }
    }

    /// Every worker process's pid.
    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.pid).collect()
    }

    /// Starts member `i` (same identity as before, if it ran before): spawn, then listed in DNS.
    pub async fn start(&mut self, i: usize) {
        let w = i % self.workers.len();
        let m = &mut self.members[i];
        self.workers[w].start(i, m.addr, &m.dir).await;
        m.live = true;
        let addr = m.addr;
        self.dns(addr, true).await;
    }

    /// Stops member `i`: out of DNS, then the node stops and its connections close.
    pub async fn stop(&mut self, i: usize) {
        let addr = self.members[i].addr;
        self.dns(addr, false).await;
        self.members[i].live = false;
        self.workers[i % self.workers.len()].stop(i).await;
    }

    async fn dns(&self, addr: SocketAddr, live: bool) {
        for w in &self.workers {
            w.dns(addr, live).await;
        }
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].live)
            .collect()
    }

    /// Worst p99 lateness of a 10 ms timer over the workers since the last call.
    pub async fn lag_p99(&self) -> f64 {
        let mut worst = f64::NAN;
        for w in &self.workers {
            worst = worst.max(w.lag_p99().await);
        }
        worst
    }

    /// Waits until member `i` reports ready; returns how long that took.
    pub async fn wait_ready(&self, i: usize, limit: Duration) -> Result<Duration, String> {
        let t = Instant::now();
        loop {
            let st = self.node(i).status().await;
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
                pending += self.node(i).status().await.pending_publications;
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
