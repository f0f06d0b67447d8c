//! Pure OCI types shared by every Shoal crate: digests, references, media types, manifests,
//! distribution API paths, byte ranges and the OCI error body.
//!
//! This crate does no I/O. Everything that parses untrusted input (a request path, a `Range`
//! header, a manifest fetched from a peer) lives here so it can be property-tested and fuzzed
//! in isolation, and every other crate depends on it, never the other way round.

mod chain;
mod digest;
mod error;
mod key;
mod manifest;
pub mod media;
mod name;
mod path;
mod range;
mod reference;
mod registry;

pub use chain::{BLOCK as SHA256_BLOCK, ChainHasher, ChainState, NotAligned};
pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::{ErrorBody, ErrorCode, ErrorInfo};
pub use key::{Key, KeyError, TagKey};
pub use manifest::{
    Descriptor, Document, ImageIndex, ImageManifest, MAX_MANIFEST_BYTES, ManifestError, Platform,
};
pub use media::{ACCEPT_MANIFESTS, MediaKind, classify};
pub use name::{MAX_REPOSITORY_LEN, MAX_TAG_LEN, NameError, Repository, Tag, TagError};
pub use path::{ApiPath, ManifestRef, ManifestRefError, PathError, split_registry};
pub use range::{ByteRange, Range, RangeError};
pub use reference::{DEFAULT_REGISTRY, MAX_NAME_LEN, Reference, ReferenceError};
pub use registry::{Allowlist, DEFAULT_REGISTRIES, Registries, RegistryError, normalize_registry};
