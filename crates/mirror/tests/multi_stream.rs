//! Multi-peer streaming over loopback: paced fake holders with piece lists, and an in-memory
//! ingest control, so that checked pieces stream while ranges come from several holders.

mod common;

use std::sync::Arc;

use common::*;
use http::StatusCode;
use shoal_mirror::{FetchEventKind, MirrorConfig};
use shoal_oci::Key;

/// Piece size of the lists (the smallest a puller accepts).
const PIECE: usize = 64 * 1024;
/// 32 whole pieces and a short last one.
const SIZE: usize = 32 * PIECE + 1234;
/// Ranges handed to holders: four pieces.
const RANGE: u64 = 4 * PIECE as u64;
/// Pace of a normal holder: the blob takes about 1.4 s from one.
const RATE: u64 = 1536 * 1024;

fn cfg() -> MirrorConfig {
    MirrorConfig {
        small_blob_threshold: 16 * 1024,
        multi_peer_threshold: 256 * 1024,
        piece_size: RANGE,
        max_peers_per_blob: 4,
        idle_timeout: std::time::Duration::from_secs(2),
        ..config()
    }
}

/// Holders of `blob` (name, mode, pace, the list they publish).
async fn holders(
    blob: &[u8],
    modes: &[(&str, Mode, u64, Option<Vec<u8>>)],
) -> (Arc<FakeProviders>, Vec<Arc<FakePeer>>) {
    let prov = Arc::new(FakeProviders::default());
    let mut fakes = Vec::new();
    for (name, mode, rate, list) in modes {
        let (f, addr) = paced_peer(blob, *mode, Some(*rate)).await;
        *f.list.lock().unwrap() = list.clone();
        prov.add(Key::Digest(f.digest.clone()), addr, name);
        fakes.push(f);
    }
    (prov, fakes)
}

/// Three listed holders, the middle one named `b` in `mode`: the streamed blob and the client.
async fn three_listed(
    blob: &[u8],
    b: (&str, Mode),
) -> (Got, Client, Arc<FakeIngest>, Vec<Arc<FakePeer>>) {
    let list = Some(piece_list(blob, PIECE));
    let (prov, fakes) = holders(
        blob,
        &[
            ("a", Mode::Good, RATE, list.clone()),
            (b.0, b.1, RATE, list.clone()),
            ("c", Mode::Good, RATE, list),
        ],
    )
    .await;
    let ingest = FakeIngest::new();
    let c = Client::streaming(cfg(), &prov, ingest.clone());
    let got = fetch(&c, &fakes[0].digest).await;
    assert_eq!((got.status, got.failed), (StatusCode::OK, false));
    (got, c, ingest, fakes)
}

#[tokio::test]
async fn three_holders_stream_checked_pieces() {
    let blob = data(SIZE, 31);
    let (got, c, ingest, fakes) = three_listed(&blob, ("b", Mode::Good)).await;
    let d = fakes[0].digest.clone();
    assert_eq!(got.bytes, blob);
    assert_eq!(ingest.aborted(), 0);
    let by_peer = served(&c.log, &d.to_string(), SIZE as u64);
    assert!(by_peer.len() >= 2, "several holders served: {by_peer:?}");
    let ev = c.log.for_key(&d.to_string());
    assert!(
        ev.iter()
            .any(|e| e.kind == FetchEventKind::Verified { bytes: SIZE as u64 }),
        "{ev:#?}"
    );
}

#[tokio::test]
async fn a_holder_corrupt_everywhere_is_caught_and_its_pieces_come_from_the_others() {
    let blob = data(SIZE, 32);
    let (got, c, ingest, fakes) = three_listed(&blob, ("bad", Mode::CorruptAll)).await;
    let d = fakes[0].digest.clone();
    assert_eq!(got.bytes, blob, "every bad piece was replaced");
    assert_eq!(ingest.aborted(), 0, "nothing unchecked was sent");
    let ev = c.log.for_key(&d.to_string());
    let caught = ev
        .iter()
        .any(|e| matches!(&e.kind, FetchEventKind::DigestMismatch { peers } if peers == &["bad"]));
    let asked = !fakes[1].ranges.lock().unwrap().is_empty();
    assert!(
        !asked || caught,
        "the corrupt holder served and was not caught: {ev:#?}"
    );
    // Spans stay exact through the replacements; the liar is credited with nothing.
    let by_peer = served(&c.log, &d.to_string(), SIZE as u64);
    assert_eq!(by_peer.get("bad"), None, "{by_peer:?}");
    assert!(
        c.st.metrics().peer_faults("bad_piece") <= 1,
        "caught once, then dropped"
    );
}

#[tokio::test]
async fn a_corrupt_last_piece_is_refetched_not_taken_for_a_lying_list() {
    // The last piece's check is the whole digest; failing once, it is a bad piece like any
    // other (the list is right): refetched from the others, nothing aborted.
    let blob = data(SIZE, 35);
    let (got, c, ingest, fakes) = three_listed(&blob, ("bad", Mode::CorruptAt(SIZE - 2))).await;
    let d = fakes[0].digest.clone();
    assert_eq!(got.bytes, blob, "the bad last piece was replaced");
    assert_eq!(ingest.aborted(), 0);
    assert_eq!(c.st.metrics().peer_faults("ingest_aborted"), 0);
    let by_peer = served(&c.log, &d.to_string(), SIZE as u64);
    assert_eq!(by_peer.values().sum::<u64>(), SIZE as u64, "{by_peer:?}");
}

#[tokio::test]
async fn a_lying_list_withholds_the_tail_and_aborts_the_ingest() {
    // The liar's bytes are wrong in piece 9 and its list was made from them; the honest
    // holder publishes no list and crawls, so the liar serves (or takes over) every range.
    let blob = data(SIZE, 33);
    let mut wrong = blob.clone();
    wrong[9 * PIECE + 7] ^= 0xff;
    let (prov, fakes) = holders(
        &blob,
        &[
            (
                "liar",
                Mode::CorruptAt(9 * PIECE + 7),
                RATE,
                Some(piece_list(&wrong, PIECE)),
            ),
            ("a", Mode::Good, 16 * 1024, None),
        ],
    )
    .await;
    let ingest = FakeIngest::new();
    let c = Client::streaming(cfg(), &prov, ingest.clone());
    let d = fakes[0].digest.clone();
    let got = fetch(&c, &d).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.failed, "the body must fail, not end cleanly");
    assert_eq!(got.bytes.len(), 32 * PIECE, "the last piece was withheld");
    assert_eq!(got.bytes[..], wrong[..32 * PIECE]);
    assert_eq!(
        ingest.aborted(),
        1,
        "the ingest was aborted before the close"
    );
}

#[tokio::test]
async fn without_a_list_a_multi_peer_blob_is_verified_whole_first() {
    let blob = data(SIZE, 34);
    let (prov, fakes) = holders(
        &blob,
        &[
            ("a", Mode::Good, RATE, None),
            ("bad", Mode::CorruptAll, RATE, None),
        ],
    )
    .await;
    let ingest = FakeIngest::new();
    let c = Client::streaming(cfg(), &prov, ingest.clone());
    let d = fakes[0].digest.clone();
    let got = fetch(&c, &d).await;
    assert_eq!((got.status, got.failed), (StatusCode::OK, false));
    assert_eq!(got.bytes, blob);
    assert_eq!(ingest.aborted(), 0, "nothing was sent before it verified");
}
