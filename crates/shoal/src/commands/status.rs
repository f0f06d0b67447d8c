//! `shoal status`: the node at a glance (identity, listeners, containerd, readiness, peers,
//! advertised keys, last errors), from the running daemon's admin socket.

use std::process::ExitCode;

use crate::admin::client::{AdminArgs, status_error};
use crate::admin::proto::{LogEntry, Peer, StatusRequest, StatusResponse};
use crate::admin::render::{self, Table};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut client = crate::admin::connect(&args.admin.admin_socket).await?;
    let status = client
        .status(StatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if args.admin.json {
        render::print_json(&status)?;
    } else {
        print!("{}", text(&status, render::colour()));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human-readable report.
pub fn text(s: &StatusResponse, colour: bool) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: String| out.push_str(&format!("{:<13}{v}\n", format!("{k}:")));
    kv("version", format!("shoal {}", s.version));
    kv("peer id", s.peer_id.clone());
    let ready = if s.ready {
        render::paint("ready", "32", colour)
    } else {
        render::paint("NOT READY", "31", colour)
    };
    kv("status", format!("{ready} ({})", s.ready_reason));
    kv(
        "uptime",
        format!(
            "{} (since {})",
            render::age_ms(s.uptime_ms),
            render::timestamp(s.started_at_ms)
        ),
    );
    kv("listen", s.listen_addrs.join(", "));
    kv("mirror", s.mirror_addr.clone());
    kv("metrics", s.metrics_addr.clone());
    let c = s.containerd.clone().unwrap_or_default();
    let conn = match (c.connected, c.version.is_empty()) {
        (true, false) => format!("connected, containerd {} ({})", c.version, c.revision),
        (true, true) => format!("connected, {}", c.error),
        (false, _) => render::paint(&format!("NOT connected: {}", c.error), "31", colour),
    };
    kv(
        "containerd",
        format!("{conn}; socket {} namespace {}", c.socket, c.namespace),
    );
    kv("registries", s.allowlist.join(", "));
    kv(
        "advertised",
        format!(
            "{} keys (DHT provides {}, {} publications pending, routing table {})",
            s.advertised_keys, s.provided_keys, s.pending_publications, s.routing_table_size
        ),
    );
    kv(
        "dht store",
        format!("provider records for {} keys", s.stored_keys),
    );
    out.push_str(&format!("\nPEERS ({})\n", s.peers.len()));
    out.push_str(&peers_table(&s.peers));
    out.push_str(&format!("\nLAST ERRORS ({})\n", s.last_errors.len()));
    out.push_str(&errors_table(&s.last_errors));
    out
}

/// Peers as a table (also used by `shoal peers`).
pub fn peers_table(peers: &[Peer]) -> String {
    if peers.is_empty() {
        return "(no peers connected)\n".into();
    }
    let mut t = Table::new(&["PEER ID", "ADDRESS", "MIRROR", "CONNECTED", "LATENCY"]);
    for p in peers {
        t.row(vec![
            p.peer_id.clone(),
            p.addr.clone(),
            if p.mirror.is_empty() {
                "-".into()
            } else {
                p.mirror.clone()
            },
            render::age_ms(p.connected_for_ms),
            p.rtt_us
                .map(|us| format!("{:.2}ms", us as f64 / 1000.0))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render()
}

fn errors_table(errors: &[LogEntry]) -> String {
    if errors.is_empty() {
        return "(none)\n".into();
    }
    let mut t = Table::new(&["TIME", "LEVEL", "MESSAGE"]);
    for e in errors {
        t.row(vec![
            render::timestamp(e.at_ms),
            e.level.clone(),
            format!("{}: {}", e.target, e.message),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::proto::Containerd;

    pub(crate) fn sample() -> StatusResponse {
        StatusResponse {
            version: "0.1.0".into(),
            peer_id: "12D3KooWA".into(),
            listen_addrs: vec!["/ip4/10.0.0.2/tcp/5001/p2p/12D3KooWA".into()],
            mirror_addr: "0.0.0.0:5000".into(),
            metrics_addr: "0.0.0.0:9090".into(),
            started_at_ms: 1_000,
            uptime_ms: 184_000,
            containerd: Some(Containerd {
                socket: "/run/containerd/containerd.sock".into(),
                namespace: "k8s.io".into(),
                connected: true,
                version: "1.6.20~ds1".into(),
                revision: "r".into(),
                error: String::new(),
            }),
            ready: true,
            ready_reason: "1 peer in the routing table".into(),
            peers: vec![Peer {
                peer_id: "12D3KooWB".into(),
                addr: "/ip4/10.0.0.3/tcp/5001".into(),
                mirror: "10.0.0.3:5000".into(),
                connected_since_ms: 2_000,
                connected_for_ms: 60_000,
                rtt_us: Some(420),
            }],
            advertised_keys: 7,
            provided_keys: 7,
            stored_keys: 42,
            routing_table_size: 1,
            pending_publications: 0,
            allowlist: vec!["docker.io".into()],
            last_errors: vec![LogEntry {
                at_ms: 3_000,
                level: "WARN".into(),
                target: "shoal".into(),
                message: "containerd not reachable yet".into(),
            }],
        }
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v = serde_json::to_value(sample()).unwrap();
        for k in [
            "version",
            "peer_id",
            "listen_addrs",
            "uptime_ms",
            "containerd",
            "ready",
            "ready_reason",
            "peers",
            "advertised_keys",
            "stored_keys",
            "last_errors",
            "allowlist",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["containerd"]["version"], "1.6.20~ds1");
        assert_eq!(v["peers"][0]["rtt_us"], 420);
        assert_eq!(v["peers"][0]["connected_for_ms"], 60_000);
        assert_eq!(v["last_errors"][0]["level"], "WARN");
        // Round trip: scripts can feed it back.
        let back: StatusResponse = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn text_names_every_section_without_colour() {
        let t = text(&sample(), false);
        assert!(!t.contains('\x1b'));
        for needle in [
            "peer id:     12D3KooWA",
            "status:      ready (1 peer in the routing table)",
            "uptime:      3m4s",
            "connected, containerd 1.6.20~ds1",
            "advertised:  7 keys",
            "dht store:   provider records for 42 keys",
            "PEERS (1)",
            "12D3KooWB  /ip4/10.0.0.3/tcp/5001  10.0.0.3:5000  1m0s       0.42ms",
            "LAST ERRORS (1)",
            "containerd not reachable yet",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
    }
}
