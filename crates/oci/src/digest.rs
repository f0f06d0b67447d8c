//! Content digests (`sha256:<64 hex>`, `sha512:<128 hex>`), validated on parse.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

use crate::chain::{ChainHasher, ChainState, NotAligned};

/// A digest algorithm Shoal can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The name used in the digest string (`sha256`).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex-encoded hash.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// A fresh incremental hasher for this algorithm.
    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Box::new(sha2::Sha512::new())),
        }
    }
}

/// An incremental hasher producing a [`Digest`]; used to verify bytes while they stream.
#[derive(Debug, Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(Box<sha2::Sha512>),
    /// SHA-256 resumed from a chaining state part-way through the stream.
    Sha256Chain(ChainHasher),
}

impl Hasher {
    /// A SHA-256 hasher for a stream whose first `offset` bytes left SHA-256 in `state`.
    pub fn resume_sha256(state: ChainState, offset: u64) -> Result<Hasher, NotAligned> {
        ChainHasher::resume(state, offset).map(Hasher::Sha256Chain)
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
            Hasher::Sha256Chain(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256Chain(h) => h.finish(),
            Hasher::Sha256(h) => Digest {
                algorithm: Algorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Hasher::Sha512(h) => Digest {
                algorithm: Algorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} has no ':' separating algorithm and hex")]
    MissingSeparator(String),
    #[error("digest algorithm {0:?} is not supported (sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    #[error("digest hex for {algorithm} must be {expected} characters, got {actual}")]
    BadLength {
        algorithm: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("digest hex contains {0:?}; only lowercase 0-9a-f are allowed")]
    BadHex(char),
}

/// A validated content digest. Displays as `algorithm:hex`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// The digest whose hash is `raw` (the algorithm's output bytes).
    pub(crate) fn from_raw(algorithm: Algorithm, raw: &[u8]) -> Digest {
        Digest {
            algorithm,
            hex: hex::encode(raw),
        }
    }

    /// Digest of `data` with `algorithm`.
    pub fn compute(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut h = algorithm.hasher();
        h.update(data);
        h.finish()
    }

    /// sha256 of `data`.
    pub fn sha256_of(data: &[u8]) -> Digest {
        Self::compute(Algorithm::Sha256, data)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part, already validated (safe to use as a path component).
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A hasher that will produce a digest comparable with this one.
    pub fn hasher(&self) -> Hasher {
        self.algorithm.hasher()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::MissingSeparator(s.to_owned()))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        if let Some(c) = hex.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(DigestError::BadHex(c));
        }
        if hex.len() != algorithm.hex_len() {
            return Err(DigestError::BadLength {
                algorithm: algorithm.as_str(),
                expected: algorithm.hex_len(),
                actual: hex.len(),
            });
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn computes_known_sha256() {
        assert_eq!(Digest::sha256_of(b"").to_string(), EMPTY);
    }

    #[test]
    fn parses_and_prints() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY);
    }

    #[test]
    fn refuses_bad_input_with_reason() {
        assert_eq!(
            "sha256".parse::<Digest>(),
            Err(DigestError::MissingSeparator("sha256".into()))
        );
        assert_eq!(
            "md5:abcd".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm("md5".into()))
        );
        assert!(matches!(
            "sha256:abcd".parse::<Digest>(),
            Err(DigestError::BadLength {
                expected: 64,
                actual: 4,
                ..
            })
        ));
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert!(matches!(
            upper.parse::<Digest>(),
            Err(DigestError::BadHex('E'))
        ));
        let traversal = format!("sha256:../{}", &EMPTY[10..]);
        assert!(matches!(
            traversal.parse::<Digest>(),
            Err(DigestError::BadHex('.'))
        ));
    }
}
