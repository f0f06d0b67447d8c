//! One module per subcommand. Each exposes `Args` (clap) and `async fn run(Args) -> Result<ExitCode>`.

pub mod configure;
pub mod content;
pub mod daemon;
pub mod doctor;
pub mod explain;
pub mod find;
pub mod peers;
pub mod status;
