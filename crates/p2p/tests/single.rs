//! One or two nodes: readiness, IPv6, identity persistence, limits, and bulk provides.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shoal_p2p::{Bootstrap, Config, Error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_is_ready() {
    let n = start(test_config(23_000)).await;
    let st = n.handle.status().await.unwrap();
    assert!(st.ready, "{}", st.ready_reason);
    assert!(st.peers.is_empty());
    // Lookups on a lone node answer "nobody" at once.
    let t = Instant::now();
    assert!(find_all(&n.handle, &digest_key(1)).await.is_empty());
    assert!(t.elapsed() < Duration::from_millis(500));
    n.handle.shutdown().await;
    n.task.await.unwrap();
    assert!(matches!(n.handle.status().await, Err(Error::Shutdown)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_static_bootstrap_still_becomes_ready() {
    let mut cfg = test_config(23_001);
    // Nothing listens on port 1 of loopback: the dial is refused at once.
    cfg.bootstrap = vec!["static:/ip4/127.0.0.1/tcp/1".parse::<Bootstrap>().unwrap()];
    let n = start(cfg).await;
    wait_until(
        Duration::from_secs(5),
        "ready after failed bootstrap",
        || async { n.handle.status().await.unwrap().ready },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_mirror_address_is_bracketed() {
    let mut cfg = test_config(23_010);
    cfg.listen = vec!["[::1]:0".parse().unwrap()];
    let a = start(cfg).await;
    let mut cfg = test_config(23_011);
    cfg.listen = vec!["[::1]:0".parse().unwrap()];
    cfg.bootstrap = vec![Bootstrap::Static(a.handle.listen_addrs()[0].clone())];
    let b = start(cfg).await;
    let key = digest_key(6);
    a.handle.provide(vec![key.clone()]).await.unwrap();
    wait_until(Duration::from_secs(5), "found over IPv6", || async {
        let found = find_all(&b.handle, &key).await;
        found.len() == 1 && found[0].mirror.to_string() == "[::1]:23010"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_persists_in_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || Config {
        data_dir: Some(dir.path().to_owned()),
        ..test_config(23_020)
    };
    let a = start(cfg()).await;
    let id = a.handle.peer_id();
    a.handle.shutdown().await;
    a.task.await.unwrap();
    let b = start(cfg()).await;
    assert_eq!(b.handle.peer_id(), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provide_limit_is_enforced() {
    let mut cfg = test_config(23_030);
    cfg.max_provided_keys = 10;
    let n = start(cfg).await;
    assert_eq!(
        n.handle
            .provide((0..10).map(digest_key).collect())
            .await
            .unwrap(),
        10
    );
    // Re-providing known keys is a no-op, not a limit error.
    assert_eq!(n.handle.provide(vec![digest_key(3)]).await.unwrap(), 0);
    let e = n.handle.provide(vec![digest_key(99)]).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooManyKeys {
                current: 10,
                max: 10,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providing_ten_thousand_keys_does_not_block_lookups() {
    let nodes = mesh(5, 23_100, |c| {
        c.reprovide_interval = Duration::from_secs(60);
        c.record_ttl = Duration::from_secs(120);
    })
    .await;
    let present = digest_key(1_000_000);
    nodes[4]
        .handle
        .provide(vec![present.clone()])
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "key found", || async {
        find_all(&nodes[1].handle, &present).await.len() == 1
    })
    .await;

    let bulk: Vec<_> = (0..10_000).map(digest_key).collect();
    let t = Instant::now();
    assert_eq!(nodes[1].handle.provide(bulk).await.unwrap(), 10_000);
    let accept = t.elapsed();
    assert!(
        accept < Duration::from_secs(2),
        "provide call took {accept:?}"
    );
    // While the 10,000 publications run, lookups from the same node stay fast.
    let st = nodes[1].handle.status().await.unwrap();
    assert!(
        st.pending_publications > 1_000,
        "publications already drained?"
    );
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(find_all(&nodes[1].handle, &present).await.len(), 1);
        worst = worst.max(t.elapsed());
    }
    eprintln!("provide accepted in {accept:?}; worst lookup during publication {worst:?}");
    assert!(worst < Duration::from_secs(1), "lookup took {worst:?}");
    let st = nodes[1].handle.status().await.unwrap();
    assert_eq!(st.provided_keys, 10_000);
}
