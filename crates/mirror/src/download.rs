//! Downloading a large blob from peers into a spool file and verifying it before anything is
//! sent to the client.
//!
//! Why not stream while hashing: a mirror can only detect corruption at the blob's end, and by
//! then containerd has written the prefix. Cutting the body off does not save it: containerd's
//! HTTP reader reconnects after an unexpected EOF with `Range: bytes=<offset>-`, trying its
//! hosts in order, so the upstream registry answers 206 with the correct suffix, containerd
//! stitches it onto the corrupt prefix, the commit fails with "unexpected commit digest", and
//! the complete-but-wrong ingest makes every later pull of the image fail at once. So peer
//! bytes reach containerd only after the whole blob has been verified, and every failure before
//! that is a clean 404 (containerd then fetches the blob upstream from byte 0).
//!
//! Within one download:
//! * a peer stream that breaks, ends early, overruns its size or stalls for `idle_timeout`
//!   continues from the next provider with `Range: bytes=<offset>-` at the exact offset, with
//!   the hash state kept;
//! * a blob that does not hash to its digest marks every contributing peer bad for it, is
//!   truncated, and starts over from byte 0 with the next provider not marked bad;
//! * every peer request counts against the request's `max_attempts` ([`Fetch`]), so the work
//!   done is bounded whatever the peers do.

use futures::StreamExt;
use http::Method;
use shoal_oci::Digest;

use crate::client::Opened;
use crate::events::FetchEventKind;
use crate::fetch::{Fetch, GaveUp};
use crate::spool::SpoolFile;

/// How reading one peer stream ended.
enum Pump {
    /// All `size` bytes of the blob are in the spool file.
    Complete,
    /// The peer failed; the transfer may continue elsewhere from the current offset.
    Broke(String),
    /// Writing the spool file failed; nothing can continue.
    Disk(std::io::Error),
}

/// Fill `file` with the blob `digest` (of `first.size` bytes) from peers, starting with the
/// already opened `first` (at offset 0), until it verifies. On `Ok` the file holds exactly the
/// verified blob; on `Err` no byte may be used and the caller answers 404.
pub(crate) async fn download(
    fetch: &mut Fetch,
    digest: &Digest,
    first: Opened,
    file: &mut SpoolFile,
) -> Result<(), GaveUp> {
    debug_assert_eq!(first.offset, 0);
    let shared = fetch.shared.clone();
    let size = first.size;
    let mut current = first;
    let mut contributors = vec![current.provider.peer.clone()];
    let mut offset = 0u64;
    loop {
        let resume_at = match pump(fetch, &mut current, file, &mut offset, size).await {
            Pump::Complete => {
                let got = file.digest().await.map_err(|e| disk_failed(fetch, e))?;
                if &got == digest {
                    tracing::info!(digest = %digest, bytes = size, peers = ?contributors, "blob verified");
                    shared.event(
                        &fetch.key,
                        contributors.last().map(String::as_str),
                        FetchEventKind::Verified { bytes: size },
                    );
                    return Ok(());
                }
                for peer in &contributors {
                    shared.bad.mark(peer, digest);
                }
                tracing::error!(digest = %digest, got = %got, peers = ?contributors, "digest mismatch from peer; spooled bytes discarded, nothing was sent, starting over");
                let peers = std::mem::take(&mut contributors);
                shared.event(
                    &fetch.key,
                    peers.last().map(String::as_str),
                    FetchEventKind::DigestMismatch {
                        peers: peers.clone(),
                    },
                );
                file.truncate().await.map_err(|e| disk_failed(fetch, e))?;
                offset = 0;
                0
            }
            Pump::Broke(reason) => {
                let peer = &current.provider.peer;
                tracing::warn!(digest = %digest, peer = %peer, offset, %reason, "peer stream failed; continuing elsewhere");
                shared.event(
                    &fetch.key,
                    Some(peer),
                    FetchEventKind::PeerFailed { offset, reason },
                );
                offset
            }
            Pump::Disk(e) => return Err(disk_failed(fetch, e)),
        };
        match fetch.open(Method::GET, None, resume_at, Some(size)).await {
            Ok(opened) => {
                if !contributors.contains(&opened.provider.peer) {
                    contributors.push(opened.provider.peer.clone());
                }
                current = opened;
            }
            Err(GaveUp(why)) => {
                tracing::warn!(digest = %digest, offset = resume_at, reason = %why, "no peer left for the blob; answering 404");
                shared.event(
                    &fetch.key,
                    None,
                    FetchEventKind::GaveUp {
                        reason: why.clone(),
                    },
                );
                return Err(GaveUp(why));
            }
        }
    }
}

/// Copy `cur`'s body into `file` until the blob is complete or the peer fails. A stall is
/// counted and marks the peer for this blob.
async fn pump(
    fetch: &mut Fetch,
    cur: &mut Opened,
    file: &mut SpoolFile,
    offset: &mut u64,
    size: u64,
) -> Pump {
    let idle = fetch.shared.cfg.idle_timeout;
    loop {
        if *offset == size {
            return Pump::Complete;
        }
        let chunk = match tokio::time::timeout(idle, cur.body.next()).await {
            Ok(Some(Ok(c))) => c,
            Ok(Some(Err(e))) => return Pump::Broke(format!("transfer broke: {e}")),
            Ok(None) => return Pump::Broke(format!("body ended at {offset} of {size} bytes")),
            Err(_) => {
                fetch.shared.metrics.peer_stall();
                if let Some(d) = fetch.path.digest() {
                    fetch.shared.bad.mark(&cur.provider.peer, d);
                }
                return Pump::Broke(format!("no data for {idle:?}"));
            }
        };
        fetch.touch();
        let len = chunk.len() as u64;
        if *offset + len > size {
            // Bytes beyond the announced size are never kept.
            return Pump::Broke("peer sent more than its size".into());
        }
        if let Err(e) = file.write(chunk).await {
            return Pump::Disk(e);
        }
        *offset += len;
    }
}

pub(crate) fn disk_failed(fetch: &Fetch, e: std::io::Error) -> GaveUp {
    let reason = format!("spool file failed: {e}");
    tracing::error!(key = %fetch.key, %reason, "cannot spool the blob; answering 404");
    fetch.shared.event(
        &fetch.key,
        None,
        FetchEventKind::GaveUp {
            reason: reason.clone(),
        },
    );
    GaveUp(reason)
}
