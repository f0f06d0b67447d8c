//! What happens when someone else touches the files after Shoal: operator edits, another tool
//! rewriting or deleting a file, a mirror URL someone already listed, leftovers of a crash.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{read_tree, settings};
use shoal_hosts::{
    Action, MARKER, ORIG_FILE, Plan, Settings, Snapshot, apply, plan_configure, plan_uninstall,
};

const HARBOR: &str = "# Harbor pull-through cache\nserver = \"https://registry-1.docker.io\"\n\n[host.\"https://harbor.corp\"]\n  capabilities = [\"pull\", \"resolve\"]\n";

fn configure(root: &Path, s: &Settings) -> Plan {
    let p = plan_configure(&Snapshot::read(root).unwrap(), s).unwrap();
    apply(&p).unwrap();
    p
}

fn uninstall(root: &Path) -> Plan {
    let p = plan_uninstall(&Snapshot::read(root).unwrap()).unwrap();
    apply(&p).unwrap();
    p
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    fs::create_dir_all(root.join("docker.io")).unwrap();
    fs::write(root.join("docker.io/hosts.toml"), HARBOR).unwrap();
    (tmp, root)
}

#[test]
fn operator_edits_survive_rerun_and_uninstall_removes_only_shoal() {
    let (_t, root) = setup();
    let s = settings(&["http://127.0.0.1:5000"], "docker.io");
    configure(&root, &s);
    let f = root.join("docker.io/hosts.toml");
    // The operator edits the Harbor table (Shoal's own table is Shoal's: edits there are
    // overwritten on the next run, checked below).
    let configured = fs::read_to_string(&f).unwrap();
    let edited = configured.replace(
        "[host.\"https://harbor.corp\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        "[host.\"https://harbor.corp\"]\n  capabilities = [\"pull\"]  # operator: no resolve\n",
    );
    assert_ne!(edited, configured);
    fs::write(&f, &edited).unwrap();

    let again = configure(&root, &s);
    assert!(again.is_noop(), "{}", again.render(true));
    assert_eq!(fs::read_to_string(&f).unwrap(), edited);

    // An edit inside Shoal's table is reverted by the next run; the operator's edit stays.
    let shoal_edited = edited.replace("[\"pull\", \"resolve\"]\n\n", "[\"pull\"]\n\n");
    assert_ne!(shoal_edited, edited);
    fs::write(&f, shoal_edited).unwrap();
    configure(&root, &s);
    assert_eq!(fs::read_to_string(&f).unwrap(), edited);

    let un = uninstall(&root);
    assert_eq!(un.dirs[0].action, Action::Update);
    assert!(un.warnings.iter().any(|w| w.contains("edited since Shoal")));
    let after = fs::read_to_string(&f).unwrap();
    assert!(!after.contains(MARKER), "{after}");
    assert!(after.contains("# operator: no resolve"), "{after}");
    assert!(
        after.starts_with("# Harbor pull-through cache\nserver"),
        "{after}"
    );
    assert!(!root.join("docker.io").join(ORIG_FILE).exists());
}

#[test]
fn tables_added_to_a_shoal_created_file_are_kept_on_removal() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let s = settings(&["http://127.0.0.1:5000"], "quay.io");
    configure(&root, &s);
    let f = root.join("quay.io/hosts.toml");
    let mut text = fs::read_to_string(&f).unwrap();
    text.push_str("\n[host.\"https://quay-cache.corp\"]\n  capabilities = [\"pull\"]\n");
    fs::write(&f, &text).unwrap();
    fs::write(root.join("quay.io/ca.crt"), "x").unwrap();

    let p = configure(&root, &settings(&["http://127.0.0.1:5000"], "docker.io"));
    let q = p.dirs.iter().find(|d| d.dir == "quay.io").unwrap();
    assert_eq!(q.action, Action::Update);
    let after = fs::read_to_string(&f).unwrap();
    assert!(
        !after.contains(MARKER) && after.contains("quay-cache.corp"),
        "{after}"
    );
    assert!(root.join("quay.io/ca.crt").exists());
    assert!(!root.join("quay.io/.shoal-created").exists());
}

#[test]
fn file_rewritten_by_another_tool_becomes_the_new_original() {
    let (_t, root) = setup();
    let s = settings(&["http://127.0.0.1:5000"], "docker.io");
    configure(&root, &s);
    // Talos re-renders the file from its machine config: Shoal's table is gone.
    let talos = "[host.'https://harbor-v2.corp']\ncapabilities = ['pull']\n";
    fs::write(root.join("docker.io/hosts.toml"), talos).unwrap();
    let p = configure(&root, &s);
    assert!(
        p.warnings.iter().any(|w| w.contains("outdated")),
        "{:?}",
        p.warnings
    );
    assert_eq!(
        fs::read_to_string(root.join("docker.io").join(ORIG_FILE)).unwrap(),
        talos
    );
    uninstall(&root);
    assert_eq!(
        fs::read_to_string(root.join("docker.io/hosts.toml")).unwrap(),
        talos
    );
}

#[test]
fn deleted_file_is_not_resurrected_by_uninstall() {
    let (_t, root) = setup();
    configure(&root, &settings(&["http://127.0.0.1:5000"], "docker.io"));
    fs::remove_file(root.join("docker.io/hosts.toml")).unwrap();
    let p = uninstall(&root);
    assert!(p.warnings.iter().any(|w| w.contains("deleted")));
    assert!(!root.join("docker.io/hosts.toml").exists());
    assert!(!root.join("docker.io").join(ORIG_FILE).exists());
}

#[test]
fn mirror_already_listed_by_someone_else_is_not_taken_over() {
    let (_t, root) = setup();
    let p = configure(&root, &settings(&["https://harbor.corp"], "docker.io"));
    assert!(p.is_noop());
    assert!(p.warnings.iter().any(|w| w.contains("already lists")));
    assert_eq!(
        fs::read_to_string(root.join("docker.io/hosts.toml")).unwrap(),
        HARBOR
    );
}

#[test]
fn modes_are_kept_and_new_files_are_world_readable() {
    let (_t, root) = setup();
    let f = root.join("docker.io/hosts.toml");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    configure(
        &root,
        &settings(&["http://127.0.0.1:5000"], "docker.io,ghcr.io"),
    );
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&f), 0o600);
    assert_eq!(mode(&root.join("docker.io").join(ORIG_FILE)), 0o600);
    assert_eq!(mode(&root.join("ghcr.io/hosts.toml")), 0o644);
    assert_eq!(mode(&root.join("ghcr.io")), 0o755);
    uninstall(&root);
    assert_eq!(mode(&f), 0o600);
}

#[test]
fn leftovers_of_an_interrupted_run_are_cleaned() {
    let (_t, root) = setup();
    fs::create_dir(root.join(".shoal-tmp-abc")).unwrap();
    fs::write(root.join(".shoal-tmp-abc/hosts.toml"), "x").unwrap();
    fs::write(root.join("docker.io/.shoal-tmp-def"), "x").unwrap();
    configure(&root, &settings(&["http://127.0.0.1:5000"], "docker.io"));
    let names: Vec<String> = read_tree(&root).into_keys().collect();
    assert!(names.iter().all(|n| !n.contains(".shoal-tmp")), "{names:?}");
}

#[test]
fn dry_run_plans_without_writing() {
    let (_t, root) = setup();
    let before = read_tree(&root);
    let plan = shoal_hosts::configure(
        &root,
        &settings(&["http://127.0.0.1:5000"], "docker.io,ghcr.io"),
        true,
    )
    .unwrap();
    assert_eq!(read_tree(&root), before);
    let text = plan.render(true);
    assert!(
        text.contains("~ docker.io") && text.contains("+ ghcr.io"),
        "{text}"
    );
    assert!(text.contains("+[host.\"http://127.0.0.1:5000\"]"), "{text}");
}
