//! The node-level debugging CLI against real daemons: `status`, `peers`, `find`, `explain` after
//! a peer-to-peer pull, and `doctor` on a healthy node (all PASS) and with each finding provoked
//! by a fixture. Every command is run with `--json` and its output parsed.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{Daemon, Node, Process, Rig, TestImage, shoal_bin};

pub(crate) fn configure(node: &Node) {
    let out = std::process::Command::new(shoal_bin())
        .args(["configure", "--hosts-dir"])
        .arg(node.hosts_dir())
        .args([
            "--mirror",
            "http://127.0.0.1:5000",
            "--registries",
            "docker.io,ghcr.io",
        ])
        .output()
        .expect("run shoal configure");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json(out: &Output, what: &str) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e})\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn ok_json(d: &Daemon, args: &[&str]) -> Value {
    let out = d.cli(args);
    assert!(
        out.status.success(),
        "shoal {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_tail()
    );
    json(&out, &format!("{args:?}"))
}

fn try_json(d: &Daemon, args: &[&str]) -> Option<Value> {
    let out = d.cli(args);
    out.status
        .success()
        .then(|| json(&out, &format!("{args:?}")))
}

fn table(d: &Daemon, args: &[&str]) -> String {
    let out = d.cli(args);
    assert!(
        out.status.success(),
        "shoal {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !text.contains('\x1b'),
        "colour codes when stdout is not a TTY:\n{text}"
    );
    eprintln!("$ shoal {}\n{text}", args.join(" "));
    text
}

/// Holder peer ids of every blob in a `find --json` answer.
fn holders(find: &Value) -> Vec<(String, Vec<String>)> {
    find["blobs"]
        .as_array()
        .expect("blobs")
        .iter()
        .map(|b| {
            let ids = b["holders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["peer_id"].as_str().unwrap().to_owned())
                .collect();
            (b["digest"].as_str().unwrap().to_owned(), ids)
        })
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn status_peers_find_and_explain_after_a_peer_to_peer_pull() {
    let rig = Rig::builder().nodes(2).start();
    let img = TestImage::small();
    rig.registry().push(&img);
    for n in rig.nodes() {
        configure(n);
    }
    let d1 = rig.node(0).shoal().start();
    let d2 = rig.node(1).shoal().bootstrap(&d1).start();
    d1.wait_ready(Duration::from_secs(20));
    d2.wait_ready(Duration::from_secs(20));

    let s1 = ok_json(&d1, &["status", "--json"]);
    let id1 = s1["peer_id"].as_str().unwrap().to_owned();
    let s2 = ok_json(&d2, &["status", "--json"]);
    let id2 = s2["peer_id"].as_str().unwrap().to_owned();
    assert_ne!(id1, id2);
    assert_eq!(s2["ready"], true, "{s2}");
    assert_eq!(s2["containerd"]["connected"], true);
    assert_eq!(
        s2["containerd"]["version"],
        rig.node(1).containerd_version().as_str(),
        "{s2}"
    );
    assert!(s2["uptime_ms"].as_u64().is_some());
    assert_eq!(s2["allowlist"], serde_json::json!(["docker.io", "ghcr.io"]));
    assert!(
        s2["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer_id"] == id1.as_str())
    );
    assert!(table(&d2, &["status"]).contains(&format!("peer id:     {id2}")));

    let peers = ok_json(&d2, &["peers", "--json"]);
    let p = &peers["peers"][0];
    assert_eq!(p["peer_id"], id1.as_str());
    assert!(
        p["addr"].as_str().unwrap().contains(&d1.ip().to_string()),
        "{p}"
    );
    assert!(p["connected_for_ms"].as_u64().is_some());
    assert!(table(&d2, &["peers"]).contains(&id1));

    // Node 1 pulls (a miss: the registry serves it) and advertises; node 2 finds it on node 1.
    rig.node(0).pull(img.reference()).unwrap();
    wait_until(
        "node 1 to be found as holder of every blob",
        Duration::from_secs(30),
        || {
            // Fails (NotFound) until some node advertises the image: keep polling.
            let Some(f) = try_json(&d2, &["find", img.reference(), "--json", "--timeout", "2s"])
            else {
                return false;
            };
            let h = holders(&f);
            h.len() == img.blobs().len() && h.iter().all(|(_, ids)| ids.contains(&id1))
        },
    );

    // Node 2 pulls with the registry stopped: every blob must come from node 1.
    rig.registry().stop();
    rig.node(1).pull(img.reference()).unwrap();

    let ex = ok_json(&d2, &["explain", img.reference(), "--json"]);
    eprintln!(
        "$ shoal status --json\n{s2:#}\n$ shoal peers --json\n{peers:#}\n$ shoal explain --json\n{ex:#}"
    );
    assert_eq!(ex["kind"], "image");
    let rows = ex["blobs"].as_array().unwrap();
    for (digest, media_type, size) in img.blobs() {
        let row = rows
            .iter()
            .find(|r| r["key"] == digest.to_string().as_str())
            .unwrap_or_else(|| panic!("{digest} missing from explain: {ex}"));
        let served: Vec<&Value> = row["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|q| q["source"] == "peer")
            .collect();
        assert!(
            served
                .iter()
                .any(|q| q["peer_id"] == id1.as_str() && q["bytes"] == size),
            "{digest} ({media_type}) not served by node 1 ({id1}): {row}"
        );
        assert!(
            served
                .iter()
                .all(|q| !q["peer_addr"].as_str().unwrap().is_empty())
        );
    }
    let tag_row = rows.iter().find(|r| r["role"] == "tag").expect("tag row");
    assert!(tag_row["key"].as_str().unwrap().ends_with("shoal-small:v1"));
    let text = table(&d2, &["explain", img.reference()]);
    assert!(text.contains("peer") && text.contains(&id1), "{text}");

    // Once node 2 advertises too, find lists both nodes for every blob (node 2 as "local").
    wait_until(
        "both nodes to hold every blob",
        Duration::from_secs(30),
        || {
            // Fails (NotFound) until some node advertises the image: keep polling.
            let Some(f) = try_json(&d2, &["find", img.reference(), "--json", "--timeout", "2s"])
            else {
                return false;
            };
            holders(&f)
                .iter()
                .all(|(_, ids)| ids.contains(&id1) && ids.contains(&id2))
        },
    );
    let f = ok_json(&d2, &["find", img.reference(), "--json"]);
    assert!(
        f["resolved_from"]
            .as_str()
            .unwrap()
            .contains("local containerd"),
        "{f}"
    );
    let roles: Vec<&str> = f["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles[0], "manifest");
    assert!(
        roles.contains(&"config") && roles.contains(&"layer"),
        "{roles:?}"
    );
    for b in f["blobs"].as_array().unwrap() {
        assert!(b["size"].as_u64().unwrap() > 0);
        assert!(b["lookup_ms"].as_u64().is_some());
        let me = b["holders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["peer_id"] == id2.as_str())
            .unwrap();
        assert_eq!(me["local"], true);
    }
    table(&d2, &["find", img.reference()]);
    eprintln!("$ shoal find --json\n{f:#}");

    // A single digest works too.
    let layer = img.layers()[0].0.to_string();
    let f = ok_json(&d1, &["find", &layer, "--json"]);
    assert_eq!(f["kind"], "digest");
    assert_eq!(holders(&f)[0].1.len(), 2, "{f}");
    let ex = ok_json(&d1, &["explain", &layer, "--json"]);
    assert_eq!(ex["blobs"][0]["key"], layer.as_str());

    // Bad input is a clear error, not a crash.
    let bad = d2.cli(&["find", "sha256:zz"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a valid digest"));
}

/// `shoal doctor --json` inside the node's namespace; returns (exit ok, report).
fn doctor(node: &Node, d: &Daemon, extra: &[&str]) -> (bool, Value) {
    let hosts = node.hosts_dir().display().to_string();
    let config = node.dir().join("config.toml").display().to_string();
    let sock = node.containerd_socket().display().to_string();
    let admin = d.admin_socket().display().to_string();
    let defaults = [
        ("--hosts-dir", hosts.as_str()),
        ("--containerd-config", config.as_str()),
        ("--containerd-socket", sock.as_str()),
        ("--admin-socket", admin.as_str()),
        ("--registries", "docker.io,ghcr.io"),
    ];
    let mut argv = vec!["doctor", "--json"];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            argv.extend_from_slice(&[flag, value]);
        }
    }
    argv.extend_from_slice(extra);
    let bin = shoal_bin();
    let mut full = vec![bin.to_str().unwrap()];
    full.extend_from_slice(&argv);
    let started = Instant::now();
    let out = node.exec(&full);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "doctor took {:?}",
        started.elapsed()
    );
    (out.status.success(), json(&out, "doctor"))
}

pub(crate) fn check<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {report}"))
}

pub(crate) fn assert_finding(report: &Value, id: &str, status: &str, evidence: &str, fix: &str) {
    let c = check(report, id);
    assert_eq!(c["status"], status, "{id}: {c}");
    let ev = c["evidence"].to_string();
    assert!(
        ev.contains(evidence),
        "{id}: evidence lacks {evidence:?}: {c}"
    );
    assert!(
        c["fix"].as_str().unwrap_or("").contains(fix),
        "{id}: fix lacks {fix:?}: {c}"
    );
}

/// A distribution registry on 127.0.0.1:`port` of `n` that wants HTTP Basic credentials
/// (htpasswd), in `n.dir()/<name>`; with `tls`, behind a certificate from a private CA
/// (`<name>/ca.pem`).
pub(crate) fn basic_auth_registry(n: &Node, name: &str, port: u16, tls: bool) -> Process {
    let dir = n.dir().join(name);
    let d = dir.display();
    let tls_config = if tls {
        private_ca_and_server_cert(&dir);
        format!("  tls:\n    certificate: {d}/cert.pem\n    key: {d}/key.pem\n")
    } else {
        String::new()
    };
    write(
        &dir.join("config.yml"),
        &format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_config}auth:\n  htpasswd:\n    realm: {name}\n    path: {d}/htpasswd\n"
        ),
    );
    let reg = n.spawn(
        "docker-registry",
        &["serve", &dir.join("config.yml").display().to_string()],
    );
    reg.wait_for_log("listening on", Duration::from_secs(10))
        .unwrap();
    reg
}

/// A private CA and a server certificate for 127.0.0.1 signed by it, made with `openssl` in
/// `dir` (`ca.pem`, `cert.pem`, `key.pem`).
fn private_ca_and_server_cert(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    write(
        &dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    );
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let steps = [
        format!("req -x509 -days 2 -subj /CN=shoal-test-ca -keyout ca.key -out ca.pem {key}"),
        format!("req -new -subj /CN=127.0.0.1 -keyout key.pem -out leaf.csr {key}"),
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
         -extfile leaf.ext -out cert.pem"
            .to_owned(),
    ];
    for args in steps {
        let out = std::process::Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub(crate) fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn doctor_passes_a_healthy_node_and_reports_each_finding_with_its_fix() {
    let rig = Rig::builder().nodes(2).start();
    let big = TestImage::big();
    rig.registry().push(&big);
    for n in rig.nodes() {
        configure(n);
    }
    let d1 = rig.node(0).shoal().start();
    let d2 = rig.node(1).shoal().bootstrap(&d1).start();
    d1.wait_ready(Duration::from_secs(20));
    d2.wait_ready(Duration::from_secs(20));
    let n = rig.node(0);

    let (ok, healthy) = doctor(n, &d1, &[]);
    let not_pass: Vec<&Value> = healthy["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] != "pass")
        .collect();
    assert!(ok && not_pass.is_empty(), "healthy node: {not_pass:#?}");
    assert_eq!(healthy["checks"].as_array().unwrap().len(), 15);
    assert_eq!(healthy["summary"]["pass"], 15);
    assert_eq!(healthy["verdict"], "healthy");
    assert_eq!(healthy["daemon"], "running");
    let text = String::from_utf8_lossy(
        &d1.cli(&[
            "doctor",
            "--hosts-dir",
            &n.hosts_dir().display().to_string(),
            "--containerd-config",
            &n.dir().join("config.toml").display().to_string(),
            "--containerd-socket",
            &n.containerd_socket().display().to_string(),
            "--registries",
            "docker.io,ghcr.io",
        ])
        .stdout,
    )
    .into_owned();
    eprintln!("$ shoal doctor (healthy)\n{text}");
    assert!(text.contains("15 pass, 0 warn, 0 fail, 0 skip"), "{text}");

    // Allowlist drift: hosts.toml written for a list the running daemon does not have.
    let out = std::process::Command::new(shoal_bin())
        .args(["configure", "--hosts-dir"])
        .arg(n.hosts_dir())
        .args([
            "--mirror",
            "http://127.0.0.1:5000",
            "--registries",
            "docker.io,ghcr.io,quay.io",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, r) = doctor(n, &d1, &["--registries", "docker.io,ghcr.io,quay.io"]);
    assert_eq!(check(&r, "shoal-for-unlisted-registry")["status"], "pass");
    assert_finding(
        &r,
        "daemon-allowlist",
        "warn",
        "quay.io: ",
        "--registries <the daemon's list>",
    );
    let ev = check(&r, "daemon-allowlist")["evidence"].to_string();
    assert!(
        ev.contains("asks Shoal first, but the running daemon does not mirror it"),
        "{ev}"
    );
    assert!(ev.contains("the daemon mirrors: docker.io,ghcr.io"), "{ev}");
    std::fs::remove_dir_all(n.hosts_dir().join("quay.io")).unwrap();

    // 4. A stale ingest, made by interrupting a pull of a 200 MB layer.
    let ingest = n.root_dir().join("io.containerd.content.v1.content/ingest");
    let hosts = n.hosts_dir().display().to_string();
    let sock = n.containerd_socket().display().to_string();
    let mut pull_args = vec!["-a", &sock, "-n", "k8s.io", "images", "pull"];
    // Client-side, so killing ctr interrupts the ingest (as with 1.x).
    pull_args.extend_from_slice(shoal_tests::ctr_pull_local_args());
    pull_args.extend(["--hosts-dir", &hosts, big.reference()]);
    let pull = n.spawn(shoal_tests::ctr_bin(), &pull_args);
    wait_until("an ingest to appear", Duration::from_secs(30), || {
        std::fs::read_dir(&ingest)
            .map(|d| d.count() > 0)
            .unwrap_or(false)
    });
    pull.kill();
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, r) = doctor(n, &d1, &["--stale-ingest-after", "1s"]);
    assert!(!ok, "a FAIL must make doctor exit non-zero");
    assert_finding(
        &r,
        "stale-ingests",
        "fail",
        "untouched for",
        "restart containerd",
    );

    // 1. A catch-all _default.
    write(
        &n.hosts_dir().join("_default/hosts.toml"),
        &shoal_tests::hosts_toml("http://127.0.0.1:5000"),
    );
    // 2./3. Allowlist and hosts.toml disagree.
    let (_, r) = doctor(n, &d1, &["--registries", "docker.io,quay.io"]);
    assert_finding(
        &r,
        "default-catch-all",
        "fail",
        "_default/hosts.toml exists",
        "shoal configure --uninstall",
    );
    assert_finding(
        &r,
        "allowlisted-without-shoal",
        "warn",
        "quay.io: no ",
        "shoal configure --hosts-dir",
    );
    assert_finding(
        &r,
        "shoal-for-unlisted-registry",
        "warn",
        "ghcr.io",
        "SHOAL_REGISTRIES",
    );
    std::fs::remove_dir_all(n.hosts_dir().join("_default")).unwrap();

    // 5./6. containerd config: config_path elsewhere, discard_unpacked_layers = true.
    let cfg = std::fs::read_to_string(n.dir().join("config.toml")).unwrap();
    let bad = cfg
        .replace(
            &format!("config_path = \"{hosts}\""),
            "config_path = \"/etc/containerd/certs.d\"",
        )
        .replace(
            "discard_unpacked_layers = false",
            "discard_unpacked_layers = true",
        );
    assert_ne!(bad, cfg);
    let bad_path = n.dir().join("bad-config.toml");
    write(&bad_path, &bad);
    let (_, r) = doctor(
        n,
        &d1,
        &["--containerd-config", &bad_path.display().to_string()],
    );
    assert_finding(
        &r,
        "config-path",
        "fail",
        "/etc/containerd/certs.d",
        "set config_path",
    );
    assert_finding(
        &r,
        "discard-unpacked-layers",
        "fail",
        "discard_unpacked_layers = true",
        "discard_unpacked_layers = false",
    );

    // 9. A host that does not resolve from the node (the missing extraHostEntries case).
    write(
        &n.hosts_dir().join("harbor.internal/hosts.toml"),
        &shoal_tests::hosts_toml("http://harbor.shoal-doctor.invalid:5000"),
    );
    // 10. A registry that wants credentials (htpasswd) for an anonymous /v2/.
    let _auth_reg = basic_auth_registry(n, "authreg", 5002, false);
    write(
        &n.hosts_dir().join("private.test/hosts.toml"),
        &shoal_tests::hosts_toml("http://127.0.0.1:5002"),
    );
    let (_, r) = doctor(n, &d1, &[]);
    assert_finding(
        &r,
        "hosts-resolve",
        "fail",
        "harbor.shoal-doctor.invalid",
        "extraHostEntries",
    );
    assert_finding(&r, "registry-auth", "fail", "401", "robot");
    assert!(
        check(&r, "registry-auth")["evidence"]
            .to_string()
            .contains("basic realm")
    );

    // 10 over https, with containerd's TLS settings: the same kind of registry behind a
    // certificate from a private CA, named once with `ca` (probed: 401) and once without
    // (the certificate is not trusted, as containerd would find).
    std::fs::remove_dir_all(n.hosts_dir().join("private.test")).unwrap();
    let _tls_reg = basic_auth_registry(n, "tlsreg", 5003, true);
    let ca = n.dir().join("tlsreg/ca.pem");
    let https = "https://127.0.0.1:5003";
    write(
        &n.hosts_dir().join("tls-private.test/hosts.toml"),
        &format!("server = \"{https}\"\nca = \"{}\"\n", ca.display()),
    );
    write(
        &n.hosts_dir().join("tls-untrusted.test/hosts.toml"),
        &format!("server = \"{https}\"\n"),
    );
    let (_, r) = doctor(n, &d1, &[]);
    assert_finding(
        &r,
        "registry-auth",
        "fail",
        "GET https://127.0.0.1:5003/v2/ -> 401, challenge: basic realm=\\\"tlsreg\\\"",
        "robot",
    );
    let evidence = check(&r, "registry-auth")["evidence"].to_string();
    assert!(evidence.contains("UnknownIssuer"), "{evidence}");
    std::fs::remove_dir_all(n.hosts_dir().join("tls-private.test")).unwrap();
    let (_, r) = doctor(n, &d1, &[]);
    assert_finding(&r, "registry-auth", "fail", "UnknownIssuer", "ca = ");
    std::fs::remove_dir_all(n.hosts_dir().join("tls-untrusted.test")).unwrap();
    std::fs::remove_dir_all(n.hosts_dir().join("harbor.internal")).unwrap();

    // 11. Zero peers once node 2's daemon is gone; 8. mirror unreachable once node 1's is gone,
    // and the other checks still run without the daemon.
    d2.kill();
    wait_until("node 1 to lose its peer", Duration::from_secs(20), || {
        ok_json(&d1, &["peers", "--json"])["peers"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    let (_, r) = doctor(n, &d1, &[]);
    assert_finding(&r, "peers", "warn", "zero peers", "--bootstrap");
    d1.kill();
    let (ok, r) = doctor(n, &d1, &[]);
    let text = d1.cli(&[
        "doctor",
        "--hosts-dir",
        &hosts,
        "--containerd-socket",
        &sock,
        "--containerd-config",
        &n.dir().join("config.toml").display().to_string(),
        "--registries",
        "docker.io,ghcr.io",
        "--timeout",
        "1s",
    ]);
    assert!(!text.status.success());
    eprintln!(
        "$ shoal doctor (findings, daemon down)\n{}",
        String::from_utf8_lossy(&text.stdout)
    );
    // Without the daemon the node is not broken: its mirror refuses, so containerd goes on to
    // the next endpoint (WARN), and the peers check has nothing to ask (SKIP).
    assert!(!ok);
    assert_eq!(r["verdict"], "no-daemon", "{r}");
    assert_eq!(r["exit_code"], 3);
    assert_eq!(text.status.code(), Some(3));
    assert_finding(
        &r,
        "mirror-reachable",
        "warn",
        "http://127.0.0.1:5000/v2/",
        "DaemonSet",
    );
    assert_finding(
        &r,
        "peers",
        "skip",
        "not running on this node",
        "start the shoal DaemonSet",
    );
    assert_eq!(check(&r, "config-path")["status"], "pass");
    assert_eq!(check(&r, "transfer-service")["status"], "pass");
    assert!(
        check(&r, "transfer-service")["evidence"]
            .to_string()
            .contains(&n.containerd_version())
    );
}
