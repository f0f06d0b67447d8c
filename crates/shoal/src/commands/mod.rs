//! One module per subcommand. Each exposes `Args` (clap) and `async fn run(Args) -> Result<ExitCode>`.

pub mod content;
