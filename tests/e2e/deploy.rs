//! The deployment's node-side contract: the init container's command line, taken verbatim from
//! the checked-in plain manifests (which `scripts/check-deploy` keeps equal to the Helm chart),
//! run against a directory shaped like a Talos node's `/etc/cri/conf.d/hosts`, and the cleanup
//! hook's command line restoring it.
//!
//! The command lines are read from `deploy/kubernetes/*.yaml`, not restated here, so a change
//! to the chart's init or cleanup command is exercised by this test as shipped.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use shoal_oci::DEFAULT_REGISTRIES;

/// The path the default chart mounts as the hosts directory (substituted by a temp dir).
const CHART_HOSTS_DIR: &str = "/etc/containerd/certs.d";
/// Harbor as the user's Talos config has it (machine.registries.mirrors): reached through an
/// in-cluster name (extraHostEntries), with its own CA file next to hosts.toml.
const HARBOR: &str = "registry.example.ts.net";
const HARBOR_HOSTS: &str = r#"[host."http://harbor.harbor.svc.cluster.local"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/cri/conf.d/hosts/registry.example.ts.net/ca.crt"
"#;
const HARBOR_CA: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBdummyHarborCA\n-----END CERTIFICATE-----\n";
/// docker.io already mirrored by Talos to a Harbor proxy-cache project (upstream fallback kept).
const TALOS_DOCKER_HOSTS: &str = r#"[host."https://harbor.example.ts.net/v2/docker-hub"]
  capabilities = ["pull", "resolve"]
  override_path = true
"#;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn read_manifest(name: &str) -> String {
    let p = repo_root().join("deploy/kubernetes").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The `args` of container `container` in list `section` (`initContainers` or `containers`) of
/// the DaemonSet named `daemonset` in a multi-document manifest as `helm template` writes it.
///
/// A deliberately small reader for that block layout: block lists of plain or quoted scalars.
/// Anything else (flow lists, anchors, block scalars) panics, so a layout change is noticed
/// rather than misread.
fn container_args(manifest: &str, daemonset: &str, section: &str, container: &str) -> Vec<String> {
    let doc = manifest
        .split("\n---\n")
        .find(|d| {
            d.lines().any(|l| l == "kind: DaemonSet")
                && d.lines().any(|l| l == format!("  name: {daemonset}"))
        })
        .unwrap_or_else(|| panic!("no DaemonSet {daemonset} in the manifest"));
    let lines: Vec<&str> = doc
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    let sec = lines
        .iter()
        .position(|l| l.trim() == format!("{section}:"))
        .unwrap_or_else(|| panic!("DaemonSet {daemonset} has no {section}"));
    let sec_indent = indent(lines[sec]);
    let item = lines[sec + 1..]
        .iter()
        .take_while(|l| indent(l) > sec_indent)
        .position(|l| l.trim() == format!("- name: {container}"))
        .map(|i| sec + 1 + i)
        .unwrap_or_else(|| panic!("no container {container} in {daemonset}.{section}"));
    let item_indent = indent(lines[item]);
    let args = lines[item + 1..]
        .iter()
        .take_while(|l| indent(l) > item_indent)
        .position(|l| l.trim() == "args:")
        .map(|i| item + 1 + i)
        .unwrap_or_else(|| panic!("container {container} has no args"));
    let args_indent = indent(lines[args]);
    lines[args + 1..]
        .iter()
        .take_while(|l| indent(l) >= args_indent && l.trim_start().starts_with("- "))
        .map(|l| {
            let v = l.trim_start()[2..].trim();
            let unquoted = if v.len() >= 2
                && ((v.starts_with('"') && v.ends_with('"'))
                    || (v.starts_with('\'') && v.ends_with('\'')))
            {
                &v[1..v.len() - 1]
            } else {
                v
            };
            assert!(
                !unquoted.starts_with(['{', '[', '|', '>', '&', '*', '!'])
                    && !unquoted.contains(": "),
                "unsupported YAML in {container} args: {l:?}"
            );
            unquoted.to_owned()
        })
        .collect()
}

/// The value of `--flag=value` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    let prefix = format!("--{name}=");
    let mut found = args.iter().filter_map(|a| a.strip_prefix(&prefix));
    let v = found
        .next()
        .unwrap_or_else(|| panic!("no --{name}= in {args:?}"));
    assert!(found.next().is_none(), "--{name} given twice in {args:?}");
    v
}

/// Every file under `root`: relative path -> (bytes, permission bits). Directories are listed
/// with empty contents so created-and-left-behind directories show up too.
fn snapshot(root: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (Vec<u8>, u32)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(format!("{rel}/"), (Vec::new(), mode));
                walk(root, &p, out);
            } else {
                out.insert(rel, (std::fs::read(&p).unwrap(), mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn write(path: &Path, contents: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `shoal` with the manifest's args, the hosts directory swapped for `hosts`.
fn run_shoal(args: &[String], hosts: &Path) {
    let args: Vec<String> = args
        .iter()
        .map(|a| match a.strip_prefix("--hosts-dir=") {
            Some(_) => format!("--hosts-dir={}", hosts.display()),
            None => a.clone(),
        })
        .collect();
    let out = Command::new(shoal_tests::shoal_bin())
        .args(&args)
        .env_remove("SHOAL_REGISTRIES")
        .env_remove("SHOAL_ALL_REGISTRIES")
        .output()
        .expect("running shoal");
    assert!(
        out.status.success(),
        "shoal {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The header of the first `[host.…]` table: the endpoint containerd tries first.
fn first_host(hosts_toml: &str) -> &str {
    hosts_toml
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("[host."))
        .unwrap_or_else(|| panic!("no [host.…] table in:\n{hosts_toml}"))
}

#[test]
fn chart_init_container_configures_a_talos_node_and_cleanup_restores_it() {
    let shoal_yaml = read_manifest("shoal.yaml");
    let configure = container_args(&shoal_yaml, "shoal", "initContainers", "configure");
    let daemon = container_args(&shoal_yaml, "shoal", "containers", "shoal");
    let cleanup_yaml = read_manifest("shoal-cleanup.yaml");
    let uninstall = container_args(
        &cleanup_yaml,
        "shoal-cleanup",
        "initContainers",
        "uninstall",
    );

    // The manifests agree with themselves before anything runs.
    assert_eq!(
        configure.first().map(String::as_str),
        Some("configure"),
        "{configure:?}"
    );
    assert_eq!(flag(&configure, "hosts-dir"), CHART_HOSTS_DIR);
    let mirror = flag(&configure, "mirror");
    let daemon_port = flag(&daemon, "mirror-addr").rsplit(':').next().unwrap();
    assert_eq!(
        mirror,
        format!("http://127.0.0.1:{daemon_port}"),
        "containerd must be pointed at the port the daemon listens on"
    );
    assert_eq!(
        flag(&configure, "registries"),
        flag(&daemon, "registries"),
        "configure and daemon must mirror the same registries"
    );
    // Every flag the chart gives the daemon exists in the binary (the daemon itself needs a
    // containerd, so its command line is checked against `--help` rather than run).
    let help = Command::new(shoal_tests::shoal_bin())
        .args(["daemon", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert_eq!(
        daemon.first().map(String::as_str),
        Some("daemon"),
        "{daemon:?}"
    );
    for arg in &daemon[1..] {
        let name = arg.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{name} "))
                || help.contains(&format!("{name}="))
                || help.contains(&format!("{name}\n")),
            "the chart passes {name} to `shoal daemon`, which does not know it:\n{help}"
        );
    }
    let mut expected_uninstall = configure.clone();
    expected_uninstall.push("--uninstall".to_owned());
    assert_eq!(
        uninstall, expected_uninstall,
        "cleanup must undo exactly what the init container did"
    );

    // A Talos node: Talos-managed mirrors for Harbor and for docker.io (Harbor proxy cache).
    let tmp = tempfile::tempdir().unwrap();
    let hosts = tmp.path().join("etc/cri/conf.d/hosts");
    write(&hosts.join(HARBOR).join("hosts.toml"), HARBOR_HOSTS, 0o644);
    write(&hosts.join(HARBOR).join("ca.crt"), HARBOR_CA, 0o600);
    write(
        &hosts.join("docker.io/hosts.toml"),
        TALOS_DOCKER_HOSTS,
        0o644,
    );
    let before = snapshot(&hosts);
    let harbor_before: BTreeMap<_, _> = before
        .iter()
        .filter(|(k, _)| k.starts_with(HARBOR))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    run_shoal(&configure, &hosts);
    let configured = snapshot(&hosts);

    for registry in DEFAULT_REGISTRIES {
        let path = hosts.join(registry).join("hosts.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{registry}: no hosts.toml after configure ({e})"));
        let first = first_host(&text);
        assert!(
            first.contains(&format!("{mirror}\"")) || first.contains(&format!("{mirror}'")),
            "{registry}: Shoal's mirror {mirror} must be the first host, found {first}:\n{text}"
        );
        let section: String = text
            .split(first)
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| !l.trim_start().starts_with('['))
            .collect();
        assert!(
            section.contains("\"pull\"") && section.contains("\"resolve\""),
            "{registry}: mirror needs pull+resolve (resolveTags=true):\n{text}"
        );
    }
    let docker = std::fs::read_to_string(hosts.join("docker.io/hosts.toml")).unwrap();
    assert!(
        docker.contains("https://harbor.example.ts.net/v2/docker-hub")
            && docker.contains("override_path = true"),
        "Talos' own docker.io mirror must be kept after Shoal's:\n{docker}"
    );
    let ghcr = std::fs::read_to_string(hosts.join("ghcr.io/hosts.toml")).unwrap();
    assert!(
        ghcr.contains("server = \"https://ghcr.io\""),
        "new files fall back upstream:\n{ghcr}"
    );
    let harbor_after: BTreeMap<_, _> = configured
        .iter()
        .filter(|(k, _)| k.starts_with(HARBOR))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        harbor_after, harbor_before,
        "Harbor's directory must be byte-identical"
    );
    assert!(
        !hosts.join("_default").exists(),
        "configure must never write _default"
    );

    // Pods restart: the init container runs again and must change nothing.
    run_shoal(&configure, &hosts);
    assert_eq!(snapshot(&hosts), configured, "configure must be idempotent");

    run_shoal(&uninstall, &hosts);
    let after = snapshot(&hosts);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "uninstall must leave exactly the files that were there"
    );
    assert_eq!(after, before, "uninstall must restore every byte and mode");
}

#[test]
fn manifest_reader_refuses_layouts_it_does_not_understand() {
    let doc = [
        "kind: DaemonSet",
        "metadata:",
        "  name: x",
        "spec:",
        "  template:",
        "    spec:",
        "      initContainers:",
        "        - name: c",
        "          args:",
        "            - configure",
        "            - \"--a=b\"",
        "          env: []",
        "",
    ]
    .join("\n");
    let doc = doc.as_str();
    assert_eq!(
        container_args(doc, "x", "initContainers", "c"),
        ["configure", "--a=b"]
    );
    let flow = doc.replace("- \"--a=b\"", "- [a, b]");
    assert!(
        std::panic::catch_unwind(|| container_args(&flow, "x", "initContainers", "c")).is_err()
    );
    assert!(
        std::panic::catch_unwind(|| container_args(doc, "x", "initContainers", "missing")).is_err()
    );
}
