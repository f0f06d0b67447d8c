//! Private networks: nodes with a different key (or none) never connect.

mod common;

use std::time::Duration;

use common::*;
use shoal_p2p::{Bootstrap, PreSharedKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_psk_never_connects() {
    let key_a = PreSharedKey::new([7; 32]);
    let key_b = PreSharedKey::new([8; 32]);
    let nodes = mesh(3, 21_000, |c| c.psk = Some(key_a)).await;
    let seed = nodes[0].handle.listen_addrs()[0].clone();
    let wanted = digest_key(42);
    nodes[1].handle.provide(vec![wanted.clone()]).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "same-key nodes find the key",
        || async { find_all(&nodes[2].handle, &wanted).await.len() == 1 },
    )
    .await;

    // One node with another key, one with none, both bootstrapping from the same seed.
    let mut outsiders = Vec::new();
    for (i, psk) in [Some(key_b), None].into_iter().enumerate() {
        let mut cfg = test_config(21_100 + i as u16);
        cfg.psk = psk;
        cfg.bootstrap = vec![Bootstrap::Static(seed.clone())];
        outsiders.push(start(cfg).await);
    }
    let theirs = digest_key(43);
    outsiders[0]
        .handle
        .provide(vec![theirs.clone()])
        .await
        .unwrap();
    // Give them several redial periods (dns_refresh = 200 ms redials statics too).
    tokio::time::sleep(Duration::from_secs(2)).await;

    for o in &outsiders {
        // Bootstrap ends and finds nobody: a lone node becomes ready. Under load the refused
        // handshake can take longer than the sleep above, hence a bounded wait.
        wait_until(Duration::from_secs(10), "outsider ready alone", || async {
            o.handle.status().await.unwrap().ready
        })
        .await;
        let st = o.handle.status().await.unwrap();
        assert!(st.peers.is_empty(), "outsider connected: {:?}", st.peers);
        assert_eq!(st.routing_table_size, 0);
        assert!(find_all(&o.handle, &wanted).await.is_empty());
    }
    let outsider_ids: Vec<_> = outsiders.iter().map(|o| o.handle.peer_id()).collect();
    for n in &nodes {
        let st = n.handle.status().await.unwrap();
        assert!(st.peers.iter().all(|p| !outsider_ids.contains(&p.peer_id)));
        assert!(find_all(&n.handle, &theirs).await.is_empty());
    }
}
