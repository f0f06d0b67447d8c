//! The crate's error type: one enum, each variant naming what was wrong and where.

use std::path::PathBuf;

/// Everything that can go wrong starting or talking to the p2p node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read pre-shared key file {path}: {source}")]
    PskRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pre-shared key file {path} is not a valid swarm.key: {reason}")]
    PskFormat { path: PathBuf, reason: String },
    #[error("peer identity file {path}: {reason}")]
    Identity { path: PathBuf, reason: String },
    #[error("invalid p2p configuration: {0}")]
    Config(String),
    #[error("cannot build the libp2p transport: {0}")]
    Transport(String),
    #[error("cannot start mDNS discovery: {0}")]
    Mdns(std::io::Error),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error(
        "cannot provide {requested} new keys: this node already provides {current} of at most {max} \
         (raise max_provided_keys)"
    )]
    TooManyKeys {
        requested: usize,
        current: usize,
        max: usize,
    },
    #[error("the p2p node has shut down")]
    Shutdown,
}

/// Why a `--bootstrap` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bootstrap {input:?}: {reason}")]
pub struct BootstrapParseError {
    pub input: String,
    pub reason: String,
}

/// A name that could not be resolved (returned by [`crate::Resolver`] implementations).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot resolve {name}: {reason}")]
pub struct ResolveError {
    pub name: String,
    pub reason: String,
}
