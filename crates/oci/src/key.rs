//! What a node advertises: a content digest, or a tag key `registry/repository:tag`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Digest;

/// A tag key `registry/repository:tag`, e.g. `docker.io/library/nginx:1.27`.
///
/// The registry is normalised (see [`crate::normalize_registry`]) so that every node computes
/// the same key for the same tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagKey {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

impl TagKey {
    pub fn new(
        registry: impl Into<String>,
        repository: impl Into<String>,
        tag: impl Into<String>,
    ) -> Self {
        TagKey {
            registry: crate::normalize_registry(&registry.into()),
            repository: repository.into(),
            tag: tag.into(),
        }
    }
}

impl fmt::Display for TagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

/// A key on the DHT: either content (`sha256:…`) or a tag (`docker.io/library/x:v1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Digest(Digest),
    Tag(TagKey),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Digest(d) => d.fmt(f),
            Key::Tag(t) => t.fmt(f),
        }
    }
}

/// Why a key string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("invalid digest key: {0}")]
    Digest(#[from] crate::DigestError),
    #[error("tag key {0:?} is not of the form registry/repository:tag")]
    Tag(String),
}

impl FromStr for Key {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("sha256:") || s.starts_with("sha512:") {
            return Ok(Key::Digest(s.parse()?));
        }
        let bad = || KeyError::Tag(s.to_owned());
        let (registry, rest) = s.split_once('/').ok_or_else(bad)?;
        let (repository, tag) = rest.rsplit_once(':').ok_or_else(bad)?;
        if registry.is_empty() || repository.is_empty() || tag.is_empty() || tag.contains('/') {
            return Err(bad());
        }
        Ok(Key::Tag(TagKey::new(registry, repository, tag)))
    }
}

impl From<Digest> for Key {
    fn from(d: Digest) -> Self {
        Key::Digest(d)
    }
}

impl From<TagKey> for Key {
    fn from(t: TagKey) -> Self {
        Key::Tag(t)
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_key_round_trips_with_port() {
        let k: Key = "localhost:5000/a/b:v1".parse().unwrap();
        assert_eq!(k, Key::Tag(TagKey::new("localhost:5000", "a/b", "v1")));
        assert_eq!(k.to_string(), "localhost:5000/a/b:v1");
    }

    #[test]
    fn tag_key_normalises_docker_hub() {
        let k: Key = "index.docker.io/library/x:v1".parse().unwrap();
        assert_eq!(k.to_string(), "docker.io/library/x:v1");
    }

    #[test]
    fn refuses_keys_without_tag() {
        assert!("docker.io/library/x".parse::<Key>().is_err());
        assert!("nothing".parse::<Key>().is_err());
    }
}
