//! Reading a containerd hosts directory (`<dir>/<registry>/hosts.toml`) the way containerd does,
//! to check what it routes where: the catch-all `_default`, which registries ask Shoal first,
//! and every endpoint (server and `[host]`) named.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item};

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
        problem: None,
    };
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
