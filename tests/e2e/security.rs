//! Who can read through Shoal: peers (signed with a key derived from the rig's PSK) and the
//! node's own containerd (loopback) yes; a client elsewhere on the network without the
//! credential (what a pod on the cluster network is) no; a node of another cluster (another PSK)
//! neither finds nor is found; content only a non-allowlisted registry (harbor.test) references
//! never leaves its node.

use std::time::{Duration, Instant};

use shoal_tests::{Daemon, Rig, TestImage, shoal_cluster, write_psk};

fn remote_blob_url(holder: &Daemon, img: &TestImage, digest: &shoal_oci::Digest) -> String {
    format!(
        "http://{}:{}/v2/{}/blobs/{digest}?ns={}",
        holder.ip(),
        shoal_tests::MIRROR_PORT,
        img.repository(),
        img.registry_host()
    )
}

#[test]
fn a_client_without_the_credential_gets_401_where_a_peer_gets_200() {
    let rig = Rig::builder().nodes(2).start();
    let img = TestImage::small();
    rig.registry().push(&img);
    let [d1, d2] = <[Daemon; 2]>::try_from(shoal_cluster(&rig)).unwrap();
    rig.node(0).pull(img.reference()).unwrap();
    let (layer, _) = img.layers()[0].clone();

    // A peer: node 2's Shoal fetches the layer from node 1 with its signed request.
    d2.wait_found(&img, &layer);
    let (code, body) = d2.http_get(&d2.blob_url(&img, &layer), &[]);
    assert_eq!(code, 200);
    assert_eq!(shoal_oci::Digest::sha256_of(&body), layer);
    assert!(d2.metric("shoal_mirror_bytes_total", &["source=\"peer\""]) > 0.0);

    // A client in node 2's namespace asking node 1 directly: refused, whatever it claims.
    let url = remote_blob_url(&d1, &img, &layer);
    for headers in [
        &[][..],
        &["X-Shoal-Peer: 1"][..],
        &["Authorization: Shoal 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"]
            [..],
        &["Authorization: Basic dXNlcjpwYXNz"][..],
    ] {
        let (code, body) = d2.http_get(&url, headers);
        assert_eq!(code, 401, "{headers:?}: {}", String::from_utf8_lossy(&body));
        let json: serde_json::Value = serde_json::from_slice(&body).expect("OCI error JSON");
        assert_eq!(json["errors"][0]["code"], "UNAUTHORIZED", "{json}");
    }
    // The same URL on node 1's own loopback (its containerd) is served.
    let (code, _) = d1.http_get(&d1.blob_url(&img, &layer), &[]);
    assert_eq!(code, 200);

    let refused = d1.metric("shoal_mirror_requests_total", &["outcome=\"unauthorized\""])
        + d1.metric("shoal_mirror_requests_total", &["outcome=\"rejected\""]);
    assert!(refused >= 4.0, "refusals counted: {refused}");
    let log = d1.log_tail();
    assert!(
        log.contains("refused a mirror request") && log.contains(&d2.ip().to_string()),
        "the refusal is logged with the remote address:\n{log}"
    );
}

/// Node 3 has another cluster's key, node 4 none at all: neither finds what the cluster holds,
/// and the cluster never finds what they hold.
#[test]
fn nodes_without_the_psk_neither_find_nor_are_found() {
    let rig = Rig::builder().nodes(4).start();
    let img = TestImage::small();
    let multi = TestImage::multi_platform();
    rig.registry().push(&img);
    rig.registry().push(&multi);
    for n in rig.nodes() {
        n.configure_shoal();
    }
    let d1 = rig.node(0).shoal().start();
    let d2 = rig.node(1).shoal().bootstrap(&d1).start();
    d1.wait_ready(Duration::from_secs(20));
    d2.wait_ready(Duration::from_secs(20));
    let other_key = rig.dir().join("other-swarm.key");
    write_psk(&other_key);
    let d3 = rig
        .node(2)
        .shoal()
        .psk_file(&other_key)
        .bootstrap(&d1)
        .start();
    let d4 = rig.node(3).shoal().without_psk().bootstrap(&d1).start();
    let strangers = [(rig.node(2), &d3), (rig.node(3), &d4)];

    // Node 1 holds `img`; the cluster finds it, the strangers do not.
    rig.node(0).pull(img.reference()).unwrap();
    let (layer, _) = img.layers()[0].clone();
    d2.wait_found(&img, &layer);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for (_, d) in &strangers {
            assert_eq!(d.http_head(&d.blob_url(&img, &layer)), 404, "{}", d.ip());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The strangers hold `multi`; the cluster never finds it.
    for (n, d) in &strangers {
        n.pull(multi.reference()).unwrap();
        d.wait_found(&multi, &multi.manifest_digest());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for d in [&d1, &d2] {
            assert_eq!(
                d.http_head(&d.blob_url(&multi, &multi.manifest_digest())),
                404
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for (_, d) in &strangers {
        assert_eq!(d.metric("shoal_peers", &[]), 0.0, "{}", d.log_tail());
    }
    assert!(
        d4.process().log().contains("no --p2p-psk-file"),
        "the keyless daemon says what it will not do:\n{}",
        d4.log_tail()
    );
}

#[test]
fn content_of_a_non_allowlisted_registry_is_neither_advertised_nor_served() {
    let rig = Rig::builder().nodes(2).start();
    let public = TestImage::small();
    // The same bytes, but only referenced by the private registry for now.
    let private = TestImage::small_at("harbor.test/team/app:v1");
    rig.registry().push(&public);
    rig.registry().push(&private);
    let [d1, d2] = <[Daemon; 2]>::try_from(shoal_cluster(&rig)).unwrap();
    rig.node(0).pull(private.reference()).unwrap();
    let digests: Vec<_> = private.blobs().into_iter().map(|(d, _, _)| d).collect();
    assert!(digests.iter().all(|d| rig.node(0).has_blob(d)));

    // Several re-list intervals (1 s in the rig): never advertised, never served, not even by
    // the holder under an allowlisted `ns`, and the private `ns` itself is refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for d in &digests {
            assert_eq!(
                d2.http_head(&d2.blob_url(&public, d)),
                404,
                "{d} via a peer"
            );
            assert_eq!(
                d1.http_head(&d1.blob_url(&public, d)),
                404,
                "{d} on the holder"
            );
            assert_eq!(
                d1.http_head(&d1.blob_url(&private, d)),
                404,
                "{d} as harbor.test"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(d1.metric("shoal_advertised_keys", &[]), 0.0);

    // Nor through the rollout election: a loopback client on the holder (a `hostNetwork` pod)
    // asks for a private blob under an allowlisted `ns`, so the holder is elected to fetch it and
    // would pass on what its containerd receives; then node 2 misses it too and asks the holder.
    // containerd's labels say where the committed blob came from (not an allowlisted registry):
    // node 2 gets nothing and answers 404 once its wait is over.
    for d in &digests {
        let (status, _) = d1.http_get(&d1.blob_url(&public, d), &[]);
        assert_eq!(status, 404, "{d} on the holder");
        let (status, _) = d2.http_get(&d2.blob_url(&public, d), &[]);
        assert_eq!(status, 404, "{d} passed on by the elected holder");
    }
    assert_eq!(
        d1.metric("shoal_mirror_in_flight_bytes_total", &[]),
        0.0,
        "no byte of a private blob passed on"
    );

    // Control: once an allowlisted image references the same blobs, they are served to peers.
    rig.node(0).pull(public.reference()).unwrap();
    for d in &digests {
        d2.wait_found(&public, d);
    }
}
