//! The admin gRPC server: tonic over a unix socket, answering from the daemon's live state
//! (DHT handle, containerd store, fetch event log). Read-only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures::StreamExt;
use shoal_containerd::CancellationToken;
use shoal_mirror::EventLog;
use shoal_oci::{Allowlist, Key};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::proto::admin_server::{Admin, AdminServer};
use super::proto::{
    BlobExplanation, BlobHolders, Containerd, ExplainRequest, ExplainResponse, FindRequest,
    FindResponse, Holder, Peer, PeersRequest, PeersResponse, StatusRequest, StatusResponse,
};
use super::resolve::{self, BlobRef, Target};
use super::{epoch_ms, ms, recent};
use crate::app::{Advertised, ContainerdStore};

/// Default bound of one DHT lookup in `find`.
const FIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Lookups of one `find` run at most this many at a time.
const FIND_PARALLEL: usize = 8;
/// containerd's Version call, asked on every `status`.
const VERSION_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin API reads. Built by `App::start`.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub p2p: shoal_p2p::Handle,
    pub events: Arc<EventLog>,
    pub event_log_capacity: usize,
    pub store: ContainerdStore,
    pub advertised: Advertised,
    pub allowlist: Allowlist,
    pub containerd_socket: PathBuf,
    pub containerd_namespace: String,
    pub mirror_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub started: SystemTime,
    /// For manifest fetches through this node's own mirror.
    pub http: reqwest::Client,
}

/// Binds the admin socket: creates its directory, replaces a stale socket file (refusing when
/// another daemon still answers on it), and restricts it to the owner (0600).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("cannot create the admin socket directory {}", dir.display())
        })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another process is serving the admin socket {} (is a shoal daemon already running?)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale admin socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on --admin-socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// Serves the admin API until `shutdown`, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    state: AdminState,
    shutdown: CancellationToken,
) {
    tracing::info!(socket = %path.display(), "admin API listening");
    let result = tonic::transport::Server::builder()
        .add_service(AdminServer::new(AdminService { state }))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            shutdown.cancelled().await
        })
        .await;
    if let Err(e) = result {
        tracing::error!(server = "admin", error = %e, "server stopped with an error");
    }
    let _ = std::fs::remove_file(&path);
}

#[derive(Debug)]
struct AdminService {
    state: AdminState,
}

fn peer_of(p: &shoal_p2p::PeerInfo, now: SystemTime) -> Peer {
    Peer {
        peer_id: p.peer_id.to_string(),
        addr: p.addr.to_string(),
        mirror: p.mirror.map(|m| m.to_string()).unwrap_or_default(),
        connected_since_ms: epoch_ms(p.connected_since),
        connected_for_ms: ms(now.duration_since(p.connected_since).unwrap_or_default()),
        rtt_us: p
            .rtt
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
    }
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("the DHT node is not running: {e}"))
}

impl AdminService {
    async fn containerd(&self) -> Containerd {
        let s = &self.state;
        let mut c = Containerd {
            socket: s.containerd_socket.display().to_string(),
            namespace: s.containerd_namespace.clone(),
            ..Containerd::default()
        };
        let Some(source) = s.store.source() else {
            c.error = "not connected yet; the daemon retries with backoff (see last errors)".into();
            return c;
        };
        c.connected = true;
        match tokio::time::timeout(VERSION_TIMEOUT, source.version()).await {
            Ok(Ok(v)) => {
                c.version = v.version;
                c.revision = v.revision;
            }
            Ok(Err(e)) => c.error = format!("version unknown: {e}"),
            Err(_) => c.error = format!("no answer to Version within {VERSION_TIMEOUT:?}"),
        }
        c
    }

    /// Peer id → mirror address (or connection address), to name where bytes came from.
    async fn peer_addrs(&self) -> HashMap<String, String> {
        match self.state.p2p.status().await {
            Ok(st) => st
                .peers
                .iter()
                .map(|p| {
                    let addr = p
                        .mirror
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| p.addr.to_string());
                    (p.peer_id.to_string(), addr)
                })
                .collect(),
            Err(_) => HashMap::new(),
        }
    }

    async fn blobs_of(&self, target: &Target) -> Result<(String, String, Vec<BlobRef>), Status> {
        match target {
            Target::Digest(d) => {
                let size = match self.state.store.source() {
                    Some(src) => src.stat(d).await.ok().flatten().unwrap_or(0),
                    None => 0,
                };
                let blob = BlobRef {
                    digest: d.clone(),
                    media_type: String::new(),
                    size,
                };
                Ok((String::new(), String::new(), vec![blob]))
            }
            Target::Image(r) => {
                let res = resolve::image(&self.state, r)
                    .await
                    .map_err(Status::not_found)?;
                Ok((res.reference, res.resolved_from, res.blobs))
            }
        }
    }

    async fn lookup(&self, blob: BlobRef, timeout: Duration) -> BlobHolders {
        let s = &self.state;
        let key = Key::Digest(blob.digest.clone());
        let started = Instant::now();
        let mut out = BlobHolders {
            digest: blob.digest.to_string(),
            role: blob.role().into(),
            media_type: blob.media_type.clone(),
            size: blob.size,
            ..BlobHolders::default()
        };
        // The DHT never returns this node: add it when it serves the blob.
        if s.advertised.contains(&key) {
            out.holders.push(Holder {
                peer_id: s.p2p.peer_id().to_string(),
                addr: resolve::mirror_base(s.mirror_addr)
                    .trim_start_matches("http://")
                    .to_owned(),
                local: true,
            });
        }
        match s.p2p.find_providers(&key).await {
            Ok(mut stream) => {
                let deadline = tokio::time::Instant::now() + timeout;
                while let Ok(Some(p)) = tokio::time::timeout_at(deadline, stream.next()).await {
                    out.holders.push(Holder {
                        peer_id: p.peer_id.to_string(),
                        addr: p.mirror.to_string(),
                        local: false,
                    });
                }
            }
            Err(e) => out.error = format!("lookup could not start: {e}"),
        }
        out.lookup_ms = ms(started.elapsed());
        out
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let s = &self.state;
        let st = s.p2p.status().await.map_err(unavailable)?;
        let containerd = self.containerd().await;
        let now = SystemTime::now();
        let ready = st.ready && containerd.connected;
        let ready_reason = if !containerd.connected {
            "containerd is not connected".to_owned()
        } else {
            st.ready_reason.clone()
        };
        let allowlist = match &s.allowlist {
            Allowlist::All => vec!["*".to_owned()],
            list => list.registries().map(str::to_owned).collect(),
        };
        Ok(Response::new(StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            peer_id: st.peer_id.to_string(),
            listen_addrs: st.listen_addrs.iter().map(|a| a.to_string()).collect(),
            mirror_addr: s.mirror_addr.to_string(),
            metrics_addr: s.metrics_addr.to_string(),
            started_at_ms: epoch_ms(s.started),
            uptime_ms: ms(now.duration_since(s.started).unwrap_or_default()),
            containerd: Some(containerd),
            ready,
            ready_reason,
            peers: st.peers.iter().map(|p| peer_of(p, now)).collect(),
            advertised_keys: s.advertised.len() as u64,
            provided_keys: st.provided_keys as u64,
            stored_keys: st.stored_keys as u64,
            routing_table_size: st.routing_table_size as u64,
            pending_publications: st.pending_publications as u64,
            allowlist,
            last_errors: recent::snapshot(),
        }))
    }

    async fn peers(&self, _: Request<PeersRequest>) -> Result<Response<PeersResponse>, Status> {
        let st = self.state.p2p.status().await.map_err(unavailable)?;
        let now = SystemTime::now();
        Ok(Response::new(PeersResponse {
            peers: st.peers.iter().map(|p| peer_of(p, now)).collect(),
        }))
    }

    async fn find(&self, req: Request<FindRequest>) -> Result<Response<FindResponse>, Status> {
        let req = req.into_inner();
        let target = Target::parse(&req.target).map_err(Status::invalid_argument)?;
        let timeout = match req.timeout_ms {
            0 => FIND_TIMEOUT,
            t => Duration::from_millis(t).min(Duration::from_secs(60)),
        };
        let (reference, resolved_from, blobs) = self.blobs_of(&target).await?;
        let blobs = futures::stream::iter(blobs)
            .map(|b| self.lookup(b, timeout))
            .buffered(FIND_PARALLEL)
            .collect()
            .await;
        Ok(Response::new(FindResponse {
            target: req.target,
            kind: target.kind().into(),
            reference,
            resolved_from,
            blobs,
        }))
    }

    async fn explain(
        &self,
        req: Request<ExplainRequest>,
    ) -> Result<Response<ExplainResponse>, Status> {
        let req = req.into_inner();
        let target = Target::parse(&req.target).map_err(Status::invalid_argument)?;
        let (reference, _, blobs) = self.blobs_of(&target).await?;
        let events = self.state.events.snapshot();
        let log_events = events.len() as u64;
        let mut by_key: HashMap<String, Vec<shoal_mirror::FetchEvent>> = HashMap::new();
        for e in events {
            by_key.entry(e.key.clone()).or_default().push(e);
        }
        let addrs = self.peer_addrs().await;
        let mut rows = Vec::new();
        if let Target::Image(r) = &target
            && let Some(tag) = r.tag_key().filter(|_| r.digest().is_none())
        {
            let key = tag.to_string();
            let evs = by_key.remove(&key).unwrap_or_default();
            rows.push(BlobExplanation {
                requests: super::explain::requests(&evs, 0, &addrs),
                key,
                role: "tag".into(),
                size: 0,
            });
        }
        for b in blobs {
            let key = b.digest.to_string();
            let evs = by_key.remove(&key).unwrap_or_default();
            rows.push(BlobExplanation {
                requests: super::explain::requests(&evs, b.size, &addrs),
                role: b.role().into(),
                size: b.size,
                key,
            });
        }
        Ok(Response::new(ExplainResponse {
            target: req.target,
            kind: target.kind().into(),
            reference,
            blobs: rows,
            log_events,
            log_capacity: self.state.event_log_capacity as u64,
        }))
    }
}
