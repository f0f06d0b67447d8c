//! Node configuration, its defaults and why they were chosen, and `--bootstrap` parsing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, PeerId};

use crate::error::BootstrapParseError;
use crate::{Error, Resolver};

/// Default p2p port (`--p2p-addr 0.0.0.0:5001`).
pub const DEFAULT_P2P_PORT: u16 = 5001;

/// Configuration of one p2p node.
///
/// # Defaults and why
///
/// Sizing case: 1,000 nodes each providing 5,000 keys, so 5 M (key, provider) pairs, each stored
/// on the k = 20 nodes closest to the key.
///
/// Measured (`benches/benches/p2p.rs`, docs/benchmarks.md "DHT at cluster scale"; release build,
/// shared 2-core machine, 2026-12-07): one publication (closest-peers walk + `ADD_PROVIDER`s,
/// every one delivered) costs on the wire (TCP bytes: noise, yamux, stream negotiation and
/// connection set-up included) 88.0 KiB and 54 Kademlia requests (20 of them `ADD_PROVIDER`)
/// at 100 nodes, 94.5-102.4 KiB and 57-59 requests at 121, 109.6 KiB and 66.3 requests at 300
/// (nodes in worker processes). An idle node at 300 nodes, connected to all 299 others, pinging
/// every 10 s, exchanged 11.1 KiB/s between routing refreshes and 17.2 KiB/s averaged over 5
/// min; RSS 17.6-19.4 MiB per node at 300 (10.3-17.2 at 100-121).
/// 1,000 nodes do not fit this machine (see the bench's docs): figures for it are computed.
///
/// - `reprovide_interval` = 12 h, `record_ttl` = 36 h. Background traffic per node (sent +
///   received) is 2 x (bytes per publication) x (keys) / interval + idle upkeep. At the measured
///   300-node cost, 5,000 keys every 12 h: 2 x 109.6 KiB x 5,000 / 43,200 s = 26.0 KB/s, plus
///   17.6 KB/s idle averaged over 5 min (pings ~11.4, kad's 5-minute routing refresh the rest)
///   = 43.6 KB/s, under the 50 KB/s budget (100 nodes: 28.6 KB/s; 6 h would be ~70 KB/s at
///   300 nodes; the old 10 min ~1.5 MB/s). Kad's walk grows with log N (54 → 66 requests from
///   100 to 300 nodes); at 1,000 nodes ~75 requests, ~125 KiB, ~30 KB/s computed, plus pings
///   on up to 999 connections (~31 B/s each at a 10 s `ping_interval`, 31 KB/s if every one
///   stays open) and the refresh: ~68 KB/s, over the budget there unless idle connections
///   close (`kept_connections`). `benches/p2p.rs`
///   fails when this estimate passes 50 KB/s. A long interval is safe because records only guard *findability*: a new key is
///   published at once (not at the next round), and providers are only returned over a live
///   connection (see the crate docs), so a departed node is never yielded whatever the TTL. What
///   re-publication repairs is record loss: a key's 20 storing nodes all leaving, nodes that
///   joined closer to the key than its holders (lookups walk past the older holders, which still
///   answer), or `ADD_PROVIDER`s lost on the way (kad reports a publication done once they are
///   queued; the protocol has no answer to them; a runtime starved for seconds drops them, as the
///   bench showed before it paced its publication round). Re-publications are spread over the
///   first half of the interval (`publish`). The
///   TTL is 3x the interval so a record survives two lost publications (a restart, a busy node);
///   it bounds how long a withdrawn (garbage-collected) key is still answered by other nodes for
///   a live node, which then answers the blob request with a miss and the pull moves on.
///   Publications get 60 s to finish (lookups keep `query_timeout`): kad sends `ADD_PROVIDER`
///   only once its walk is complete, and a publication that timed out is queued again.
/// - `publish_concurrency` = 32 publications in flight: 5,000 keys take ~5,000 / 32 x ~30 ms
///   ≈ 5 s per round, far inside the interval, while leaving the swarm free for lookups. New keys
///   are published before re-publications.
/// - `max_provided_keys` = 100,000 (own keys) and `max_stored_keys` = 500,000 (keys whose
///   provider lists this node stores, its own included). Even if all 5 M pairs had distinct keys,
///   a node stores ~5 M x 20 / 1,000 = 100 k keys; x5 headroom for uneven key distribution.
///   Measured (the bench at 30 nodes x 5,000 keys, image-shaped key sets, docs/benchmarks.md
///   "Provider records at 5,000 keys per node"): ~43,000 keys stored per node cost 7.1 MiB
///   (14.6 MiB per node against 7.5 with 100 keys), ~175 bytes per stored key with its
///   records (`store`; kad's own `MemoryStore` took 201 MiB per node there, ~5 KB per key). At
///   300 nodes x 5,000 keys a node stores ~31,000 keys (computed from the same key sets): ~5
///   MiB over the 19.4 MiB measured at 300 nodes, ~25 MiB. The bound itself is ~85 MiB.
/// - `query_timeout` = 5 s: a lookup that has not finished by then will not help a pull, which
///   falls back to upstream long before (the mirror waits ~20 ms for a first provider).
/// - `dns_refresh` = 30 s: new DaemonSet pods appear in the headless Service within seconds;
///   30 s keeps DNS load trivial (one query per node per 30 s) while healing partitions quickly.
/// - `idle_connection_timeout` = 10 min and `kept_connections` = 128. Every lookup and
///   publication walk reaches nodes near its key, i.e. random nodes, so a node talks to most
///   others over time. Measured: a new connection costs ~2.8 KB (TCP, PSK, noise, yamux,
///   identify both ways, one kad request), keeping one costs ~31 B/s of pings (sent +
///   received, `ping_interval`; 62 B/s measured at 5 s), so a connection reused within ~90 s is cheaper kept. Under the
///   sizing load (5,000 keys re-published per 12 h, ~80 requests per walk at 300 nodes) a node
///   contacts each of 300 peers about every 30 s: closing idle connections after 30 s (tried,
///   300 nodes, docs/benchmarks.md) doubled the bytes per publication (214.7 KiB against ~110)
///   and put re-publication alone at 50.9 KB/s per node. So connections stay open while used
///   within 10 min, which under that load is every node up to ~1,000. In a quieter cluster a
///   node keeps open, idle or not, its routing-table peers (where every walk starts; ~100 at
///   300 nodes, ~130 at 1,000; see `keep`) and then its longest-lived other connections up to
///   128 in all, and closes the others after 10 min without a request, so idle connections
///   stop growing with the cluster past ~129 nodes. Up to ~129 nodes every node is kept: the
///   herd election chooses its arbiter over a node's connected peers, and equal views mean one
///   fetcher per blob.
/// - `ping_interval` = 10 s and `ping_timeout` = 10 s: a peer that went silent without closing
///   its connections (powered off, partitioned by a firewall that drops) is disconnected within
///   ~20 s, so lookups stop yielding it and a pull no longer waits on a connect to it. Left to
///   TCP, a dead connection lingers until retransmissions give up (~15 min on Linux). Pings are
///   the idle cost of every connection (~62 B/s per connection measured at the former 5 s, so
///   ~31 at 10 s): at 300 nodes, each connected to every other, 5 s cost 18.5 KB/s per node, a
///   third of the background budget; 10 s halves it and keeps a dead peer's window under
///   half a minute.
/// - `parallelism` = 8 (Kademlia's α, 3 by default): lookups for absent keys must hear back from
///   the closest nodes before they can say "nobody"; more requests in flight shortens that walk.
///   Kad ends it once the k = 20 closest peers it knows have answered: about three rounds of
///   requests, measured 5-6 ms p50 and 10-11 ms p99 at 100 nodes (release, unstarved), so the
///   mirror's miss comes from the DHT's answer, before its 20 ms resolve timeout.
#[derive(Clone)]
pub struct Config {
    /// TCP addresses to listen on (IPv4 and/or IPv6; port 0 picks a free port).
    pub listen: Vec<SocketAddr>,
    /// Port of this node's HTTP mirror, advertised to peers (see crate docs).
    pub mirror_port: u16,
    /// Private-network key; without the same key, nodes cannot connect at all.
    pub psk: Option<PreSharedKey>,
    /// How to find other nodes.
    pub bootstrap: Vec<Bootstrap>,
    /// Where the peer identity is persisted; a fresh identity per start when `None`.
    pub data_dir: Option<PathBuf>,
    /// Lifetime of provider records stored on other nodes.
    pub record_ttl: Duration,
    /// How often every provided key is published again. Must be below `record_ttl`.
    pub reprovide_interval: Duration,
    /// How often `dns:` bootstrap names are resolved again.
    pub dns_refresh: Duration,
    /// Upper bound of one `find_providers` lookup.
    pub query_timeout: Duration,
    /// Upper bound of one connection attempt (TCP + handshakes).
    pub dial_timeout: Duration,
    /// How long an unused connection is kept open when it is not one of the kept ones
    /// (`kept_connections`).
    pub idle_connection_timeout: Duration,
    /// Connections kept open while idle: routing-table peers always, then the longest-lived
    /// others until this many are kept; the rest close after `idle_connection_timeout`.
    pub kept_connections: usize,
    /// How often every connection is pinged.
    pub ping_interval: Duration,
    /// A ping unanswered for this long closes the connection.
    pub ping_timeout: Duration,
    /// Most keys this node itself may provide.
    pub max_provided_keys: usize,
    /// Most distinct keys in the local record store (own and others' provider records).
    pub max_stored_keys: usize,
    /// Publications (provide queries) in flight at once.
    pub publish_concurrency: usize,
    /// Most providers one `find_providers` stream yields; also its buffer size.
    pub max_providers: usize,
    /// Kademlia α: requests in flight per lookup.
    pub parallelism: usize,
    /// Resolver for `dns:` bootstrap; the system resolver when `None`.
    pub resolver: Option<Arc<dyn Resolver>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                DEFAULT_P2P_PORT,
            )],
            mirror_port: 5000,
            psk: None,
            bootstrap: Vec::new(),
            data_dir: None,
            record_ttl: Duration::from_secs(36 * 3600),
            reprovide_interval: Duration::from_secs(12 * 3600),
            dns_refresh: Duration::from_secs(30),
            query_timeout: Duration::from_secs(5),
            dial_timeout: Duration::from_secs(5),
            idle_connection_timeout: Duration::from_secs(10 * 60),
            kept_connections: 128,
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(10),
            max_provided_keys: 100_000,
            max_stored_keys: 500_000,
            publish_concurrency: 32,
            max_providers: 20,
            parallelism: 8,
            resolver: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("mirror_port", &self.mirror_port)
            .field("psk", &self.psk.map(|k| k.fingerprint().to_string()))
            .field("bootstrap", &self.bootstrap)
            .field("data_dir", &self.data_dir)
            .field("record_ttl", &self.record_ttl)
            .field("reprovide_interval", &self.reprovide_interval)
            .field("dns_refresh", &self.dns_refresh)
            .field("query_timeout", &self.query_timeout)
            .field("max_provided_keys", &self.max_provided_keys)
            .field("publish_concurrency", &self.publish_concurrency)
            .field("max_providers", &self.max_providers)
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Checks the relations between settings; the error names the offending one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_owned()));
        if self.listen.is_empty() {
            return bad("at least one listen address is required");
        }
        if self.reprovide_interval >= self.record_ttl {
            return Err(Error::Config(format!(
                "reprovide_interval ({:?}) must be shorter than record_ttl ({:?}), or records \
                 expire before they are renewed",
                self.reprovide_interval, self.record_ttl
            )));
        }
        for (name, d) in [
            ("record_ttl", self.record_ttl),
            ("reprovide_interval", self.reprovide_interval),
            ("dns_refresh", self.dns_refresh),
            ("query_timeout", self.query_timeout),
            ("dial_timeout", self.dial_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!("{name} must be greater than zero")));
            }
        }
        for (name, n) in [
            ("max_provided_keys", self.max_provided_keys),
            ("max_stored_keys", self.max_stored_keys),
            ("publish_concurrency", self.publish_concurrency),
            ("max_providers", self.max_providers),
            ("parallelism", self.parallelism),
        ] {
            if n == 0 {
                return Err(Error::Config(format!("{name} must be at least 1")));
            }
        }
        if self.max_stored_keys < self.max_provided_keys {
            return bad("max_stored_keys must be at least max_provided_keys");
        }
        Ok(())
    }
}

/// One way of finding other nodes (`--bootstrap`, repeatable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// `static:/ip4/10.0.0.1/tcp/5001[/p2p/<id>]`: dial this address.
    Static(Multiaddr),
    /// `dns:<name>[:port]`: resolve A/AAAA records, dial every address, re-resolve periodically.
    Dns { name: String, port: u16 },
    /// `mdns`: discover nodes on the local link.
    Mdns,
}

impl Bootstrap {
    /// For a static address with a `/p2p/<id>` suffix: the address without it and the peer id.
    pub(crate) fn split_static(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
        let mut base = addr.clone();
        match base.pop() {
            Some(Protocol::P2p(id)) => (base, Some(id)),
            _ => (addr.clone(), None),
        }
    }
}

impl fmt::Display for Bootstrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bootstrap::Static(a) => write!(f, "static:{a}"),
            Bootstrap::Dns { name, port } => write!(f, "dns:{name}:{port}"),
            Bootstrap::Mdns => f.write_str("mdns"),
        }
    }
}

impl FromStr for Bootstrap {
    type Err = BootstrapParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| BootstrapParseError {
            input: s.to_owned(),
            reason,
        };
        if s == "mdns" {
            return Ok(Bootstrap::Mdns);
        }
        if let Some(addr) = s.strip_prefix("static:") {
            let ma: Multiaddr = addr
                .parse()
                .map_err(|e| err(format!("not a multiaddr: {e}")))?;
            check_static(&ma).map_err(err)?;
            return Ok(Bootstrap::Static(ma));
        }
        if let Some(rest) = s.strip_prefix("dns:") {
            let (name, port) = match rest.rsplit_once(':') {
                Some((name, port)) => {
                    let port = port
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| err(format!("port {port:?} is not a number 1-65535")))?;
                    (name, port)
                }
                None => (rest, DEFAULT_P2P_PORT),
            };
            let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
            if name.is_empty() || !name.chars().all(valid) {
                return Err(err(format!("{name:?} is not a DNS name")));
            }
            return Ok(Bootstrap::Dns {
                name: name.trim_end_matches('.').to_owned(),
                port,
            });
        }
        Err(err(
            "expected static:<multiaddr>, dns:<name>[:port] or mdns".to_owned(),
        ))
    }
}

fn check_static(ma: &Multiaddr) -> Result<(), String> {
    let mut it = ma.iter();
    match it.next() {
        Some(Protocol::Ip4(_) | Protocol::Ip6(_)) => {}
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_)) => {
            return Err(
                "names are not resolved in static: addresses; use dns:<name>:<port>".into(),
            );
        }
        _ => return Err("must start with /ip4/<addr> or /ip6/<addr>".into()),
    }
    match it.next() {
        Some(Protocol::Tcp(p)) if p != 0 => {}
        _ => return Err("second component must be /tcp/<port>".into()),
    }
    match (it.next(), it.next()) {
        (None, _) | (Some(Protocol::P2p(_)), None) => Ok(()),
        _ => Err("only a /p2p/<peer id> suffix may follow /tcp/<port>".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_forms() {
        let b: Bootstrap = "static:/ip4/10.1.2.3/tcp/5001".parse().unwrap();
        assert_eq!(b.to_string(), "static:/ip4/10.1.2.3/tcp/5001");
        let id = PeerId::random();
        let b: Bootstrap = format!("static:/ip6/::1/tcp/5001/p2p/{id}")
            .parse()
            .unwrap();
        let Bootstrap::Static(ma) = &b else { panic!() };
        assert_eq!(Bootstrap::split_static(ma).1, Some(id));
        assert_eq!(
            "dns:shoal.kube-system.svc.cluster.local"
                .parse::<Bootstrap>()
                .unwrap(),
            Bootstrap::Dns {
                name: "shoal.kube-system.svc.cluster.local".into(),
                port: DEFAULT_P2P_PORT
            }
        );
        assert_eq!(
            "dns:peers:7000".parse::<Bootstrap>().unwrap(),
            Bootstrap::Dns {
                name: "peers".into(),
                port: 7000
            }
        );
        assert_eq!("mdns".parse::<Bootstrap>().unwrap(), Bootstrap::Mdns);
    }

    #[test]
    fn refusals_say_why() {
        let e = |s: &str| s.parse::<Bootstrap>().unwrap_err().to_string();
        assert!(e("10.0.0.1:5001").contains("expected static:"));
        assert!(e("static:10.0.0.1").contains("not a multiaddr"));
        assert!(e("static:/dns4/x/tcp/1").contains("use dns:"));
        assert!(e("static:/ip4/1.2.3.4/udp/1").contains("/tcp/"));
        assert!(e("static:/ip4/1.2.3.4/tcp/1/ws").contains("/p2p/"));
        assert!(e("dns:").contains("not a DNS name"));
        assert!(e("dns:a b").contains("not a DNS name"));
        assert!(e("dns:peers:http").contains("port"));
        assert!(e("dns:peers:0").contains("port"));
    }

    #[test]
    fn default_config_is_valid_and_checked() {
        Config::default().validate().unwrap();
        let c = Config {
            reprovide_interval: Duration::from_secs(36 * 3600),
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("reprovide_interval")
        );
        let c = Config {
            listen: vec![],
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}
