//! Per-node containerd configuration: `containerd config default` with the node's own root,
//! state, socket and hosts directory (`config_path`, read by the CRI resolver), and the initial
//! hosts.toml files routing the test registry hosts to the rig registry.
//!
//! The binaries are Debian's containerd 1.6 on `PATH` unless `SHOAL_RIG_CONTAINERD_BIN_DIR`
//! names a directory holding another `containerd` and `ctr` (scripts/test-containerd builds
//! 1.7 and 2.x there). The config is edited per format: 1.6 and 1.7 print config version 2, 2.x
//! prints version 3 with other plugin names and single-quoted strings.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::cmd;

/// Environment variable naming a directory with the `containerd` and `ctr` the rig runs.
pub const BIN_DIR_ENV: &str = "SHOAL_RIG_CONTAINERD_BIN_DIR";

/// The containerd tool `name` (`containerd` or `ctr`): from `$SHOAL_RIG_CONTAINERD_BIN_DIR` when
/// set, else the bare name, found on `PATH`.
pub(crate) fn bin(name: &str) -> PathBuf {
    match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join(name),
        _ => PathBuf::from(name),
    }
}

/// [`bin`] as a string, for [`cmd`] helpers.
pub(crate) fn bin_str(name: &str) -> String {
    bin(name)
        .into_os_string()
        .into_string()
        .unwrap_or_else(|p| panic!("{BIN_DIR_ENV} must be UTF-8: {}", p.to_string_lossy()))
}

/// Path of the `ctr` the rig uses (for tests that run it themselves).
pub fn ctr_bin() -> PathBuf {
    bin("ctr")
}

/// The major version of the rig's `ctr` (`ctr --version` ends with the version: `1.6.20~ds1`,
/// `2.2.9+unknown`).
fn ctr_major() -> u32 {
    static MAJOR: OnceLock<u32> = OnceLock::new();
    *MAJOR.get_or_init(|| {
        let out = cmd::must(&bin_str("ctr"), &["--version"]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .last()
            .and_then(|v| v.trim_start_matches('v').split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| {
                panic!("shoal rig: cannot read a version from `ctr --version`: {text:?}")
            })
    })
}

/// Arguments that make `ctr images pull` fetch in the ctr process with its own resolver and
/// `--hosts-dir`, as 1.x always does: 2.x otherwise hands the pull to the daemon's transfer
/// service (`--local`).
pub fn ctr_pull_local_args() -> &'static [&'static str] {
    if ctr_major() >= 2 { &["--local"] } else { &[] }
}

/// Registry hosts each node routes to the rig registry. Never `_default`: Shoal mirrors an
/// allowlist, and tests must see what happens to a registry that is not listed.
pub const ROUTED_REGISTRIES: [&str; 3] = ["docker.io", "ghcr.io", "harbor.test"];

fn default_config() -> &'static str {
    static DEFAULT: OnceLock<String> = OnceLock::new();
    DEFAULT.get_or_init(|| {
        let out = cmd::must(&bin_str("containerd"), &["config", "default"]);
        String::from_utf8(out.stdout).expect("containerd config default prints UTF-8")
    })
}

/// Replace the one line starting with `prefix` (after trimming nothing) by `with`; panics if the
/// line is missing or ambiguous, since then the default config changed shape under us.
fn replace_line(text: &str, prefix: &str, with: &str) -> String {
    let hits = text.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(
        hits, 1,
        "shoal rig: expected exactly one line starting with {prefix:?} in `containerd config default`, found {hits}"
    );
    let mut out = String::with_capacity(text.len() + with.len());
    for l in text.lines() {
        out.push_str(if l.starts_with(prefix) { with } else { l });
        out.push('\n');
    }
    out
}

/// The config.toml for a node living in `dir`.
pub(crate) fn config(dir: &Path, hosts_dir: &Path) -> String {
    let default = default_config();
    if default.lines().any(|l| l == "version = 3") {
        config_v3(default, dir, hosts_dir)
    } else {
        config_v2(default, dir, hosts_dir)
    }
}

/// Config version 2 (containerd 1.6 and 1.7).
fn config_v2(default: &str, dir: &Path, hosts_dir: &Path) -> String {
    let p = |name: &str| dir.join(name).display().to_string();
    let mut c = default.to_string();
    c = replace_line(&c, "root = ", &format!("root = \"{}\"", p("root")));
    c = replace_line(&c, "state = ", &format!("state = \"{}\"", p("state")));
    c = replace_line(
        &c,
        "  address = \"/run/containerd/containerd.sock\"",
        &format!("  address = \"{}\"", p("containerd.sock")),
    );
    c = replace_line(
        &c,
        "      config_path = \"\"",
        &format!("      config_path = \"{}\"", hosts_dir.display()),
    );
    // Shoal serves layers from the content store: they must stay there after unpacking.
    c = replace_line(
        &c,
        "      discard_unpacked_layers = ",
        "      discard_unpacked_layers = false",
    );
    c
}

/// Config version 3 (containerd 2.x): the CRI image service in `io.containerd.cri.v1.images`,
/// and two more things a node must not share with its neighbours or the host: `imports` (the
/// host's `/etc/containerd/conf.d`) and NRI (one fixed socket under /var/run for every
/// containerd). The default prints literal strings ('…'); the edited lines use basic strings
/// ("…"), as for version 2, so tests can find and rewrite them the same way.
fn config_v3(default: &str, dir: &Path, hosts_dir: &Path) -> String {
    let p = |name: &str| dir.join(name).display().to_string();
    let hosts = hosts_dir.display().to_string();
    let mut c = default.to_string();
    c = replace_line(&c, "root = ", &format!("root = \"{}\"", p("root")));
    c = replace_line(&c, "state = ", &format!("state = \"{}\"", p("state")));
    c = replace_line(&c, "imports = ", "imports = []");
    c = replace_line(
        &c,
        "  address = '/run/containerd/containerd.sock'",
        &format!("  address = \"{}\"", p("containerd.sock")),
    );
    // The CRI image service's hosts directory (6 spaces: `[…images'.registry]`).
    c = replace_line(
        &c,
        "      config_path = ''",
        &format!("      config_path = \"{hosts}\""),
    );
    // The transfer service's (4 spaces: `[…transfer.v1.local']`), used by 2.x `ctr pull`.
    c = replace_line(
        &c,
        "    config_path = ''",
        &format!("    config_path = \"{hosts}\""),
    );
    // Shoal serves layers from the content store: they must stay there after unpacking.
    c = replace_line(
        &c,
        "    discard_unpacked_layers = ",
        "    discard_unpacked_layers = false",
    );
    // NRI is on by default in 2.x, with one socket path for every containerd on the machine.
    c = replace_line(&c, "    disable = false", "    disable = true");
    c
}

/// The hosts.toml routing one registry host to `server` (with the `[host]` table containerd 1.6
/// requires; a file with only `server` is ignored).
pub fn hosts_toml(server: &str) -> String {
    format!(
        "server = \"{server}\"\n\n[host.\"{server}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// Write `<hosts_dir>/<host>/hosts.toml` atomically (temp file + rename).
pub(crate) fn write_hosts(hosts_dir: &Path, host: &str, content: &str) -> Result<(), String> {
    let dir = hosts_dir.join(host);
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let tmp = dir.join(".hosts.toml.tmp");
    let dest = dir.join("hosts.toml");
    fs::write(&tmp, content).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, &dest).map_err(|e| format!("rename to {}: {e}", dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of a `containerd config default` (version 3) that the rig edits, in their
    /// tables, with look-alike lines that must stay untouched.
    const V3: &str = "version = 3
root = '/var/lib/containerd'
state = '/run/containerd'
imports = ['/etc/containerd/conf.d/*.toml']

[grpc]
  address = '/run/containerd/containerd.sock'

[ttrpc]
  address = ''

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    discard_unpacked_layers = true
    disable_snapshot_annotations = true

    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = ''

  [plugins.'io.containerd.nri.v1.nri']
    disable = false
    socket_path = '/var/run/nri/nri.sock'

  [plugins.'io.containerd.snapshotter.v1.overlayfs']
    root_path = ''

  [plugins.'io.containerd.transfer.v1.local']
    config_path = ''
";

    #[test]
    fn version_3_gets_the_node_paths_and_keeps_layers() {
        let c = config_v3(V3, Path::new("/rig/n1"), Path::new("/rig/n1/certs.d"));
        for line in [
            "root = \"/rig/n1/root\"",
            "state = \"/rig/n1/state\"",
            "imports = []",
            "  address = \"/rig/n1/containerd.sock\"",
            "      config_path = \"/rig/n1/certs.d\"",
            "    config_path = \"/rig/n1/certs.d\"",
            "    discard_unpacked_layers = false",
            "    disable = true",
            // Untouched look-alikes.
            "  address = ''",
            "    root_path = ''",
            "    disable_snapshot_annotations = true",
            "    socket_path = '/var/run/nri/nri.sock'",
        ] {
            assert!(c.lines().any(|l| l == line), "missing {line:?} in\n{c}");
        }
        assert_eq!(c.lines().count(), V3.lines().count());
    }

    #[test]
    #[should_panic(expected = "expected exactly one line starting with")]
    fn a_default_of_another_shape_is_refused() {
        let without_nri = V3.replace("    disable = false\n", "");
        config_v3(&without_nri, Path::new("/rig/n1"), Path::new("/h"));
    }
}
