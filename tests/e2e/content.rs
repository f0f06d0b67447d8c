//! `shoal content --json` against a rig node's containerd: an allowlisted image pulled through
//! hosts.toml is listed with its tag key and every digest; an image of a registry outside the
//! allowlist (harbor.test) contributes nothing.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use shoal_tests::{Node, Rig, TestImage, shoal_bin};

fn content_json(n: &Node) -> Value {
    let out = Command::new(shoal_bin())
        .arg("content")
        .arg("--json")
        .arg("--containerd-socket")
        .arg(n.containerd_socket())
        .arg("--containerd-content-dir")
        .arg(n.content_dir())
        .output()
        .expect("run shoal content");
    assert!(
        out.status.success(),
        "shoal content failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "shoal content --json printed invalid JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

#[test]
fn content_lists_allowlisted_images_and_nothing_of_others() {
    let rig = Rig::builder().nodes(1).start();
    let img = TestImage::small();
    let private = TestImage::small_at("harbor.test/team/app:v1");
    rig.registry().push(&img);
    rig.registry().push(&private);
    let n = rig.node(0);

    // Only the private image: nothing is advertised, it is reported as not mirrored.
    n.pull(private.reference()).unwrap();
    let doc = content_json(n);
    assert_eq!(doc["namespace"], "k8s.io");
    assert_eq!(strings(&doc["keys"]), BTreeSet::new(), "{doc:#}");
    assert_eq!(doc["images"], Value::Array(vec![]), "{doc:#}");
    let skipped = doc["not_mirrored"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{doc:#}");
    assert_eq!(skipped[0]["reference"], private.reference());

    // The same content pulled as docker.io through the CRI (which also creates its
    // `repo@digest` and `sha256:<config>` names): the tag key and every digest.
    n.cri_pull(img.reference()).unwrap();
    let doc = content_json(n);
    let mut expected: BTreeSet<String> =
        img.blobs().iter().map(|(d, _, _)| d.to_string()).collect();
    expected.insert(img.reference().to_owned());
    assert_eq!(strings(&doc["keys"]), expected, "{doc:#}");
    let images = doc["images"].as_array().unwrap();
    assert!(
        images.iter().all(|i| i["registry"] == "docker.io"),
        "{doc:#}"
    );
    let tagged = images
        .iter()
        .find(|i| i["reference"] == img.reference())
        .unwrap_or_else(|| panic!("{} missing: {doc:#}", img.reference()));
    assert_eq!(tagged["tag_key"], img.reference());
    assert_eq!(tagged["digest"], img.manifest_digest().to_string());
    let blobs: BTreeSet<(String, String, u64, bool)> = tagged["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["digest"].as_str().unwrap().to_owned(),
                b["media_type"].as_str().unwrap().to_owned(),
                b["size"].as_u64().unwrap(),
                b["present"].as_bool().unwrap(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, u64, bool)> = img
        .blobs()
        .into_iter()
        .map(|(d, mt, size)| (d.to_string(), mt, size, true))
        .collect();
    assert_eq!(blobs, want);
    // The private image is still only a name in `not_mirrored`.
    let skipped = doc["not_mirrored"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{doc:#}");
    assert_eq!(skipped[0]["reference"], private.reference());
    assert!(
        !doc.to_string()
            .contains("harbor.test/team/app:v1\",\"registry")
    );
}
