//! Smoke tests of the rig itself: if these fail, every other e2e failure is suspect.

use std::process::Command;
use std::time::Duration;

use shoal_tests::{Rig, TestImage};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn root_routes() -> String {
    stdout(&Command::new("ip").args(["route", "show"]).output().unwrap())
}

fn netns_list() -> String {
    stdout(&Command::new("ip").args(["netns", "list"]).output().unwrap())
}

#[test]
fn two_nodes_pull_from_the_registry_with_ctr_and_cri() {
    let rig = Rig::builder().nodes(2).start();
    let img = TestImage::small();
    rig.registry().push(&img);
    let (n1, n2) = (rig.node(0), rig.node(1));
    assert_ne!(n1.ip(), n2.ip());

    // The registry is reachable from inside a node namespace and serves the exact manifest.
    let url = format!(
        "http://{}/v2/library/shoal-small/manifests/v1",
        rig.registry().addr()
    );
    let out = n1.exec(&[
        "curl",
        "-sfI",
        "-m",
        "5",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &url,
    ]);
    assert!(out.status.success(), "curl from {}: {out:?}", n1.netns());
    let headers = stdout(&out).to_lowercase();
    assert!(
        headers.contains(&format!("docker-content-digest: {}", img.manifest_digest())),
        "unexpected headers: {headers}"
    );

    // ctr pull through the hosts dir (docker.io is routed to the rig registry).
    n1.pull(img.reference()).unwrap();
    let images = stdout(&n1.ctr(&["images", "ls"]));
    assert!(images.contains(img.reference()), "ctr images ls: {images}");
    for (d, _, size) in img.blobs() {
        let meta = std::fs::metadata(n1.blob_path(&d)).unwrap_or_else(|e| panic!("{d} on n1: {e}"));
        assert_eq!(meta.len(), size, "{d}");
    }
    assert!(
        !n2.has_blob(&img.manifest_digest()),
        "nodes must not share a content store"
    );

    // CRI pull on the other node (containerd's resolver, config_path, HTTP inside n2's netns).
    let took = n2.cri_pull(img.reference()).unwrap();
    assert!(took < Duration::from_secs(60));
    for (d, _, _) in img.blobs() {
        assert!(n2.has_blob(&d), "{d} missing on n2 after CRI pull");
    }
    let listed = n2.cri_images().unwrap();
    assert!(
        listed
            .iter()
            .any(|i| i.repo_tags.iter().any(|t| t == img.reference())),
        "CRI ListImages: {listed:?}"
    );

    // The registry saw both nodes, from their own addresses.
    let log = rig.registry().access_log();
    for n in [n1, n2] {
        assert!(
            log.lines().any(|l| l.starts_with(&format!("{} ", n.ip()))
                && l.contains("/v2/library/shoal-small/")),
            "no request from {} in the access log:\n{log}",
            n.ip()
        );
    }

    // reset_images empties the content store.
    n1.reset_images();
    assert!(n1.images().is_empty());
    assert!(
        !n1.has_blob(&img.layers()[0].0),
        "layer still on disk after reset_images"
    );
}

#[test]
fn unreachable_route_and_namespaces_live_exactly_as_long_as_the_rig() {
    let rig = Rig::builder().nodes(1).start();
    let subnet = rig.subnet().to_string();
    let ns = rig.node(0).netns().to_string();
    let reg_ns = rig.registry().netns().to_string();
    let dir = rig.dir().to_path_buf();
    assert!(
        root_routes().contains(&format!("unreachable {subnet}")),
        "no unreachable route for {subnet}:\n{}",
        root_routes()
    );
    // From the root namespace the node address is unroutable...
    let get = Command::new("ip")
        .args(["route", "get", &rig.node(0).ip().to_string()])
        .output()
        .unwrap();
    assert!(
        !get.status.success(),
        "root ns can route to a node: {}",
        stdout(&get)
    );
    // ...while inside the node namespace it is on eth0.
    let inside = rig
        .node(0)
        .exec(&["ip", "route", "get", &rig.registry().ip().to_string()]);
    assert!(stdout(&inside).contains("dev eth0"), "{inside:?}");
    assert!(netns_list().contains(&ns) && netns_list().contains(&reg_ns));

    // A partitioned node cannot reach the registry; reconnecting restores it.
    let n = rig.node(0);
    let v2 = format!("{}/v2/", rig.registry().url());
    assert!(n.exec(&["curl", "-sf", "-m", "5", &v2]).status.success());
    rig.set_node_link(0, false);
    assert!(
        !n.exec(&["curl", "-sf", "-m", "1", &v2]).status.success(),
        "partitioned node reached the registry"
    );
    rig.set_node_link(0, true);
    assert!(n.exec(&["curl", "-sf", "-m", "5", &v2]).status.success());

    drop(rig);
    assert!(
        !root_routes().contains(&format!("unreachable {subnet}")),
        "route left behind:\n{}",
        root_routes()
    );
    let left = netns_list();
    assert!(
        !left.contains(&ns) && !left.contains(&reg_ns),
        "namespaces left behind: {left}"
    );
    assert!(!dir.exists(), "rig dir {} left behind", dir.display());
}

#[test]
fn registry_stop_makes_pulls_fail_and_start_restores_them() {
    let rig = Rig::builder().nodes(1).start();
    let img = TestImage::small_at("harbor.test/team/app:v1");
    rig.registry().push(&img);
    let n = rig.node(0);
    rig.registry().stop();
    let err = n
        .pull(img.reference())
        .expect_err("pull must fail while the registry is down");
    assert!(err.contains("harbor.test/team/app:v1"), "{err}");
    assert!(n.cri_pull(img.reference()).is_err());
    rig.registry().start();
    // Storage survived the restart.
    n.pull(img.reference()).unwrap();
    assert!(n.images().iter().any(|i| i == img.reference()));
}

#[test]
fn multi_platform_index_and_containerd_restart() {
    let rig = Rig::builder().nodes(1).start();
    let idx = TestImage::multi_platform();
    assert!(idx.is_index());
    rig.registry().push(&idx);
    let n = rig.node(0);
    n.cri_pull(idx.reference()).unwrap();
    assert!(n.has_blob(&idx.manifest_digest()), "index blob missing");

    n.kill_containerd();
    assert!(
        !n.ctr(&["version"]).status.success(),
        "containerd still answers after kill"
    );
    n.start_containerd();
    assert!(
        n.images().iter().any(|i| i == idx.reference()),
        "image lost across a containerd restart: {:?}",
        n.images()
    );
}

#[test]
fn spawned_processes_run_in_the_node_namespace_and_die_with_their_handle() {
    let rig = Rig::builder().nodes(1).start();
    let n = rig.node(0);
    let p = n.spawn(
        "/bin/sh",
        &["-c", "echo started; ip -o -4 addr show dev eth0; sleep 600"],
    );
    p.wait_for_log("started", Duration::from_secs(10)).unwrap();
    p.wait_for_log(&n.ip().to_string(), Duration::from_secs(10))
        .unwrap();
    let ns = stdout(
        &Command::new("ip")
            .args(["netns", "identify", &p.pid().to_string()])
            .output()
            .unwrap(),
    );
    assert_eq!(ns.trim(), n.netns());
    let pid = p.pid();
    drop(p);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} survived its handle"
    );

    let q = n.spawn("/bin/sh", &["-c", "echo bye; exit 3"]);
    let err = q
        .wait_for_log("never printed", Duration::from_secs(10))
        .unwrap_err();
    assert!(err.contains("exited") && err.contains("bye"), "{err}");
}

#[test]
fn big_image_is_one_large_layer_and_pulls_over_cri() {
    let big = TestImage::big();
    let layers = big.layers();
    assert_eq!(layers.len(), 1);
    assert!(
        layers[0].1 >= 200_000_000,
        "layer is only {} bytes",
        layers[0].1
    );
    let rig = Rig::builder().nodes(1).start();
    rig.registry().push(&big);
    let took = rig.node(0).cri_pull(big.reference()).unwrap();
    eprintln!("CRI pull of the big image took {took:.2?}");
    assert!(rig.node(0).has_blob(&layers[0].0));
}

#[test]
fn a_panicking_test_still_tears_the_rig_down() {
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let rig = Rig::builder().nodes(1).start();
        *seen.lock().unwrap() = Some((rig.subnet().to_string(), rig.node(0).netns().to_string()));
        panic!("deliberate panic while the rig is up");
    }));
    assert!(result.is_err());
    let (subnet, ns) = seen.into_inner().unwrap().expect("the rig started");
    assert!(
        !root_routes().contains(&format!("unreachable {subnet}")),
        "route left after panic"
    );
    assert!(!netns_list().contains(&ns), "netns left after panic");
}
