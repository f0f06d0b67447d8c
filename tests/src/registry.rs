//! The rig's upstream registry: `docker-registry` (distribution v2) in its own namespace,
//! listening on `0.0.0.0:5000` with its own config (Debian's default turns on htpasswd auth) and
//! storage in the rig directory, so stop/start keeps the pushed images. Every registry host the
//! nodes know (docker.io, ghcr.io, harbor.test) is routed here by their hosts.toml.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::alloc::Slot;
use crate::cmd;
use crate::images::TestImage;
use crate::process::Managed;

/// The rig registry. Obtained from [`crate::Rig::registry`].
#[derive(Debug)]
pub struct Registry {
    netns: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    slot: Arc<Slot>,
    process: Mutex<Option<Managed>>,
    pushes: AtomicU32,
}

const PORT: u16 = 5000;

impl Registry {
    /// Write the config and start the registry (without waiting for it: see [`Self::wait_ready`]).
    pub(crate) fn spawn(slot: Arc<Slot>, netns: String, ip: Ipv4Addr, dir: PathBuf) -> Registry {
        let storage = dir.join("storage");
        fs::create_dir_all(&storage)
            .unwrap_or_else(|e| panic!("create {}: {e}", storage.display()));
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
             cache:\n    blobdescriptor: inmemory\n\
             http:\n  addr: 0.0.0.0:{PORT}\n  headers:\n    X-Content-Type-Options: [nosniff]\n",
            storage.display()
        );
        let path = dir.join("registry.yml");
        fs::write(&path, config).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        let reg = Registry {
            netns,
            ip,
            dir,
            slot,
            process: Mutex::new(None),
            pushes: AtomicU32::new(0),
        };
        reg.spawn_process();
        reg
    }

    fn spawn_process(&self) {
        let cfg = self.dir.join("registry.yml");
        let m = Managed::spawn(
            &self.slot,
            "docker-registry",
            &self.netns,
            Path::new("docker-registry"),
            &["serve", cfg.to_str().expect("utf-8 path")],
            &self.log_path(),
        );
        *self.lock() = Some(m);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Managed>> {
        self.process.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Block until `GET /v2/` answers inside the registry namespace; panics with the log tail.
    pub(crate) fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{PORT}/v2/");
        let ok = cmd::wait_until(Duration::from_secs(20), Duration::from_millis(25), || {
            let running = self.lock().as_mut().is_some_and(|m| m.running());
            if !running {
                return true;
            }
            cmd::output(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.netns,
                    "curl",
                    "-sf",
                    "-m",
                    "2",
                    "-o",
                    "/dev/null",
                    &url,
                ],
            )
            .is_ok_and(|o| o.status.success())
        });
        let mut guard = self.lock();
        let m = guard.as_mut().expect("registry was spawned");
        if !ok || !m.running() {
            panic!(
                "{}",
                m.failure("shoal rig: the registry did not become ready on :5000")
            );
        }
    }

    /// `"<ip>:5000"`, reachable from every node namespace.
    pub fn addr(&self) -> String {
        format!("{}:{PORT}", self.ip)
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `http://<ip>:5000`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The registry's namespace (`shoal-<n>-reg`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Registry process output: application log and access log (append-only across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    /// Limits the registry's outgoing bandwidth with `tc tbf` (the upstream link of a cold
    /// rollout).
    pub fn limit_rate(&self, mbit: u32) {
        let rate = format!("{mbit}mbit");
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
            ])
            .args([
                "root", "tbf", "rate", &rate, "burst", "256kb", "latency", "50ms",
            ])
            .output()
            .unwrap_or_else(|e| panic!("run tc in {}: {e}", self.netns));
        assert!(out.status.success(), "tc on the registry: {out:?}");
    }

    /// Stop the registry process (storage is kept). Pulls that need it fail until [`Self::start`].
    pub fn stop(&self) {
        if let Some(mut m) = self.lock().take() {
            m.stop(Duration::from_secs(3));
        }
    }

    /// Start the registry again (no-op if it is running) and wait until it serves.
    pub fn start(&self) {
        let running = self.lock().as_mut().is_some_and(|m| m.running());
        if !running {
            self.spawn_process();
        }
        self.wait_ready();
    }

    /// Push `img` under its reference's repository and tag (skopeo, inside the registry
    /// namespace). Checks that the registry then resolves the tag to the image's digest.
    pub fn push(&self, img: &TestImage) {
        let k = self.pushes.fetch_add(1, Ordering::Relaxed);
        // A per-push layout sharing the cached blobs, so any tag can be pushed from one cache.
        let layout = self.dir.join(format!("push-{k}"));
        fs::create_dir_all(&layout).unwrap_or_else(|e| panic!("create {}: {e}", layout.display()));
        std::os::unix::fs::symlink(img.layout_dir().join("blobs"), layout.join("blobs"))
            .unwrap_or_else(|e| panic!("symlink blobs into {}: {e}", layout.display()));
        fs::copy(
            img.layout_dir().join("oci-layout"),
            layout.join("oci-layout"),
        )
        .unwrap_or_else(|e| panic!("copy oci-layout: {e}"));
        let tag = img.tag();
        let size = img
            .blobs()
            .iter()
            .find(|(d, _, _)| *d == img.manifest_digest())
            .map(|(_, _, s)| *s)
            .expect("the top-level manifest is among the blobs");
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": img.media_type(),
                "digest": img.manifest_digest().to_string(),
                "size": size,
                "annotations": { "org.opencontainers.image.ref.name": tag },
            }],
        });
        fs::write(layout.join("index.json"), index.to_string())
            .unwrap_or_else(|e| panic!("write index.json: {e}"));

        let src = format!("oci:{}:{tag}", layout.display());
        let dest = format!("docker://127.0.0.1:{PORT}/{}:{tag}", img.repository());
        let mut args = vec![
            "netns",
            "exec",
            &self.netns,
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ];
        if img.is_index() {
            args.push("--all");
        }
        args.push(&src);
        args.push(&dest);
        if let Err(e) = cmd::run("ip", &args) {
            panic!(
                "shoal rig: pushing {} failed: {e}\n{}",
                img.reference(),
                cmd::tail(&self.log_path(), 20)
            );
        }
        let got = self.resolve(&img.repository(), &tag);
        let want = img.manifest_digest().to_string();
        assert_eq!(
            got.as_deref(),
            Ok(want.as_str()),
            "shoal rig: after pushing {} the registry resolves {}:{tag} to another digest",
            img.reference(),
            img.repository()
        );
    }

    /// `Docker-Content-Digest` of `repo:tag` (HEAD inside the registry namespace).
    pub fn resolve(&self, repo: &str, tag: &str) -> Result<String, String> {
        let url = format!("http://127.0.0.1:{PORT}/v2/{repo}/manifests/{tag}");
        let accept = "Accept: application/vnd.oci.image.index.v1+json, \
                      application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json";
        let out = cmd::run(
            "ip",
            &[
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-sfI",
                "-m",
                "10",
                "-H",
                accept,
                &url,
            ],
        )?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("docker-content-digest")
                    .then(|| v.trim().to_string())
            })
            .ok_or_else(|| format!("HEAD {url}: no Docker-Content-Digest header"))
    }

    /// The access-log lines so far (one per HTTP request, combined log format), across restarts.
    pub fn access_log(&self) -> String {
        let text = fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let mut out = String::new();
        for line in text.lines() {
            let mut words = line.split(' ');
            let is_access = words
                .next()
                .is_some_and(|w| w.parse::<std::net::IpAddr>().is_ok())
                && words.next() == Some("-");
            if is_access {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
