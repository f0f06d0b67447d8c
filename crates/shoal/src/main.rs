//! `shoal`: one binary, many subcommands. All wiring lives in the `shoal` library so that tests
//! build exactly what runs in production; `main` only parses, runs and maps the exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = shoal::cli::Cli::parse();
    shoal::cli::run(cli)
}
