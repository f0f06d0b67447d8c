//! Router tests (`oneshot`, in-memory fakes) for what a client other than containerd sees:
//! the registry-prefixed path, refusals (counted, closing the connection), every request's
//! record ending exactly once under its own id, and bodies of known length.

mod common;

use std::sync::Arc;

use axum::body::Body;
use common::*;
use http::{Method, StatusCode};
use http_body::Body as _;
use shoal_mirror::{EventLog, FetchEventKind, Metrics, MirrorState, Refusal, RequestEnd, router};
use tower::ServiceExt;

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

/// A mirror over `store` with its metrics and event log.
fn mirror(store: &Arc<MemStore>) -> (axum::Router, Metrics, Arc<EventLog>) {
    let metrics = Metrics::new();
    let log = Arc::new(EventLog::new(100));
    let st = MirrorState::builder(config(), store.clone(), Arc::new(FakeProviders::default()))
        .metrics(metrics.clone())
        .events(log.clone())
        .build()
        .unwrap();
    (router(st), metrics, log)
}

#[tokio::test]
async fn the_registry_may_lead_the_path_for_allowlisted_registries_only() {
    let store = Arc::new(MemStore::default());
    let blob = data(5000, 7);
    let d = store.put(&blob, None);
    let dm = store.tag(
        "library/test",
        "v1",
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
        "application/vnd.oci.image.index.v1+json",
    );
    let (r, _, _) = mirror(&store);

    let a = send(&r, get(&format!("/v2/docker.io/library/test/blobs/{d}"))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.ok_body().as_ref(), &blob[..]);
    // Docker Hub's aliases fold into docker.io, as with `?ns=`.
    let a = send(
        &r,
        get(&format!("/v2/index.docker.io/library/test/blobs/{d}")),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = send(&r, get("/v2/docker.io/library/test/manifests/v1")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.header("docker-content-digest"),
        Some(dm.to_string().as_str())
    );

    // Not allowlisted: 404 before any lookup, even though the content is here.
    let a = send(&r, get(&format!("/v2/harbor.test/library/test/blobs/{d}"))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&a), "NAME_UNKNOWN");
    assert!(
        a.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("harbor.test")
    );

    // Neither `ns` nor a registry prefix: the registry is never guessed.
    let a = send(&r, get(&format!("/v2/library/test/blobs/{d}"))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let msg = a.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        msg.contains("?ns=") && msg.contains("/v2/<registry>/"),
        "{msg}"
    );

    // With `ns`, the path is taken as it is: `docker.io` would be part of the repository name.
    let a = send(
        &r,
        get(&format!(
            "/v2/docker.io/library/test/blobs/{d}?ns=docker.io"
        )),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "the blob is served by digest");
}

#[tokio::test]
async fn refusals_are_counted_and_close_the_connection() {
    let store = Arc::new(MemStore::default());
    let (r, metrics, _) = mirror(&store);
    for m in [Method::PUT, Method::POST, Method::DELETE] {
        let a = send(&r, req(m.clone(), "/v2/library/test/blobs/uploads/")).await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{m}");
        assert_eq!(a.header("connection"), Some("close"), "{m}");
        assert_eq!(a.header("allow"), Some("GET, HEAD"));
    }
    let a = send(&r, get("/v2/../etc/passwd/manifests/x?ns=docker.io")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.header("connection"), Some("close"));
    let refused = metrics.refusals();
    assert_eq!(refused.count("mirror", Refusal::Malformed), 4);
    assert!(
        metrics
            .encode()
            .contains(r#"shoal_refusals_total{server="mirror",reason="malformed"} 4"#),
        "{}",
        metrics.encode()
    );
    // A miss is not a refusal: the connection stays usable for containerd's next request.
    let a = send(
        &r,
        get("/v2/library/test/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855?ns=docker.io"),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.header("connection"), None);
}

#[tokio::test]
async fn bodies_of_known_length_keep_their_size() {
    let store = Arc::new(MemStore::default());
    let (r, _, _) = mirror(&store);
    // `GET /v2/` goes out with Content-Length: hyper takes it from an exact size hint.
    let res = r.clone().oneshot(get("/v2/")).await.unwrap();
    assert_eq!(res.body().size_hint().exact(), Some(2));
    let res = r
        .clone()
        .oneshot(req(Method::PUT, "/v2/x/blobs/uploads/"))
        .await
        .unwrap();
    assert!(res.body().size_hint().exact().is_some());
}

#[tokio::test]
async fn every_request_ends_once_under_its_own_id() {
    let store = Arc::new(MemStore::default());
    let blob = data(300_000, 9);
    let d = store.put(&blob, None);
    let (r, _, log) = mirror(&store);
    let key = d.to_string();
    let ends = || -> Vec<(u64, RequestEnd)> {
        log.for_key(&key)
            .into_iter()
            .filter_map(|e| match e.kind {
                FetchEventKind::Ended(end) => Some((e.request, end)),
                _ => None,
            })
            .collect()
    };

    // 1: read to the end.
    let a = send(&r, get(&blob_uri(&d))).await;
    assert_eq!(a.ok_body().len(), blob.len());
    // 2: the client goes away after the headers (the body is dropped unread).
    let res = r.clone().oneshot(get(&blob_uri(&d))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    drop(res);
    // 3: a HEAD.
    let a = send(&r, req(Method::HEAD, &blob_uri(&d))).await;
    assert_eq!(a.status, StatusCode::OK);
    // 4: a range that cannot be satisfied fails with its reason.
    let a = send(
        &r,
        http::Request::get(blob_uri(&d))
            .header("range", "bytes=999999999-")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);

    let got = ends();
    assert_eq!(got.len(), 4, "{got:?}");
    let ids: std::collections::BTreeSet<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 4, "ids are unique: {got:?}");
    assert_eq!(
        got[0].1,
        RequestEnd::Completed {
            sent: blob.len() as u64
        }
    );
    assert!(matches!(got[1].1, RequestEnd::Cut { .. }), "{got:?}");
    assert_eq!(got[2].1, RequestEnd::Completed { sent: 0 });
    assert!(
        matches!(&got[3].1, RequestEnd::Failed { status: 416, .. }),
        "{got:?}"
    );
    // Every event of a request carries its id; no event is outside a request.
    assert!(log.for_key(&key).iter().all(|e| ids.contains(&e.request)));
}
