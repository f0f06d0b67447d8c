//! Streaming peer blobs to containerd piece by piece (loopback fake peers, in-memory ingest
//! control): corrupt pieces at the start, middle and end, a lying list, no list, a stall, and
//! the verify-before-send fallback when no ingest can be aborted.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use common::*;
use http::StatusCode;
use shoal_mirror::{FetchEventKind, MirrorConfig, router};
use shoal_oci::{Digest, Key};

/// Piece size of the lists in these tests (the smallest a puller accepts).
const PIECE: usize = 64 * 1024;
/// Five whole pieces and a short last one.
const SIZE: usize = 5 * PIECE + 123;

fn cfg() -> MirrorConfig {
    MirrorConfig {
        small_blob_threshold: 16 * 1024,
        multi_peer_threshold: u64::MAX,
        ..config()
    }
}

/// A holder serving `blob` with `mode`, publishing `list` (or none).
async fn holder(
    blob: &[u8],
    mode: Mode,
    list: Option<Vec<u8>>,
) -> (Arc<FakePeer>, std::net::SocketAddr) {
    let (p, addr) = fake_peer(blob, mode).await;
    *p.list.lock().unwrap() = list;
    (p, addr)
}

/// A streaming client whose providers of `d` are `holders` (address, peer name), with the
/// ingest control it aborts through.
fn streaming_client(
    d: &Digest,
    holders: &[(std::net::SocketAddr, &str)],
) -> (Client, Arc<FakeIngest>) {
    let prov = Arc::new(FakeProviders::default());
    for (addr, name) in holders {
        prov.add(Key::Digest(d.clone()), *addr, name);
    }
    let ingest = FakeIngest::new();
    let c = Client::streaming(cfg(), &prov, ingest.clone());
    (c, ingest)
}

fn ranges(p: &FakePeer) -> Vec<Option<String>> {
    p.ranges.lock().unwrap().clone()
}

/// One holder with a corrupt byte at `at` (and a correct list), one good holder: the bad piece
/// is fetched again from the good one at the piece's offset, nothing bad is sent, no abort.
async fn corrupt_piece_is_replaced(at: usize) {
    let blob = data(SIZE, 1);
    let d = Digest::sha256_of(&blob);
    let list = piece_list(&blob, PIECE);
    let (bad, a_bad) = holder(&blob, Mode::CorruptAt(at), Some(list.clone())).await;
    let (good, a_good) = holder(&blob, Mode::Good, Some(list)).await;
    let (c, ingest) = streaming_client(&d, &[(a_bad, "bad"), (a_good, "good")]);
    let got = fetch(&c, &d).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(!got.failed, "body failed");
    assert_eq!(got.bytes, blob, "the streamed blob is exact");
    assert_eq!(ingest.aborted(), 0, "nothing unchecked was sent");
    assert_eq!(c.st.metrics().peer_faults("bad_piece"), 1);
    let piece_start = at / PIECE * PIECE;
    let want = if piece_start == 0 {
        None
    } else {
        Some(format!("bytes={piece_start}-"))
    };
    assert_eq!(
        ranges(&good).last().cloned().flatten(),
        want,
        "re-fetched at the piece's offset"
    );
    assert!(ranges(&bad).len() == 1, "the bad holder is not asked again");
    assert_eq!(c.spooled(), 0, "streaming uses no spool file");
}

#[tokio::test]
async fn a_corrupt_first_piece_is_replaced_from_another_holder() {
    corrupt_piece_is_replaced(10).await;
}

#[tokio::test]
async fn a_corrupt_middle_piece_is_replaced_from_another_holder() {
    corrupt_piece_is_replaced(2 * PIECE + 500).await;
}

#[tokio::test]
async fn corrupt_last_bytes_are_replaced_from_another_holder() {
    corrupt_piece_is_replaced(SIZE - 2).await;
}

#[tokio::test]
async fn a_good_holder_streams_with_its_list() {
    let blob = data(SIZE, 2);
    let d = Digest::sha256_of(&blob);
    let (p, addr) = holder(&blob, Mode::Good, Some(piece_list(&blob, PIECE))).await;
    let (c, ingest) = streaming_client(&d, &[(addr, "a")]);
    let got = fetch(&c, &d).await;
    assert_eq!((got.status, got.failed), (StatusCode::OK, false));
    assert_eq!(got.bytes, blob);
    assert_eq!(p.list_asks.load(Ordering::SeqCst), 1);
    assert_eq!(ingest.aborted(), 0);
    assert!(
        c.log
            .for_key(&d.to_string())
            .iter()
            .any(|e| e.kind == FetchEventKind::Verified { bytes: SIZE as u64 })
    );
}

#[tokio::test]
async fn a_lying_list_never_completes_the_body_and_the_ingest_is_aborted() {
    // The only holder's bytes are wrong in piece 3, and its list was made from those bytes: every
    // piece matches the list, only the whole digest catches it.
    let blob = data(SIZE, 3);
    let d = Digest::sha256_of(&blob);
    let mut wrong = blob.clone();
    wrong[3 * PIECE + 7] ^= 0xff;
    let (_p, addr) = holder(
        &blob,
        Mode::CorruptAt(3 * PIECE + 7),
        Some(piece_list(&wrong, PIECE)),
    )
    .await;
    let (c, ingest) = streaming_client(&d, &[(addr, "liar")]);
    let got = fetch(&c, &d).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.failed, "the body must fail, not end cleanly");
    assert_eq!(got.bytes.len(), 5 * PIECE, "the last piece was withheld");
    assert_eq!(
        ingest.aborted(),
        1,
        "the ingest was aborted before the close"
    );
    assert!(c.st.metrics().peer_faults("ingest_aborted") == 1);
    // The liar is marked: the next request does not use it and answers 404 (upstream).
    let again = send(&c.r, get(&blob_uri(&d))).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_lying_list_is_caught_when_an_honest_holder_sends_the_last_piece_again() {
    // The liar serves wrong bytes with their states; an honest holder publishes no list. The
    // last piece fails from the liar (marked), comes again from the honest holder and fails
    // again: the list is what is wrong, so the tail is withheld and the ingest aborted.
    let blob = data(SIZE, 12);
    let d = Digest::sha256_of(&blob);
    let mut wrong = blob.clone();
    wrong[PIECE + 3] ^= 0xff;
    let (_l, a_liar) = holder(
        &blob,
        Mode::CorruptAt(PIECE + 3),
        Some(piece_list(&wrong, PIECE)),
    )
    .await;
    let (honest, a_honest) = holder(&blob, Mode::Good, None).await;
    let (c, ingest) = streaming_client(&d, &[(a_liar, "liar"), (a_honest, "honest")]);
    let got = fetch(&c, &d).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.failed, "the body must fail, not end cleanly");
    assert_eq!(got.bytes.len(), 5 * PIECE, "the last piece was withheld");
    assert_eq!(
        ranges(&honest).last().cloned().flatten(),
        Some(format!("bytes={}-", 5 * PIECE)),
        "the last piece was asked again of the honest holder"
    );
    assert_eq!(ingest.aborted(), 1);
    assert_eq!(c.st.metrics().peer_faults("bad_piece"), 1);
}

#[tokio::test]
async fn the_only_holder_corrupt_in_its_last_piece_cannot_be_told_from_a_lying_list() {
    // The list is right, the holder's last piece is not, and no one else has the blob: a
    // failed last piece that cannot be fetched again may as well be a list that lied about an
    // earlier state, so the prefix it vouched for is suspect: the ingest is aborted.
    let blob = data(SIZE, 13);
    let d = Digest::sha256_of(&blob);
    let (_p, addr) = holder(
        &blob,
        Mode::CorruptAt(SIZE - 2),
        Some(piece_list(&blob, PIECE)),
    )
    .await;
    let (c, ingest) = streaming_client(&d, &[(addr, "bad")]);
    let got = fetch(&c, &d).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.failed);
    assert_eq!(got.bytes, blob[..5 * PIECE]);
    assert_eq!(ingest.aborted(), 1);
}

#[tokio::test]
async fn a_last_piece_bad_everywhere_under_a_corroborated_list_ends_after_the_checked_bytes() {
    // Both holders publish the right list; one is corrupt in its first piece, the other in its
    // last bytes, so no one can send a good last piece. The other holder's list agrees with
    // the state before the last piece: the prefix is right, the body ends after it (containerd
    // resumes from the registry) and nothing is aborted.
    let blob = data(SIZE, 14);
    let d = Digest::sha256_of(&blob);
    let list = piece_list(&blob, PIECE);
    let (_a, a_first) = holder(&blob, Mode::CorruptAt(10), Some(list.clone())).await;
    let (_b, a_last) = holder(&blob, Mode::CorruptAt(SIZE - 2), Some(list)).await;
    let (c, ingest) = streaming_client(&d, &[(a_first, "bad-first"), (a_last, "bad-last")]);
    let got = fetch(&c, &d).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.failed);
    assert_eq!(got.bytes, blob[..5 * PIECE], "exactly the verified prefix");
    assert_eq!(ingest.aborted(), 0);
    assert_eq!(c.st.metrics().peer_faults("bad_piece"), 2);
}

#[tokio::test]
async fn without_a_list_a_corrupt_blob_is_cut_before_its_tail_and_the_ingest_aborted() {
    // Without a list the puller's own pieces are 1 MiB: two are sent, the short tail is held.
    let size = 2 * 1024 * 1024 + 4321;
    let blob = data(size, 4);
    let d = Digest::sha256_of(&blob);
    let (p, addr) = holder(&blob, Mode::CorruptAt(PIECE / 2), None).await;
    let (c, ingest) = streaming_client(&d, &[(addr, "old")]);
    let got = fetch(&c, &d).await;
    assert!(p.list_asks.load(Ordering::SeqCst) >= 1);
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.failed);
    assert_eq!(got.bytes.len(), 2 * 1024 * 1024, "the tail is never sent");
    assert_eq!(ingest.aborted(), 1);
}

#[tokio::test]
async fn a_one_piece_blob_is_checked_whole_before_any_header() {
    // Smaller than one piece and no list: the first piece is the tail, so a mismatch must be
    // caught before the headers (then the next holder serves it).
    let blob = data(SIZE, 11);
    let d = Digest::sha256_of(&blob);
    let (_b, a_bad) = holder(&blob, Mode::CorruptAt(5), None).await;
    let (_g, a_good) = holder(&blob, Mode::Good, None).await;
    let (c, ingest) = streaming_client(&d, &[(a_bad, "bad"), (a_good, "good")]);
    let got = fetch(&c, &d).await;
    assert_eq!((got.status, got.failed), (StatusCode::OK, false));
    assert_eq!(got.bytes, blob);
    assert_eq!(ingest.aborted(), 0);
}

#[tokio::test]
async fn the_only_holder_corrupt_in_its_first_piece_gets_a_404_and_nothing_is_sent() {
    let blob = data(SIZE, 5);
    let d = Digest::sha256_of(&blob);
    let (_p, addr) = holder(&blob, Mode::CorruptAt(1), Some(piece_list(&blob, PIECE))).await;
    let (c, ingest) = streaming_client(&d, &[(addr, "bad")]);
    let got = fetch(&c, &d).await;
    assert_eq!(
        got.status,
        StatusCode::NOT_FOUND,
        "no headers before a verified piece"
    );
    assert_eq!(ingest.aborted(), 0);
}

#[tokio::test]
async fn the_only_holder_corrupt_mid_blob_ends_after_the_verified_prefix() {
    // Every byte sent was checked against the list: the body just ends (a normal close) and
    // containerd resumes from the next host with a Range; nothing to abort.
    let blob = data(SIZE, 6);
    let d = Digest::sha256_of(&blob);
    let (_p, addr) = holder(
        &blob,
        Mode::CorruptAt(3 * PIECE + 1),
        Some(piece_list(&blob, PIECE)),
    )
    .await;
    let (c, ingest) = streaming_client(&d, &[(addr, "bad")]);
    let got = fetch(&c, &d).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.failed);
    assert_eq!(got.bytes, blob[..3 * PIECE], "exactly the verified prefix");
    assert_eq!(ingest.aborted(), 0);
}

#[tokio::test]
async fn a_stalled_holder_is_counted_marked_and_replaced() {
    let blob = data(SIZE, 7);
    let d = Digest::sha256_of(&blob);
    let list = piece_list(&blob, PIECE);
    let (_s, a_stall) = holder(&blob, Mode::StallAfter(2 * PIECE), Some(list.clone())).await;
    let (good, a_good) = holder(&blob, Mode::Good, Some(list)).await;
    let (c, ingest) = streaming_client(&d, &[(a_stall, "stall"), (a_good, "good")]);
    let got = fetch(&c, &d).await;
    assert_eq!((got.status, got.failed), (StatusCode::OK, false));
    assert_eq!(got.bytes, blob);
    assert_eq!(c.st.metrics().peer_faults("stall"), 1);
    assert!(
        ranges(&good).last().cloned().flatten().is_some(),
        "resumed with a Range"
    );
    assert_eq!(ingest.aborted(), 0);
}

#[tokio::test]
async fn a_slow_but_moving_holder_is_never_cut() {
    // 64 KiB/s with a 400 ms idle timeout: every chunk arrives well within it.
    let blob = data(3 * PIECE, 8);
    let d = Digest::sha256_of(&blob);
    let (p, addr) = paced_peer(&blob, Mode::Good, Some(64 * 1024)).await;
    *p.list.lock().unwrap() = Some(piece_list(&blob, PIECE));
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(d.clone()), addr, "slow");
    let c = Client::streaming(cfg(), &prov, FakeIngest::new());
    let got = fetch(&c, &d).await;
    assert_eq!((got.status, got.failed), (StatusCode::OK, false));
    assert_eq!(got.bytes, blob);
    assert_eq!(c.st.metrics().peer_faults("stall"), 0);
}

#[tokio::test]
async fn without_an_ingest_control_blobs_are_verified_before_sending() {
    let blob = data(SIZE, 9);
    let d = Digest::sha256_of(&blob);
    let (_p, addr) = holder(&blob, Mode::CorruptAt(PIECE), None).await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(d.clone()), addr, "bad");
    let ingest = FakeIngest::new();
    ingest.available.store(false, Ordering::SeqCst);
    let c = Client::streaming(cfg(), &prov, ingest.clone());
    let got = fetch(&c, &d).await;
    assert_eq!(
        got.status,
        StatusCode::NOT_FOUND,
        "spooled, verified, refused"
    );
    assert_eq!(ingest.aborted(), 0);
}

#[tokio::test]
async fn a_real_holder_publishes_a_list_that_the_puller_uses() {
    // The holder is a real mirror router: the first pull streams without a list (it is being
    // computed), the next one checks every piece against it.
    let store = Arc::new(MemStore::default());
    let blob = data(2 * 1024 * 1024 + 5, 10);
    let d = store.put(&blob, None);
    let tmp = spool_dir();
    let hcfg = MirrorConfig {
        spool_dir: tmp.path().join("h"),
        ..config()
    };
    let addr = serve(router(state(
        hcfg,
        &store,
        &Arc::new(FakeProviders::default()),
    )))
    .await;
    let prov = Arc::new(FakeProviders::default());
    prov.add(Key::Digest(d.clone()), addr, "real");
    let c = Client::streaming(cfg(), &prov, FakeIngest::new());
    let got = fetch(&c, &d).await;
    assert_eq!((got.status, got.failed), (StatusCode::OK, false));
    assert_eq!(got.bytes, blob);
    let list_uri = format!("/shoal/v2/pieces/{d}");
    let mut published = false;
    for _ in 0..100 {
        let a = reqwest::Client::new()
            .get(format!("http://{addr}{list_uri}"))
            .header(shoal_mirror::PEER_HEADER, "1")
            .send()
            .await
            .unwrap();
        if a.status() == StatusCode::OK {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(published);
    let got = fetch(&c, &d).await;
    assert_eq!(got.bytes, blob);
    let _ = Body::empty();
}
