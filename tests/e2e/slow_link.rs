//! A slow but moving peer link is never cut: a 200 MiB layer from a peer over a 4 Mbit/s link
//! (about 7 minutes), with the registry stopped so that any cut fails the pull. Out of CI for its
//! length: `cargo test -p shoal-tests --test e2e slow_link -- --ignored` (README, "Out of CI").

use std::sync::mpsc;
use std::time::{Duration, Instant};

use shoal_oci::Digest;
use shoal_tests::{Rig, TestImage, shoal_cluster};

const MBIT: u32 = 4;
/// The pull must finish well within this (the line-rate bound is ~7 min).
const DEADLINE: Duration = Duration::from_secs(20 * 60);

#[test]
#[ignore = "about 7 minutes: a 200 MiB layer over a 4 Mbit/s link"]
fn a_200_mib_layer_over_a_4_mbit_link_comes_from_the_peer_uncut() {
    let rig = Rig::builder().nodes(2).start();
    let big = TestImage::big();
    rig.registry().push(&big);
    rig.node(0).pull(big.reference()).unwrap();
    let daemons = shoal_cluster(&rig);
    let (layer, size) = big.layers().last().expect("a layer").clone();
    daemons[1].wait_found(&big, &layer);
    rig.registry().stop();
    rig.node(0).limit_rate(MBIT);

    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let pulled = std::thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(rig.node(1).pull(big.reference()));
        });
        let got = rx.recv_timeout(DEADLINE);
        if got.is_err() {
            // Unblock the scope: the pull thread ends when its containerd goes.
            rig.node(1).kill_containerd();
        }
        got
    });
    let took = started.elapsed();
    let pulled = pulled.unwrap_or_else(|_| {
        panic!(
            "the pull did not end within {DEADLINE:?}\n{}",
            daemons[1].log_tail()
        )
    });
    pulled.unwrap_or_else(|e| panic!("pull over {MBIT} Mbit/s: {e}\n{}", daemons[1].log_tail()));
    eprintln!("{size} B over {MBIT} Mbit/s from the peer: {took:?}");

    let bytes = std::fs::read(rig.node(1).blob_path(&layer)).expect("layer committed");
    assert_eq!(Digest::sha256_of(&bytes), layer);
    // It really crossed the slow link (the bound is the line rate), and it was never cut: no
    // stall was counted and every byte came from the holder in one request.
    let line_rate = Duration::from_secs_f64(size as f64 * 8.0 / (f64::from(MBIT) * 1e6));
    assert!(took > line_rate.mul_f64(0.8), "{took:?} vs {line_rate:?}");
    let stalls = daemons[1].metric("shoal_mirror_peer_faults_total", &["event=\"stall\""]);
    assert_eq!(stalls, 0.0, "{}", daemons[1].log_tail());
    assert!(daemons[0].metric("shoal_mirror_bytes_total", &["source=\"local\""]) >= size as f64);
}
