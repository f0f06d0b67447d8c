//! Multi-peer streaming against real containerd: the 200 MiB layer (above the 64 MiB
//! multi-peer threshold) from three holders, one of them bad: a flipped byte in its first
//! piece, in a middle piece, in its last bytes, or a piece list that lies. The registry is
//! stopped, so every byte comes from peers. In every case the pull succeeds without human
//! action (the attempts are asserted), the committed layer is right, no ingest is left, and
//! the bad holder is marked.
//!
//! Which holder serves which range is up to the scheduler. To make sure the bad holder's bytes
//! are the ones checked, holder 1 crawls (256 kbit/s) and holder 2 is cut off the network until
//! the puller has caught the bad piece: the bad holder serves every range, taking over holder
//! 1's ranges before it has written a byte (work stealing judges holder 1 against the median of
//! the two), and holder 2 fails its requests at once. Then both are freed, and the replacement
//! and the rest come from the honest holders.

use std::time::{Duration, Instant};

use shoal_oci::Digest;
use shoal_tests::{Daemon, Node, TestImage};

use crate::multi::{self, Setup, json, peer_id, served_by};
use crate::stream::{assert_no_ingest, forge_list, list_path, logged, pull_attempts, wait_list};

/// Three holders with their piece lists computed from good copies; the registry stopped.
fn holders() -> Setup {
    let s = multi::setup_with(TestImage::big());
    for i in 0..3 {
        wait_list(s.rig.node(i), &s.daemons[i], &s.layer);
    }
    s
}

fn crawl(node: &Node) {
    let out = node.exec(&[
        "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "256kbit", "burst", "16kb",
        "latency", "50ms",
    ]);
    assert!(out.status.success(), "{out:?}");
}

fn unlimit(node: &Node) {
    let out = node.exec(&["tc", "qdisc", "del", "dev", "eth0", "root"]);
    assert!(out.status.success(), "{out:?}");
}

fn faults(d: &Daemon, event: &str) -> f64 {
    d.metric(
        "shoal_mirror_peer_faults_total",
        &[&format!("event=\"{event}\"")],
    )
}

/// The failovers of the puller's last request for the layer.
fn failovers(puller: &Daemon, layer: &Digest) -> serde_json::Value {
    let v = json(puller, &["explain", &layer.to_string()]);
    v["blobs"][0]["requests"]
        .as_array()
        .and_then(|r| r.last())
        .map(|r| r["failovers"].clone())
        .unwrap_or_default()
}

/// Holder 0 has a flipped byte at `at(size)`; holders 1 and 2 are honest.
fn one_corrupt_holder(at: impl Fn(u64) -> u64) {
    let s = holders();
    let (rig, puller) = (&s.rig, &s.daemons[3]);
    rig.node(0).corrupt_blob_at(&s.layer, at(s.size));
    crawl(rig.node(1));
    rig.set_node_link(2, false);
    let attempts = std::thread::scope(|sc| {
        sc.spawn(|| {
            // Free the honest holders once the bad piece was caught (or after a minute, so a
            // failure shows as an assertion, not a hang).
            let deadline = Instant::now() + Duration::from_secs(60);
            while faults(puller, "bad_piece") < 1.0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            unlimit(rig.node(1));
            rig.set_node_link(2, true);
        });
        pull_attempts(rig.node(3), puller, &s.img, &s.layer, 3)
    });
    eprintln!("pulled in {attempts} attempt(s)");
    if std::env::var_os("SHOAL_TEST_DEBUG").is_some() {
        let v = json(puller, &["explain", &s.layer.to_string()]);
        eprintln!("{v:#}");
        for l in puller
            .process()
            .log()
            .lines()
            .filter(|l| l.contains("shoal_mirror") && !l.contains("DEBUG"))
        {
            eprintln!("{}", &l[..l.len().min(500)]);
        }
    }
    assert_eq!(attempts, 1, "{}", puller.log_tail());
    assert_eq!(multi::committed_digest(&s), s.layer);
    assert_no_ingest(rig.node(3), &s.layer, puller);
    // The bad holder was caught piece by piece and marked; nothing unchecked was sent.
    assert!(faults(puller, "bad_piece") >= 1.0, "{}", puller.log_tail());
    assert!(logged(puller, "piece does not match the piece list"));
    assert_eq!(faults(puller, "ingest_aborted"), 0.0);
    let bad = peer_id(&s.daemons[0]);
    let f = failovers(puller, &s.layer);
    assert!(
        f.as_array().is_some_and(|f| f
            .iter()
            .any(|f| f["peer_id"] == bad.as_str() && f["reason_kind"] == "digest-mismatch")),
        "the corrupt holder is not explained as marked: {f:#}"
    );
    // The replacement came from an honest holder, in the same transfer.
    let by = served_by(puller, &s.layer);
    assert_eq!(by.iter().map(|(_, b)| b).sum::<u64>(), s.size, "{by:?}");
    let honest = [peer_id(&s.daemons[1]), peer_id(&s.daemons[2])];
    assert!(by.iter().any(|(p, _)| honest.contains(p)), "{by:?}");
}

#[test]
fn a_corrupt_first_piece_on_one_of_three_holders_is_replaced_in_the_same_pull() {
    one_corrupt_holder(|_| 10);
}

#[test]
fn a_corrupt_middle_piece_on_one_of_three_holders_is_replaced_in_the_same_pull() {
    one_corrupt_holder(|size| size / 2 + 3 * 1024 * 1024);
}

#[test]
fn corrupt_last_bytes_on_one_of_three_holders_are_replaced_in_the_same_pull() {
    one_corrupt_holder(|size| size - 2);
}

#[test]
fn a_holder_whose_list_lies_is_caught_at_the_tail_and_the_blob_comes_from_the_honest_holders() {
    let s = holders();
    let (rig, puller) = (&s.rig, &s.daemons[3]);
    forge_list(rig.node(0), &s.layer, s.size);
    // The honest holders publish no list (as an old version would): a directory where the
    // cached list would be is never read as one, nor computed again. Holder 1 crawls and
    // holder 2 is cut off, so the liar serves every byte (see the module doc).
    for i in 1..3 {
        let p = list_path(rig.node(i), &s.layer);
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
    }
    crawl(rig.node(1));
    rig.set_node_link(2, false);
    // Every piece but the last matches the lying list; the last one's check is the whole
    // digest, and it fails from the liar and again when an honest holder sends it (the list
    // is what is wrong): the last piece is withheld and the ingest aborted. containerd then
    // fetches the blob again (1.6, 1.7 and 2.2 do so within the same pull), which only the
    // honest holders may answer: they are freed once the abort happened, so that re-fetch is
    // not held up by the staging.
    let attempts = std::thread::scope(|sc| {
        let first = sc.spawn(|| rig.node(3).cri_pull(s.img.reference()));
        let deadline = Instant::now() + Duration::from_secs(120);
        while faults(puller, "ingest_aborted") < 1.0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        unlimit(rig.node(1));
        rig.set_node_link(2, true);
        match first.join().expect("pull thread") {
            Ok(_) => 1,
            Err(e) => {
                eprintln!("attempt 1 failed: {e}");
                assert_no_ingest(rig.node(3), &s.layer, puller);
                1 + pull_attempts(rig.node(3), puller, &s.img, &s.layer, 2)
            }
        }
    });
    eprintln!("pulled in {attempts} attempt(s)");
    assert!(
        logged(
            puller,
            "does not match its digest; the last piece is withheld"
        ),
        "{}",
        puller.log_tail()
    );
    assert_eq!(
        faults(puller, "ingest_aborted"),
        1.0,
        "{}",
        puller.log_tail()
    );
    assert!(attempts <= 2, "{}", puller.log_tail());
    assert_eq!(multi::committed_digest(&s), s.layer);
    assert_no_ingest(rig.node(3), &s.layer, puller);
    let liar = peer_id(&s.daemons[0]);
    let by = served_by(puller, &s.layer);
    assert_eq!(by.iter().map(|(_, b)| b).sum::<u64>(), s.size, "{by:?}");
    assert!(
        by.iter().all(|(p, _)| *p != liar),
        "the liar served again: {by:?}"
    );
}
