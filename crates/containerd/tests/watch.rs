//! The change stream against a real containerd: events, re-lists, restarts, shutdown.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::image::{Image, manifest, small_layer};
use common::{Containerd, fast_watch};
use shoal_containerd::{CancellationToken, Change};
use shoal_oci::{Allowlist, Key};
use tokio::sync::mpsc::Receiver;

fn keys(img: &Image) -> BTreeSet<Key> {
    let mut k: BTreeSet<Key> = img
        .blobs()
        .into_iter()
        .map(|b| Key::Digest(b.digest))
        .collect();
    k.insert(img.name.parse().unwrap());
    k
}

async fn next(rx: &mut Receiver<Change>, within: Duration) -> Change {
    match tokio::time::timeout(within, rx.recv()).await {
        Ok(Some(c)) => c,
        Ok(None) => panic!("the watcher stopped"),
        Err(_) => panic!("no change within {within:?}"),
    }
}

async fn quiet(rx: &mut Receiver<Change>, for_: Duration) {
    if let Ok(c) = tokio::time::timeout(for_, rx.recv()).await {
        panic!("unexpected change {c:?}");
    }
}

fn set(keys: Vec<Key>) -> BTreeSet<Key> {
    keys.into_iter().collect()
}

/// Two images sharing a layer, imported.
fn setup(c: &Containerd, dir: &std::path::Path) -> (Image, Image) {
    let shared = small_layer("shared.txt", "shared\n");
    let a = Image::single(
        "docker.io/library/watch-a:v1",
        manifest("amd64", vec![shared.clone(), small_layer("a.txt", "a\n")]),
    );
    let b = Image::single(
        "ghcr.io/o/watch-b:v1",
        manifest("amd64", vec![shared, small_layer("b.txt", "b\n")]),
    );
    for (img, f) in [(&a, "a.tar"), (&b, "b.tar")] {
        img.write_archive(&dir.join(f));
        c.import(&dir.join(f), &[]);
    }
    (a, b)
}

#[tokio::test]
async fn image_changes_arrive_through_events_within_2s() {
    common::init_tracing();
    let c = Containerd::start();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = setup(&c, tmp.path());
    let src = c.source(true).await;
    // A re-list interval far beyond the test: only events can explain timely changes.
    let token = CancellationToken::new();
    let (mut rx, task) = src.watch(
        Allowlist::default(),
        fast_watch(Duration::from_secs(600)),
        token.clone(),
    );
    let Change::Added(initial) = next(&mut rx, Duration::from_secs(5)).await else {
        panic!("first change must be Added")
    };
    assert_eq!(set(initial), &keys(&a) | &keys(&b));

    let t = Instant::now();
    c.ctr(&["images", "rm", "ghcr.io/o/watch-b:v1"]);
    let Change::Removed(removed) = next(&mut rx, Duration::from_secs(2)).await else {
        panic!("expected Removed")
    };
    eprintln!("images rm seen after {:?}", t.elapsed());
    // Everything of b except what a shares with it.
    assert_eq!(set(removed), &keys(&b) - &keys(&a));

    let d = Image::single(
        "quay.io/o/watch-d:v1",
        manifest("amd64", vec![small_layer("d.txt", "d\n")]),
    );
    d.write_archive(&tmp.path().join("d.tar"));
    let t = Instant::now();
    c.import(&tmp.path().join("d.tar"), &[]);
    let Change::Added(added) = next(&mut rx, Duration::from_secs(2)).await else {
        panic!("expected Added")
    };
    eprintln!("import seen after {:?}", t.elapsed());
    assert_eq!(set(added), keys(&d));

    // A non-allowlisted image changes nothing.
    let h = Image::single(
        "harbor.test/team/h:v1",
        manifest("amd64", vec![small_layer("h.txt", "h\n")]),
    );
    h.write_archive(&tmp.path().join("h.tar"));
    c.import(&tmp.path().join("h.tar"), &[]);
    quiet(&mut rx, Duration::from_secs(1)).await;

    token.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}

/// `ctr content rm` of a layer withdraws exactly that digest: through the `/content/delete`
/// event, and, with events off (containerd 1.6 sends none for garbage collection), within one
/// re-list interval.
#[tokio::test]
async fn removed_content_is_withdrawn() {
    common::init_tracing();
    let c = Containerd::start();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = setup(&c, tmp.path());
    let src = c.source(true).await;
    let relist = Duration::from_secs(1);
    let mut timer_only = fast_watch(relist);
    timer_only.follow_events = false;
    let (mut by_timer, _t1) = src.watch(Allowlist::default(), timer_only, CancellationToken::new());
    let (mut by_event, _t2) = src.watch(
        Allowlist::default(),
        fast_watch(Duration::from_secs(600)),
        CancellationToken::new(),
    );
    let _ = next(&mut by_timer, Duration::from_secs(5)).await;
    let _ = next(&mut by_event, Duration::from_secs(5)).await;

    let layer = &a.manifests[0].1.layers[1];
    let t = Instant::now();
    c.ctr(&["content", "rm", &layer.digest.to_string()]);
    let expected = Change::Removed(vec![Key::Digest(layer.digest.clone())]);
    assert_eq!(next(&mut by_event, Duration::from_secs(2)).await, expected);
    eprintln!("content rm seen by event after {:?}", t.elapsed());
    assert_eq!(
        next(&mut by_timer, relist + Duration::from_millis(500)).await,
        expected
    );
    eprintln!("content rm seen by re-list after {:?}", t.elapsed());

    // And with events off, an image removal is caught by the next re-list too.
    let t = Instant::now();
    c.ctr(&["images", "rm", "ghcr.io/o/watch-b:v1"]);
    let Change::Removed(removed) = next(&mut by_timer, relist + Duration::from_millis(500)).await
    else {
        panic!("expected Removed")
    };
    eprintln!("images rm seen by re-list after {:?}", t.elapsed());
    assert_eq!(set(removed), &keys(&b) - &keys(&a));
}

#[tokio::test]
async fn survives_a_containerd_restart() {
    common::init_tracing();
    let mut c = Containerd::start();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = setup(&c, tmp.path());
    let src = c.source(false).await;
    let (mut rx, task) = src.watch(
        Allowlist::default(),
        fast_watch(Duration::from_millis(500)),
        CancellationToken::new(),
    );
    let all = &keys(&a) | &keys(&b);
    let Change::Added(initial) = next(&mut rx, Duration::from_secs(5)).await else {
        panic!()
    };
    assert_eq!(set(initial), all);

    c.kill();
    // While containerd is down nothing is withdrawn and the watcher keeps going.
    quiet(&mut rx, Duration::from_secs(2)).await;
    assert!(!task.is_finished());

    c.restart();
    let t = Instant::now();
    let Change::Added(again) = next(&mut rx, Duration::from_secs(5)).await else {
        panic!("expected the set to be re-asserted")
    };
    eprintln!("re-asserted {:?} after restart", t.elapsed());
    assert_eq!(set(again), all);

    // Events flow again after the restart (re-subscribed): a removal shows within 2 s even
    // though re-lists would also catch it; and the stream is still the same receiver.
    c.ctr(&["images", "rm", "ghcr.io/o/watch-b:v1"]);
    let Change::Removed(removed) = next(&mut rx, Duration::from_secs(2)).await else {
        panic!()
    };
    assert_eq!(set(removed), &keys(&b) - &keys(&a));
    assert!(!task.is_finished());
}

#[tokio::test]
async fn stops_when_the_receiver_is_dropped() {
    let c = Containerd::start();
    let src = c.source(false).await;
    let (rx, task) = src.watch(
        Allowlist::default(),
        fast_watch(Duration::from_millis(200)),
        CancellationToken::new(),
    );
    drop(rx);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("watcher did not stop")
        .unwrap();
}
