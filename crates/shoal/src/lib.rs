//! The Shoal daemon and its node-level CLI, as a library: `cli` parses flags (each also an
//! `SHOAL_*` environment variable), `commands` holds one module per subcommand.

pub mod admin;
pub mod app;
pub mod cli;
pub mod commands;
pub mod doctor;
