//! The spool's lifecycle seen from a client: files vanish however a response ends, and the
//! number of spooled downloads is bounded.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use shoal_mirror::{MirrorConfig, MirrorState, router};
use shoal_oci::Key;
use tower::ServiceExt;

const BIG: usize = 2 * 1024 * 1024;

/// A mirror spooling everything above 64 KiB into its own directory.
fn mirror(
    prov: &Arc<FakeProviders>,
    spool: &tempfile::TempDir,
    max_concurrent_spools: usize,
) -> axum::Router {
    let cfg = MirrorConfig {
        small_blob_threshold: 64 * 1024,
        spool_dir: spool.path().join("spool"),
        max_concurrent_spools,
        ..config()
    };
    router(
        MirrorState::builder(cfg, Arc::new(MemStore::default()), prov.clone())
            .build()
            .unwrap(),
    )
}

#[tokio::test]
async fn the_spool_file_goes_when_the_client_drops_the_body_midway() {
    let big = data(BIG, 20);
    let (good, addr) = fake_peer(&big, Mode::Good).await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(good.digest.clone()), addr, "good");
    let tmp = spool_dir();
    let dir = tmp.path().join("spool");
    let r = mirror(&prov, &tmp, 8);
    let res = r
        .clone()
        .oneshot(get(&blob_uri(&good.digest)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(!first.is_empty() && first.len() < BIG);
    assert_eq!(
        &first[..],
        &big[..first.len()],
        "verified bytes, from the start"
    );
    assert_eq!(spool_files(&dir), 1, "the body reads from the spool file");
    drop(body);
    assert_eq!(spool_files(&dir), 0, "dropping the body removes the file");
}

#[tokio::test]
async fn the_spool_file_goes_when_the_client_leaves_during_the_download() {
    let big = data(BIG, 21);
    let (stall, addr) = fake_peer(&big, Mode::StallAfter(256 * 1024)).await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(stall.digest.clone()), addr, "stall");
    let tmp = spool_dir();
    let dir = tmp.path().join("spool");
    let r = mirror(&prov, &tmp, 8);
    let uri = blob_uri(&stall.digest);
    let task = tokio::spawn(async move { r.oneshot(get(&uri)).await });
    let t = Instant::now();
    while spool_files(&dir) == 0 && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(spool_files(&dir), 1, "the download spools");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(
        spool_files(&dir),
        0,
        "an abandoned download removes its file"
    );
}

#[tokio::test]
async fn spooled_downloads_are_bounded_and_a_busy_spool_is_a_404() {
    let big = data(BIG, 22);
    let (good, addr) = fake_peer(&big, Mode::Good).await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(good.digest.clone()), addr, "good");
    let tmp = spool_dir();
    let dir = tmp.path().join("spool");
    let r = mirror(&prov, &tmp, 1);
    // A response not yet read keeps its file, and so its slot.
    let held = r
        .clone()
        .oneshot(get(&blob_uri(&good.digest)))
        .await
        .unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    let t = Instant::now();
    let a = send(&r, get(&blob_uri(&good.digest))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["errors"][0]["code"], "BLOB_UNKNOWN");
    // Waited for a slot for first_byte_timeout (400 ms in tests), not forever.
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(spool_files(&dir), 1);
    let body = axum::body::to_bytes(held.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(body.as_ref(), &big[..]);
    assert_eq!(spool_files(&dir), 0);
    let a = send(&r, get(&blob_uri(&good.digest))).await;
    assert_eq!(a.ok_body().as_ref(), &big[..], "the slot is free again");
}

#[tokio::test]
async fn stale_spool_files_are_removed_when_the_mirror_starts() {
    let tmp = spool_dir();
    let dir = tmp.path().join("spool");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("spool-left-by-a-crash.part"), b"partial").unwrap();
    std::fs::write(dir.join("unrelated"), b"kept").unwrap();
    let _r = mirror(&Arc::new(FakeProviders::default()), &tmp, 8);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["unrelated"]);
}
