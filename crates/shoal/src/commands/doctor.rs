//! `shoal doctor`: runs every check of `crate::doctor` and prints PASS/WARN/FAIL/SKIP with the
//! evidence and the fix. Works without the daemon (only the checks that need it are affected).
//! Exit codes (docs/doctor.md): 0 healthy, 1 a check failed, 2 bad command line, 3 no failure
//! but the daemon is not running on this node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::admin::render;
use crate::cli::RegistryArgs;
use crate::doctor::layout::Layout;
use crate::doctor::{self, Inputs};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 healthy (WARN and SKIP allowed); 1 at least one check \
FAILed (a pull on this node fails, hangs or bypasses the allowlist); 2 bad command line; 3 no \
failure, but the shoal daemon is not running on this node (pulls go upstream). --json carries \
the same as `verdict` and `exit_code`. Every check: docs/doctor.md."
)]
pub struct Args {
    /// Where the node's filesystem is: `/` on the node, or its hostPath mount in a pod. The
    /// layout (Talos, k3s, RKE2, plain containerd) is recognised there and gives the defaults
    /// of the paths below.
    #[arg(long, env = "SHOAL_HOST_ROOT", default_value = "/")]
    pub host_root: PathBuf,

    /// containerd's hosts directory (registry config_path). Default by layout: Talos
    /// /etc/cri/conf.d/hosts; k3s/RKE2 /var/lib/rancher/<k3s|rke2>/agent/etc/containerd/certs.d;
    /// else /etc/containerd/certs.d.
    #[arg(long, env = "SHOAL_HOSTS_DIR")]
    pub hosts_dir: Option<PathBuf>,

    /// containerd's config file. Default by layout: Talos /etc/cri/containerd.toml; k3s/RKE2
    /// /var/lib/rancher/<k3s|rke2>/agent/etc/containerd/config.toml; else
    /// /etc/containerd/config.toml.
    #[arg(long, env = "SHOAL_CONTAINERD_CONFIG")]
    pub containerd_config: Option<PathBuf>,

    /// containerd's gRPC socket. Default: /run/k3s/containerd/containerd.sock on k3s/RKE2,
    /// else /run/containerd/containerd.sock.
    #[arg(long, env = "SHOAL_CONTAINERD_SOCKET")]
    pub containerd_socket: Option<PathBuf>,

    /// containerd's root (its ingests are checked there). Default: `root` of its config, else
    /// the layout's (k3s/RKE2 pass it on containerd's command line:
    /// /var/lib/rancher/<k3s|rke2>/agent/containerd; else /var/lib/containerd).
    #[arg(long, env = "SHOAL_CONTAINERD_ROOT")]
    pub containerd_root: Option<PathBuf>,

    /// The daemon's admin socket.
    #[arg(long, env = "SHOAL_ADMIN_SOCKET", default_value = crate::admin::DEFAULT_SOCKET)]
    pub admin_socket: PathBuf,

    #[command(flatten)]
    pub registries: RegistryArgs,

    /// Shoal mirror URL(s), to recognise Shoal's `[host]` entries written by other tools
    /// (entries written by `shoal configure` are recognised by their marker comment).
    #[arg(long = "mirror", env = "SHOAL_MIRRORS", value_delimiter = ',')]
    pub mirrors: Vec<String>,

    /// An ingest untouched for longer than this is reported stale.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub stale_ingest_after: Duration,

    /// Bound of each network or RPC probe.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// An endpoint answering `/v2/`, or a registry endpoint's 256 KiB ranged read, slower than
    /// this is reported slow.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub slow_after: Duration,

    /// Print JSON instead of the report.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let layout = Layout::detect(&args.host_root);
    let paths = layout.paths(&args.host_root);
    let inputs = Inputs {
        hosts_dir: args.hosts_dir.unwrap_or(paths.hosts_dir),
        containerd_config: args.containerd_config.unwrap_or(paths.config),
        containerd_socket: args.containerd_socket.unwrap_or(paths.socket),
        containerd_root: args.containerd_root,
        host_root: args.host_root,
        admin_socket: args.admin_socket,
        allowlist: args.registries.allowlist(),
        mirrors: args.mirrors,
        stale_after: args.stale_ingest_after,
        timeout: args.timeout,
        slow_after: args.slow_after,
        talos: layout == Layout::Talos,
        layout,
    };
    let report = doctor::run(&inputs).await;
    if args.json {
        render::print_json(&report)?;
    } else {
        print!("{}", doctor::text(&report, render::colour()));
    }
    Ok(ExitCode::from(report.exit_code))
}
