//! `shoal doctor` against the failures of the users' own troubleshooting (docs/doctor.md), each
//! provoked on a real node (containerd, docker-registry with token auth behind a test token
//! service) and asserted by status, evidence and fix. One rig per test, several findings each.

use std::path::Path;
use std::process::Output;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{BearerConfig, BearerRegistry, Node, Rig, shoal_bin};

use crate::cli::{assert_finding, check, configure, write};

const ROBOT: &str = "robot$cluster-pull";
const SECRET: &str = "Sup3r-Secret-Robot-Token";
const WRONG: &str = "Wr0ng-Secret-Robot-Token";

/// `shoal doctor` in `node`'s namespace with the node's paths, `config` as containerd's config
/// and no daemon unless `--admin-socket` is in `extra`; returns (exit code, JSON report, text
/// report of the same run's flags).
pub(crate) fn doctor(node: &Node, config: &Path, extra: &[&str]) -> (i32, Value, String) {
    let hosts = node.hosts_dir().display().to_string();
    let config = config.display().to_string();
    let sock = node.containerd_socket().display().to_string();
    let no_admin = node.dir().join("no-daemon.sock").display().to_string();
    // With --host-root, the layout found there gives the hosts dir and containerd's config.
    let by_layout = extra.contains(&"--host-root");
    let defaults = [
        ("--hosts-dir", if by_layout { "" } else { hosts.as_str() }),
        (
            "--containerd-config",
            if by_layout { "" } else { config.as_str() },
        ),
        ("--containerd-socket", sock.as_str()),
        ("--admin-socket", no_admin.as_str()),
        ("--registries", "docker.io,ghcr.io"),
        ("--timeout", "2s"),
    ];
    let mut argv = vec!["doctor"];
    for (flag, value) in defaults {
        if !extra.contains(&flag) && !value.is_empty() {
            argv.extend_from_slice(&[flag, value]);
        }
    }
    argv.extend_from_slice(extra);
    let bin = shoal_bin();
    let run = |json: bool| -> Output {
        let mut full = vec![bin.to_str().unwrap()];
        full.extend_from_slice(&argv);
        if json {
            full.push("--json");
        }
        let started = Instant::now();
        let out = node.exec(&full);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "doctor took {:?}",
            started.elapsed()
        );
        out
    };
    let out = run(true);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor: not JSON ({e})\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let text = run(false);
    let code = out.status.code().expect("doctor exited");
    assert_eq!(
        text.status.code(),
        Some(code),
        "text and JSON runs disagree on the exit code"
    );
    assert_eq!(report["exit_code"], code, "{report}");
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    for secret in [SECRET, WRONG] {
        assert!(
            !text.contains(secret) && !report.to_string().contains(secret),
            "doctor printed a secret:\n{text}"
        );
    }
    (code, report, text)
}

/// containerd's config for `node` plus `extra` (CRI registry tables).
fn config_with(node: &Node, name: &str, extra: &str) -> std::path::PathBuf {
    let base = std::fs::read_to_string(node.dir().join("config.toml")).unwrap();
    let path = node.dir().join(name);
    write(&path, &format!("{base}\n{extra}"));
    path
}

fn auth_table(host: &str, user: &str, password: &str) -> String {
    format!(
        "[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"{host}\".auth]\n  \
         username = \"{user}\"\n  password = \"{password}\"\n"
    )
}

fn bearer(
    node: &Node,
    name: &str,
    port: u16,
    anonymous: bool,
    realm: Option<&str>,
) -> BearerRegistry {
    BearerRegistry::start(
        node,
        BearerConfig {
            name: name.into(),
            registry_port: port,
            token_port: port + 1,
            realm: realm.map(str::to_owned),
            user: (ROBOT.into(), SECRET.into()),
            anonymous,
        },
    )
}

/// Item 1 (credentials are tried) and item 8 (severity, exit codes): the registry-auth check
/// follows the Bearer challenge to the realm, anonymously and with the configured credentials,
/// as containerd does, and each broken step is a FAIL with its fix.
#[test]
fn doctor_follows_the_token_challenge_with_the_configured_credentials() {
    let rig = Rig::builder().nodes(1).start();
    let n = rig.node(0);
    configure(n);
    let plain = n.dir().join("config.toml");

    // A node without the daemon, nothing else wrong: not broken (exit 3, peers SKIP).
    let (code, r, text) = doctor(n, &plain, &[]);
    assert_eq!(code, 3, "{text}");
    assert_eq!(r["verdict"], "no-daemon");
    assert_eq!(r["daemon"], "not-running");
    assert_finding(
        &r,
        "peers",
        "skip",
        "not running on this node",
        "start the shoal DaemonSet",
    );
    assert!(
        text.contains("verdict: the shoal daemon is not running"),
        "{text}"
    );
    assert_finding(
        &r,
        "mirror-reachable",
        "warn",
        "containerd skips a refusing mirror",
        "DaemonSet",
    );
    assert_eq!(check(&r, "daemon-allowlist")["status"], "skip");

    // A Harbor-like registry: token auth, anonymous tokens for public projects.
    let public = bearer(n, "public-harbor", 5010, true, None);
    write(
        &n.hosts_dir().join("harbor.public.test/hosts.toml"),
        &shoal_tests::hosts_toml(public.url()),
    );
    // Right credentials, keyed by the endpoint's host: the token comes with them, /v2/ answers.
    let good = config_with(n, "good.toml", &auth_table("127.0.0.1:5010", ROBOT, SECRET));
    let (code, r, _) = doctor(n, &good, &[]);
    assert_eq!(code, 3);
    assert_finding(
        &r,
        "registry-auth",
        "pass",
        &format!(
            "token from http://127.0.0.1:5011/token with the credentials of user \\\"{ROBOT}\\\""
        ),
        "",
    );
    let ev = check(&r, "registry-auth")["evidence"].to_string();
    assert!(
        ev.contains("GET http://127.0.0.1:5010/v2/ with the configured credentials -> 200"),
        "{ev}"
    );
    assert!(
        ev.contains("anonymous token from http://127.0.0.1:5011/token: granted"),
        "{ev}"
    );
    // As containerd: the OAuth2 POST first (which this service answers), an anonymous GET.
    assert!(public.counts.oauth_post.load(Ordering::Relaxed) >= 2);
    assert!(public.counts.anonymous.load(Ordering::Relaxed) >= 2);

    // Wrong secret: the realm refuses it (POST, then GET with Basic, as containerd falls back).
    let basic_before = public.counts.basic.load(Ordering::Relaxed);
    let wrong = config_with(n, "wrong.toml", &auth_table("127.0.0.1:5010", ROBOT, WRONG));
    let (code, r, text) = doctor(n, &wrong, &[]);
    assert_eq!(code, 1, "a 401 with credentials is broken:\n{text}");
    assert_eq!(r["verdict"], "broken");
    assert_finding(
        &r,
        "registry-auth",
        "fail",
        "the realm answers 401",
        "check that the robot account exists",
    );
    assert!(public.counts.basic.load(Ordering::Relaxed) > basic_before);
    assert!(text.contains(&format!("user \"{ROBOT}\"")), "{text}");

    // A private project: no anonymous token. Credentials keyed under the registry's name (the
    // hosts.toml directory) are never sent by containerd, which keys them by endpoint host.
    std::fs::remove_dir_all(n.hosts_dir().join("harbor.public.test")).unwrap();
    let private = bearer(n, "private-harbor", 5012, false, None);
    write(
        &n.hosts_dir().join("harbor.private.test/hosts.toml"),
        &shoal_tests::hosts_toml(private.url()),
    );
    let miskeyed = config_with(
        n,
        "miskeyed.toml",
        &auth_table("harbor.private.test", ROBOT, SECRET),
    );
    let (code, r, _) = doctor(n, &miskeyed, &[]);
    assert_eq!(code, 1);
    assert_finding(
        &r,
        "registry-auth",
        "fail",
        "looks them up by the endpoint's host 127.0.0.1:5012",
        "key them under the endpoint",
    );
    assert!(
        check(&r, "registry-auth")["evidence"]
            .to_string()
            .contains("anonymous token from http://127.0.0.1:5013/token: the realm answers 401")
    );
    // No credentials at all: a FAIL (not a warning), with the robot-account fix.
    let (_, r, _) = doctor(n, &plain, &[]);
    assert_finding(
        &r,
        "registry-auth",
        "fail",
        "needs credentials and containerd has none configured for 127.0.0.1:5012",
        "create a robot (pull-only) account",
    );
    std::fs::remove_dir_all(n.hosts_dir().join("harbor.private.test")).unwrap();

    // The seeds' known issue: the challenge names a realm the node cannot reach. containerd's
    // own pull fails on it, and doctor says the same thing with the fix.
    let _unreachable = bearer(
        n,
        "far-harbor",
        5014,
        true,
        Some("http://127.0.0.1:5019/service/token"),
    );
    write(
        &n.hosts_dir().join("harbor.far.test/hosts.toml"),
        &shoal_tests::hosts_toml("http://127.0.0.1:5014"),
    );
    let pull = n.pull("harbor.far.test/library/app:v1").unwrap_err();
    assert!(pull.contains("failed to fetch anonymous token"), "{pull}");
    let (code, r, _) = doctor(n, &plain, &[]);
    assert_eq!(code, 1);
    assert_finding(
        &r,
        "registry-auth",
        "fail",
        "failed to fetch anonymous token from http://127.0.0.1:5019/service/token",
        "externalURL",
    );
}

/// Item 3: k3s keeps everything under /var/lib/rancher/k3s/agent and passes containerd's root on
/// its command line, not in its config. A real stale ingest in the real containerd root is found
/// through the k3s layout; a root doctor cannot find is SKIP with how to pass it, never PASS.
#[test]
fn doctor_finds_containerd_where_k3s_keeps_it() {
    let rig = Rig::builder().nodes(1).start();
    let n = rig.node(0);
    configure(n);
    // The node's files, laid out as k3s does, under a host root (as mounted in a pod).
    let host = n.dir().join("k3s-host");
    let agent = host.join("var/lib/rancher/k3s/agent");
    let etc = agent.join("etc/containerd");
    std::fs::create_dir_all(&etc).unwrap();
    std::os::unix::fs::symlink(n.hosts_dir(), etc.join("certs.d")).unwrap();
    std::os::unix::fs::symlink(n.root_dir(), agent.join("containerd")).unwrap();
    let base = std::fs::read_to_string(n.dir().join("config.toml")).unwrap();
    let hosts = n.hosts_dir().display().to_string();
    let k3s_config: String = base
        .lines()
        .filter(|l| !l.starts_with("root = "))
        .map(|l| {
            l.replace(
                &format!("config_path = \"{hosts}\""),
                "config_path = \"/var/lib/rancher/k3s/agent/etc/containerd/certs.d\"",
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(k3s_config.trim(), base.trim());
    write(&etc.join("config.toml"), &k3s_config);

    // An interrupted ingest in the real containerd: ctr, killed after writing 4 KiB of a
    // promised 1 MiB (its lease stays, as with an interrupted pull).
    let sock = n.containerd_socket().display().to_string();
    let ctr = shoal_tests::ctr_bin().display().to_string();
    n.exec(&[
        "sh",
        "-c",
        &format!(
            "(head -c 4096 /dev/zero; sleep 3) | {ctr} -a {sock} -n k8s.io content ingest \
             --expected-size 1048576 shoal-doctor-stale & p=$!; sleep 1; kill -9 $p; wait"
        ),
    ]);
    let ingest = n.root_dir().join("io.containerd.content.v1.content/ingest");
    assert!(
        std::fs::read_dir(&ingest).unwrap().count() > 0,
        "no ingest left"
    );
    std::thread::sleep(Duration::from_millis(1100));

    let host_root = host.display().to_string();
    let (code, r, text) = doctor(
        n,
        Path::new("/unused"),
        &["--host-root", &host_root, "--stale-ingest-after", "1s"],
    );
    eprintln!("$ shoal doctor --host-root <k3s layout>\n{text}");
    assert_eq!(r["layout"], "k3s");
    assert_eq!(code, 1);
    assert_finding(
        &r,
        "stale-ingests",
        "fail",
        "shoal-doctor-stale",
        "restart containerd",
    );
    let ev = check(&r, "stale-ingests")["evidence"].to_string();
    assert!(ev.contains("the k3s default"), "{ev}");
    assert_eq!(check(&r, "config-path")["status"], "pass", "{r}");
    assert!(
        r["hosts_dir"]
            .as_str()
            .unwrap()
            .ends_with("agent/etc/containerd/certs.d")
    );

    // The same config on a host root with no known layout: containerd's root is not where the
    // default says, so the check cannot look: SKIP with how to pass it.
    let bare = n.dir().join("bare-host");
    std::fs::create_dir_all(&bare).unwrap();
    let k3s_cfg = etc.join("config.toml").display().to_string();
    let (_, r, _) = doctor(
        n,
        Path::new("/unused"),
        &[
            "--host-root",
            &bare.display().to_string(),
            "--containerd-config",
            &k3s_cfg,
            "--hosts-dir",
            &hosts,
        ],
    );
    assert_eq!(r["layout"], "containerd");
    assert_finding(
        &r,
        "stale-ingests",
        "skip",
        "containerd's root is unknown",
        "--containerd-root",
    );
    // Passing it finds the ingest again.
    let root = n.root_dir().display().to_string();
    let (_, r, _) = doctor(
        n,
        Path::new("/unused"),
        &[
            "--host-root",
            &bare.display().to_string(),
            "--containerd-config",
            &k3s_cfg,
            "--hosts-dir",
            &hosts,
            "--containerd-root",
            &root,
            "--stale-ingest-after",
            "1s",
        ],
    );
    assert_finding(
        &r,
        "stale-ingests",
        "fail",
        "shoal-doctor-stale",
        "restart containerd",
    );
}

/// A distribution registry without auth on plain HTTP at 127.0.0.1:`port` of `n`.
fn plain_registry(n: &Node, name: &str, port: u16) -> shoal_tests::Process {
    let dir = n.dir().join(name);
    let d = dir.display();
    write(
        &dir.join("config.yml"),
        &format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\nhttp:\n  addr: 127.0.0.1:{port}\n"
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

/// Item 2: an HTTP-only registry is allowlisted as `http://host[:port]`; `shoal configure` keeps
/// the scheme in the hosts.toml it writes, and doctor flags an endpoint whose scheme is wrong
/// either way, as containerd's own pull fails on it.
#[test]
fn plain_http_registries_keep_their_scheme_and_doctor_flags_a_mismatch() {
    let rig = Rig::builder().nodes(1).start();
    let n = rig.node(0);
    let plain = n.dir().join("config.toml");
    let _http = plain_registry(n, "plainreg", 5020);
    let list = "docker.io,ghcr.io,http://127.0.0.1:5020";

    // Allowlisted as plain HTTP, no hosts.toml: containerd would try https://.
    let (code, r, _) = doctor(n, &plain, &["--registries", list]);
    assert_eq!(code, 1);
    assert_finding(
        &r,
        "allowlisted-without-shoal",
        "fail",
        "containerd reaches it at https://127.0.0.1:5020",
        "list",
    );

    let out = std::process::Command::new(shoal_bin())
        .args(["configure", "--hosts-dir"])
        .arg(n.hosts_dir())
        .args(["--mirror", "http://127.0.0.1:5000", "--registries", list])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = n.hosts_dir().join("127.0.0.1:5020/hosts.toml");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.contains("server = \"http://127.0.0.1:5020\""),
        "{written}"
    );
    // containerd reaches it (after Shoal's mirror, not running here, refuses): the pull fails
    // only on the image being absent.
    let pull = n.pull("127.0.0.1:5020/absent/app:v1").unwrap_err();
    assert!(
        pull.contains("response was http.StatusNotFound\" host=\"127.0.0.1:5020\""),
        "{pull}"
    );
    let (_, r, _) = doctor(n, &plain, &["--registries", list]);
    assert_eq!(
        check(&r, "allowlisted-without-shoal")["status"],
        "pass",
        "{r}"
    );
    assert!(
        check(&r, "registry-auth")["evidence"]
            .to_string()
            .contains("GET http://127.0.0.1:5020/v2/ -> 200 OK in ")
    );

    // The file as written without the scheme: containerd talks TLS to a plain-HTTP registry.
    write(
        &file,
        &written.replace("http://127.0.0.1:5020", "https://127.0.0.1:5020"),
    );
    let pull = n.pull("127.0.0.1:5020/absent/app:v1").unwrap_err();
    assert!(pull.contains("HTTP response to HTTPS client"), "{pull}");
    let (code, r, _) = doctor(n, &plain, &["--registries", list]);
    assert_eq!(code, 1);
    assert_finding(
        &r,
        "registry-auth",
        "fail",
        "the endpoint speaks plain HTTP, hosts.toml says https://",
        "list the registry as `http://<host>`",
    );
    assert_finding(
        &r,
        "allowlisted-without-shoal",
        "fail",
        "says server = \\\"https://127.0.0.1:5020\\\"",
        "configure writes server = \"http://<host>\"",
    );
    std::fs::remove_dir_all(n.hosts_dir().join("127.0.0.1:5020")).unwrap();

    // The reverse: a TLS-only registry named http://.
    let _tls = crate::cli::basic_auth_registry(n, "tlsonly", 5021, true);
    write(
        &n.hosts_dir().join("tls.test/hosts.toml"),
        &shoal_tests::hosts_toml("http://127.0.0.1:5021"),
    );
    let pull = n.pull("tls.test/absent/app:v1").unwrap_err();
    assert!(pull.contains("400"), "{pull}");
    let (_, r, _) = doctor(n, &plain, &[]);
    assert_finding(
        &r,
        "registry-auth",
        "fail",
        "the endpoint speaks TLS, hosts.toml says http://",
        "write https:// in that hosts.toml",
    );
}
