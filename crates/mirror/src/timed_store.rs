//! A time limit on every call into the local store (containerd).
//!
//! containerd has no timeout towards its mirror, and the mirror's local reads go back to
//! containerd (Content and Images APIs). If containerd is wedged, a request must still end: a
//! lookup that takes longer than the limit counts as "not held here" (the request moves on to
//! peers or a 404), and a read that cannot start, or whose next chunk does not come within the
//! limit, fails (the connection is cut and containerd moves to the next host).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use shoal_oci::{Digest, TagKey};

use crate::source::{BlobInfo, ByteStream, Descriptor, Growing, LocalStore};

pub(crate) struct TimedStore {
    pub inner: Arc<dyn LocalStore>,
    pub limit: Duration,
}

fn timed_out(what: &str, limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("local store: {what} took longer than {limit:?}"),
    )
}

impl LocalStore for TimedStore {
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Option<BlobInfo>> {
        Box::pin(async move {
            match tokio::time::timeout(self.limit, self.inner.stat(digest)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(digest = %digest, limit = ?self.limit, "local stat timed out; treating as absent");
                    None
                }
            }
        })
    }

    fn read<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: Option<u64>,
    ) -> BoxFuture<'a, io::Result<ByteStream>> {
        Box::pin(async move {
            let limit = self.limit;
            let stream = tokio::time::timeout(limit, self.inner.read(digest, offset, len))
                .await
                .map_err(|_| timed_out("opening a read", limit))??;
            // Every chunk must come within the limit; after a stall the stream ends in an error.
            let timed = futures::stream::unfold(Some(stream), move |s| async move {
                let mut s = s?;
                match tokio::time::timeout(limit, s.next()).await {
                    Ok(Some(item)) => Some((item, Some(s))),
                    Ok(None) => None,
                    Err(_) => Some((Err(timed_out("the next chunk of a read", limit)), None)),
                }
            });
            Ok(timed.boxed())
        })
    }

    /// Only finding the write is timed: a growing read waits for its writer by design, and
    /// bounds that wait itself.
    fn growing<'a>(&'a self, digest: &'a Digest, offset: u64) -> BoxFuture<'a, Option<Growing>> {
        Box::pin(async move {
            tokio::time::timeout(self.limit, self.inner.growing(digest, offset))
                .await
                .ok()
                .flatten()
        })
    }

    fn resolve_tag<'a>(&'a self, tag: &'a TagKey) -> BoxFuture<'a, Option<Descriptor>> {
        Box::pin(async move {
            match tokio::time::timeout(self.limit, self.inner.resolve_tag(tag)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(tag = %tag, limit = ?self.limit, "local tag lookup timed out; treating as absent");
                    None
                }
            }
        })
    }
}
