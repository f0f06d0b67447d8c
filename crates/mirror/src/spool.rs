//! Spool files: where a large blob from peers waits, on disk, until it has been verified.
//!
//! A spooled download holds one of `max_concurrent_spools` slots and reserves its blob's size
//! against the free space of `spool_dir` (checked with `statvfs`), so spooling neither runs
//! unbounded nor fills the disk that containerd writes the same blob to next; when either
//! bound is hit the request is answered 404 and containerd pulls from upstream.
//!
//! Bytes are gathered into batches and each batch is hashed and written by one blocking task
//! while the next batch is received, so hashing and disk writes overlap the network and never
//! run on the async workers; at most two batches per download are in memory.
//!
//! The file has a unique name (`spool-*.part`) and is removed when the [`SpoolFile`] or the
//! response body made from it is dropped: on success, on error and when the client goes away.
//! Files left by a crash are removed when the mirror state is built ([`Spool::clean_stale`]).
//! The file is only ever used through the descriptor opened at creation, never reopened by
//! name, so removing names (cleanup, an operator) cannot swap its content.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use shoal_oci::{Algorithm, Digest, Hasher};
use tempfile::TempPath;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::io::ReaderStream;

use crate::metrics::{Metrics, Source};

const PREFIX: &str = "spool-";
const SUFFIX: &str = ".part";
/// Bytes received before they are handed to one blocking hash+write task.
const BATCH: usize = 1024 * 1024;
/// Read size when sending a verified file to the client.
pub(crate) const SEND_CHUNK: usize = 256 * 1024;

/// Why a blob could not be spooled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpoolError {
    #[error("no free spool slot within {0:?}")]
    Busy(Duration),
    #[error("{size} bytes do not fit in {dir} ({free} bytes free, {reserved} reserved)")]
    NoSpace {
        size: u64,
        free: u64,
        reserved: u64,
        dir: PathBuf,
    },
    #[error("spool directory {dir}: {reason}")]
    Dir { dir: PathBuf, reason: String },
    #[error("spool file: {0}")]
    Io(#[from] io::Error),
}

/// The spool directory and its bounds; one per mirror state.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    slots: Arc<Semaphore>,
    /// Bytes promised to downloads still being written (not yet visible to `statvfs`).
    reserved: Arc<Mutex<u64>>,
}

impl Spool {
    pub(crate) fn new(dir: PathBuf, max_concurrent: usize) -> Self {
        Spool {
            dir,
            slots: Arc::new(Semaphore::new(max_concurrent)),
            reserved: Arc::new(Mutex::new(0)),
        }
    }

    /// Remove spool files left by an earlier run (a crash skips the removal on drop). Only
    /// files with the spool name pattern are touched. Returns how many were removed.
    pub(crate) fn clean_stale(&self) -> io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(PREFIX) && name.ends_with(SUFFIX) && entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// A new, empty spool file for a blob of `size` bytes hashed with `algorithm`, waiting at
    /// most `wait` for a free slot.
    pub(crate) async fn create(
        &self,
        size: u64,
        algorithm: Algorithm,
        wait: Duration,
    ) -> Result<SpoolFile, SpoolError> {
        let permit = tokio::time::timeout(wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| SpoolError::Busy(wait))?
            .map_err(|_| SpoolError::Busy(wait))?;
        let dir = self.dir.clone();
        let reserved = self.reserved.clone();
        let (file, path, reservation) =
            tokio::task::spawn_blocking(move || -> Result<_, SpoolError> {
                prepare_dir(&dir)?;
                let reservation = reserve(&reserved, &dir, size)?;
                let tmp = tempfile::Builder::new()
                    .prefix(PREFIX)
                    .suffix(SUFFIX)
                    .tempfile_in(&dir)?;
                let (file, path) = tmp.into_parts();
                Ok((file, path, reservation))
            })
            .await
            .map_err(|e| SpoolError::Io(io::Error::other(e)))??;
        Ok(SpoolFile {
            held: Some((file, algorithm.hasher())),
            job: None,
            batch: Vec::new(),
            batch_len: 0,
            algorithm,
            guard: Guard {
                _path: path,
                _permit: permit,
            },
            reservation: Some(reservation),
        })
    }
}

/// Create the directory (0700) if missing; refuse a symlink, a non-directory or a directory
/// owned by someone else (the default lives in the shared temp directory).
fn prepare_dir(dir: &Path) -> Result<(), SpoolError> {
    let err = |reason: String| SpoolError::Dir {
        dir: dir.to_owned(),
        reason,
    };
    let md = match std::fs::symlink_metadata(dir) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| err(format!("cannot create: {e}")))?;
            std::fs::symlink_metadata(dir).map_err(|e| err(e.to_string()))?
        }
        Err(e) => return Err(err(e.to_string())),
    };
    if !md.is_dir() {
        return Err(err("not a directory (symlinks are refused)".into()));
    }
    if md.uid() != nix::unistd::geteuid().as_raw() {
        return Err(err(format!(
            "owned by uid {}, not by this process",
            md.uid()
        )));
    }
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err(format!("cannot restrict to 0700: {e}")))?;
    }
    Ok(())
}

/// Bytes the filesystem of `dir` still has for unprivileged writes.
fn free_space(dir: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

fn reserve(reserved: &Arc<Mutex<u64>>, dir: &Path, size: u64) -> Result<Reservation, SpoolError> {
    let free = free_space(dir)?;
    let mut r = reserved.lock().unwrap_or_else(|e| e.into_inner());
    if size.saturating_add(*r) > free {
        return Err(SpoolError::NoSpace {
            size,
            free,
            reserved: *r,
            dir: dir.to_owned(),
        });
    }
    *r += size;
    Ok(Reservation {
        total: reserved.clone(),
        size,
    })
}

/// Space promised to one download, given back on drop.
#[derive(Debug)]
struct Reservation {
    total: Arc<Mutex<u64>>,
    size: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut r = self.total.lock().unwrap_or_else(|e| e.into_inner());
        *r = r.saturating_sub(self.size);
    }
}

/// What keeps a spool file alive: its name (removed on drop) and its slot.
struct Guard {
    _path: TempPath,
    _permit: OwnedSemaphorePermit,
}

type Job = JoinHandle<io::Result<(File, Hasher)>>;

/// One spool file being filled and hashed; removed from disk when dropped.
pub(crate) struct SpoolFile {
    /// The file and the running hash, when no blocking task has them.
    held: Option<(File, Hasher)>,
    /// The blocking task hashing and writing the previous batch.
    job: Option<Job>,
    batch: Vec<Bytes>,
    batch_len: usize,
    algorithm: Algorithm,
    guard: Guard,
    reservation: Option<Reservation>,
}

impl SpoolFile {
    /// Append `chunk` (hashed and written in the background, in order).
    pub(crate) async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        self.batch_len += chunk.len();
        self.batch.push(chunk);
        if self.batch_len >= BATCH {
            self.submit().await?;
        }
        Ok(())
    }

    /// Hand the gathered batch to a blocking task, once the previous one has finished.
    async fn submit(&mut self) -> io::Result<()> {
        self.settle().await?;
        let (mut file, mut hasher) = self.take_held()?;
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        self.job = Some(tokio::task::spawn_blocking(move || {
            for chunk in &batch {
                hasher.update(chunk);
                file.write_all(chunk)?;
            }
            Ok((file, hasher))
        }));
        Ok(())
    }

    /// Wait for the background task, if any, and take the file and hash back.
    async fn settle(&mut self) -> io::Result<()> {
        if let Some(job) = self.job.take() {
            let done = job.await.map_err(io::Error::other)??;
            self.held = Some(done);
        }
        Ok(())
    }

    fn take_held(&mut self) -> io::Result<(File, Hasher)> {
        self.held
            .take()
            .ok_or_else(|| io::Error::other("spool file lost after an earlier write error"))
    }

    /// Write out everything received and return the digest of it. The hash restarts empty.
    pub(crate) async fn digest(&mut self) -> io::Result<Digest> {
        if !self.batch.is_empty() {
            self.submit().await?;
        }
        self.settle().await?;
        let (file, hasher) = self.take_held()?;
        self.held = Some((file, self.algorithm.hasher()));
        Ok(hasher.finish())
    }

    /// A second descriptor of the file, sized to `size` bytes (sparse), for positional writes
    /// and reads by a multi-peer download (`multi`), which hashes on its own: the running hash
    /// of this `SpoolFile` is not used for those bytes. Every user of the returned descriptor
    /// must have finished before the file is truncated or sent.
    pub(crate) async fn positional(&mut self, size: u64) -> io::Result<Arc<File>> {
        self.batch.clear();
        self.batch_len = 0;
        self.settle().await?;
        let (file, hasher) = self.take_held()?;
        let (file, dup) = tokio::task::spawn_blocking(move || -> io::Result<(File, File)> {
            file.set_len(size)?;
            let dup = file.try_clone()?;
            Ok((file, dup))
        })
        .await
        .map_err(io::Error::other)??;
        self.held = Some((file, hasher));
        Ok(Arc::new(dup))
    }

    /// Drop everything received so far (after a digest mismatch) and start again from byte 0.
    pub(crate) async fn truncate(&mut self) -> io::Result<()> {
        self.batch.clear();
        self.batch_len = 0;
        self.settle().await?;
        let (mut file, _) = self.take_held()?;
        let file = tokio::task::spawn_blocking(move || -> io::Result<File> {
            file.set_len(0)?;
            file.rewind()?;
            Ok(file)
        })
        .await
        .map_err(io::Error::other)??;
        self.held = Some((file, self.algorithm.hasher()));
        Ok(())
    }

    /// A body sending `len` bytes from `start` of the (verified, fully written) file in
    /// `SEND_CHUNK` reads, counting them as peer bytes. The file is removed and its slot freed
    /// when the body is dropped, whether it was sent completely or not.
    pub(crate) async fn into_body(
        mut self,
        start: u64,
        len: u64,
        metrics: Metrics,
    ) -> io::Result<Body> {
        self.settle().await?;
        let (file, _) = self.take_held()?;
        // Everything is on disk now, so statvfs accounts for it.
        self.reservation = None;
        let mut file = tokio::fs::File::from_std(file);
        file.seek(SeekFrom::Start(start)).await?;
        let guard = self.guard;
        let stream = ReaderStream::with_capacity(file.take(len), SEND_CHUNK).map(move |r| {
            let _alive = &guard;
            if let Ok(b) = &r {
                metrics.add_bytes(Source::Peer, b.len() as u64);
            }
            r
        });
        Ok(Body::from_stream(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool_in(dir: &Path) -> Spool {
        Spool::new(dir.join("spool"), 1)
    }

    #[tokio::test]
    async fn files_vanish_and_slots_and_space_are_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = spool_in(tmp.path());
        let algo = Digest::sha256_of(b"").algorithm();
        let mut f = spool
            .create(10, algo, Duration::from_millis(10))
            .await
            .unwrap();
        let md = std::fs::metadata(tmp.path().join("spool")).unwrap();
        assert_eq!(md.mode() & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(&spool.dir).unwrap().count(), 1);
        // The only slot is taken.
        let busy = spool.create(10, algo, Duration::from_millis(10)).await;
        assert!(matches!(busy, Err(SpoolError::Busy(_))), "{:?}", busy.err());
        f.write(Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(f.digest().await.unwrap(), Digest::sha256_of(b"hello"));
        f.truncate().await.unwrap();
        f.write(Bytes::from_static(b"world")).await.unwrap();
        assert_eq!(f.digest().await.unwrap(), Digest::sha256_of(b"world"));
        let body = f.into_body(1, 3, Metrics::new()).await.unwrap();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        assert_eq!(bytes.as_ref(), b"orl");
        assert_eq!(std::fs::read_dir(&spool.dir).unwrap().count(), 0);
        assert_eq!(*spool.reserved.lock().unwrap(), 0);

        let huge = spool
            .create(u64::MAX / 2, algo, Duration::from_millis(10))
            .await;
        assert!(
            matches!(huge, Err(SpoolError::NoSpace { .. })),
            "{:?}",
            huge.err()
        );
        assert_eq!(std::fs::read_dir(&spool.dir).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn stale_files_are_cleaned_and_others_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = spool_in(tmp.path());
        assert_eq!(spool.clean_stale().unwrap(), 0, "a missing dir is fine");
        std::fs::create_dir(&spool.dir).unwrap();
        std::fs::write(spool.dir.join("spool-abc.part"), b"x").unwrap();
        std::fs::write(spool.dir.join("notes.txt"), b"x").unwrap();
        assert_eq!(spool.clean_stale().unwrap(), 1);
        let left: Vec<_> = std::fs::read_dir(&spool.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["notes.txt"]);
    }

    #[tokio::test]
    async fn a_symlinked_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("spool");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let spool = Spool::new(link, 1);
        let algo = Digest::sha256_of(b"").algorithm();
        let r = spool.create(1, algo, Duration::from_millis(10)).await;
        assert!(matches!(r, Err(SpoolError::Dir { .. })), "{:?}", r.err());
    }
}
