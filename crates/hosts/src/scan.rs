//! Reading a containerd hosts directory into plain data, so that planning is a pure function
//! of what is on disk (and golden tests can check it without touching a real node).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::HostsError;

/// containerd reads this file in each registry directory.
pub const HOSTS_FILE: &str = "hosts.toml";
/// The pre-Shoal bytes of a hosts.toml Shoal modified; containerd ignores it (it only reads
/// `hosts.toml` and, without one, `*.crt`, `*.cert` and `*.key`).
pub const ORIG_FILE: &str = "hosts.toml.shoal-orig";
/// Present in a registry directory that Shoal created (removed with it on uninstall).
pub const CREATED_MARKER: &str = ".shoal-created";
/// The catch-all directory containerd uses for registries without their own directory.
pub const DEFAULT_DIR: &str = "_default";
/// Prefix of the temporary directories Shoal builds a new registry directory in.
pub(crate) const TMP_PREFIX: &str = ".shoal-tmp-";

/// Owner and permission bits of a file, restored when Shoal rewrites it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl FileMeta {
    fn of(m: &fs::Metadata) -> Self {
        FileMeta {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        }
    }
}

/// What one registry directory holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirState {
    pub hosts_toml: Option<Vec<u8>>,
    pub hosts_meta: Option<FileMeta>,
    pub orig: Option<Vec<u8>>,
    pub created_marker: bool,
    /// Every other entry name (sorted): certificate files, anything the operator keeps there.
    pub others: Vec<String>,
    /// Temporary files of an interrupted Shoal run.
    pub stale_tmp: Vec<String>,
}

/// A hosts directory as read from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub root: PathBuf,
    /// Registry directories by name (`docker.io`, `127.0.0.1_5000_`, `_default`, …).
    pub dirs: BTreeMap<String, DirState>,
    /// Names in the root that are not directories (containerd ignores them; so does Shoal, but
    /// a registry whose directory name is taken by a file cannot be configured).
    pub files: Vec<String>,
    /// Leftover temporary files and directories of an interrupted run, relative to `root`.
    pub stale_tmp: Vec<String>,
}

impl Snapshot {
    /// Reads `root`. Only Shoal's own state files and each directory's hosts.toml are read.
    pub fn read(root: &Path) -> Result<Snapshot, HostsError> {
        let io_err = |path: &Path, op: &'static str| {
            let path = path.to_owned();
            move |source: io::Error| HostsError::Io { path, op, source }
        };
        let meta = fs::metadata(root).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                HostsError::MissingRoot(root.to_owned())
            } else {
                HostsError::Io {
                    path: root.to_owned(),
                    op: "stat",
                    source: e,
                }
            }
        })?;
        if !meta.is_dir() {
            return Err(HostsError::NotADirectory(root.to_owned()));
        }
        let mut snap = Snapshot {
            root: root.to_owned(),
            dirs: BTreeMap::new(),
            files: Vec::new(),
            stale_tmp: Vec::new(),
        };
        for entry in fs::read_dir(root).map_err(io_err(root, "list"))? {
            let entry = entry.map_err(io_err(root, "list"))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // containerd cannot name a registry with non-UTF-8 either
            };
            let path = entry.path();
            if name.starts_with(TMP_PREFIX) {
                snap.stale_tmp.push(name);
                continue;
            }
            // Follow symlinks: containerd does (it stats the path).
            let is_dir = fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
            if !is_dir {
                snap.files.push(name);
                continue;
            }
            let st = read_dir_state(&path)?;
            for t in &st.stale_tmp {
                snap.stale_tmp.push(format!("{name}/{t}"));
            }
            snap.dirs.insert(name, st);
        }
        snap.files.sort();
        snap.stale_tmp.sort();
        Ok(snap)
    }
}

fn read_dir_state(dir: &Path) -> Result<DirState, HostsError> {
    let mut st = DirState::default();
    let list = fs::read_dir(dir).map_err(|source| HostsError::Io {
        path: dir.to_owned(),
        op: "list",
        source,
    })?;
    for entry in list {
        let entry = entry.map_err(|source| HostsError::Io {
            path: dir.to_owned(),
            op: "list",
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let read = |p: &Path| {
            fs::read(p).map_err(|source| HostsError::Io {
                path: p.to_owned(),
                op: "read",
                source,
            })
        };
        match name.as_str() {
            HOSTS_FILE => {
                let m = fs::metadata(&path).map_err(|source| HostsError::Io {
                    path: path.clone(),
                    op: "stat",
                    source,
                })?;
                st.hosts_meta = Some(FileMeta::of(&m));
                st.hosts_toml = Some(read(&path)?);
            }
            ORIG_FILE => st.orig = Some(read(&path)?),
            CREATED_MARKER => st.created_marker = true,
            _ if name.starts_with(TMP_PREFIX) => st.stale_tmp.push(name),
            _ => st.others.push(name),
        }
    }
    st.others.sort();
    Ok(st)
}
