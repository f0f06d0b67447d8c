//! The checks that talk to something: containerd's Version RPC, HTTP(S) probes of the endpoints
//! named in hosts.toml (with the `ca` and `skip_verify` containerd would use), name resolution,
//! and the daemon's admin socket. Each is bounded by `Inputs::timeout`; only hosts named in the
//! node's hosts.toml files are contacted.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use containerd_client::services::v1::version_client::VersionClient;

use super::hosts::{HostsFile, Tls, host_of};
use super::{Check, Inputs, Level};
use crate::admin::proto::StatusRequest;

type Files = Result<Vec<HostsFile>, String>;

/// Most endpoints or names probed per check (a hosts dir is small; this bounds the odd one).
pub(super) const MAX_PROBES: usize = 64;

/// containerd's version, or why it is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    Known { version: String, revision: String },
    Unknown(String),
}

impl Version {
    pub fn major_minor(&self) -> Option<(u32, u32)> {
        match self {
            Version::Known { version, .. } => super::checks::version_major_minor(version),
            Version::Unknown(_) => None,
        }
    }
}

/// Asks containerd at `socket` its version, within `timeout`.
pub async fn containerd_version(socket: &Path, timeout: Duration) -> Version {
    let ask = async {
        let ch = containerd_client::connect(socket)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
        let v = VersionClient::new(ch)
            .version(())
            .await
            .map_err(|s| format!("Version call failed: {}", s.message()))?
            .into_inner();
        Ok::<_, String>(Version::Known {
            version: v.version,
            revision: v.revision,
        })
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => Version::Unknown(e),
        Err(_) => Version::Unknown(format!(
            "containerd at {} did not answer within {timeout:?}",
            socket.display()
        )),
    }
}

/// The images of containerd's `k8s.io` namespace (name, target digest), within `timeout`.
pub async fn node_images(
    socket: &Path,
    timeout: Duration,
) -> Result<Vec<(String, String)>, String> {
    use containerd_client::services::v1::ListImagesRequest;
    use containerd_client::services::v1::images_client::ImagesClient;
    let ask = async {
        let ch = containerd_client::connect(socket)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
        let mut req = tonic::Request::new(ListImagesRequest::default());
        req.metadata_mut().insert(
            "containerd-namespace",
            tonic::metadata::MetadataValue::from_static("k8s.io"),
        );
        let images = ImagesClient::new(ch)
            .list(req)
            .await
            .map_err(|s| format!("Images.List failed: {}", s.message()))?
            .into_inner()
            .images;
        Ok::<_, String>(
            images
                .into_iter()
                .filter_map(|i| Some((i.name, i.target?.digest)))
                .collect(),
        )
    };
    tokio::time::timeout(timeout, ask)
        .await
        .unwrap_or_else(|_| Err(format!("containerd did not list images within {timeout:?}")))
}

/// A client that talks TLS to an endpoint the way containerd would: the system's roots plus the
/// endpoint's `ca` files, or no verification with `skip_verify`.
pub(super) fn client(timeout: Duration, tls: &Tls) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    for path in &tls.ca {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read its CA file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!(
                "its CA file {} holds no PEM certificate: {e}",
                path.display()
            )
        })?;
        b = b.tls_certs_merge(certs);
    }
    if tls.skip_verify {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// Every endpoint of `files` that `keep` accepts (by whether it is Shoal's), with its TLS; an
/// URL named in two files with different TLS settings is probed once for each.
fn endpoints(files: &[HostsFile], keep: impl Fn(bool) -> bool) -> BTreeSet<(String, Tls)> {
    files
        .iter()
        .flat_map(|f| {
            f.endpoints()
                .into_iter()
                .filter(|(_, shoal)| keep(*shoal))
                .map(|(url, _)| {
                    let tls = f.tls_for(&url);
                    (url, tls)
                })
        })
        .collect()
}

/// Whether a request failed on the TLS handshake's certificate check.
pub(super) fn is_certificate_error(chain: &str) -> bool {
    let c = chain.to_ascii_lowercase();
    c.contains("certificate") || c.contains("unknownissuer")
}

pub(super) fn v2(url: &str) -> String {
    format!("{}/v2/", url.trim_end_matches('/').trim_end_matches("/v2"))
}

/// Check 8: The mirror containerd is told to ask first must answer, and fast.
pub async fn mirror_reachable(inputs: &Inputs, files: &Files) -> Check {
    let mut c = Check::new(
        "mirror-reachable",
        "Shoal's mirror endpoint answers from this node",
    );
    let mut urls = files
        .as_ref()
        .map(|f| endpoints(f, |shoal| shoal))
        .unwrap_or_default();
    for m in &inputs.mirrors {
        if !urls.iter().any(|(u, _)| u == m) {
            urls.insert((m.clone(), Tls::default()));
        }
    }
    if urls.is_empty() {
        c.raise(
            Level::Skip,
            "no hosts.toml names a Shoal mirror (see check 2), and no --mirror given",
        );
        return c;
    }
    for (url, tls) in urls.into_iter().take(MAX_PROBES) {
        let http = match client(inputs.timeout, &tls) {
            Ok(h) => h,
            Err(e) => {
                c.raise(Level::Fail, format!("{url}: {e}"));
                continue;
            }
        };
        let started = Instant::now();
        match http.get(v2(&url)).send().await {
            Ok(resp) => {
                let took = started.elapsed();
                let fact = format!(
                    "GET {} -> {} in {}",
                    v2(&url),
                    resp.status(),
                    crate::admin::render::age(took)
                );
                if took > inputs.slow_after {
                    c.raise(
                        Level::Warn,
                        format!("{fact} (slower than {:?})", inputs.slow_after),
                    );
                } else {
                    c.note(fact);
                }
            }
            Err(e) if e.is_connect() && !e.is_timeout() => c.raise(
                Level::Warn,
                format!(
                    "GET {}: {} (containerd skips a refusing mirror and pulls from the next \
                     endpoint: pulls work, without peers)",
                    v2(&url),
                    error_chain(&e)
                ),
            ),
            Err(e) => c.raise(
                Level::Fail,
                format!(
                    "GET {}: {}{}",
                    v2(&url),
                    error_chain(&e),
                    if e.is_timeout() {
                        " (a hanging mirror stalls every pull that asks it first)"
                    } else {
                        ""
                    }
                ),
            ),
        }
    }
    c.fix(
        "check that the shoal DaemonSet pod runs on this node (`kubectl -n <ns> get pod -o wide`) and \
         listens on the host network at the address in hosts.toml (`shoal status`); containerd skips a \
         refusing mirror but a hanging one stalls every pull",
    )
}

/// Check 9: Every host named in a hosts.toml must resolve from the node (containerd runs in the host's
/// network and cannot resolve cluster service names without an /etc/hosts entry).
pub async fn hosts_resolve(inputs: &Inputs, files: &Files) -> Check {
    let mut c = Check::new(
        "hosts-resolve",
        "every host named in hosts.toml resolves from this node",
    );
    let Ok(files) = files else {
        c.raise(Level::Skip, "hosts directory unreadable (see check 1)");
        return c;
    };
    let mut names: BTreeSet<(String, String)> = BTreeSet::new();
    for f in files {
        for (url, _) in f.endpoints() {
            if let Some(h) = host_of(&url).filter(|h| h.parse::<std::net::IpAddr>().is_err()) {
                names.insert((h, f.path.display().to_string()));
            }
        }
    }
    if names.is_empty() {
        c.note("hosts.toml files name IP addresses only");
        return c;
    }
    let lookups = names
        .into_iter()
        .take(MAX_PROBES)
        .map(|(host, file)| async move {
            let res = resolve(&host, inputs.timeout).await;
            (host, file, res)
        });
    for (host, file, res) in futures::future::join_all(lookups).await {
        match res {
            Ok(addrs) => c.note(format!("{host} -> {addrs}")),
            Err(e) => c.raise(
                Level::Fail,
                format!("{host} (named in {file}) does not resolve: {e}"),
            ),
        }
    }
    c.fix(
        "add the name to the node's /etc/hosts (Talos: machine.network.extraHostEntries with the \
         service's ClusterIP) or fix the node's DNS; cluster-internal names (*.svc.cluster.local) do \
         not resolve on the host",
    )
}

/// Resolves `host` with the system resolver (so /etc/hosts counts) on its own thread, so a
/// stuck resolver cannot outlive `timeout` in this command.
async fn resolve(host: &str, timeout: Duration) -> Result<String, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("doctor-resolve".into())
        .spawn(move || {
            use std::net::ToSocketAddrs;
            let r = (name.as_str(), 0)
                .to_socket_addrs()
                .map(|it| it.map(|a| a.ip().to_string()).collect::<BTreeSet<_>>());
            let _ = tx.send(r);
        })
        .map_err(|e| format!("cannot start a resolver thread: {e}"))?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(Ok(ips))) if !ips.is_empty() => Ok(ips.into_iter().collect::<Vec<_>>().join(", ")),
        Ok(Ok(Ok(_))) => Err("no address".into()),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(_)) => Err("resolver thread failed".into()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Whether the daemon answers on its admin socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DaemonState {
    Running,
    /// No socket, or nothing listening on it: the daemon is not running on this node.
    NotRunning,
    /// Something listens but does not answer in time, or answers with an error.
    Broken,
}

/// Check: The daemon is up and found peers. A daemon that is not running is SKIP (pulls go
/// upstream; the report's exit code says so), a stuck one FAIL.
pub async fn daemon_peers(inputs: &Inputs) -> (Check, DaemonState, Option<Vec<String>>) {
    let mut c = Check::new("peers", "the daemon runs and has peers");
    let sock = &inputs.admin_socket;
    let connect = tokio::time::timeout(inputs.timeout, tokio::net::UnixStream::connect(sock));
    match connect.await {
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            c.raise(
                Level::Skip,
                format!(
                    "the shoal daemon is not running on this node (admin socket {}: {e})",
                    sock.display()
                ),
            );
            let c = c.fix(format!(
                "start the shoal DaemonSet on this node (`kubectl -n <ns> get pods -o wide`) and look                  at its logs; if it runs in a container, pass its socket with --admin-socket (now {})",
                sock.display()
            ));
            return (c, DaemonState::NotRunning, None);
        }
        Ok(Err(e)) => {
            c.raise(Level::Fail, format!("admin socket {}: {e}", sock.display()));
            let c = c.fix(
                "check the admin socket's permissions (run doctor as root) and the daemon's logs",
            );
            return (c, DaemonState::Broken, None);
        }
        _ => {}
    }
    let ask = async {
        let mut client = crate::admin::connect(sock).await?;
        let s = client
            .status(StatusRequest {})
            .await
            .map_err(crate::admin::client::status_error)?
            .into_inner();
        Ok::<_, anyhow::Error>(s)
    };
    let status = match tokio::time::timeout(inputs.timeout, ask).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            c.raise(Level::Fail, format!("{e}: {}", e.root_cause()));
            let c = c.fix("the daemon's admin API fails: look at its logs and restart its pod");
            return (c, DaemonState::Broken, None);
        }
        Err(_) => {
            c.raise(
                Level::Fail,
                format!("the daemon did not answer within {:?}", inputs.timeout),
            );
            let c = c.fix("the daemon is stuck: look at its logs and restart its pod");
            return (c, DaemonState::Broken, None);
        }
    };
    c.note(format!(
        "daemon {} ({})",
        status.peer_id,
        if status.ready { "ready" } else { "not ready" }
    ));
    if status.peers.is_empty() {
        c.raise(Level::Warn, format!("zero peers: {}", status.ready_reason));
    } else {
        c.note(format!(
            "{} peer(s) connected; {}",
            status.peers.len(),
            status.ready_reason
        ));
    }
    let c = c.fix(
        "check --bootstrap (static:/dns:/mdns) and that other nodes' p2p port (5001) is reachable \
         from this one; a one-node cluster has no peers by design",
    );
    (c, DaemonState::Running, Some(status.allowlist))
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// The body of `resp`, refused past `max` bytes.
pub(super) async fn read_bounded(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > max {
            return Err(format!("answer larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
