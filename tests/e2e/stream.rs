//! Streaming peer blobs with piece checks, against real containerd: corrupt pieces on one of
//! several holders, the only holder corrupt with the registry up and down, and a holder whose
//! piece list lies. In every case no corrupt content is committed, no ingest of the layer is
//! left, and the image pulls without human action (the attempts needed are asserted).

use std::time::{Duration, Instant};

use shoal_oci::Digest;
use shoal_tests::{Daemon, Node, Rig, TestImage, shoal_cluster_with};

const MIB: u64 = 1024 * 1024;

/// Every node configured for its local Shoal, daemons started and ready, with multi-peer
/// downloads (which verify whole before sending) raised above the test layer's size, so its
/// transfer streams from one peer at a time.
fn streaming_cluster(rig: &Rig) -> Vec<Daemon> {
    shoal_cluster_with(rig, &["--multi-peer-threshold", "4294967296"])
}

fn big_layer(img: &TestImage) -> (Digest, u64) {
    img.layers()
        .last()
        .expect("the big image has a layer")
        .clone()
}

/// Where a node's Shoal caches the piece list of `d` (the rig's `--spool-dir` is `<node>/spool`).
pub(crate) fn list_path(node: &Node, d: &Digest) -> std::path::PathBuf {
    node.dir()
        .join("spool")
        .join("pieces-v2")
        .join(format!("sha256-{}", d.hex()))
}

/// Wait until the holder has computed the piece list of `d` (from its good copy).
pub(crate) fn wait_list(node: &Node, daemon: &Daemon, d: &Digest) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !list_path(node, d).exists() {
        assert!(
            Instant::now() < deadline,
            "no piece list for {d}\n{}",
            daemon.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Active ingests of `d` on the node (`ctr content active`).
pub(crate) fn active_ingests(node: &Node, d: &Digest) -> Vec<String> {
    let out = node.ctr(&["content", "active"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(d.hex()))
        .map(str::to_owned)
        .collect()
}

/// CRI pulls until one succeeds (at most `max`); returns the attempts used. After a failed
/// attempt, no ingest of `layer` may be left (checked once containerd's pull has returned).
pub(crate) fn pull_attempts(
    node: &Node,
    daemon: &Daemon,
    img: &TestImage,
    layer: &Digest,
    max: usize,
) -> usize {
    for attempt in 1..=max {
        match node.cri_pull(img.reference()) {
            Ok(_) => return attempt,
            Err(e) => {
                eprintln!("attempt {attempt} failed: {e}");
                assert_no_ingest(node, layer, daemon);
            }
        }
    }
    panic!("no pull succeeded in {max} attempts\n{}", daemon.log_tail());
}

/// No ingest of `d` is left: at once, or within a few seconds when containerd's own GC removes
/// a partial ingest of checked bytes after its pull failed.
pub(crate) fn assert_no_ingest(node: &Node, d: &Digest, daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = active_ingests(node, d);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ingest left behind: {left:?}\n{}",
            daemon.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn assert_committed_right(node: &Node, d: &Digest) {
    let bytes = std::fs::read(node.blob_path(d)).expect("layer committed");
    assert_eq!(
        &Digest::sha256_of(&bytes),
        d,
        "committed content is corrupt"
    );
}

pub(crate) fn logged(d: &Daemon, what: &str) -> bool {
    d.process().log().contains(what)
}

#[test]
fn corrupt_pieces_on_two_holders_are_replaced_and_the_first_pull_succeeds() {
    // Holder 1 has a flipped byte in its first piece, holder 2 in its last bytes; both computed
    // their lists before the damage (a disk going bad after containerd's commit).
    let rig = Rig::builder().nodes(3).start();
    let big = TestImage::big();
    rig.registry().push(&big);
    let [d1, d2, d3] = <[Daemon; 3]>::try_from(streaming_cluster(&rig)).unwrap();
    let (layer, size) = big_layer(&big);
    rig.node(0).pull(big.reference()).unwrap();
    rig.node(1).pull(big.reference()).unwrap();
    wait_list(rig.node(0), &d1, &layer);
    wait_list(rig.node(1), &d2, &layer);
    rig.node(0).corrupt_blob_at(&layer, 10);
    rig.node(1).corrupt_blob_at(&layer, size - 2);
    d3.wait_found(&big, &layer);

    let attempts = pull_attempts(rig.node(2), &d3, &big, &layer, 3);
    assert_eq!(attempts, 1, "{}", d3.log_tail());
    assert_committed_right(rig.node(2), &layer);
    assert_no_ingest(rig.node(2), &layer, &d3);
    assert!(
        logged(&d3, "piece does not match the piece list"),
        "no bad piece detected\n{}",
        d3.log_tail()
    );
    // Whatever came from peers was checked; the rest came from the registry.
    assert!(
        d3.metric(
            "shoal_mirror_peer_faults_total",
            &["event=\"ingest_aborted\""]
        ) == 0.0
    );
}

#[test]
fn the_only_holder_corrupt_mid_blob_is_cut_after_checked_bytes_and_the_registry_finishes() {
    let rig = Rig::builder().nodes(2).start();
    let big = TestImage::big();
    rig.registry().push(&big);
    let [d1, d2] = <[Daemon; 2]>::try_from(streaming_cluster(&rig)).unwrap();
    let (layer, size) = big_layer(&big);
    rig.node(0).pull(big.reference()).unwrap();
    wait_list(rig.node(0), &d1, &layer);
    rig.node(0).corrupt_blob_at(&layer, size / 2);
    d2.wait_found(&big, &layer);

    // With the registry down the pull fails cleanly (nothing bad was sent, so nothing needs
    // repair; containerd's partial ingest of checked bytes is collected when its pull ends).
    rig.registry().stop();
    let failed = rig.node(1).cri_pull(big.reference());
    assert!(
        failed.is_err(),
        "pulled with the registry down and a corrupt holder"
    );
    assert_no_ingest(rig.node(1), &layer, &d2);
    assert!(!rig.node(1).has_blob(&layer));
    // Registry back: the next attempt succeeds without any other action (the corrupt holder is
    // marked bad on the puller for this blob).
    rig.registry().start();
    let attempts = pull_attempts(rig.node(1), &d2, &big, &layer, 3);
    assert_eq!(attempts, 1, "{}", d2.log_tail());
    assert_committed_right(rig.node(1), &layer);
    assert_no_ingest(rig.node(1), &layer, &d2);
    assert!(
        logged(&d2, "piece does not match the piece list"),
        "{}",
        d2.log_tail()
    );
    let from_peer = d2.metric("shoal_mirror_bytes_total", &["source=\"peer\""]);
    assert!(from_peer < size as f64, "{from_peer}");
}

#[test]
fn the_only_holder_corrupt_with_the_registry_up_pulls_at_the_first_attempt() {
    let rig = Rig::builder().nodes(2).start();
    let big = TestImage::big();
    rig.registry().push(&big);
    let [d1, d2] = <[Daemon; 2]>::try_from(streaming_cluster(&rig)).unwrap();
    let (layer, size) = big_layer(&big);
    rig.node(0).pull(big.reference()).unwrap();
    wait_list(rig.node(0), &d1, &layer);
    rig.node(0).corrupt_blob_at(&layer, size / 2 + 3 * MIB);
    d2.wait_found(&big, &layer);
    let attempts = pull_attempts(rig.node(1), &d2, &big, &layer, 3);
    assert_eq!(attempts, 1, "{}", d2.log_tail());
    assert_committed_right(rig.node(1), &layer);
    assert_no_ingest(rig.node(1), &layer, &d2);
    assert!(
        logged(&d2, "piece does not match the piece list"),
        "{}",
        d2.log_tail()
    );
    let from_peer = d2.metric("shoal_mirror_bytes_total", &["source=\"peer\""]);
    assert!(from_peer > 0.0 && from_peer < size as f64, "{from_peer}");
}

#[test]
fn a_holder_whose_list_lies_never_completes_the_body_and_its_ingest_is_aborted() {
    let rig = Rig::builder().nodes(2).start();
    let big = TestImage::big();
    rig.registry().push(&big);
    let [d1, d2] = <[Daemon; 2]>::try_from(streaming_cluster(&rig)).unwrap();
    let (layer, size) = big_layer(&big);
    rig.node(0).pull(big.reference()).unwrap();
    wait_list(rig.node(0), &d1, &layer);
    forge_list(rig.node(0), &layer, size);
    d2.wait_found(&big, &layer);

    let attempts = pull_attempts(rig.node(1), &d2, &big, &layer, 3);
    // containerd 1.6 and 2.2 fail the pull whose ingest was aborted; the next attempt goes to
    // the registry (the liar is marked bad on the puller).
    assert_eq!(attempts, 2, "{}", d2.log_tail());
    assert_committed_right(rig.node(1), &layer);
    assert_no_ingest(rig.node(1), &layer, &d2);
    assert!(
        logged(&d2, "does not match its digest; the last piece is withheld"),
        "{}",
        d2.log_tail()
    );
    assert_eq!(
        d2.metric(
            "shoal_mirror_peer_faults_total",
            &["event=\"ingest_aborted\""]
        ),
        1.0,
        "{}",
        d2.log_tail()
    );
}

/// Damage the holder's copy of `layer` (at a third) and forge its list from the damaged bytes
/// (their SHA-256 chaining states at every 1 MiB): every piece but the last matches the list,
/// only the last piece's check (the whole digest) can tell.
pub(crate) fn forge_list(node: &Node, layer: &Digest, size: u64) {
    node.corrupt_blob_at(layer, size / 3);
    let bad = std::fs::read(node.blob_path(layer)).unwrap();
    let mut list = Vec::new();
    list.extend_from_slice(&MIB.to_be_bytes());
    list.extend_from_slice(&size.to_be_bytes());
    let mut h = shoal_oci::ChainHasher::new();
    for c in bad.chunks(MIB as usize) {
        h.update(c);
        if h.len() < size {
            list.extend_from_slice(&h.state().unwrap().to_bytes());
        }
    }
    std::fs::write(list_path(node, layer), list).unwrap();
}
