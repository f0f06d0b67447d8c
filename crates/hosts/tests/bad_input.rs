//! Bad input fails with a clear error and writes nothing, for any registry.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{DEFAULTS, read_tree, settings};
use shoal_hosts::{HostsError, configure};

const MIRROR: &str = "http://127.0.0.1:5000";

#[test]
fn malformed_existing_file_is_named_with_line_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir(root.join("quay.io")).unwrap();
    let bad =
        "server = \"https://quay.io\"\n\n[host.\"https://cache\"\n  capabilities = [\"pull\"]\n";
    fs::write(root.join("quay.io/hosts.toml"), bad).unwrap();
    let before = read_tree(root);
    let err = configure(root, &settings(&[MIRROR], DEFAULTS), false).unwrap_err();
    let msg = err.to_string();
    let want = format!("{}:3:", root.join("quay.io/hosts.toml").display());
    assert!(msg.contains(&want), "{msg}");
    assert!(msg.contains("left untouched"), "{msg}");
    assert!(matches!(err, HostsError::Malformed { line: 3, .. }));
    assert_eq!(read_tree(root), before, "nothing may be written");
}

#[test]
fn malformed_file_of_a_registry_not_listed_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir(root.join("harbor.corp")).unwrap();
    fs::write(root.join("harbor.corp/hosts.toml"), "this is = = not toml").unwrap();
    configure(root, &settings(&[MIRROR], "docker.io"), false).unwrap();
    assert_eq!(
        fs::read(root.join("harbor.corp/hosts.toml")).unwrap(),
        b"this is = = not toml"
    );
    assert!(root.join("docker.io/hosts.toml").exists());
}

#[test]
fn inline_host_tables_are_refused_with_position() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir(root.join("ghcr.io")).unwrap();
    fs::write(
        root.join("ghcr.io/hosts.toml"),
        "server = \"https://ghcr.io\"\nhost.\"http://x\" = { capabilities = [\"pull\"] }\n",
    )
    .unwrap();
    let before = read_tree(root);
    let msg = configure(root, &settings(&[MIRROR], DEFAULTS), false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("ghcr.io/hosts.toml:2:"), "{msg}");
    assert_eq!(read_tree(root), before);
}

#[test]
fn missing_or_wrong_hosts_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let e = configure(&missing, &settings(&[MIRROR], DEFAULTS), false).unwrap_err();
    assert!(matches!(e, HostsError::MissingRoot(_)), "{e}");
    assert!(e.to_string().contains("does not exist"));
    let file = tmp.path().join("file");
    fs::write(&file, "").unwrap();
    let e = configure(&file, &settings(&[MIRROR], DEFAULTS), false).unwrap_err();
    assert!(matches!(e, HostsError::NotADirectory(_)), "{e}");
}

#[test]
fn registry_name_taken_by_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("ghcr.io"), "not a dir").unwrap();
    let before = read_tree(tmp.path());
    let e = configure(tmp.path(), &settings(&[MIRROR], DEFAULTS), false).unwrap_err();
    assert!(matches!(e, HostsError::NameTaken(_)), "{e}");
    assert_eq!(read_tree(tmp.path()), before);
}

/// A read-only mount (what a mis-declared hostPath gives): needs root to bind-mount.
struct ReadOnlyMount<'a>(&'a Path);

impl<'a> ReadOnlyMount<'a> {
    fn new(dir: &'a Path) -> Self {
        let run = |args: &[&str]| {
            let st = Command::new("mount")
                .args(args)
                .status()
                .expect("run mount");
            assert!(st.success(), "mount {args:?} failed: this test needs root");
        };
        let d = dir.to_str().unwrap();
        run(&["--bind", d, d]);
        let guard = ReadOnlyMount(dir);
        run(&["-o", "remount,ro,bind", d]);
        guard
    }
}

impl Drop for ReadOnlyMount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn unwritable_dir_fails_before_writing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("hosts");
    fs::create_dir_all(root.join("docker.io")).unwrap();
    fs::write(root.join("docker.io/hosts.toml"), "[host.\"https://a\"]\n").unwrap();
    let before = read_tree(&root);
    let err = {
        let _ro = ReadOnlyMount::new(&root);
        configure(&root, &settings(&[MIRROR], DEFAULTS), false).unwrap_err()
    };
    let msg = err.to_string();
    assert!(msg.contains("Read-only file system"), "{msg}");
    assert!(msg.contains(&root.display().to_string()), "{msg}");
    assert_eq!(read_tree(&root), before);
}
