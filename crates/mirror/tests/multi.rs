//! Multi-peer downloads over loopback: three fake holders, paced so that all of them take part.

mod common;

use std::sync::Arc;

use axum::body::Body;
use common::*;
use http::StatusCode;
use shoal_mirror::{FetchEventKind, MirrorConfig, Source};
use shoal_oci::Key;

const SIZE: usize = 2 * 1024 * 1024;
const PIECE: u64 = 128 * 1024;
/// Pace of a normal fake holder: the 2 MiB blob takes about 1.3 s from one, 0.45 s from three.
const RATE: u64 = 1536 * 1024;

fn client(prov: &Arc<FakeProviders>) -> Client {
    let cfg = MirrorConfig {
        small_blob_threshold: 64 * 1024,
        multi_peer_threshold: 256 * 1024,
        piece_size: PIECE,
        max_peers_per_blob: 4,
        idle_timeout: std::time::Duration::from_secs(2),
        ..config()
    };
    Client::new(cfg, prov)
}

async fn holders(
    blob: &[u8],
    modes: &[(&str, Mode, u64)],
) -> (Arc<FakeProviders>, Vec<Arc<FakePeer>>) {
    let prov = Arc::new(FakeProviders::default());
    let mut fakes = Vec::new();
    for (name, mode, rate) in modes {
        let (f, addr) = paced_peer(blob, *mode, Some(*rate)).await;
        prov.add(Key::Digest(f.digest.clone()), addr, name);
        fakes.push(f);
    }
    (prov, fakes)
}

#[tokio::test]
async fn a_large_blob_comes_from_all_three_holders_with_bounded_ranges() {
    let blob = data(SIZE, 21);
    let (prov, fakes) = holders(
        &blob,
        &[
            ("a", Mode::Good, RATE),
            ("b", Mode::Good, RATE),
            ("c", Mode::Good, RATE),
        ],
    )
    .await;
    let c = client(&prov);
    let d = fakes[0].digest.clone();
    let a = send(&c.r, get(&blob_uri(&d))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-length"), Some(SIZE.to_string().as_str()));
    assert_eq!(a.ok_body().as_ref(), &blob[..]);
    let by_peer = served(&c.log, &d.to_string(), SIZE as u64);
    assert_eq!(by_peer.len(), 3, "{by_peer:?}");
    assert!(by_peer.values().all(|b| *b >= PIECE), "{by_peer:?}");
    // Every request but the first one is a bounded range of at most one piece.
    for f in &fakes {
        for r in f.ranges.lock().unwrap().iter().flatten() {
            let (s, e) = r.trim_start_matches("bytes=").split_once('-').unwrap();
            let (s, e): (u64, u64) = (s.parse().unwrap(), e.parse().unwrap());
            assert!(e >= s && e - s < PIECE, "{r}");
        }
    }
    let ev = c.log.for_key(&d.to_string());
    assert!(
        matches!(
            ev.iter().rfind(|e| !matches!(e.kind, FetchEventKind::Ended(_))).map(|e| &e.kind),
            Some(FetchEventKind::Verified { bytes }) if *bytes == SIZE as u64
        ),
        "{ev:#?}"
    );
    assert_eq!(c.st.metrics().bytes(Source::Peer), SIZE as u64);
    assert_eq!(c.spooled(), 0);
}

#[tokio::test]
async fn a_holder_dying_midway_hands_its_range_to_the_others() {
    let blob = data(SIZE, 22);
    let (prov, fakes) = holders(
        &blob,
        &[
            ("a", Mode::Good, RATE),
            ("dies", Mode::DieAfterTotal(300 * 1024), RATE),
            ("c", Mode::Good, RATE),
        ],
    )
    .await;
    let c = client(&prov);
    let d = fakes[0].digest.clone();
    let a = send(&c.r, get(&blob_uri(&d))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.ok_body().as_ref(), &blob[..], "complete and verified");
    let ev = c.log.for_key(&d.to_string());
    assert!(
        ev.iter().any(|e| e.peer.as_deref() == Some("dies")
            && matches!(e.kind, FetchEventKind::PeerFailed { .. })),
        "{ev:#?}"
    );
    let by_peer = served(&c.log, &d.to_string(), SIZE as u64);
    let dead = by_peer.get("dies").copied().unwrap_or(0);
    assert!(dead <= 300 * 1024 + 64 * 1024, "{by_peer:?}");
    assert!(by_peer["a"] > dead && by_peer["c"] > dead, "{by_peer:?}");
}

#[tokio::test]
async fn a_slow_holder_serves_less_and_its_last_range_is_taken_over() {
    let blob = data(SIZE, 23);
    let (prov, fakes) = holders(
        &blob,
        &[
            ("a", Mode::Good, RATE),
            ("slow", Mode::Good, RATE / 24),
            ("c", Mode::Good, RATE),
        ],
    )
    .await;
    let c = client(&prov);
    let d = fakes[0].digest.clone();
    let t = std::time::Instant::now();
    let a = send(&c.r, get(&blob_uri(&d))).await;
    let took = t.elapsed();
    assert_eq!(a.ok_body().as_ref(), &blob[..]);
    let by_peer = served(&c.log, &d.to_string(), SIZE as u64);
    let slow = by_peer.get("slow").copied().unwrap_or(0);
    assert!(
        slow * 4 < by_peer["a"] && slow * 4 < by_peer["c"],
        "{by_peer:?}"
    );
    assert!(
        slow < PIECE,
        "the rest of its piece went to a faster holder: {by_peer:?}"
    );
    // Two fast holders alone need about 0.7 s; waiting for the slow one's piece (128 KiB at
    // 64 KiB/s) would take 2 s, re-issuing its rest to a fast holder does not.
    assert!(
        took < std::time::Duration::from_millis(1500),
        "{took:?} {by_peer:?}"
    );
}

#[tokio::test]
async fn a_corrupt_holder_fails_the_whole_blob_then_a_single_peer_pass_finds_it() {
    let blob = data(SIZE, 24);
    let (prov, fakes) = holders(
        &blob,
        &[
            ("liar", Mode::CorruptAll, RATE),
            ("b", Mode::Good, RATE),
            ("c", Mode::Good, RATE),
        ],
    )
    .await;
    let c = client(&prov);
    let d = fakes[0].digest.clone();
    let a = send(&c.r, get(&blob_uri(&d))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.ok_body().as_ref(), &blob[..]);
    let kinds: Vec<_> = c
        .log
        .for_key(&d.to_string())
        .into_iter()
        .map(|e| e.kind)
        .collect();
    let first_mismatch = kinds
        .iter()
        .position(|k| matches!(k, FetchEventKind::DigestMismatch { peers } if peers.len() == 3));
    let blamed = kinds
        .iter()
        .position(|k| matches!(k, FetchEventKind::DigestMismatch { peers } if peers == &["liar"]));
    assert!(
        matches!((first_mismatch, blamed), (Some(m), Some(b)) if m < b),
        "{kinds:#?}"
    );
    // Only the liar is excluded: the next download uses the two honest holders, in parallel.
    let liar_asked = fakes[0].ranges.lock().unwrap().len();
    let a = send(&c.r, get(&blob_uri(&d))).await;
    assert_eq!(a.ok_body().as_ref(), &blob[..]);
    assert_eq!(fakes[0].ranges.lock().unwrap().len(), liar_asked);
    let by_peer = served(&c.log, &d.to_string(), SIZE as u64);
    assert_eq!(by_peer.len(), 2, "{by_peer:?}");
}

#[tokio::test]
async fn a_resumed_ingest_gets_its_suffix_from_the_verified_blob() {
    let blob = data(SIZE, 25);
    let (prov, fakes) = holders(&blob, &[("a", Mode::Good, RATE), ("b", Mode::Good, RATE)]).await;
    let c = client(&prov);
    let d = fakes[0].digest.clone();
    let n = 1_000_000;
    let req = http::Request::get(blob_uri(&d))
        .header("range", format!("bytes={n}-"))
        .body(Body::empty())
        .unwrap();
    let a = send(&c.r, req).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        a.header("content-range"),
        Some(format!("bytes {n}-{}/{SIZE}", SIZE - 1).as_str())
    );
    assert_eq!(a.ok_body().as_ref(), &blob[n..]);
    assert_eq!(served(&c.log, &d.to_string(), SIZE as u64).len(), 2);
}
