//! Where a node's containerd keeps its files, by distribution: Talos (`/etc/cri`), k3s and RKE2
//! (everything under `/var/lib/rancher/<k3s|rke2>/agent`, the containerd root passed on
//! containerd's command line rather than in its config, registries written from
//! `/etc/rancher/<k3s|rke2>/registries.yaml`), or a plain containerd (`/etc/containerd`).
//! Paths are looked up under a host root (`/`, or where the node's filesystem is mounted in a
//! pod), so doctor finds the node's files from the DaemonSet too.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// A known layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Talos,
    K3s,
    Rke2,
    Containerd,
}

/// A layout's default paths, relative to the host root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub hosts_dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    /// containerd's root when its config does not set one.
    pub root: PathBuf,
}

impl Layout {
    /// Recognises the layout of the filesystem at `host_root`.
    pub fn detect(host_root: &Path) -> Layout {
        let os_release =
            std::fs::read_to_string(host_root.join("etc/os-release")).unwrap_or_default();
        if os_release.lines().any(|l| l.trim() == "ID=talos") || host_root.join("etc/cri").is_dir()
        {
            Layout::Talos
        } else if host_root
            .join("var/lib/rancher/rke2/agent/etc/containerd")
            .is_dir()
        {
            Layout::Rke2
        } else if host_root
            .join("var/lib/rancher/k3s/agent/etc/containerd")
            .is_dir()
        {
            Layout::K3s
        } else {
            Layout::Containerd
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layout::Talos => "Talos",
            Layout::K3s => "k3s",
            Layout::Rke2 => "RKE2",
            Layout::Containerd => "containerd",
        }
    }

    /// The default paths, under `host_root`.
    pub fn paths(self, host_root: &Path) -> Paths {
        let rancher = |d: &str| {
            let agent = format!("var/lib/rancher/{d}/agent");
            Paths {
                hosts_dir: host_root.join(format!("{agent}/etc/containerd/certs.d")),
                config: host_root.join(format!("{agent}/etc/containerd/config.toml")),
                socket: host_root.join("run/k3s/containerd/containerd.sock"),
                root: host_root.join(format!("{agent}/containerd")),
            }
        };
        match self {
            Layout::Talos => Paths {
                hosts_dir: host_root.join("etc/cri/conf.d/hosts"),
                config: host_root.join("etc/cri/containerd.toml"),
                socket: host_root.join("run/containerd/containerd.sock"),
                root: host_root.join("var/lib/containerd"),
            },
            Layout::K3s => rancher("k3s"),
            Layout::Rke2 => rancher("rke2"),
            Layout::Containerd => Paths {
                hosts_dir: host_root.join("etc/containerd/certs.d"),
                config: host_root.join("etc/containerd/config.toml"),
                socket: host_root.join("run/containerd/containerd.sock"),
                root: host_root.join("var/lib/containerd"),
            },
        }
    }

    /// Where the registry settings a fix talks about are written on this layout.
    pub fn registry_settings(self) -> &'static str {
        match self {
            Layout::Talos => "Talos: machine.registries in the machine config",
            Layout::K3s => {
                "k3s: /etc/rancher/k3s/registries.yaml (mirrors and configs), then restart k3s"
            }
            Layout::Rke2 => {
                "RKE2: /etc/rancher/rke2/registries.yaml (mirrors and configs), then restart rke2"
            }
            Layout::Containerd => "containerd's config.toml and hosts directory",
        }
    }
}

/// A path read from a node's config (absolute on the node), under `host_root`.
pub fn on_host(host_root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix("/") {
        Ok(rel) if host_root != Path::new("/") => host_root.join(rel),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_layout() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Layout::detect(dir.path()), Layout::Containerd);
        std::fs::create_dir_all(dir.path().join("var/lib/rancher/k3s/agent/etc/containerd"))
            .unwrap();
        assert_eq!(Layout::detect(dir.path()), Layout::K3s);
        let p = Layout::K3s.paths(dir.path());
        assert_eq!(
            p.root,
            dir.path().join("var/lib/rancher/k3s/agent/containerd")
        );
        assert_eq!(
            p.socket,
            dir.path().join("run/k3s/containerd/containerd.sock")
        );
        std::fs::create_dir_all(dir.path().join("var/lib/rancher/rke2/agent/etc/containerd"))
            .unwrap();
        assert_eq!(Layout::detect(dir.path()), Layout::Rke2);
        std::fs::create_dir_all(dir.path().join("etc/cri")).unwrap();
        assert_eq!(Layout::detect(dir.path()), Layout::Talos);
    }

    #[test]
    fn node_paths_move_under_the_host_root() {
        assert_eq!(
            on_host(Path::new("/host"), Path::new("/var/lib/containerd")),
            Path::new("/host/var/lib/containerd")
        );
        assert_eq!(
            on_host(Path::new("/"), Path::new("/var/lib/containerd")),
            Path::new("/var/lib/containerd")
        );
    }
}
