//! Cold rollouts: five nodes pull the same new image (a 200 MiB layer) at the same moment
//! through Shoal. One node is elected to let its containerd fetch each blob upstream; the
//! others stream it from that node while it downloads. Asserted from the registry's access
//! log (bytes of the layer served), containerd's content (right digest, no ingest left) and the
//! daemons' metrics.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use shoal_oci::Digest;
use shoal_tests::{Daemon, Rig, TestImage, shoal_cluster, wait_meshed};

use crate::stream::{active_ingests, assert_committed_right};

const NODES: usize = 5;

/// A started cluster of [`NODES`] with the big image in the registry, every daemon connected
/// to every other (the election's arbiter is picked among connected peers).
fn rollout_cluster() -> (Rig, TestImage, Vec<Daemon>) {
    let rig = Rig::builder().nodes(NODES).start();
    let img = TestImage::big();
    rig.registry().push(&img);
    let daemons = shoal_cluster(&rig);
    wait_meshed(&daemons, Duration::from_secs(20));
    (rig, img, daemons)
}

/// Every node pulls `img` through the CRI at the same moment; each node's result and time.
fn pull_all_at_once(rig: &Rig, img: &TestImage) -> Vec<Result<Duration, String>> {
    let start = Barrier::new(NODES);
    std::thread::scope(|s| {
        let handles: Vec<_> = rig
            .nodes()
            .iter()
            .map(|node| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let t = Instant::now();
                    node.cri_pull(img.reference()).map(|_| t.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("pull thread"))
            .collect()
    })
}

/// Body bytes the registry sent for `GET`s of blob `d` (access log, combined format).
fn registry_bytes(rig: &Rig, d: &Digest) -> u64 {
    rig.registry()
        .access_log()
        .lines()
        .filter(|l| l.contains("\"GET ") && l.contains(d.hex()))
        .filter_map(|l| {
            // `… "GET /v2/… HTTP/1.1" 200 209715200 "referer" "agent"`
            let after = l.split("\" ").nth(1)?;
            let mut f = after.split(' ');
            let _status = f.next()?;
            f.next()?.parse::<u64>().ok()
        })
        .sum()
}

fn herd_count(daemons: &[Daemon], outcome: &str) -> f64 {
    let label = format!("outcome=\"{outcome}\"");
    daemons
        .iter()
        .map(|d| d.metric("shoal_mirror_herd_total", &[label.as_str()]))
        .sum()
}

fn check_every_node(rig: &Rig, daemons: &[Daemon], layer: &Digest) {
    for (node, d) in rig.nodes().iter().zip(daemons) {
        assert_committed_right(node, layer);
        let left = active_ingests(node, layer);
        assert!(
            left.is_empty(),
            "ingest left on {}: {left:?}\n{}",
            node.name(),
            d.log_tail()
        );
    }
}

#[test]
fn a_rollout_fetches_the_big_layer_upstream_about_once() {
    let (rig, img, daemons) = rollout_cluster();
    let (layer, size) = img.layers().last().expect("a layer").clone();
    let results = pull_all_at_once(&rig, &img);
    for (i, r) in results.iter().enumerate() {
        if let Err(e) = r {
            panic!("pull on node {i} failed: {e}\n{}", daemons[i].log_tail());
        }
    }
    let times: Vec<f64> = results
        .iter()
        .map(|r| r.as_ref().map_or(0.0, Duration::as_secs_f64))
        .collect();
    let served = registry_bytes(&rig, &layer);
    let ratio = served as f64 / size as f64;
    eprintln!(
        "rollout: pull times {times:.2?} s; registry served the layer {ratio:.2}x; herd fetcher {} streamed {} timeout {}",
        herd_count(&daemons, "fetcher"),
        herd_count(&daemons, "streamed"),
        herd_count(&daemons, "timeout")
    );
    // Manifest `GET`s are what a registry's pull limit counts: they are elected too.
    let manifest_gets = rig
        .registry()
        .access_log()
        .lines()
        .filter(|l| l.contains("\"GET ") && l.contains("/manifests/sha256:"))
        .count();
    eprintln!("registry manifest GETs by digest: {manifest_gets}");
    check_every_node(&rig, &daemons, &layer);
    assert!(
        manifest_gets < NODES,
        "every node fetched the manifest upstream ({manifest_gets} GETs)"
    );
    assert!(
        ratio <= 1.5,
        "the registry served the big layer {ratio:.2}x its size (at most 1.5x expected)\n{}",
        rig.logs_tail(40)
    );
    // The first node to miss ran the election (whether the others then streamed the layer while
    // it downloaded, or found it committed, depends on how fast the registry is here; the slow
    // registry test below checks the streaming).
    assert!(herd_count(&daemons, "fetcher") >= 1.0, "nobody was elected");
}

#[test]
fn a_killed_fetcher_leaves_every_other_pull_to_finish() {
    let (rig, img, daemons) = rollout_cluster();
    let (layer, size) = img.layers().last().expect("a layer").clone();
    // A 100 Mbit/s registry: the layer takes ~17 s to download, long enough to kill its
    // fetcher half-way.
    rig.registry().limit_rate(100);
    let killed = std::thread::scope(|s| {
        let pulls = s.spawn(|| pull_all_at_once(&rig, &img));
        // The fetcher of the layer is the node passing it on; kill its Shoal once a third of
        // the layer went through it.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut killed = None;
        while killed.is_none() && Instant::now() < deadline {
            for (i, d) in daemons.iter().enumerate() {
                if d.metric("shoal_mirror_in_flight_bytes_total", &[]) > size as f64 / 3.0 {
                    d.kill();
                    killed = Some(i);
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let results = pulls.join().expect("pulls");
        (killed, results)
    });
    let (killed, results) = killed;
    let killed = killed.expect("a node passed the layer on while downloading it");
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(t) => eprintln!("node {i}: pulled in {:.1} s", t.as_secs_f64()),
            Err(e) => panic!("pull on node {i} failed (fetcher {killed} killed): {e}"),
        }
    }
    // The first node to see the fetcher stop took the upstream download over from where it
    // was, and the others continued from it: about 1 + 0.8 (the killed node's own containerd
    // kept downloading, plus the rest once). Were every waiter to resume from the registry on
    // its own, it would be about 1 + 4 × 0.8. At most half of them may have.
    let served = registry_bytes(&rig, &layer) as f64 / size as f64;
    eprintln!(
        "fetcher (node {killed}) killed; the registry served the layer {served:.2}x; herd fetcher {} streamed {}",
        herd_count(&daemons, "fetcher"),
        herd_count(&daemons, "streamed")
    );
    if served >= 2.0 {
        for (i, d) in daemons.iter().enumerate() {
            eprintln!("--- node {i}\n{}", d.log_tail());
        }
    }
    assert!(served < 3.0, "registry served the layer {served:.2}x");
    for (i, (node, d)) in rig.nodes().iter().zip(&daemons).enumerate() {
        assert_committed_right(node, &layer);
        let left = active_ingests(node, &layer);
        assert!(
            left.is_empty(),
            "ingest left on node {i}: {left:?}\n{}",
            d.log_tail()
        );
    }
}

#[test]
fn with_a_slow_registry_every_node_finishes_close_to_the_first() {
    let (rig, img, daemons) = rollout_cluster();
    let (layer, size) = img.layers().last().expect("a layer").clone();
    rig.registry().limit_rate(100);
    let results = pull_all_at_once(&rig, &img);
    let mut times = Vec::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(t) => times.push(t.as_secs_f64()),
            Err(e) => panic!("pull on node {i} failed: {e}\n{}", daemons[i].log_tail()),
        }
    }
    let first = times.iter().cloned().fold(f64::MAX, f64::min);
    let last = times.iter().cloned().fold(0.0, f64::max);
    let served = registry_bytes(&rig, &layer) as f64 / size as f64;
    eprintln!(
        "slow registry: pull times {times:.2?} s, last/first {:.2}, registry served {served:.2}x",
        last / first
    );
    check_every_node(&rig, &daemons, &layer);
    assert!(
        last <= 1.3 * first,
        "the last node took {last:.1} s, the first {first:.1} s (within 1.3x expected)"
    );
    assert!(served <= 1.5, "registry served the layer {served:.2}x");
    let in_flight: f64 = daemons
        .iter()
        .map(|d| d.metric("shoal_mirror_in_flight_bytes_total", &[]))
        .sum();
    assert!(
        in_flight >= size as f64,
        "the layer was not passed on while it downloaded ({in_flight} bytes)"
    );
}
