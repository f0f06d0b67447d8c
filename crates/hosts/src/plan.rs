//! Planning: from a [`Snapshot`] of the hosts directory and the [`Settings`], decide every file
//! operation before any is carried out. A malformed file anywhere Shoal must edit fails the whole
//! plan, so nothing is written for any registry.
//!
//! Ownership rules (what makes uninstall and allowlist shrink exact):
//! - Shoal's `[host]` tables carry the [`MARKER`](crate::document::MARKER) comment; nothing
//!   else in a file is Shoal's.
//! - Before Shoal first edits an existing hosts.toml it saves the bytes as `hosts.toml.shoal-orig`.
//!   Removal restores those bytes exactly when the file, minus Shoal's tables, is what Shoal
//!   left; when the operator edited it since, only Shoal's tables are removed (edits kept).
//! - A hosts.toml Shoal created (no sidecar) is deleted on removal unless someone added their
//!   own `[host]` tables to it; a directory Shoal created holds `.shoal-created` and is removed
//!   when nothing else is left in it.

use std::path::{Path, PathBuf};

use shoal_oci::Allowlist;

use crate::HostsError;
use crate::document::{CertFiles, HostsDoc, MARKER};
use crate::scan::{
    CREATED_MARKER, DEFAULT_DIR, DirState, FileMeta, HOSTS_FILE, ORIG_FILE, Snapshot,
};
use crate::settings::Settings;

/// One filesystem operation, carried out in order by [`apply`](crate::apply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create registry directory `root/name` with these files (built in a temporary directory
    /// and renamed into place, so it appears complete or not at all).
    CreateDir {
        name: String,
        files: Vec<(String, Vec<u8>)>,
    },
    /// Replace a file atomically (temp file + rename), with the given owner and mode
    /// (`None`: root-owned 0644).
    Write {
        path: PathBuf,
        contents: Vec<u8>,
        meta: Option<FileMeta>,
    },
    Remove {
        path: PathBuf,
    },
    /// Remove an empty directory.
    RemoveDir {
        path: PathBuf,
    },
    /// Remove a leftover temporary file or directory of an interrupted run.
    RemoveStale {
        path: PathBuf,
    },
}

/// What happens to one registry directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    Unchanged,
    Restore,
    Remove,
}

/// The plan for one registry directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPlan {
    /// Directory name under the hosts dir (`docker.io`, `_default`, …).
    pub dir: String,
    pub action: Action,
    /// One line for humans.
    pub detail: String,
    /// hosts.toml before and after (for the dry-run diff).
    pub before: Option<String>,
    pub after: Option<String>,
    pub ops: Vec<Op>,
}

/// Everything `configure` (or `--uninstall`) will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub root: PathBuf,
    pub dirs: Vec<DirPlan>,
    /// Clean-up of an interrupted run's temporary files.
    pub cleanup: Vec<Op>,
    /// Things the operator should know (printed to stderr; nothing was changed for them).
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.dirs
            .iter()
            .flat_map(|d| d.ops.iter())
            .chain(self.cleanup.iter())
    }

    pub fn is_noop(&self) -> bool {
        self.ops().next().is_none()
    }
}

/// containerd's alternative directory name for `host:port` (`host_port_`), tried before the
/// plain name.
fn port_dir(registry: &str) -> Option<String> {
    let idx = registry.rfind(':')?;
    (idx > 0).then(|| format!("{}_{}_", &registry[..idx], &registry[idx + 1..]))
}

/// Which directory containerd reads for `registry`: `host_port_` when it exists, else the name.
pub fn registry_dir(registry: &str, snap: &Snapshot) -> String {
    match port_dir(registry) {
        Some(alt) if snap.dirs.contains_key(&alt) => alt,
        _ => registry.to_owned(),
    }
}

/// Does this directory hold anything Shoal wrote?
fn has_shoal_state(st: &DirState) -> bool {
    st.orig.is_some()
        || st.created_marker
        || st
            .hosts_toml
            .as_ref()
            .is_some_and(|b| String::from_utf8_lossy(b).contains(MARKER))
}

/// Plans `shoal configure`.
pub fn plan_configure(snap: &Snapshot, settings: &Settings) -> Result<Plan, HostsError> {
    settings.validate()?;
    let mut plan = Plan {
        root: snap.root.clone(),
        dirs: Vec::new(),
        cleanup: stale_cleanup(snap),
        warnings: Vec::new(),
    };
    let wanted: Vec<(String, Option<String>)> = match &settings.allowlist {
        Allowlist::All => vec![(DEFAULT_DIR.to_owned(), None)],
        Allowlist::Only(set) => set
            .iter()
            .map(|r| (registry_dir(r, snap), Some(r.clone())))
            .collect(),
    };
    for (dir, registry) in &wanted {
        if snap.files.contains(dir) {
            return Err(HostsError::NameTaken(snap.root.join(dir)));
        }
        let p = match snap.dirs.get(dir) {
            None => create_dir(snap, dir, registry.as_deref(), settings, &mut plan.warnings),
            Some(st) => configure_existing(
                snap,
                dir,
                registry.as_deref(),
                st,
                settings,
                &mut plan.warnings,
            )?,
        };
        plan.dirs.push(p);
    }
    let mut bypass = Vec::new();
    for (dir, st) in &snap.dirs {
        if wanted.iter().any(|(w, _)| w == dir) {
            continue;
        }
        if settings.allowlist == Allowlist::All && !has_shoal_state(st) {
            bypass.push(dir.as_str());
        }
        if has_shoal_state(st) {
            plan.dirs.push(remove_dir(
                snap,
                dir,
                st,
                "no longer listed",
                &mut plan.warnings,
            )?);
        } else if dir == DEFAULT_DIR {
            plan.warnings.push(foreign_default_warning(snap));
        }
    }
    if !bypass.is_empty() {
        plan.warnings.push(format!(
            "with --all-registries only {DEFAULT_DIR} is written; these registries have their own \
             directory, which containerd uses instead of {DEFAULT_DIR}, so they bypass Shoal: {}",
            bypass.join(", ")
        ));
    }
    Ok(plan)
}

/// Plans `shoal configure --uninstall`: every directory with Shoal state goes back to how it
/// was before Shoal.
pub fn plan_uninstall(snap: &Snapshot) -> Result<Plan, HostsError> {
    let mut plan = Plan {
        root: snap.root.clone(),
        dirs: Vec::new(),
        cleanup: stale_cleanup(snap),
        warnings: Vec::new(),
    };
    for (dir, st) in &snap.dirs {
        if has_shoal_state(st) {
            plan.dirs
                .push(remove_dir(snap, dir, st, "uninstall", &mut plan.warnings)?);
        } else if dir == DEFAULT_DIR {
            plan.warnings.push(foreign_default_warning(snap));
        }
    }
    Ok(plan)
}

fn foreign_default_warning(snap: &Snapshot) -> String {
    format!(
        "{} exists and was not written by Shoal: containerd sends every registry without its own \
         directory (a private registry too) to the hosts it lists; Shoal left it alone",
        snap.root.join(DEFAULT_DIR).join(HOSTS_FILE).display()
    )
}

fn stale_cleanup(snap: &Snapshot) -> Vec<Op> {
    snap.stale_tmp
        .iter()
        .map(|n| Op::RemoveStale {
            path: snap.root.join(n),
        })
        .collect()
}

fn shoal_doc(
    mut doc: HostsDoc,
    settings: &Settings,
    path: &Path,
    warnings: &mut Vec<String>,
) -> HostsDoc {
    doc.strip();
    let (tables, collisions) = doc.shoal_tables(settings);
    for url in collisions {
        warnings.push(format!(
            "{}: already lists [host.\"{url}\"] (not Shoal's); left as it is, not duplicated",
            path.display()
        ));
    }
    doc.insert_first(tables);
    doc
}

fn create_dir(
    snap: &Snapshot,
    dir: &str,
    registry: Option<&str>,
    settings: &Settings,
    warnings: &mut Vec<String>,
) -> DirPlan {
    let path = snap.root.join(dir).join(HOSTS_FILE);
    let doc = shoal_doc(
        HostsDoc::new_file(
            registry,
            registry.is_some_and(|r| settings.allowlist.plain_http(r)),
            &CertFiles::default(),
        ),
        settings,
        &path,
        warnings,
    );
    let after = doc.render();
    DirPlan {
        dir: dir.to_owned(),
        action: Action::Create,
        detail: "new directory and hosts.toml".to_owned(),
        before: None,
        after: Some(after.clone()),
        ops: vec![Op::CreateDir {
            name: dir.to_owned(),
            files: vec![
                (
                    CREATED_MARKER.to_owned(),
                    b"Created by `shoal configure`; `shoal configure --uninstall` removes this directory.\n".to_vec(),
                ),
                (HOSTS_FILE.to_owned(), after.into_bytes()),
            ],
        }],
    }
}

fn configure_existing(
    snap: &Snapshot,
    dir: &str,
    registry: Option<&str>,
    st: &DirState,
    settings: &Settings,
    warnings: &mut Vec<String>,
) -> Result<DirPlan, HostsError> {
    let base = snap.root.join(dir);
    let path = base.join(HOSTS_FILE);
    let mut ops = Vec::new();
    let Some(bytes) = &st.hosts_toml else {
        if st.orig.is_some() {
            warnings.push(format!(
                "{}: hosts.toml was deleted since Shoal saved the original; writing a new one",
                base.display()
            ));
            ops.push(Op::Remove {
                path: base.join(ORIG_FILE),
            });
        }
        let certs = CertFiles::from_names(&st.others);
        let doc = shoal_doc(
            HostsDoc::new_file(
                registry,
                registry.is_some_and(|r| settings.allowlist.plain_http(r)),
                &certs,
            ),
            settings,
            &path,
            warnings,
        );
        let after = doc.render();
        ops.push(Op::Write {
            path,
            contents: after.clone().into_bytes(),
            meta: None,
        });
        let detail = if certs == CertFiles::default() {
            "new hosts.toml in existing directory".to_owned()
        } else {
            "new hosts.toml in existing directory (its certificate files are listed for the upstream)"
                .to_owned()
        };
        return Ok(DirPlan {
            dir: dir.to_owned(),
            action: Action::Create,
            detail,
            before: None,
            after: Some(after),
            ops,
        });
    };
    let doc = HostsDoc::parse(&path, bytes)?;
    let shoal_before = doc.shoal_count();
    let had_foreign = doc.foreign_count();
    let doc = shoal_doc(doc, settings, &path, warnings);
    let after = doc.render();
    let before = String::from_utf8_lossy(bytes).into_owned();
    if after.as_bytes() == bytes.as_slice() {
        return Ok(DirPlan {
            dir: dir.to_owned(),
            action: Action::Unchanged,
            detail: "up to date".to_owned(),
            before: Some(before),
            after: Some(after),
            ops,
        });
    }
    let detail = if shoal_before == 0 {
        if had_foreign == 0 {
            warnings.push(format!(
                "{}: had no [host] table, so containerd 1.6 ignored it; with Shoal's entry its \
                 other settings (server = …) now take effect",
                path.display()
            ));
        }
        if st.orig.as_deref().is_some_and(|o| o != bytes.as_slice()) {
            warnings.push(format!(
                "{}: replaced an outdated {ORIG_FILE} (hosts.toml was rewritten without Shoal's \
                 entries since)",
                base.display()
            ));
        }
        ops.push(Op::Write {
            path: base.join(ORIG_FILE),
            contents: bytes.clone(),
            meta: st.hosts_meta,
        });
        format!("prepend Shoal above {had_foreign} existing host(s); original saved as {ORIG_FILE}")
    } else {
        "update Shoal's entries".to_owned()
    };
    ops.push(Op::Write {
        path,
        contents: after.clone().into_bytes(),
        meta: st.hosts_meta,
    });
    Ok(DirPlan {
        dir: dir.to_owned(),
        action: Action::Update,
        detail,
        before: Some(before),
        after: Some(after),
        ops,
    })
}

fn remove_dir(
    snap: &Snapshot,
    dir: &str,
    st: &DirState,
    why: &str,
    warnings: &mut Vec<String>,
) -> Result<DirPlan, HostsError> {
    let base = snap.root.join(dir);
    let path = base.join(HOSTS_FILE);
    let orig_path = base.join(ORIG_FILE);
    let mut ops = Vec::new();
    let before = st
        .hosts_toml
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    let mut after = None;
    let mut action = Action::Remove;
    let mut detail = format!("{why}: remove Shoal's hosts.toml");
    match &st.hosts_toml {
        None => {
            if st.orig.is_some() {
                warnings.push(format!(
                    "{}: hosts.toml was deleted by someone else; not restoring it",
                    base.display()
                ));
                ops.push(Op::Remove { path: orig_path });
            }
        }
        Some(bytes) => {
            let doc = HostsDoc::parse(&path, bytes)?;
            if doc.shoal_count() == 0 {
                after = before.clone();
                action = Action::Unchanged;
                detail = format!("{why}: no Shoal entries left in hosts.toml; kept as is");
                if st.orig.is_some() {
                    warnings.push(format!(
                        "{}: hosts.toml was rewritten without Shoal's entries; kept as is",
                        path.display()
                    ));
                    ops.push(Op::Remove { path: orig_path });
                }
            } else {
                let mut stripped = doc.clone();
                let shoal = stripped.strip();
                match &st.orig {
                    Some(orig) => {
                        let unedited = HostsDoc::parse(&orig_path, orig).is_ok_and(|mut o| {
                            o.insert_first(shoal);
                            o.render().as_bytes() == bytes.as_slice()
                        });
                        let restored = if unedited {
                            action = Action::Restore;
                            detail = format!("{why}: restore the pre-Shoal hosts.toml");
                            orig.clone()
                        } else {
                            action = Action::Update;
                            detail = format!("{why}: remove Shoal's entries, keep later edits");
                            warnings.push(format!(
                                "{}: edited since Shoal wrote it; removed only Shoal's [host] \
                                 tables and kept the edits instead of restoring the original",
                                path.display()
                            ));
                            stripped.render().into_bytes()
                        };
                        after = Some(String::from_utf8_lossy(&restored).into_owned());
                        ops.push(Op::Write {
                            path,
                            contents: restored,
                            meta: st.hosts_meta,
                        });
                        ops.push(Op::Remove { path: orig_path });
                    }
                    None if stripped.foreign_count() == 0 => ops.push(Op::Remove { path }),
                    None => {
                        action = Action::Update;
                        detail = format!("{why}: remove Shoal's entries, keep the others");
                        warnings.push(format!(
                            "{}: created by Shoal but others added [host] tables since; removed \
                             only Shoal's",
                            path.display()
                        ));
                        let s = stripped.render();
                        after = Some(s.clone());
                        ops.push(Op::Write {
                            path,
                            contents: s.into_bytes(),
                            meta: st.hosts_meta,
                        });
                    }
                }
            }
        }
    }
    if st.created_marker {
        ops.push(Op::Remove {
            path: base.join(CREATED_MARKER),
        });
        if after.is_none() && st.others.is_empty() {
            ops.push(Op::RemoveDir { path: base.clone() });
            if action == Action::Remove {
                detail = format!("{why}: remove the directory Shoal created");
            }
        } else if after.is_none() {
            warnings.push(format!(
                "{}: created by Shoal but now also holds {}; directory left in place",
                base.display(),
                st.others.join(", ")
            ));
        }
    }
    Ok(DirPlan {
        dir: dir.to_owned(),
        action,
        detail,
        before,
        after,
        ops,
    })
}
