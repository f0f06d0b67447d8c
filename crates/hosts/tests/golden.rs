//! Golden-file tests: each case copies `tests/golden/<case>/input` (absent: an empty hosts
//! directory) to a temporary directory, runs its steps, and compares the whole tree, byte for
//! byte, with `expected/`, and the dry-run text of the last step with `plan.txt`. Every case
//! then checks that re-running changes nothing and that `--uninstall` gives back the input
//! tree exactly. `UPDATE_GOLDEN=1` rewrites `expected/` and `plan.txt` (review the diff!).

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{DEFAULTS, copy_tree, golden_dir, read_tree, settings, tree_diff};
use shoal_hosts::{Plan, Settings, Snapshot, apply, plan_configure, plan_uninstall};

fn configure(root: &Path, s: &Settings) -> Plan {
    let plan = plan_configure(&Snapshot::read(root).unwrap(), s).unwrap();
    apply(&plan).unwrap();
    plan
}

fn plan_text(plan: &Plan, root: &Path) -> String {
    let mut t = plan.render(true);
    for w in &plan.warnings {
        t.push_str(&format!("warning: {w}\n"));
    }
    t.replace(&root.display().to_string(), "$HOSTS")
}

fn run_case(case: &str, steps: &[Settings]) {
    let dir = golden_dir(case);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("hosts");
    copy_tree(&dir.join("input"), &root);
    let input = read_tree(&root);

    let mut last = None;
    for s in steps {
        last = Some(configure(&root, s));
    }
    let plan = last.expect("a case has steps");
    let got = read_tree(&root);
    let text = plan_text(&plan, &root);

    let expected_dir = dir.join("expected");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let _ = fs::remove_dir_all(&expected_dir);
        copy_tree(&root, &expected_dir);
        fs::write(dir.join("plan.txt"), &text).unwrap();
    }
    let want = read_tree(&expected_dir);
    let diff = tree_diff(&got, &want);
    assert!(
        diff.is_empty(),
        "{case}: tree differs from expected/:\n{diff}"
    );
    let want_text = fs::read_to_string(dir.join("plan.txt")).unwrap();
    assert_eq!(text, want_text, "{case}: plan text differs from plan.txt");

    // Idempotent: the same settings again plan nothing and leave every byte alone.
    let again = plan_configure(&Snapshot::read(&root).unwrap(), steps.last().unwrap()).unwrap();
    assert!(
        again.is_noop(),
        "{case}: second run is not a no-op:\n{}",
        again.render(true)
    );
    apply(&again).unwrap();
    assert_eq!(read_tree(&root), got, "{case}: second run changed files");

    // Uninstall restores the input exactly, and is itself idempotent.
    let un = plan_uninstall(&Snapshot::read(&root).unwrap()).unwrap();
    apply(&un).unwrap();
    let restored = read_tree(&root);
    let diff = tree_diff(&restored, &input);
    assert!(
        diff.is_empty(),
        "{case}: uninstall did not restore the input:\n{diff}"
    );
    assert!(
        plan_uninstall(&Snapshot::read(&root).unwrap())
            .unwrap()
            .is_noop()
    );
}

const MIRROR: &str = "http://127.0.0.1:5000";

#[test]
fn empty_dir_gets_the_default_allowlist_and_no_catch_all() {
    run_case("empty", &[settings(&[MIRROR], DEFAULTS)]);
}

#[test]
fn talos_and_harbor_configs_are_kept_and_private_registries_untouched() {
    // 192.168.1.105 (Harbor's LoadBalancer IP) is listed explicitly, as the seed's
    // prependExisting setup did; the tailnet name and 192.168.1.106 are not.
    let reg = format!("{DEFAULTS},192.168.1.105");
    run_case(
        "talos_harbor",
        &[settings(&[MIRROR, "http://10.0.0.7:29999"], &reg)],
    );
}

#[test]
fn allowlist_shrink_removes_exactly_what_shoal_added() {
    run_case(
        "shrink",
        &[
            settings(&[MIRROR], "docker.io,ghcr.io,quay.io"),
            settings(&[MIRROR], "docker.io"),
        ],
    );
}

#[test]
fn all_registries_writes_default_without_server() {
    run_case("all_registries", &[settings(&[MIRROR], "*")]);
}

#[test]
fn foreign_default_is_left_alone_and_reported() {
    run_case("foreign_default", &[settings(&[MIRROR], "docker.io")]);
}

#[test]
fn mirror_change_updates_in_place() {
    run_case(
        "mirror_change",
        &[
            settings(&[MIRROR], "docker.io,quay.io"),
            settings(&["http://127.0.0.1:5001", MIRROR], "docker.io,quay.io"),
        ],
    );
}

#[test]
fn registry_with_port_uses_containerds_directory_name() {
    // localhost:5000 has an existing `localhost_5000_` directory (which containerd prefers);
    // 10.1.2.3:5000 has none, so the plain `host:port` name is created.
    run_case(
        "ports",
        &[settings(&[MIRROR], "localhost:5000,10.1.2.3:5000")],
    );
}

#[test]
fn pull_only_with_dial_timeout_and_header() {
    let mut s = settings(&[MIRROR], "gcr.io,quay.io");
    s.resolve_tags = false;
    s.dial_timeout = Some(Duration::from_millis(200));
    s.mirrors[0]
        .headers
        .insert("X-Shoal-Token".to_owned(), "t0ken".to_owned());
    run_case("pull_only", &[s]);
}
