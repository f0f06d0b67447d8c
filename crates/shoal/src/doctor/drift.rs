//! Check `daemon-allowlist`: hosts.toml against the allowlist of the daemon that actually runs
//! (from its admin API), not only against doctor's own `--registries`. The two drift apart when
//! `SHOAL_REGISTRIES` changes without `shoal configure` running again (or the reverse): then
//! containerd asks Shoal for a registry the daemon refuses (a wasted round trip on every pull),
//! or the daemon mirrors a registry containerd never asks it for (no peers).

use shoal_oci::{Allowlist, normalize_registry};

use super::hosts::HostsFile;
use super::{Check, Inputs, Level};

type Files = Result<Vec<HostsFile>, String>;

/// The daemon's allowlist as its admin API reports it (`*` for every registry).
pub fn parse_daemon_allowlist(list: &[String]) -> Allowlist {
    if list.iter().any(|r| r == "*") {
        return Allowlist::All;
    }
    Allowlist::only(list).unwrap_or_else(|_| Allowlist::Only(Default::default()))
}

/// The check; `daemon` is `None` when the daemon did not answer.
pub fn daemon_allowlist(inputs: &Inputs, files: &Files, daemon: Option<&[String]>) -> Check {
    let mut c = Check::new(
        "daemon-allowlist",
        "hosts.toml matches the allowlist of the running daemon",
    );
    let Some(raw) = daemon else {
        c.raise(
            Level::Skip,
            "the daemon did not answer (see peers): hosts.toml compared with --registries only \
             (allowlisted-without-shoal, shoal-for-unlisted-registry)",
        );
        return c.fix("start the daemon, or pass --admin-socket, to compare with its allowlist");
    };
    let Ok(files) = files else {
        c.raise(
            Level::Skip,
            "hosts directory unreadable (see default-catch-all)",
        );
        return c;
    };
    let daemon = parse_daemon_allowlist(raw);
    c.note(format!("the daemon mirrors: {daemon}"));
    if daemon != inputs.allowlist {
        c.raise(
            Level::Warn,
            format!(
                "doctor's --registries ({}) differ from the daemon's; the checks above used doctor's",
                inputs.allowlist
            ),
        );
    }
    for f in files
        .iter()
        .filter(|f| f.registry != "_default" && f.has_shoal())
    {
        let reg = normalize_registry(&f.registry);
        if !daemon.allows(&reg) {
            c.raise(
                Level::Warn,
                format!(
                    "{reg}: {} asks Shoal first, but the running daemon does not mirror it: every \
                     pull of it pays a refused round trip",
                    f.path.display()
                ),
            );
        }
    }
    for reg in daemon.registries() {
        let asks = files
            .iter()
            .any(|f| normalize_registry(&f.registry) == reg && f.has_shoal());
        if !asks {
            c.raise(
                Level::Warn,
                format!(
                    "{reg}: the daemon mirrors it, but no hosts.toml sends containerd's pulls of it \
                     to Shoal: no peers for it"
                ),
            );
        }
    }
    c.fix(format!(
        "make them agree: run `shoal configure --hosts-dir {} --registries <the daemon's list>` \
         (the DaemonSet's init container does this with the same SHOAL_REGISTRIES), or restart \
         the daemon with the list hosts.toml was written for",
        inputs.hosts_dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_lists_parse() {
        assert_eq!(parse_daemon_allowlist(&["*".into()]), Allowlist::All);
        let a = parse_daemon_allowlist(&["docker.io".into(), "ghcr.io".into()]);
        assert!(a.allows("docker.io") && !a.allows("quay.io"));
    }
}
