//! Registry host names and the allowlist of registries Shoal mirrors.
//!
//! The allowlist is the one safety property the user's outages turned on: a registry not in it
//! (a private Harbor) is never configured, advertised, served or looked up.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// The registries mirrored when nothing else is said. Private registries are never here.
pub const DEFAULT_REGISTRIES: &[&str] = &[
    "docker.io",
    "ghcr.io",
    "gcr.io",
    "registry.k8s.io",
    "quay.io",
    "mcr.microsoft.com",
    "public.ecr.aws",
];

/// Canonical name of a registry host: lowercase, with Docker Hub's aliases folded into
/// `docker.io`. A scheme (`https://`) and trailing `/` are tolerated and dropped, so a Spegel
/// style `https://docker.io` entry means the same as `docker.io`.
pub fn normalize_registry(host: &str) -> String {
    let h = host.trim().to_ascii_lowercase();
    let h = h
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    match h.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => h,
    }
}

/// Why a registry name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("registry name {0:?} is empty or not a host[:port]")]
    Invalid(String),
}

pub(crate) fn validate_host(name: &str) -> Result<(), RegistryError> {
    let bad = || RegistryError::Invalid(name.to_owned());
    if name.is_empty() || name.contains('/') || name.contains(char::is_whitespace) {
        return Err(bad());
    }
    // host, host:port, [v6]:port
    let host = if let Some(rest) = name.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or_else(bad)?;
        if inner.is_empty() || !inner.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(bad());
        }
        if let Some(port) = after.strip_prefix(':') {
            port.parse::<u16>().map_err(|_| bad())?;
        } else if !after.is_empty() {
            return Err(bad());
        }
        return Ok(());
    } else if let Some((h, port)) = name.rsplit_once(':') {
        port.parse::<u16>().map_err(|_| bad())?;
        h
    } else {
        name
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(bad());
    }
    Ok(())
}

/// The listed registries of an [`Allowlist::Only`]: normalised hosts (dereferences to their
/// set), and which of them are plain-HTTP registries (listed as `http://host[:port]`), so the
/// scheme survives into every file written from the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registries {
    hosts: BTreeSet<String>,
    plain_http: BTreeSet<String>,
}

impl std::ops::Deref for Registries {
    type Target = BTreeSet<String>;

    fn deref(&self) -> &BTreeSet<String> {
        &self.hosts
    }
}

/// Normalised HTTPS hosts (names are taken as given: use [`Allowlist::only`] to validate).
impl FromIterator<String> for Registries {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Self {
        Registries {
            hosts: iter.into_iter().collect(),
            plain_http: BTreeSet::new(),
        }
    }
}

impl<'a> IntoIterator for &'a Registries {
    type Item = &'a String;
    type IntoIter = std::collections::btree_set::Iter<'a, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.hosts.iter()
    }
}

impl Registries {
    /// Whether `host` (normalised) was listed as `http://…`.
    pub fn is_plain_http(&self, host: &str) -> bool {
        self.plain_http.contains(host)
    }
}

/// The set of registries Shoal mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowlist {
    /// Only these (normalised) registry hosts.
    Only(Registries),
    /// Every registry (`--all-registries`); an explicit, opt-in catch-all.
    All,
}

impl Default for Allowlist {
    fn default() -> Self {
        Allowlist::Only(DEFAULT_REGISTRIES.iter().map(|s| s.to_string()).collect())
    }
}

impl Allowlist {
    /// Build from registry names, validating each.
    pub fn only<I, S>(names: I) -> Result<Self, RegistryError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = Registries::default();
        for n in names {
            let raw = n.as_ref().trim();
            let plain = raw
                .get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("http://"));
            let n = normalize_registry(raw);
            validate_host(&n)?;
            if plain {
                set.plain_http.insert(n.clone());
            } else {
                set.plain_http.remove(&n);
            }
            set.hosts.insert(n);
        }
        Ok(Allowlist::Only(set))
    }

    /// Is content of `registry` mirrored?
    pub fn allows(&self, registry: &str) -> bool {
        match self {
            Allowlist::All => true,
            Allowlist::Only(set) => set.contains(&normalize_registry(registry)),
        }
    }

    /// Whether `registry` is listed as a plain-HTTP registry (`http://host[:port]`): containerd
    /// must reach it with `server = "http://…"`.
    pub fn plain_http(&self, registry: &str) -> bool {
        match self {
            Allowlist::All => false,
            Allowlist::Only(set) => set.is_plain_http(&normalize_registry(registry)),
        }
    }

    /// The listed registries (empty for [`Allowlist::All`]).
    pub fn registries(&self) -> impl Iterator<Item = &str> {
        let set = match self {
            Allowlist::All => None,
            Allowlist::Only(set) => Some(&set.hosts),
        };
        set.into_iter().flatten().map(String::as_str)
    }
}

/// Parses a comma-separated list (`docker.io,ghcr.io`), or `*` for every registry. An entry
/// written `http://host[:port]` is a plain-HTTP registry; `https://` or no scheme is HTTPS. Listed
/// twice, the last spelling wins.
impl FromStr for Allowlist {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "*" {
            return Ok(Allowlist::All);
        }
        Allowlist::only(s.split(',').map(str::trim).filter(|p| !p.is_empty()))
    }
}

impl fmt::Display for Allowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allowlist::All => f.write_str("*"),
            Allowlist::Only(set) => {
                let v: Vec<String> = set
                    .iter()
                    .map(|h| {
                        if set.is_plain_http(h) {
                            format!("http://{h}")
                        } else {
                            h.clone()
                        }
                    })
                    .collect();
                f.write_str(&v.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_excludes_private_registries() {
        let a = Allowlist::default();
        assert!(a.allows("docker.io"));
        assert!(a.allows("index.docker.io"));
        assert!(!a.allows("192.168.1.105"));
        assert!(!a.allows("harbor.harbor.svc.cluster.local"));
    }

    #[test]
    fn parses_spegel_style_urls() {
        let a: Allowlist = "https://docker.io, ghcr.io,localhost:5000".parse().unwrap();
        assert!(a.allows("docker.io") && a.allows("ghcr.io") && a.allows("localhost:5000"));
        assert_eq!(a.to_string(), "docker.io,ghcr.io,localhost:5000");
    }

    #[test]
    fn keeps_the_http_scheme_of_plain_registries() {
        let a: Allowlist = "docker.io,http://192.168.1.105,HTTP://harbor.local:8080"
            .parse()
            .unwrap();
        assert!(a.allows("192.168.1.105") && a.allows("http://192.168.1.105"));
        assert!(a.plain_http("192.168.1.105") && a.plain_http("harbor.local:8080"));
        assert!(!a.plain_http("docker.io") && !Allowlist::All.plain_http("x"));
        assert_eq!(
            a.to_string(),
            "192.168.1.105,docker.io,harbor.local:8080"
                .split(',')
                .map(|h| if h == "docker.io" {
                    h.to_owned()
                } else {
                    format!("http://{h}")
                })
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(a.to_string().parse::<Allowlist>().unwrap(), a);
        let b: Allowlist = "http://h.example,https://h.example".parse().unwrap();
        assert!(!b.plain_http("h.example"));
        assert!("http://".parse::<Allowlist>().is_err());
    }

    #[test]
    fn refuses_bad_names() {
        assert!("docker.io/library".parse::<Allowlist>().is_err());
        assert!("host:99999".parse::<Allowlist>().is_err());
        assert!("-bad.example".parse::<Allowlist>().is_err());
        assert!("[::1]:5000".parse::<Allowlist>().is_ok());
    }
}
