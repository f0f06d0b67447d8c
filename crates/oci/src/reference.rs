//! Image references (`nginx`, `ghcr.io/org/app:v1@sha256:…`) with Docker's normalisation.
//!
//! Users, kubelet and containerd all spell the same image differently (`nginx`,
//! `docker.io/library/nginx:latest`, `index.docker.io/library/nginx`). Every node must turn
//! them into one canonical form, or the tag keys advertised on the DHT would never match.

use std::fmt;
use std::str::FromStr;

use crate::path::ManifestRef;
use crate::registry::validate_host;
use crate::{
    Digest, DigestError, NameError, RegistryError, Repository, Tag, TagError, TagKey,
    normalize_registry,
};

/// Registry assumed when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Longest name accepted, as in Docker's reference grammar: the normalised `registry/repository`
/// (`nginx` counts as `docker.io/library/nginx`), so that every accepted reference prints as one
/// that parses again.
pub const MAX_NAME_LEN: usize = 255;

/// Why an image reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("image name is {len} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong { len: usize },
    #[error("invalid registry: {0}")]
    Registry(#[from] RegistryError),
    #[error(
        "registry {0:?} would read as part of the repository; a registry needs a '.', a ':port' \
         or to be localhost"
    )]
    AmbiguousRegistry(String),
    #[error("repository {0:?} must be lowercase")]
    UppercaseRepository(String),
    #[error("invalid repository: {0}")]
    Repository(NameError),
    #[error("invalid tag: {0}")]
    Tag(#[from] TagError),
    #[error("invalid digest: {0}")]
    Digest(#[from] DigestError),
}

impl From<NameError> for ReferenceError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::Uppercase { name, .. } => ReferenceError::UppercaseRepository(name),
            other => ReferenceError::Repository(other),
        }
    }
}

/// A fully normalised image reference. Holds a tag, a digest, or both; a reference written
/// with neither gets the tag `latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: Repository,
    tag: Option<Tag>,
    digest: Option<Digest>,
}

/// Docker's rule: the first component is a registry host only if it looks like one (has a `.`
/// or `:`, is `localhost`, or has uppercase letters, which repositories cannot).
fn looks_like_host(component: &str) -> bool {
    component.contains(['.', ':'])
        || component == "localhost"
        || component.chars().any(|c| c.is_ascii_uppercase())
}

impl Reference {
    /// Build from parts. The registry is validated and normalised, single-component Docker
    /// Hub repositories get `library/`, and `latest` is implied when neither tag nor digest
    /// is given, exactly as [`Reference::parse`] does.
    pub fn new(
        registry: &str,
        repository: Repository,
        tag: Option<Tag>,
        digest: Option<Digest>,
    ) -> Result<Reference, ReferenceError> {
        let registry = normalize_registry(registry);
        validate_host(&registry)?;
        // Printed, the reference must parse back to the same registry.
        if !looks_like_host(&registry) {
            return Err(ReferenceError::AmbiguousRegistry(registry));
        }
        let repository = if registry == DEFAULT_REGISTRY && !repository.as_str().contains('/') {
            format!("library/{repository}").parse()?
        } else {
            repository
        };
        let tag = match (tag, &digest) {
            (None, None) => Some(Tag::latest()),
            (tag, _) => tag,
        };
        let len = registry.len() + 1 + repository.as_str().len();
        if len > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong { len });
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Parse `[registry[:port]/]repository[:tag][@digest]`.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        // A tag's ':' can only follow the last '/'; earlier ones belong to a registry port.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_tag[..at], Some(name_tag[at + 1..].parse::<Tag>()?))
            }
            None => (name_tag, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => (first, rest),
            _ => (DEFAULT_REGISTRY, name),
        };
        Reference::new(registry, repository.parse()?, tag, digest)
    }

    /// The normalised registry host (`docker.io`, `localhost:5000`, `[::1]:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    pub fn tag(&self) -> Option<&Tag> {
        self.tag.as_ref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> ManifestRef {
        match (&self.digest, &self.tag) {
            (Some(d), _) => ManifestRef::Digest(d.clone()),
            (None, Some(t)) => ManifestRef::Tag(t.clone()),
            // Unreachable by construction (`new` implies `latest`); answered sensibly anyway.
            (None, None) => ManifestRef::Tag(Tag::latest()),
        }
    }

    /// The DHT key for this reference's tag, if it has one.
    pub fn tag_key(&self) -> Option<TagKey> {
        self.tag
            .as_ref()
            .map(|t| TagKey::new(self.registry.as_str(), self.repository.as_str(), t.as_str()))
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// The fully normalised form: `docker.io/library/nginx:latest`, `...:tag@sha256:…`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_hub_normalisation() {
        assert_eq!(norm("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(norm("nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(norm("docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            norm("index.docker.io/library/nginx"),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(norm("localhost"), "docker.io/library/localhost:latest");
    }

    #[test]
    fn host_detection() {
        let r = Reference::parse("localhost:5000/x").unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository().as_str(), "x");
        assert_eq!(r.tag().map(Tag::as_str), Some("latest"));
        assert_eq!(norm("localhost/x"), "localhost/x:latest");
        assert_eq!(norm("ghcr.io/org/app"), "ghcr.io/org/app:latest");
        assert_eq!(norm("[::1]:5000/x"), "[::1]:5000/x:latest");
        assert_eq!(norm("Example.COM/x"), "example.com/x:latest");
    }

    #[test]
    fn tag_and_digest_both_kept() {
        let s = format!("host:5000/a/b:v1@{D}");
        let r = Reference::parse(&s).unwrap();
        assert_eq!(r.registry(), "host:5000");
        assert_eq!(r.repository().as_str(), "a/b");
        assert_eq!(r.tag().map(Tag::as_str), Some("v1"));
        assert_eq!(r.digest().map(|d| d.to_string()), Some(D.to_owned()));
        assert_eq!(r.to_string(), s);
        assert_eq!(r.manifest_ref(), ManifestRef::Digest(D.parse().unwrap()));
    }

    #[test]
    fn digest_only_gets_no_tag() {
        let r = Reference::parse(&format!("nginx@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.tag_key(), None);
        assert_eq!(r.to_string(), format!("docker.io/library/nginx@{D}"));
    }

    #[test]
    fn tag_key_is_normalised() {
        let r = Reference::parse("registry-1.docker.io/library/nginx:1.27").unwrap();
        assert_eq!(
            r.tag_key(),
            Some(TagKey::new("docker.io", "library/nginx", "1.27"))
        );
        assert_eq!(r.manifest_ref(), ManifestRef::Tag("1.27".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(Reference::parse(""), Err(ReferenceError::Empty));
        assert_eq!(
            Reference::parse("docker.io/Library/nginx"),
            Err(ReferenceError::UppercaseRepository("Library/nginx".into()))
        );
        assert_eq!(
            Reference::parse("Library/nginx"),
            Err(ReferenceError::AmbiguousRegistry("library".into()))
        );
        assert!(matches!(
            Reference::new("myhost", "x".parse().unwrap(), None, None),
            Err(ReferenceError::AmbiguousRegistry(_))
        ));
        assert!(matches!(
            Reference::parse("ghcr.io/Org/app"),
            Err(ReferenceError::UppercaseRepository(_))
        ));
        assert!(matches!(
            Reference::parse("nginx:-bad"),
            Err(ReferenceError::Tag(TagError::BadStart { .. }))
        ));
        assert!(matches!(
            Reference::parse("nginx@sha256:abc"),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(
            Reference::parse("nginx:"),
            Err(ReferenceError::Tag(TagError::Empty))
        ));
        assert!(matches!(
            Reference::parse("host:99999/x"),
            Err(ReferenceError::Registry(_))
        ));
        assert!(matches!(
            Reference::parse("a//b"),
            Err(ReferenceError::Repository(NameError::EmptyComponent { .. }))
        ));
        let long = format!("ghcr.io/{}", "a".repeat(250));
        assert_eq!(
            Reference::parse(&long),
            Err(ReferenceError::TooLong { len: 258 })
        );
    }

    /// Fuzz finding (fuzz/fuzz_targets/reference.rs): the length limit was applied to the name
    /// as written, so a 250-character Docker Hub name was accepted but printed as
    /// `docker.io/library/…`, which no longer parsed. The limit now applies to the normalised
    /// name, like Docker's, and every accepted reference round-trips.
    #[test]
    fn length_limit_applies_to_the_normalised_name() {
        let short_hub = "a".repeat(MAX_NAME_LEN - "docker.io/library/".len());
        let r = Reference::parse(&short_hub).unwrap();
        assert_eq!(Reference::parse(&r.to_string()), Ok(r));
        let hub = "a".repeat(MAX_NAME_LEN - "docker.io/library/".len() + 1);
        assert_eq!(
            Reference::parse(&hub),
            Err(ReferenceError::TooLong {
                len: MAX_NAME_LEN + 1
            })
        );
        let fits = format!("org/{}", "b".repeat(MAX_NAME_LEN - "docker.io/org/".len()));
        assert!(Reference::parse(&fits).is_ok());
        assert!(Reference::parse(&format!("{fits}b")).is_err());
        // Normalisation can also shorten: the limit is on the result, not the input.
        let mirror_host = format!("registry-1.docker.io/org/{}", "c".repeat(240));
        let r = Reference::parse(&mirror_host).unwrap();
        assert_eq!(
            r.to_string().len(),
            "docker.io/org/".len() + 240 + ":latest".len()
        );
        assert_eq!(Reference::parse(&r.to_string()), Ok(r));
        // The fuzzer's input itself.
        let found = "dddrregiddlibrary/gistrydocker.iodddddddddddddu_n_uegistryiuyddddddddddddddd\
                     u_n_uegistryiuydddddddu_n_uegistry-1.docker.iodddd0123456dddu_n_uegistry-1.\
                     docker.iodddd01234567_n_uegistrydddddddu_n_uegistry-1.docker.iodddd012345678\
                     9abcdefddddddlddu_n_u_u";
        if let Ok(r) = Reference::parse(found) {
            assert_eq!(Reference::parse(&r.to_string()), Ok(r));
        }
    }
}
