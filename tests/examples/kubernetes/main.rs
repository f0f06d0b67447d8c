//! `scripts/test-kubernetes`: Shoal's Helm chart on a real Kubernetes built from source, on three
//! rig nodes (containerd, kubelet and kube-proxy each in the node's network namespace; etcd and
//! the control plane in n1's). Installs the chart with the offline-built image, waits for the
//! DaemonSet on every node, runs a Deployment from the rig registry on one node, stops the
//! registry, scales to the other nodes, shows where their layers came from (`shoal explain`,
//! `shoal doctor` via `kubectl exec`), uninstalls, and checks every node's hosts directory is
//! back to its bytes from before the install. Exits non-zero on the first failed step.
//!
//! Inputs (environment, set by the script): `SHOAL_K8S_BIN` (kube-apiserver, …, kubectl),
//! `SHOAL_K8S_HELM`, `SHOAL_K8S_CHART`, `SHOAL_K8S_ARTIFACTS` (OCI archives `*.oci.tar` to
//! import on every node, and the workload's OCI layout `app/`), `SHOAL_K8S_SHOAL_IMAGE`,
//! `SHOAL_K8S_PAUSE_IMAGE`, `SHOAL_K8S_KUBECTL_IMAGE`.

mod cluster;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster::{Cluster, Inputs, node_view, run, wait_for};
use shoal_tests::{Node, Rig};

const APP_IMAGE: &str = "docker.io/shoal-k8s/app:1";
const NS: &str = "shoal";

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set (run scripts/test-kubernetes)"))
}

/// Every file under `dir` with its bytes (relative path → content).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("under dir").to_path_buf();
                out.insert(rel, fs::read(&p).expect("read file"));
            }
        }
    }
    out
}

fn step(started: Instant, what: &str) {
    println!("\n== [{:>6.1}s] {what}", started.elapsed().as_secs_f64());
}

/// Push the workload layout to the rig registry, from inside the registry's namespace.
fn push_app(rig: &Rig, layout: &Path) {
    let reg = rig.registry();
    let dest = format!("docker://{}/shoal-k8s/app:1", reg.addr());
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            reg.netns(),
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
        ])
        .arg("--dest-tls-verify=false")
        .arg(format!("oci:{}:1", layout.display()))
        .arg(&dest)
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "push {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pods_on(c: &Cluster, selector: &str) -> Vec<(String, String, String)> {
    let out = c
        .kubectl(&[
            "get", "pods", "-A", "-l", selector, "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    out.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.into(), it.next()?.into(), it.next()?.into()))
        })
        .collect()
}

fn main() {
    let started = Instant::now();
    let artifacts = PathBuf::from(env("SHOAL_K8S_ARTIFACTS"));
    let inputs = Inputs {
        k8s_bin: PathBuf::from(env("SHOAL_K8S_BIN")),
        pause_image: env("SHOAL_K8S_PAUSE_IMAGE"),
    };
    let helm = env("SHOAL_K8S_HELM");
    let chart = env("SHOAL_K8S_CHART");
    let shoal_image = env("SHOAL_K8S_SHOAL_IMAGE");
    let kubectl_image = env("SHOAL_K8S_KUBECTL_IMAGE");

    let rig = Rig::builder().nodes(3).start();
    step(
        started,
        &format!(
            "rig up: registry {}, nodes {}",
            rig.registry().addr(),
            rig.nodes()
                .iter()
                .map(|n| format!("{}={}", n.name(), n.ip()))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    push_app(&rig, &artifacts.join("app"));

    // The kubelet links every container log into /var/log/containers (a fixed path).
    let log_links = Path::new("/var/log/containers");
    let had_log_links = log_links.exists();
    let mut cluster = Cluster::prepare(&rig, &inputs);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scenario(
            &rig,
            &mut cluster,
            &inputs,
            &artifacts,
            &helm,
            &chart,
            &shoal_image,
            &kubectl_image,
            started,
        )
    }));
    if let Err(e) = &result {
        eprintln!(
            "\n== FAILED: {}",
            e.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("panic")
        );
        eprintln!("{}", cluster.logs_tail(15));
        // Leave no pod behind: delete everything the kubelets run, then stop.
        let _ = cluster.kubectl(&[
            "delete",
            "deployment,daemonset,job",
            "--all",
            "-A",
            "--wait=true",
            "--timeout=60s",
        ]);
        let _ = cluster.kubectl(&[
            "delete",
            "pods",
            "--all",
            "-A",
            "--grace-period=1",
            "--timeout=60s",
        ]);
        wait_sandboxes_gone(&rig);
    }
    cluster.stop();
    remove_log_links(log_links, rig.dir(), had_log_links);
    // The rig's teardown (namespaces, route, directory) runs on drop: before exiting.
    drop(rig);
    step(started, "stopped");
    if result.is_err() {
        std::process::exit(1);
    }
    println!(
        "\ntest-kubernetes: PASS in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Remove the kubelets' links into the rig's directory, and the directory if they made it.
fn remove_log_links(dir: &Path, rig_dir: &Path, existed: bool) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if fs::read_link(e.path()).is_ok_and(|t| t.starts_with(rig_dir)) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    if !existed {
        let _ = fs::remove_dir(dir);
    }
}

/// Wait (bounded) until no node's containerd runs a pod sandbox, so no shim outlives the rig.
fn wait_sandboxes_gone(rig: &Rig) {
    for node in rig.nodes() {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = node.ctr(&["tasks", "ls", "-q"]);
            let left = String::from_utf8_lossy(&out.stdout).lines().count();
            if left == 0 || Instant::now() > deadline {
                if left > 0 {
                    eprintln!("{}: {left} task(s) still running at teardown", node.name());
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn import_images(node: &Node, artifacts: &Path) {
    for e in fs::read_dir(artifacts).expect("artifacts dir") {
        let p = e.expect("entry").path();
        if p.to_string_lossy().ends_with(".oci.tar") {
            let out = node.ctr(&["images", "import", p.to_str().expect("utf-8")]);
            assert!(
                out.status.success(),
                "import {} on {}: {}",
                p.display(),
                node.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn scenario(
    rig: &Rig,
    cluster: &mut Cluster,
    inputs: &Inputs,
    artifacts: &Path,
    helm: &str,
    chart: &str,
    shoal_image: &str,
    kubectl_image: &str,
    started: Instant,
) {
    step(
        started,
        "images built offline: imported into every node's containerd",
    );
    let cluster_only = std::env::var_os("SHOAL_K8S_CLUSTER_ONLY").is_some();
    for node in rig.nodes() {
        import_images(node, artifacts);
        let imgs = node.images();
        for want in [shoal_image, inputs.pause_image.as_str(), kubectl_image] {
            if cluster_only && want == shoal_image {
                continue;
            }
            assert!(
                imgs.iter().any(|i| i == want),
                "{}: {want} not imported: {imgs:?}",
                node.name()
            );
        }
    }
    println!("{}", rig.node(0).images().join("\n"));

    step(started, "etcd and control plane (n1's namespace)");
    cluster.start_control_plane();
    step(started, "kubelet, kube-proxy and containerd on every node");
    cluster.start_nodes(inputs);
    wait_for("every node Ready", Duration::from_secs(180), || {
        cluster.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "node",
            "--all",
            "--timeout=5s",
        ])?;
        let n = cluster
            .kubectl(&["get", "nodes", "-o", "name"])?
            .lines()
            .count();
        if n == rig.nodes().len() {
            Ok(())
        } else {
            Err(format!("{n} nodes registered"))
        }
    });
    println!(
        "{}",
        cluster
            .kubectl(&["get", "nodes", "-o", "wide"])
            .unwrap_or_default()
    );
    if std::env::var_os("SHOAL_K8S_CLUSTER_ONLY").is_some() {
        // Debugging: keep the cluster up this many seconds (SHOAL_K8S_HOLD).
        let hold = std::env::var("SHOAL_K8S_HOLD")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        std::thread::sleep(Duration::from_secs(hold));
        return;
    }

    // The hosts directories as the nodes had them before Shoal.
    let before: Vec<_> = rig
        .nodes()
        .iter()
        .map(|n| snapshot(&n.hosts_dir()))
        .collect();

    step(started, "helm install deploy/helm/shoal");
    let view = node_view(rig);
    let v = |p: &str| format!("{}/{p}", view.display());
    let (repo, tag) = shoal_image.rsplit_once(':').expect("image name:tag");
    let bootstrap = rig
        .nodes()
        .iter()
        .map(|n| format!("static:/ip4/{}/tcp/29501", n.ip()))
        .collect::<Vec<_>>()
        .join(",");
    let sets = [
        format!("image.repository={repo}"),
        format!("image.tag={tag}"),
        "image.pullPolicy=Never".into(),
        "shoal.mirroredRegistries={docker.io}".into(),
        format!("shoal.containerdSock={}", v("containerd.sock")),
        format!(
            "shoal.containerdContentPath={}",
            v("root/io.containerd.content.v1.content")
        ),
        format!("shoal.containerdRegistryConfigPath={}", v("certs.d")),
        format!("shoal.dataDir={}", v("shoal")),
        format!("shoal.containerdConfigPath={}", v("config.toml")),
        format!("shoal.extraBootstrap={{{bootstrap}}}"),
        format!("cleanup.pauseImage={}", inputs.pause_image),
        format!("cleanup.kubectlImage={kubectl_image}"),
        "shoal.logLevel=info".into(),
    ];
    let kubeconfig = cluster.admin_kubeconfig.display().to_string();
    let mut args = vec![
        helm,
        "--kubeconfig",
        &kubeconfig,
        "install",
        "shoal",
        chart,
        "--namespace",
        NS,
        "--create-namespace",
        "--wait",
        "--timeout=120s",
    ];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let t = Instant::now();
    let out = run(rig.node(0), &args).unwrap_or_else(|e| {
        let mut diag = cluster
            .kubectl(&["get", "pods", "-A", "-o", "wide"])
            .unwrap_or_default();
        for (pod, _, _) in pods_on(cluster, "app.kubernetes.io/name=shoal") {
            for c in ["configure", "shoal"] {
                for prev in ["--previous=false", "--previous=true"] {
                    let logs =
                        cluster.kubectl(&["logs", "-n", NS, &pod, "-c", c, prev, "--tail=20"]);
                    diag.push_str(&format!(
                        "-- {pod} {c} {prev}\n{}\n",
                        logs.unwrap_or_else(|e| e)
                    ));
                }
            }
        }
        panic!("{e}\n{diag}")
    });
    println!("{out}");
    cluster
        .kubectl(&[
            "rollout",
            "status",
            "daemonset/shoal",
            "-n",
            NS,
            "--timeout=120s",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    println!("DaemonSet Ready on every node in {:.1?}", t.elapsed());
    println!(
        "{}",
        cluster
            .kubectl(&["get", "daemonset,pods", "-n", NS, "-o", "wide"])
            .unwrap_or_default()
    );
    // Installed without p2p.psk.existingSecret: the chart made the cluster key itself.
    let key = cluster
        .kubectl(&[
            "get",
            "secret",
            "shoal-psk",
            "-n",
            NS,
            "-o",
            "jsonpath={.data.swarm\\.key}",
        ])
        .unwrap_or_else(|e| panic!("the chart did not create the PSK Secret: {e}"));
    assert!(
        key.len() > 100,
        "PSK Secret shoal-psk has no swarm.key: {key:?}"
    );
    println!(
        "PSK Secret shoal-psk created by the chart (swarm.key, {} base64 bytes)",
        key.len()
    );
    let shoal_pods = pods_on(cluster, "app.kubernetes.io/name=shoal");
    assert_eq!(
        shoal_pods.len(),
        rig.nodes().len(),
        "one Shoal pod per node: {shoal_pods:?}"
    );
    for n in rig.nodes() {
        let hosts =
            fs::read_to_string(n.hosts_dir().join("docker.io/hosts.toml")).unwrap_or_default();
        assert!(
            hosts.contains("127.0.0.1:29500"),
            "{}: docker.io/hosts.toml not pointed at Shoal:\n{hosts}",
            n.name()
        );
    }

    step(started, "Deployment from the rig registry on one node");
    let deployment = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: app, namespace: default}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: app}}}}
  template:
    metadata: {{labels: {{app: app}}}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {{matchLabels: {{app: app}}}}
              topologyKey: kubernetes.io/hostname
      containers:
        - name: app
          image: {APP_IMAGE}
          imagePullPolicy: IfNotPresent
"#
    );
    let manifest = cluster.dir.join("app.yaml");
    fs::write(&manifest, deployment).expect("write app.yaml");
    let t = Instant::now();
    cluster
        .kubectl(&["apply", "-f", manifest.to_str().expect("utf-8")])
        .unwrap_or_else(|e| panic!("{e}"));
    cluster
        .kubectl(&["rollout", "status", "deployment/app", "--timeout=120s"])
        .unwrap_or_else(|e| panic!("{e}"));
    let first = pods_on(cluster, "app=app");
    println!(
        "first pod (pulled from the registry) in {:.1?}: {first:?}",
        t.elapsed()
    );
    let first_node = first[0].1.clone();

    step(
        started,
        "registry stopped; Deployment scaled to the other nodes",
    );
    rig.registry().stop();
    let t = Instant::now();
    cluster
        .kubectl(&[
            "scale",
            "deployment/app",
            &format!("--replicas={}", rig.nodes().len()),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    cluster
        .kubectl(&["rollout", "status", "deployment/app", "--timeout=120s"])
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}",
                cluster
                    .kubectl(&["describe", "pods", "-l", "app=app"])
                    .unwrap_or_default()
            )
        });
    let pods = pods_on(cluster, "app=app");
    println!(
        "{} pods Running with the registry stopped, in {:.1?}:",
        pods.len(),
        t.elapsed()
    );
    println!(
        "{}",
        cluster
            .kubectl(&["get", "pods", "-l", "app=app", "-o", "wide"])
            .unwrap_or_default()
    );
    assert!(pods.iter().all(|p| p.2 == "Running"), "{pods:?}");

    step(
        started,
        "where the layers came from: shoal explain / doctor in the Shoal pods",
    );
    for (pod, node, _) in &shoal_pods {
        if *node == first_node {
            continue;
        }
        let explain = cluster
            .kubectl(&[
                "exec", "-n", NS, pod, "-c", "shoal", "--", "shoal", "explain", APP_IMAGE,
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        println!("-- {node} ({pod}): shoal explain {APP_IMAGE}\n{explain}");
        assert!(
            explain.contains("peer"),
            "{node}: no blob served by a peer:\n{explain}"
        );
        let json = cluster
            .kubectl(&[
                "exec", "-n", NS, pod, "-c", "shoal", "--", "shoal", "explain", "--json", APP_IMAGE,
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        let v: serde_json::Value =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("explain --json: {e}: {json}"));
        let blobs = v["blobs"].as_array().cloned().unwrap_or_default();
        let layers: Vec<_> = blobs.iter().filter(|b| b["role"] == "layer").collect();
        assert!(!layers.is_empty(), "{node}: explain lists no layer: {json}");
        for b in &layers {
            let reqs = b["requests"].as_array().cloned().unwrap_or_default();
            assert!(
                reqs.iter()
                    .any(|r| r["source"].as_str().is_some_and(|s| s.contains("peer"))),
                "{node}: layer {} not served by a peer: {b}",
                b["key"]
            );
        }
        match cluster.kubectl(&[
            "exec", "-n", NS, pod, "-c", "shoal", "--", "shoal", "doctor",
        ]) {
            Ok(d) => println!("-- {node}: shoal doctor\n{d}"),
            Err(e) => panic!("{node}: shoal doctor reported failures\n{e}"),
        }
    }

    step(started, "helm uninstall");
    cluster
        .kubectl(&["delete", "deployment/app", "--wait=true", "--timeout=60s"])
        .unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let out = run(
        rig.node(0),
        &[
            helm,
            "--kubeconfig",
            &kubeconfig,
            "uninstall",
            "shoal",
            "--namespace",
            NS,
            "--wait",
            "--timeout=4m",
        ],
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            cluster
                .kubectl(&["get", "all", "-n", NS, "-o", "wide"])
                .unwrap_or_default()
        )
    });
    println!("{out}helm uninstall took {:.1?}", t.elapsed());
    for (n, want) in rig.nodes().iter().zip(&before) {
        let got = snapshot(&n.hosts_dir());
        assert!(
            got == *want,
            "{}: hosts dir differs after uninstall: {:?} vs {:?}",
            n.name(),
            got.keys(),
            want.keys()
        );
        println!(
            "{}: hosts directory restored byte for byte ({} files)",
            n.name(),
            got.len()
        );
    }
    wait_for("no pod left", Duration::from_secs(90), || {
        let left = cluster.kubectl(&["get", "pods", "-A", "-o", "name"])?;
        if left.trim().is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    });
    wait_sandboxes_gone(rig);
}
