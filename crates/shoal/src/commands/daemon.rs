//! `shoal daemon`: the node agent. Parses flags into a [`DaemonConfig`], starts the [`App`], and
//! drains on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::ArgAction;
use shoal_containerd::WatchConfig;
use std::sync::Arc;

use shoal_mirror::{HeaderMarker, HmacAuth, LoopbackOnly, MirrorConfig, PeerAuth, ServerLimits};

use crate::app::{App, DaemonConfig};
use crate::cli::{ContainerdArgs, RegistryArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub containerd: ContainerdArgs,
    #[command(flatten)]
    pub registries: RegistryArgs,

    /// Address of the OCI mirror endpoint containerd and peers pull from.
    #[arg(long, env = "SHOAL_MIRROR_ADDR", default_value = "0.0.0.0:5000")]
    pub mirror_addr: SocketAddr,

    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "SHOAL_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// libp2p listen address (TCP); repeat for IPv4 and IPv6.
    #[arg(
        long,
        env = "SHOAL_P2P_ADDR",
        default_value = "0.0.0.0:5001",
        value_delimiter = ','
    )]
    pub p2p_addr: Vec<SocketAddr>,

    /// libp2p pre-shared key file (swarm.key format). Nodes without the same key cannot connect.
    #[arg(long, env = "SHOAL_P2P_PSK_FILE")]
    pub p2p_psk_file: Option<PathBuf>,

    /// How to find peers: `static:<multiaddr>`, `dns:<name>[:port]` or `mdns`. Repeatable.
    #[arg(long, env = "SHOAL_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<shoal_p2p::Bootstrap>,

    /// Directory for state that should survive restarts (the peer identity).
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Answer 404 when no peer is found within this time, so containerd falls back upstream.
    #[arg(long, env = "SHOAL_RESOLVE_TIMEOUT", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub resolve_timeout: Duration,

    /// Resolve tags (`registry/repo:tag`) through peers.
    #[arg(long, env = "SHOAL_RESOLVE_TAGS", default_value_t = true, action = ArgAction::Set)]
    pub resolve_tags: bool,

    /// Also resolve the mutable `latest` tag through peers.
    #[arg(long, env = "SHOAL_RESOLVE_LATEST", default_value_t = false, action = ArgAction::Set)]
    pub resolve_latest: bool,

    /// Re-list containerd's content this often (containerd 1.6 sends no event for GC).
    #[arg(long, env = "SHOAL_RELIST_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub relist_interval: Duration,

    /// Lifetime of DHT provider records (peers are only used over a live connection, so a
    /// departed node is never yielded; the TTL bounds how long a removed blob is still listed).
    #[arg(long, env = "SHOAL_P2P_RECORD_TTL", default_value = "36h", value_parser = humantime::parse_duration)]
    pub p2p_record_ttl: Duration,

    /// How often provider records are re-published (below the TTL; new blobs are published at
    /// once). Sized for <= 50 KB/s of DHT traffic per node with 5,000 blobs.
    #[arg(long, env = "SHOAL_P2P_REPROVIDE_INTERVAL", default_value = "12h", value_parser = humantime::parse_duration)]
    pub p2p_reprovide_interval: Duration,

    /// Unix socket of the admin API used by `shoal status|peers|find|explain` (mode 0600).
    #[arg(long, env = "SHOAL_ADMIN_SOCKET", default_value = crate::admin::DEFAULT_SOCKET)]
    pub admin_socket: PathBuf,

    /// Where blobs fetched from several peers at once are reassembled in order, and where
    /// peer blobs that cannot be streamed checked are verified before containerd gets a byte.
    /// Use a disk-backed directory (a tmpfs would hold whole blobs in memory).
    #[arg(long, env = "SHOAL_SPOOL_DIR", default_value = "/var/lib/shoal/spool")]
    pub spool_dir: PathBuf,

    /// Peer downloads spooled at once; each holds at most one blob on disk.
    #[arg(long, env = "SHOAL_MAX_CONCURRENT_SPOOLS", default_value_t = shoal_mirror::DEFAULT_MAX_CONCURRENT_SPOOLS)]
    pub max_concurrent_spools: usize,

    /// When nodes miss the same new blob at once (a rollout), one is elected to fetch it
    /// upstream and the others wait up to this long for it to start passing the blob on as it
    /// arrives; then they fetch upstream themselves. 0 turns the election off.
    #[arg(long, env = "SHOAL_HERD_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub herd_wait: Duration,

    /// Blobs larger than this many bytes are fetched from several peers at once, in ranges.
    #[arg(long, env = "SHOAL_MULTI_PEER_THRESHOLD", default_value_t = shoal_mirror::DEFAULT_MULTI_PEER_THRESHOLD)]
    pub multi_peer_threshold: u64,

    /// Most peers one blob is fetched from at once (1 turns multi-peer downloads off).
    #[arg(long, env = "SHOAL_MAX_PEERS_PER_BLOB", default_value_t = shoal_mirror::DEFAULT_MAX_PEERS_PER_BLOB)]
    pub max_peers_per_blob: usize,

    /// Size in bytes of the ranges a multi-peer download hands out to peers.
    #[arg(long, env = "SHOAL_PIECE_SIZE", default_value_t = shoal_mirror::DEFAULT_PIECE_SIZE)]
    pub piece_size: u64,
    #[command(flatten)]
    pub limits: Box<LimitArgs>,
}

/// Who may read from the mirror, and how much of the node it may use (`docs/security.md`).
/// Boxed in [`Args`]: the daemon's flags are many.
#[derive(Debug, clap::Args)]
pub struct LimitArgs {
    /// Without --p2p-psk-file, let every host read from the mirror and treat a plain
    /// `X-Shoal-Peer` header as a peer (the pre-authentication behaviour). Never in production:
    /// any pod could then read every allowlisted layer. Without this flag and without a PSK,
    /// only the node itself (loopback) is served.
    #[arg(long, env = "SHOAL_INSECURE_ALLOW_UNAUTHENTICATED_PEERS", default_value_t = false, action = ArgAction::Set)]
    pub insecure_allow_unauthenticated_peers: bool,

    /// Most mirror requests in flight (a blob body counts until its last byte); more get 503
    /// at once and containerd falls back to the next host.
    #[arg(long, env = "SHOAL_MAX_CONCURRENT_REQUESTS", default_value_t = shoal_mirror::DEFAULT_MAX_CONCURRENT_REQUESTS)]
    pub max_concurrent_requests: usize,

    /// Most client requests served from peers at once (each buffers up to 4 MiB); more wait
    /// briefly, then get 404 (upstream).
    #[arg(long, env = "SHOAL_MAX_CONCURRENT_PEER_FETCHES", default_value_t = shoal_mirror::DEFAULT_MAX_CONCURRENT_PEER_FETCHES)]
    pub max_concurrent_peer_fetches: usize,

    /// Most open connections per server (mirror, metrics). When full, a new connection replaces
    /// the oldest one with no request in progress; if all are busy it is closed at once.
    #[arg(long, env = "SHOAL_MAX_CONNECTIONS", default_value_t = shoal_mirror::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Longest a lookup or read in the local containerd may take (or pause, for a read) before
    /// the request treats the content as absent or fails, so a wedged containerd cannot pin it.
    #[arg(long, env = "SHOAL_LOCAL_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub local_timeout: Duration,

    /// A client must send its request headers within this time.
    #[arg(long, env = "SHOAL_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// A connection on which nothing moves for this long is closed (a stalled reader, an idle
    /// keep-alive connection). Bytes arriving from the peer that feeds a request count as
    /// movement too, so a slow but moving transfer is never cut.
    #[arg(long, env = "SHOAL_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Time in-flight requests get to finish on shutdown.
    #[arg(long, env = "SHOAL_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

impl Args {
    /// Turns flags into the daemon's configuration, reading the PSK file.
    pub fn into_config(self) -> anyhow::Result<DaemonConfig> {
        let psk = match &self.p2p_psk_file {
            Some(path) => Some(shoal_p2p::load_psk(path)?),
            None => None,
        };
        let peer_auth: Arc<dyn PeerAuth> = match (
            &psk,
            self.limits.insecure_allow_unauthenticated_peers,
        ) {
            (Some(k), _) => {
                if self.limits.insecure_allow_unauthenticated_peers {
                    tracing::warn!(
                        "--insecure-allow-unauthenticated-peers is ignored: a PSK is set, peers authenticate with it"
                    );
                }
                Arc::new(HmacAuth::from_psk(&shoal_p2p::psk_secret(k)))
            }
            (None, true) => {
                tracing::warn!(
                    "INSECURE: no --p2p-psk-file and --insecure-allow-unauthenticated-peers: any host or pod that reaches the mirror port can read every allowlisted layer this node holds"
                );
                Arc::new(HeaderMarker)
            }
            (None, false) => {
                tracing::warn!(
                    "no --p2p-psk-file: the mirror serves this node's containerd (loopback) only; peers cannot read from this node and this node cannot read from peers"
                );
                Arc::new(LoopbackOnly)
            }
        };
        let allowlist = self.registries.allowlist();
        let p2p = shoal_p2p::Config {
            listen: self.p2p_addr,
            mirror_port: self.mirror_addr.port(),
            psk,
            bootstrap: self.bootstrap,
            data_dir: self.data_dir,
            record_ttl: self.p2p_record_ttl,
            reprovide_interval: self.p2p_reprovide_interval,
            ..shoal_p2p::Config::default()
        };
        p2p.validate().context("invalid peer-to-peer settings")?;
        let mirror = MirrorConfig {
            allowlist: allowlist.clone(),
            resolve_timeout: self.resolve_timeout,
            resolve_tags: self.resolve_tags,
            resolve_latest: self.resolve_latest,
            spool_dir: self.spool_dir,
            max_concurrent_spools: self.max_concurrent_spools,
            multi_peer_threshold: self.multi_peer_threshold,
            herd_wait: self.herd_wait,
            max_peers_per_blob: self.max_peers_per_blob,
            piece_size: self.piece_size,
            max_concurrent_requests: self.limits.max_concurrent_requests,
            max_concurrent_peer_fetches: self.limits.max_concurrent_peer_fetches,
            local_timeout: self.limits.local_timeout,
            ..MirrorConfig::default()
        };
        let server = ServerLimits {
            header_read_timeout: self.limits.header_read_timeout,
            idle_timeout: self.limits.idle_timeout,
            max_connections: self.limits.max_connections,
            ..ServerLimits::default()
        };
        let watch = WatchConfig {
            relist_interval: self.relist_interval,
            ..WatchConfig::default()
        };
        Ok(DaemonConfig {
            containerd_socket: self.containerd.containerd_socket,
            containerd_namespace: self.containerd.containerd_namespace,
            containerd_content_dir: Some(self.containerd.containerd_content_dir),
            allowlist,
            mirror_addr: self.mirror_addr,
            metrics_addr: self.metrics_addr,
            mirror,
            peer_auth,
            server,
            p2p,
            watch,
            shutdown_grace: self.limits.shutdown_grace,
            event_log_capacity: 4096,
            admin_socket: Some(self.admin_socket),
        })
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut cfg = args.into_config()?;
    crate::app::fd_limit::apply(&mut cfg);
    let running = App::start(cfg).await?;
    let token = running.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        token.cancel();
    });
    running.wait().await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        args: Args,
    }

    fn auth_of(extra: &[&str]) -> String {
        let mut argv = vec!["shoal"];
        argv.extend_from_slice(extra);
        let cfg = T::try_parse_from(argv).unwrap().args.into_config().unwrap();
        format!("{:?}", cfg.peer_auth)
    }

    #[test]
    fn the_psk_decides_who_may_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("swarm.key");
        std::fs::write(&key, shoal_p2p::format_psk(&libp2p_key())).unwrap();
        let key = key.to_str().unwrap();
        assert!(auth_of(&["--p2p-psk-file", key]).starts_with("HmacAuth"));
        // The insecure switch never weakens a daemon that has a key.
        assert!(
            auth_of(&[
                "--p2p-psk-file",
                key,
                "--insecure-allow-unauthenticated-peers",
                "true"
            ])
            .starts_with("HmacAuth")
        );
        assert_eq!(auth_of(&[]), "LoopbackOnly");
        assert_eq!(
            auth_of(&["--insecure-allow-unauthenticated-peers", "true"]),
            "HeaderMarker"
        );
    }

    fn libp2p_key() -> shoal_p2p::PreSharedKey {
        shoal_p2p::parse_psk(
            "/key/swarm/psk/1.0.0/\n/base16/\n\
             00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
        )
        .unwrap()
    }
}
