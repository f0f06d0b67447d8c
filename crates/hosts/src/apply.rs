//! Carrying out a [`Plan`]: every file is written to a temporary file in its own directory,
//! synced and renamed over the target, and the directory is synced, so containerd (which reads
//! hosts.toml on every pull) only ever sees a complete old or new file.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{PermissionsExt, fchown};
use std::path::Path;

use crate::HostsError;
use crate::plan::{Op, Plan};
use crate::scan::{FileMeta, TMP_PREFIX};

const NEW_FILE_MODE: u32 = 0o644;
const NEW_DIR_MODE: u32 = 0o755;

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> HostsError + use<> {
    let path = path.to_owned();
    move |source| HostsError::Io { path, op, source }
}

/// Applies `plan`. Before the first change, every directory that will be written is checked
/// for writability, so a read-only hosts directory fails without changing anything.
pub fn apply(plan: &Plan) -> Result<(), HostsError> {
    if plan.is_noop() {
        return Ok(());
    }
    preflight(plan)?;
    for op in plan.ops() {
        run(&plan.root, op)?;
    }
    Ok(())
}

fn preflight(plan: &Plan) -> Result<(), HostsError> {
    let mut dirs: Vec<&Path> = Vec::new();
    for op in plan.ops() {
        let d = match op {
            Op::CreateDir { .. } => plan.root.as_path(),
            Op::Write { path, .. }
            | Op::Remove { path }
            | Op::RemoveDir { path }
            | Op::RemoveStale { path } => path.parent().unwrap_or(&plan.root),
        };
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    for d in dirs {
        tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(d)
            .map_err(io_err(d, "write to"))?;
    }
    Ok(())
}

fn run(root: &Path, op: &Op) -> Result<(), HostsError> {
    match op {
        Op::Write {
            path,
            contents,
            meta,
        } => write_atomic(path, contents, *meta),
        Op::CreateDir { name, files } => create_dir(root, name, files),
        Op::Remove { path } => {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(path, "remove")(e)),
            }
            sync_parent(path)
        }
        Op::RemoveDir { path } => {
            fs::remove_dir(path).map_err(io_err(path, "remove directory"))?;
            sync_parent(path)
        }
        Op::RemoveStale { path } => {
            let r = if path.is_dir() {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            };
            r.map_err(io_err(path, "remove leftover"))?;
            sync_parent(path)
        }
    }
}

fn write_atomic(path: &Path, contents: &[u8], meta: Option<FileMeta>) -> Result<(), HostsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dir)
        .map_err(io_err(dir, "create a temporary file in"))?;
    let mode = meta.map_or(NEW_FILE_MODE, |m| m.mode);
    let f = tmp.as_file_mut();
    f.write_all(contents).map_err(io_err(path, "write"))?;
    f.set_permissions(Permissions::from_mode(mode))
        .map_err(io_err(path, "set permissions of"))?;
    if let Some(m) = meta {
        fchown(&*f, Some(m.uid), Some(m.gid)).map_err(io_err(path, "set owner of"))?;
    }
    f.sync_all().map_err(io_err(path, "sync"))?;
    tmp.persist(path)
        .map_err(|e| io_err(path, "rename into place")(e.error))?;
    sync_dir(dir)
}

fn create_dir(root: &Path, name: &str, files: &[(String, Vec<u8>)]) -> Result<(), HostsError> {
    let target = root.join(name);
    if target.exists() {
        return Err(HostsError::Io {
            path: target,
            op: "create",
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "appeared while Shoal was planning; re-run",
            ),
        });
    }
    let tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempdir_in(root)
        .map_err(io_err(root, "create a temporary directory in"))?;
    fs::set_permissions(tmp.path(), Permissions::from_mode(NEW_DIR_MODE))
        .map_err(io_err(tmp.path(), "set permissions of"))?;
    for (file, contents) in files {
        let p = tmp.path().join(file);
        let mut f = File::create(&p).map_err(io_err(&p, "create"))?;
        f.write_all(contents).map_err(io_err(&p, "write"))?;
        f.set_permissions(Permissions::from_mode(NEW_FILE_MODE))
            .map_err(io_err(&p, "set permissions of"))?;
        f.sync_all().map_err(io_err(&p, "sync"))?;
    }
    sync_dir(tmp.path())?;
    let kept = tmp.keep();
    fs::rename(&kept, &target).map_err(|e| {
        let _ = fs::remove_dir_all(&kept);
        io_err(&target, "rename into place")(e)
    })?;
    sync_dir(root)
}

fn sync_parent(path: &Path) -> Result<(), HostsError> {
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), HostsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "sync directory"))
}
