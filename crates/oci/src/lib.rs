//! Pure OCI types shared by every Shoal crate: digests, references, media types, manifests,
//! distribution API paths, byte ranges and the OCI error body.
//!
//! This crate does no I/O. Everything that parses untrusted input (a request path, a `Range`
//! header, a manifest fetched from a peer) lives here so it can be property-tested and fuzzed
//! in isolation, and every other crate depends on it, never the other way round.

mod digest;
mod key;
mod registry;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use key::{Key, KeyError, TagKey};
pub use registry::{Allowlist, DEFAULT_REGISTRIES, RegistryError, normalize_registry};
