//! Clients other than containerd (skopeo here; crane and oras alike) use the mirror through the
//! registry-prefixed path `/v2/<registry>/<repository>/…`, for allowlisted registries only.

use shoal_tests::{Daemon, MIRROR_PORT, Rig, TestImage, shoal_cluster};

#[test]
fn skopeo_copies_through_the_registry_prefixed_path() {
    let rig = Rig::builder().nodes(2).start();
    let img = TestImage::small();
    // The same content under a registry outside the allowlist (a private Harbor).
    let private = TestImage::small_at("harbor.test/team/app:v1");
    rig.registry().push(&img);
    rig.registry().push(&private);
    let [d1, d2] = <[Daemon; 2]>::try_from(shoal_cluster(&rig)).unwrap();
    rig.node(0).pull(img.reference()).unwrap();
    rig.node(0).pull(private.reference()).unwrap();
    for (digest, _, _) in img.blobs() {
        d2.wait_found(&img, &digest);
    }
    // Only peers can serve it now: node 2 holds nothing.
    rig.registry().stop();

    let out_dir = rig.node(1).dir().join("skopeo-out");
    let src = format!(
        "docker://127.0.0.1:{MIRROR_PORT}/{}/{}:{}",
        img.registry_host(),
        img.repository(),
        img.tag()
    );
    let dest = format!("oci:{}:{}", out_dir.display(), img.tag());
    let out = rig.node(1).exec(&[
        "skopeo",
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &src,
        &dest,
    ]);
    assert!(
        out.status.success(),
        "skopeo copy {src}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d2.log_tail()
    );
    for (digest, _, size) in img.blobs() {
        let path = out_dir.join("blobs").join("sha256").join(digest.hex());
        let len = std::fs::metadata(&path).map(|m| m.len()).ok();
        assert_eq!(len, Some(size), "{digest} in the copied layout");
    }
    assert!(d2.metric("shoal_mirror_bytes_total", &["source=\"peer\""]) > 0.0);

    // A registry outside the allowlist: 404 at once, on the node that holds it too.
    for d in [&d1, &d2] {
        let url = format!(
            "{}/v2/harbor.test/team/app/manifests/v1",
            d.local_mirror_url()
        );
        let (code, body) = d.http_get(&url, &[]);
        assert_eq!(code, 404, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("NAME_UNKNOWN"));
    }
    let src = format!("docker://127.0.0.1:{MIRROR_PORT}/harbor.test/team/app:v1");
    let out = rig.node(0).exec(&[
        "skopeo",
        "--insecure-policy",
        "inspect",
        "--raw",
        "--tls-verify=false",
        &src,
    ]);
    assert!(!out.status.success(), "skopeo read a non-allowlisted image");
}
