//! The one error type of this crate: every failure names what it was about (the socket, the
//! namespace, the digest) so that a log line or a CLI message is enough to act on.
//!
//! Causes are folded into the message (not exposed as `source()`), because the underlying
//! tonic errors print as a bare "transport error" with the useful part buried in their chain,
//! and because `anyhow`'s `{:#}` would otherwise print every cause twice.

use std::path::PathBuf;

use shoal_oci::{Digest, DigestError};

/// Everything that can go wrong talking to containerd or reading its content.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing (or not containerd) answers on the socket.
    #[error("cannot reach containerd at {}: {reason}", socket.display())]
    Unreachable { socket: PathBuf, reason: String },

    /// The namespace string cannot be a containerd namespace (or a gRPC header value).
    #[error(
        "containerd namespace {0:?} is invalid: use letters, digits, '.', '_' and '-', \
         starting and ending with a letter or digit"
    )]
    InvalidNamespace(String),

    /// containerd is reachable but has no such namespace.
    #[error(
        "containerd at {} has no namespace {namespace:?} (it has: {})",
        socket.display(),
        if available.is_empty() { "none".to_owned() } else { available.join(", ") }
    )]
    NamespaceNotFound {
        socket: PathBuf,
        namespace: String,
        available: Vec<String>,
    },

    /// A containerd API call failed.
    #[error("containerd {op} failed: {} ({})", status.message(), status.code())]
    Rpc {
        op: &'static str,
        status: Box<tonic::Status>,
    },

    /// The blob is not in the content store.
    #[error("blob {0} is not in containerd's content store")]
    NotFound(Digest),

    /// A digest string (from the caller or from containerd) is malformed.
    #[error("malformed digest {input:?}: {reason}")]
    BadDigest { input: String, reason: DigestError },

    /// A read asked for bytes beyond the end of the blob.
    #[error("range {offset}+{len} is outside blob {digest} of {size} bytes")]
    OutOfRange {
        digest: Digest,
        offset: u64,
        len: u64,
        size: u64,
    },

    /// A manifest or index is too big to parse.
    #[error("blob {digest} is {size} bytes; manifests over {limit} bytes are not parsed")]
    TooLarge {
        digest: Digest,
        size: u64,
        limit: u64,
    },

    /// The bytes ended before the blob's size.
    #[error("blob {digest} ended after {got} of {expected} bytes")]
    ShortRead {
        digest: Digest,
        expected: u64,
        got: u64,
    },

    /// Reading the content directory failed mid-stream.
    #[error("reading {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl Error {
    pub(crate) fn rpc(op: &'static str, status: tonic::Status) -> Self {
        Error::Rpc {
            op,
            status: Box::new(status),
        }
    }

    /// Is this a failure to talk to containerd at all (as opposed to a bad request)? The watcher
    /// uses it to decide between "retry with backoff" and "log and move on".
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ),
            _ => false,
        }
    }
}

/// Parses a digest string, turning a refusal into [`Error::BadDigest`].
pub fn parse_digest(input: &str) -> Result<Digest, Error> {
    input.parse().map_err(|reason| Error::BadDigest {
        input: input.to_owned(),
        reason,
    })
}

/// The most specific message of an error chain: its innermost cause ("No such file or
/// directory (os error 2)" rather than tonic's "transport error").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
