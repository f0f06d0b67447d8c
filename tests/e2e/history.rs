//! `shoal explain` keeps one record per request: a transfer the client cut and a later one for
//! the same blob are two records, each with its source and how it ended.

use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{Daemon, Rig, TestImage, shoal_cluster};

fn json(d: &Daemon, args: &[&str]) -> Value {
    let mut argv = args.to_vec();
    argv.push("--json");
    let out = d.cli(&argv);
    assert!(
        out.status.success(),
        "shoal {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// The GET records explained for `key` (not the HEADs and misses of `wait_found`).
fn get_records(d: &Daemon, key: &str) -> Vec<Value> {
    let v = json(d, &["explain", key]);
    v["blobs"][0]["requests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["source"] != "head" && r["source"] != "miss")
        .collect()
}

#[test]
fn a_cut_transfer_and_a_later_one_are_two_records() {
    let rig = Rig::builder().nodes(2).start();
    let img = TestImage::small();
    rig.registry().push(&img);
    let [d1, d2] = <[Daemon; 2]>::try_from(shoal_cluster(&rig)).unwrap();
    rig.node(0).pull(img.reference()).unwrap();
    let (layer, size) = img.layers().into_iter().max_by_key(|l| l.1).unwrap();
    d2.wait_found(&img, &layer);
    let holder = json(&d1, &["status"])["peer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = d2.blob_url(&img, &layer);

    // Node 1 sends slowly: the 1 MiB layer takes seconds, the client gives up after one.
    rig.node(0).limit_rate(1);
    let out = rig
        .node(1)
        .exec(&["curl", "-s", "-o", "/dev/null", "-m", "1", &url]);
    assert!(!out.status.success(), "curl should have timed out");
    let key = layer.to_string();
    let started = Instant::now();
    let cut = loop {
        let recs = get_records(&d2, &key);
        if let Some(r) = recs.iter().find(|r| r["end"] == "cut") {
            break r.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no cut record: {recs:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    // Full speed again: a later request for the same blob completes.
    let out = rig
        .node(0)
        .exec(&["tc", "qdisc", "del", "dev", "eth0", "root"]);
    assert!(out.status.success(), "{out:?}");
    let (code, body) = d2.http_get(&url, &[]);
    assert_eq!(code, 200);
    assert_eq!(shoal_oci::Digest::sha256_of(&body), layer);

    let recs = get_records(&d2, &key);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    let (first, second) = (&recs[0], &recs[1]);
    assert_eq!(first["id"], cut["id"]);
    assert_eq!(first["source"], "peer", "{first:#}");
    assert_eq!(first["peer_id"], holder.as_str(), "{first:#}");
    assert_eq!(first["end"], "cut", "{first:#}");
    assert_eq!(second["source"], "peer", "{second:#}");
    assert_eq!(second["peer_id"], holder.as_str(), "{second:#}");
    assert_eq!(second["end"], "completed", "{second:#}");
    assert_eq!(second["bytes"].as_u64(), Some(size), "{second:#}");
    assert_ne!(first["id"], second["id"]);
}
