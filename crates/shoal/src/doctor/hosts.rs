//! Reading a containerd hosts directory (`<dir>/<registry>/hosts.toml`) the way containerd does,
//! to check what it routes where: the catch-all `_default`, which registries ask Shoal first,
//! every endpoint (server and `[host]`) named, and how containerd talks TLS to each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, TableLike};

/// containerd's TLS settings for one endpoint: `ca` (one path or a list, relative paths taken
/// from the hosts.toml's directory) and `skip_verify`. Top-level keys apply to `server`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tls {
    pub ca: Vec<PathBuf>,
    pub skip_verify: bool,
}

/// One `<registry>/hosts.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsFile {
    /// The directory name: a registry host (`docker.io`, `10.0.0.1:5000`) or `_default`.
    pub registry: String,
    pub path: PathBuf,
    /// `server = …`.
    pub server: Option<String>,
    /// `[host."…"]` URLs in file order, each with whether it is Shoal's.
    pub hosts: Vec<(String, bool)>,
    /// TLS settings of the server and of each host that has any, by URL.
    pub tls: BTreeMap<String, Tls>,
    /// `[host]` URLs with `override_path = true`: the URL's path is the API root (a Harbor
    /// proxy-cache project, `…/v2/<project>`), not `<url>/v2`.
    pub override_path: std::collections::BTreeSet<String>,
    /// Why the file could not be read or parsed.
    pub problem: Option<String>,
}

impl HostsFile {
    /// Whether a `[host]` points at Shoal.
    pub fn has_shoal(&self) -> bool {
        self.hosts.iter().any(|(_, shoal)| *shoal)
    }

    /// Every URL this file names (server first), with whether it is Shoal's.
    pub fn endpoints(&self) -> Vec<(String, bool)> {
        self.server
            .iter()
            .map(|s| (s.clone(), false))
            .chain(self.hosts.iter().cloned())
            .collect()
    }

    /// How containerd talks TLS to `url` (the system's roots, verified, when nothing is set).
    pub fn tls_for(&self, url: &str) -> Tls {
        self.tls.get(url).cloned().unwrap_or_default()
    }
}

/// The registry directories of `root` that hold a hosts.toml, sorted by name. `mirrors` are
/// URLs known to be Shoal's (besides `[host]` tables carrying Shoal's marker comment).
pub fn scan(root: &Path, mirrors: &[String]) -> Result<Vec<HostsFile>, String> {
    let entries = std::fs::read_dir(root)
        .map_err(|e| format!("cannot read the hosts directory {}: {e}", root.display()))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join("hosts.toml");
        if !entry.path().is_dir() || !path.is_file() {
            continue;
        }
        let registry = entry.file_name().to_string_lossy().into_owned();
        out.push(match std::fs::read_to_string(&path) {
            Ok(text) => parse(&registry, &path, &text, mirrors),
            Err(e) => HostsFile {
                registry,
                path: path.clone(),
                server: None,
                hosts: Vec::new(),
                tls: BTreeMap::new(),
                override_path: Default::default(),
                problem: Some(format!("cannot read {}: {e}", path.display())),
            },
        });
    }
    out.sort_by(|a, b| a.registry.cmp(&b.registry));
    Ok(out)
}

/// Parses one hosts.toml.
pub fn parse(registry: &str, path: &Path, text: &str, mirrors: &[String]) -> HostsFile {
    let mut f = HostsFile {
        registry: registry.to_owned(),
        path: path.to_owned(),
        server: None,
        hosts: Vec::new(),
        tls: BTreeMap::new(),
        override_path: Default::default(),
        problem: None,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let doc = match text.parse::<DocumentMut>() {
        Ok(d) => d,
        Err(e) => {
            f.problem = Some(format!(
                "{} is not valid TOML: {}",
                path.display(),
                e.message()
            ));
            return f;
        }
    };
    f.server = doc.get("server").and_then(Item::as_str).map(str::to_owned);
    if let Some(server) = &f.server {
        let tls = tls_of(doc.as_table(), base);
        if tls != Tls::default() {
            f.tls.insert(server.clone(), tls);
        }
    }
    if let Some(hosts) = doc.get("host").and_then(Item::as_table_like) {
        let mut list: Vec<(isize, String, bool)> = hosts
            .iter()
            .map(|(url, item)| {
                let marked = item
                    .as_table()
                    .and_then(|t| t.decor().prefix())
                    .and_then(|p| p.as_str())
                    .is_some_and(|p| p.contains(shoal_hosts::MARKER));
                let known = mirrors.iter().any(|m| same_url(m, url));
                if let Some(tls) = item
                    .as_table_like()
                    .map(|t| tls_of(t, base))
                    .filter(|t| *t != Tls::default())
                {
                    f.tls.insert(url.to_owned(), tls);
                }
                if item
                    .get("override_path")
                    .and_then(Item::as_bool)
                    .unwrap_or(false)
                {
                    f.override_path.insert(url.to_owned());
                }
                let pos = item
                    .as_table()
                    .and_then(|t| t.position())
                    .unwrap_or(isize::MAX);
                (pos, url.to_owned(), marked || known)
            })
            .collect();
        // containerd 1.6 orders hosts by their place in the file, not by key.
        list.sort_by_key(|(pos, _, _)| *pos);
        f.hosts = list.into_iter().map(|(_, u, s)| (u, s)).collect();
    }
    f
}

fn tls_of(t: &dyn TableLike, base: &Path) -> Tls {
    let ca = match t.get("ca") {
        Some(Item::Value(toml_edit::Value::Array(a))) => a
            .iter()
            .filter_map(|v| v.as_str())
            .map(PathBuf::from)
            .collect(),
        Some(item) => item.as_str().map(PathBuf::from).into_iter().collect(),
        None => Vec::new(),
    };
    Tls {
        ca: ca.into_iter().map(|p: PathBuf| base.join(p)).collect(),
        skip_verify: t
            .get("skip_verify")
            .and_then(Item::as_bool)
            .unwrap_or(false),
    }
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// The host part of an endpoint URL (`http://harbor.local:8080/v2` → `harbor.local`), or the
/// input when it has no scheme (`harbor.local:5000` → `harbor.local`).
pub fn host_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url)
        .ok()
        .filter(|u| u.host_str().is_some())
        .or_else(|| url::Url::parse(&format!("https://{url}")).ok())?;
    parsed
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOAL: &str = "server = \"https://registry-1.docker.io\"\n\n# shoal-managed: Shoal's mirror, kept first by `shoal configure`; removed by --uninstall.\n[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"https://mirror.corp\"]\n  capabilities = [\"pull\"]\n";

    #[test]
    fn finds_server_and_hosts_in_order_and_shoal_by_marker() {
        let f = parse("docker.io", Path::new("x/hosts.toml"), SHOAL, &[]);
        assert_eq!(f.server.as_deref(), Some("https://registry-1.docker.io"));
        assert_eq!(
            f.hosts,
            vec![
                ("http://127.0.0.1:5000".to_owned(), true),
                ("https://mirror.corp".to_owned(), false)
            ]
        );
        assert!(f.has_shoal());
        assert_eq!(f.endpoints().len(), 3);
    }

    #[test]
    fn shoal_by_known_mirror_url_and_bad_toml() {
        let text = "[host.\"http://10.0.0.2:5000/\"]\n";
        let f = parse(
            "ghcr.io",
            Path::new("h"),
            text,
            &["http://10.0.0.2:5000".into()],
        );
        assert!(f.has_shoal());
        let f = parse("ghcr.io", Path::new("h"), "server = ", &[]);
        assert!(f.problem.unwrap().contains("not valid TOML"));
    }

    #[test]
    fn tls_settings_per_endpoint_with_relative_ca_paths() {
        let text = "server = \"https://harbor.corp\"\nca = \"harbor-ca.pem\"\n\n\
                    [host.\"https://mirror.corp\"]\n  ca = [\"/etc/a.pem\", \"b.pem\"]\n\n\
                    [host.\"https://lab.corp\"]\n  skip_verify = true\n\n\
                    [host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\"]\n";
        let f = parse(
            "harbor.corp",
            Path::new("/h/harbor.corp/hosts.toml"),
            text,
            &[],
        );
        assert_eq!(
            f.tls_for("https://harbor.corp").ca,
            [PathBuf::from("/h/harbor.corp/harbor-ca.pem")]
        );
        assert_eq!(
            f.tls_for("https://mirror.corp").ca,
            [
                PathBuf::from("/etc/a.pem"),
                PathBuf::from("/h/harbor.corp/b.pem")
            ]
        );
        assert!(f.tls_for("https://lab.corp").skip_verify);
        assert_eq!(f.tls_for("http://127.0.0.1:5000"), Tls::default());
        assert_eq!(f.tls.len(), 3);
    }

    #[test]
    fn host_names() {
        assert_eq!(
            host_of("http://harbor.local:8080/v2").as_deref(),
            Some("harbor.local")
        );
        assert_eq!(
            host_of("https://[fd00::1]:5000").as_deref(),
            Some("fd00::1")
        );
        assert_eq!(
            host_of("harbor.local:5000").as_deref(),
            Some("harbor.local")
        );
    }

    #[test]
    fn scan_lists_registry_dirs_with_hosts_toml() {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [
            ("docker.io", SHOAL),
            ("_default", "server = \"https://x\"\n"),
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("hosts.toml"), body).unwrap();
        }
        std::fs::create_dir(dir.path().join("empty.io")).unwrap();
        let files = scan(dir.path(), &[]).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.registry.as_str()).collect();
        assert_eq!(names, ["_default", "docker.io"]);
        assert!(scan(&dir.path().join("missing"), &[]).is_err());
    }
}
