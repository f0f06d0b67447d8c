//! `shoal find <digest | image-ref>`: which nodes hold a blob, or each blob of an image (index,
//! manifests, config, layers) with its size, and how long each DHT lookup took.

use std::process::ExitCode;
use std::time::Duration;

use crate::admin::client::{AdminArgs, status_error};
use crate::admin::proto::{FindRequest, FindResponse};
use crate::admin::render::{self, Table};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A digest (`sha256:…`) or an image reference (`nginx:1.27`, `ghcr.io/org/app@sha256:…`).
    pub target: String,

    /// Bound of each DHT lookup.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    #[command(flatten)]
    pub admin: AdminArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut client = crate::admin::connect(&args.admin.admin_socket).await?;
    let resp = client
        .find(FindRequest {
            target: args.target,
            timeout_ms: crate::admin::ms(args.timeout).max(1),
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

/// `sha256:0123456789ab…` for tables; JSON keeps full digests.
pub fn short_digest(d: &str) -> String {
    match d.split_once(':') {
        Some((algo, hex)) if hex.len() > 12 => format!("{algo}:{}…", &hex[..12]),
        _ => d.to_owned(),
    }
}

pub fn text(r: &FindResponse) -> String {
    let mut out = String::new();
    if r.kind == "image" {
        out.push_str(&format!(
            "{} (walked from {})\n",
            r.reference, r.resolved_from
        ));
    }
    let mut t = Table::new(&["ROLE", "DIGEST", "SIZE", "LOOKUP", "HOLDERS"]);
    for b in &r.blobs {
        let holders = if !b.error.is_empty() {
            format!("lookup failed: {}", b.error)
        } else if b.holders.is_empty() {
            "nobody".to_owned()
        } else {
            b.holders
                .iter()
                .map(|h| {
                    let me = if h.local { " (this node)" } else { "" };
                    format!("{} {}{me}", h.peer_id, h.addr)
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        t.row(vec![
            if b.role.is_empty() {
                "-".into()
            } else {
                b.role.clone()
            },
            short_digest(&b.digest),
            if b.size == 0 {
                "-".into()
            } else {
                render::bytes(b.size)
            },
            render::age_ms(b.lookup_ms),
            holders,
        ]);
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::proto::{BlobHolders, Holder};

    fn sample() -> FindResponse {
        FindResponse {
            target: "shoal-small:v1".into(),
            kind: "image".into(),
            reference: "docker.io/library/shoal-small:v1".into(),
            resolved_from: "local containerd".into(),
            blobs: vec![
                BlobHolders {
                    digest: format!("sha256:{}", "a".repeat(64)),
                    role: "manifest".into(),
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    size: 349,
                    holders: vec![
                        Holder {
                            peer_id: "P1".into(),
                            addr: "10.0.0.2:5000".into(),
                            local: true,
                        },
                        Holder {
                            peer_id: "P2".into(),
                            addr: "10.0.0.3:5000".into(),
                            local: false,
                        },
                    ],
                    lookup_ms: 12,
                    error: String::new(),
                },
                BlobHolders {
                    digest: format!("sha256:{}", "b".repeat(64)),
                    role: "layer".into(),
                    size: 2048,
                    lookup_ms: 5000,
                    ..BlobHolders::default()
                },
            ],
        }
    }

    #[test]
    fn json_shape() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["kind"], "image");
        assert_eq!(v["blobs"][0]["role"], "manifest");
        assert_eq!(v["blobs"][0]["size"], 349);
        assert_eq!(v["blobs"][0]["lookup_ms"], 12);
        assert_eq!(v["blobs"][0]["holders"][0]["local"], true);
        assert_eq!(v["blobs"][0]["holders"][1]["addr"], "10.0.0.3:5000");
        assert_eq!(v["blobs"][1]["holders"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn table_lists_holders_per_blob() {
        let t = text(&sample());
        assert!(t.starts_with("docker.io/library/shoal-small:v1 (walked from local containerd)\n"));
        assert!(t.contains("manifest  sha256:aaaaaaaaaaaa…  349 B    12ms    P1 10.0.0.2:5000 (this node), P2 10.0.0.3:5000"), "{t}");
        assert!(
            t.contains("layer     sha256:bbbbbbbbbbbb…  2.0 KiB  5s      nobody"),
            "{t}"
        );
    }
}
