//! Reading what containerd's own configuration says about registries, without containerd: the
//! main config file plus its `imports` (Talos keeps the CRI part in `/etc/cri/conf.d/*.toml`),
//! for both config version 2 (containerd 1.x, `io.containerd.grpc.v1.cri`) and version 3
//! (containerd 2.x, `io.containerd.cri.v1.images`).

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item};

/// containerd's default root when the config does not set one.
pub const DEFAULT_ROOT: &str = "/var/lib/containerd";

/// The containerd config files that were read, in merge order (later wins).
#[derive(Debug, Default)]
pub struct ContainerdConfig {
    pub files: Vec<(PathBuf, DocumentMut)>,
    /// Files that could not be read or parsed, with why.
    pub problems: Vec<String>,
}

/// A value and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Found<T> {
    pub value: T,
    pub file: PathBuf,
    pub key: String,
}

/// Registry credentials as containerd uses them. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Empty with an identity (refresh) token.
    pub username: String,
    /// The password, or the identity token when `username` is empty.
    pub secret: String,
}

impl Credentials {
    /// Who, for a report: the user name, or that an identity token is used; never the secret.
    pub fn who(&self) -> String {
        if self.username.is_empty() {
            "an identity token".to_owned()
        } else {
            format!("user {:?}", self.username)
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

const V2_CRI: &str = "io.containerd.grpc.v1.cri";
const V3_IMAGES: &str = "io.containerd.cri.v1.images";

impl ContainerdConfig {
    /// Reads `path` and every file its `imports` name (globs in the file name only).
    pub fn read(path: &Path) -> Result<ContainerdConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let main = parse(path, &text)?;
        let mut cfg = ContainerdConfig::default();
        let imports: Vec<String> = main
            .get("imports")
            .and_then(Item::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        cfg.files.push((path.to_owned(), main));
        for pattern in imports {
            for file in expand(&pattern) {
                match std::fs::read_to_string(&file)
                    .map_err(|e| e.to_string())
                    .and_then(|t| parse(&file, &t))
                {
                    Ok(doc) => cfg.files.push((file, doc)),
                    Err(e) => cfg.problems.push(format!("import {}: {e}", file.display())),
                }
            }
        }
        Ok(cfg)
    }

    /// Parses one document (tests, and configs given as text).
    pub fn from_text(path: &Path, text: &str) -> Result<ContainerdConfig, String> {
        Ok(ContainerdConfig {
            files: vec![(path.to_owned(), parse(path, text)?)],
            problems: Vec::new(),
        })
    }

    /// The last value among the candidate key paths, across files in merge order.
    fn lookup(&self, candidates: &[&[&str]]) -> Option<Found<Item>> {
        let mut found = None;
        for (file, doc) in &self.files {
            for path in candidates {
                let mut item = doc.as_item();
                let mut ok = true;
                for k in *path {
                    match item.get(k) {
                        Some(i) => item = i,
                        None => {
                            ok = false;
                            break;
                        }
                    }
                }
                if ok {
                    found = Some(Found {
                        value: item.clone(),
                        file: file.clone(),
                        key: path.join("."),
                    });
                }
            }
        }
        found
    }

    /// `root = …`, when set.
    pub fn root_found(&self) -> Option<Found<String>> {
        self.string(&[&["root"]])
    }

    /// `root = …`.
    pub fn root(&self) -> PathBuf {
        self.lookup(&[&["root"]])
            .and_then(|f| f.value.as_str().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
    }

    /// The CRI registry `config_path` (the hosts directory, or several joined by `:`).
    pub fn config_path(&self) -> Option<Found<String>> {
        self.string(&[
            &["plugins", V2_CRI, "registry", "config_path"],
            &["plugins", V3_IMAGES, "registry", "config_path"],
        ])
    }

    /// `discard_unpacked_layers`.
    pub fn discard_unpacked_layers(&self) -> Option<Found<bool>> {
        self.bool(&[
            &["plugins", V2_CRI, "containerd", "discard_unpacked_layers"],
            &["plugins", V3_IMAGES, "discard_unpacked_layers"],
        ])
    }

    /// `use_local_image_pull` (containerd ≥ 2.1).
    pub fn use_local_image_pull(&self) -> Option<Found<bool>> {
        self.bool(&[&["plugins", V3_IMAGES, "use_local_image_pull"]])
    }

    /// Whether the deprecated CRI `registry.configs."<host>".auth` gives credentials for `host`.
    pub fn has_auth_for(&self, host: &str) -> Option<Found<bool>> {
        let cands: [&[&str]; 2] = [
            &["plugins", V2_CRI, "registry", "configs", host, "auth"],
            &["plugins", V3_IMAGES, "registry", "configs", host, "auth"],
        ];
        self.lookup(&cands).map(|f| Found {
            value: f.value.is_table_like(),
            file: f.file,
            key: f.key,
        })
    }

    /// The credentials containerd's CRI sends to endpoint `host` (`host[:port]`, the key containerd
    /// looks them up by): `registry.configs."<host>".auth` with `username`/`password`, `auth`
    /// (base64 `user:password`) or `identitytoken`.
    pub fn credentials_for(&self, host: &str) -> Option<Found<Credentials>> {
        let cands: [&[&str]; 2] = [
            &["plugins", V2_CRI, "registry", "configs", host, "auth"],
            &["plugins", V3_IMAGES, "registry", "configs", host, "auth"],
        ];
        let f = self.lookup(&cands)?;
        let t = f.value.as_table_like()?;
        let get = |k: &str| {
            t.get(k)
                .and_then(Item::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let creds = if let Some(username) = get("username") {
            Credentials {
                username,
                secret: get("password").unwrap_or_default(),
            }
        } else if let Some(auth) = get("auth") {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            let (u, p) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
            Credentials {
                username: u.to_owned(),
                secret: p.to_owned(),
            }
        } else {
            Credentials {
                username: String::new(),
                secret: get("identitytoken").unwrap_or_default(),
            }
        };
        Some(Found {
            value: creds,
            file: f.file,
            key: f.key,
        })
    }

    /// Every host that `registry.configs` gives credentials for.
    pub fn hosts_with_credentials(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (_, doc) in &self.files {
            for plugin in [V2_CRI, V3_IMAGES] {
                let configs = doc
                    .get("plugins")
                    .and_then(|p| p.get(plugin))
                    .and_then(|p| p.get("registry"))
                    .and_then(|r| r.get("configs"))
                    .and_then(Item::as_table_like);
                for (host, item) in configs.into_iter().flat_map(|t| t.iter()) {
                    if item.get("auth").is_some() && !out.iter().any(|h| h == host) {
                        out.push(host.to_owned());
                    }
                }
            }
        }
        out
    }

    fn string(&self, c: &[&[&str]]) -> Option<Found<String>> {
        let f = self.lookup(c)?;
        Some(Found {
            value: f.value.as_str()?.to_owned(),
            file: f.file,
            key: f.key,
        })
    }

    fn bool(&self, c: &[&[&str]]) -> Option<Found<bool>> {
        let f = self.lookup(c)?;
        Some(Found {
            value: f.value.as_bool()?,
            file: f.file,
            key: f.key,
        })
    }
}

fn parse(path: &Path, text: &str) -> Result<DocumentMut, String> {
    text.parse::<DocumentMut>()
        .map_err(|e| format!("{} is not valid TOML: {}", path.display(), e.message()))
}

/// Expands `dir/prefix*suffix` (one `*`, in the file name); other patterns are taken literally.
fn expand(pattern: &str) -> Vec<PathBuf> {
    let p = Path::new(pattern);
    let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else {
        return vec![p.to_owned()];
    };
    let Some((prefix, suffix)) = name.split_once('*') else {
        return vec![p.to_owned()];
    };
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n.starts_with(prefix) && n.ends_with(suffix) && n.len() >= prefix.len() + suffix.len())
                .then(|| e.path())
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_2_keys() {
        let text = r#"
version = 2
root = "/data/containerd"
[plugins."io.containerd.grpc.v1.cri".containerd]
  discard_unpacked_layers = true
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
[plugins."io.containerd.grpc.v1.cri".registry.configs."harbor.local".auth]
  username = "robot$pull"
"#;
        let c = ContainerdConfig::from_text(Path::new("c.toml"), text).unwrap();
        assert_eq!(c.root(), PathBuf::from("/data/containerd"));
        assert_eq!(c.config_path().unwrap().value, "/etc/containerd/certs.d");
        assert!(c.discard_unpacked_layers().unwrap().value);
        assert!(c.has_auth_for("harbor.local").unwrap().value);
        assert!(c.has_auth_for("other").is_none());
        assert!(c.use_local_image_pull().is_none());
    }

    #[test]
    fn reads_version_3_keys_and_defaults() {
        let text = "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  discard_unpacked_layers = false\n  use_local_image_pull = true\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/cri/conf.d/hosts'\n";
        let c = ContainerdConfig::from_text(Path::new("c.toml"), text).unwrap();
        assert_eq!(c.root(), PathBuf::from(DEFAULT_ROOT));
        let cp = c.config_path().unwrap();
        assert_eq!(cp.value, "/etc/cri/conf.d/hosts");
        assert_eq!(
            cp.key,
            "plugins.io.containerd.cri.v1.images.registry.config_path"
        );
        assert!(!c.discard_unpacked_layers().unwrap().value);
        assert!(c.use_local_image_pull().unwrap().value);
    }

    #[test]
    fn imports_are_merged_later_wins() {
        let dir = tempfile::tempdir().unwrap();
        let conf_d = dir.path().join("conf.d");
        std::fs::create_dir(&conf_d).unwrap();
        std::fs::write(
            conf_d.join("cri.toml"),
            "[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/cri/conf.d/hosts\"\n",
        )
        .unwrap();
        std::fs::write(conf_d.join("ignored.txt"), "not toml [").unwrap();
        let main = dir.path().join("containerd.toml");
        std::fs::write(
            &main,
            format!(
                "version = 2\nimports = [\"{}/*.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"\"\n",
                conf_d.display()
            ),
        )
        .unwrap();
        let c = ContainerdConfig::read(&main).unwrap();
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let cp = c.config_path().unwrap();
        assert_eq!(cp.value, "/etc/cri/conf.d/hosts");
        assert_eq!(cp.file, conf_d.join("cri.toml"));
    }

    #[test]
    fn credentials_by_endpoint_host_in_every_form() {
        let text = r#"
version = 2
[plugins."io.containerd.grpc.v1.cri".registry.configs."harbor.internal".auth]
  username = "robot$pull"
  password = "s3cret"
[plugins."io.containerd.grpc.v1.cri".registry.configs."10.0.0.1:5000".auth]
  auth = "dTpw"
[plugins."io.containerd.grpc.v1.cri".registry.configs."id.example".auth]
  identitytoken = "tok"
[plugins."io.containerd.grpc.v1.cri".registry.configs."tls-only".tls]
  insecure_skip_verify = true
"#;
        let c = ContainerdConfig::from_text(Path::new("c.toml"), text).unwrap();
        let h = c.credentials_for("harbor.internal").unwrap().value;
        assert_eq!(
            (h.username.as_str(), h.secret.as_str()),
            ("robot$pull", "s3cret")
        );
        assert!(!format!("{h:?}").contains("s3cret"));
        let b = c.credentials_for("10.0.0.1:5000").unwrap().value;
        assert_eq!((b.username.as_str(), b.secret.as_str()), ("u", "p"));
        let i = c.credentials_for("id.example").unwrap().value;
        assert_eq!(
            (i.who().as_str(), i.secret.as_str()),
            ("an identity token", "tok")
        );
        assert!(c.credentials_for("tls-only").is_none());
        assert_eq!(
            c.hosts_with_credentials(),
            ["harbor.internal", "10.0.0.1:5000", "id.example"]
        );
    }

    #[test]
    fn bad_toml_is_a_clear_error() {
        let e = ContainerdConfig::from_text(Path::new("/x/c.toml"), "version = [").unwrap_err();
        assert!(e.starts_with("/x/c.toml is not valid TOML"), "{e}");
    }
}
