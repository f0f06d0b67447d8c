//! Check `stale-ingests`: interrupted downloads containerd keeps in `<root>/…/ingest/`, in the
//! root containerd really uses (its flag, its config, or the layout's default: k3s and RKE2 pass
//! it on the command line). A root that cannot be found is SKIP with how to pass it, never a
//! PASS over the wrong directory.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::config::ContainerdConfig;
use super::{Check, Inputs, Level};

/// Check 4: Interrupted downloads containerd keeps in `…/ingest/` can hang later pulls of the blob.
pub fn stale_ingests(inputs: &Inputs, cfg: &Result<ContainerdConfig, String>) -> Check {
    let mut c = Check::new(
        "stale-ingests",
        "no stale containerd ingests (interrupted downloads)",
    );
    let (root, source) = match containerd_root(inputs, cfg) {
        Ok(r) => r,
        Err(why) => {
            c.raise(Level::Skip, format!("containerd's root is unknown: {why}"));
            return c.fix(ROOT_FIX);
        }
    };
    let content = root.join("io.containerd.content.v1.content");
    if !content.is_dir() {
        c.raise(
            Level::Skip,
            format!(
                "containerd's root is unknown: {} ({source}) holds no io.containerd.content.v1.content",
                root.display()
            ),
        );
        return c.fix(ROOT_FIX);
    }
    c.note(format!("containerd root {} ({source})", root.display()));
    let dir = content.join("ingest");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            c.note(format!(
                "{} does not exist (nothing in flight)",
                dir.display()
            ));
            return c;
        }
        Err(e) => {
            c.raise(Level::Skip, format!("cannot read {}: {e}", dir.display()));
            return c.fix(
                "run doctor where containerd's root is mounted (or pass --containerd-config)",
            );
        }
    };
    let now = SystemTime::now();
    let mut fresh = 0;
    for e in entries.flatten() {
        let path = e.path();
        let age = now.duration_since(last_modified(&path)).unwrap_or_default();
        let reference = std::fs::read_to_string(path.join("ref")).unwrap_or_default();
        let size = std::fs::metadata(path.join("data"))
            .map(|m| m.len())
            .unwrap_or(0);
        if age > inputs.stale_after {
            c.raise(
                Level::Fail,
                format!(
                    "{} ({}; {} written) untouched for {}",
                    path.display(),
                    if reference.is_empty() {
                        "unknown ref".into()
                    } else {
                        reference.trim().to_owned()
                    },
                    crate::admin::render::bytes(size),
                    crate::admin::render::age(age)
                ),
            );
        } else {
            fresh += 1;
        }
    }
    if c.status == Level::Pass {
        c.note(format!(
            "{}: {fresh} ingest(s), none older than {}",
            dir.display(),
            crate::admin::render::age(inputs.stale_after)
        ));
    }
    c.fix(
        "these half-written downloads can make pulls of the same blobs hang: restart containerd \
         (or reboot the node, as the runbooks do); `ctr -n k8s.io content active` lists them and \
         `ctr -n k8s.io leases rm --sync <id>` drops the leases of interrupted pulls",
    )
}

const ROOT_FIX: &str = "pass containerd's root with --containerd-root (SHOAL_CONTAINERD_ROOT): the \
    `--root` on containerd's command line or `root` in its config; k3s: \
    /var/lib/rancher/k3s/agent/containerd, RKE2: /var/lib/rancher/rke2/agent/containerd, else \
    /var/lib/containerd; in a pod, mount it and pass --host-root";

/// containerd's root and where it came from: `--containerd-root`, `root` in its config, or the
/// layout's default (k3s and RKE2 pass it on containerd's command line); unknown when the config
/// cannot be read.
fn containerd_root(
    inputs: &Inputs,
    cfg: &Result<ContainerdConfig, String>,
) -> Result<(PathBuf, String), String> {
    if let Some(r) = &inputs.containerd_root {
        return Ok((r.clone(), "--containerd-root".into()));
    }
    let cfg = cfg
        .as_ref()
        .map_err(|e| format!("containerd's config cannot be read ({e})"))?;
    if let Some(f) = cfg.root_found() {
        return Ok((
            super::layout::on_host(&inputs.host_root, Path::new(&f.value)),
            format!("{} in {}", f.key, f.file.display()),
        ));
    }
    let root = inputs.layout.paths(&inputs.host_root).root;
    Ok((
        root,
        format!(
            "no root in {}: the {} default",
            inputs.containerd_config.display(),
            inputs.layout.name()
        ),
    ))
}

fn last_modified(dir: &Path) -> SystemTime {
    let mut newest = std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            hosts_dir: PathBuf::from("/h"),
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

    #[test]
    fn old_ingests_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let ingest = dir
            .path()
            .join("io.containerd.content.v1.content/ingest/abc");
        std::fs::create_dir_all(&ingest).unwrap();
        std::fs::write(ingest.join("ref"), "k8s.io/1/layer-sha256:x").unwrap();
        let c = cfg(&format!("root = \"{}\"\n", dir.path().display()));
        let mut i = inputs();
        assert_eq!(stale_ingests(&i, &c).status, Level::Pass);
        i.stale_after = Duration::ZERO;
        std::thread::sleep(Duration::from_millis(20));
        let r = stale_ingests(&i, &c);
        assert_eq!(r.status, Level::Fail);
        assert!(
            r.evidence.iter().any(|e| e.contains("layer-sha256:x")),
            "{:?}",
            r.evidence
        );
    }

    #[test]
    fn an_unknown_root_is_skipped_never_passed() {
        let i = inputs();
        let r = stale_ingests(&i, &Err("cannot read /c.toml".into()));
        assert_eq!(r.status, Level::Skip);
        assert!(r.fix.contains("--containerd-root"), "{}", r.fix);
        let dir = tempfile::tempdir().unwrap();
        let r = stale_ingests(&i, &cfg(&format!("root = \"{}\"\n", dir.path().display())));
        assert_eq!(r.status, Level::Skip, "{:?}", r.evidence);
        let mut k3s = inputs();
        k3s.layout = super::super::layout::Layout::K3s;
        k3s.host_root = dir.path().to_owned();
        let root = dir.path().join("var/lib/rancher/k3s/agent/containerd");
        std::fs::create_dir_all(root.join("io.containerd.content.v1.content/ingest/x")).unwrap();
        let mut k3s_stale = k3s.clone();
        k3s_stale.stale_after = Duration::ZERO;
        std::thread::sleep(Duration::from_millis(20));
        let r = stale_ingests(&k3s_stale, &cfg("version = 2\n"));
        assert_eq!(r.status, Level::Fail, "{:?}", r.evidence);
        assert!(
            r.evidence[0].contains("the k3s default"),
            "{:?}",
            r.evidence
        );
    }
}
