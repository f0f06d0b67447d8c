//! Command-line surface. Every flag is also an environment variable `SHOAL_<FLAG>`, the way a
//! DaemonSet configures a container.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use shoal_oci::Allowlist;

use crate::commands;

/// Peer-to-peer image-layer distribution for Kubernetes nodes.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info,shoal_p2p=debug`.
    #[arg(long, global = true, env = "SHOAL_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: follow containerd, advertise on the DHT, serve the mirror.
    Daemon(Box<commands::daemon::Args>),
    /// Print what this node's containerd holds and would advertise, per image.
    Content(commands::content::Args),
    /// Write containerd hosts.toml so allowlisted registries ask Shoal first (non-destructive;
    /// `--uninstall` restores the original files).
    Configure(commands::configure::Args),
    /// The running daemon at a glance: peer id, listeners, containerd, readiness, peers, errors.
    Status(commands::status::Args),
    /// Connected peers with address, connection age and latency.
    Peers(commands::peers::Args),
    /// Which nodes hold a digest, or each blob of an image.
    Find(commands::find::Args),
    /// Where the bytes of recent requests for a digest or image came from, and why.
    Explain(commands::explain::Args),
    /// Check this node's containerd and Shoal setup; works without the daemon.
    Doctor(commands::doctor::Args),
}

/// Where containerd is and which namespace holds the images.
#[derive(Debug, Clone, Args)]
pub struct ContainerdArgs {
    /// containerd's gRPC socket.
    #[arg(
        long,
        env = "SHOAL_CONTAINERD_SOCKET",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_socket: PathBuf,

    /// containerd namespace holding the node's images (the CRI uses `k8s.io`).
    #[arg(long, env = "SHOAL_CONTAINERD_NAMESPACE", default_value = "k8s.io")]
    pub containerd_namespace: String,

    /// containerd's content directory, read directly when readable (fast path); blobs are read
    /// through the content API otherwise.
    #[arg(
        long,
        env = "SHOAL_CONTAINERD_CONTENT_DIR",
        default_value = "/var/lib/containerd/io.containerd.content.v1.content"
    )]
    pub containerd_content_dir: PathBuf,
}

/// Which registries Shoal mirrors.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Comma-separated registries to mirror. Registries not listed (a private Harbor) are never
    /// configured, advertised or served.
    #[arg(
        long,
        env = "SHOAL_REGISTRIES",
        default_value = "docker.io,ghcr.io,gcr.io,registry.k8s.io,quay.io,mcr.microsoft.com,public.ecr.aws",
        conflicts_with = "all_registries"
    )]
    pub registries: Allowlist,

    /// Mirror every registry (writes containerd's catch-all `_default`). Off unless asked for.
    #[arg(long, env = "SHOAL_ALL_REGISTRIES")]
    pub all_registries: bool,
}

impl RegistryArgs {
    pub fn allowlist(&self) -> Allowlist {
        if self.all_registries {
            Allowlist::All
        } else {
            self.registries.clone()
        }
    }
}

/// Runs a parsed command line to its exit code. Errors are printed once, here.
pub fn run(cli: Cli) -> ExitCode {
    init_tracing(&cli.log);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Daemon(args) => commands::daemon::run(*args).await,
            Command::Content(args) => commands::content::run(args).await,
            Command::Configure(args) => commands::configure::run(args).await,
            Command::Status(args) => commands::status::run(args).await,
            Command::Peers(args) => commands::peers::run(args).await,
            Command::Find(args) => commands::find::run(args).await,
            Command::Explain(args) => commands::explain::run(args).await,
            Command::Doctor(args) => commands::doctor::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr so that stdout stays clean for tables and `--json`.
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // `RecentErrors` keeps the last warnings for `shoal status`.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(crate::admin::recent::RecentErrors)
        .try_init();
}
