//! Large blobs from several peers at once.
//!
//! Above `multi_peer_threshold` a blob is cut into `piece_size` ranges that providers fetch in
//! parallel with `Range: bytes=a-b`, each written at its offset in the spool file (positional
//! writes: the spool file is the reorder buffer, on disk). Scheduling ([`run`]) is work
//! stealing without a central component:
//!
//! * every provider in use is a worker; an idle worker takes the next unfetched range, so a
//!   fast peer simply serves more pieces than a slow one. Providers are added as the DHT
//!   streams them in, up to `max_peers_per_blob`.
//! * a worker that breaks, ends early or stalls for `idle_timeout` is dropped for this blob;
//!   what it wrote is kept and the rest of its range goes back to the front of the queue.
//! * when the queue is empty and a worker is idle, a range whose worker runs at less than a
//!   third of the median observed throughput is re-issued, from that worker's current
//!   position, to the idle one; the first to finish wins and the other is cancelled. Slow is
//!   judged from measured bytes per second, not from a timeout.
//!
//! Bytes must leave in order, so a *follower* task reads the file back behind the *frontier*:
//! the contiguous prefix of finished ranges, extended into the range at its end while one job
//! alone writes it (whatever a job counted is on disk, and no other job writes there). Each
//! byte is read back once, and what is checked is the buffer that goes on, so no later write
//! can change bytes already used. Memory per blob is bounded by one 1 MiB write batch per
//! worker plus the follower's piece and the client queue, whatever the blob size. There are
//! two followers:
//!
//! * [`stream`], when the local containerd ingest can be aborted and a holder gave a piece
//!   list: every 1 MiB piece is checked against the list and sent to containerd as soon as
//!   the frontier passes it, with the rules of [`crate::stream`] (shared through
//!   [`crate::stream::outlet`]): no headers before the first checked piece, a bad piece marks
//!   whoever wrote it bad for the blob, and that piece and everything else they wrote past
//!   the checked prefix are fetched again from the other holders while the transfer goes on
//!   (a peer caught once is trusted with nothing more: one refetch per liar, not one per
//!   piece), the last piece is held until the whole digest matched, and a final mismatch (a
//!   lying list) aborts the ingest.
//! * [`download`] otherwise (no ingest control, no list within 500 ms, or a `Range` request):
//!   a hasher follows the frontier and the whole blob is verified before containerd sees a
//!   byte, as this crate did before streaming. Without a list a piece cannot be blamed on the
//!   peer that wrote it, so a multi-peer blob never streams unchecked bytes.
//!
//! Without a list a digest mismatch cannot be blamed on one peer when several wrote the blob,
//! and marking all of them bad would let one liar exclude every honest holder. So no one is
//! marked; the blob is fetched again from one provider at a time through the sequential path
//! ([`crate::download`]), where a mismatch does identify its peer and marks it bad.

use std::io;

use http::Method;
use shoal_oci::Digest;
use tokio::task::JoinHandle;

use crate::client::Opened;
use crate::download::{self, disk_failed};
use crate::events::FetchEventKind;
use crate::fetch::{Fetch, GaveUp};
use crate::spool::SpoolFile;

mod frontier;
mod range_job;
mod run;
mod spans;
mod steal;
pub(crate) mod stream;

use frontier::hash_frontier;
use run::Run;

/// Bytes a worker gathers before one positional write.
const WRITE_BATCH: usize = 1024 * 1024;
/// Bytes the hasher reads back per read.
const HASH_READ: usize = 1024 * 1024;
/// Most bytes hashed by one blocking task before the frontier is looked at again.
const HASH_STEP: u64 = 8 * 1024 * 1024;

/// Fill `file` with the blob `digest` (of `first.size` bytes) from several providers,
/// starting with the already opened `first` (at offset 0), until it verifies. Same contract as
/// [`download::download`]: on `Ok` the file holds exactly the verified blob.
pub(crate) async fn download(
    fetch: &mut Fetch,
    digest: &Digest,
    first: Opened,
    file: &mut SpoolFile,
) -> Result<(), GaveUp> {
    debug_assert_eq!(first.offset, 0);
    let shared = fetch.shared.clone();
    let size = first.size;
    let fd = file
        .positional(size)
        .await
        .map_err(|e| disk_failed(fetch, e))?;
    let mut run = Run::new(fetch, size, fd.clone());
    let mut hasher = HashTask(tokio::spawn(hash_frontier(
        fd,
        digest.algorithm(),
        size,
        run.frontier(),
    )));
    let outcome = match run.run(first, &mut hasher.0, None).await {
        Ok(Ok(got)) => Ok(got),
        Ok(Err(e)) => Err(Failure::Disk(e)),
        Err(f) => Err(f),
    };
    run.shutdown().await;
    match outcome {
        Ok(got) if &got == digest => {
            run.report_verified(digest, "blob verified (multi-peer)");
            Ok(())
        }
        Ok(got) => {
            let (known, peers) = run.into_peers();
            tracing::error!(digest = %digest, got = %got, ?peers, "digest mismatch from several peers; nothing was sent, fetching again from one peer at a time");
            shared.event(&fetch.key, None, FetchEventKind::DigestMismatch { peers });
            file.truncate().await.map_err(|e| disk_failed(fetch, e))?;
            fetch.pool.requeue(known);
            fetch.attempts = 0;
            let opened = match fetch.open(Method::GET, None, 0, Some(size)).await {
                Ok(o) => o,
                Err(GaveUp(why)) => return Err(gave_up(fetch, why)),
            };
            download::download(fetch, digest, opened, file).await
        }
        Err(Failure::Disk(e)) => Err(disk_failed(fetch, e)),
        Err(Failure::Peers(why)) => Err(gave_up(fetch, why)),
    }
}

fn gave_up(fetch: &Fetch, why: String) -> GaveUp {
    tracing::warn!(key = %fetch.key, reason = %why, "multi-peer download gave up; answering 404");
    fetch.shared.event(
        &fetch.key,
        None,
        FetchEventKind::GaveUp {
            reason: why.clone(),
        },
    );
    GaveUp(why)
}

/// Why a multi-peer download stopped without a digest to compare.
enum Failure {
    Disk(io::Error),
    Peers(String),
}

/// Aborts the hasher task if the download is abandoned.
struct HashTask(JoinHandle<io::Result<Digest>>);

impl Drop for HashTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
