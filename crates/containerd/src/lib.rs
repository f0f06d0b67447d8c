//! Shoal's view of the node's containerd: which images and blobs it holds (and so which keys
//! this node can advertise), the bytes of those blobs, and a stream of changes as images are
//! pulled, removed and garbage-collected.
//!
//! - [`ContentSource::connect`] opens the socket and checks the namespace ([`client`]).
//! - [`ContentSource::inventory`] walks images down to present blobs ([`inventory`]).
//! - [`ContentSource::read`] / [`ContentSource::read_range`] stream a blob ([`read`]).
//! - [`ContentSource::read_growing`] reads a blob while containerd still writes it ([`growing`]).
//! - [`ContentSource::abort_ingests`] aborts the in-progress writes of a digest ([`ingest`]).
//! - [`ContentSource::watch`] emits [`Change`]s on a bounded channel ([`watch`]).

pub mod client;
pub mod error;
pub mod growing;
pub mod ingest;
pub mod inventory;
mod name;
pub mod read;
pub mod watch;

pub use client::{ContainerdVersion, ContentSource};
pub use error::{Error, parse_digest};
pub use growing::Growing;
pub use ingest::Ingest;
pub use inventory::{BlobInfo, Descriptor, ImageInfo, Inventory, SkippedImage};
pub use read::{Blob, ByteStream, MAX_CHUNK, MIN_CHUNK, ReadPath, chunk_len};
pub use tokio_util::sync::CancellationToken;
pub use watch::{Change, WatchConfig};
