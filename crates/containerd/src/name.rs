//! containerd image names (`docker.io/library/x:v1`, `ghcr.io/o/r@sha256:…`) read as
//! [`Reference`]s, with the two containerd-specific cases set apart.
//!
//! containerd stores names as free strings. The CRI adds a `sha256:<config>` alias for every
//! image, and `ctr` can store names with no registry at all (`x:v1`); Docker's rule would send
//! the latter to Docker Hub, but nothing says the content came from there, so such names are
//! not mirrored.

use shoal_oci::{Digest, Reference, TagKey};

/// What an image name says about the image's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ImageName {
    /// A fully qualified reference. `tagged` is true when the name itself carries a tag and no
    /// digest (a bare `localhost:5000/x` is not taken to mean `:latest`).
    Qualified { reference: Reference, tagged: bool },
    /// The CRI's `sha256:<config digest>` alias of another image.
    CriAlias,
    /// A name without a registry host, or one that does not parse.
    Unqualified(String),
}

impl ImageName {
    pub(crate) fn parse(name: &str) -> ImageName {
        if name.parse::<Digest>().is_ok() {
            return ImageName::CriAlias;
        }
        let host = name.split_once('/').map(|(first, _)| first);
        // Docker's rule for telling a host from a first path component.
        if !host.is_some_and(|h| h.contains(['.', ':']) || h == "localhost") {
            return ImageName::Unqualified("no registry host in the name".to_owned());
        }
        match Reference::parse(name) {
            Ok(reference) => {
                let last = name.rsplit('/').next().unwrap_or_default();
                let tagged = reference.digest().is_none() && last.contains(':');
                ImageName::Qualified { reference, tagged }
            }
            Err(e) => ImageName::Unqualified(e.to_string()),
        }
    }

    /// The registry host, for qualified names.
    #[cfg(test)]
    pub(crate) fn registry(&self) -> Option<&str> {
        match self {
            ImageName::Qualified { reference, .. } => Some(reference.registry()),
            _ => None,
        }
    }

    /// The tag key, for a name that is a plain tag reference (a name like `x:v1@sha256:…` says
    /// nothing reliable about what `x:v1` points to upstream).
    pub(crate) fn tag_key(&self) -> Option<TagKey> {
        match self {
            ImageName::Qualified {
                reference,
                tagged: true,
            } => reference.tag_key(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn tag_names() {
        let n = ImageName::parse("docker.io/library/x:v1");
        assert_eq!(n.registry(), Some("docker.io"));
        assert_eq!(n.tag_key().unwrap().to_string(), "docker.io/library/x:v1");
        let n = ImageName::parse("localhost:5000/a/b:v1");
        assert_eq!(n.registry(), Some("localhost:5000"));
        assert_eq!(n.tag_key().unwrap().to_string(), "localhost:5000/a/b:v1");
        let n = ImageName::parse("index.docker.io/library/x:v1");
        assert_eq!(n.tag_key().unwrap().to_string(), "docker.io/library/x:v1");
    }

    #[test]
    fn digest_and_bare_names_have_no_tag_key() {
        let n = ImageName::parse(&format!("docker.io/library/x@sha256:{HEX}"));
        assert_eq!(n.registry(), Some("docker.io"));
        assert_eq!(n.tag_key(), None);
        let n = ImageName::parse(&format!("127.0.0.1:5000/x:v1@sha256:{HEX}"));
        assert_eq!(n.registry(), Some("127.0.0.1:5000"));
        assert_eq!(n.tag_key(), None);
        let n = ImageName::parse("localhost:5000/x");
        assert_eq!(n.registry(), Some("localhost:5000"));
        assert_eq!(n.tag_key(), None);
    }

    #[test]
    fn unusable_names() {
        assert_eq!(
            ImageName::parse(&format!("sha256:{HEX}")),
            ImageName::CriAlias
        );
        assert!(matches!(
            ImageName::parse("x:v1"),
            ImageName::Unqualified(_)
        ));
        assert!(matches!(
            ImageName::parse("library/x:v1"),
            ImageName::Unqualified(_)
        ));
        assert!(matches!(
            ImageName::parse("docker.io/x@sha256:../../etc"),
            ImageName::Unqualified(_)
        ));
        assert!(matches!(
            ImageName::parse("docker.io/:v1"),
            ImageName::Unqualified(_)
        ));
        assert!(matches!(
            ImageName::parse("docker.io/Upper:v1"),
            ImageName::Unqualified(_)
        ));
    }
}
