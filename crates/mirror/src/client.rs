//! HTTP requests from this node to another node's mirror endpoint.
//!
//! The peer protocol is the mirror API itself: `GET /v2/<repo>/blobs/<digest>?ns=<registry>`
//! (or `/manifests/<tag|digest>`) with the peer mark from [`crate::PeerAuth`], and
//! `Range: bytes=<offset>-` to continue an interrupted transfer. A peer answering a manifest
//! request must send `Docker-Content-Digest`; that is how a tag lookup learns which digest to
//! verify the body against. Every response is checked here (status, length, range, digest
//! header) before any byte is used.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http::{Method, StatusCode, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use shoal_oci::{ByteRange, Digest, ManifestRef, Repository};

use crate::peer_auth::PeerAuth;
use crate::pieces::{self, PieceList};
use crate::source::Provider;

/// The `Docker-Content-Digest` header.
pub const DIGEST_HEADER: &str = "docker-content-digest";

/// `ns` values are host[:port]; encode like containerd does (`127.0.0.1%3A5000`).
const NS: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'-').remove(b'_');

/// What is asked of a peer.
#[derive(Debug, Clone)]
pub(crate) enum PeerPath {
    Blob {
        repository: Repository,
        digest: Digest,
    },
    Manifest {
        repository: Repository,
        reference: ManifestRef,
    },
}

impl PeerPath {
    fn path_and_query(&self, registry: &str) -> String {
        let ns = utf8_percent_encode(registry, NS);
        match self {
            PeerPath::Blob { repository, digest } => {
                format!("/v2/{}/blobs/{digest}?ns={ns}", repository.as_str())
            }
            PeerPath::Manifest {
                repository,
                reference,
            } => format!("/v2/{}/manifests/{reference}?ns={ns}", repository.as_str()),
        }
    }

    /// The digest the body must hash to, when the request itself names it.
    pub(crate) fn digest(&self) -> Option<&Digest> {
        match self {
            PeerPath::Blob { digest, .. } => Some(digest),
            PeerPath::Manifest {
                reference: ManifestRef::Digest(d),
                ..
            } => Some(d),
            PeerPath::Manifest { .. } => None,
        }
    }
}

/// A peer response whose headers passed every check.
pub(crate) struct Opened {
    pub provider: Provider,
    /// Size of the whole blob.
    pub size: u64,
    /// Absolute offset of the first body byte.
    pub offset: u64,
    /// The digest announced by the peer (checked against the request's digest if it had one).
    pub digest: Option<Digest>,
    pub content_type: Option<String>,
    /// The peer is still receiving the blob (from upstream): its bytes are unverified and
    /// arrive as fast as its own download ([`crate::herd::in_flight`]).
    pub in_flight: bool,
    pub body: BoxStream<'static, reqwest::Result<Bytes>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("provider", &self.provider)
            .field("size", &self.size)
            .field("offset", &self.offset)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// Why a peer request was not usable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("no response headers within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("peer answered {0}")]
    Status(StatusCode),
    #[error("bad response: {0}")]
    Invalid(String),
}

/// Client for other nodes' mirror endpoints.
#[derive(Debug, Clone)]
pub(crate) struct PeerClient {
    http: reqwest::Client,
    auth: Arc<dyn PeerAuth>,
    headers_timeout: Duration,
}

impl PeerClient {
    pub(crate) fn new(
        connect_timeout: Duration,
        first_byte_timeout: Duration,
        auth: Arc<dyn PeerAuth>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .tcp_nodelay(true)
            .build()?;
        Ok(PeerClient {
            http,
            auth,
            headers_timeout: connect_timeout + first_byte_timeout,
        })
    }

    /// Send `method` for `path` to `provider`, from `offset` (with `Range` when non-zero; then
    /// `size` must be the blob size already learnt), and check the response headers.
    pub(crate) async fn open(
        &self,
        method: Method,
        provider: Provider,
        registry: &str,
        path: &PeerPath,
        offset: u64,
        size: Option<u64>,
    ) -> Result<Opened, OpenError> {
        self.request(method, provider, registry, path, offset, None, size)
            .await
    }

    /// GET the bytes `[start, end)` of a blob of known `size` with `Range: bytes=start-(end-1)`;
    /// only a 206 with exactly that `Content-Range` and length is accepted.
    pub(crate) async fn open_range(
        &self,
        provider: Provider,
        registry: &str,
        path: &PeerPath,
        start: u64,
        end: u64,
        size: u64,
    ) -> Result<Opened, OpenError> {
        if start >= end || end > size {
            return Err(OpenError::Invalid(format!(
                "empty or out-of-bounds range {start}-{end} of {size}"
            )));
        }
        self.request(
            Method::GET,
            provider,
            registry,
            path,
            start,
            Some(end),
            Some(size),
        )
        .await
    }

    /// GET the piece list of blob `digest` (of `size` bytes) from `provider`
    /// ([`crate::pieces`]); any answer but a valid list for exactly that blob is an error.
    pub(crate) async fn pieces(
        &self,
        provider: &Provider,
        digest: &Digest,
        size: u64,
    ) -> Result<PieceList, OpenError> {
        let pq = format!("{}{digest}", pieces::ROUTE);
        let url = format!("http://{}{pq}", provider.addr);
        let mut req = self.http.get(url);
        for (k, v) in self.auth.sign(&Method::GET, &pq) {
            req = req.header(k, v);
        }
        let fetch = async {
            let resp = req.send().await?;
            if resp.status() != StatusCode::OK {
                return Err(OpenError::Status(resp.status()));
            }
            let max = PieceList::max_encoded(size);
            if resp.content_length().is_none_or(|n| n > max) {
                return Err(OpenError::Invalid(format!(
                    "piece list without a length or over {max} bytes"
                )));
            }
            let bytes = resp.bytes().await?;
            PieceList::decode(&bytes, size).map_err(|e| OpenError::Invalid(e.to_string()))
        };
        tokio::time::timeout(self.headers_timeout, fetch)
            .await
            .map_err(|_| OpenError::Timeout(self.headers_timeout))?
    }

    /// A signed `GET pq` to the mirror at `addr` whose answer is all in its headers (a herd
    /// claim); any status but 200 is an error. Bounded by `timeout`.
    pub(crate) async fn get_headers(
        &self,
        addr: std::net::SocketAddr,
        pq: &str,
        timeout: Duration,
    ) -> Result<http::HeaderMap, OpenError> {
        let mut req = self.http.get(format!("http://{addr}{pq}"));
        for (k, v) in self.auth.sign(&Method::GET, pq) {
            req = req.header(k, v);
        }
        let resp = tokio::time::timeout(timeout, req.send())
            .await
            .map_err(|_| OpenError::Timeout(timeout))??;
        if resp.status() != StatusCode::OK {
            return Err(OpenError::Status(resp.status()));
        }
        Ok(resp.headers().clone())
    }

    #[allow(clippy::too_many_arguments)]
    async fn request(
        &self,
        method: Method,
        provider: Provider,
        registry: &str,
        path: &PeerPath,
        offset: u64,
        end: Option<u64>,
        size: Option<u64>,
    ) -> Result<Opened, OpenError> {
        let pq = path.path_and_query(registry);
        let url = format!("http://{}{pq}", provider.addr);
        let mut req = self.http.request(method.clone(), url);
        for (k, v) in self.auth.sign(&method, &pq) {
            req = req.header(k, v);
        }
        let ranged = offset > 0 || end.is_some();
        match end {
            Some(end) => {
                req = req.header(header::RANGE, format!("bytes={offset}-{}", end - 1));
            }
            None if offset > 0 => {
                req = req.header(header::RANGE, format!("bytes={offset}-"));
            }
            None => {}
        }
        let resp = tokio::time::timeout(self.headers_timeout, req.send())
            .await
            .map_err(|_| OpenError::Timeout(self.headers_timeout))??;
        let status = resp.status();
        let expected_status = if ranged {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        if status != expected_status {
            return Err(OpenError::Status(status));
        }
        let h = resp.headers();
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let length: u64 = text(header::CONTENT_LENGTH.as_str())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| OpenError::Invalid("missing or invalid Content-Length".into()))?;
        let digest =
            match text(DIGEST_HEADER) {
                Some(v) => Some(v.parse::<Digest>().map_err(|e| {
                    OpenError::Invalid(format!("invalid Docker-Content-Digest: {e}"))
                })?),
                None => None,
            };
        if let (Some(want), Some(got)) = (path.digest(), &digest) {
            if want != got {
                return Err(OpenError::Invalid(format!(
                    "Docker-Content-Digest {got} differs from the requested {want}"
                )));
            }
        }
        if path.digest().is_none() && digest.is_none() {
            return Err(OpenError::Invalid(
                "a tag answer without Docker-Content-Digest cannot be verified".into(),
            ));
        }
        let total = if ranged {
            // The only acceptable answer to `bytes=offset-[end-1]` of a blob of known size.
            let size =
                size.ok_or_else(|| OpenError::Invalid("continuation without size".into()))?;
            let end = end.unwrap_or(size);
            let want = ByteRange {
                start: offset,
                end_inclusive: end.saturating_sub(1),
            }
            .content_range(size);
            if text(header::CONTENT_RANGE.as_str()).as_deref() != Some(want.as_str())
                || length != end - offset
            {
                return Err(OpenError::Invalid(format!(
                    "expected Content-Range {want:?} and length {}",
                    end - offset
                )));
            }
            size
        } else {
            if let Some(size) = size {
                if size != length {
                    return Err(OpenError::Invalid(format!(
                        "size {length} differs from the {size} learnt earlier"
                    )));
                }
            }
            length
        };
        let content_type = text(header::CONTENT_TYPE.as_str());
        let in_flight = h.contains_key(crate::herd::in_flight::HEADER);
        let body = if method == Method::HEAD {
            futures::stream::empty().boxed()
        } else {
            resp.bytes_stream().boxed()
        };
        Ok(Opened {
            provider,
            size: total,
            offset,
            digest,
            content_type,
            in_flight,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_paths_encode_ns() {
        let d = Digest::sha256_of(b"x");
        let p = PeerPath::Blob {
            repository: "library/test".parse().unwrap(),
            digest: d.clone(),
        };
        assert_eq!(
            p.path_and_query("127.0.0.1:5000"),
            format!("/v2/library/test/blobs/{d}?ns=127.0.0.1%3A5000")
        );
    }
}
