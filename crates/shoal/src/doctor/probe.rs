//! The checks that talk to something: containerd's Version RPC, HTTP probes of the endpoints
//! named in hosts.toml, name resolution, and the daemon's admin socket. Each is bounded by
//! `Inputs::timeout`; only hosts named in the node's hosts.toml files are contacted.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use containerd_client::services::v1::version_client::VersionClient;

use super::config::ContainerdConfig;
use super::hosts::{HostsFile, host_of};
use super::{Check, Inputs, Level};
use crate::admin::proto::StatusRequest;

type Files = Result<Vec<HostsFile>, String>;

/// Most endpoints or names probed per check (a hosts dir is small; this bounds the odd one).
const MAX_PROBES: usize = 64;

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

fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

fn v2(url: &str) -> String {
    format!("{}/v2/", url.trim_end_matches('/').trim_end_matches("/v2"))
}

/// Check 8: The mirror containerd is told to ask first must answer, and fast.
pub async fn mirror_reachable(inputs: &Inputs, files: &Files) -> Check {
    let mut c = Check::new(
        "mirror-reachable",
        "Shoal's mirror endpoint answers from this node",
    );
    let mut urls: BTreeSet<String> = inputs.mirrors.iter().cloned().collect();
    if let Ok(files) = files {
        for f in files {
            urls.extend(f.hosts.iter().filter(|(_, s)| *s).map(|(u, _)| u.clone()));
        }
    }
    if urls.is_empty() {
        c.raise(
            Level::Skip,
            "no hosts.toml names a Shoal mirror (see check 2), and no --mirror given",
        );
        return c;
    }
    let http = match client(inputs.timeout) {
        Ok(h) => h,
        Err(e) => {
            c.raise(Level::Skip, e);
            return c;
        }
    };
    for url in urls.into_iter().take(MAX_PROBES) {
        if url.starts_with("https://") {
            c.raise(
                Level::Warn,
                format!("{url}: https endpoint not checked (this build has no TLS client)"),
            );
            continue;
        }
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
            Err(e) => c.raise(
                Level::Fail,
                format!("GET {}: {}", v2(&url), error_chain(&e)),
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

/// Check 10: A registry endpoint that wants credentials (HTTP Basic) for `/v2/`, with none configured.
pub async fn anonymous_401(
    inputs: &Inputs,
    files: &Files,
    cfg: &Result<ContainerdConfig, String>,
) -> Check {
    let mut c = Check::new(
        "registry-auth",
        "registry endpoints in hosts.toml accept this node's pulls (no 401 without credentials)",
    );
    let Ok(files) = files else {
        c.raise(Level::Skip, "hosts directory unreadable (see check 1)");
        return c;
    };
    let mut urls: BTreeSet<String> = BTreeSet::new();
    for f in files {
        urls.extend(
            f.endpoints()
                .into_iter()
                .filter(|(_, shoal)| !shoal)
                .map(|(u, _)| u),
        );
    }
    if urls.is_empty() {
        c.note("no registry endpoint named in hosts.toml");
        return c;
    }
    let http = match client(inputs.timeout) {
        Ok(h) => h,
        Err(e) => {
            c.raise(Level::Skip, e);
            return c;
        }
    };
    let mut needs_credentials = false;
    for url in urls.into_iter().take(MAX_PROBES) {
        if !url.starts_with("http://") {
            c.note(format!(
                "{url}: not checked (https needs TLS, which this build does not include)"
            ));
            continue;
        }
        let resp = match http.get(v2(&url)).send().await {
            Ok(r) => r,
            Err(e) => {
                c.raise(
                    Level::Warn,
                    format!("GET {}: {}", v2(&url), error_chain(&e)),
                );
                continue;
            }
        };
        let status = resp.status();
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if status != reqwest::StatusCode::UNAUTHORIZED {
            c.note(format!("GET {} -> {status}", v2(&url)));
            continue;
        }
        if challenge.to_ascii_lowercase().starts_with("bearer") {
            c.note(format!(
                "GET {} -> 401 with a token challenge (anonymous pulls get a token)",
                v2(&url)
            ));
            continue;
        }
        let host = url::Url::parse(&url)
            .ok()
            .and_then(|u| {
                u.host_str().map(|h| match u.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_owned(),
                })
            })
            .unwrap_or_default();
        match cfg.as_ref().ok().and_then(|c| c.has_auth_for(&host)) {
            Some(f) if f.value => c.note(format!(
                "GET {} -> 401 ({challenge}); credentials configured in {} ({})",
                v2(&url),
                f.file.display(),
                f.key
            )),
            _ => {
                needs_credentials = true;
                c.raise(
                Level::Warn,
                format!(
                    "GET {} -> 401 ({challenge}): {host} needs credentials and containerd has none \
                     configured for it; pulls fail unless every pod brings an imagePullSecret",
                    v2(&url)
                ),
            )
            }
        }
    }
    if !needs_credentials {
        return c.fix(
            "an endpoint containerd is told to use did not answer from this node: check its \
             address in hosts.toml, the node's firewall and routes (see also check 9)",
        );
    }
    c.fix(
        "create a robot (pull-only) account on that registry and give containerd its credentials \
         (Talos: machine.registries.config.<host>.auth; otherwise imagePullSecrets on the pods' \
         service account); test with `curl -u '<robot>:<token>' <endpoint>/v2/`",
    )
}

/// Check 11: The daemon is up and found peers.
pub async fn daemon_peers(inputs: &Inputs) -> Check {
    let mut c = Check::new("peers", "the daemon runs and has peers");
    let ask = async {
        let mut client = crate::admin::connect(&inputs.admin_socket).await?;
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
            return c.fix("start the shoal DaemonSet on this node (`kubectl -n <ns> get pods -o wide`); look at its logs");
        }
        Err(_) => {
            c.raise(
                Level::Fail,
                format!("the daemon did not answer within {:?}", inputs.timeout),
            );
            return c.fix("the daemon is stuck: look at its logs and restart its pod");
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
    c.fix(
        "check --bootstrap (static:/dns:/mdns) and that other nodes' p2p port (5001) is reachable \
         from this one; a one-node cluster has no peers by design",
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
