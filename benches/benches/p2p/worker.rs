//! Nodes spread over worker processes. One process cannot hold a few hundred nodes: every node
//! ends up connected to every other (see `Config::idle_connection_timeout`), each connection
//! end is a descriptor, and one process holding both ends of n x (n - 1) connections passes
//! this container's fixed open-file limit (20,000) at ~120 nodes. A real node holds n - 1.
//! So the bench runs as a coordinator that starts `workers` copies of itself
//! (`--p2p-worker`), each hosting a share of the nodes; connections between nodes of different
//! workers cost one descriptor in each, as on separate hosts.
//!
//! The coordinator talks to a worker over its stdin/stdout, one JSON object per line, every
//! request tagged with an id so lookups run concurrently. A worker exits when its stdin closes
//! (the coordinator ended, whatever the reason), and the coordinator kills the workers it
//! started when it drops them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use shoal_p2p::{Bootstrap, Config, Handle, Key, ResolveError, Resolver, Traffic};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::measure::Lag;
use crate::workload::Rng;

/// The argument that makes the bench binary a worker.
pub const WORKER_ARG: &str = "--p2p-worker";
pub const PORT: u16 = 5001;
const DNS_NAME: &str = "shoal.kube-system.svc.cluster.local";
/// Addresses per DNS answer.
const ANSWER: usize = 5;
/// Requests in flight to one worker; callers wait beyond it.
const QUEUE: usize = 256;

/// The headless Service as one worker sees it: live node addresses (kept current by the
/// coordinator); each answer is a few random ones, so no single seed carries the cluster.
#[derive(Debug)]
struct Dns {
    live: Mutex<(Vec<SocketAddr>, Rng)>,
}

impl Dns {
    fn set(&self, addr: SocketAddr, live: bool) {
        let mut g = self.live.lock().unwrap();
        g.0.retain(|a| *a != addr);
        if live {
            g.0.push(addr);
        }
    }
}

impl Resolver for Dns {
    fn resolve<'a>(
        &'a self,
        _name: &'a str,
        _port: u16,
    ) -> BoxFuture<'a, Result<Vec<SocketAddr>, ResolveError>> {
        let mut g = self.live.lock().unwrap();
        let (live, rng) = &mut *g;
        let mut out = Vec::new();
        for _ in 0..ANSWER.min(live.len()) * 2 {
            let a = live[rng.below(live.len())];
            if !out.contains(&a) && out.len() < ANSWER {
                out.push(a);
            }
        }
        Box::pin(async move { Ok(out) })
    }
}

/// What the coordinator learns from a node's `Status`.
#[derive(Debug, Clone, Default)]
pub struct Stat {
    pub ready: bool,
    pub ready_reason: String,
    pub routing_table_size: usize,
    pub pending_publications: usize,
    pub peers: usize,
    pub stored_keys: usize,
    pub traffic: Traffic,
}

/// The coordinator's end of one worker process.
pub struct Link {
    pub pid: u32,
    tx: mpsc::Sender<(Value, oneshot::Sender<Value>)>,
    _child: tokio::process::Child,
}

impl Link {
    /// Starts a worker: this binary again, with [`WORKER_ARG`].
    pub fn spawn(seed: u64) -> Link {
        let exe = std::env::current_exe().expect("own executable");
        let mut child = tokio::process::Command::new(exe)
            .arg(WORKER_ARG)
            .arg(seed.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("worker starts");
        let pid = child.id().expect("worker pid");
        let mut stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>> = Arc::default();
        let (tx, mut rx) = mpsc::channel::<(Value, oneshot::Sender<Value>)>(QUEUE);
        let p = pending.clone();
        tokio::spawn(async move {
            let mut next = 0u64;
            while let Some((mut req, reply)) = rx.recv().await {
                next += 1;
                req["id"] = json!(next);
                p.lock().unwrap().insert(next, reply);
                let mut line = req.to_string();
                line.push('\n');
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let mut lines = stdout.lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).expect("worker answers JSON");
                let id = v["id"].as_u64().expect("answer id");
                if let Some(reply) = pending.lock().unwrap().remove(&id) {
                    let _ = reply.send(v);
                }
            }
        });
        Link {
            pid,
            tx,
            _child: child,
        }
    }

    /// Sends one request and waits for its answer; a worker that died is a harness failure.
    pub async fn call(&self, req: Value) -> Value {
        let (reply, rx) = oneshot::channel();
        let op = req["op"].clone();
        self.tx.send((req, reply)).await.expect("worker link open");
        let v = rx
            .await
            .unwrap_or_else(|_| panic!("worker {} died during {op}", self.pid));
        if let Some(e) = v["error"].as_str() {
            panic!("worker {} failed {op}: {e}", self.pid);
        }
        v
    }

    pub async fn start(&self, node: usize, addr: SocketAddr, dir: &std::path::Path) {
        self.call(json!({"op": "start", "node": node, "addr": addr, "dir": dir}))
            .await;
    }

    pub async fn stop(&self, node: usize) {
        self.call(json!({"op": "stop", "node": node})).await;
    }

    pub async fn dns(&self, addr: SocketAddr, live: bool) {
        self.call(json!({"op": "dns", "addr": addr, "live": live}))
            .await;
    }

    pub async fn provide(&self, node: usize, keys: &[Key], withdraw: bool) {
        let keys: Vec<String> = keys.iter().map(Key::to_string).collect();
        let op = if withdraw { "withdraw" } else { "provide" };
        self.call(json!({"op": op, "node": node, "keys": keys}))
            .await;
    }

    /// Time to the first provider, measured in the worker, and whether there was one.
    pub async fn lookup(&self, node: usize, key: &Key) -> (Duration, bool) {
        let v = self
            .call(json!({"op": "lookup", "node": node, "key": key.to_string()}))
            .await;
        (
            Duration::from_secs_f64(v["secs"].as_f64().unwrap()),
            v["found"].as_bool().unwrap(),
        )
    }

    pub async fn status(&self, node: usize) -> Stat {
        let v = self.call(json!({"op": "status", "node": node})).await;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Stat {
            ready: v["ready"].as_bool().unwrap_or(false),
            ready_reason: v["ready_reason"].as_str().unwrap_or("").to_owned(),
            routing_table_size: n("routing_table_size") as usize,
            pending_publications: n("pending_publications") as usize,
            peers: n("peers") as usize,
            stored_keys: n("stored_keys") as usize,
            traffic: Traffic {
                bytes_received: n("bytes_received"),
                bytes_sent: n("bytes_sent"),
                kad_requests_received: n("kad_requests_received"),
                add_providers_received: n("add_providers_received"),
            },
        }
    }

    /// p99 lateness of the worker's 10 ms timer since the last call.
    pub async fn lag_p99(&self) -> f64 {
        self.call(json!({"op": "lag"})).await["p99"]
            .as_f64()
            .unwrap_or(f64::NAN)
    }
}

/// `SHOAL_BENCH_PING_SECS`: a longer ping interval than the product's, for the harness only.
/// Pings are most of an idle node's CPU; at 300 nodes connected to each other every 10 s they
/// took ~1.1 of this machine's 2 cores, leaving lookups starved. Their cost in bytes is
/// measured with the default; this frees the cores to measure lookup latency.
pub fn ping_override() -> Option<u64> {
    std::env::var("SHOAL_BENCH_PING_SECS").ok()?.parse().ok()
}

type Nodes = Arc<Mutex<HashMap<usize, (Handle, tokio::task::JoinHandle<()>)>>>;

/// The worker's main: serve requests from stdin until it closes.
pub fn serve(seed: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dns = Arc::new(Dns {
            live: Mutex::new((Vec::new(), Rng(seed))),
        });
        let nodes: Nodes = Arc::default();
        let lag = Lag::spawn();
        let (out_tx, mut out_rx) = mpsc::channel::<Value>(QUEUE);
        let writer = tokio::spawn(async move {
            let mut stdout = tokio::io::stdout();
            while let Some(v) = out_rx.recv().await {
                let mut line = v.to_string();
                line.push('\n');
                if stdout.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
                let _ = stdout.flush().await;
            }
        });
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let req: Value = serde_json::from_str(&line).expect("coordinator sends JSON");
            let (dns, nodes, lag, out) = (dns.clone(), nodes.clone(), lag.clone(), out_tx.clone());
            tokio::spawn(async move {
                let mut v = match handle(&req, &dns, &nodes, &lag).await {
                    Ok(v) => v,
                    Err(e) => json!({ "error": e }),
                };
                v["id"] = req["id"].clone();
                let _ = out.send(v).await;
            });
        }
        // The coordinator is gone: stop every node (bounded), then exit.
        let all: Vec<_> = nodes.lock().unwrap().drain().collect();
        for (_, (h, task)) in all {
            h.shutdown().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        drop(out_tx);
        let _ = writer.await;
    });
}

fn node(nodes: &Nodes, req: &Value) -> Result<Handle, String> {
    let i = req["node"].as_u64().ok_or("no node")? as usize;
    let g = nodes.lock().unwrap();
    g.get(&i)
        .map(|(h, _)| h.clone())
        .ok_or_else(|| format!("node {i} is not running here"))
}

fn keys(req: &Value) -> Result<Vec<Key>, String> {
    req["keys"]
        .as_array()
        .ok_or("no keys")?
        .iter()
        .map(|k| {
            k.as_str()
                .ok_or("key not a string")?
                .parse()
                .map_err(|e| format!("bad key: {e}"))
        })
        .collect()
}

fn addr(req: &Value) -> Result<SocketAddr, String> {
    req["addr"]
        .as_str()
        .ok_or("no addr")?
        .parse()
        .map_err(|e| format!("bad addr: {e}"))
}

async fn handle(req: &Value, dns: &Arc<Dns>, nodes: &Nodes, lag: &Lag) -> Result<Value, String> {
    match req["op"].as_str().unwrap_or("") {
        "start" => {
            let i = req["node"].as_u64().ok_or("no node")? as usize;
            let dir = PathBuf::from(req["dir"].as_str().ok_or("no dir")?);
            let mut cfg = Config {
                listen: vec![addr(req)?],
                mirror_port: 5000,
                bootstrap: vec![Bootstrap::Dns {
                    name: DNS_NAME.into(),
                    port: PORT,
                }],
                data_dir: Some(dir),
                resolver: Some(dns.clone()),
                ..Config::default()
            };
            if let Some(secs) = ping_override() {
                cfg.ping_interval = Duration::from_secs(secs);
                cfg.ping_timeout = cfg.ping_timeout.max(cfg.ping_interval);
            }
            let n = shoal_p2p::spawn(cfg).await.map_err(|e| e.to_string())?;
            nodes.lock().unwrap().insert(i, n);
            Ok(json!({}))
        }
        "stop" => {
            let i = req["node"].as_u64().ok_or("no node")? as usize;
            let n = nodes.lock().unwrap().remove(&i);
            if let Some((h, task)) = n {
                h.shutdown().await;
                let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
            }
            Ok(json!({}))
        }
        "dns" => {
            dns.set(addr(req)?, req["live"].as_bool().unwrap_or(false));
            Ok(json!({}))
        }
        op @ ("provide" | "withdraw") => {
            let (h, keys) = (node(nodes, req)?, keys(req)?);
            let done = if op == "provide" {
                h.provide(keys).await
            } else {
                h.withdraw(keys).await
            };
            done.map_err(|e| e.to_string())?;
            Ok(json!({}))
        }
        "lookup" => {
            let h = node(nodes, req)?;
            let k: Key = req["key"]
                .as_str()
                .ok_or("no key")?
                .parse()
                .map_err(|e| format!("bad key: {e}"))?;
            let t = Instant::now();
            let found = match h.find_providers(&k).await {
                Ok(mut s) => s.next().await.is_some(),
                Err(_) => false,
            };
            Ok(json!({"secs": t.elapsed().as_secs_f64(), "found": found}))
        }
        "status" => {
            let s = node(nodes, req)?
                .status()
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({
                "ready": s.ready,
                "ready_reason": s.ready_reason,
                "routing_table_size": s.routing_table_size,
                "pending_publications": s.pending_publications,
                "peers": s.peers.len(),
                "stored_keys": s.stored_keys,
                "bytes_received": s.traffic.bytes_received,
                "bytes_sent": s.traffic.bytes_sent,
                "kad_requests_received": s.traffic.kad_requests_received,
                "add_providers_received": s.traffic.add_providers_received,
            }))
        }
        "lag" => Ok(json!({ "p99": lag.take_p99() })),
        op => Err(format!("unknown op {op:?}")),
    }
}
