//! Helpers shared by the in-process, loopback-only p2p tests.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_p2p::{Bootstrap, Config, Handle, Key, Provider};
use tokio::task::JoinHandle;

pub struct TestNode {
    pub handle: Handle,
    pub task: JoinHandle<()>,
    pub mirror_port: u16,
}

/// Short lifetimes so expiry is observable within a test.
pub fn test_config(mirror_port: u16) -> Config {
    Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        mirror_port,
        record_ttl: Duration::from_secs(3),
        reprovide_interval: Duration::from_secs(1),
        dns_refresh: Duration::from_millis(200),
        query_timeout: Duration::from_secs(3),
        dial_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

pub async fn start(cfg: Config) -> TestNode {
    let mirror_port = cfg.mirror_port;
    let (handle, task) = shoal_p2p::spawn(cfg).await.expect("node starts");
    TestNode {
        handle,
        task,
        mirror_port,
    }
}

/// `n` nodes; every node after the first bootstraps statically from the first.
pub async fn mesh(n: usize, base_port: u16, tweak: impl Fn(&mut Config)) -> Vec<TestNode> {
    let mut cfg = test_config(base_port);
    tweak(&mut cfg);
    let first = start(cfg).await;
    let seed = first.handle.listen_addrs()[0].clone();
    let mut nodes = vec![first];
    for i in 1..n {
        let mut cfg = test_config(base_port + i as u16);
        cfg.bootstrap = vec![Bootstrap::Static(seed.clone())];
        tweak(&mut cfg);
        nodes.push(start(cfg).await);
    }
    for node in &nodes {
        wait_until(Duration::from_secs(10), "node ready", || async {
            node.handle.status().await.unwrap().ready
        })
        .await;
    }
    nodes
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every provider a lookup yields.
pub async fn find_all(h: &Handle, key: &Key) -> Vec<Provider> {
    let stream = h.find_providers(key).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
        .await
        .expect("lookup stream ends within 10 s")
}

pub fn digest_key(n: u64) -> Key {
    format!("sha256:{:064x}", n).parse().unwrap()
}

pub fn mirror_of(node: &TestNode) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node.mirror_port))
}
