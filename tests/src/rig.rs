//! The rig: a registry and N containerd nodes, each in its own network namespace on a private
//! bridge, on a subnet no other rig uses and that the root namespace cannot reach. Building it
//! is ordered so that whatever exists is torn down if a later step panics; dropping it kills
//! every process it started, deletes its namespaces and route, and removes its directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::alloc::{self, Slot};
use crate::net::Network;
use crate::node::Node;
use crate::registry::Registry;
use crate::{cmd, preflight};

/// Builder for [`Rig`]: `Rig::builder().nodes(3).start()`.
#[derive(Debug, Clone)]
pub struct RigBuilder {
    nodes: usize,
}

impl RigBuilder {
    /// Number of containerd nodes (default 1, at most 100).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Start the rig, waiting for a free slot first (see `SHOAL_RIG_PARALLEL`). Panics with the
    /// failing step and its log if anything does not come up.
    pub fn start(self) -> Rig {
        assert!(
            (1..=100).contains(&self.nodes),
            "Rig::builder().nodes({}): expected 1..=100 nodes",
            self.nodes
        );
        preflight();
        let gate = alloc::acquire_gate();
        let started = Instant::now();
        let slot = Arc::new(alloc::acquire_subnet());
        let index = slot.index;
        let dir = RigDir::create(index, &slot);
        let mut net = Network::create(index);
        let (reg_ns, reg_ip) = net.add_member("reg", 1);
        let mut members = Vec::new();
        for i in 0..self.nodes {
            let name = format!("n{}", i + 1);
            let (ns, ip) = net.add_member(&name, (i + 2) as u8);
            members.push((name, ns, ip));
        }
        let reg_dir = dir.path.join("registry");
        fs::create_dir_all(&reg_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", reg_dir.display()));
        let registry = Registry::spawn(slot.clone(), reg_ns, reg_ip, reg_dir);
        let mut nodes = Vec::new();
        for (name, ns, ip) in members {
            let node_dir = dir.path.join(&name);
            fs::create_dir_all(&node_dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", node_dir.display()));
            nodes.push(Node::create(
                slot.clone(),
                name,
                ns,
                ip,
                node_dir,
                &registry.addr(),
            ));
        }
        // Everything was spawned at once; now wait for each (they boot in parallel).
        registry.wait_ready();
        for n in &nodes {
            n.wait_containerd();
        }
        let startup = started.elapsed();
        eprintln!(
            "shoal rig {index}: {} node(s) on {} up in {startup:.2?} (dir {})",
            nodes.len(),
            net.subnet(),
            dir.path.display()
        );
        Rig {
            nodes,
            registry,
            net,
            dir,
            _slot: slot,
            _gate: gate,
            startup,
        }
    }
}

/// Name of the rig's cluster key in its directory.
pub(crate) const PSK_FILE: &str = "swarm.key";

/// Writes a fresh random libp2p `swarm.key` (the `/key/swarm/psk/1.0.0/` format) at `path`.
pub fn write_psk(path: &Path) {
    use std::io::Read;
    let mut key = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .unwrap_or_else(|e| panic!("read /dev/urandom: {e}"));
    let text = format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", hex::encode(key));
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, path))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The rig's working directory; removed on drop unless `SHOAL_RIG_KEEP` is set.
#[derive(Debug)]
struct RigDir {
    path: PathBuf,
}

impl RigDir {
    fn create(index: u32, slot: &Slot) -> RigDir {
        let path = std::env::temp_dir().join(format!("shoal-rig-{index}-{}", std::process::id()));
        if path.exists() {
            // Same subnet and PID as a rig of this process that is gone: its leftovers.
            fs::remove_dir_all(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
        }
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        slot.record(&format!("dir {}", path.display()));
        // The cluster key every daemon of this rig shares (`--p2p-psk-file`).
        write_psk(&path.join(PSK_FILE));
        RigDir { path }
    }
}

impl Drop for RigDir {
    fn drop(&mut self) {
        if std::env::var_os("SHOAL_RIG_KEEP").is_some() {
            eprintln!(
                "shoal rig: keeping {} (SHOAL_RIG_KEEP)",
                self.path.display()
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("shoal rig teardown: remove {}: {e}", self.path.display());
        }
    }
}

/// A running rig. Fields drop in order: nodes and registry (processes), then the network
/// (namespaces, route), the directory, and finally the subnet and gate locks.
#[derive(Debug)]
pub struct Rig {
    nodes: Vec<Node>,
    registry: Registry,
    net: Network,
    dir: RigDir,
    _slot: Arc<Slot>,
    _gate: Slot,
    startup: Duration,
}

impl Rig {
    pub fn builder() -> RigBuilder {
        RigBuilder { nodes: 1 }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Node `i` (0-based; `node(0)` is `n1`).
    pub fn node(&self, i: usize) -> &Node {
        self.nodes
            .get(i)
            .unwrap_or_else(|| panic!("rig.node({i}): the rig has {} node(s)", self.nodes.len()))
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The rig's subnet (`10.213.<n>.0/24`), covered by an unreachable route in the root namespace.
    pub fn subnet(&self) -> &str {
        self.net.subnet()
    }

    /// The rig's working directory (logs, node roots, registry storage).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// How long `start()` took after getting its slot.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Cut node `i` off the bridge (`up = false`) or reconnect it.
    pub fn set_node_link(&self, i: usize, up: bool) {
        let name = self.node(i).name().to_string();
        self.net
            .set_link(&name, up)
            .unwrap_or_else(|e| panic!("shoal rig: {e}"));
    }

    /// Tail of every log of the rig, for failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut s = cmd::tail(&self.registry.log_path(), lines);
        for n in &self.nodes {
            s.push_str(&cmd::tail(&n.containerd_log(), lines));
        }
        s
    }
}
