//! `shoal doctor`: runs every check of `crate::doctor` and prints PASS/WARN/FAIL/SKIP with the
//! evidence and the fix. Works without the daemon (only the checks that need it are affected);
//! exits non-zero when any check fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::admin::render;
use crate::cli::RegistryArgs;
use crate::doctor::{self, Inputs};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// containerd's hosts directory (registry config_path). Default: /etc/cri/conf.d/hosts on
    /// Talos, /etc/containerd/certs.d elsewhere.
    #[arg(long, env = "SHOAL_HOSTS_DIR")]
    pub hosts_dir: Option<PathBuf>,

    /// containerd's config file. Default: /etc/cri/containerd.toml on Talos,
    /// /etc/containerd/config.toml elsewhere.
    #[arg(long, env = "SHOAL_CONTAINERD_CONFIG")]
    pub containerd_config: Option<PathBuf>,

    /// containerd's gRPC socket.
    #[arg(
        long,
        env = "SHOAL_CONTAINERD_SOCKET",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_socket: PathBuf,

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

    /// A mirror answering `/v2/` slower than this is reported slow.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub slow_after: Duration,

    /// Print JSON instead of the report.
    #[arg(long)]
    pub json: bool,
}

/// Talos keeps containerd's CRI config under /etc/cri.
pub fn is_talos(root: &Path) -> bool {
    let os_release = std::fs::read_to_string(root.join("etc/os-release")).unwrap_or_default();
    os_release.lines().any(|l| l.trim() == "ID=talos") || root.join("etc/cri").is_dir()
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let talos = is_talos(Path::new("/"));
    let (hosts, config) = if talos {
        ("/etc/cri/conf.d/hosts", "/etc/cri/containerd.toml")
    } else {
        ("/etc/containerd/certs.d", "/etc/containerd/config.toml")
    };
    let inputs = Inputs {
        hosts_dir: args.hosts_dir.unwrap_or_else(|| hosts.into()),
        containerd_config: args.containerd_config.unwrap_or_else(|| config.into()),
        containerd_socket: args.containerd_socket,
        admin_socket: args.admin_socket,
        allowlist: args.registries.allowlist(),
        mirrors: args.mirrors,
        stale_after: args.stale_ingest_after,
        timeout: args.timeout,
        slow_after: args.slow_after,
        talos,
    };
    let report = doctor::run(&inputs).await;
    if args.json {
        render::print_json(&report)?;
    } else {
        print!("{}", doctor::text(&report, render::colour()));
    }
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_talos_by_os_release_or_cri_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_talos(dir.path()));
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/os-release"), "NAME=Talos\nID=talos\n").unwrap();
        assert!(is_talos(dir.path()));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/cri")).unwrap();
        assert!(is_talos(dir.path()));
    }
}
