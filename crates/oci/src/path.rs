//! Parsing of the read-only distribution API request paths the mirror serves.
//!
//! The input is the raw (still percent-encoded) URI path. Nothing is decoded: every part must
//! match the spec grammar as-is, so `%2e%2e`, `..`, `//` and backslashes are refused by the
//! grammar itself rather than by a blocklist. Each failure says which part was wrong so the
//! HTTP layer can answer with the matching OCI error code ([`PathError::code`]).

use std::fmt;
use std::str::FromStr;

use crate::registry::validate_host;
use crate::{
    Digest, DigestError, ErrorCode, NameError, Repository, Tag, TagError, normalize_registry,
};

/// What a manifest is asked for by: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ManifestRef {
    Tag(Tag),
    Digest(Digest),
}

impl fmt::Display for ManifestRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestRef::Tag(t) => t.fmt(f),
            ManifestRef::Digest(d) => d.fmt(f),
        }
    }
}

/// Why a manifest reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestRefError {
    #[error("invalid tag: {0}")]
    Tag(#[from] TagError),
    #[error("invalid digest: {0}")]
    Digest(#[from] DigestError),
}

/// A `:` can never appear in a tag, so its presence means the reference is meant as a digest.
impl FromStr for ManifestRef {
    type Err = ManifestRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(ManifestRef::Digest(s.parse()?))
        } else {
            Ok(ManifestRef::Tag(s.parse()?))
        }
    }
}

/// A recognised distribution API request path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ApiPath {
    /// `/v2/` (or `/v2`): the API version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        repository: Repository,
        reference: ManifestRef,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        repository: Repository,
        digest: Digest,
    },
}

/// Why a request path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not a route the mirror serves (answer 404 without an OCI code).
    #[error("no such route: {0:?}")]
    UnknownRoute(String),
    #[error("invalid repository name: {0}")]
    InvalidName(#[from] NameError),
    #[error("invalid manifest tag: {0}")]
    InvalidTag(#[from] TagError),
    #[error("invalid digest: {0}")]
    InvalidDigest(#[from] DigestError),
}

impl PathError {
    /// The OCI error code to answer with; `None` for an unknown route (plain 404).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            PathError::UnknownRoute(_) => None,
            PathError::InvalidName(_) => Some(ErrorCode::NameInvalid),
            PathError::InvalidTag(_) => Some(ErrorCode::TagInvalid),
            PathError::InvalidDigest(_) => Some(ErrorCode::DigestInvalid),
        }
    }

    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        self.code().map_or(404, ErrorCode::status)
    }
}

impl From<ManifestRefError> for PathError {
    fn from(e: ManifestRefError) -> Self {
        match e {
            ManifestRefError::Tag(e) => PathError::InvalidTag(e),
            ManifestRefError::Digest(e) => PathError::InvalidDigest(e),
        }
    }
}

impl ApiPath {
    /// Parse a raw request path (without query string).
    pub fn parse(path: &str) -> Result<ApiPath, PathError> {
        let unknown = || PathError::UnknownRoute(path.to_owned());
        if path == "/v2" || path == "/v2/" {
            return Ok(ApiPath::Base);
        }
        let rest = path.strip_prefix("/v2/").ok_or_else(unknown)?;
        // The name may itself contain `manifests` or `blobs` components, so split from the right:
        // the last component is the reference, the one before it the endpoint kind.
        let (before, last) = rest.rsplit_once('/').ok_or_else(unknown)?;
        let (name, kind) = before.rsplit_once('/').unwrap_or(("", before));
        if kind != "manifests" && kind != "blobs" {
            return Err(unknown());
        }
        let repository: Repository = name.parse()?;
        match kind {
            "manifests" => Ok(ApiPath::Manifest {
                repository,
                reference: last.parse()?,
            }),
            _ => Ok(ApiPath::Blob {
                repository,
                digest: last.parse()?,
            }),
        }
    }

    /// The repository named by the path, if any.
    pub fn repository(&self) -> Option<&Repository> {
        match self {
            ApiPath::Base => None,
            ApiPath::Manifest { repository, .. } | ApiPath::Blob { repository, .. } => {
                Some(repository)
            }
        }
    }
}

/// Splits an explicit registry prefix off a request path: `/v2/<registry>/<rest>` becomes
/// (`<registry>` normalised, `/v2/<rest>`), for clients that cannot send containerd's `?ns=`
/// (skopeo, crane, oras pointed at the mirror as if it were a registry).
///
/// The first component counts as a registry only if it is a valid `host[:port]` that cannot be
/// a repository component: it contains a `.` or a `:`, or is `localhost` (the rule Docker uses
/// to tell `registry/repo` from `org/repo`). Returns `None` otherwise, or when nothing follows
/// the registry. The caller still checks the registry against the allowlist and parses the
/// rest with [`ApiPath::parse`]; nothing is decoded here.
pub fn split_registry(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/v2/")?;
    let (first, rest) = rest.split_once('/')?;
    if rest.is_empty() || !(first.contains(['.', ':']) || first == "localhost") {
        return None;
    }
    validate_host(first).ok()?;
    Some((normalize_registry(first), format!("/v2/{rest}")))
}

impl FromStr for ApiPath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApiPath::parse(s)
    }
}

/// Prints the canonical request path (`/v2/` for [`ApiPath::Base`]).
impl fmt::Display for ApiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiPath::Base => f.write_str("/v2/"),
            ApiPath::Manifest {
                repository,
                reference,
            } => write!(f, "/v2/{repository}/manifests/{reference}"),
            ApiPath::Blob { repository, digest } => write!(f, "/v2/{repository}/blobs/{digest}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn repo(s: &str) -> Repository {
        s.parse().unwrap()
    }

    #[test]
    fn base() {
        assert_eq!(ApiPath::parse("/v2/"), Ok(ApiPath::Base));
        assert_eq!(ApiPath::parse("/v2"), Ok(ApiPath::Base));
    }

    #[test]
    fn manifests_by_tag_and_digest() {
        assert_eq!(
            ApiPath::parse("/v2/library/nginx/manifests/1.27"),
            Ok(ApiPath::Manifest {
                repository: repo("library/nginx"),
                reference: ManifestRef::Tag("1.27".parse().unwrap()),
            })
        );
        assert_eq!(
            ApiPath::parse(&format!("/v2/a/manifests/{D}")),
            Ok(ApiPath::Manifest {
                repository: repo("a"),
                reference: ManifestRef::Digest(D.parse().unwrap()),
            })
        );
    }

    #[test]
    fn blobs() {
        let p = ApiPath::parse(&format!("/v2/a/b/c/blobs/{D}")).unwrap();
        assert_eq!(
            p,
            ApiPath::Blob {
                repository: repo("a/b/c"),
                digest: D.parse().unwrap()
            }
        );
        assert_eq!(p.repository(), Some(&repo("a/b/c")));
        assert_eq!(p.to_string(), format!("/v2/a/b/c/blobs/{D}"));
    }

    #[test]
    fn names_may_contain_endpoint_words() {
        assert_eq!(
            ApiPath::parse("/v2/x/manifests/blobs/manifests/v1"),
            Ok(ApiPath::Manifest {
                repository: repo("x/manifests/blobs"),
                reference: ManifestRef::Tag("v1".parse().unwrap()),
            })
        );
    }

    #[test]
    fn unknown_routes_are_404() {
        for p in [
            "",
            "/",
            "/v1/",
            "/v2/a",
            "/v2/a/tags/list",
            "/v2/_catalog",
            "/v2/a/manifests/v1/",
            "/v2/a/blobs/uploads/",
            "/v3/a/manifests/v1",
            "v2/a/manifests/v1",
        ] {
            let e = ApiPath::parse(p).unwrap_err();
            assert!(matches!(e, PathError::UnknownRoute(_)), "{p}: {e}");
            assert_eq!(e.code(), None);
            assert_eq!(e.status(), 404);
        }
    }

    #[test]
    fn invalid_names_are_name_invalid() {
        for p in [
            "/v2/manifests/v1",
            "/v2//manifests/v1",
            "/v2/a//b/manifests/v1",
            "/v2/../manifests/v1",
            "/v2/a/../b/manifests/v1",
            "/v2/%2e%2e/manifests/v1",
            "/v2/a%2Fb/manifests/v1",
            "/v2/a\\b/manifests/v1",
            "/v2/Upper/manifests/v1",
        ] {
            let e = ApiPath::parse(p).unwrap_err();
            assert!(matches!(e, PathError::InvalidName(_)), "{p}: {e}");
            assert_eq!(e.code(), Some(ErrorCode::NameInvalid));
            assert_eq!(e.status(), 400);
        }
    }

    #[test]
    fn invalid_tags_and_digests() {
        let e = ApiPath::parse("/v2/a/manifests/.hidden").unwrap_err();
        assert!(matches!(
            e,
            PathError::InvalidTag(TagError::BadStart { .. })
        ));
        assert_eq!(e.code(), Some(ErrorCode::TagInvalid));
        let e = ApiPath::parse("/v2/a/manifests/").unwrap_err();
        assert_eq!(e, PathError::InvalidTag(TagError::Empty));
        let e = ApiPath::parse("/v2/a/manifests/sha256:abc").unwrap_err();
        assert!(matches!(e, PathError::InvalidDigest(_)));
        assert_eq!(e.code(), Some(ErrorCode::DigestInvalid));
        let e = ApiPath::parse("/v2/a/blobs/latest").unwrap_err();
        assert!(matches!(
            e,
            PathError::InvalidDigest(DigestError::MissingSeparator(_))
        ));
        let e = ApiPath::parse("/v2/a/blobs/sha256:..%2f").unwrap_err();
        assert!(matches!(e, PathError::InvalidDigest(_)));
    }

    #[test]
    fn registry_prefix_is_split_only_when_it_is_a_host() {
        let split = |p: &str| split_registry(p);
        assert_eq!(
            split("/v2/docker.io/library/nginx/manifests/1.27"),
            Some((
                "docker.io".into(),
                "/v2/library/nginx/manifests/1.27".into()
            ))
        );
        assert_eq!(
            split(&format!("/v2/Index.Docker.io/a/blobs/{D}")),
            Some(("docker.io".into(), format!("/v2/a/blobs/{D}")))
        );
        assert_eq!(
            split("/v2/10.1.2.3:5000/team/app/manifests/v1"),
            Some(("10.1.2.3:5000".into(), "/v2/team/app/manifests/v1".into()))
        );
        assert_eq!(
            split("/v2/localhost/a/manifests/v1").map(|s| s.0),
            Some("localhost".into())
        );
        for p in [
            "/v2/library/nginx/manifests/1.27", // an organisation, not a host
            "/v2/docker.io/",                   // nothing after the registry
            "/v2/docker.io",
            "/v2/",
            "/v1/docker.io/a/manifests/v1",
            "/v2/bad..host/a/manifests/v1",
            "/v2/host:99999/a/manifests/v1",
            "/v2/%2e.io/a/manifests/v1",
            "/v2/a.io%2f/a/manifests/v1",
        ] {
            assert_eq!(split(p), None, "{p}");
        }
        // The rest is parsed like any path: a bad repository after a good registry is refused.
        let (_, rest) = split("/v2/docker.io/../manifests/v1").unwrap();
        assert!(matches!(
            ApiPath::parse(&rest),
            Err(PathError::InvalidName(_))
        ));
    }

    #[test]
    fn name_is_checked_before_reference() {
        let e = ApiPath::parse("/v2/A/blobs/nope").unwrap_err();
        assert!(matches!(e, PathError::InvalidName(_)));
    }
}
