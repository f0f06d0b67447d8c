//! Per-node containerd configuration: `containerd config default` with the node's own root,
//! state, socket and hosts directory (`config_path`, read by the CRI resolver), and the initial
//! hosts.toml files routing the test registry hosts to the rig registry.

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use crate::cmd;

/// Registry hosts each node routes to the rig registry. Never `_default`: Shoal mirrors an
/// allowlist, and tests must see what happens to a registry that is not listed.
pub const ROUTED_REGISTRIES: [&str; 3] = ["docker.io", "ghcr.io", "harbor.test"];

fn default_config() -> &'static str {
    static DEFAULT: OnceLock<String> = OnceLock::new();
    DEFAULT.get_or_init(|| {
        let out = cmd::must("containerd", &["config", "default"]);
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
    let p = |name: &str| dir.join(name).display().to_string();
    let mut c = default_config().to_string();
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
