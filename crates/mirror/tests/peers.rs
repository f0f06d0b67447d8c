//! Peer streaming over loopback: good, corrupt, dying and hanging peers.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use common::*;
use http::StatusCode;
use shoal_mirror::{FetchEventKind, MirrorConfig, Source, router};
use shoal_oci::{Key, TagKey};

const BIG: usize = 300 * 1024;

/// A config with a 64 KiB small-blob threshold so BIG takes the spooled path.
fn streaming() -> MirrorConfig {
    MirrorConfig {
        small_blob_threshold: 64 * 1024,
        ..config()
    }
}

fn code(a: &Answer) -> String {
    a.json()["errors"][0]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn good_peer_serves_through_the_real_peer_protocol() {
    // The peer is a real mirror router over its own store: exercises the peer header,
    // local-only serving and Docker-Content-Digest on the wire.
    let peer_store = Arc::new(MemStore::default());
    let big = data(BIG, 3);
    let small = data(1000, 4);
    let dbig = peer_store.put(&big, None);
    let dsmall = peer_store.put(&small, None);
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let dman = peer_store.tag(
        "library/test",
        "v1",
        manifest,
        "application/vnd.oci.image.index.v1+json",
    );
    let peer_prov = Arc::new(FakeProviders::default());
    let addr = serve(router(state(config(), &peer_store, &peer_prov))).await;

    let prov = Arc::new(FakeProviders::default());
    for d in [&dbig, &dsmall] {
        prov.add(Key::Digest(d.clone()), addr, "peer-a");
    }
    prov.add(
        Key::Tag(TagKey::new(REG, "library/test", "v1")),
        addr,
        "peer-a",
    );
    let c = Client::new(streaming(), &prov);
    let (r, st, log) = (&c.r, &c.st, &c.log);

    let a = send(r, get(&blob_uri(&dbig))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-length"), Some(BIG.to_string().as_str()));
    assert_eq!(a.ok_body().as_ref(), &big[..]);
    let a = send(r, get(&blob_uri(&dsmall))).await;
    assert_eq!(a.ok_body().as_ref(), &small[..]);
    assert_eq!(st.metrics().bytes(Source::Peer), (BIG + 1000) as u64);
    assert_eq!(c.spooled(), 0, "the spool file is gone after the response");
    assert!(
        log.for_key(&dbig.to_string())
            .iter()
            .any(|e| e.kind == FetchEventKind::Verified { bytes: BIG as u64 })
    );

    let h = send(
        r,
        http::Request::head(blob_uri(&dbig))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("content-length"), Some(BIG.to_string().as_str()));
    let last = log
        .for_key(&dbig.to_string())
        .into_iter()
        .rfind(|e| !matches!(e.kind, FetchEventKind::Ended(_)))
        .unwrap();
    assert_eq!(last.kind, FetchEventKind::HeadAnswered { size: BIG as u64 });
    assert_eq!(last.peer.as_deref(), Some("peer-a"));

    let a = send(
        r,
        http::Request::head("/v2/library/test/manifests/v1?ns=docker.io")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.header("docker-content-digest"),
        Some(dman.to_string().as_str())
    );
    assert_eq!(
        a.header("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    let a = send(
        r,
        get(&format!("/v2/library/test/manifests/{dman}?ns=docker.io")),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::NOT_FOUND,
        "the manifest digest itself has no provider"
    );
    assert_eq!(peer_prov.finds(), 0, "the peer never forwarded");
}

#[tokio::test]
async fn corrupt_large_blob_from_the_only_provider_is_a_clean_404() {
    let big = data(BIG, 5);
    let (fake, addr) = fake_peer(&big, Mode::Corrupt).await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(fake.digest.clone()), addr, "liar");
    let c = Client::new(streaming(), &prov);
    let a = send(&c.r, get(&blob_uri(&fake.digest))).await;
    // Nothing of the blob was sent: containerd falls back upstream from byte 0.
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&a), "BLOB_UNKNOWN");
    assert!(
        a.ok_body().len() < 1024,
        "an error document, not blob bytes"
    );
    assert!(
        fake.peer_marked.lock().unwrap()[0],
        "requests to peers carry the peer mark"
    );
    let ev = c.log.for_key(&fake.digest.to_string());
    assert!(
        ev.iter().any(
            |e| matches!(&e.kind, FetchEventKind::DigestMismatch { peers } if peers == &["liar"])
        ),
        "{ev:#?}"
    );
    assert!(
        !ev.iter()
            .any(|e| matches!(e.kind, FetchEventKind::Verified { .. }))
    );
    assert_eq!(c.st.metrics().bytes(Source::Peer), 0);
    assert_eq!(c.spooled(), 0);
    // The liar is now excluded for this digest: next time, a fast 404 without asking it.
    let a = send(&c.r, get(&blob_uri(&fake.digest))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(fake.ranges.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn corrupt_large_blob_is_replaced_by_the_next_provider_transparently() {
    let big = data(BIG, 12);
    let (bad, bad_addr) = fake_peer(&big, Mode::Corrupt).await;
    let (good, good_addr) = fake_peer(&big, Mode::Good).await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(bad.digest.clone()), bad_addr, "liar");
    prov.add(Key::Digest(good.digest.clone()), good_addr, "honest");
    let c = Client::new(streaming(), &prov);
    let a = send(&c.r, get(&blob_uri(&bad.digest))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-length"), Some(BIG.to_string().as_str()));
    assert_eq!(a.ok_body().as_ref(), &big[..]);
    assert_eq!(bad.ranges.lock().unwrap().clone(), [None]);
    assert_eq!(
        good.ranges.lock().unwrap().clone(),
        [None],
        "after a mismatch the blob starts over from byte 0"
    );
    let kinds: Vec<_> = c
        .log
        .for_key(&bad.digest.to_string())
        .into_iter()
        .map(|e| e.kind)
        .collect();
    let mismatch = kinds
        .iter()
        .position(|k| matches!(k, FetchEventKind::DigestMismatch { peers } if peers == &["liar"]));
    let verified = kinds
        .iter()
        .position(|k| *k == FetchEventKind::Verified { bytes: BIG as u64 });
    assert!(
        matches!((mismatch, verified), (Some(m), Some(v)) if m < v),
        "{kinds:#?}"
    );
    assert_eq!(c.st.metrics().bytes(Source::Peer), BIG as u64);
    assert_eq!(c.spooled(), 0);
    // Next time only the honest peer is asked.
    let a = send(&c.r, get(&blob_uri(&bad.digest))).await;
    assert_eq!(a.ok_body().as_ref(), &big[..]);
    assert_eq!(bad.ranges.lock().unwrap().len(), 1);
    assert_eq!(good.ranges.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn corrupt_small_blob_is_skipped_for_the_next_provider() {
    let small = data(20_000, 6);
    let (bad, bad_addr) = fake_peer(&small, Mode::Corrupt).await;
    let (good, good_addr) = fake_peer(&small, Mode::Good).await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(bad.digest.clone()), bad_addr, "liar");
    prov.add(Key::Digest(good.digest.clone()), good_addr, "honest");
    let c = Client::new(config(), &prov);
    let a = send(&c.r, get(&blob_uri(&bad.digest))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.ok_body().as_ref(), &small[..]);
    assert_eq!(c.spooled(), 0, "small blobs are never spooled");
    assert_eq!(bad.ranges.lock().unwrap().len(), 1);
    assert_eq!(good.ranges.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn broken_transfer_continues_at_the_exact_offset() {
    let big = data(BIG, 7);
    let (dying, dying_addr) = fake_peer(&big, Mode::DieAfter(100 * 1024)).await;
    let (good, good_addr) = fake_peer(&big, Mode::Good).await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(dying.digest.clone()), dying_addr, "dying");
    prov.add(Key::Digest(good.digest.clone()), good_addr, "good");
    let c = Client::new(streaming(), &prov);
    let log = &c.log;
    let a = send(&c.r, get(&blob_uri(&dying.digest))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.ok_body().as_ref(), &big[..], "full body, verified");
    assert_eq!(c.spooled(), 0);
    let ranges = good.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 1);
    let ev = log.for_key(&dying.digest.to_string());
    let r0 = ranges[0]
        .clone()
        .unwrap_or_else(|| panic!("continuation uses Range: {ev:#?}"));
    let offset: usize = r0
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!((100 * 1024..BIG).contains(&offset), "{r0}");
    let ev = log.for_key(&dying.digest.to_string());
    assert!(
        ev.iter().any(
            |e| matches!(e.kind, FetchEventKind::PeerOpened { offset: o } if o as usize == offset)
        ),
        "{ev:?}"
    );
}

#[tokio::test]
async fn stalled_transfer_fails_over_after_the_idle_timeout() {
    let big = data(BIG, 8);
    let (stall, stall_addr) = fake_peer(&big, Mode::StallAfter(64 * 1024)).await;
    let (_good, good_addr) = fake_peer(&big, Mode::Good).await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(stall.digest.clone()), stall_addr, "stall");
    prov.add(Key::Digest(stall.digest.clone()), good_addr, "good");
    let c = Client::new(streaming(), &prov);
    let t = Instant::now();
    let a = send(&c.r, get(&blob_uri(&stall.digest))).await;
    assert_eq!(a.ok_body().as_ref(), &big[..]);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test]
async fn hanging_peers_are_bounded_by_timeouts() {
    let big = data(BIG, 9);
    let (h1, a1) = fake_peer(&big, Mode::Hang).await;
    let (_h2, a2) = fake_peer(&big, Mode::Hang).await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(h1.digest.clone()), a1, "h1");
    prov.add(Key::Digest(h1.digest.clone()), a2, "h2");
    let cfg = MirrorConfig {
        max_attempts: 2,
        ..streaming()
    };
    let c = Client::new(cfg, &prov);
    let t = Instant::now();
    let a = send(&c.r, get(&blob_uri(&h1.digest))).await;
    let took = t.elapsed();
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // Two hedged attempts of at most connect+first-byte (700 ms) each, overlapping.
    assert!(took < Duration::from_millis(1500), "took {took:?}");

    // Stall after headers with no other provider: a 404 after the idle timeout (nothing was
    // sent), not a hang.
    let (s, sa) = fake_peer(&big, Mode::StallAfter(8 * 1024)).await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(s.digest.clone()), sa, "stall");
    let c = Client::new(streaming(), &prov);
    let t = Instant::now();
    let a = send(&c.r, get(&blob_uri(&s.digest))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&a), "BLOB_UNKNOWN");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(c.spooled(), 0);
}

#[tokio::test]
async fn client_range_is_served_from_the_verified_blob() {
    let big = data(BIG, 10);
    let (good, addr) = fake_peer(&big, Mode::Good).await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(good.digest.clone()), addr, "good");
    let c = Client::new(streaming(), &prov);
    let n = 200_000;
    let req = http::Request::get(blob_uri(&good.digest))
        .header("range", format!("bytes={n}-"))
        .body(Body::empty())
        .unwrap();
    let a = send(&c.r, req).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        a.header("content-range"),
        Some(format!("bytes {n}-{}/{BIG}", BIG - 1).as_str())
    );
    assert_eq!(
        a.header("content-length"),
        Some((BIG - n).to_string().as_str())
    );
    assert_eq!(a.ok_body().as_ref(), &big[n..]);
    assert_eq!(
        good.ranges.lock().unwrap()[0],
        None,
        "fetched from 0 so every byte is hashed"
    );
    assert_eq!(c.st.metrics().bytes(Source::Peer), (BIG - n) as u64);
    assert_eq!(c.spooled(), 0);
    // A bounded window in the middle, and a range past the end (416 before any download).
    let req = http::Request::get(blob_uri(&good.digest))
        .header("range", "bytes=1000-1999")
        .body(Body::empty())
        .unwrap();
    let a = send(&c.r, req).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(a.ok_body().as_ref(), &big[1000..2000]);
    let req = http::Request::get(blob_uri(&good.digest))
        .header("range", format!("bytes={BIG}-"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(&c.r, req).await.status,
        StatusCode::RANGE_NOT_SATISFIABLE
    );

    // With a corrupt peer even a window before the corruption is withheld: 404.
    let (bad, bad_addr) = fake_peer(&big, Mode::Corrupt).await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(bad.digest.clone()), bad_addr, "liar");
    let c = Client::new(streaming(), &prov);
    let req = http::Request::get(blob_uri(&bad.digest))
        .header("range", "bytes=10-20")
        .body(Body::empty())
        .unwrap();
    let a = send(&c.r, req).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&a), "BLOB_UNKNOWN");
    assert_eq!(c.spooled(), 0);
}

#[tokio::test]
async fn a_slow_first_provider_is_hedged() {
    let big = data(BIG, 11);
    let (_h, hang) = fake_peer(&big, Mode::Hang).await;
    let (good, good_addr) = fake_peer(&big, Mode::Good).await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(good.digest.clone()), hang, "slow");
    prov.add(Key::Digest(good.digest.clone()), good_addr, "fast");
    let c = Client::new(streaming(), &prov);
    let t = Instant::now();
    let a = send(&c.r, get(&blob_uri(&good.digest))).await;
    assert_eq!(a.ok_body().as_ref(), &big[..]);
    // hedge_after is 150 ms; without hedging this would wait for the 700 ms header timeout.
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
}
