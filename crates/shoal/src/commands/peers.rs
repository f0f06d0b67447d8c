//! `shoal peers`: the peers this node is connected to, with address, connection age and latency.

use std::process::ExitCode;

use crate::admin::client::{AdminArgs, status_error};
use crate::admin::proto::PeersRequest;
use crate::admin::render;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut client = crate::admin::connect(&args.admin.admin_socket).await?;
    let resp = client
        .peers(PeersRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if args.admin.json {
        render::print_json(&resp)?;
    } else {
        print!("{}", super::status::peers_table(&resp.peers));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use crate::admin::proto::{Peer, PeersResponse};

    #[test]
    fn json_lists_peers_with_age_and_latency() {
        let resp = PeersResponse {
            peers: vec![Peer {
                peer_id: "12D3KooWB".into(),
                addr: "/ip4/10.0.0.3/tcp/5001".into(),
                mirror: String::new(),
                connected_since_ms: 5,
                connected_for_ms: 10,
                rtt_us: None,
            }],
        };
        let v = serde_json::to_value(&resp).unwrap();
        assert_eq!(v["peers"][0]["peer_id"], "12D3KooWB");
        assert_eq!(v["peers"][0]["connected_for_ms"], 10);
        assert!(v["peers"][0]["rtt_us"].is_null());
        assert_eq!(
            super::super::status::peers_table(&resp.peers),
            "PEER ID    ADDRESS                 MIRROR  CONNECTED  LATENCY\n\
             12D3KooWB  /ip4/10.0.0.3/tcp/5001  -       10ms       -\n"
        );
    }
}
