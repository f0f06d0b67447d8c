//! Multi-peer downloads: a 1 GiB layer pulled through Shoal from three holders at once, and a
//! holder killed mid-transfer. Node 3 is the puller; nodes 0–2 pulled the image from the registry
//! before their daemons started (the registry is then stopped, so every byte the puller gets
//! comes from peers).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use shoal_oci::Digest;
use shoal_tests::{Daemon, Rig, TestImage, shoal_cluster};

pub(crate) fn json(d: &Daemon, args: &[&str]) -> Value {
    let mut argv = args.to_vec();
    argv.push("--json");
    let out = d.cli(&argv);
    assert!(
        out.status.success(),
        "shoal {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_tail()
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

pub(crate) fn peer_id(d: &Daemon) -> String {
    json(d, &["status"])["peer_id"]
        .as_str()
        .expect("peer_id")
        .to_owned()
}

fn served_locally(d: &Daemon) -> f64 {
    d.metric("shoal_mirror_bytes_total", &["source=\"local\""])
}

/// Three holders of an image, found on the DHT by the puller (node 3); the registry stopped.
pub(crate) struct Setup {
    pub(crate) rig: Rig,
    pub(crate) img: TestImage,
    pub(crate) layer: Digest,
    pub(crate) size: u64,
    pub(crate) daemons: Vec<Daemon>,
}

fn setup() -> Setup {
    setup_with(TestImage::huge())
}

pub(crate) fn setup_with(img: TestImage) -> Setup {
    let rig = Rig::builder().nodes(4).start();
    rig.registry().push(&img);
    // The holders pull straight from the registry, before any Shoal runs: the setup only needs
    // three holders, and two extra 1 GiB peer transfers would make it slower and its failures
    // about something else than what these tests check. Each daemon advertises what its
    // containerd holds when it starts.
    // The three pulls run at once (they are independent), which shortens every multi-peer
    // test's setup.
    std::thread::scope(|s| {
        for i in 0..3 {
            let (rig, img) = (&rig, &img);
            s.spawn(move || {
                rig.node(i)
                    .pull(img.reference())
                    .unwrap_or_else(|e| panic!("holder {i} pulls from the registry: {e}"));
            });
        }
    });
    let daemons = shoal_cluster(&rig);
    let (layer, size) = img.layers().last().expect("a layer").clone();
    let puller = &daemons[3];
    let found = (0..100).any(|_| {
        let v = json(puller, &["find", &layer.to_string()]);
        let n = v["blobs"][0]["holders"].as_array().map_or(0, Vec::len);
        n >= 3 || {
            std::thread::sleep(Duration::from_millis(300));
            false
        }
    });
    assert!(
        found,
        "the puller does not see three holders\n{}",
        puller.log_tail()
    );
    rig.registry().stop();
    Setup {
        rig,
        img,
        layer,
        size,
        daemons,
    }
}

/// Peer ids that served bytes of `layer` to the puller's last request, with their bytes.
pub(crate) fn served_by(puller: &Daemon, layer: &Digest) -> Vec<(String, u64)> {
    let v = json(puller, &["explain", &layer.to_string()]);
    let req = v["blobs"][0]["requests"]
        .as_array()
        .and_then(|r| r.last().cloned())
        .unwrap_or_else(|| panic!("no request explained: {v:#}"));
    assert_eq!(req["source"], "peer", "{req:#}");
    req["served_by"]
        .as_array()
        .unwrap_or_else(|| panic!("no served_by: {req:#}"))
        .iter()
        .map(|p| {
            (
                p["peer_id"].as_str().unwrap().to_owned(),
                p["bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

pub(crate) fn committed_digest(s: &Setup) -> Digest {
    let path = s.rig.node(3).blob_path(&s.layer);
    let bytes = std::fs::read(&path).expect("layer committed on the puller");
    assert_eq!(bytes.len() as u64, s.size);
    Digest::sha256_of(&bytes)
}

#[test]
fn a_huge_layer_comes_from_all_three_holders() {
    let s = setup();
    for i in 0..3 {
        s.rig.node(i).limit_rate(400);
    }
    let puller = &s.daemons[3];
    let took = s.rig.node(3).cri_pull(s.img.reference());
    let took = took.unwrap_or_else(|e| panic!("pull: {e}\n{}", puller.log_tail()));
    eprintln!("1 GiB from three holders at 400 Mbit/s each: {took:?}");
    assert_eq!(committed_digest(&s), s.layer);
    let by = served_by(puller, &s.layer);
    let holders: HashSet<String> = s.daemons[..3].iter().map(peer_id).collect();
    let got: HashSet<String> = by.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(got, holders, "bytes by peer: {by:?}");
    assert_eq!(by.iter().map(|(_, b)| b).sum::<u64>(), s.size, "{by:?}");
    assert!(by.iter().all(|(_, b)| *b >= 16 << 20), "{by:?}");
    // The holders' own metrics agree: each served a share of the layer from local content.
    for d in &s.daemons[..3] {
        assert!(served_locally(d) >= (16 << 20) as f64);
    }
}

#[test]
fn killing_a_holder_mid_transfer_still_completes_with_the_right_digest() {
    let s = setup();
    for i in 0..3 {
        s.rig.node(i).limit_rate(200);
    }
    let puller = &s.daemons[3];
    let base: Vec<f64> = s.daemons[..3].iter().map(served_locally).collect();
    let victim_id = peer_id(&s.daemons[1]);
    let pulled = std::thread::scope(|sc| {
        let pull = sc.spawn(|| s.rig.node(3).cri_pull(s.img.reference()));
        // Kill holder 1 once it has served a good part of its share.
        let mut killed = false;
        for _ in 0..600 {
            if served_locally(&s.daemons[1]) - base[1] > 64e6 {
                s.daemons[1].kill();
                killed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(killed, "holder 1 never served\n{}", puller.log_tail());
        pull.join().expect("pull thread")
    });
    pulled.unwrap_or_else(|e| panic!("pull after a holder died: {e}\n{}", puller.log_tail()));
    assert_eq!(committed_digest(&s), s.layer);
    let by = served_by(puller, &s.layer);
    assert_eq!(by.iter().map(|(_, b)| b).sum::<u64>(), s.size, "{by:?}");
    let survivors: HashSet<String> = [&s.daemons[0], &s.daemons[2]]
        .into_iter()
        .map(peer_id)
        .collect();
    let got: HashSet<String> = by.iter().map(|(p, _)| p.clone()).collect();
    assert!(got.is_superset(&survivors), "{by:?}");
    let v = json(puller, &["explain", &s.layer.to_string()]);
    let failovers = v["blobs"][0]["requests"]
        .as_array()
        .and_then(|r| r.last())
        .map(|r| r["failovers"].clone())
        .unwrap_or_default();
    assert!(
        failovers
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["peer_id"] == victim_id.as_str())),
        "the killed holder's failure is explained: {failovers:#}"
    );
}
