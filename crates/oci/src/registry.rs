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
    let h = host
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_ascii_lowercase();
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

/// The set of registries Shoal mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowlist {
    /// Only these (normalised) registry hosts.
    Only(BTreeSet<String>),
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
        let mut set = BTreeSet::new();
        for n in names {
            let n = normalize_registry(n.as_ref());
            validate_host(&n)?;
            set.insert(n);
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

    /// The listed registries (empty for [`Allowlist::All`]).
    pub fn registries(&self) -> impl Iterator<Item = &str> {
        let set = match self {
            Allowlist::All => None,
            Allowlist::Only(set) => Some(set),
        };
        set.into_iter().flatten().map(String::as_str)
    }
}

/// Parses a comma-separated list (`docker.io,ghcr.io`), or `*` for every registry.
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
                let v: Vec<&str> = set.iter().map(String::as_str).collect();
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
    fn refuses_bad_names() {
        assert!("docker.io/library".parse::<Allowlist>().is_err());
        assert!("host:99999".parse::<Allowlist>().is_err());
        assert!("-bad.example".parse::<Allowlist>().is_err());
        assert!("[::1]:5000".parse::<Allowlist>().is_ok());
    }
}
