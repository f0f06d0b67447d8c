//! Test support: a real containerd started for one test (root namespace, unix socket under a
//! temp dir, CRI plugin off, no network use at all) and OCI archives built by hand for
//! `ctr images import`.

#![allow(dead_code)]

pub mod image;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use shoal_containerd::{ContentSource, WatchConfig};

pub const NS: &str = "k8s.io";

/// One containerd daemon owned by a test; killed (by PID) on drop.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

fn require(bin: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{bin}` is not installed: these tests need a real containerd \
         (apt-get install containerd) and must run as root"
    );
}

impl Containerd {
    pub fn start() -> Containerd {
        require("containerd");
        require("ctr");
        // Short path: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("shc-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path().display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n"
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let mut c = Containerd { dir, child: None };
        c.spawn();
        // The namespace exists once something lives in it; a label is the cheapest thing.
        c.ctr(&["namespaces", "create", NS]);
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn content_dir(&self) -> PathBuf {
        self.dir
            .path()
            .join("root/io.containerd.content.v1.content")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))
            .unwrap();
        let child = Command::new("containerd")
            .arg("-c")
            .arg(self.dir.path().join("config.toml"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("cannot run containerd (are you root?)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.ctr_raw(&["version"]);
            if out.status.success() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "containerd exited with {status} (are you root?); log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up in 15s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Kills the daemon (SIGKILL, by PID) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn ctr_raw(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", NS])
            .args(args)
            .output()
            .expect("cannot run ctr")
    }

    /// Runs ctr and panics with its stderr unless it succeeds.
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = self.ctr_raw(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports an OCI archive without unpacking (no snapshotter work, content only).
    pub fn import(&self, archive: &Path, extra: &[&str]) {
        let mut args = vec!["images", "import", "--no-unpack"];
        args.extend_from_slice(extra);
        let a = archive.to_str().unwrap();
        args.push(a);
        self.ctr(&args);
    }

    pub async fn source(&self, content_dir: bool) -> ContentSource {
        let dir = content_dir.then(|| self.content_dir());
        ContentSource::connect(&self.socket(), NS, dir)
            .await
            .expect("connect to the test containerd")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Watch timings for tests: quick retries, a re-list interval the test chooses.
pub fn fast_watch(relist: Duration) -> WatchConfig {
    WatchConfig {
        relist_interval: relist,
        debounce: Duration::from_millis(100),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        capacity: 16,
        follow_events: true,
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("shoal_containerd=debug")
        .with_test_writer()
        .try_init();
}
