//! The checks that read files only: hosts.toml layout, containerd's config, its ingest directory.

use std::path::{Path, PathBuf};

use shoal_oci::{Allowlist, normalize_registry};

use super::config::ContainerdConfig;
use super::hosts::HostsFile;
use super::layout::Layout;
use super::probe::Version;
use super::{Check, Inputs, Level};

type Files = Result<Vec<HostsFile>, String>;

fn configure_cmd(inputs: &Inputs) -> String {
    format!(
        "shoal configure --hosts-dir {} --mirror http://<this node's IP>:5000 --registries <list>",
        inputs.hosts_dir.display()
    )
}

/// Check 1: A `_default/hosts.toml` sends every registry, private ones included, through its hosts.
pub fn default_catch_all(inputs: &Inputs, files: &Files) -> Check {
    let mut c = Check::new("default-catch-all", "no catch-all _default/hosts.toml");
    let files = match files {
        Ok(f) => f,
        Err(e) => {
            c.raise(Level::Skip, e.clone());
            return c.fix("pass --hosts-dir (containerd's registry config_path)");
        }
    };
    let mut foreign_fix = None;
    match files.iter().find(|f| f.registry == "_default") {
        None => c.note(format!(
            "{} has no _default directory",
            inputs.hosts_dir.display()
        )),
        Some(f) => {
            let ours = f.has_shoal()
                || f.path
                    .parent()
                    .is_some_and(|d| d.join(shoal_hosts::CREATED_MARKER).exists());
            if !ours {
                let tool = f
                    .hosts
                    .iter()
                    .find_map(|(u, _)| super::foreign::foreign_tool(u));
                c.note(format!(
                    "written by {}, not Shoal (no shoal-managed entry or marker)",
                    tool.unwrap_or("another tool")
                ));
                foreign_fix = Some(super::foreign::foreign_default_fix(tool, &inputs.hosts_dir));
            }
            let level = if matches!(inputs.allowlist, Allowlist::All) {
                Level::Warn
            } else {
                Level::Fail
            };
            c.raise(level, format!("{} exists", f.path.display()));
            let hosts: Vec<&str> = f.hosts.iter().map(|(u, _)| u.as_str()).collect();
            c.note(format!(
                "it sends every registry without its own directory (private registries too) to: {}",
                if hosts.is_empty() {
                    "(no [host] tables)".into()
                } else {
                    hosts.join(", ")
                }
            ));
            if level == Level::Warn {
                c.note("Shoal runs with --all-registries, which asks for this catch-all");
            }
        }
    }
    if let Some(fix) = foreign_fix {
        return c.fix(fix);
    }
    c.fix(format!(
        "delete {0}/_default (or run `shoal configure --uninstall --hosts-dir {0}`) and mirror an \
         explicit list: {1}; private registries (Harbor) must not be behind a catch-all",
        inputs.hosts_dir.display(),
        configure_cmd(inputs)
    ))
}

/// Check 2: An allowlisted registry whose hosts.toml does not ask Shoal first never uses peers.
pub fn allowlisted_without_shoal(inputs: &Inputs, files: &Files) -> Check {
    let mut c = Check::new(
        "allowlisted-without-shoal",
        "every allowlisted registry has a hosts.toml pointing at Shoal",
    );
    let Ok(files) = files else {
        c.raise(Level::Skip, "hosts directory unreadable (see check 1)");
        return c;
    };
    let Allowlist::Only(list) = &inputs.allowlist else {
        c.note("every registry is mirrored (--all-registries): the _default check covers it");
        return c;
    };
    let mut missing = 0;
    for reg in list {
        match files
            .iter()
            .find(|f| normalize_registry(&f.registry) == *reg)
        {
            Some(f) if f.has_shoal() => {
                c.note(format!("{reg}: {} asks Shoal first", f.path.display()))
            }
            Some(f) => {
                missing += 1;
                let problem = f
                    .problem
                    .clone()
                    .unwrap_or_else(|| "no Shoal [host] in it".into());
                c.raise(
                    Level::Warn,
                    format!("{reg}: {}: {problem}", f.path.display()),
                );
            }
            None => {
                missing += 1;
                c.raise(
                    Level::Warn,
                    format!(
                        "{reg}: no {}/{reg}/hosts.toml, containerd pulls it directly",
                        inputs.hosts_dir.display()
                    ),
                );
            }
        }
    }
    for reg in list.iter().filter(|r| list.is_plain_http(r)) {
        let file = files
            .iter()
            .find(|f| normalize_registry(&f.registry) == *reg);
        match file.and_then(|f| f.server.as_deref().map(|s| (f, s))) {
            None => c.raise(
                Level::Fail,
                format!(
                    "{reg}: listed as http://{reg}, but without a hosts.toml `server` containerd \
                     reaches it at https://{reg}, which a plain-HTTP registry refuses"
                ),
            ),
            Some((f, server)) if server.starts_with("https://") => c.raise(
                Level::Fail,
                format!(
                    "{reg}: listed as http://{reg}, but {} says server = \"{server}\"",
                    f.path.display()
                ),
            ),
            Some(_) => {}
        }
    }
    if missing == list.len() && !list.is_empty() {
        c.raise(
            Level::Fail,
            "no allowlisted registry goes through Shoal: it is not configured on this node",
        );
    }
    c.fix(format!(
        "run `{}` (the DaemonSet's init container does this); registries listed in \
         SHOAL_REGISTRIES must match; a plain-HTTP registry is listed as http://<host>, and \
         configure writes server = \"http://<host>\" for it",
        configure_cmd(inputs)
    ))
}

/// Check 3: Shoal as a mirror of a registry it does not serve: every pull pays a round trip to a 404.
pub fn shoal_for_unlisted(inputs: &Inputs, files: &Files) -> Check {
    let mut c = Check::new(
        "shoal-for-unlisted-registry",
        "Shoal is a mirror only for allowlisted registries",
    );
    let Ok(files) = files else {
        c.raise(Level::Skip, "hosts directory unreadable (see check 1)");
        return c;
    };
    for f in files
        .iter()
        .filter(|f| f.registry != "_default" && f.has_shoal())
    {
        let reg = normalize_registry(&f.registry);
        if !inputs.allowlist.allows(&reg) {
            c.raise(
                Level::Warn,
                format!(
                    "{}: Shoal is listed, but {reg} is not in the allowlist ({}): the daemon refuses it",
                    f.path.display(),
                    inputs.allowlist
                ),
            );
        }
    }
    if c.status == Level::Pass {
        c.note("no hosts.toml names Shoal for a registry outside the allowlist");
    }
    c.fix(format!(
        "re-run configure with the daemon's registry list (`shoal configure --uninstall --hosts-dir {0}` \
         then `{1}`), or add the registry to SHOAL_REGISTRIES if it should be mirrored",
        inputs.hosts_dir.display(),
        configure_cmd(inputs)
    ))
}

/// Check 5: containerd reads hosts.toml only from its registry `config_path`.
pub fn config_path(
    inputs: &Inputs,
    cfg: &Result<ContainerdConfig, String>,
    version: &Version,
) -> Check {
    let mut c = Check::new(
        "config-path",
        "containerd's registry config_path is the hosts dir",
    );
    let cfg = match cfg {
        Ok(cfg) => cfg,
        Err(e) => {
            c.raise(Level::Warn, e.clone());
            return c.fix("pass --containerd-config (Talos: /etc/cri/containerd.toml; else /etc/containerd/config.toml)");
        }
    };
    for p in &cfg.problems {
        c.note(p.clone());
    }
    let want = canonical(&inputs.hosts_dir);
    match cfg.config_path() {
        Some(f) if !f.value.is_empty() => {
            let dirs: Vec<&str> = f.value.split(':').filter(|d| !d.is_empty()).collect();
            if dirs.iter().any(|d| {
                canonical(&super::layout::on_host(&inputs.host_root, Path::new(d))) == want
            }) {
                c.note(format!("{} = {:?} in {}", f.key, f.value, f.file.display()));
            } else {
                c.raise(
                    Level::Fail,
                    format!(
                        "{} = {:?} in {}, but Shoal's hosts dir is {}: containerd never reads Shoal's hosts.toml",
                        f.key, f.value, f.file.display(), inputs.hosts_dir.display()
                    ),
                );
            }
        }
        found => {
            let level = if version.major_minor().is_some_and(|v| v >= (2, 0)) {
                c.note("containerd 2.x may fall back to a built-in default config_path");
                Level::Warn
            } else {
                Level::Fail
            };
            let place = found.map(|f| format!("{} is empty in {}", f.key, f.file.display()));
            c.raise(
                level,
                place.unwrap_or_else(|| {
                    format!(
                        "no registry config_path in {} (or its imports)",
                        inputs.containerd_config.display()
                    )
                }),
            );
        }
    }
    c.fix(format!(
        "set config_path = \"{}\" under [plugins.\"io.containerd.grpc.v1.cri\".registry] (containerd 1.x) \
         or [plugins.\"io.containerd.cri.v1.images\".registry] (2.x){}, then restart containerd; or point \
         --hosts-dir at the directory it names",
        inputs.hosts_dir.display(),
        match inputs.layout {
            Layout::Talos => " (Talos writes it in /etc/cri/conf.d/cri.toml)",
            Layout::K3s | Layout::Rke2 =>
                " (k3s and RKE2 generate config.toml at every start: put it in config.toml.tmpl \
                 next to it; they also regenerate certs.d from /etc/rancher/<k3s|rke2>/registries.yaml, \
                 so keep Shoal's registries out of its mirrors or list Shoal there first)",
            Layout::Containerd => "",
        }
    ))
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())
}

/// Check 6: Discarded layers cannot be served: peers asking this node get 404s.
pub fn discard_unpacked(inputs: &Inputs, cfg: &Result<ContainerdConfig, String>) -> Check {
    let mut c = Check::new(
        "discard-unpacked-layers",
        "containerd keeps layers after unpacking",
    );
    let Ok(cfg) = cfg else {
        c.raise(Level::Skip, "containerd config unreadable (see check 5)");
        return c;
    };
    match cfg.discard_unpacked_layers() {
        Some(f) if f.value => c.raise(
            Level::Fail,
            format!(
                "{} = true in {}: layers are deleted after unpacking, so this node never serves them and peers get 404s",
                f.key,
                f.file.display()
            ),
        ),
        Some(f) => c.note(format!("{} = false in {}", f.key, f.file.display())),
        None => c.note(format!(
            "discard_unpacked_layers not set in {} (default false)",
            inputs.containerd_config.display()
        )),
    }
    c.fix(format!(
        "set discard_unpacked_layers = false in {}{} and restart containerd; layers pulled before \
         the change stay gone until pulled again",
        inputs.containerd_config.display(),
        if inputs.talos {
            " (Talos: a machine config patch of /etc/cri/conf.d/)"
        } else {
            ""
        }
    ))
}

/// Check 7: containerd ≥ 2.1 pulls for the CRI through the transfer service unless told not to,
/// and in that mode a `config_path` listing several directories is taken as one path, so no
/// hosts.toml is read (containerd issue 12415). One directory works in both modes: a CRI pull
/// through Shoal with the registry stopped succeeds on containerd 2.2.9's default
/// (`scripts/test-containerd`).
pub fn transfer_service(cfg: &Result<ContainerdConfig, String>, version: &Version) -> Check {
    let mut c = Check::new(
        "transfer-service",
        "containerd's CRI pulls honour hosts.toml mirrors",
    );
    let (v, mm) = match version {
        Version::Known { version, .. } => (version.clone(), version_major_minor(version)),
        Version::Unknown(why) => {
            c.raise(Level::Skip, format!("containerd version unknown: {why}"));
            return c.fix("pass --containerd-socket so doctor can ask containerd its version");
        }
    };
    let Some(mm) = mm else {
        c.raise(
            Level::Warn,
            format!("cannot parse containerd version {v:?}"),
        );
        return c;
    };
    if mm < (2, 1) {
        c.note(format!(
            "containerd {v}: CRI pulls run in-process and read config_path (no transfer service)"
        ));
        return c;
    }
    let cfg = cfg.as_ref().ok();
    if let Some(f) = cfg
        .and_then(ContainerdConfig::use_local_image_pull)
        .filter(|f| f.value)
    {
        c.note(format!(
            "containerd {v}, {} = true in {}: CRI pulls run in-process and read config_path",
            f.key,
            f.file.display()
        ));
        return c;
    }
    match cfg.and_then(ContainerdConfig::config_path) {
        Some(cp) if cp.value.contains(':') => {
            c.raise(
                Level::Warn,
                format!(
                    "containerd {v} hands CRI pulls to its transfer service (use_local_image_pull is \
                     not true), and {} = {:?} in {} lists several directories: in that mode it is \
                     taken as one path and no hosts.toml is read, so every pull goes upstream \
                     (containerd issue 12415)",
                    cp.key,
                    cp.value,
                    cp.file.display()
                ),
            );
            c.fix(
                "set use_local_image_pull = true under [plugins.\"io.containerd.cri.v1.images\"], or make \
                 config_path a single directory, and restart containerd; then confirm with `shoal \
                 explain <image>` after a pull that blobs come from peers",
            )
        }
        Some(cp) => {
            c.note(format!(
                "containerd {v} hands CRI pulls to its transfer service, which reads the single \
                 directory {} = {:?}",
                cp.key, cp.value
            ));
            c
        }
        None => {
            c.note(format!(
                "containerd {v} hands CRI pulls to its transfer service; no config_path found in \
                 the config read (see the config-path check)"
            ));
            c
        }
    }
}

/// `1.6.20~ds1` → (1, 6); `v2.1.4` → (2, 1).
pub fn version_major_minor(v: &str) -> Option<(u32, u32)> {
    let v = v.trim().trim_start_matches('v');
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn inputs(hosts: &Path) -> Inputs {
        Inputs {
            hosts_dir: hosts.to_owned(),
            containerd_config: PathBuf::from("/c.toml"),
            containerd_socket: PathBuf::from("/none.sock"),
            admin_socket: PathBuf::from("/none.sock"),
            allowlist: "docker.io,ghcr.io".parse().unwrap(),
            mirrors: vec![],
            stale_after: Duration::from_secs(300),
            timeout: Duration::from_secs(1),
            slow_after: Duration::from_millis(500),
            talos: false,
            containerd_root: None,
            host_root: PathBuf::from("/"),
            layout: super::super::layout::Layout::Containerd,
        }
    }

    fn cfg(text: &str) -> Result<ContainerdConfig, String> {
        ContainerdConfig::from_text(Path::new("/c.toml"), text)
    }

    fn known(v: &str) -> Version {
        Version::Known {
            version: v.into(),
            revision: String::new(),
        }
    }

    #[test]
    fn transfer_service_warns_only_for_several_directories_without_local_pull() {
        let plain = cfg("version = 3\n");
        assert_eq!(
            transfer_service(&plain, &known("1.7.24")).status,
            Level::Pass
        );
        assert_eq!(
            transfer_service(&plain, &known("v2.0.5")).status,
            Level::Pass
        );
        let images = "version = 3\n[plugins.'io.containerd.cri.v1.images']\n";
        let one_dir = cfg(&format!(
            "{images}[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/containerd/certs.d'\n"
        ));
        let c = transfer_service(&one_dir, &known("2.2.9"));
        assert_eq!(c.status, Level::Pass, "{c:?}");
        assert!(c.evidence.iter().any(|e| e.contains("single directory")));
        let two_dirs = cfg(&format!(
            "{images}[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n"
        ));
        let c = transfer_service(&two_dirs, &known("2.1.4"));
        assert_eq!(c.status, Level::Warn);
        assert!(c.fix.contains("use_local_image_pull = true"), "{}", c.fix);
        assert!(c.evidence.iter().any(|e| e.contains("12415")));
        let local = cfg(&format!(
            "{images}use_local_image_pull = true\n[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/a:/b'\n"
        ));
        assert_eq!(
            transfer_service(&local, &known("2.2.0")).status,
            Level::Pass
        );
        let unknown = transfer_service(&plain, &Version::Unknown("down".into()));
        assert_eq!(unknown.status, Level::Skip);
        assert_eq!(version_major_minor("1.6.20~ds1"), Some((1, 6)));
    }

    #[test]
    fn config_path_must_name_the_hosts_dir() {
        let dir = tempfile::tempdir().unwrap();
        let i = inputs(dir.path());
        let v = known("1.6.20");
        let good = cfg(&format!(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/x:{}\"\n",
            dir.path().display()
        ));
        assert_eq!(config_path(&i, &good, &v).status, Level::Pass);
        let other = cfg(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/containerd/certs.d\"\n",
        );
        let c = config_path(&i, &other, &v);
        assert_eq!(c.status, Level::Fail);
        assert!(c.fix.contains("config_path"));
        assert_eq!(
            config_path(&i, &cfg("version = 2\n"), &v).status,
            Level::Fail
        );
        assert_eq!(
            config_path(&i, &cfg("version = 3\n"), &known("2.0.1")).status,
            Level::Warn
        );
    }

    #[test]
    fn discarded_layers_fail() {
        let i = inputs(Path::new("/h"));
        let on = cfg(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndiscard_unpacked_layers = true\n",
        );
        let c = discard_unpacked(&i, &on);
        assert_eq!(c.status, Level::Fail);
        assert!(c.fix.contains("discard_unpacked_layers = false"));
        assert_eq!(
            discard_unpacked(&i, &cfg("version = 2\n")).status,
            Level::Pass
        );
    }

    #[test]
    fn hosts_layout_checks() {
        let dir = tempfile::tempdir().unwrap();
        let write = |reg: &str, body: &str| {
            std::fs::create_dir_all(dir.path().join(reg)).unwrap();
            std::fs::write(dir.path().join(reg).join("hosts.toml"), body).unwrap();
        };
        let shoal = "# shoal-managed: x\n[host.\"http://127.0.0.1:5000\"]\n";
        write("docker.io", shoal);
        write("ghcr.io", shoal);
        let i = inputs(dir.path());
        let files = || super::super::hosts::scan(dir.path(), &[]);
        assert_eq!(default_catch_all(&i, &files()).status, Level::Pass);
        assert_eq!(allowlisted_without_shoal(&i, &files()).status, Level::Pass);
        assert_eq!(shoal_for_unlisted(&i, &files()).status, Level::Pass);
        write("_default", shoal);
        write("harbor.corp", shoal);
        std::fs::remove_file(dir.path().join("ghcr.io/hosts.toml")).unwrap();
        assert_eq!(default_catch_all(&i, &files()).status, Level::Fail);
        let c = allowlisted_without_shoal(&i, &files());
        assert_eq!(c.status, Level::Warn);
        assert!(
            c.evidence.iter().any(|e| e.starts_with("ghcr.io: no ")),
            "{:?}",
            c.evidence
        );
        let c = shoal_for_unlisted(&i, &files());
        assert_eq!(c.status, Level::Warn);
        assert!(c.evidence[0].contains("harbor.corp"));
    }
}
