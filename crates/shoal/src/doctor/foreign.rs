//! Check `foreign-mirrors`: `[host]` entries another P2P mirror wrote into a per-registry
//! hosts.toml. After a migration to Shoal they stay behind (Shoal's configure keeps tables it
//! does not own): containerd asks that dead mirror first on every pull and waits out its
//! `dial_timeout`, or hangs on it when nothing refuses. While the other mirror still runs, two
//! P2P mirrors in series each ask their peers. Recognised by the ports those tools use.

use std::time::Instant;

use super::hosts::HostsFile;
use super::probe::{MAX_PROBES, client, error_chain, v2};
use super::{Check, Inputs, Level};

type Files = Result<Vec<HostsFile>, String>;

/// The tool whose mirror listens on `url`'s port, if it is a known one.
pub fn foreign_tool(url: &str) -> Option<&'static str> {
    let port = url::Url::parse(url).ok()?.port()?;
    match port {
        // Spegel's chart: hostPort 30020, nodePort 30021; 29999 in the users' own setup.
        30020 | 30021 | 29999 => Some("Spegel"),
        65001 => Some("Dragonfly (dfdaemon)"),
        _ => None,
    }
}

/// The fix for a `_default/hosts.toml` Shoal did not write.
pub fn foreign_default_fix(tool: Option<&str>, hosts_dir: &std::path::Path) -> String {
    let owner = tool.unwrap_or("the tool that wrote it");
    format!(
        "this _default was written by {owner}, not Shoal: `shoal configure --uninstall` removes only \
         what Shoal wrote, and {owner} rewrites it at every start. Change it at its owner: Spegel \
         writes _default when spegel.mirroredRegistries is empty, so list the public registries \
         there (never the private Harbor) or uninstall it (`helm uninstall spegel`); then delete \
         {}/_default if it remains",
        hosts_dir.display()
    )
}

/// The check.
pub async fn foreign_mirrors(inputs: &Inputs, files: &Files) -> Check {
    let mut c = Check::new(
        "foreign-mirrors",
        "no stale [host] entries of another P2P mirror in hosts.toml",
    );
    let Ok(files) = files else {
        c.raise(
            Level::Skip,
            "hosts directory unreadable (see default-catch-all)",
        );
        return c;
    };
    let mut probed = 0;
    for f in files.iter().filter(|f| f.registry != "_default") {
        for (url, shoal) in &f.hosts {
            let Some(tool) = foreign_tool(url).filter(|_| !shoal) else {
                continue;
            };
            probed += 1;
            if probed > MAX_PROBES {
                break;
            }
            let at = format!("{}: [host.\"{url}\"] ({tool}'s port)", f.path.display());
            let http = match client(inputs.timeout, &f.tls_for(url)) {
                Ok(h) => h,
                Err(e) => {
                    c.raise(Level::Warn, format!("{at}: {e}"));
                    continue;
                }
            };
            let started = Instant::now();
            match http.get(v2(url)).send().await {
                Ok(r) => c.raise(
                    Level::Warn,
                    format!(
                        "{at} answers {} in {}: two P2P mirrors in series",
                        r.status(),
                        crate::admin::render::age(started.elapsed())
                    ),
                ),
                Err(e) if e.is_timeout() => c.raise(
                    Level::Fail,
                    format!(
                        "{at} does not answer within {:?}: stale, and containerd waits on it on every pull of {}",
                        inputs.timeout, f.registry
                    ),
                ),
                Err(e) => c.raise(
                    Level::Warn,
                    format!(
                        "{at} is stale ({}): containerd tries it first on every pull of {}",
                        error_chain(&e),
                        f.registry
                    ),
                ),
            }
        }
    }
    if probed == 0 {
        c.note("no [host] entry on a port of another known P2P mirror (Spegel, Dragonfly)");
    }
    c.fix(
        "these [host] tables belong to another P2P mirror (Spegel writes them from \
         spegel.mirroredRegistries at start; `shoal configure` keeps tables it does not own). If \
         that tool is gone, delete the tables; if it still runs, keep one P2P mirror: uninstall \
         it (`helm uninstall spegel`) or drop the registry from its list",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_spegel_and_dragonfly_ports() {
        assert_eq!(foreign_tool("http://192.168.1.100:29999"), Some("Spegel"));
        assert_eq!(foreign_tool("http://10.0.0.1:30020"), Some("Spegel"));
        assert_eq!(
            foreign_tool("http://127.0.0.1:65001"),
            Some("Dragonfly (dfdaemon)")
        );
        assert_eq!(foreign_tool("http://127.0.0.1:5000"), None);
        assert_eq!(foreign_tool("https://registry-1.docker.io"), None);
    }
}
