//! `shoal explain <digest | image-ref>`: what happened to recent requests for a blob, or each
//! blob of an image, on this node: served locally, by which peer, or missed (containerd went
//! upstream); bytes, time, and every failover with its reason. From the daemon's bounded
//! in-memory event log, so only recent requests are known.

use std::process::ExitCode;

use crate::admin::client::{AdminArgs, status_error};
use crate::admin::proto::{ExplainRequest, ExplainResponse};
use crate::admin::render::{self, Table};
use crate::commands::find::short_digest;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A digest (`sha256:…`) or an image reference (`nginx:1.27`).
    pub target: String,

    #[command(flatten)]
    pub admin: AdminArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut client = crate::admin::connect(&args.admin.admin_socket).await?;
    let resp = client
        .explain(ExplainRequest {
            target: args.target,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.admin.json {
        render::print_json(&resp)?;
    } else {
        print!("{}", text(&resp));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn text(r: &ExplainResponse) -> String {
    let mut out = String::new();
    if r.kind == "image" {
        out.push_str(&format!("{}\n", r.reference));
    }
    let mut t = Table::new(&[
        "ROLE",
        "BLOB",
        "WHEN",
        "SOURCE",
        "END",
        "FROM",
        "BYTES",
        "TIME",
        "FAILOVERS",
    ]);
    for b in &r.blobs {
        let blob = if b.role == "tag" {
            b.key.clone()
        } else {
            short_digest(&b.key)
        };
        if b.requests.is_empty() {
            t.row(vec![
                b.role.clone(),
                blob,
                "-".into(),
                "-".into(),
                "-".into(),
                "no request seen by this node's mirror".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
            continue;
        }
        for q in &b.requests {
            let from = match q.source.as_str() {
                "local" => "this node".to_owned(),
                "miss" => "upstream (no peer had it)".to_owned(),
                "upstream" => "upstream (elected to fetch it for the peers)".to_owned(),
                "in-flight" => "this node, while downloading it".to_owned(),
                "failed" => "upstream (every peer failed)".to_owned(),
                _ if q.served_by.len() > 1 => format!(
                    "{} peers: {}",
                    q.served_by.len(),
                    q.served_by
                        .iter()
                        .map(|p| format!("{} {}", p.peer_id, render::bytes(p.bytes)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ if q.peer_addr.is_empty() => q.peer_id.clone(),
                _ => format!("{} ({})", q.peer_id, q.peer_addr),
            };
            let failovers =
                if q.failovers.is_empty() || q.source == "miss" || q.source == "upstream" {
                    "-".to_owned()
                } else {
                    q.failovers
                        .iter()
                        .map(|f| format!("{} {}: {}", f.peer_id, f.reason_kind, f.reason))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
            t.row(vec![
                b.role.clone(),
                blob.clone(),
                render::timestamp(q.started_at_ms),
                q.source.clone(),
                if q.end.is_empty() {
                    "-".into()
                } else {
                    q.end.clone()
                },
                from,
                if q.bytes == 0 {
                    "-".into()
                } else {
                    render::bytes(q.bytes)
                },
                if matches!(q.source.as_str(), "peer" | "failed" | "head") {
                    render::age_ms(q.duration_ms)
                } else {
                    "-".into()
                },
                failovers,
            ]);
        }
    }
    out.push_str(&t.render());
    out.push_str(&spans(r));
    out.push_str(&format!(
        "({} events in the log, capacity {}; older requests are forgotten)\n",
        r.log_events, r.log_capacity
    ));
    out
}

/// Spans shown per peer before the rest is summarised.
const MAX_SPANS: usize = 6;

/// For multi-peer downloads: which bytes each peer served.
fn spans(r: &ExplainResponse) -> String {
    let mut out = String::new();
    for b in &r.blobs {
        for q in b.requests.iter().filter(|q| q.served_by.len() > 1) {
            out.push_str(&format!(
                "\n{} at {}, bytes by peer:\n",
                short_digest(&b.key),
                render::timestamp(q.started_at_ms)
            ));
            let mut t = Table::new(&["PEER", "ADDRESS", "BYTES", "RANGES [start-end)"]);
            for p in &q.served_by {
                let mut ranges: Vec<String> = p
                    .spans
                    .iter()
                    .take(MAX_SPANS)
                    .map(|s| format!("{}-{}", s.start, s.end))
                    .collect();
                if p.spans.len() > MAX_SPANS {
                    ranges.push(format!("… {} more", p.spans.len() - MAX_SPANS));
                }
                t.row(vec![
                    p.peer_id.clone(),
                    if p.peer_addr.is_empty() {
                        "-".into()
                    } else {
                        p.peer_addr.clone()
                    },
                    render::bytes(p.bytes),
                    ranges.join(", "),
                ]);
            }
            out.push_str(&t.render());
        }
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::proto::{BlobExplanation, ByteSpan, Failover, PeerBytes, Request};

    fn sample() -> ExplainResponse {
        ExplainResponse {
            target: "shoal-small:v1".into(),
            kind: "image".into(),
            reference: "docker.io/library/shoal-small:v1".into(),
            blobs: vec![
                BlobExplanation {
                    key: format!("sha256:{}", "c".repeat(64)),
                    role: "layer".into(),
                    size: 1_051_286,
                    requests: vec![Request {
                        id: 1,
                        started_at_ms: 0,
                        source: "peer".into(),
                        end: "completed".into(),
                        end_reason: String::new(),
                        peer_id: "P1".into(),
                        peer_addr: "10.0.0.2:5000".into(),
                        bytes: 1_051_286,
                        duration_ms: 35,
                        failovers: vec![Failover {
                            peer_id: "P3".into(),
                            reason_kind: "timeout".into(),
                            reason: "no data for 5s".into(),
                            offset: 0,
                        }],
                        summary: "served by peer P1 after 1 failover".into(),
                        served_by: vec![],
                    }],
                },
                BlobExplanation {
                    key: format!("sha256:{}", "d".repeat(64)),
                    role: "config".into(),
                    size: 401,
                    requests: vec![],
                },
            ],
            log_events: 9,
            log_capacity: 4096,
        }
    }

    #[test]
    fn json_shape() {
        let v = serde_json::to_value(sample()).unwrap();
        let q = &v["blobs"][0]["requests"][0];
        assert_eq!(q["source"], "peer");
        assert_eq!(q["peer_id"], "P1");
        assert_eq!(q["bytes"], 1_051_286);
        assert_eq!(q["duration_ms"], 35);
        assert_eq!(q["failovers"][0]["reason_kind"], "timeout");
        assert_eq!(v["blobs"][1]["requests"].as_array().unwrap().len(), 0);
        assert_eq!(v["log_capacity"], 4096);
    }

    #[test]
    fn multi_peer_requests_show_bytes_and_ranges_per_peer() {
        let mut r = sample();
        let span = |start, end| ByteSpan { start, end };
        r.blobs[0].requests[0].served_by = vec![
            PeerBytes {
                peer_id: "P1".into(),
                peer_addr: "10.0.0.2:5000".into(),
                bytes: 600,
                spans: vec![span(0, 300), span(400, 700)],
            },
            PeerBytes {
                peer_id: "P2".into(),
                peer_addr: String::new(),
                bytes: 100,
                spans: (0..8).map(|i| span(300 + i * 10, 305 + i * 10)).collect(),
            },
        ];
        let v = serde_json::to_value(&r).unwrap();
        let by = &v["blobs"][0]["requests"][0]["served_by"];
        assert_eq!(by[0]["peer_id"], "P1");
        assert_eq!(by[0]["bytes"], 600);
        assert_eq!(by[0]["spans"][1]["start"], 400);
        assert_eq!(by[0]["spans"][1]["end"], 700);
        let t = text(&r);
        assert!(t.contains("2 peers: P1 600 B, P2 100 B"), "{t}");
        assert!(
            t.contains("P1    10.0.0.2:5000  600 B  0-300, 400-700"),
            "{t}"
        );
        assert!(t.contains("… 2 more"), "{t}");
    }

    #[test]
    fn table_names_source_and_failovers() {
        let t = text(&sample());
        assert!(
            t.contains(
                "layer   sha256:cccccccccccc…  1970-01-01T00:00:00Z  peer    completed  P1 (10.0.0.2:5000)"
            ),
            "{t}"
        );
        assert!(t.contains("P3 timeout: no data for 5s"), "{t}");
        assert!(t.contains("no request seen by this node's mirror"), "{t}");
        assert!(
            t.ends_with("(9 events in the log, capacity 4096; older requests are forgotten)\n")
        );
    }
}
