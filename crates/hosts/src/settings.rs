//! What `shoal configure` is asked to write: the mirror endpoints (validated URLs), the registry
//! allowlist and the per-host options. Validation happens here, before any file is read, so a
//! typo in a flag can never leave a hosts directory half-configured.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use shoal_oci::Allowlist;

use crate::HostsError;

/// A mirror endpoint as containerd's `[host."…"]` key: `http(s)://host[:port]`, nothing else.
///
/// Shoal's mirror serves the distribution API at `/v2`, so a path, query, fragment or user info
/// in the URL is always a mistake and is refused instead of being silently dropped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MirrorUrl(String);

impl MirrorUrl {
    /// The canonical `scheme://host[:port]` form written to hosts.toml.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MirrorUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MirrorUrl {
    type Err = HostsError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| HostsError::InvalidMirror {
            url: raw.to_owned(),
            reason: reason.to_owned(),
        };
        let s = raw.trim();
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if !s.contains("://") {
            return Err(bad(&format!(
                "scheme missing: write http://{s} or https://{s}"
            )));
        }
        let u = url::Url::parse(s).map_err(|e| bad(&format!("not a URL ({e})")))?;
        if u.scheme() != "http" && u.scheme() != "https" {
            return Err(bad("scheme must be http or https"));
        }
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?;
        if !u.username().is_empty() || u.password().is_some() {
            return Err(bad(
                "user info is not allowed (credentials never go into hosts.toml URLs)",
            ));
        }
        if u.query().is_some() {
            return Err(bad("a query string is not allowed"));
        }
        if u.fragment().is_some() {
            return Err(bad("a fragment is not allowed"));
        }
        if u.path() != "/" && !u.path().is_empty() {
            return Err(bad(
                "a path is not allowed (the mirror serves /v2 at its root)",
            ));
        }
        // `Url` drops a default port (`:80` for http); keep what the user meant explicitly.
        let port = match u.port() {
            Some(p) => format!(":{p}"),
            None => String::new(),
        };
        Ok(MirrorUrl(format!("{}://{host}{port}", u.scheme())))
    }
}

/// One Shoal mirror `[host]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorHost {
    pub url: MirrorUrl,
    /// Extra request headers containerd sends to this mirror (`header = { … }`), e.g. the
    /// authentication header the mirror's access control will require. Empty: no `header` key.
    pub headers: BTreeMap<String, String>,
}

impl MirrorHost {
    pub fn new(url: MirrorUrl) -> Self {
        MirrorHost {
            url,
            headers: BTreeMap::new(),
        }
    }
}

/// Everything `configure` needs to plan the hosts directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Shoal's mirrors, tried by containerd in this order before any existing entry.
    pub mirrors: Vec<MirrorHost>,
    /// Registries to configure; [`Allowlist::All`] also writes the catch-all `_default`.
    pub allowlist: Allowlist,
    /// Whether the mirror may resolve tags (`capabilities = ["pull", "resolve"]`) or only serve
    /// content by digest (`["pull"]`).
    pub resolve_tags: bool,
    /// containerd's per-host `dial_timeout` (honoured from containerd 2.1; 1.6 and 1.7 ignore
    /// unknown keys, checked against 1.6.20). `None`: not written.
    pub dial_timeout: Option<Duration>,
}

impl Settings {
    /// Checks the settings as a whole (the URLs are validated when parsed).
    pub fn validate(&self) -> Result<(), HostsError> {
        if self.mirrors.is_empty() {
            return Err(HostsError::NoMirrors);
        }
        for (i, m) in self.mirrors.iter().enumerate() {
            if self.mirrors[..i].iter().any(|o| o.url == m.url) {
                return Err(HostsError::InvalidMirror {
                    url: m.url.to_string(),
                    reason: "listed twice".to_owned(),
                });
            }
            for (name, value) in &m.headers {
                let ok_name = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !ok_name || value.contains(['\r', '\n']) {
                    return Err(HostsError::InvalidMirror {
                        url: m.url.to_string(),
                        reason: format!("invalid header {name:?}"),
                    });
                }
            }
        }
        if matches!(self.dial_timeout, Some(d) if d.is_zero()) {
            return Err(HostsError::InvalidDialTimeout);
        }
        Ok(())
    }

    /// The `capabilities` array written for every Shoal host.
    pub(crate) fn capabilities(&self) -> &'static [&'static str] {
        if self.resolve_tags {
            &["pull", "resolve"]
        } else {
            &["pull"]
        }
    }
}

/// containerd's fallback `server` for a registry: what it would use with no hosts.toml at all,
/// or `http://<registry>` for a registry allowlisted as plain HTTP (`http://host[:port]`).
pub fn upstream_server(registry: &str, plain_http: bool) -> String {
    if plain_http {
        format!("http://{registry}")
    } else if registry == "docker.io" {
        "https://registry-1.docker.io".to_owned()
    } else {
        format!("https://{registry}")
    }
}

/// Go's `time.ParseDuration` syntax for a whole number of milliseconds or seconds.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Result<MirrorUrl, HostsError> {
        s.parse()
    }

    #[test]
    fn accepts_and_canonicalises() {
        assert_eq!(
            url("http://127.0.0.1:5000").unwrap().as_str(),
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            url(" HTTP://Node-1.example:29999/ ").unwrap().as_str(),
            "http://node-1.example:29999"
        );
        assert_eq!(
            url("https://[::1]:5000").unwrap().as_str(),
            "https://[::1]:5000"
        );
        assert_eq!(url("http://10.0.0.1").unwrap().as_str(), "http://10.0.0.1");
    }

    #[test]
    fn refuses_bad_urls_with_reason() {
        for (s, why) in [
            ("", "empty"),
            ("127.0.0.1:5000", "scheme"),
            ("ftp://x:1", "scheme"),
            ("http://", "URL"),
            ("http://u:p@x:1", "user info"),
            ("http://x:1/p2p", "path"),
            ("http://x:1/?a=b", "query"),
            ("http://x:1/#f", "fragment"),
            ("http://x:99999", "URL"),
        ] {
            let e = url(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s:?}: {e}");
            assert!(e.contains("mirror URL"), "{s:?}: {e}");
        }
    }

    #[test]
    fn settings_validation() {
        let m = MirrorHost::new(url("http://127.0.0.1:5000").unwrap());
        let mut s = Settings {
            mirrors: vec![],
            allowlist: Allowlist::default(),
            resolve_tags: true,
            dial_timeout: None,
        };
        assert!(matches!(s.validate(), Err(HostsError::NoMirrors)));
        s.mirrors = vec![m.clone(), m.clone()];
        assert!(s.validate().unwrap_err().to_string().contains("twice"));
        s.mirrors = vec![m.clone()];
        s.mirrors[0].headers.insert("Bad Name".into(), "v".into());
        assert!(s.validate().unwrap_err().to_string().contains("header"));
        s.mirrors = vec![m];
        s.dial_timeout = Some(Duration::ZERO);
        assert!(s.validate().is_err());
        s.dial_timeout = Some(Duration::from_millis(200));
        s.validate().unwrap();
    }

    #[test]
    fn durations_in_go_syntax() {
        assert_eq!(go_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(go_duration(Duration::from_secs(2)), "2s");
    }

    #[test]
    fn upstream_mapping() {
        assert_eq!(
            upstream_server("docker.io", false),
            "https://registry-1.docker.io"
        );
        assert_eq!(upstream_server("quay.io", false), "https://quay.io");
        assert_eq!(
            upstream_server("10.0.0.1:5000", false),
            "https://10.0.0.1:5000"
        );
        assert_eq!(
            upstream_server("192.168.1.105", true),
            "http://192.168.1.105"
        );
    }
}
