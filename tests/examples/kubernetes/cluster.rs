//! A real Kubernetes control plane and kubelets on the rig, for `scripts/test-kubernetes`.
//!
//! Node `n1`'s namespace holds etcd (on its loopback), kube-apiserver, kube-controller-manager
//! and kube-scheduler, like a kubeadm control-plane node; every node (n1 included) runs a kubelet
//! and kube-proxy next to its containerd. All traffic stays inside the rig: components talk over
//! node addresses from inside the namespaces, and the root namespace only runs `ip netns exec`.
//!
//! Per node, one extra mount namespace (held by a `sleep` process) is shared by containerd and
//! the kubelet: the volumes the kubelet mounts (Secrets, memory emptyDirs) must be visible to
//! containerd's runc, and `<rig>/node` there is bound to the node's own directory, so the chart
//! can be given one set of host paths (socket, content store, hosts dir) valid on every node.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_tests::{Node, Process, Rig};

/// The kube-apiserver's port on n1.
const API_PORT: u16 = 6443;
/// The Service range; its first address is the `kubernetes` Service (reached via kube-proxy).
const SERVICE_CIDR: &str = "10.96.0.0/24";
const API_SERVICE_IP: &str = "10.96.0.1";
/// Pod addresses of node `i` (1-based): `10.214.<rig index * 8 + i>.0/24`, behind a bridge in
/// the node's namespace; only the node itself routes to them.
fn pod_subnet(rig_subnet: &str, i: usize) -> String {
    let third: usize = rig_subnet
        .split('.')
        .nth(2)
        .and_then(|s| s.parse().ok())
        .expect("rig subnet 10.213.<n>.0/24");
    format!("10.214.{}.0/24", (third * 8 + i) % 256)
}

/// Where the binaries and images come from (set by scripts/test-kubernetes).
pub struct Inputs {
    pub k8s_bin: PathBuf,
    pub pause_image: String,
}

/// Processes of one node, stopped in reverse start order.
struct NodeProcs {
    holder: Process,
    containerd: Process,
    kube_proxy: Process,
    kubelet: Process,
}

pub struct Cluster<'a> {
    rig: &'a Rig,
    pub dir: PathBuf,
    bin: PathBuf,
    pub admin_kubeconfig: PathBuf,
    control: Vec<Process>,
    nodes: Vec<NodeProcs>,
}

/// `<rig>/node`: in each node's mount namespace, that node's own directory.
pub fn node_view(rig: &Rig) -> PathBuf {
    rig.dir().join("node")
}

fn must(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Poll `f` every 500 ms until it returns `Ok`, or fail after `limit` with its last error.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if started.elapsed() > limit => panic!("{what}: not within {limit:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

impl<'a> Cluster<'a> {
    /// Certificates, tokens and kubeconfigs under `<rig>/k8s`; nothing is started yet.
    pub fn prepare(rig: &'a Rig, inputs: &Inputs) -> Cluster<'a> {
        let dir = rig.dir().join("k8s");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let api_ip = rig.node(0).ip().to_string();
        // A CA, the apiserver's serving certificate (node address, loopback and the Service
        // address, which in-cluster clients use), and the service-account signing key.
        let o = |args: &[&str]| must(Command::new("openssl").current_dir(&dir).args(args));
        o(&["genrsa", "-out", "ca.key", "2048"]);
        o(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-days",
            "2",
            "-subj",
            "/CN=shoal-rig-ca",
            "-out",
            "ca.crt",
        ]);
        o(&["genrsa", "-out", "apiserver.key", "2048"]);
        o(&[
            "req",
            "-new",
            "-key",
            "apiserver.key",
            "-subj",
            "/CN=kube-apiserver",
            "-out",
            "apiserver.csr",
        ]);
        write(
            &dir.join("san.ext"),
            &format!(
                "subjectAltName=IP:{api_ip},IP:127.0.0.1,IP:{API_SERVICE_IP},DNS:kubernetes,\
                 DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n\
                 extendedKeyUsage=serverAuth\n"
            ),
        );
        o(&[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "apiserver.crt",
        ]);
        o(&["genrsa", "-out", "sa.key", "2048"]);
        o(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
        // Static tokens: the admin (system:masters), the two controllers, and one per kubelet
        // (system:node:<name>, checked by the Node authorizer).
        let mut tokens = String::new();
        let mut kubeconfig = |name: &str, user: &str, groups: &str| {
            let token = format!("{name}-{}", rand_hex());
            tokens.push_str(&format!("{token},{user},{user},\"{groups}\"\n"));
            let path = dir.join(format!("{name}.kubeconfig"));
            write(
                &path,
                &format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: rig\n  cluster:\n    \
                     server: https://{api_ip}:{API_PORT}\n    certificate-authority: {}\n\
                     users:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: rig\n  \
                     context: {{cluster: rig, user: {name}}}\ncurrent-context: rig\n",
                    s(&dir.join("ca.crt"))
                ),
            );
            path
        };
        let admin_kubeconfig = kubeconfig("admin", "admin", "system:masters");
        kubeconfig("controller-manager", "system:kube-controller-manager", "");
        kubeconfig("scheduler", "system:kube-scheduler", "");
        kubeconfig("kube-proxy", "system:kube-proxy", "system:node-proxier");
        for n in rig.nodes() {
            kubeconfig(
                &format!("kubelet-{}", n.name()),
                &format!("system:node:{}", n.name()),
                "system:nodes",
            );
        }
        write(&dir.join("tokens.csv"), &tokens);
        let _ = inputs;
        Cluster {
            rig,
            bin: inputs.k8s_bin.clone(),
            dir,
            admin_kubeconfig,
            control: Vec::new(),
            nodes: Vec::new(),
        }
    }

    fn bin(&self, name: &str) -> String {
        s(&self.bin.join(name)).to_owned()
    }

    fn kubeconfig(&self, name: &str) -> String {
        s(&self.dir.join(format!("{name}.kubeconfig"))).to_owned()
    }

    /// etcd, then the apiserver (waits for `/readyz`), then the controller-manager and scheduler,
    /// all in n1's namespace.
    pub fn start_control_plane(&mut self) {
        let n1 = self.rig.node(0);
        let d = |f: &str| s(&self.dir.join(f)).to_owned();
        let etcd_dir = d("etcd");
        self.control.push(n1.spawn(
            "etcd",
            &[
                "--name=rig",
                &format!("--data-dir={etcd_dir}"),
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=rig=http://127.0.0.1:2380",
                "--log-level=warn",
            ],
        ));
        let api_ip = n1.ip().to_string();
        let apiserver = n1.spawn(
            self.bin("kube-apiserver"),
            &[
                "--etcd-servers=http://127.0.0.1:2379",
                "--bind-address=0.0.0.0",
                &format!("--advertise-address={api_ip}"),
                &format!("--secure-port={API_PORT}"),
                &format!("--tls-cert-file={}", d("apiserver.crt")),
                &format!("--tls-private-key-file={}", d("apiserver.key")),
                &format!("--token-auth-file={}", d("tokens.csv")),
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                &format!("--service-account-key-file={}", d("sa.pub")),
                &format!("--service-account-signing-key-file={}", d("sa.key")),
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                &format!("--cert-dir={}", d("apiserver-certs")),
            ],
        );
        self.control.push(apiserver);
        wait_for("kube-apiserver /readyz", Duration::from_secs(120), || {
            self.kubectl(&["get", "--raw=/readyz"])
        });
        let cm = n1.spawn(
            self.bin("kube-controller-manager"),
            &[
                &format!("--kubeconfig={}", self.kubeconfig("controller-manager")),
                &format!("--service-account-private-key-file={}", d("sa.key")),
                &format!("--root-ca-file={}", d("ca.crt")),
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--bind-address=127.0.0.1",
            ],
        );
        self.control.push(cm);
        let sched = n1.spawn(
            self.bin("kube-scheduler"),
            &[
                &format!("--kubeconfig={}", self.kubeconfig("scheduler")),
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
            ],
        );
        self.control.push(sched);
    }

    /// Per node: the shared mount namespace, containerd (restarted in it, with CNI and the
    /// offline pause image), kube-proxy and the kubelet.
    pub fn start_nodes(&mut self, inputs: &Inputs) {
        let view = node_view(self.rig);
        fs::create_dir_all(&view).unwrap_or_else(|e| panic!("create {}: {e}", view.display()));
        let me = std::process::id();
        for (i, node) in self.rig.nodes().iter().enumerate() {
            let nd = node.dir().to_path_buf();
            // The holder: a mount namespace copied from the root one (not `ip netns exec`'s,
            // which remounts /sys and loses the cgroup hierarchies), with <rig>/node bound to
            // this node's directory. Slave propagation: nothing mounted here leaks out.
            let script = format!("mount --bind {} {} && exec sleep 86400", s(&nd), s(&view));
            let holder = node.spawn(
                "nsenter",
                &[
                    &format!("--mount=/proc/{me}/ns/mnt"),
                    "--",
                    "unshare",
                    "--mount",
                    "--propagation",
                    "slave",
                    "sh",
                    "-c",
                    &script,
                ],
            );
            let mnt = format!("--mount=/proc/{}/ns/mnt", holder.pid());
            wait_for("node mount namespace", Duration::from_secs(10), || {
                let ours = fs::read_link(format!("/proc/{}/ns/mnt", holder.pid()))
                    .map_err(|e| e.to_string())?;
                let root =
                    fs::read_link(format!("/proc/{me}/ns/mnt")).map_err(|e| e.to_string())?;
                let cmdline = fs::read_to_string(format!("/proc/{}/cmdline", holder.pid()))
                    .map_err(|e| e.to_string())?;
                if ours != root && cmdline.starts_with("sleep") {
                    Ok(())
                } else {
                    Err("not yet".into())
                }
            });

            // containerd again, in that namespace, with the node's CNI config and pause image.
            node.kill_containerd();
            let cfg = nd.join("config.toml");
            let mut c = fs::read_to_string(&cfg).expect("rig containerd config");
            let cni_conf = nd.join("cni");
            fs::create_dir_all(&cni_conf).expect("cni dir");
            for (from, to) in [
                (
                    "      bin_dir = \"/opt/cni/bin\"".to_owned(),
                    "      bin_dir = \"/usr/lib/cni\"".to_owned(),
                ),
                (
                    "      conf_dir = \"/etc/cni/net.d\"".to_owned(),
                    format!("      conf_dir = \"{}\"", s(&cni_conf)),
                ),
            ] {
                assert!(c.contains(&from), "containerd config lacks {from:?}");
                c = c.replace(&from, &to);
            }
            // This machine's root lacks CAP_SYS_RESOURCE, so runc cannot set the negative
            // oom_score_adj the kubelet asks for (-998 for the sandbox of a node-critical pod):
            // clamp it to containerd's own, as for rootless containerd. Not needed on real nodes.
            let restrict = "    restrict_oom_score_adj = false";
            assert!(c.contains(restrict), "containerd config lacks {restrict:?}");
            c = c.replace(restrict, "    restrict_oom_score_adj = true");
            let sandbox = c
                .lines()
                .find(|l| l.trim_start().starts_with("sandbox_image = "))
                .expect("containerd config has sandbox_image")
                .to_owned();
            c = c.replace(
                &sandbox,
                &format!("    sandbox_image = \"{}\"", inputs.pause_image),
            );
            // config_path as the pods see it (the same directory), so `shoal doctor` finds
            // containerd reading the hosts directory the chart was given.
            let rig_hosts = format!("config_path = \"{}\"", s(&node.hosts_dir()));
            assert!(
                c.contains(&rig_hosts),
                "containerd config lacks {rig_hosts:?}"
            );
            c = c.replace(
                &rig_hosts,
                &format!("config_path = \"{}\"", s(&view.join("certs.d"))),
            );
            write(&cfg, &c);
            let subnet = pod_subnet(self.rig.subnet(), i + 1);
            write(
                &cni_conf.join("10-rig.conflist"),
                &format!(
                    r#"{{"cniVersion": "0.4.0", "name": "rig", "plugins": [
  {{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
    "ipam": {{"type": "host-local", "dataDir": "{}", "ranges": [[{{"subnet": "{subnet}"}}]],
             "routes": [{{"dst": "0.0.0.0/0"}}]}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
]}}
"#,
                    s(&nd.join("cni-ipam"))
                ),
            );
            let containerd = node.spawn("nsenter", &[&mnt, "--", "containerd", "-c", s(&cfg)]);
            wait_for(
                "containerd in the node mount namespace",
                Duration::from_secs(30),
                || {
                    let out = node.ctr(&["version"]);
                    if out.status.success() {
                        Ok(())
                    } else {
                        Err(String::from_utf8_lossy(&out.stderr).into_owned())
                    }
                },
            );

            let kube_proxy = node.spawn(
                self.bin("kube-proxy"),
                &[
                    &format!("--kubeconfig={}", self.kubeconfig("kube-proxy")),
                    &format!("--hostname-override={}", node.name()),
                    &format!("--bind-address={}", node.ip()),
                    "--proxy-mode=iptables",
                    "--conntrack-max-per-core=0",
                    "--metrics-bind-address=127.0.0.1:10249",
                    "--healthz-bind-address=127.0.0.1:10256",
                ],
            );

            let kubelet_dir = nd.join("kubelet");
            fs::create_dir_all(&kubelet_dir).expect("kubelet dir");
            write(&nd.join("resolv.conf"), "nameserver 127.0.0.1\n");
            let config = nd.join("kubelet.yaml");
            write(
                &config,
                &format!(
                    "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
                     address: {ip}\nport: 10250\nreadOnlyPort: 0\nhealthzBindAddress: 127.0.0.1\n\
                     healthzPort: 10248\nfailCgroupV1: false\ncgroupDriver: cgroupfs\n\
                     cgroupsPerQOS: false\nenforceNodeAllocatable: []\nfailSwapOn: false\n\
                     containerRuntimeEndpoint: unix://{sock}\npodLogsDir: {logs}\n\
                     resolvConf: {resolv}\nauthentication:\n  anonymous: {{enabled: true}}\n  \
                     webhook: {{enabled: false}}\nauthorization: {{mode: AlwaysAllow}}\n\
                     imageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 99\n\
                     serializeImagePulls: false\nevictionHard: {{\"memory.available\": \"1Mi\", \
                     \"nodefs.available\": \"1%\", \"imagefs.available\": \"1%\"}}\n\
                     clusterDomain: cluster.local\n",
                    ip = node.ip(),
                    sock = s(&node.containerd_socket()),
                    logs = s(&nd.join("pod-logs")),
                    resolv = s(&nd.join("resolv.conf")),
                ),
            );
            let kubelet = node.spawn(
                "nsenter",
                &[
                    &mnt,
                    "--",
                    &self.bin("kubelet"),
                    &format!("--config={}", s(&config)),
                    &format!(
                        "--kubeconfig={}",
                        self.kubeconfig(&format!("kubelet-{}", node.name()))
                    ),
                    &format!("--root-dir={}", s(&kubelet_dir)),
                    &format!("--hostname-override={}", node.name()),
                    &format!("--node-ip={}", node.ip()),
                    &format!("--cert-dir={}", s(&nd.join("kubelet-pki"))),
                ],
            );
            self.nodes.push(NodeProcs {
                holder,
                containerd,
                kube_proxy,
                kubelet,
            });
        }
    }

    /// `kubectl --kubeconfig <admin> <args…>` inside n1's namespace.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let kubeconfig = s(&self.admin_kubeconfig).to_owned();
        let kubectl = self.bin("kubectl");
        let mut argv = vec![kubectl.as_str(), "--kubeconfig", &kubeconfig];
        argv.extend_from_slice(args);
        run(self.rig.node(0), &argv)
    }

    /// Tail of every Kubernetes process log, for failures.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        let all = self.control.iter().chain(
            self.nodes
                .iter()
                .flat_map(|n| [&n.containerd, &n.kube_proxy, &n.kubelet]),
        );
        for p in all {
            out.push_str(&format!("== {}\n", p.log_path().display()));
            out.push_str(&shoal_tests::tail(p.log_path(), lines));
        }
        out
    }

    /// Stop every process by PID, nodes first (kubelet, kube-proxy, containerd, the mount
    /// namespace holder), then the control plane in reverse start order.
    pub fn stop(mut self) {
        for n in self.nodes.drain(..) {
            n.kubelet.kill();
            n.kube_proxy.kill();
            n.containerd.kill();
            n.holder.kill();
        }
        while let Some(p) = self.control.pop() {
            p.kill();
        }
    }
}

/// `ip netns exec <node> argv…`: stdout on success, else the command and its output.
pub fn run(node: &Node, argv: &[&str]) -> Result<String, String> {
    let out = node.exec(argv);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} (on {}): {}\n{}{}",
            argv.join(" "),
            node.name(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// 16 random hex digits (tokens).
fn rand_hex() -> String {
    let mut b = [0u8; 8];
    use std::io::Read;
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    hex::encode(b)
}
