//! The holder side of piece lists: the peer-only route, the background computation, the disk
//! cache, and a corrupt local copy (oneshot, no sockets).

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use common::*;
use http::StatusCode;
use shoal_mirror::{MirrorConfig, MirrorState, router};
use shoal_oci::Digest;

const MIB: usize = 1024 * 1024;

fn holder(store: &Arc<MemStore>, dir: &std::path::Path) -> axum::Router {
    let cfg = MirrorConfig {
        spool_dir: dir.join("spool"),
        ..config()
    };
    let st: MirrorState = state(cfg, store, &Arc::new(FakeProviders::default()));
    router(st)
}

fn list_uri(d: &Digest) -> String {
    format!("/shoal/v2/pieces/{d}")
}

fn as_peer(uri: &str) -> http::Request<Body> {
    http::Request::get(uri)
        .header(shoal_mirror::PEER_HEADER, "1")
        .body(Body::empty())
        .unwrap()
}

/// Ask for the list until it is there (it is computed in the background).
async fn wait_list(r: &axum::Router, d: &Digest) -> Answer {
    for _ in 0..100 {
        let a = send(r, as_peer(&list_uri(d))).await;
        if a.status == StatusCode::OK {
            return a;
        }
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("piece list of {d} never became available");
}

#[tokio::test]
async fn lists_are_computed_once_cached_and_served_to_peers_only() {
    let tmp = spool_dir();
    let store = Arc::new(MemStore::default());
    let blob = data(2 * MIB + MIB / 2, 7);
    let d = store.put(&blob, None);
    let r = holder(&store, tmp.path());

    // The local containerd (no peer mark) and anyone unsigned are refused.
    let a = send(&r, get(&list_uri(&d))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // A bad digest is named.
    let a = send(&r, as_peer("/shoal/v2/pieces/sha256:nothex")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(a.ok_body()).contains("not a digest"));
    // Not held: 404.
    let a = send(&r, as_peer(&list_uri(&Digest::sha256_of(b"absent")))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    // First ask: not computed yet (404), computed in the background.
    let first = send(&r, as_peer(&list_uri(&d))).await;
    assert_eq!(first.status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(first.ok_body()).contains("not computed yet"));
    let a = wait_list(&r, &d).await;
    assert_eq!(
        a.header("content-type"),
        Some("application/vnd.shoal.pieces.v2")
    );
    assert_eq!(a.ok_body().as_ref(), &piece_list(&blob, MIB)[..]);
    // Three pieces: the states after the first two (the last one's check is the digest).
    assert_eq!(a.ok_body().len(), 16 + 2 * 32);

    // Cached on disk (temp file renamed away): a restarted holder serves it at once.
    let dir = tmp.path().join("spool").join("pieces-v2");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [format!("sha256-{}", d.hex())]);
    let r2 = holder(&store, tmp.path());
    let a = send(&r2, as_peer(&list_uri(&d))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.ok_body().as_ref(), &piece_list(&blob, MIB)[..]);

    // A cached list that went bad on disk is dropped, not served.
    std::fs::write(dir.join(format!("sha256-{}", d.hex())), b"garbage").unwrap();
    let a = send(&r2, as_peer(&list_uri(&d))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = wait_list(&r2, &d).await;
    assert_eq!(a.ok_body().as_ref(), &piece_list(&blob, MIB)[..]);
}

#[tokio::test]
async fn a_peer_blob_request_starts_the_list_and_a_corrupt_copy_is_withdrawn() {
    let tmp = spool_dir();
    let store = Arc::new(MemStore::default());
    let good = data(5 * MIB, 8);
    let d = store.put(&good, None);
    let r = holder(&store, tmp.path());
    // Serving the blob to a peer queues the list computation.
    let a = send(&r, as_peer(&blob_uri(&d))).await;
    assert_eq!(a.ok_body().len(), good.len());
    wait_list(&r, &d).await;

    // Local content whose bytes no longer match their digest (a flipped byte on disk).
    let mut bad = data(5 * MIB, 9);
    let dbad = Digest::sha256_of(&bad);
    bad[3 * MIB] ^= 1;
    store
        .blobs
        .lock()
        .unwrap()
        .insert(dbad.clone(), (bad.into(), None));
    let a = send(&r, as_peer(&list_uri(&dbad))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // Once the computation found the mismatch, the blob is no longer served to anyone.
    let mut withdrawn = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let a = send(&r, as_peer(&blob_uri(&dbad))).await;
        if a.status == StatusCode::NOT_FOUND {
            assert!(String::from_utf8_lossy(a.ok_body()).contains("does not match"));
            withdrawn = true;
            break;
        }
    }
    assert!(withdrawn, "a corrupt local copy kept being served");
    let a = send(&r, as_peer(&list_uri(&dbad))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // The good blob's list is unaffected; the whole digest was checked for it too.
    let a = send(&r, as_peer(&list_uri(&d))).await;
    assert_eq!(a.status, StatusCode::OK);
    let states = &a.ok_body()[16..];
    let mut first = shoal_oci::ChainHasher::new();
    first.update(&good[..MIB]);
    assert_eq!(&states[..32], &first.state().unwrap().to_bytes()[..]);
}
