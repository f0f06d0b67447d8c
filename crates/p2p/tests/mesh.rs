//! A 20-node loopback mesh: provide/find from every node, slow readers, withdraw, node loss.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_node_mesh() {
    let nodes = mesh(20, 20_000, |_| {}).await;

    // Provided on one node, found from every other one, with that node's mirror endpoint.
    let key = digest_key(1);
    let tag: shoal_p2p::Key = "docker.io/library/nginx:1.27".parse().unwrap();
    let provider = &nodes[7];
    provider
        .handle
        .provide(vec![key.clone(), tag.clone()])
        .await
        .unwrap();
    for (i, n) in nodes.iter().enumerate() {
        if i == 7 {
            // A node never lists itself.
            assert!(find_all(&n.handle, &key).await.is_empty());
            continue;
        }
        wait_until(
            Duration::from_secs(10),
            &format!("node {i} finds key"),
            || async {
                let found = find_all(&n.handle, &key).await;
                found.len() == 1
                    && found[0].peer_id == provider.handle.peer_id()
                    && found[0].mirror == mirror_of(provider)
            },
        )
        .await;
        let found = find_all(&n.handle, &tag).await;
        assert_eq!(found.len(), 1, "node {i} finds the tag key");
    }
    let st = provider.handle.status().await.unwrap();
    assert_eq!(st.provided_keys, 2);
    assert!(st.routing_table_size > 0);
    assert!(st.peers.iter().all(|p| p.mirror.is_some()));

    // Several providers of one key: all found, deduplicated.
    let shared = digest_key(2);
    for n in &nodes[10..14] {
        n.handle.provide(vec![shared.clone()]).await.unwrap();
    }
    wait_until(Duration::from_secs(10), "four providers found", || async {
        let found = find_all(&nodes[0].handle, &shared).await;
        let mut ids: Vec<_> = found.iter().map(|p| p.peer_id).collect();
        ids.sort();
        ids.dedup();
        found.len() == 4 && ids.len() == 4
    })
    .await;

    // A reader that never reads does not stall the swarm: other lookups and status still work.
    let finder = &nodes[3].handle;
    let stalled: Vec<_> = futures::future::join_all((0..5).map(|_| finder.find_providers(&shared)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let t = Instant::now();
    for _ in 0..20 {
        assert_eq!(find_all(finder, &key).await.len(), 1);
    }
    finder.status().await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "lookups slowed: {:?}",
        t.elapsed()
    );
    // The unread streams hold their results and end.
    for s in stalled {
        let got: Vec<_> = tokio::time::timeout(Duration::from_secs(5), s.collect::<Vec<_>>())
            .await
            .unwrap();
        assert!(!got.is_empty() && got.len() <= 4);
    }

    // Withdrawn: gone locally at once, from everyone within the record TTL (3 s).
    assert_eq!(
        provider.handle.withdraw(vec![key.clone()]).await.unwrap(),
        1
    );
    assert_eq!(provider.handle.status().await.unwrap().provided_keys, 1);
    let withdrawn_at = Instant::now();
    wait_until(
        Duration::from_secs(8),
        "withdrawn key disappears",
        || async {
            find_all(&nodes[0].handle, &key).await.is_empty()
                && find_all(&nodes[19].handle, &key).await.is_empty()
        },
    )
    .await;
    eprintln!("withdrawn key gone after {:?}", withdrawn_at.elapsed());
    // The other key of that node is still found (re-provided past the TTL).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(find_all(&nodes[0].handle, &tag).await.len(), 1);

    // A stopped node stops being returned (within the TTL; in fact as soon as it is gone).
    let stopped = &nodes[12];
    stopped.handle.shutdown().await;
    let stop_at = Instant::now();
    wait_until(
        Duration::from_secs(4),
        "stopped node no longer returned",
        || async {
            let found = find_all(&nodes[1].handle, &shared).await;
            found.len() == 3 && found.iter().all(|p| p.peer_id != stopped.handle.peer_id())
        },
    )
    .await;
    eprintln!("stopped node gone after {:?}", stop_at.elapsed());

    for n in &nodes {
        n.handle.shutdown().await;
    }
}
