//! `shoal content`: what this node holds and would advertise.

use std::process::ExitCode;

use crate::cli::{ContainerdArgs, RegistryArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub containerd: ContainerdArgs,
    #[command(flatten)]
    pub registries: RegistryArgs,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "shoal content is not wired yet (socket {})",
        args.containerd.containerd_socket.display()
    )
}
