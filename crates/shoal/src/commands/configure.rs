//! `shoal configure`: write containerd hosts.toml so that allowlisted registries ask Shoal first.
//! It runs as the DaemonSet's init container, so it is idempotent (a second run writes nothing)
//! and fails before writing anything when any input is bad. See `shoal_hosts` for the rules.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::ArgAction;
use shoal_hosts::{MirrorHost, MirrorUrl, Plan, Settings};

use crate::cli::RegistryArgs;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Existing hosts.toml files are kept: Shoal's [host] tables go first, \
marked with a `# shoal-managed:` comment, and the original bytes are saved as \
hosts.toml.shoal-orig beside them so that --uninstall restores them exactly. Registries not \
listed (a private Harbor) are never touched; `_default` is written only with --all-registries."
)]
pub struct Args {
    /// containerd's registry config_path (Talos: /etc/cri/conf.d/hosts; commonly
    /// /etc/containerd/certs.d). It must exist.
    #[arg(long, env = "SHOAL_HOSTS_DIR")]
    pub hosts_dir: PathBuf,

    /// Shoal mirror endpoint, `http(s)://host[:port]`; repeat (or comma-separate in the env var)
    /// for several, tried in this order before any existing entry.
    #[arg(
        long = "mirror",
        env = "SHOAL_MIRRORS",
        value_delimiter = ',',
        required_unless_present = "uninstall"
    )]
    pub mirrors: Vec<MirrorUrl>,

    #[command(flatten)]
    pub registries: RegistryArgs,

    /// Let the mirror resolve tags (`capabilities = ["pull", "resolve"]`); `false` writes
    /// `["pull"]` so tags always resolve upstream.
    #[arg(long, env = "SHOAL_RESOLVE_TAGS", default_value_t = true, action = ArgAction::Set)]
    pub resolve_tags: bool,

    /// Write `dial_timeout` for Shoal's hosts (e.g. `200ms`). containerd honours it from 2.1;
    /// older versions ignore the key (checked with 1.6.20).
    #[arg(long, env = "SHOAL_DIAL_TIMEOUT", value_parser = humantime::parse_duration)]
    pub dial_timeout: Option<Duration>,

    /// Remove everything Shoal wrote and restore every file to its pre-Shoal bytes.
    #[arg(long, env = "SHOAL_UNINSTALL")]
    pub uninstall: bool,

    /// Print the plan (with a diff of each hosts.toml) and change nothing.
    #[arg(long, env = "SHOAL_DRY_RUN")]
    pub dry_run: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = args.hosts_dir.clone();
    let dry_run = args.dry_run;
    let uninstall = args.uninstall;
    let settings = Settings {
        mirrors: args.mirrors.into_iter().map(MirrorHost::new).collect(),
        allowlist: args.registries.allowlist(),
        resolve_tags: args.resolve_tags,
        dial_timeout: args.dial_timeout,
    };
    // Small synchronous file work; keep it off the async workers anyway.
    let plan = tokio::task::spawn_blocking(move || {
        if uninstall {
            shoal_hosts::uninstall(&root, dry_run)
        } else {
            shoal_hosts::configure(&root, &settings, dry_run)
        }
    })
    .await
    .context("configure task failed")??;
    report(&plan, dry_run, uninstall, &args.hosts_dir);
    Ok(ExitCode::SUCCESS)
}

fn report(plan: &Plan, dry_run: bool, uninstall: bool, root: &std::path::Path) {
    for w in &plan.warnings {
        tracing::warn!(hosts_dir = %root.display(), "{w}");
        eprintln!("shoal: warning: {w}");
    }
    let what = if uninstall { "uninstall" } else { "configure" };
    if dry_run {
        println!("# dry run: shoal configure would change {}", root.display());
        print!("{}", plan.render(true));
    } else {
        print!("{}", plan.render(false));
        let changed = plan.dirs.iter().filter(|d| !d.ops.is_empty()).count();
        tracing::info!(hosts_dir = %root.display(), changed, "{what} done");
    }
}
