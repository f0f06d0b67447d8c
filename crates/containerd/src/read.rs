//! Reading blobs as streams of [`Bytes`], from an offset, optionally bounded.
//!
//! Every read first asks containerd (`Content.Info`, in this source's namespace) whether the
//! blob exists and how big it is: the on-disk store is shared by all namespaces, so the file
//! existing proves nothing. Then the bytes come from `<content_dir>/blobs/<alg>/<hex>` when that
//! file is readable and has the expected size (the fast path: no gRPC framing), and through
//! `Content.Read` otherwise. The path is built only from a validated [`Digest`], whose hex part
//! cannot contain `/` or `..`.
//!
//! # What a reader holds
//!
//! A reader of a blob may be a client taking a byte a second, and a node serves thousands at
//! once, so a read holds nothing while its consumer is not asking for bytes:
//! * **no thread**: each chunk is read by one short blocking call (`spawn_blocking` for the
//!   file, one windowed `Content.Read` for the API) started when the consumer polls for it;
//!   between chunks nothing runs. (A thread per reader for the whole transfer exhausted tokio's
//!   blocking pool at about 512 slow readers, and then every request waited.)
//! * **at most one chunk** of memory: nothing is read ahead. The chunk size follows what the
//!   consumer has taken ([`chunk_len`]): [`MIN_CHUNK`] at first, growing to [`MAX_CHUNK`] after
//!   a few MiB (chunks above 256 KiB from a process-wide budget of 64). A reader that stalls early (a slow client stalls as soon as the kernel's
//!   socket buffers are full, a few hundred KiB) keeps holding a small chunk; a fast one gets
//!   large chunks and few hand-offs.
//! * on the disk path, **one open file**; on the API path, one short gRPC stream per chunk
//!   (containerd's own `Content.Read` stream would push up to its flow-control window, 2 MiB,
//!   into this process per reader).
//!
//! Zero-copy `sendfile` was not used: the HTTP server (hyper) owns the socket and frames the
//! body, and a body can only hand it bytes; the copy from the page cache costs well under the
//! socket write itself (see `docs/benchmarks.md`, slow readers).

use std::fmt;
use std::io::{Read, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use containerd_client::services::v1::ReadContentRequest;
use futures::{Stream, StreamExt};
use shoal_oci::Digest;
use tokio::io::AsyncSeekExt;
use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::Code;

use crate::client::ContentSource;
use crate::error::Error;

/// Smallest chunk a read yields (but for the last one): what a reader that has taken little
/// gets.
pub const MIN_CHUNK: usize = 16 * 1024;
/// Largest chunk a read yields. Each chunk is one hand-off to a blocking thread (a futex wake
/// and two context switches, most of the holder's CPU besides the copies at 256 KiB): a reader
/// that has taken 16 MiB is fast, and 1 MiB chunks cut its hand-offs to one per MiB.
pub const MAX_CHUNK: usize = 1024 * 1024;
/// Chunks up to this size are always allowed; larger ones need a [`LARGE_CHUNKS`] permit.
const SMALL_MAX: usize = 256 * 1024;
/// Chunks larger than [`SMALL_MAX`] alive at once in this process (64 x 1 MiB): a reader that
/// was fast and then stopped keeps the chunk it stopped on, so without this bound every request
/// slot could hold 1 MiB. Past it, reads fall back to [`SMALL_MAX`] chunks.
const LARGE_CHUNK_BUDGET: usize = 64;
static LARGE_CHUNKS: Semaphore = Semaphore::const_new(LARGE_CHUNK_BUDGET);

/// The chunk size a read may use for a wanted `n`, with the permit that a large chunk holds
/// until its bytes are dropped (written to the socket, or the reader gone).
pub(crate) fn budget(n: usize) -> (usize, Option<SemaphorePermit<'static>>) {
    if n <= SMALL_MAX {
        return (n, None);
    }
    match LARGE_CHUNKS.try_acquire() {
        Ok(permit) => (n, Some(permit)),
        Err(_) => (SMALL_MAX, None),
    }
}

/// A chunk's bytes with the [`LARGE_CHUNKS`] permit they hold, released when the last
/// [`Bytes`] referring to them is dropped.
struct Held<T> {
    bytes: T,
    _permit: SemaphorePermit<'static>,
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Held<T> {
    fn as_ref(&self) -> &[u8] {
        self.bytes.as_ref()
    }
}

pub(crate) fn hold<T>(bytes: T, permit: Option<SemaphorePermit<'static>>) -> Bytes
where
    T: AsRef<[u8]> + Send + 'static,
    Bytes: From<T>,
{
    match permit {
        Some(permit) => Bytes::from_owner(Held {
            bytes,
            _permit: permit,
        }),
        None => Bytes::from(bytes),
    }
}

/// The bytes of a blob, as a fallible stream.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>;

/// Where the bytes of a [`Blob`] come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPath {
    /// containerd's content directory, read directly.
    Disk,
    /// containerd's `Content.Read` gRPC stream.
    Rpc,
}

/// An open read of (part of) a blob.
pub struct Blob {
    /// Size of the whole blob.
    pub size: u64,
    /// First byte this stream yields.
    pub offset: u64,
    /// Number of bytes this stream yields; a stream that ends early yields
    /// [`Error::ShortRead`] instead of ending.
    pub len: u64,
    pub path: ReadPath,
    pub stream: ByteStream,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob")
            .field("size", &self.size)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Size of the next chunk of a read that has yielded `taken` bytes and has `left` to go: a
/// sixteenth of what was taken, as a power of two within [`MIN_CHUNK`]..=[`MAX_CHUNK`]
/// (16 KiB for the first 512 KiB, doubling up to 1 MiB from 16 MiB on), never more than `left`.
pub fn chunk_len(taken: u64, left: u64) -> usize {
    let want = usize::try_from(taken / 16)
        .unwrap_or(MAX_CHUNK)
        .clamp(MIN_CHUNK, MAX_CHUNK);
    // Round down to a power of two: few distinct allocation sizes.
    let want = 1usize << (usize::BITS - 1 - want.leading_zeros());
    usize::try_from(left).map_or(want, |l| l.min(want))
}

/// Where a chunked read is: what it reads from, the next offset and the end.
struct Cursor<S> {
    source: S,
    pos: u64,
    end: u64,
}

impl<S> Cursor<S> {
    /// The next chunk's offset and length, `None` when done.
    fn next(&self, start: u64) -> Option<(u64, usize)> {
        (self.pos < self.end).then(|| (self.pos, chunk_len(self.pos - start, self.end - self.pos)))
    }
}

impl ContentSource {
    /// Reads `digest` from `offset` to its end.
    pub async fn read(&self, digest: &Digest, offset: u64) -> Result<Blob, Error> {
        self.open(digest, offset, None).await
    }

    /// Reads `len` bytes of `digest` starting at `offset` (both must lie within the blob).
    pub async fn read_range(&self, digest: &Digest, offset: u64, len: u64) -> Result<Blob, Error> {
        self.open(digest, offset, Some(len)).await
    }

    /// Reads a whole blob into memory, refusing blobs over `limit` bytes.
    pub(crate) async fn read_to_vec(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, Error> {
        let blob = self.read(digest, 0).await?;
        if blob.size > limit {
            return Err(Error::TooLarge {
                digest: digest.clone(),
                size: blob.size,
                limit,
            });
        }
        let mut out = Vec::with_capacity(usize::try_from(blob.size).unwrap_or(0));
        let mut stream = blob.stream;
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    async fn open(&self, digest: &Digest, offset: u64, len: Option<u64>) -> Result<Blob, Error> {
        let size = self
            .stat(digest)
            .await?
            .ok_or_else(|| Error::NotFound(digest.clone()))?;
        let len = len.unwrap_or(size.saturating_sub(offset));
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange {
                digest: digest.clone(),
                offset,
                len,
                size,
            });
        }
        let (path, stream) = match self.open_disk(digest, size, offset, len).await {
            Some(stream) => (ReadPath::Disk, stream),
            None => (ReadPath::Rpc, self.open_rpc(digest, offset, len)),
        };
        tracing::debug!(digest = %digest, offset, len, ?path, "reading blob");
        Ok(Blob {
            size,
            offset,
            len,
            path,
            stream: checked_len(stream, digest.clone(), len),
        })
    }

    /// The blob's file in the content directory, if there is one we can read.
    fn blob_path(&self, digest: &Digest) -> Option<PathBuf> {
        let dir = self.inner.content_dir.as_ref()?;
        Some(
            dir.join("blobs")
                .join(digest.algorithm().as_str())
                .join(digest.hex()),
        )
    }

    async fn open_disk(
        &self,
        digest: &Digest,
        size: u64,
        offset: u64,
        len: u64,
    ) -> Option<ByteStream> {
        let path = self.blob_path(digest)?;
        let opened = async {
            let mut file = tokio::fs::File::open(&path).await?;
            let on_disk = file.metadata().await?.len();
            if on_disk != size {
                return Err(std::io::Error::other(format!(
                    "file has {on_disk} bytes, containerd says {size}"
                )));
            }
            file.seek(SeekFrom::Start(offset)).await?;
            Ok(file)
        };
        let file = match opened.await {
            Ok(file) => Arc::new(file.into_std().await),
            Err(e) => {
                tracing::debug!(digest = %digest, path = %path.display(), error = %e,
                    "content directory not usable; reading through the content API");
                return None;
            }
        };
        let cursor = Cursor {
            source: (file, Arc::new(path)),
            pos: offset,
            end: offset + len,
        };
        Some(Box::pin(futures::stream::unfold(
            cursor,
            move |mut c| async move {
                let (_, n) = c.next(offset)?;
                let (n, permit) = budget(n);
                let (file, path) = c.source.clone();
                // One blocking call per chunk; the file's position moves with it (one chunk at
                // a time, so reads never overlap).
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = Vec::with_capacity(n);
                    (&*file).take(n as u64).read_to_end(&mut buf)?;
                    if buf.len() < n {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("file ended {} bytes early", n - buf.len()),
                        ));
                    }
                    Ok(buf)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                match read {
                    Ok(buf) => {
                        c.pos += n as u64;
                        Some((Ok(hold(buf, permit)), c))
                    }
                    Err(error) => {
                        let err = Error::Io {
                            path: path.to_path_buf(),
                            error,
                        };
                        c.pos = c.end;
                        Some((Err(err), c))
                    }
                }
            },
        )))
    }

    /// `len` bytes from `offset` through `Content.Read`, one request per chunk so that at most
    /// one chunk is in this process whatever the consumer's speed.
    fn open_rpc(&self, digest: &Digest, offset: u64, len: u64) -> ByteStream {
        let cursor = Cursor {
            source: (self.clone(), digest.clone()),
            pos: offset,
            end: offset + len,
        };
        Box::pin(futures::stream::unfold(cursor, move |mut c| async move {
            let (at, n) = c.next(offset)?;
            let (n, permit) = budget(n);
            let (src, digest) = &c.source;
            let read = src.read_window(digest, at, n).await;
            match read {
                // An empty answer ends the stream; the length check reports the short read.
                Ok(chunk) if chunk.is_empty() => None,
                Ok(chunk) => {
                    c.pos += chunk.len() as u64;
                    Some((Ok(hold(chunk, permit)), c))
                }
                Err(e) => {
                    c.pos = c.end;
                    Some((Err(e), c))
                }
            }
        }))
    }

    /// One `Content.Read` of `n` bytes at `offset`, gathered (containerd sends at most 1 MiB a
    /// message, so a chunk is one message).
    async fn read_window(&self, digest: &Digest, offset: u64, n: usize) -> Result<Bytes, Error> {
        let req = self.request(ReadContentRequest {
            digest: digest.to_string(),
            offset: i64::try_from(offset).unwrap_or(i64::MAX),
            size: i64::try_from(n).unwrap_or(i64::MAX),
        });
        let mut stream = match self.content().read(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Err(Error::NotFound(digest.clone())),
            Err(s) => return Err(Error::rpc("Content.Read", s)),
        };
        // The usual single message is passed on as it is; several are joined.
        let mut first: Option<Bytes> = None;
        let mut joined = BytesMut::new();
        while let Some(msg) = stream.message().await.transpose() {
            let data = Bytes::from(msg.map_err(|s| Error::rpc("Content.Read", s))?.data);
            if first.is_none() && joined.is_empty() {
                first = Some(data);
                continue;
            }
            if let Some(f) = first.take() {
                joined.reserve(n);
                joined.extend_from_slice(&f);
            }
            joined.extend_from_slice(&data);
        }
        Ok(first.unwrap_or_else(|| joined.freeze()))
    }
}

/// Ends `inner` with [`Error::ShortRead`] if it yields fewer than `expected` bytes, and cuts
/// it at `expected` if it yields more.
fn checked_len(inner: ByteStream, digest: Digest, expected: u64) -> ByteStream {
    let state = (inner, 0u64, false);
    Box::pin(futures::stream::unfold(
        state,
        move |(mut inner, got, done)| {
            let digest = digest.clone();
            async move {
                if done {
                    return None;
                }
                if got >= expected {
                    return None;
                }
                match inner.next().await {
                    Some(Ok(mut chunk)) => {
                        let room = expected - got;
                        if chunk.len() as u64 > room {
                            chunk.truncate(usize::try_from(room).unwrap_or(usize::MAX));
                        }
                        let got = got + chunk.len() as u64;
                        Some((Ok(chunk), (inner, got, false)))
                    }
                    Some(Err(e)) => Some((Err(e), (inner, got, true))),
                    None => Some((
                        Err(Error::ShortRead {
                            digest,
                            expected,
                            got,
                        }),
                        (inner, got, true),
                    )),
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_chunks_are_budgeted_and_the_budget_comes_back_with_the_bytes() {
        let small = budget(SMALL_MAX);
        assert!(small.1.is_none());
        let mut held = Vec::new();
        for _ in 0..LARGE_CHUNK_BUDGET {
            let (n, permit) = budget(MAX_CHUNK);
            assert_eq!(n, MAX_CHUNK);
            held.push(hold(vec![0u8; 4], permit));
        }
        // Budget spent: the next read gets a small chunk and no permit.
        let (n, permit) = budget(MAX_CHUNK);
        assert_eq!((n, permit.is_none()), (SMALL_MAX, true));
        // A slice of a chunk keeps its permit; dropping every reference returns it.
        let slice = held[0].slice(1..3);
        held.clear();
        assert_eq!(LARGE_CHUNKS.available_permits(), LARGE_CHUNK_BUDGET - 1);
        drop(slice);
        assert_eq!(LARGE_CHUNKS.available_permits(), LARGE_CHUNK_BUDGET);
    }

    #[test]
    fn chunks_grow_with_what_was_taken_and_stop_at_the_end() {
        assert_eq!(chunk_len(0, u64::MAX), MIN_CHUNK);
        assert_eq!(chunk_len(256 * 1024, u64::MAX), MIN_CHUNK);
        assert_eq!(chunk_len(512 * 1024, u64::MAX), 32 * 1024);
        assert_eq!(chunk_len(600 * 1024, u64::MAX), 32 * 1024);
        assert_eq!(chunk_len(4 << 20, u64::MAX), 256 * 1024);
        assert_eq!(chunk_len(16 << 20, u64::MAX), MAX_CHUNK);
        assert_eq!(chunk_len(1 << 40, u64::MAX), MAX_CHUNK);
        assert_eq!(chunk_len(0, 10), 10);
        assert_eq!(chunk_len(8 << 20, 100_000), 100_000);
        assert_eq!(chunk_len(0, 0), 0);
    }
}
