//! Router-level tests of who may read (loopback client, signed peer, nobody else), of load
//! shedding, and of hostile input (malformed digests, repositories, ranges and `ns` values).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use common::*;
use http::{Method, StatusCode, header};
use shoal_mirror::{HmacAuth, LoopbackOnly, Metrics, MirrorState, PeerAuth, router};
use shoal_oci::Key;

const LOOPBACK: &str = "127.0.0.1:40000";
const POD: &str = "10.244.1.7:51000";

fn secured(store: &Arc<MemStore>, prov: &Arc<FakeProviders>, metrics: &Metrics) -> MirrorState {
    MirrorState::builder(config(), store.clone(), prov.clone())
        .peer_auth(Arc::new(HmacAuth::from_psk(&[42; 32])))
        .metrics(metrics.clone())
        .build()
        .unwrap()
}

fn from(
    remote: Option<&str>,
    method: Method,
    uri: &str,
    headers: &[(&str, String)],
) -> http::Request<Body> {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    let mut req = b.body(Body::empty()).unwrap();
    if let Some(r) = remote {
        req.extensions_mut()
            .insert(ConnectInfo(r.parse::<SocketAddr>().unwrap()));
    }
    req
}

fn signed(auth: &dyn PeerAuth, method: &Method, uri: &str) -> Vec<(&'static str, String)> {
    auth.sign(method, uri)
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(k, header::AUTHORIZATION);
            ("authorization", v.to_str().unwrap().to_owned())
        })
        .collect()
}

fn unauthorized(a: &Answer) {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["errors"][0]["code"], "UNAUTHORIZED");
    assert!(a.header("www-authenticate").is_some());
}

#[tokio::test]
async fn loopback_and_signed_peers_are_served_everyone_else_gets_401() {
    let (s, p): (Arc<MemStore>, Arc<FakeProviders>) = (Arc::default(), Arc::default());
    let d = s.put(&data(5000, 3), None);
    let metrics = Metrics::new();
    let r = router(secured(&s, &p, &metrics));
    let uri = blob_uri(&d);
    let key = HmacAuth::from_psk(&[42; 32]);

    // The node's own containerd (loopback, IPv4 or IPv6) needs nothing.
    for remote in [LOOPBACK, "[::1]:40000", "[::ffff:127.0.0.1]:1"] {
        let a = send(&r, from(Some(remote), Method::GET, &uri, &[])).await;
        assert_eq!(a.status, StatusCode::OK, "{remote}");
    }
    // A pod (or any host): 401, with or without the old marker, with a forged or foreign token.
    let stranger = HmacAuth::from_psk(&[43; 32]);
    let attempts: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![("x-shoal-peer", "1".into())],
        vec![("authorization", format!("Shoal {}", "ab".repeat(32)))],
        vec![("authorization", "Shoal not-hex".into())],
        signed(&stranger, &Method::GET, &uri),
        // A token for another path or method does not open this one.
        signed(&key, &Method::HEAD, &uri),
        signed(
            &key,
            &Method::GET,
            &blob_uri(&shoal_oci::Digest::sha256_of(b"x")),
        ),
    ];
    for h in &attempts {
        unauthorized(&send(&r, from(Some(POD), Method::GET, &uri, h)).await);
    }
    // No address known (should not happen behind our server): not loopback, so refused.
    unauthorized(&send(&r, from(None, Method::GET, &uri, &[])).await);
    // A signed peer gets the blob, from anywhere.
    let a = send(
        &r,
        from(
            Some(POD),
            Method::GET,
            &uri,
            &signed(&key, &Method::GET, &uri),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.ok_body().len(), 5000);

    let text = metrics.encode();
    assert!(
        text.contains(r#"outcome="unauthorized"} 3"#) && text.contains(r#"outcome="rejected"} 5"#),
        "{text}"
    );
}

#[tokio::test]
async fn signed_peer_requests_are_never_forwarded_to_other_peers() {
    let (s, p): (Arc<MemStore>, Arc<FakeProviders>) = (Arc::default(), Arc::default());
    let held_elsewhere = shoal_oci::Digest::sha256_of(b"elsewhere");
    p.add(
        Key::Digest(held_elsewhere.clone()),
        "127.0.0.1:9".parse().unwrap(),
        "peer-x",
    );
    let r = router(secured(&s, &p, &Metrics::new()));
    let uri = blob_uri(&held_elsewhere);
    let key = HmacAuth::from_psk(&[42; 32]);
    let a = send(
        &r,
        from(
            Some(POD),
            Method::GET,
            &uri,
            &signed(&key, &Method::GET, &uri),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(p.finds(), 0, "a peer request must not start a lookup");
}

#[tokio::test]
async fn without_a_key_only_loopback_is_served() {
    let (s, p): (Arc<MemStore>, Arc<FakeProviders>) = (Arc::default(), Arc::default());
    let d = s.put(&data(10, 1), None);
    let st = MirrorState::builder(config(), s.clone(), p.clone())
        .peer_auth(Arc::new(LoopbackOnly))
        .build()
        .unwrap();
    let r = router(st);
    let uri = blob_uri(&d);
    assert_eq!(
        send(&r, from(Some(LOOPBACK), Method::GET, &uri, &[]))
            .await
            .status,
        StatusCode::OK
    );
    unauthorized(
        &send(
            &r,
            from(
                Some(POD),
                Method::GET,
                &uri,
                &[("x-shoal-peer", "1".into())],
            ),
        )
        .await,
    );
}

#[tokio::test]
async fn requests_over_the_limit_get_503_until_a_body_ends() {
    let (s, p): (Arc<MemStore>, Arc<FakeProviders>) = (Arc::default(), Arc::default());
    let d = s.put(&data(1 << 20, 9), None);
    let cfg = shoal_mirror::MirrorConfig {
        max_concurrent_requests: 1,
        ..config()
    };
    let r = router(
        MirrorState::builder(cfg, s.clone(), p.clone())
            .build()
            .unwrap(),
    );
    let uri = blob_uri(&d);
    use tower::ServiceExt;
    // The first response is held, body unread: it still counts.
    let first = r.clone().oneshot(get(&uri)).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let a = send(&r, get(&uri)).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["errors"][0]["code"], "UNAVAILABLE");
    let body = axum::body::to_bytes(first.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(body.len(), 1 << 20);
    assert_eq!(send(&r, get(&uri)).await.status, StatusCode::OK);
}

/// Every hostile request gets a 4xx with an OCI error body; none panics, none reaches content.
#[tokio::test]
async fn malformed_input_gets_4xx_with_oci_json() {
    let (s, p): (Arc<MemStore>, Arc<FakeProviders>) = (Arc::default(), Arc::default());
    let d = s.put(&data(100, 2), None);
    let r = router(state(config(), &s, &p));
    let hex = d.to_string();
    let long = "a".repeat(5000);
    let uris = [
        // Digests.
        "/v2/library/test/blobs/sha256:zz?ns=docker.io".to_owned(),
        "/v2/library/test/blobs/sha256:abc?ns=docker.io".to_owned(),
        format!("/v2/library/test/blobs/{hex}00?ns=docker.io"),
        format!("/v2/library/test/blobs/md5:{}?ns=docker.io", &hex[7..]),
        format!("/v2/library/test/blobs/sha256:{long}?ns=docker.io"),
        "/v2/library/test/blobs/sha256:..%2F..%2Fetc%2Fpasswd?ns=docker.io".to_owned(),
        "/v2/library/test/blobs/?ns=docker.io".to_owned(),
        // Repositories and paths.
        format!("/v2/Library/Test/blobs/{hex}?ns=docker.io"),
        format!("/v2/../../etc/blobs/{hex}?ns=docker.io"),
        format!("/v2/%2e%2e/%2e%2e/blobs/{hex}?ns=docker.io"),
        format!("/v2//blobs/{hex}?ns=docker.io"),
        format!("/v2/a//b/blobs/{hex}?ns=docker.io"),
        format!("/v2/{long}/blobs/{hex}?ns=docker.io"),
        "/v2/library/test/manifests/?ns=docker.io".to_owned(),
        "/v2/library/test/manifests/-bad-tag?ns=docker.io".to_owned(),
        format!(
            "/v2/library/test/manifests/{}?ns=docker.io",
            "t".repeat(200)
        ),
        "/v2/library/test/tags/list?ns=docker.io".to_owned(),
        "/etc/passwd".to_owned(),
        // `ns` values.
        format!("/v2/library/test/blobs/{hex}"),
        format!("/v2/library/test/blobs/{hex}?ns="),
        format!("/v2/library/test/blobs/{hex}?ns=%ZZ"),
        format!("/v2/library/test/blobs/{hex}?ns=docker.io%00"),
        format!("/v2/library/test/blobs/{hex}?ns=..%2F..%2Fetc"),
        format!("/v2/library/test/blobs/{hex}?ns=docker.io%2F..%2Fx"),
        format!("/v2/library/test/blobs/{hex}?ns=harbor.example.com"),
        format!("/v2/library/test/blobs/{hex}?ns={long}"),
        format!("/v2/library/test/blobs/{hex}?ns=%F0%9F%92%A9"),
        format!("/v2/library/test/blobs/{hex}?ns=%FF%FE"),
        format!("/v2/library/%FF/blobs/{hex}?ns=docker.io"),
        format!("/v2/library/test/blobs/{hex}?ns=docker.io&ns=evil"),
    ];
    for uri in &uris {
        for method in [Method::GET, Method::HEAD] {
            let a = send(&r, from(Some(LOOPBACK), method.clone(), uri, &[])).await;
            assert!(
                [400, 404].contains(&a.status.as_u16()),
                "{method} {uri}: {}",
                a.status
            );
            assert_eq!(a.header("content-type"), Some("application/json"), "{uri}");
            if method == Method::GET {
                let code = a.json()["errors"][0]["code"].clone();
                assert!(code.is_string(), "{uri}: {:?}", a.body);
            }
        }
    }
    // Ranges: malformed ones are 400 or 416, never a panic or a wrong slice.
    for range in [
        "bytes=abc",
        "bytes=5-1",
        "bytes=100-",
        "bytes=999999999999999999999-",
        "bytes=0-1,5-6",
        "bytes=-0",
        "bytes=--1",
    ] {
        let a = send(
            &r,
            from(
                Some(LOOPBACK),
                Method::GET,
                &blob_uri(&d),
                &[("range", range.into())],
            ),
        )
        .await;
        assert!(
            [400, 416].contains(&a.status.as_u16()),
            "Range {range}: {}",
            a.status
        );
        assert!(a.json()["errors"][0]["code"].is_string(), "Range {range}");
    }
    // An unknown range unit is ignored (RFC 9110 §14.2): the whole blob.
    let a = send(
        &r,
        from(
            Some(LOOPBACK),
            Method::GET,
            &blob_uri(&d),
            &[("range", "items=0-1".into())],
        ),
    )
    .await;
    assert_eq!((a.status, a.ok_body().len()), (StatusCode::OK, 100));
    // The store still serves the good request afterwards.
    assert_eq!(send(&r, get(&blob_uri(&d))).await.status, StatusCode::OK);
}

/// A local store that never answers (a wedged containerd), or stalls mid-read.
struct Wedged {
    stall_reads_after_first_chunk: bool,
}

impl shoal_mirror::LocalStore for Wedged {
    fn stat<'a>(
        &'a self,
        _: &'a shoal_oci::Digest,
    ) -> futures::future::BoxFuture<'a, Option<shoal_mirror::BlobInfo>> {
        let stall = self.stall_reads_after_first_chunk;
        Box::pin(async move {
            if !stall {
                futures::future::pending::<()>().await;
            }
            Some(shoal_mirror::BlobInfo {
                size: 1 << 20,
                media_type: None,
            })
        })
    }

    fn read<'a>(
        &'a self,
        _: &'a shoal_oci::Digest,
        _: u64,
        _: Option<u64>,
    ) -> futures::future::BoxFuture<'a, std::io::Result<shoal_mirror::ByteStream>> {
        use futures::StreamExt;
        Box::pin(async move {
            let first = futures::stream::once(async { Ok(bytes::Bytes::from(vec![0u8; 1024])) });
            Ok(first.chain(futures::stream::pending()).boxed())
        })
    }

    fn resolve_tag<'a>(
        &'a self,
        _: &'a shoal_oci::TagKey,
    ) -> futures::future::BoxFuture<'a, Option<shoal_mirror::Descriptor>> {
        Box::pin(futures::future::pending())
    }
}

#[tokio::test]
async fn a_wedged_local_store_cannot_pin_a_request() {
    let p: Arc<FakeProviders> = Arc::default();
    let cfg = shoal_mirror::MirrorConfig {
        local_timeout: std::time::Duration::from_millis(200),
        ..config()
    };
    let d = shoal_oci::Digest::sha256_of(b"wedged");
    for stall in [false, true] {
        let store = Arc::new(Wedged {
            stall_reads_after_first_chunk: stall,
        });
        let st = MirrorState::builder(cfg.clone(), store, p.clone())
            .build()
            .unwrap();
        let r = router(st);
        let started = std::time::Instant::now();
        let a = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            send(&r, get(&blob_uri(&d))),
        )
        .await
        .expect("the request ended");
        if stall {
            // Headers went out; the body fails after the stall instead of hanging.
            assert_eq!(a.status, StatusCode::OK);
            assert!(a.body.is_err(), "a stalled read must fail the body");
        } else {
            assert_eq!(a.status, StatusCode::NOT_FOUND);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        let tag = send(&r, get("/v2/library/test/manifests/v1?ns=docker.io")).await;
        assert_eq!(tag.status, StatusCode::NOT_FOUND);
    }
}
