//! containerd `hosts.toml` generation for `shoal configure`: put Shoal's mirror first for an
//! allowlist of registries, never as a catch-all, and never destroy what is already there.
//!
//! The user's worst outages came from a mirror's `_default` catch-all intercepting a private
//! registry and from a mirror overwriting per-registry configuration (CA files, auth, internal
//! endpoints). This crate makes both impossible by construction:
//! - only allowlisted registries get a directory; `_default` only with [`Allowlist::All`];
//! - existing files are edited with `toml_edit` (comments, formatting and every foreign
//!   `[host]` table kept, in order, after Shoal's), and their pristine bytes are saved beside
//!   them so that uninstall restores them exactly;
//! - everything is planned first ([`plan_configure`], [`plan_uninstall`]: pure functions of a
//!   [`Snapshot`]) and applied second ([`apply`]: temp file + rename + directory fsync), so bad
//!   input anywhere writes nothing anywhere.
//!
//! [`Allowlist::All`]: shoal_oci::Allowlist::All

mod apply;
mod document;
mod plan;
mod render;
mod scan;
mod settings;

use std::io;
use std::path::{Path, PathBuf};

pub use apply::apply;
pub use document::MARKER;
pub use plan::{Action, DirPlan, Op, Plan, plan_configure, plan_uninstall, registry_dir};
pub use scan::{CREATED_MARKER, DEFAULT_DIR, DirState, FileMeta, HOSTS_FILE, ORIG_FILE, Snapshot};
pub use settings::{MirrorHost, MirrorUrl, Settings, upstream_server};

/// Why configuring a hosts directory failed. Nothing was written when planning failed.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("invalid mirror URL {url:?}: {reason}")]
    InvalidMirror { url: String, reason: String },
    #[error("no mirror URL given (--mirror)")]
    NoMirrors,
    #[error("dial timeout must be greater than zero")]
    InvalidDialTimeout,
    #[error("{}:{line}:{column}: malformed hosts.toml, left untouched: {message}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}:{line}:{column}: {reason}; left untouched", path.display())]
    Unsupported {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("hosts directory {} does not exist (it must be containerd's registry config_path)", .0.display())]
    MissingRoot(PathBuf),
    #[error("hosts directory {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{} is a file, not a registry directory; left untouched", .0.display())]
    NameTaken(PathBuf),
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Reads `root`, plans `configure` and, unless `dry_run`, applies the plan.
pub fn configure(root: &Path, settings: &Settings, dry_run: bool) -> Result<Plan, HostsError> {
    let snap = Snapshot::read(root)?;
    let plan = plan_configure(&snap, settings)?;
    if !dry_run {
        apply(&plan)?;
    }
    Ok(plan)
}

/// Reads `root`, plans the uninstall and, unless `dry_run`, applies it.
pub fn uninstall(root: &Path, dry_run: bool) -> Result<Plan, HostsError> {
    let snap = Snapshot::read(root)?;
    let plan = plan_uninstall(&snap)?;
    if !dry_run {
        apply(&plan)?;
    }
    Ok(plan)
}
