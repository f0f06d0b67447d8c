//! Faults on the peer path: a holder that dies mid-transfer and a holder that serves corrupt
//! bytes. containerd must end up with the right image and never commit unverified bytes.

use std::time::Duration;

use shoal_tests::{Daemon, Rig, TestImage, shoal_cluster};

/// The big image's (only) layer.
fn big_layer(img: &TestImage) -> shoal_oci::Digest {
    img.layers()
        .last()
        .expect("the big image has a layer")
        .0
        .clone()
}

fn served_locally(d: &Daemon) -> f64 {
    d.metric("shoal_mirror_bytes_total", &["source=\"local\""])
}

#[test]
fn a_holder_killed_mid_transfer_hands_over_to_another() {
    let rig = Rig::builder().nodes(3).start();
    let big = TestImage::big();
    rig.registry().push(&big);
    let [d1, d2, d3] = <[Daemon; 3]>::try_from(shoal_cluster(&rig)).unwrap();
    rig.node(0).pull(big.reference()).unwrap();
    rig.node(1).pull(big.reference()).unwrap();
    let layer = big_layer(&big);
    d3.wait_found(&big, &layer);
    rig.registry().stop();

    // Slow both holders down (200 Mbit/s: ~8 s for the layer) so the kill lands mid-transfer.
    rig.node(0).limit_rate(200);
    rig.node(1).limit_rate(200);
    let puller = rig.node(2);
    // Node 2 pulled through Shoal from node 1 already: count only what is served from now on.
    let (base1, base2) = (served_locally(&d1), served_locally(&d2));
    let pull = std::thread::scope(|s| {
        let pull = s.spawn(|| puller.cri_pull(big.reference()));
        // Kill whichever holder is serving once it has sent a good part of the layer.
        let mut killed = None;
        for _ in 0..300 {
            let (a, b) = (served_locally(&d1) - base1, served_locally(&d2) - base2);
            if a.max(b) > 30e6 {
                let victim = if a > b { &d1 } else { &d2 };
                victim.kill();
                killed = Some(if a > b { 1 } else { 2 });
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            killed.is_some(),
            "no holder started serving\n{}",
            d3.log_tail()
        );
        pull.join().expect("pull thread")
    });
    pull.unwrap_or_else(|e| panic!("pull after a holder died: {e}\n{}", d3.log_tail()));
    let len = std::fs::metadata(puller.blob_path(&layer))
        .map(|m| m.len())
        .ok();
    assert_eq!(len, Some(big.layers().last().unwrap().1));
    // The layer came from peers only (the registry is stopped), across a failover.
    let from_peer = d3.metric("shoal_mirror_bytes_total", &["source=\"peer\""]);
    assert!(
        from_peer >= big.layers().last().unwrap().1 as f64,
        "{from_peer}"
    );
    assert!(
        d3.process().log().contains("continu"),
        "no continuation logged\n{}",
        d3.log_tail()
    );
}

#[test]
fn a_corrupt_holder_never_gets_its_bytes_committed() {
    let rig = Rig::builder().nodes(2).start();
    let big = TestImage::big();
    rig.registry().push(&big);
    let [_d1, d2] = <[Daemon; 2]>::try_from(shoal_cluster(&rig)).unwrap();
    rig.node(0).pull(big.reference()).unwrap();
    let layer = big_layer(&big);
    rig.node(0).corrupt_blob(&layer);
    d2.wait_found(&big, &layer);

    // The only holder lies. Shoal verifies the whole blob before sending a byte, so it answers
    // 404 and containerd goes to the registry: the very first pull succeeds.
    let puller = rig.node(1);
    let pulled = puller.cri_pull(big.reference());
    assert!(pulled.is_ok(), "pull failed: {pulled:?}\n{}", d2.log_tail());
    // Not one byte of the corrupt layer reached containerd from Shoal; the registry served it.
    let layer_size = big.layers().last().unwrap().1 as f64;
    assert!(d2.metric("shoal_mirror_bytes_total", &["source=\"peer\""]) < layer_size);
    assert!(rig.registry().access_log().contains(&layer.to_string()));
    let bytes = std::fs::read(puller.blob_path(&layer)).expect("layer committed");
    assert_eq!(shoal_oci::Digest::sha256_of(&bytes), layer);
    assert!(
        d2.process().log().to_lowercase().contains("mismatch"),
        "the corrupt peer was not detected\n{}",
        d2.log_tail()
    );
}
