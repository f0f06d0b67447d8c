//! Reading a blob while containerd is still writing it (an active ingest), so that a node
//! fetching a new blob from upstream can pass it on to its peers as it arrives instead of every
//! node fetching it from upstream (the mirror's `herd` module).
//!
//! What this rests on (measured on containerd 1.6 and 2.2, shared notes `containerd-ingest.md`):
//! `<content>/ingest/<id>/` holds `ref` (`<namespace>/<n>/layer-sha256:<hex>`), `total` (the
//! size as decimal text, written before any data) and `data`, which only ever grows by
//! appending, also across a `Range` resume. At commit `data` is renamed to
//! `blobs/sha256/<hex>` with the same inode, so an open descriptor reads on to the end. The
//! directory name cannot be derived from the Content API's ref (it includes a sequence
//! number), so the `ref` files are read to find it.
//!
//! The bytes are **not verified** here: they are whatever upstream has sent so far. Whoever
//! reads this stream must check them (the puller checks the whole digest before it lets its
//! containerd complete the blob).
//!
//! Bounds: a read never passes what `data` holds when it looks (positional reads of at most
//! one chunk, [`crate::read::chunk_len`]); when it has caught up it polls every
//! [`POLL`]; [`STALL`] without growth, or the ingest gone without a committed blob, ends the
//! stream with an error. One open file and one chunk per reader, no thread between chunks.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_oci::Digest;

use crate::client::ContentSource;
use crate::error::Error;
use crate::ingest::ref_is_for;
use crate::read::{ByteStream, budget, chunk_len, hold};

/// How often a reader that has caught up with the writer looks again.
pub const POLL: Duration = Duration::from_millis(20);
/// How long the data may stop growing before the read fails.
pub const STALL: Duration = Duration::from_secs(10);
/// After this long without growth, a reader checks that the ingest still exists.
const GONE_CHECK: Duration = Duration::from_secs(1);
/// Most ingest directories looked at to find one (containerd keeps a handful).
const MAX_SCAN: usize = 1024;
/// Largest `ref` or `total` file read.
const MAX_SMALL_FILE: u64 = 1024;

/// A blob being written, opened for reading.
pub struct Growing {
    /// The size containerd expects (its `total` file).
    pub total: u64,
    /// The bytes from the requested offset to `total`, yielded as they are written.
    pub stream: ByteStream,
}

impl std::fmt::Debug for Growing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Growing")
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

/// Where a read of a growing blob stands.
struct Follow {
    file: Arc<std::fs::File>,
    dir: PathBuf,
    blob: PathBuf,
    start: u64,
    pos: u64,
    total: u64,
    grew_at: Instant,
    done: bool,
}

impl ContentSource {
    /// The blob `digest` as this namespace's containerd is writing it, from `offset`; `None`
    /// when no ingest of it is active here (or the content directory is not readable).
    pub async fn read_growing(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<Option<Growing>, Error> {
        let Some(content) = self.inner.content_dir.clone() else {
            return Ok(None);
        };
        let prefix = format!("{}/", self.inner.namespace);
        let digest_c = digest.clone();
        let found = tokio::task::spawn_blocking(move || open_ingest(&content, &prefix, &digest_c))
            .await
            .map_err(|e| Error::Io {
                path: PathBuf::from("ingest"),
                error: io::Error::other(e),
            })?;
        let Some((dir, file, total, written)) = found else {
            return Ok(None);
        };
        if offset > total {
            return Err(Error::OutOfRange {
                digest: digest.clone(),
                offset,
                len: 0,
                size: total,
            });
        }
        let blob = self
            .inner
            .content_dir
            .as_ref()
            .map(|d| {
                d.join("blobs")
                    .join(digest.algorithm().as_str())
                    .join(digest.hex())
            })
            .unwrap_or_default();
        tracing::debug!(digest = %digest, dir = %dir.display(), total, written, offset, "reading a growing ingest");
        let follow = Follow {
            file: Arc::new(file),
            dir,
            blob,
            start: offset,
            pos: offset,
            total,
            grew_at: Instant::now(),
            done: false,
        };
        Ok(Some(Growing {
            total,
            stream: Box::pin(futures::stream::unfold(follow, next_chunk)),
        }))
    }
}

/// The next chunk of a growing read: what has been written past `pos`, waiting for more when
/// there is none yet.
async fn next_chunk(mut f: Follow) -> Option<(Result<bytes::Bytes, Error>, Follow)> {
    if f.done || f.pos >= f.total {
        return None;
    }
    loop {
        let fail = |f: &mut Follow, why: String| {
            f.done = true;
            Err(Error::Io {
                path: f.dir.join("data"),
                error: io::Error::new(io::ErrorKind::TimedOut, why),
            })
        };
        let size = match f.file.metadata() {
            Ok(m) => m.len().min(f.total),
            Err(error) => {
                f.done = true;
                let path = f.dir.join("data");
                return Some((Err(Error::Io { path, error }), f));
            }
        };
        if size > f.pos {
            let (n, permit) = budget(chunk_len(f.pos - f.start, size - f.pos));
            let (file, at) = (f.file.clone(), f.pos);
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                let got = file.read_at(&mut buf, at)?;
                buf.truncate(got);
                Ok::<_, io::Error>(buf)
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
            return match read {
                Ok(buf) if !buf.is_empty() => {
                    f.pos += buf.len() as u64;
                    f.grew_at = Instant::now();
                    Some((Ok(hold(buf, permit)), f))
                }
                Ok(_) => {
                    let r = fail(&mut f, "the ingest's data file shrank".into());
                    Some((r, f))
                }
                Err(error) => {
                    f.done = true;
                    let path = f.dir.join("data");
                    Some((Err(Error::Io { path, error }), f))
                }
            };
        }
        let idle = f.grew_at.elapsed();
        if idle >= STALL {
            let r = fail(&mut f, format!("no new bytes for {STALL:?}"));
            return Some((r, f));
        }
        if idle >= GONE_CHECK && !f.dir.exists() && !f.blob.exists() {
            let r = fail(&mut f, "the ingest ended without a committed blob".into());
            return Some((r, f));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Find the ingest directory of `digest` whose ref is in namespace `prefix` and open its data
/// file: (directory, file, total, bytes written).
fn open_ingest(
    content: &Path,
    prefix: &str,
    digest: &Digest,
) -> Option<(PathBuf, std::fs::File, u64, u64)> {
    let entries = std::fs::read_dir(content.join("ingest")).ok()?;
    for entry in entries.take(MAX_SCAN).flatten() {
        let dir = entry.path();
        let Some(reference) = small_text(&dir.join("ref")) else {
            continue;
        };
        let Some(api_ref) = reference.trim().strip_prefix(prefix) else {
            continue;
        };
        // `<n>/layer-sha256:<hex>`: the part after the sequence number is the API ref.
        let api_ref = api_ref.split_once('/').map_or(api_ref, |(_, r)| r);
        if !ref_is_for(api_ref, digest) {
            continue;
        }
        let Some(total) = small_text(&dir.join("total")).and_then(|t| t.trim().parse().ok()) else {
            continue;
        };
        let Ok(file) = std::fs::File::open(dir.join("data")) else {
            continue;
        };
        let written = file.metadata().map_or(0, |m| m.len());
        return Some((dir, file, total, written));
    }
    None
}

fn small_text(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_SMALL_FILE)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::io::Write;

    fn ingest(content: &Path, name: &str, reference: &str, total: u64) -> PathBuf {
        let dir = content.join("ingest").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ref"), reference).unwrap();
        std::fs::write(dir.join("total"), total.to_string()).unwrap();
        std::fs::write(dir.join("data"), b"").unwrap();
        dir
    }

    #[test]
    fn finds_the_ingest_by_namespace_and_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Digest::sha256_of(b"blob");
        let other = Digest::sha256_of(b"other");
        ingest(tmp.path(), "a", &format!("k8s.io/1/layer-{other}"), 4);
        ingest(tmp.path(), "b", &format!("default/3/layer-{d}"), 4);
        ingest(tmp.path(), "c", &format!("k8s.io/7/layer-{d}"), 4);
        let (dir, _, total, written) = open_ingest(tmp.path(), "k8s.io/", &d).unwrap();
        assert_eq!(
            (dir.file_name().unwrap().to_str(), total, written),
            (Some("c"), 4, 0)
        );
        assert!(open_ingest(tmp.path(), "moby/", &d).is_none());
    }

    #[tokio::test]
    async fn a_reader_follows_the_writer_and_stops_at_the_total() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Digest::sha256_of(b"0123456789");
        let dir = ingest(tmp.path(), "x", &format!("k8s.io/1/layer-{d}"), 10);
        let (dir2, file, total, _) = open_ingest(tmp.path(), "k8s.io/", &d).unwrap();
        assert_eq!(dir2, dir);
        let follow = Follow {
            file: Arc::new(file),
            dir: dir.clone(),
            blob: tmp.path().join("none"),
            start: 2,
            pos: 2,
            total,
            grew_at: Instant::now(),
            done: false,
        };
        let mut stream = Box::pin(futures::stream::unfold(follow, next_chunk));
        let writer = tokio::spawn(async move {
            let mut w = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("data"))
                .unwrap();
            for part in [&b"0123"[..], b"4567", b"89"] {
                w.write_all(part).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut got = Vec::new();
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        writer.await.unwrap();
        assert_eq!(got, b"23456789");
    }

    #[tokio::test]
    async fn an_ingest_that_disappears_ends_the_read_with_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Digest::sha256_of(b"x");
        let dir = ingest(tmp.path(), "x", &format!("k8s.io/1/layer-{d}"), 10);
        let (_, file, total, _) = open_ingest(tmp.path(), "k8s.io/", &d).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let follow = Follow {
            file: Arc::new(file),
            dir,
            blob: tmp.path().join("none"),
            start: 0,
            pos: 0,
            total,
            grew_at: Instant::now(),
            done: false,
        };
        let mut stream = Box::pin(futures::stream::unfold(follow, next_chunk));
        let started = Instant::now();
        let first = stream.next().await.expect("an item");
        assert!(first.is_err(), "an aborted ingest is an error");
        assert!(started.elapsed() < STALL, "found before the stall timeout");
        assert!(stream.next().await.is_none());
    }
}
