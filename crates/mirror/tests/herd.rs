//! The cold-rollout election between real mirror routers on loopback: the first node to miss a
//! blob is elected to fetch it upstream, the next streams it from the first one's download in
//! progress; a fetcher that never serves costs a bounded wait and hands the role over; bytes
//! still downloading go only to peers, and only for blobs the local containerd asked for.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use common::*;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use http::StatusCode;
use shoal_mirror::{
    BlobInfo, ByteStream, Descriptor, EventLog, FetchEventKind, Growing, LocalPeer, LocalStore,
    MirrorConfig, MirrorState, Provider, Providers, router,
};
use shoal_oci::{Digest, Key, TagKey};

const SIZE: usize = 5 * 1024 * 1024 + 77;

/// A store holding nothing committed, with blobs "being written": served in 256 KiB chunks,
/// one every few milliseconds, like an upstream download in progress.
#[derive(Default)]
struct Downloading {
    blobs: Mutex<Vec<(Digest, Bytes)>>,
}

impl LocalStore for Downloading {
    fn stat<'a>(&'a self, _: &'a Digest) -> BoxFuture<'a, Option<BlobInfo>> {
        async { None }.boxed()
    }
    fn read<'a>(
        &'a self,
        _: &'a Digest,
        _: u64,
        _: Option<u64>,
    ) -> BoxFuture<'a, std::io::Result<ByteStream>> {
        async { Err(std::io::Error::other("nothing committed")) }.boxed()
    }
    fn resolve_tag<'a>(&'a self, _: &'a TagKey) -> BoxFuture<'a, Option<Descriptor>> {
        async { None }.boxed()
    }
    fn growing<'a>(&'a self, digest: &'a Digest, offset: u64) -> BoxFuture<'a, Option<Growing>> {
        let found = self
            .blobs
            .lock()
            .unwrap()
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, b)| b.clone());
        async move {
            let data = found?;
            let total = data.len() as u64;
            let rest = data.slice(offset as usize..);
            let chunks: Vec<Bytes> = rest.chunks(256 * 1024).map(|c| rest.slice_ref(c)).collect();
            let stream = futures::stream::iter(chunks)
                .then(|c| async move {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    Ok(c)
                })
                .boxed();
            Some(Growing { total, stream })
        }
        .boxed()
    }
}

/// A DHT where nobody provides anything, and this node sees `peers`.
struct Cluster {
    me: LocalPeer,
    peers: Mutex<Vec<Provider>>,
}

impl Providers for Cluster {
    fn find(&self, _: &Key) -> BoxStream<'static, Provider> {
        futures::stream::pending().boxed()
    }
    fn local(&self) -> Option<LocalPeer> {
        Some(self.me.clone())
    }
    fn connected(&self) -> BoxFuture<'static, Vec<Provider>> {
        let peers = self.peers.lock().unwrap().clone();
        async move { peers }.boxed()
    }
}

struct Node {
    name: &'static str,
    addr: SocketAddr,
    state: MirrorState,
    store: Arc<Downloading>,
    cluster: Arc<Cluster>,
    log: Arc<EventLog>,
}

fn cfg(wait: Duration) -> MirrorConfig {
    MirrorConfig {
        small_blob_threshold: 1024 * 1024,
        herd_wait: wait,
        ..config()
    }
}

/// A mirror serving on loopback (with the peer's address visible to the claim route).
async fn node(name: &'static str, cfg: MirrorConfig, spool: &tempfile::TempDir) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = Arc::new(Downloading::default());
    let cluster = Arc::new(Cluster {
        me: LocalPeer {
            peer: name.into(),
            mirror_port: addr.port(),
        },
        peers: Mutex::new(Vec::new()),
    });
    let log = Arc::new(EventLog::new(1000));
    let cfg = MirrorConfig {
        spool_dir: spool.path().join(name),
        ..cfg
    };
    let state = MirrorState::builder(cfg, store.clone(), cluster.clone())
        .events(log.clone())
        .ingest(FakeIngest::new())
        .build()
        .unwrap();
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Node {
        name,
        addr,
        state,
        store,
        cluster,
        log,
    }
}

/// Two nodes that see each other.
async fn pair(wait: Duration) -> (Node, Node, tempfile::TempDir) {
    let spool = spool_dir();
    let a = node("node-a", cfg(wait), &spool).await;
    let b = node("node-b", cfg(wait), &spool).await;
    for (x, y) in [(&a, &b), (&b, &a)] {
        x.cluster.peers.lock().unwrap().push(Provider {
            peer: y.name.into(),
            addr: y.addr,
        });
    }
    (a, b, spool)
}

/// A GET from the node's own containerd.
async fn local_get(n: &Node, d: &Digest) -> Answer {
    send(&router(n.state.clone()), get(&blob_uri(d))).await
}

fn herd_events(n: &Node, d: &Digest) -> Vec<FetchEventKind> {
    n.log
        .for_key(&d.to_string())
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| {
            matches!(
                k,
                FetchEventKind::HerdFetch { .. }
                    | FetchEventKind::HerdWait { .. }
                    | FetchEventKind::HerdGaveUp { .. }
            )
        })
        .collect()
}

#[tokio::test]
async fn the_second_node_to_miss_streams_the_blob_from_the_first_ones_download() {
    let (a, b, _spool) = pair(Duration::from_secs(2)).await;
    let blob = Bytes::from(data(SIZE, 3));
    let d = Digest::sha256_of(&blob);
    // A misses first: elected, it answers 404 and its containerd goes upstream…
    let first = local_get(&a, &d).await;
    assert_eq!(first.status, StatusCode::NOT_FOUND);
    assert!(matches!(
        herd_events(&a, &d)[..],
        [FetchEventKind::HerdFetch { .. }]
    ));
    // …and its ingest starts growing.
    a.store
        .blobs
        .lock()
        .unwrap()
        .push((d.clone(), blob.clone()));
    let second = local_get(&b, &d).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.ok_body(), &blob, "B got the blob, verified");
    assert!(matches!(
        herd_events(&b, &d)[..],
        [FetchEventKind::HerdWait { .. }]
    ));
    let from_a = b.log.for_key(&d.to_string());
    assert!(
        from_a.iter().any(|e| e.peer.as_deref() == Some("node-a")
            && matches!(e.kind, FetchEventKind::Verified { .. })),
        "{from_a:?}"
    );
    let served = a.state.metrics().encode();
    assert!(
        served.contains(&format!("shoal_mirror_in_flight_bytes_total {SIZE}")),
        "{served}"
    );
}

#[tokio::test]
async fn a_fetcher_that_never_serves_costs_one_bounded_wait_and_hands_over() {
    let wait = Duration::from_millis(600);
    let (a, b, _spool) = pair(wait).await;
    let d = Digest::sha256_of(b"never downloaded");
    assert_eq!(local_get(&a, &d).await.status, StatusCode::NOT_FOUND);
    // A never starts serving: B waits at most `herd_wait`, then fetches upstream itself.
    let t = Instant::now();
    assert_eq!(local_get(&b, &d).await.status, StatusCode::NOT_FOUND);
    let waited = t.elapsed();
    assert!(
        waited >= wait.mul_f32(0.8) && waited < wait + Duration::from_secs(1),
        "{waited:?}"
    );
    assert!(matches!(
        herd_events(&b, &d)[..],
        [FetchEventKind::HerdGaveUp { .. }]
    ));
    // B reported A as failed, so B is the fetcher now: its next miss does not wait again.
    let t = Instant::now();
    assert_eq!(local_get(&b, &d).await.status, StatusCode::NOT_FOUND);
    assert!(t.elapsed() < wait / 2, "{:?}", t.elapsed());
    assert!(matches!(
        herd_events(&b, &d)[..],
        [_, FetchEventKind::HerdFetch { .. }]
    ));
}

#[tokio::test]
async fn with_no_peers_or_no_wait_a_miss_is_an_immediate_404() {
    let spool = spool_dir();
    for wait in [Duration::ZERO, Duration::from_secs(5)] {
        let n = node("alone", cfg(wait), &spool).await;
        let d = Digest::sha256_of(format!("{wait:?}").as_bytes());
        let t = Instant::now();
        assert_eq!(local_get(&n, &d).await.status, StatusCode::NOT_FOUND);
        assert!(t.elapsed() < Duration::from_millis(500));
        assert!(herd_events(&n, &d).is_empty());
    }
}

#[tokio::test]
async fn bytes_still_downloading_go_to_peers_only_for_blobs_asked_locally() {
    let spool = spool_dir();
    let n = node("holder", cfg(Duration::ZERO), &spool).await;
    let blob = Bytes::from(data(300_000, 9));
    let d = Digest::sha256_of(&blob);
    n.store
        .blobs
        .lock()
        .unwrap()
        .push((d.clone(), blob.clone()));
    let peer_get = || {
        http::Request::get(blob_uri(&d))
            .header(shoal_mirror::PEER_HEADER, "1")
            .body(Body::empty())
            .unwrap()
    };
    let r = router(n.state.clone());
    // containerd never asked for it (say, an image from a registry outside the allowlist).
    assert_eq!(send(&r, peer_get()).await.status, StatusCode::NOT_FOUND);
    // The local containerd asks (a miss: it goes upstream), then a peer may have it.
    assert_eq!(local_get(&n, &d).await.status, StatusCode::NOT_FOUND);
    let got = send(&r, peer_get()).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("shoal-in-flight"), Some("1"));
    assert_eq!(got.ok_body(), &blob);
    // A resumed read of it.
    let ranged = http::Request::get(blob_uri(&d))
        .header(shoal_mirror::PEER_HEADER, "1")
        .header(http::header::RANGE, "bytes=1000-")
        .body(Body::empty())
        .unwrap();
    let got = send(&r, ranged).await;
    assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(got.ok_body(), &blob.slice(1000..));
}

#[tokio::test]
async fn claims_are_for_peers_and_the_first_claimant_is_the_fetcher() {
    let spool = spool_dir();
    let n = node("arbiter", cfg(Duration::from_secs(1)), &spool).await;
    let r = router(n.state.clone());
    let d = Digest::sha256_of(b"x");
    let claim = |peer: &str, port: u16, from: [u8; 4], failed: Option<&str>| {
        let mut uri = format!("/shoal/v1/herd/{d}?peer={peer}&port={port}");
        if let Some(f) = failed {
            uri.push_str(&format!("&failed={f}"));
        }
        let mut req = http::Request::get(uri)
            .header(shoal_mirror::PEER_HEADER, "1")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((from, 40000))));
        req
    };
    let not_peer = http::Request::get(format!("/shoal/v1/herd/{d}?peer=x&port=1"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&r, not_peer).await.status, StatusCode::UNAUTHORIZED);
    let a = send(&r, claim("A", 5000, [10, 0, 0, 1], None)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("shoal-herd-source"), Some("A"));
    assert_eq!(a.header("shoal-herd-source-addr"), Some("10.0.0.1:5000"));
    let b = send(&r, claim("B", 5000, [10, 0, 0, 2], None)).await;
    assert_eq!(b.header("shoal-herd-source"), Some("A"));
    assert_eq!(b.header("shoal-herd-source-addr"), Some("10.0.0.1:5000"));
    let b = send(&r, claim("B", 5000, [10, 0, 0, 2], Some("A"))).await;
    assert_eq!(b.header("shoal-herd-source"), Some("B"));
    assert_eq!(b.header("shoal-herd-source-addr"), Some("10.0.0.2:5000"));
    for bad in [
        format!("/shoal/v1/herd/{d}?port=1"),
        format!("/shoal/v1/herd/{d}?peer=x&port=0"),
        "/shoal/v1/herd/sha256:nothex?peer=x&port=1".to_owned(),
    ] {
        let mut req = http::Request::get(bad.as_str())
            .header(shoal_mirror::PEER_HEADER, "1")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 3], 1))));
        assert_eq!(send(&r, req).await.status, StatusCode::NOT_FOUND, "{bad}");
    }
}
