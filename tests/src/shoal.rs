//! `shoal daemon` on a rig node: `node.shoal().bootstrap(&first).start()`.
//!
//! Each node's daemon listens on the node's own address (mirror :5000, metrics :9090, p2p :5001)
//! and is reached only from inside the node's namespace, like a DaemonSet pod on the host network.

use std::time::Duration;

use crate::{Node, Process, cmd, shoal_bin};

pub const MIRROR_PORT: u16 = 5000;
pub const METRICS_PORT: u16 = 9090;
pub const P2P_PORT: u16 = 5001;

/// Builder for a node's daemon.
#[derive(Debug)]
pub struct DaemonBuilder<'a> {
    node: &'a Node,
    args: Vec<String>,
    psk: Option<std::path::PathBuf>,
}

/// A running `shoal daemon`; killed on drop.
#[derive(Debug)]
pub struct Daemon {
    netns: String,
    ip: std::net::Ipv4Addr,
    admin_socket: std::path::PathBuf,
    process: Process,
}

impl Node {
    /// A daemon for this node, following its containerd, mirroring `docker.io` and `ghcr.io`
    /// (the rig registry stands in for both), re-listing every second.
    pub fn shoal(&self) -> DaemonBuilder<'_> {
        let sock = self.containerd_socket().display().to_string();
        let content = self.content_dir().display().to_string();
        // Per node: every rig daemon shares the machine's filesystem.
        let admin = self.dir().join("admin.sock").display().to_string();
        let spool = self.dir().join("spool").display().to_string();
        let args = [
            "daemon",
            "--admin-socket",
            &admin,
            "--spool-dir",
            &spool,
            "--containerd-socket",
            &sock,
            "--containerd-content-dir",
            &content,
            "--registries",
            "docker.io,ghcr.io",
            "--mirror-addr",
            &format!("0.0.0.0:{MIRROR_PORT}"),
            "--metrics-addr",
            &format!("0.0.0.0:{METRICS_PORT}"),
            "--p2p-addr",
            &format!("0.0.0.0:{P2P_PORT}"),
            "--relist-interval",
            "1s",
            "--log",
            "info,shoal=debug,shoal_mirror=debug",
        ]
        .map(String::from)
        .to_vec();
        // The rig's shared cluster key (written when the rig was created).
        let psk = self.dir().parent().map(|d| d.join(crate::rig::PSK_FILE));
        DaemonBuilder {
            node: self,
            args,
            psk,
        }
    }
}

impl Node {
    /// Limits the node's outgoing bandwidth with `tc tbf` (netem is not available here).
    pub fn limit_rate(&self, mbit: u32) {
        let rate = format!("{mbit}mbit");
        let out = self.exec(&[
            "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst",
            "256kb", "latency", "50ms",
        ]);
        assert!(out.status.success(), "tc on {}: {out:?}", self.name());
    }

    /// Flips one byte in the middle of a blob in the node's content store, behind containerd's
    /// back: the node's Shoal will then serve bytes that do not match their digest.
    pub fn corrupt_blob(&self, digest: &shoal_oci::Digest) {
        let len = std::fs::metadata(self.blob_path(digest)).map_or(0, |m| m.len());
        self.corrupt_blob_at(digest, len / 2);
    }

    /// Flips the byte at `mid` of a blob in the node's content store, behind containerd's back.
    pub fn corrupt_blob_at(&self, digest: &shoal_oci::Digest, mid: u64) {
        use std::io::{Read, Seek, SeekFrom, Write};
        let path = self.blob_path(digest);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(mid))
            .and_then(|_| f.read_exact(&mut b))
            .unwrap();
        b[0] ^= 0xff;
        f.seek(SeekFrom::Start(mid))
            .and_then(|_| f.write_all(&b))
            .unwrap();
    }
}

impl Node {
    /// Points this node's containerd at its local Shoal for the mirrored registries with
    /// `shoal configure` itself (the rig's `server = <registry>` entries are kept after it).
    pub fn configure_shoal(&self) {
        let out = std::process::Command::new(shoal_bin())
            .args(["configure", "--hosts-dir"])
            .arg(self.hosts_dir())
            .args([
                "--mirror",
                &format!("http://127.0.0.1:{MIRROR_PORT}"),
                "--registries",
                "docker.io,ghcr.io",
            ])
            .output()
            .unwrap_or_else(|e| panic!("run shoal configure: {e}"));
        assert!(
            out.status.success(),
            "shoal configure on {}: {}",
            self.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl<'a> DaemonBuilder<'a> {
    /// Bootstrap from another node's daemon.
    pub fn bootstrap(mut self, other: &Daemon) -> Self {
        self.args.push("--bootstrap".into());
        self.args
            .push(format!("static:/ip4/{}/tcp/{P2P_PORT}", other.ip));
        self
    }

    /// Use this `swarm.key` instead of the rig's shared one (a node of another cluster).
    pub fn psk_file(mut self, path: &std::path::Path) -> Self {
        self.psk = Some(path.to_owned());
        self
    }

    /// Start without any PSK (no `--p2p-psk-file`).
    pub fn without_psk(mut self) -> Self {
        self.psk = None;
        self
    }

    /// Any further flag(s).
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.args.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    /// Starts the daemon and waits until it has connected to containerd.
    pub fn start(self) -> Daemon {
        // On a real node the CRI has created `k8s.io` long before Shoal starts.
        let _ = self.node.ctr(&["namespaces", "create", "k8s.io"]);
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let psk = self.psk.as_ref().map(|p| p.display().to_string());
        if let Some(p) = &psk {
            args.extend_from_slice(&["--p2p-psk-file", p]);
        }
        let process = self.node.spawn(shoal_bin(), &args);
        if let Err(e) = process.wait_for_log("connected to containerd", Duration::from_secs(20)) {
            panic!("shoal daemon on {}: {e}", self.node.name());
        }
        Daemon {
            netns: self.node.netns().to_owned(),
            ip: self.node.ip(),
            admin_socket: self.node.dir().join("admin.sock"),
            process,
        }
    }
}

impl Daemon {
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// The daemon's admin socket (`<node dir>/admin.sock`).
    pub fn admin_socket(&self) -> &std::path::Path {
        &self.admin_socket
    }

    /// `shoal <args…> --admin-socket <this daemon's>` inside the node's namespace.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let bin = shoal_bin();
        let sock = self.admin_socket.display().to_string();
        let mut argv = vec![
            "netns",
            "exec",
            &self.netns,
            bin.to_str().expect("utf-8 path"),
        ];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--admin-socket", &sock]);
        cmd::output("ip", &argv).unwrap_or_else(|e| panic!("shoal {args:?}: {e}"))
    }

    pub fn ip(&self) -> std::net::Ipv4Addr {
        self.ip
    }

    /// The mirror URL containerd on this node uses (`http://127.0.0.1:5000`).
    pub fn local_mirror_url(&self) -> String {
        format!("http://127.0.0.1:{MIRROR_PORT}")
    }

    /// `curl` from inside the node's namespace; returns (HTTP status, body).
    pub fn http_get(&self, url: &str, headers: &[&str]) -> (u16, Vec<u8>) {
        let mut argv = vec!["ip", "netns", "exec", &self.netns, "curl", "-s", "-m", "30"];
        for h in headers {
            argv.push("-H");
            argv.push(h);
        }
        argv.extend_from_slice(&["-w", "\n%{http_code}", url]);
        let out = cmd::output(argv[0], &argv[1..]).unwrap_or_else(|e| panic!("curl: {e}"));
        let mut body = out.stdout;
        let split = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        let code = String::from_utf8_lossy(&body[split..])
            .trim()
            .parse()
            .unwrap_or(0);
        body.truncate(split);
        (code, body)
    }

    /// HEAD from inside the node's namespace; returns the HTTP status.
    pub fn http_head(&self, url: &str) -> u16 {
        let argv = [
            "netns",
            "exec",
            &self.netns,
            "curl",
            "-s",
            "-I",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ];
        let out = cmd::output("ip", &argv).unwrap_or_else(|e| panic!("curl: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// The mirror URL of a blob of `img`, as containerd on this node would ask for it.
    pub fn blob_url(&self, img: &crate::TestImage, digest: &shoal_oci::Digest) -> String {
        format!(
            "{}/v2/{}/blobs/{digest}?ns={}",
            self.local_mirror_url(),
            img.repository(),
            img.registry_host()
        )
    }

    /// Waits until this daemon's mirror answers 200 to a HEAD for `digest` (found on the DHT
    /// or held locally).
    pub fn wait_found(&self, img: &crate::TestImage, digest: &shoal_oci::Digest) {
        let url = self.blob_url(img, digest);
        let ok = cmd::wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            self.http_head(&url) == 200
        });
        assert!(
            ok,
            "{digest} not found from {}\n{}",
            self.ip,
            self.log_tail()
        );
    }

    /// The daemon's Prometheus exposition.
    pub fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{METRICS_PORT}/metrics");
        String::from_utf8_lossy(&self.http_get(&url, &[]).1).into_owned()
    }

    /// Sum of every sample of `name` whose labels contain all of `labels` (`source="peer"`).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        let url = format!("http://127.0.0.1:{METRICS_PORT}/readyz");
        let ok = cmd::wait_until(timeout, Duration::from_millis(100), || {
            self.http_get(&url, &[]).0 == 200
        });
        assert!(
            ok,
            "daemon at {} not ready within {timeout:?}\n{}",
            self.ip,
            self.log_tail()
        );
    }

    pub fn log_tail(&self) -> String {
        cmd::tail(self.process.log_path(), 60)
    }

    pub fn kill(&self) {
        self.process.kill();
    }
}

/// The usual cluster: every node of `rig` configured for its local Shoal, a daemon on each
/// (the first is everyone's bootstrap), all ready. Daemons are in node order.
pub fn shoal_cluster(rig: &crate::Rig) -> Vec<Daemon> {
    shoal_cluster_with(rig, &[])
}

/// [`shoal_cluster`] with `extra` daemon arguments on every node.
pub fn shoal_cluster_with(rig: &crate::Rig, extra: &[&str]) -> Vec<Daemon> {
    let mut daemons: Vec<Daemon> = Vec::new();
    for node in rig.nodes() {
        node.configure_shoal();
        let builder = node.shoal().args(extra);
        let daemon = match daemons.first() {
            Some(first) => builder.bootstrap(first).start(),
            None => builder.start(),
        };
        daemons.push(daemon);
    }
    for d in &daemons {
        d.wait_ready(Duration::from_secs(20));
    }
    daemons
}

/// Waits until every daemon holds a connection to every other one and knows its mirror port
/// (what the rollout election's arbiter choice assumes, see `shoal_mirror`'s `herd`).
pub fn wait_meshed(daemons: &[Daemon], timeout: Duration) {
    let others = daemons.len().saturating_sub(1);
    for d in daemons {
        let meshed = cmd::wait_until(timeout, Duration::from_millis(200), || {
            let out = d.cli(&["peers", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let known = v["peers"].as_array().map_or(0, |p| {
                p.iter()
                    .filter(|p| p["mirror"].as_str().is_some_and(|m| !m.is_empty()))
                    .count()
            });
            known >= others
        });
        assert!(
            meshed,
            "daemon at {} not connected to every other node\n{}",
            d.ip,
            d.log_tail()
        );
    }
}

/// Sum of the samples of `name` whose label set contains every entry of `labels`.
pub fn metric_sum(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_set) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name && labels.iter().all(|want| label_set.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn sums_matching_series_only() {
        let text = "# HELP x\nshoal_mirror_bytes_total{source=\"peer\"} 10\nshoal_mirror_bytes_total{source=\"local\"} 5\nshoal_peers 2\n";
        assert_eq!(
            metric_sum(text, "shoal_mirror_bytes_total", &["source=\"peer\""]),
            10.0
        );
        assert_eq!(metric_sum(text, "shoal_mirror_bytes_total", &[]), 15.0);
        assert_eq!(metric_sum(text, "shoal_peers", &[]), 2.0);
        assert_eq!(metric_sum(text, "missing", &[]), 0.0);
    }
}
