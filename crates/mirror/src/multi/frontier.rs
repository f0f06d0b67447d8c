//! The in-order hasher of a multi-peer download: it follows the contiguous prefix of finished
//! ranges (the frontier) and hashes the spool file up to it, so the whole-blob digest is known
//! the moment the last range lands, with memory bounded by one read buffer.

use shoal_oci::{Algorithm, Digest};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use tokio::sync::watch;

use super::{HASH_READ, HASH_STEP};

/// Hash the file in order as the frontier of finished ranges advances; returns the digest of
/// all `size` bytes, or an error if the frontier's sender goes away first.
pub(super) async fn hash_frontier(
    fd: Arc<File>,
    algorithm: Algorithm,
    size: u64,
    mut frontier: watch::Receiver<u64>,
) -> io::Result<Digest> {
    let mut hasher = algorithm.hasher();
    let mut hashed = 0u64;
    while hashed < size {
        let ready = *frontier.borrow_and_update();
        if ready <= hashed {
            if frontier.changed().await.is_err() {
                return Err(io::Error::other(
                    "download ended before the blob was complete",
                ));
            }
            continue;
        }
        let upto = ready.min(hashed + HASH_STEP).min(size);
        let fd = fd.clone();
        hasher = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let mut buf = vec![0u8; HASH_READ];
            let mut at = hashed;
            while at < upto {
                let n = ((upto - at) as usize).min(HASH_READ);
                fd.read_exact_at(&mut buf[..n], at)?;
                hasher.update(&buf[..n]);
                at += n as u64;
            }
            Ok(hasher)
        })
        .await
        .map_err(io::Error::other)??;
        hashed = upto;
    }
    Ok(hasher.finish())
}
