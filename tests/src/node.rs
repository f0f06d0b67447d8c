//! A rig node: one network namespace with its own containerd (own root, state, socket and hosts
//! directory), plus any processes a test starts next to it (typically `shoal daemon`).

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_oci::Digest;

use crate::alloc::Slot;
use crate::cmd;
use crate::containerd::{self, ROUTED_REGISTRIES};
use crate::cri::{self, CriImage};
use crate::process::{Managed, Process};

/// CRI pulls of the 200 MB image take seconds; anything near this is a hang.
const CRI_PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// One node of a rig. Obtained from [`crate::Rig::node`].
#[derive(Debug)]
pub struct Node {
    name: String,
    netns: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    slot: Arc<Slot>,
    containerd: Mutex<Option<Managed>>,
    procs: Mutex<Vec<Arc<Mutex<Managed>>>>,
    spawned: std::sync::atomic::AtomicU32,
}

impl Node {
    /// Create the node's directories and config, and start containerd (not waiting for it).
    pub(crate) fn create(
        slot: Arc<Slot>,
        name: String,
        netns: String,
        ip: Ipv4Addr,
        dir: PathBuf,
        registry: &str,
    ) -> Node {
        let node = Node {
            name,
            netns,
            ip,
            dir,
            slot,
            containerd: Mutex::new(None),
            procs: Mutex::new(Vec::new()),
            spawned: Default::default(),
        };
        fs::create_dir_all(node.hosts_dir()).unwrap_or_else(|e| panic!("create hosts dir: {e}"));
        let server = format!("http://{registry}");
        for host in ROUTED_REGISTRIES {
            containerd::write_hosts(&node.hosts_dir(), host, &containerd::hosts_toml(&server))
                .unwrap_or_else(|e| panic!("shoal rig: {e}"));
        }
        let cfg = node.dir.join("config.toml");
        fs::write(&cfg, containerd::config(&node.dir, &node.hosts_dir()))
            .unwrap_or_else(|e| panic!("write {}: {e}", cfg.display()));
        node.spawn_containerd();
        node
    }

    fn spawn_containerd(&self) {
        let cfg = self.dir.join("config.toml");
        let m = Managed::spawn(
            &self.slot,
            &format!("containerd of {}", self.name),
            &self.netns,
            &containerd::bin("containerd"),
            &["-c", cfg.to_str().expect("utf-8 path")],
            &self.containerd_log(),
        );
        *self.cd() = Some(m);
    }

    fn cd(&self) -> std::sync::MutexGuard<'_, Option<Managed>> {
        self.containerd.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Block until containerd answers on its socket; panics with its log tail otherwise.
    pub(crate) fn wait_containerd(&self) {
        let sock = self.containerd_socket();
        let sock = sock.to_str().expect("utf-8 path");
        let ok = cmd::wait_until(Duration::from_secs(30), Duration::from_millis(25), || {
            if !self.cd().as_mut().is_some_and(|m| m.running()) {
                return true;
            }
            cmd::output(&containerd::bin_str("ctr"), &["-a", sock, "version"])
                .is_ok_and(|o| o.status.success())
        });
        let mut guard = self.cd();
        let m = guard.as_mut().expect("containerd was spawned");
        if !ok || !m.running() {
            panic!(
                "{}",
                m.failure(&format!(
                    "shoal rig: containerd of {} did not start",
                    self.name
                ))
            );
        }
    }

    /// `n1`, `n2`, …
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's namespace (`shoal-<n>-n1`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The node's directory inside the rig directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// containerd's `root`.
    pub fn root_dir(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// containerd's content store (`<root>/io.containerd.content.v1.content`; blobs are under
    /// `blobs/sha256/<hex>`).
    pub fn content_dir(&self) -> PathBuf {
        self.root_dir().join("io.containerd.content.v1.content")
    }

    /// Path a blob has in this node's content store (it may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.content_dir()
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// Whether the node's content store holds `digest`.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// The hosts directory (`config_path` of the CRI plugin, `--hosts-dir` of [`Self::pull`]).
    /// Initially `docker.io`, `ghcr.io` and `harbor.test` go to the rig registry.
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    /// Replace `<hosts_dir>/<host>/hosts.toml` (atomically).
    pub fn write_hosts_toml(&self, host: &str, content: &str) {
        containerd::write_hosts(&self.hosts_dir(), host, content)
            .unwrap_or_else(|e| panic!("shoal rig: {e}"));
    }

    /// containerd's output (append-only across restarts).
    pub fn containerd_log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// `ip netns exec <netns> <argv…>`.
    pub fn exec(&self, argv: &[&str]) -> Output {
        let mut args = vec!["netns", "exec", &self.netns];
        args.extend_from_slice(argv);
        cmd::output("ip", &args).unwrap_or_else(|e| panic!("shoal rig: {e}"))
    }

    /// `ctr -a <socket> -n k8s.io <args…>` inside the node namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        let sock = self.containerd_socket();
        let ctr = containerd::bin_str("ctr");
        let mut argv = vec![
            ctr.as_str(),
            "-a",
            sock.to_str().expect("utf-8 path"),
            "-n",
            "k8s.io",
        ];
        argv.extend_from_slice(args);
        self.exec(&argv)
    }

    /// `ctr images pull --hosts-dir <hosts_dir> <reference>` inside the node namespace (the
    /// HTTP is done by ctr itself, from the namespace: `--local` with ctr 2.x).
    pub fn pull(&self, reference: &str) -> Result<(), String> {
        let hosts = self.hosts_dir();
        let mut args = vec!["images", "pull"];
        args.extend_from_slice(containerd::ctr_pull_local_args());
        args.extend([
            "--hosts-dir",
            hosts.to_str().expect("utf-8 path"),
            reference,
        ]);
        let out = self.ctr(&args);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} on {}\n{}",
                cmd::describe_failure(&cmd::render("ctr", &args), &out),
                self.name,
                cmd::tail(&self.containerd_log(), 20)
            ))
        }
    }

    /// CRI `PullImage` (the kubelet path: containerd's resolver, `config_path`); returns how
    /// long the call took.
    pub fn cri_pull(&self, image: &str) -> Result<Duration, String> {
        cri::pull(&self.containerd_socket(), image, CRI_PULL_TIMEOUT)
            .map(|(_, took)| took)
            .map_err(|e| {
                format!(
                    "{e} (on {})\n{}",
                    self.name,
                    cmd::tail(&self.containerd_log(), 20)
                )
            })
    }

    /// CRI `ListImages`.
    pub fn cri_images(&self) -> Result<Vec<CriImage>, String> {
        cri::list(&self.containerd_socket())
    }

    /// CRI `RemoveImage`.
    pub fn cri_remove(&self, image: &str) -> Result<(), String> {
        cri::remove(&self.containerd_socket(), image)
    }

    /// The version containerd reports (`ctr version`, the server's `Version:` line).
    pub fn containerd_version(&self) -> String {
        let out = self.ctr(&["version"]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("Server:")
            .nth(1)
            .and_then(|server| {
                server
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Version:"))
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_else(|| {
                panic!(
                    "shoal rig: no server version in `ctr version` on {}: {}",
                    self.name,
                    cmd::describe_failure("ctr version", &out)
                )
            })
    }

    /// Image names in containerd's `k8s.io` namespace (`ctr images ls -q`).
    pub fn images(&self) -> Vec<String> {
        let out = self.ctr(&["images", "ls", "-q"]);
        assert!(
            out.status.success(),
            "{}",
            cmd::describe_failure("ctr images ls -q", &out)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Delete every image and lease in `k8s.io` and wait for garbage collection, so the content
    /// store is empty again.
    pub fn reset_images(&self) {
        let images = self.images();
        if !images.is_empty() {
            let mut args = vec!["images", "rm", "--sync"];
            args.extend(images.iter().map(String::as_str));
            let out = self.ctr(&args);
            assert!(
                out.status.success(),
                "{}",
                cmd::describe_failure("ctr images rm --sync", &out)
            );
        }
        let out = self.ctr(&["leases", "ls", "-q"]);
        let leases: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        if !leases.is_empty() {
            let mut args = vec!["leases", "rm", "--sync"];
            args.extend(leases.iter().map(String::as_str));
            let out = self.ctr(&args);
            assert!(
                out.status.success(),
                "{}",
                cmd::describe_failure("ctr leases rm --sync", &out)
            );
        }
    }

    /// Stop containerd (SIGTERM, SIGKILL after 5 s). The socket, root and state stay.
    pub fn kill_containerd(&self) {
        if let Some(mut m) = self.cd().take() {
            m.stop(Duration::from_secs(5));
        }
    }

    /// Start containerd again with the same config (no-op if running) and wait for it.
    pub fn start_containerd(&self) {
        let running = self.cd().as_mut().is_some_and(|m| m.running());
        if !running {
            self.spawn_containerd();
        }
        self.wait_containerd();
    }

    /// Start `program args…` in the node namespace. Output goes to a log file in the node
    /// directory ([`Process::log`]). The process is killed when the handle is dropped and at rig
    /// teardown at the latest.
    pub fn spawn(&self, program: impl AsRef<Path>, args: &[&str]) -> Process {
        let program = program.as_ref();
        let k = self
            .spawned
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = program
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("process");
        let log = self.dir.join(format!("{base}-{k}.log"));
        let m = Managed::spawn(
            &self.slot,
            &format!("{base} on {}", self.name),
            &self.netns,
            program,
            args,
            &log,
        );
        let m = Arc::new(Mutex::new(m));
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(m.clone());
        Process::new(m)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|p| p.into_inner()));
        for p in procs {
            p.lock()
                .unwrap_or_else(|p| p.into_inner())
                .stop(Duration::from_secs(3));
        }
        if let Some(mut m) = self.cd().take() {
            m.stop(Duration::from_secs(5));
        }
    }
}
