//! The verified, resumable body of a large blob fetched from peers.
//!
//! Bytes are hashed as they pass and forwarded at once, except the piece that completes what
//! the client asked for: it is held back until the whole blob has hashed to its digest. On a
//! mismatch the body ends with an error instead, so hyper resets the connection and containerd
//! never receives a complete body of the advertised `Content-Length` (it cannot commit it).
//!
//! When a peer stream breaks (error, early end, idle timeout) the transfer continues from the
//! next provider with `Range: bytes=<offset>-` inside the same response, keeping the hasher
//! state; attempts are bounded by the request's [`Fetch`]. When none are left the body errors.

use std::io;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::Method;
use shoal_oci::{Digest, Hasher};

use crate::client::Opened;
use crate::events::FetchEventKind;
use crate::fetch::{Fetch, GaveUp};
use crate::metrics::Source;

/// A streaming, verifying transfer of one blob from peers.
pub(crate) struct VerifiedBody {
    fetch: Fetch,
    digest: Digest,
    size: u64,
    hasher: Option<Hasher>,
    /// Next absolute blob offset expected from the current peer.
    offset: u64,
    /// Client window `[start, end)` of the blob.
    start: u64,
    end: u64,
    held: Option<Bytes>,
    current: Option<Opened>,
    contributors: Vec<String>,
    sent: u64,
    done: bool,
}

impl VerifiedBody {
    /// `opened` must start at offset 0: every byte of the blob is hashed, even those before
    /// `start` (a resumed download) which are read and dropped.
    pub(crate) fn new(fetch: Fetch, digest: Digest, opened: Opened, start: u64, end: u64) -> Self {
        debug_assert_eq!(opened.offset, 0);
        VerifiedBody {
            fetch,
            hasher: Some(digest.hasher()),
            digest,
            size: opened.size,
            offset: 0,
            start,
            end,
            held: None,
            contributors: vec![opened.provider.peer.clone()],
            current: Some(opened),
            sent: 0,
            done: false,
        }
    }

    pub(crate) fn into_stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures::stream::unfold(self, |mut body| async move {
            let item = body.next_item().await?;
            Some((item, body))
        })
    }

    async fn next_item(&mut self) -> Option<io::Result<Bytes>> {
        let idle = self.fetch.shared.cfg.idle_timeout;
        loop {
            if self.done {
                return None;
            }
            let Some(cur) = self.current.as_mut() else {
                self.done = true;
                return Some(Err(io::Error::other("no peer stream")));
            };
            let chunk = match tokio::time::timeout(idle, cur.body.next()).await {
                Ok(Some(Ok(c))) => c,
                Ok(Some(Err(e))) => {
                    if let Err(e) = self.failover(format!("transfer broke: {e}")).await {
                        return Some(Err(e));
                    }
                    continue;
                }
                Ok(None) if self.offset == self.size => return self.finish(Bytes::new()),
                Ok(None) => {
                    let reason = format!("body ended at {} of {} bytes", self.offset, self.size);
                    if let Err(e) = self.failover(reason).await {
                        return Some(Err(e));
                    }
                    continue;
                }
                Err(_) => {
                    if let Err(e) = self.failover(format!("no data for {idle:?}")).await {
                        return Some(Err(e));
                    }
                    continue;
                }
            };
            let len = chunk.len() as u64;
            if self.offset + len > self.size {
                // Bytes beyond the announced size are never hashed or forwarded.
                if let Err(e) = self.failover("peer sent more than its size".into()).await {
                    return Some(Err(e));
                }
                continue;
            }
            if let Some(h) = self.hasher.as_mut() {
                h.update(&chunk);
            }
            let chunk_start = self.offset;
            self.offset += len;
            let lo = chunk_start.max(self.start);
            let hi = self.offset.min(self.end);
            let out = if lo < hi {
                chunk.slice((lo - chunk_start) as usize..(hi - chunk_start) as usize)
            } else {
                Bytes::new()
            };
            if self.offset == self.size {
                return self.finish(out);
            }
            if out.is_empty() {
                continue;
            }
            if hi == self.end {
                // The client's window is complete before the blob is: hold its last piece
                // until the rest of the blob has been read and verified.
                self.held = Some(out);
                continue;
            }
            return Some(Ok(self.emit(out)));
        }
    }

    fn emit(&mut self, out: Bytes) -> Bytes {
        self.sent += out.len() as u64;
        self.fetch
            .shared
            .metrics
            .add_bytes(Source::Peer, out.len() as u64);
        out
    }

    fn finish(&mut self, out: Bytes) -> Option<io::Result<Bytes>> {
        self.done = true;
        let got = self.hasher.take().map(Hasher::finish);
        let shared = self.fetch.shared.clone();
        if got.as_ref() != Some(&self.digest) {
            for peer in &self.contributors {
                shared.bad.mark(peer, &self.digest);
            }
            tracing::error!(digest = %self.digest, peers = ?self.contributors, "digest mismatch from peer; aborting response");
            shared.event(
                &self.fetch.key,
                self.contributors.last().map(String::as_str),
                FetchEventKind::DigestMismatch {
                    peers: self.contributors.clone(),
                },
            );
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {} failed verification", self.digest),
            )));
        }
        let tail = match self.held.take() {
            Some(held) => held,
            None => out,
        };
        let tail = self.emit(tail);
        tracing::info!(digest = %self.digest, bytes = self.sent, peers = ?self.contributors, "blob verified");
        shared.event(
            &self.fetch.key,
            self.contributors.last().map(String::as_str),
            FetchEventKind::Verified { bytes: self.sent },
        );
        if tail.is_empty() {
            None
        } else {
            Some(Ok(tail))
        }
    }

    /// Continue from the next provider at the current offset, or end the body with an error.
    async fn failover(&mut self, reason: String) -> Result<(), io::Error> {
        let failed = self.current.take().map(|o| o.provider.peer);
        tracing::warn!(digest = %self.digest, peer = ?failed, offset = self.offset, %reason, "peer stream failed; continuing elsewhere");
        self.fetch.shared.event(
            &self.fetch.key,
            failed.as_deref(),
            FetchEventKind::PeerFailed {
                offset: self.offset,
                reason,
            },
        );
        match self
            .fetch
            .open(Method::GET, None, self.offset, Some(self.size))
            .await
        {
            Ok(opened) => {
                if !self.contributors.contains(&opened.provider.peer) {
                    self.contributors.push(opened.provider.peer.clone());
                }
                self.current = Some(opened);
                Ok(())
            }
            Err(GaveUp(why)) => {
                self.done = true;
                self.fetch.shared.event(
                    &self.fetch.key,
                    None,
                    FetchEventKind::GaveUp {
                        reason: why.clone(),
                    },
                );
                Err(io::Error::other(format!(
                    "blob {} aborted at byte {}: {why}",
                    self.digest, self.offset
                )))
            }
        }
    }
}
