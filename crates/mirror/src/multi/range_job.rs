//! One range request of a multi-peer download: open (or reuse) a peer response for
//! `[start, end)`, write its bytes at their offsets in the spool file in batches, report
//! progress, and end with why it stopped. The scheduler in the parent module decides what runs.

use crate::client::{Opened, PeerPath};
use crate::source::Provider;
use crate::state::Shared;
use bytes::Bytes;
use futures::StreamExt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;

use super::WRITE_BATCH;
use super::run::JobEnd;

/// One range request, running in its own task.
pub(super) struct RangeJob {
    pub(super) shared: Arc<Shared>,
    pub(super) registry: String,
    pub(super) path: PeerPath,
    pub(super) provider: Provider,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) size: u64,
    pub(super) fd: Arc<File>,
    pub(super) progress: Arc<AtomicU64>,
    pub(super) cancel: CancellationToken,
    pub(super) activity: Option<crate::server::Activity>,
}

impl RangeJob {
    pub(super) async fn run(self, pre: Option<Opened>) -> JobEnd {
        let mut opened = match pre {
            Some(o) => o,
            None => {
                let open = self.shared.client.open_range(
                    self.provider.clone(),
                    &self.registry,
                    &self.path,
                    self.start,
                    self.end,
                    self.size,
                );
                tokio::select! {
                    _ = self.cancel.cancelled() => return JobEnd::Cancelled,
                    r = open => match r {
                        Ok(o) => o,
                        Err(e) => return JobEnd::Broke(e.to_string()),
                    },
                }
            }
        };
        let idle = self.shared.cfg.idle_timeout;
        let want = self.end - self.start;
        let mut received = 0u64;
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batch_len = 0usize;
        loop {
            if received == want || batch_len >= WRITE_BATCH {
                if let Err(e) = self.flush(&mut batch).await {
                    return JobEnd::Disk(e);
                }
                batch_len = 0;
                if received == want {
                    return JobEnd::Done;
                }
            }
            let next = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return JobEnd::Cancelled,
                n = tokio::time::timeout(idle, opened.body.next()) => n,
            };
            let mut chunk = match next {
                Ok(Some(Ok(c))) => c,
                Ok(Some(Err(e))) => {
                    return self.broke(&mut batch, format!("transfer broke: {e}")).await;
                }
                Ok(None) => {
                    let why = format!("body ended at {} of {}", self.start + received, self.end);
                    return self.broke(&mut batch, why).await;
                }
                Err(_) => {
                    // A stall: counted, and the peer marked for this blob.
                    self.shared.metrics.peer_stall();
                    if let Some(d) = self.path.digest() {
                        self.shared.bad.mark(&self.provider.peer, d);
                    }
                    return self
                        .broke(&mut batch, format!("no data for {idle:?}"))
                        .await;
                }
            };
            if let Some(a) = &self.activity {
                a.touch();
            }
            let left = want - received;
            if chunk.len() as u64 > left {
                if opened.offset == 0 && self.start == 0 && self.end < self.size {
                    // The first response is the whole blob; this job keeps its first piece only.
                    chunk = chunk.slice(..left as usize);
                } else {
                    return self
                        .broke(&mut batch, "peer sent more than asked".into())
                        .await;
                }
            }
            received += chunk.len() as u64;
            batch_len += chunk.len();
            batch.push(chunk);
        }
    }

    /// Keep what arrived before the failure (it is good as far as anyone knows; the whole-blob
    /// hash decides) and report the failure.
    async fn broke(&self, batch: &mut Vec<Bytes>, why: String) -> JobEnd {
        match self.flush(batch).await {
            Ok(()) => JobEnd::Broke(why),
            Err(e) => JobEnd::Disk(e),
        }
    }

    /// Write the batch at the job's current position and count it.
    async fn flush(&self, batch: &mut Vec<Bytes>) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let chunks = std::mem::take(batch);
        let at = self.start + self.progress.load(Ordering::Acquire);
        let fd = self.fd.clone();
        let written = tokio::task::spawn_blocking(move || -> io::Result<u64> {
            let mut off = at;
            for c in &chunks {
                fd.write_all_at(c, off)?;
                off += c.len() as u64;
            }
            Ok(off - at)
        })
        .await
        .map_err(io::Error::other)??;
        self.progress.fetch_add(written, Ordering::Release);
        Ok(())
    }
}
