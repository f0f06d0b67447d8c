//! Bad input gets a clear, typed error naming what was wrong; nothing hangs or panics.

mod common;

use std::time::{Duration, Instant};

use common::Containerd;
use shoal_containerd::{ContentSource, Error, parse_digest};

#[tokio::test]
async fn unreachable_socket_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here.sock");
    let e = ContentSource::connect(&missing, "k8s.io", None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    assert!(e.is_connection());

    // A socket that accepts connections but never speaks gRPC: refused in bounded time.
    let silent = dir.path().join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    let t = Instant::now();
    let e = ContentSource::connect(&silent, "k8s.io", None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("silent.sock"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn wrong_or_invalid_namespace() {
    let c = Containerd::start();
    let e = ContentSource::connect(&c.socket(), "no-such-ns", None)
        .await
        .unwrap_err();
    match &e {
        Error::NamespaceNotFound {
            namespace,
            available,
            ..
        } => {
            assert_eq!(namespace, "no-such-ns");
            assert_eq!(available, &vec![common::NS.to_owned()]);
        }
        other => panic!("expected NamespaceNotFound, got {other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("no-such-ns") && msg.contains("k8s.io"),
        "{msg}"
    );
    for bad in ["", "bad ns", "../etc", "x\ny"] {
        let e = ContentSource::connect(&c.socket(), bad, None)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidNamespace(_)), "{bad:?}: {e}");
    }
}

#[test]
fn malformed_digests_are_refused_with_the_input() {
    for bad in ["sha256:../../etc/passwd", "sha256:abc", "md5:00", "nocolon"] {
        let e = parse_digest(bad).unwrap_err();
        assert!(matches!(e, Error::BadDigest { .. }), "{e}");
        assert!(e.to_string().contains(bad), "{e}");
    }
    assert!(
        parse_digest("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
            .is_ok()
    );
}
