//! The vertical slice: containerd on one node pulls what only another node holds, through Shoal,
//! with the registry stopped; misses fall back to the registry; a holder dying mid-transfer or
//! serving corrupt bytes never leaves containerd with a broken image.

use std::time::{Duration, Instant};

use shoal_tests::{Daemon, Rig, TestImage, shoal_cluster};

/// Waits until `daemon` serves `digest` of `img` from a peer, and checks the bytes.
fn wait_served(daemon: &Daemon, img: &TestImage, digest: &shoal_oci::Digest) {
    daemon.wait_found(img, digest);
    let (code, body) = daemon.http_get(&daemon.blob_url(img, digest), &[]);
    assert_eq!(code, 200, "GET {digest} from {}", daemon.ip());
    assert_eq!(&shoal_oci::Digest::sha256_of(&body), digest);
}

fn layer_bytes(img: &TestImage) -> u64 {
    img.blobs().iter().map(|(_, _, size)| size).sum()
}

#[test]
fn content_pulled_on_one_node_is_served_to_another() {
    let rig = Rig::builder().nodes(2).start();
    let img = TestImage::small();
    rig.registry().push(&img);
    let d1 = rig.node(0).shoal().start();
    let d2 = rig.node(1).shoal().bootstrap(&d1).start();
    d1.wait_ready(Duration::from_secs(20));
    d2.wait_ready(Duration::from_secs(20));

    rig.node(0).pull(img.reference()).unwrap();
    for (digest, _, _) in img.blobs() {
        wait_served(&d2, &img, &digest);
    }
    let from_peer = d2.metric("shoal_mirror_bytes_total", &["source=\"peer\""]);
    assert!(
        from_peer >= layer_bytes(&img) as f64,
        "node 2 served {from_peer} bytes from peers, expected at least {}",
        layer_bytes(&img)
    );
    assert!(d1.metric("shoal_advertised_keys", &[]) >= img.blobs().len() as f64);
}

#[test]
fn nodes_pull_through_shoal_with_the_registry_stopped() {
    let rig = Rig::builder().nodes(3).start();
    let small = TestImage::small();
    let big = TestImage::big();
    rig.registry().push(&small);
    rig.registry().push(&big);
    let [d1, d2, d3] = <[Daemon; 3]>::try_from(shoal_cluster(&rig)).unwrap();

    // Node 1 asks its Shoal first; nobody has anything yet, so it falls back to the registry.
    rig.node(0).pull(small.reference()).unwrap();
    rig.node(0).pull(big.reference()).unwrap();
    assert!(d1.metric("shoal_mirror_requests_total", &["outcome=\"miss\""]) > 0.0);
    for img in [&small, &big] {
        d2.wait_found(img, &img.manifest_digest());
    }

    rig.registry().stop();
    let before = d2.metric("shoal_mirror_bytes_total", &["source=\"peer\""]);
    rig.node(1).pull(small.reference()).unwrap();
    rig.node(1).pull(big.reference()).unwrap();
    rig.node(2).cri_pull(small.reference()).unwrap();
    rig.node(2).cri_pull(big.reference()).unwrap();

    for (n, d) in [(rig.node(1), &d2), (rig.node(2), &d3)] {
        for img in [&small, &big] {
            for (digest, _, size) in img.blobs() {
                let len = std::fs::metadata(n.blob_path(&digest)).map(|m| m.len());
                assert_eq!(len.ok(), Some(size), "{digest} on {}", n.name());
            }
        }
        let from_peer = d.metric("shoal_mirror_bytes_total", &["source=\"peer\""]);
        assert!(
            from_peer >= (layer_bytes(&small) + layer_bytes(&big)) as f64,
            "{} got only {from_peer} bytes from peers",
            n.name()
        );
    }
    assert!(d2.metric("shoal_mirror_bytes_total", &["source=\"peer\""]) > before);
}

#[test]
fn a_miss_answers_404_and_containerd_falls_back_to_the_registry() {
    let rig = Rig::builder().nodes(1).start();
    let img = TestImage::small();
    rig.registry().push(&img);
    rig.node(0).configure_shoal();
    let d1 = rig.node(0).shoal().start();
    d1.wait_ready(Duration::from_secs(20));

    let started = Instant::now();
    rig.node(0).pull(img.reference()).unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "pull took {took:?}");
    // Every request asked Shoal first (misses), then the registry served it.
    let misses = d1.metric("shoal_mirror_requests_total", &["outcome=\"miss\""]);
    assert!(misses >= img.blobs().len() as f64, "only {misses} misses");
    let log = rig.registry().access_log();
    for (digest, _, _) in img.blobs() {
        assert!(
            log.contains(&digest.to_string()),
            "registry never served {digest}"
        );
    }
    assert_eq!(
        d1.metric("shoal_mirror_bytes_total", &["source=\"peer\""]),
        0.0
    );
}
