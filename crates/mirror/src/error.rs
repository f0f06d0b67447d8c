//! The one place where mirror failures become wire format: the OCI error JSON with its status.
//!
//! Handlers return `Result<Response, MirrorError>`; nothing else writes error bodies. For HEAD
//! requests axum drops the body and keeps the status and headers.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use shoal_oci::{ErrorBody, ErrorCode, PathError};

/// Why a mirror request was not answered with content.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("{0}")]
    Path(#[from] PathError),
    /// containerd always sends `?ns=` to a mirror; without it (and without a registry prefix
    /// in the path) the upstream is unknown, and guessing it could cross the allowlist.
    #[error(
        "the upstream registry is required: add ?ns=<registry> (as containerd does) or ask for \
         /v2/<registry>/<repository>/..."
    )]
    MissingNamespace,
    #[error("registry {0:?} is not mirrored by this node")]
    RegistryNotAllowed(String),
    #[error("blob {0} is not available here")]
    BlobUnknown(String),
    #[error("manifest {0} is not available here")]
    ManifestUnknown(String),
    /// The `Range` header cannot be satisfied; carries the `Content-Range: bytes */size` value.
    #[error("range not satisfiable: {reason}")]
    RangeNotSatisfiable {
        reason: String,
        content_range: Option<String>,
    },
    #[error("method {0} is not supported by this read-only mirror")]
    MethodNotAllowed(http::Method),
    #[error("peer credential refused")]
    PeerRejected,
    /// Not the node itself and no peer credential (a pod, another host).
    #[error("authentication required: only this node's containerd and Shoal peers may read")]
    Unauthenticated,
    /// Too many requests in flight; containerd falls back to the next host on a 5xx.
    #[error("too many requests in flight ({0}); try the next host")]
    Overloaded(usize),
    #[error("internal error: {0}")]
    Internal(String),
}

impl MirrorError {
    /// The OCI code sent, or `None` for a plain 404 (an unknown route).
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            MirrorError::Path(p) => return p.code(),
            MirrorError::MissingNamespace | MirrorError::RegistryNotAllowed(_) => {
                ErrorCode::NameUnknown
            }
            MirrorError::BlobUnknown(_) => ErrorCode::BlobUnknown,
            MirrorError::ManifestUnknown(_) => ErrorCode::ManifestUnknown,
            MirrorError::RangeNotSatisfiable { .. } => ErrorCode::RangeInvalid,
            MirrorError::MethodNotAllowed(_) => ErrorCode::Unsupported,
            MirrorError::PeerRejected | MirrorError::Unauthenticated => ErrorCode::Unauthorized,
            MirrorError::Overloaded(_) => ErrorCode::Unavailable,
            MirrorError::Internal(_) => ErrorCode::Unknown,
        })
    }

    pub fn status(&self) -> StatusCode {
        let code = match self {
            MirrorError::Path(p) => p.status(),
            other => other.code().map_or(404, ErrorCode::status),
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Short label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            MirrorError::Path(_) | MirrorError::MissingNamespace => "bad_request",
            MirrorError::RegistryNotAllowed(_) => "not_allowed",
            MirrorError::BlobUnknown(_) | MirrorError::ManifestUnknown(_) => "miss",
            MirrorError::RangeNotSatisfiable { .. } => "bad_range",
            MirrorError::MethodNotAllowed(_) => "bad_method",
            MirrorError::PeerRejected => "rejected",
            MirrorError::Unauthenticated => "unauthorized",
            MirrorError::Overloaded(_) => "overloaded",
            MirrorError::Internal(_) => "error",
        }
    }
}

impl IntoResponse for MirrorError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match self.code() {
            Some(code) => ErrorBody::single(code, self.to_string(), None).to_json(),
            None => ErrorBody::single(ErrorCode::NameUnknown, self.to_string(), None).to_json(),
        };
        let mut res = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let MirrorError::RangeNotSatisfiable {
            content_range: Some(cr),
            ..
        } = &self
        {
            if let Ok(v) = HeaderValue::from_str(cr) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        if let MirrorError::PeerRejected | MirrorError::Unauthenticated = &self {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Shoal realm=\"shoal-mirror\""),
            );
        }
        if let MirrorError::MethodNotAllowed(_) = &self {
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        res
    }
}
