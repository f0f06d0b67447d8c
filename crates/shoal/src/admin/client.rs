//! Connecting the CLI to the daemon's admin socket, with an error that says what to do when the
//! daemon is not there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::proto::admin_client::AdminClient;

/// Connecting must not hang a CLI.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A client on the admin socket at `path`.
pub async fn connect(path: &Path) -> anyhow::Result<AdminClient<Channel>> {
    let socket: PathBuf = path.to_owned();
    // The URI is required by tonic but unused: every connection goes to the socket.
    let channel = Endpoint::try_from("http://[::1]:1")?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(Duration::from_secs(120))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .with_context(|| {
            format!(
                "cannot reach the shoal daemon at {} (is it running? pass --admin-socket or \
                 SHOAL_ADMIN_SOCKET; `shoal doctor` works without the daemon)",
                path.display()
            )
        })?;
    Ok(AdminClient::new(channel))
}

/// A gRPC error as one line for the terminal.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

/// Flags shared by the commands that talk to the daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The daemon's admin socket.
    #[arg(long, env = "SHOAL_ADMIN_SOCKET", default_value = super::DEFAULT_SOCKET)]
    pub admin_socket: PathBuf,

    /// Print JSON (the admin API's messages, field names as in admin.proto) instead of tables.
    #[arg(long)]
    pub json: bool,
}
