//! The OCI distribution error body, `{"errors":[{"code","message","detail"}]}`.
//!
//! containerd and other clients read the `code` to decide what to do next (fall back upstream,
//! give up, retry), so the codes are a closed enum: the fourteen codes of the OCI distribution
//! spec plus the few the reference `distribution` registry also sends (`TAG_INVALID`,
//! `RANGE_INVALID`, `UNKNOWN`, `UNAVAILABLE`). No code is invented here.

use serde::{Deserialize, Serialize};

/// An error code from the OCI distribution spec (or the `distribution` registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    #[serde(rename = "TOOMANYREQUESTS")]
    TooManyRequests,
    /// `distribution` registry: a manifest's tag does not match the URI, or is malformed.
    TagInvalid,
    /// `distribution` registry: a `Content-Range` was invalid (sent with 416).
    RangeInvalid,
    /// `distribution` registry: an unexpected server-side error.
    Unknown,
    /// `distribution` registry: the service is temporarily unavailable.
    Unavailable,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::BlobUnknown,
        ErrorCode::BlobUploadInvalid,
        ErrorCode::BlobUploadUnknown,
        ErrorCode::DigestInvalid,
        ErrorCode::ManifestBlobUnknown,
        ErrorCode::ManifestInvalid,
        ErrorCode::ManifestUnknown,
        ErrorCode::NameInvalid,
        ErrorCode::NameUnknown,
        ErrorCode::SizeInvalid,
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::Unsupported,
        ErrorCode::TooManyRequests,
        ErrorCode::TagInvalid,
        ErrorCode::RangeInvalid,
        ErrorCode::Unknown,
        ErrorCode::Unavailable,
    ];

    /// The code as it appears on the wire (`BLOB_UNKNOWN`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unknown => "UNKNOWN",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// The HTTP status this code is normally sent with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => 404,
            ErrorCode::BlobUploadInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid
            | ErrorCode::TagInvalid => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            ErrorCode::Unsupported => 405,
            ErrorCode::RangeInvalid => 416,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Unknown => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// A short human message for the code, for when the caller has nothing more specific.
    pub fn default_message(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "blob unknown to registry",
            ErrorCode::BlobUploadInvalid => "blob upload invalid",
            ErrorCode::BlobUploadUnknown => "blob upload unknown to registry",
            ErrorCode::DigestInvalid => "provided digest did not match uploaded content",
            ErrorCode::ManifestBlobUnknown => {
                "manifest references a manifest or blob unknown to registry"
            }
            ErrorCode::ManifestInvalid => "manifest invalid",
            ErrorCode::ManifestUnknown => "manifest unknown to registry",
            ErrorCode::NameInvalid => "invalid repository name",
            ErrorCode::NameUnknown => "repository name not known to registry",
            ErrorCode::SizeInvalid => "provided length did not match content length",
            ErrorCode::Unauthorized => "authentication required",
            ErrorCode::Denied => "requested access to the resource is denied",
            ErrorCode::Unsupported => "the operation is unsupported",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::TagInvalid => "invalid tag",
            ErrorCode::RangeInvalid => "invalid content range",
            ErrorCode::Unknown => "unknown error",
            ErrorCode::Unavailable => "service unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    #[serde(default)]
    pub message: String,
    /// Free-form structured detail; omitted from the JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// The JSON body of every OCI distribution error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub errors: Vec<ErrorInfo>,
}

impl ErrorBody {
    /// A body carrying exactly one error.
    pub fn single(
        code: ErrorCode,
        message: impl Into<String>,
        detail: Option<serde_json::Value>,
    ) -> ErrorBody {
        ErrorBody {
            errors: vec![ErrorInfo {
                code,
                message: message.into(),
                detail,
            }],
        }
    }

    /// A body with one error and the code's default message.
    pub fn from_code(code: ErrorCode) -> ErrorBody {
        ErrorBody::single(code, code.default_message(), None)
    }

    /// The status of the first error (500 for an empty body).
    pub fn status(&self) -> u16 {
        self.errors.first().map_or(500, |e| e.code.status())
    }

    /// The body as compact JSON.
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail (string keys only); the fallback keeps this
        // function total rather than panicking should that ever change.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"errors":[{"code":"UNKNOWN","message":"unknown error"}]}"#.into()
        })
    }

    /// Parse a body received from a registry or peer.
    pub fn from_json(bytes: &[u8]) -> Result<ErrorBody, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_wire_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        assert_eq!(ErrorCode::TooManyRequests.as_str(), "TOOMANYREQUESTS");
    }

    #[test]
    fn body_shape_matches_spec() {
        let body = ErrorBody::single(
            ErrorCode::BlobUnknown,
            "blob unknown to registry",
            Some(serde_json::json!({"digest": "sha256:ab"})),
        );
        assert_eq!(
            body.to_json(),
            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":{"digest":"sha256:ab"}}]}"#
        );
        assert_eq!(body.status(), 404);
        let no_detail = ErrorBody::from_code(ErrorCode::NameInvalid);
        assert_eq!(
            no_detail.to_json(),
            r#"{"errors":[{"code":"NAME_INVALID","message":"invalid repository name"}]}"#
        );
        assert_eq!(no_detail.status(), 400);
    }

    #[test]
    fn statuses() {
        assert_eq!(ErrorCode::ManifestUnknown.status(), 404);
        assert_eq!(ErrorCode::DigestInvalid.status(), 400);
        assert_eq!(ErrorCode::Unauthorized.status(), 401);
        assert_eq!(ErrorCode::Denied.status(), 403);
        assert_eq!(ErrorCode::Unsupported.status(), 405);
        assert_eq!(ErrorCode::RangeInvalid.status(), 416);
        assert_eq!(ErrorCode::TooManyRequests.status(), 429);
        assert_eq!(ErrorBody { errors: vec![] }.status(), 500);
    }

    #[test]
    fn parses_registry_bodies_and_refuses_unknown_codes() {
        let b = ErrorBody::from_json(
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x","detail":null,"extra":1}]}"#,
        )
        .unwrap();
        assert_eq!(b.errors[0].code, ErrorCode::ManifestUnknown);
        assert!(ErrorBody::from_json(br#"{"errors":[{"code":"MADE_UP"}]}"#).is_err());
    }
}
