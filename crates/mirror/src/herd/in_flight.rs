//! Serving a blob to peers while the local containerd is still downloading it (a source's
//! side of the herd): the bytes come from containerd's growing ingest
//! ([`crate::LocalStore::growing`]) as they are written.
//!
//! Only blobs the local containerd asked this mirror for are served this way: containerd asks
//! its mirror only for allowlisted registries, so an ingest of an image from elsewhere (a
//! private Harbor) is never passed on, just as only allowlisted content is advertised.
//!
//! The answer carries [`HEADER`] so the receiving node knows the bytes are unverified and
//! arrive at the speed of an upstream download: it streams them with the whole-digest check
//! and tail hold, and does not look for a piece list.

use std::sync::Arc;

use axum::body::Body;
use futures::StreamExt;
use http::HeaderValue;
use shoal_oci::{Digest, Range};

use crate::error::MirrorError;
use crate::events::FetchEventKind;
use crate::metrics::{Metrics, Source};
use crate::serve::{self, Meta};
use crate::source::ByteStream;
use crate::state::Shared;

/// Response header marking bytes served from a download in progress.
pub(crate) const HEADER: &str = "shoal-in-flight";

type Served = Result<(axum::response::Response, Source), MirrorError>;

/// Answer a peer's request for `digest` from the local ingest, when the local containerd asked
/// for that blob and is writing it; `None` otherwise.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    head: bool,
    range: Option<Range>,
    digest: &Digest,
) -> Option<Served> {
    if !shared.herd.was_asked(digest) {
        return None;
    }
    let g = shared.local.growing(digest, 0).await?;
    let meta = Meta {
        digest: digest.clone(),
        size: g.total,
        content_type: "application/octet-stream".into(),
    };
    let w = match serve::window(range, g.total) {
        Ok(w) => w,
        Err(e) => return Some(Err(e)),
    };
    let stream = if w.start == 0 {
        g.stream
    } else {
        drop(g);
        shared.local.growing(digest, w.start).await?.stream
    };
    shared.event(
        &digest.to_string(),
        None,
        FetchEventKind::InFlight { total: meta.size },
    );
    tracing::info!(digest = %digest, total = meta.size, start = w.start, "serving a blob to a peer while it downloads");
    let mut res = if head {
        serve::head(&meta)
    } else {
        let body = limited(stream, w.end - w.start, shared.metrics.clone());
        serve::streamed(&meta, w, Body::from_stream(body))
    };
    res.headers_mut()
        .insert(HEADER, HeaderValue::from_static("1"));
    Some(Ok((res, Source::Local)))
}

/// At most `len` bytes of `stream`, counted as in-flight bytes served.
fn limited(stream: ByteStream, len: u64, metrics: Metrics) -> ByteStream {
    futures::stream::unfold((stream, len), move |(mut s, left)| {
        let metrics = metrics.clone();
        async move {
            if left == 0 {
                return None;
            }
            match s.next().await? {
                Ok(mut chunk) => {
                    chunk.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                    metrics.add_in_flight_bytes(chunk.len() as u64);
                    let left = left - chunk.len() as u64;
                    Some((Ok(chunk), (s, left)))
                }
                Err(e) => Some((Err(e), (s, 0))),
            }
        }
    })
    .boxed()
}
