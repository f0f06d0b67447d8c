//! `scripts/demo`: three nodes, each with real containerd and `shoal daemon` in its own network
//! namespace. Node 1 pulls from the registry; the registry is stopped; nodes 2 and 3 pull the
//! same images through Shoal. Then every node's `shoal explain` says where each blob came from.
//! Everything is torn down when it ends.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{Daemon, Node, Rig, TestImage, shoal_cluster};

enum Via {
    Ctr,
    Cri,
}

fn pull(node: &Node, img: &TestImage, via: Via) -> Result<Duration, String> {
    let started = Instant::now();
    match via {
        Via::Ctr => node.pull(img.reference()).map(|()| started.elapsed()),
        Via::Cri => node.cri_pull(img.reference()),
    }
}

fn json(d: &Daemon, args: &[&str]) -> Value {
    let out = d.cli(args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "shoal {args:?}: {e}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// First 12 hex digits of a digest; the tag of a tag key.
fn short(key: &str) -> String {
    match key.strip_prefix("sha256:") {
        Some(hex) => hex.chars().take(12).collect(),
        None => format!(":{}", key.rsplit(':').next().unwrap_or(key)),
    }
}

fn main() -> ExitCode {
    let rig = Rig::builder().nodes(3).start();
    let images = [TestImage::small(), TestImage::big()];
    println!(
        "registry {} and nodes {} up in {:.1?}",
        rig.registry().addr(),
        rig.nodes()
            .iter()
            .map(|n| format!("{}={}", n.name(), n.ip()))
            .collect::<Vec<_>>()
            .join(" "),
        rig.startup_time()
    );
    for img in &images {
        rig.registry().push(img);
    }
    let cluster = shoal_cluster(&rig);
    let (d2, daemons) = (&cluster[1], [&cluster[0], &cluster[1], &cluster[2]]);
    let names: HashMap<String, String> = rig
        .nodes()
        .iter()
        .zip(daemons)
        .map(|(n, d)| {
            let status = json(d, &["status", "--json"]);
            (
                status["peer_id"].as_str().unwrap_or_default().to_owned(),
                n.name().to_owned(),
            )
        })
        .collect();

    let mut failed = false;
    let mut report = |node: &Node, img: &TestImage, via: Via, what: &str| match pull(node, img, via)
    {
        Ok(t) => println!("{}: {what} {} in {t:.2?}", node.name(), img.reference()),
        Err(e) => {
            eprintln!("{}: {what} {} FAILED: {e}", node.name(), img.reference());
            failed = true;
        }
    };
    for img in &images {
        report(rig.node(0), img, Via::Cri, "pulled (registry)");
    }
    for img in &images {
        d2.wait_found(img, &img.manifest_digest());
    }
    rig.registry().stop();
    println!("registry stopped");
    for img in &images {
        report(rig.node(1), img, Via::Ctr, "pulled (ctr, through Shoal)");
        report(rig.node(2), img, Via::Cri, "pulled (CRI, through Shoal)");
    }

    println!(
        "\n{:<5} {:<18} {:<9} {:<13} {:<24} {:>12} {:>9}",
        "node", "image", "blob", "digest", "source", "bytes", "time"
    );
    for (n, d) in rig.nodes().iter().zip(daemons) {
        for img in &images {
            let ex = json(d, &["explain", "--json", img.reference()]);
            for blob in ex["blobs"].as_array().into_iter().flatten() {
                let key = blob["key"].as_str().unwrap_or_default();
                let role = blob["role"].as_str().unwrap_or_default();
                // Where this node got the blob: the request that brought it from a peer, else
                // the miss that sent containerd to the registry, else what the node served.
                let requests = blob["requests"].as_array().cloned().unwrap_or_default();
                let by_source = |s: &str| requests.iter().find(|r| r["source"] == s);
                let Some(req) = by_source("peer")
                    .or_else(|| by_source("miss"))
                    .or(requests.first())
                else {
                    continue;
                };
                let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| short(id));
                let served_by: Vec<String> = req["served_by"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| name(p["peer_id"].as_str().unwrap_or_default()))
                    .collect();
                let source = match req["source"].as_str().unwrap_or_default() {
                    "peer" if served_by.len() > 1 => format!("peers {}", served_by.join("+")),
                    "peer" => format!("peer {}", name(req["peer_id"].as_str().unwrap_or_default())),
                    "miss" => "miss -> registry".to_owned(),
                    other => other.to_owned(),
                };
                println!(
                    "{:<5} {:<18} {:<9} {:<13} {:<24} {:>12} {:>7}ms",
                    n.name(),
                    img.repository().trim_start_matches("library/"),
                    role,
                    short(key),
                    source,
                    req["bytes"].as_u64().unwrap_or(0),
                    req["duration_ms"].as_u64().unwrap_or(0),
                );
            }
        }
    }
    drop(cluster);
    drop(rig);
    println!("\nrig torn down");
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
