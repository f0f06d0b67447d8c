//! The daemon's node-local admin API (`proto/shoal/admin/v1/admin.proto`): the server the daemon
//! runs on a unix socket, the client `shoal status|peers|find|explain` use, and what both need
//! to turn the daemon's state into answers (image walking, request explanation, tables).
//!
//! It lives on a 0600 unix socket rather than a TCP port because it exposes node internals and
//! must never be reachable from the network.

pub mod client;
pub mod explain;
pub mod recent;
pub mod render;
pub mod resolve;
pub mod server;

/// Code generated from `admin.proto` by `build.rs`.
#[allow(clippy::all, missing_debug_implementations, missing_docs)]
pub mod proto {
    tonic::include_proto!("shoal.admin.v1");
}

pub use client::connect;
pub use server::{AdminState, bind, serve};

/// Where the daemon listens and the CLI connects by default.
pub const DEFAULT_SOCKET: &str = "/run/shoal/admin.sock";

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn epoch_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Milliseconds of a duration, saturating.
pub fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
