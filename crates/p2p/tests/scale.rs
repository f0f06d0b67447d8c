//! Beyond twice the size of a k-bucket (20), a node's far buckets are full of the peers it met
//! first, so a node that joined last is in no storing node's far bucket. Its keys must still be
//! found: the nodes storing its provider records answer with an address for it (issue 18).
//!
//! Without that, a late joiner's key was unfindable whenever the key's first bit differed from
//! the joiner's id (the joiner then sits in every storing node's full top bucket): about half of
//! its keys at 60 nodes, three quarters at 100 (both measured).

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use shoal_p2p::{Handle, Key, PeerId};

/// Top buckets hold 20; at 60 nodes the top one has ~30 candidates, so it is full.
const NODES: usize = 60;
const LATE: usize = 8;
const LOOKERS: usize = 8;

/// Whether a lookup from `h` yields `provider`. Generous bound: the machine may be loaded.
async fn finds(h: &Handle, key: &Key, provider: PeerId) -> bool {
    let stream = h.find_providers(key).await.unwrap();
    let all = tokio::time::timeout(Duration::from_secs(60), stream.collect::<Vec<_>>())
        .await
        .expect("lookup stream ends within 60 s");
    all.iter().any(|p| p.peer_id == provider)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_the_last_nodes_to_join_are_found_from_every_node() {
    // SHOAL_SCALE_NODES: a larger mesh for investigation (the default is the CI size).
    let n: usize = std::env::var("SHOAL_SCALE_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(NODES);
    let nodes = mesh(n, 22_000, |c| {
        // Production lifetimes (no re-publication during the test); lookups may take long on a
        // loaded machine: the test is about whether keys are found, not how fast.
        c.record_ttl = Duration::from_secs(1800);
        c.reprovide_interval = Duration::from_secs(600);
        c.query_timeout = Duration::from_secs(30);
        c.dial_timeout = Duration::from_secs(10);
    })
    .await;
    let late = &nodes[n - LATE..];
    for (i, n) in late.iter().enumerate() {
        n.handle.provide(vec![digest_key(i as u64)]).await.unwrap();
    }
    for n in late {
        wait_until(Duration::from_secs(30), "publications started", || async {
            n.handle.status().await.unwrap().pending_publications == 0
        })
        .await;
    }
    // The publications in flight: a walk and one message per storing node.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut misses = Vec::new();
    for (i, provider) in late.iter().enumerate() {
        let key = digest_key(i as u64);
        for j in 0..LOOKERS {
            let looker = (i * 7 + j * 13) % (n - LATE);
            if !finds(&nodes[looker].handle, &key, provider.handle.peer_id()).await {
                misses.push((n - LATE + i, looker));
            }
        }
    }
    assert!(
        misses.is_empty(),
        "(provider, looker) pairs where the provider was not found: {misses:?}"
    );
    for n in nodes {
        n.handle.shutdown().await;
    }
}
