//! How a Shoal [`Key`] becomes a Kademlia record key.
//!
//! The record key is `sha256("shoal/v1/" + key.to_string())`, 32 bytes. For a digest the string is
//! `sha256:<hex>`, for a tag `registry/repository:tag` with the registry normalised by
//! `shoal-oci`. Hashing gives keys spread uniformly over the XOR space whatever their text (tags
//! from one registry would otherwise cluster), fixed-size keys, and the `shoal/v1/` prefix keeps
//! Shoal's keys apart from any other use of the same digest and lets a future format change the
//! version without colliding with v1 records.

use libp2p::kad::RecordKey;
use sha2::{Digest as _, Sha256};
use shoal_oci::Key;

/// Namespace prepended to every key before hashing.
pub const KEY_NAMESPACE: &str = "shoal/v1/";

/// The Kademlia record key under which providers of `key` are advertised.
pub fn record_key(key: &Key) -> RecordKey {
    let mut h = Sha256::new();
    h.update(KEY_NAMESPACE.as_bytes());
    h.update(key.to_string().as_bytes());
    RecordKey::new(&h.finalize().as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_documented_sha256_of_namespaced_string() {
        let k: Key = "docker.io/library/nginx:1.27".parse().unwrap();
        let expected = Sha256::digest(b"shoal/v1/docker.io/library/nginx:1.27");
        assert_eq!(record_key(&k).as_ref(), expected.as_slice());
        // Normalised registry spellings map to the same record.
        let k2: Key = "index.docker.io/library/nginx:1.27".parse().unwrap();
        assert_eq!(record_key(&k), record_key(&k2));
        let d: Key = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        assert_ne!(record_key(&d), record_key(&k));
        assert_eq!(record_key(&d).as_ref().len(), 32);
    }
}
