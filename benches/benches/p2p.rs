//! P2P routing benchmark: N in-process nodes on loopback (N = 20, 50), default configuration.
//!
//! Reports p50/p99/max of
//! - present-key lookup: `find_providers` call to first provider,
//! - absent-key lookup: call to the end of the (empty) stream, i.e. the "nobody has it" answer,
//! - provide -> findable: `provide` on one node until a lookup from another node returns it.
//!
//! Targets: absent-key p99 <= 20 ms, provide -> findable p99 <= 1 s. Run with
//! `cargo bench -p shoal-benches --bench p2p`. Loopback only; every loop is bounded.

use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_p2p::{Bootstrap, Config, Handle, Key};

const PRESENT_SAMPLES: usize = 300;
const ABSENT_SAMPLES: usize = 300;
const FINDABLE_SAMPLES: usize = 40;

/// Small deterministic PRNG (xorshift64*): reproducible node/key choices without a dependency.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

fn key(tag: u64, n: u64) -> Key {
    format!("sha256:{tag:016x}{n:048x}").parse().unwrap()
}

async fn start_nodes(n: usize) -> Vec<Handle> {
    let cfg = |i: usize| Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        mirror_port: 30_000 + i as u16,
        ..Config::default()
    };
    let (first, _) = shoal_p2p::spawn(cfg(0)).await.unwrap();
    let seed = first.listen_addrs()[0].clone();
    let mut nodes = vec![first];
    for i in 1..n {
        let mut c = cfg(i);
        c.bootstrap = vec![Bootstrap::Static(seed.clone())];
        nodes.push(shoal_p2p::spawn(c).await.unwrap().0);
    }
    for h in &nodes {
        let t = Instant::now();
        while !h.status().await.unwrap().ready {
            assert!(t.elapsed() < Duration::from_secs(20), "node not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Let Kademlia's automatic bootstrap fill the routing tables, then warm up: one lookup per
    // node opens the connections a long-running daemon would already hold.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, h) in nodes.iter().enumerate() {
        lookup(h, &key(u64::MAX, i as u64)).await;
    }
    nodes
}

/// Time to the first provider (`Some`), or to the end of an empty stream (`None` found).
async fn lookup(h: &Handle, k: &Key) -> (Duration, bool) {
    let t = Instant::now();
    let mut s = h.find_providers(k).await.unwrap();
    let found = s.next().await.is_some();
    (t.elapsed(), found)
}

fn row(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| {name:<26} | {:>7} | {:>9.2} | {:>9.2} | {:>9.2} |",
        v.len(),
        ms(q(0.50)),
        ms(q(0.99)),
        ms(*v.last().unwrap())
    );
}

async fn run(n: usize, rng: &mut Rng) {
    let nodes = start_nodes(n).await;
    let tag = n as u64;
    // 50 present keys, each on one node.
    let present: Vec<(Key, usize)> = (0..50).map(|i| (key(tag, i), rng.below(n))).collect();
    for (k, p) in &present {
        nodes[*p].provide(vec![k.clone()]).await.unwrap();
    }
    for (k, p) in &present {
        let f = (p + 1) % n;
        let t = Instant::now();
        while !lookup(&nodes[f], k).await.1 {
            assert!(t.elapsed() < Duration::from_secs(10), "key never findable");
        }
    }

    let mut present_lat = Vec::new();
    for _ in 0..PRESENT_SAMPLES {
        let (k, p) = &present[rng.below(present.len())];
        let f = (p + 1 + rng.below(n - 1)) % n;
        let (d, found) = lookup(&nodes[f], k).await;
        assert!(found, "present key not found");
        present_lat.push(d);
    }

    let mut absent_lat = Vec::new();
    for i in 0..ABSENT_SAMPLES {
        let (d, found) = lookup(&nodes[rng.below(n)], &key(tag, 1_000_000 + i as u64)).await;
        assert!(!found);
        absent_lat.push(d);
    }

    let mut findable = Vec::new();
    for i in 0..FINDABLE_SAMPLES {
        let k = key(tag, 2_000_000 + i as u64);
        let p = rng.below(n);
        let f = (p + 1 + rng.below(n - 1)) % n;
        let t = Instant::now();
        nodes[p].provide(vec![k.clone()]).await.unwrap();
        loop {
            if lookup(&nodes[f], &k).await.1 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "key never findable");
        }
        findable.push(t.elapsed());
    }

    println!("\n{n} nodes (loopback, in-process, default Config)\n");
    println!("| measure                    | samples | p50 (ms)  | p99 (ms)  | max (ms)  |");
    println!("|----------------------------|---------|-----------|-----------|-----------|");
    row("present key, first result", present_lat);
    row("absent key, answer", absent_lat);
    row("provide -> findable", findable);

    for h in &nodes {
        h.shutdown().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    rt.block_on(async {
        if quick {
            run(5, &mut rng).await;
            return;
        }
        run(20, &mut rng).await;
        run(50, &mut rng).await;
    });
}
