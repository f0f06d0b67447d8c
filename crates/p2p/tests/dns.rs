//! `dns:` bootstrap through an injected resolver: dial everything resolved, skip ourselves,
//! re-resolve periodically.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::future::BoxFuture;
use shoal_p2p::{Bootstrap, ResolveError, Resolver};

/// Answers with whatever the test put in, counting queries.
#[derive(Debug, Default)]
struct TestResolver {
    answer: Mutex<Vec<SocketAddr>>,
    queries: Mutex<usize>,
}

impl Resolver for TestResolver {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        _port: u16,
    ) -> BoxFuture<'a, Result<Vec<SocketAddr>, ResolveError>> {
        assert_eq!(name, "shoal.test.svc");
        *self.queries.lock().unwrap() += 1;
        let answer = self.answer.lock().unwrap().clone();
        Box::pin(async move { Ok(answer) })
    }
}

fn sock(h: &shoal_p2p::Handle) -> SocketAddr {
    let s = h.listen_addrs()[0].to_string();
    // /ip4/127.0.0.1/tcp/<port>/p2p/<id>
    let port: u16 = s.split('/').nth(4).unwrap().parse().unwrap();
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_bootstrap_finds_peers_and_re_resolves() {
    let resolver = Arc::new(TestResolver::default());
    let dns_cfg = |port: u16| {
        let mut c = test_config(port);
        c.bootstrap = vec!["dns:shoal.test.svc:5001".parse::<Bootstrap>().unwrap()];
        c.resolver = Some(resolver.clone());
        c
    };

    // First node: the name resolves to nobody yet; a lone node is ready.
    let a = start(dns_cfg(22_000)).await;
    wait_until(Duration::from_secs(5), "lone node ready", || async {
        a.handle.status().await.unwrap().ready
    })
    .await;
    let st = a.handle.status().await.unwrap();
    assert!(
        st.ready_reason.contains("no other node"),
        "{}",
        st.ready_reason
    );

    // The name now lists a, then b starts: b resolves [a, b] and dials a only.
    resolver.answer.lock().unwrap().push(sock(&a.handle));
    let b = start(dns_cfg(22_001)).await;
    resolver.answer.lock().unwrap().push(sock(&b.handle));
    wait_until(Duration::from_secs(5), "b connects to a", || async {
        let st = b.handle.status().await.unwrap();
        st.ready && st.peers.iter().any(|p| p.peer_id == a.handle.peer_id())
    })
    .await;

    // A third node started while the name lists only itself is ready alone, then joins once
    // re-resolution (200 ms) shows the others.
    let c_resolver = Arc::new(TestResolver::default());
    let mut cfg = test_config(22_002);
    cfg.bootstrap = vec!["dns:shoal.test.svc".parse::<Bootstrap>().unwrap()];
    cfg.resolver = Some(c_resolver.clone());
    let c = start(cfg).await;
    c_resolver.answer.lock().unwrap().push(sock(&c.handle));
    wait_until(Duration::from_secs(5), "c ready alone", || async {
        let st = c.handle.status().await.unwrap();
        st.ready && st.peers.is_empty()
    })
    .await;
    c_resolver
        .answer
        .lock()
        .unwrap()
        .extend([sock(&a.handle), sock(&b.handle)]);
    wait_until(
        Duration::from_secs(5),
        "c joins after re-resolution",
        || async { c.handle.status().await.unwrap().peers.len() == 2 },
    )
    .await;
    assert!(*c_resolver.queries.lock().unwrap() >= 2);

    // And the DHT works across them.
    let key = digest_key(9);
    a.handle.provide(vec![key.clone()]).await.unwrap();
    wait_until(Duration::from_secs(5), "c finds a's key", || async {
        let found = find_all(&c.handle, &key).await;
        found.len() == 1 && found[0].mirror == mirror_of(&a)
    })
    .await;
    // Nobody dialled itself.
    for n in [&a, &b, &c] {
        let st = n.handle.status().await.unwrap();
        assert!(st.peers.iter().all(|p| p.peer_id != n.handle.peer_id()));
    }
}
