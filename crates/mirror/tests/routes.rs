//! Router-level tests with in-memory fakes and `oneshot` (no sockets).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use common::*;
use http::{Method, StatusCode};
use shoal_mirror::{Metrics, Readiness, metrics_router, router};
use shoal_oci::{Digest, Key};

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;

fn setup() -> (Arc<MemStore>, Arc<FakeProviders>) {
    (Arc::default(), Arc::default())
}

fn req(method: Method, uri: &str) -> http::Request<Body> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap()
}

fn code(a: &Answer) -> String {
    a.json()["errors"][0]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn base_route_answers_empty_json() {
    let (s, p) = setup();
    let r = router(state(config(), &s, &p));
    let a = send(&r, get("/v2/")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.ok_body().as_ref(), b"{}");
    assert_eq!(
        a.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let a = send(&r, req(Method::HEAD, "/v2/")).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn local_blob_get_and_head_have_all_headers() {
    let (s, p) = setup();
    let blob = data(100_000, 1);
    let d = s.put(&blob, None);
    let r = router(state(config(), &s, &p));
    let a = send(&r, get(&blob_uri(&d))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.ok_body().as_ref(), &blob[..]);
    assert_eq!(a.header("content-length"), Some("100000"));
    assert_eq!(a.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        a.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    assert_eq!(a.header("accept-ranges"), Some("bytes"));
    let h = send(&r, req(Method::HEAD, &blob_uri(&d))).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("content-length"), Some("100000"));
    assert_eq!(
        h.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    assert!(h.ok_body().is_empty());
    assert_eq!(p.finds(), 0, "local content needs no provider lookup");
}

#[tokio::test]
async fn ranges_give_206_and_bad_ranges_416() {
    let (s, p) = setup();
    let blob = data(1000, 2);
    let d = s.put(&blob, None);
    let r = router(state(config(), &s, &p));
    let ranged = |v: &str| {
        http::Request::get(blob_uri(&d))
            .header("range", v)
            .body(Body::empty())
            .unwrap()
    };
    let a = send(&r, ranged("bytes=600-")).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(a.header("content-range"), Some("bytes 600-999/1000"));
    assert_eq!(a.header("content-length"), Some("400"));
    assert_eq!(a.ok_body().as_ref(), &blob[600..]);
    let a = send(&r, ranged("bytes=10-19")).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(a.ok_body().as_ref(), &blob[10..20]);
    let a = send(&r, ranged("bytes=1000-")).await;
    assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(a.header("content-range"), Some("bytes */1000"));
    assert_eq!(code(&a), "RANGE_INVALID");
    let a = send(&r, ranged("bytes=zz-")).await;
    assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let a = send(&r, ranged("bytes=0-1,5-6")).await;
    assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
async fn ns_is_required_and_allowlisted_before_any_lookup() {
    let (s, p) = setup();
    let d = s.put(b"hello", None);
    let st = state(config(), &s, &p);
    let r = router(st.clone());
    let a = send(&r, get(&format!("/v2/library/test/blobs/{d}"))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&a), "NAME_UNKNOWN");
    for ns in [
        "harbor.example.com",
        "192.168.1.105",
        "harbor.example.com%3A8443",
    ] {
        let a = send(&r, get(&format!("/v2/team/app/blobs/{d}?ns={ns}"))).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{ns}");
        assert_eq!(code(&a), "NAME_UNKNOWN");
        let a = send(&r, get(&format!("/v2/team/app/manifests/v1?ns={ns}"))).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{ns}");
    }
    assert_eq!(s.stats.load(Ordering::SeqCst), 0, "no local lookup either");
    assert_eq!(p.finds(), 0);
    assert_eq!(
        st.metrics().request_count("other", "blob", "not_allowed"),
        3
    );
    // Docker Hub aliases are the same registry, and ns is URL-decoded.
    let a = send(
        &r,
        get(&format!("/v2/library/test/blobs/{d}?ns=index.docker.io")),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn errors_are_oci_json_with_the_right_status() {
    let (s, p) = setup();
    let r = router(state(config(), &s, &p));
    let a = send(&r, get("/v2/library/test/blobs/sha256:abc?ns=docker.io")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&a), "DIGEST_INVALID");
    assert!(
        a.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("digest")
    );
    let a = send(&r, get("/v2/Bad..Name/manifests/v1?ns=docker.io")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&a), "NAME_INVALID");
    let a = send(&r, get("/v2/library/test/tags/list?ns=docker.io")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = send(&r, get("/metrics")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = send(
        &r,
        req(Method::PUT, "/v2/library/test/manifests/v1?ns=docker.io"),
    )
    .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(code(&a), "UNSUPPORTED");
    assert_eq!(a.header("allow"), Some("GET, HEAD"));
    assert_eq!(a.header("content-type"), Some("application/json"));
    let d = Digest::sha256_of(b"absent");
    let mut cfg = config();
    cfg.resolve_timeout = Duration::from_millis(5);
    let r = router(state(cfg, &s, &p));
    let a = send(&r, get(&blob_uri(&d))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&a), "BLOB_UNKNOWN");
    let a = send(
        &r,
        get(&format!("/v2/library/test/manifests/{d}?ns=docker.io")),
    )
    .await;
    assert_eq!(code(&a), "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn peer_requests_are_local_only() {
    let (s, p) = setup();
    let d = s.put(b"held here", None);
    let absent = Digest::sha256_of(b"not here");
    p.add(
        Key::Digest(absent.clone()),
        "127.0.0.1:9".parse().unwrap(),
        "x",
    );
    let r = router(state(config(), &s, &p));
    let peer_get = |uri: String| {
        http::Request::get(uri)
            .header("x-shoal-peer", "1")
            .body(Body::empty())
            .unwrap()
    };
    let a = send(&r, peer_get(blob_uri(&d))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.ok_body().as_ref(), b"held here");
    let a = send(&r, peer_get(blob_uri(&absent))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = send(
        &r,
        peer_get("/v2/library/test/manifests/v9?ns=docker.io".into()),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(p.finds(), 0, "a peer request is never forwarded");
}

#[tokio::test]
async fn fast_miss_is_bounded_by_the_resolve_timeout() {
    let (s, p) = setup();
    let r = router(state(config(), &s, &p)); // 20 ms default
    let d = Digest::sha256_of(b"nobody has this");
    let t = Instant::now();
    let a = send(&r, get(&blob_uri(&d))).await;
    let took = t.elapsed();
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(took >= Duration::from_millis(20), "waited {took:?}");
    assert!(took < Duration::from_millis(300), "fast miss took {took:?}");
    assert_eq!(p.finds(), 1);
}

#[tokio::test]
async fn local_tags_and_manifests() {
    let (s, p) = setup();
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let d = s.tag("library/test", "v1", MANIFEST, oci);
    let r = router(state(config(), &s, &p));
    let a = send(
        &r,
        req(Method::HEAD, "/v2/library/test/manifests/v1?ns=docker.io"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), Some(oci));
    assert_eq!(
        a.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    assert_eq!(
        a.header("content-length"),
        Some(MANIFEST.len().to_string().as_str())
    );
    assert!(a.ok_body().is_empty());
    let a = send(
        &r,
        get(&format!("/v2/library/test/manifests/{d}?ns=docker.io")),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.ok_body().as_ref(), MANIFEST);
    // The store did not know the media type: it comes from the document.
    assert_eq!(a.header("content-type"), Some(oci));
    assert_eq!(p.finds(), 0);
}

#[tokio::test]
async fn tag_resolution_rules() {
    let (s, p) = setup();
    let uri = |t: &str| format!("/v2/library/test/manifests/{t}?ns=docker.io");
    let r = router(state(config(), &s, &p));
    assert_eq!(
        send(&r, get(&uri("latest"))).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        p.finds(),
        0,
        "latest is not resolved through peers by default"
    );
    assert_eq!(
        send(&r, get(&uri("v1"))).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(p.finds(), 1, "other tags are");

    let mut cfg = config();
    cfg.resolve_tags = false;
    cfg.resolve_latest = true;
    let r = router(state(cfg, &s, &p));
    send(&r, get(&uri("v1"))).await;
    send(&r, get(&uri("latest"))).await;
    assert_eq!(p.finds(), 1, "resolve_tags off: no tag lookups at all");

    let mut cfg = config();
    cfg.resolve_latest = true;
    let r = router(state(cfg, &s, &p));
    send(&r, get(&uri("latest"))).await;
    assert_eq!(p.finds(), 2);
    // A local tag is always served, whatever the peer settings.
    s.tag(
        "library/test",
        "latest",
        MANIFEST,
        "application/vnd.oci.image.manifest.v1+json",
    );
    let mut cfg = config();
    cfg.resolve_tags = false;
    let r = router(state(cfg, &s, &p));
    assert_eq!(send(&r, get(&uri("latest"))).await.status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let (s, p) = setup();
    let metrics = Metrics::new();
    let st = shoal_mirror::MirrorState::builder(config(), s.clone(), p.clone())
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let d = s.put(b"abc", None);
    send(&router(st), get(&blob_uri(&d))).await;
    metrics.set_peers(3);
    metrics.set_advertised_keys(42);
    let ready = Readiness::new();
    let m = metrics_router(metrics.clone(), ready.clone());
    let a = send(&m, get("/metrics")).await;
    let text = String::from_utf8(a.ok_body().to_vec()).unwrap();
    assert!(
        text.contains(
            r#"shoal_mirror_requests_total{registry="docker.io",kind="blob",outcome="local"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"shoal_mirror_bytes_total{source="local"} 3"#),
        "{text}"
    );
    assert!(
        text.contains("shoal_peers 3") && text.contains("shoal_advertised_keys 42"),
        "{text}"
    );
    assert!(text.contains("shoal_mirror_resolve_seconds"), "{text}");
    assert_eq!(send(&m, get("/healthz")).await.status, StatusCode::OK);
    assert_eq!(
        send(&m, get("/readyz")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    ready.set_ready(true);
    assert_eq!(send(&m, get("/readyz")).await.status, StatusCode::OK);
}
