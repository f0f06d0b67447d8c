//! Building mirror responses: headers, byte windows for `Range`, and local-store bodies.
//!
//! Local content is served without hashing: containerd verified it when it committed it, and
//! re-hashing every byte would cost about one core-second per 200 MB on the target machines
//! (notes §7) for protection only against on-disk corruption under containerd.

use std::io;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderValue, StatusCode, header};
use shoal_oci::{ByteRange, Digest, Document, Range, RangeError, classify, media};

use crate::client::DIGEST_HEADER;
use crate::error::MirrorError;
use crate::metrics::{Metrics, Source};
use crate::source::{ByteStream, LocalStore};

/// What every successful answer describes.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub digest: Digest,
    pub size: u64,
    pub content_type: String,
}

/// The part of a blob sent: `[start, end)`, and whether it answers a `Range` (206).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub start: u64,
    pub end: u64,
    pub partial: bool,
}

/// Apply a parsed `Range` to a blob of `size` bytes.
pub(crate) fn window(range: Option<Range>, size: u64) -> Result<Window, MirrorError> {
    match range {
        None => Ok(Window {
            start: 0,
            end: size,
            partial: false,
        }),
        Some(r) => match r.resolve(size) {
            Ok(ByteRange {
                start,
                end_inclusive,
            }) => Ok(Window {
                start,
                end: end_inclusive + 1,
                partial: true,
            }),
            Err(e) => Err(MirrorError::RangeNotSatisfiable {
                reason: e.to_string(),
                content_range: Some(r.content_range(size)),
            }),
        },
    }
}

/// Read the `Range` header: absent or in another unit means the whole blob; anything else
/// that cannot be served is a 416.
pub(crate) fn parse_range(value: Option<&HeaderValue>) -> Result<Option<Range>, MirrorError> {
    let Some(v) = value else { return Ok(None) };
    let text = v.to_str().map_err(|_| MirrorError::RangeNotSatisfiable {
        reason: "Range header is not ASCII".into(),
        content_range: None,
    })?;
    match Range::parse(text) {
        Ok(r) => Ok(Some(r)),
        Err(RangeError::UnsupportedUnit(_)) => Ok(None),
        Err(e) => Err(MirrorError::RangeNotSatisfiable {
            reason: e.to_string(),
            content_range: None,
        }),
    }
}

fn headers(res: &mut Response, meta: &Meta, length: u64) {
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&meta.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Ok(v) = HeaderValue::from_str(&meta.digest.to_string()) {
        h.insert(DIGEST_HEADER, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
}

/// HEAD answer: the headers of a full GET, no body.
pub(crate) fn head(meta: &Meta) -> Response {
    let mut res = StatusCode::OK.into_response();
    headers(&mut res, meta, meta.size);
    res
}

/// A streamed answer for `window` of the blob.
pub(crate) fn streamed(meta: &Meta, w: Window, body: Body) -> Response {
    let mut res = Response::new(body);
    headers(&mut res, meta, w.end - w.start);
    if w.partial {
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
        let cr = ByteRange {
            start: w.start,
            end_inclusive: w.end - 1,
        }
        .content_range(meta.size);
        if let Ok(v) = HeaderValue::from_str(&cr) {
            res.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    res
}

/// An answer from a verified in-memory blob.
pub(crate) fn buffered(
    meta: &Meta,
    range: Option<Range>,
    bytes: Bytes,
) -> Result<Response, MirrorError> {
    let w = window(range, bytes.len() as u64)?;
    let part = bytes.slice(w.start as usize..w.end as usize);
    Ok(streamed(meta, w, Body::from(part)))
}

/// The manifest media type to answer with: the known one when it is manifest-like, else what
/// the document declares, else what its structure says.
pub(crate) fn manifest_media_type(hint: Option<&str>, bytes: &[u8]) -> String {
    if let Some(h) = hint.filter(|h| classify(h).is_manifest_like()) {
        return h.to_owned();
    }
    match Document::parse(hint, bytes) {
        Ok(doc) => doc.media_type().map(str::to_owned).unwrap_or_else(|| {
            match doc {
                Document::Index(_) => media::OCI_INDEX,
                Document::Manifest(_) => media::OCI_MANIFEST,
            }
            .to_owned()
        }),
        Err(_) => hint.unwrap_or("application/octet-stream").to_owned(),
    }
}

/// Open `len` bytes of a local blob from `start` as a body that fails (rather than ending
/// cleanly) if the store delivers fewer bytes, and that counts bytes served locally.
pub(crate) async fn local_body(
    local: &dyn LocalStore,
    metrics: &Metrics,
    digest: &Digest,
    start: u64,
    len: u64,
) -> Result<Body, MirrorError> {
    let stream = local
        .read(digest, start, Some(len))
        .await
        .map_err(|e| MirrorError::Internal(format!("reading {digest} locally: {e}")))?;
    Ok(Body::from_stream(exact_len(stream, len, metrics.clone())))
}

fn exact_len(stream: ByteStream, len: u64, metrics: Metrics) -> ByteStream {
    futures::stream::unfold((stream, len, false), move |(mut s, remaining, done)| {
        let metrics = metrics.clone();
        async move {
            if done {
                return None;
            }
            match s.next().await {
                Some(Ok(chunk)) if chunk.len() as u64 > remaining => {
                    let err = io::Error::other("local store returned more bytes than asked");
                    Some((Err(err), (s, 0, true)))
                }
                Some(Ok(chunk)) => {
                    metrics.add_bytes(Source::Local, chunk.len() as u64);
                    let left = remaining - chunk.len() as u64;
                    Some((Ok(chunk), (s, left, false)))
                }
                Some(Err(e)) => Some((Err(e), (s, 0, true))),
                None if remaining == 0 => None,
                None => {
                    let err = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("local store ended {remaining} bytes early"),
                    );
                    Some((Err(err), (s, 0, true)))
                }
            }
        }
    })
    .boxed()
}

/// Read a whole local blob of `size` bytes into memory (manifests only; `size` is bounded by
/// the caller).
pub(crate) async fn local_bytes(
    local: &dyn LocalStore,
    metrics: &Metrics,
    digest: &Digest,
    size: u64,
) -> Result<Bytes, MirrorError> {
    let stream = local
        .read(digest, 0, Some(size))
        .await
        .map_err(|e| MirrorError::Internal(format!("reading {digest} locally: {e}")))?;
    let mut s = exact_len(stream, size, metrics.clone());
    let mut buf = BytesMut::with_capacity(size as usize);
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| MirrorError::Internal(format!("reading {digest}: {e}")))?;
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
