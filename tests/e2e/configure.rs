//! `shoal configure` against real containerd: the hosts.toml it writes makes containerd ask the
//! mirror first and fall back when it answers 404, keeps an existing mirror entry working, and
//! leaves a private registry (with htpasswd auth) completely alone, with no `_default`.
//!
//! The mirror here is a tiny recording HTTP server (404 for everything, one line per request),
//! so these tests check what containerd does with the files, independently of Shoal's daemon.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use shoal_tests::{Node, Process, Rig, TestImage, hosts_toml, shoal_bin};

const MIRROR_PORT: u16 = 5999;

/// A 404-everything HTTP server that appends `METHOD PATH` per request to a file.
const RECORDER: &str = r#"
import sys, http.server
port, log = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        with open(log, "a") as f:
            f.write(f"{self.command} {self.path}\n")
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    do_GET = do_HEAD = answer
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("0.0.0.0", port), H)
print("ready", flush=True)
srv.serve_forever()
"#;

struct Recorder {
    _process: Process,
    log: PathBuf,
    url: String,
}

impl Recorder {
    fn start(node: &Node) -> Recorder {
        let log = node.dir().join("mirror-requests.log");
        fs::write(&log, "").unwrap();
        let process = node.spawn(
            "python3",
            &[
                "-c",
                RECORDER,
                &MIRROR_PORT.to_string(),
                log.to_str().unwrap(),
            ],
        );
        process
            .wait_for_log("ready", Duration::from_secs(10))
            .unwrap();
        Recorder {
            _process: process,
            log,
            url: format!("http://{}:{MIRROR_PORT}", node.ip()),
        }
    }

    fn requests(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Runs `shoal configure <args…>` (file work only: no network involved).
fn configure(args: &[&str]) -> Output {
    let out = Command::new(shoal_bin())
        .arg("configure")
        .args(args)
        .output()
        .expect("run shoal");
    assert!(
        out.status.success(),
        "shoal configure {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ctr --debug images pull` on `node`; returns the hosts containerd tried, in order.
fn pull_order(node: &Node, reference: &str, user: Option<&str>) -> Result<Vec<String>, String> {
    let hosts = node.hosts_dir();
    let mut args = vec![
        "--debug",
        "images",
        "pull",
        "--hosts-dir",
        hosts.to_str().unwrap(),
    ];
    // The resolver's log lines come from ctr itself only when it fetches client-side.
    args.extend_from_slice(shoal_tests::ctr_pull_local_args());
    if let Some(u) = user {
        args.extend(["--user", u]);
    }
    args.push(reference);
    let out = node.ctr(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let order: Vec<String> = stderr
        .lines()
        .filter_map(|l| l.split("msg=resolving host=").nth(1))
        .map(|h| h.trim_matches('"').to_owned())
        .collect();
    if out.status.success() {
        Ok(order)
    } else {
        Err(stderr)
    }
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

#[test]
fn mirrored_registry_asks_shoal_first_then_falls_back_upstream() {
    let rig = Rig::builder().nodes(1).start();
    let img = TestImage::small();
    rig.registry().push(&img);
    let n = rig.node(0);
    let mirror = Recorder::start(n);
    let hosts = n.hosts_dir();

    configure(&[
        "--hosts-dir",
        hosts.to_str().unwrap(),
        "--mirror",
        &mirror.url,
        "--registries",
        "docker.io",
    ]);
    let text = String::from_utf8(read(&hosts.join("docker.io/hosts.toml"))).unwrap();
    let ours = text.find(&format!("[host.\"{}\"]", mirror.url)).unwrap();
    let rigs = text
        .find(&format!("[host.\"{}\"]", rig.registry().url()))
        .unwrap();
    assert!(ours < rigs, "{text}");

    // ctr (client-side resolver, --hosts-dir): Shoal first, then the upstream.
    let order = pull_order(n, img.reference(), None).unwrap();
    let mirror_host = format!("{}:{MIRROR_PORT}", n.ip());
    assert_eq!(order.first(), Some(&mirror_host), "{order:?}");
    assert!(order.contains(&rig.registry().addr()), "{order:?}");
    let reqs = mirror.requests();
    assert!(
        reqs.iter()
            .any(|r| r == "HEAD /v2/library/shoal-small/manifests/v1?ns=docker.io"),
        "{reqs:?}"
    );
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("GET /v2/library/shoal-small/blobs/sha256:")),
        "every blob is asked from the mirror first: {reqs:?}"
    );
    assert!(
        rig.registry()
            .access_log()
            .contains("/v2/library/shoal-small/blobs/"),
        "the fallback went to the registry"
    );

    // CRI (daemon-side resolver, config_path): the same file works for kubelet pulls.
    n.reset_images();
    let before = reqs.len();
    n.cri_pull(img.reference()).unwrap();
    assert!(
        mirror.requests().len() > before,
        "CRI pull did not ask the mirror"
    );
}

#[test]
fn private_registry_with_auth_is_pulled_directly_and_no_default_exists() {
    let rig = Rig::builder().nodes(2).start();
    let (n1, n2) = (rig.node(0), rig.node(1));

    // A private registry with htpasswd (bcrypt) auth on node 2, as Harbor would be.
    let dir = rig.dir().join("private-registry");
    fs::create_dir_all(dir.join("storage")).unwrap();
    let hash = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt; print(crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH)))",
        ])
        .output()
        .unwrap();
    assert!(hash.status.success(), "bcrypt hash: {hash:?}");
    let hash = String::from_utf8(hash.stdout).unwrap();
    assert!(hash.starts_with("$2"), "not a bcrypt hash: {hash}");
    fs::write(dir.join("htpasswd"), format!("robot:{}", hash.trim())).unwrap();
    let cfg = format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
         http:\n  addr: 0.0.0.0:5001\nauth:\n  htpasswd:\n    realm: private\n    path: {}\n",
        dir.join("storage").display(),
        dir.join("htpasswd").display()
    );
    fs::write(dir.join("registry.yml"), cfg).unwrap();
    let private = n2.spawn(
        "docker-registry",
        &["serve", dir.join("registry.yml").to_str().unwrap()],
    );
    private
        .wait_for_log("listening on", Duration::from_secs(20))
        .unwrap();

    let img = TestImage::small_at("harbor.test/team/app:v1");
    push_with_auth(n2, &img, &dir, "robot:s3cret");
    let server = format!("http://{}:5001", n2.ip());
    n1.write_hosts_toml("harbor.test", &hosts_toml(&server));

    let mirror = Recorder::start(n1);
    let hosts = n1.hosts_dir();
    let harbor_file = hosts.join("harbor.test/hosts.toml");
    let before = read(&harbor_file);
    configure(&[
        "--hosts-dir",
        hosts.to_str().unwrap(),
        "--mirror",
        &mirror.url,
    ]);
    assert_eq!(
        read(&harbor_file),
        before,
        "the private registry's file was touched"
    );
    assert!(!hosts.join("_default").exists(), "_default must not exist");
    assert!(
        hosts.join("quay.io/hosts.toml").exists(),
        "allowlisted registries are configured"
    );

    let err = pull_order(n1, img.reference(), None).unwrap_err();
    assert!(err.contains("401") || err.contains("unauthorized"), "{err}");
    let order = pull_order(n1, img.reference(), Some("robot:s3cret")).unwrap();
    assert!(
        order.iter().all(|h| *h == format!("{}:5001", n2.ip())),
        "{order:?}"
    );
    assert!(
        private.log().contains("/v2/team/app/manifests/v1"),
        "the private registry served the pull"
    );
    let reqs = mirror.requests();
    assert!(
        reqs.is_empty(),
        "the mirror saw requests for a private registry: {reqs:?}"
    );
}

/// Pushes `img` to the private registry on `node` (skopeo inside its namespace, with creds).
fn push_with_auth(node: &Node, img: &TestImage, dir: &Path, creds: &str) {
    let layout = dir.join("push");
    fs::create_dir_all(&layout).unwrap();
    std::os::unix::fs::symlink(img.layout_dir().join("blobs"), layout.join("blobs")).unwrap();
    fs::copy(
        img.layout_dir().join("oci-layout"),
        layout.join("oci-layout"),
    )
    .unwrap();
    let (digest, size) = img
        .blobs()
        .into_iter()
        .find(|(d, _, _)| *d == img.manifest_digest())
        .map(|(d, _, s)| (d, s))
        .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": img.media_type(),
            "digest": digest.to_string(),
            "size": size,
            "annotations": { "org.opencontainers.image.ref.name": img.tag() },
        }],
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let src = format!("oci:{}:{}", layout.display(), img.tag());
    let dest = format!("docker://127.0.0.1:5001/{}:{}", img.repository(), img.tag());
    let out = node.exec(&[
        "skopeo",
        "--insecure-policy",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        &src,
        &dest,
    ]);
    assert!(
        out.status.success(),
        "push to the private registry: {out:?}"
    );
}

#[test]
fn existing_mirror_entry_keeps_working_with_shoal_prepended() {
    let rig = Rig::builder().nodes(1).start();
    let img = TestImage::small_at("ghcr.io/team/app:v1");
    rig.registry().push(&img);
    let n = rig.node(0);
    // A Harbor-style internal endpoint in front of the upstream, with its own settings.
    let reg = rig.registry().url();
    let existing = format!(
        "# Harbor pull-through cache (internal endpoint)\nserver = \"{reg}\"\n\n\
         [host.\"{reg}\"]\n  capabilities = [\"pull\", \"resolve\"]  # robot account\n  \
         skip_verify = true\n"
    );
    n.write_hosts_toml("ghcr.io", &existing);
    let mirror = Recorder::start(n);
    let hosts = n.hosts_dir();
    let file = hosts.join("ghcr.io/hosts.toml");

    configure(&[
        "--hosts-dir",
        hosts.to_str().unwrap(),
        "--mirror",
        &mirror.url,
        "--registries",
        "ghcr.io",
    ]);
    let text = String::from_utf8(read(&file)).unwrap();
    assert!(
        text.contains("# robot account") && text.contains("skip_verify = true"),
        "{text}"
    );
    let order = pull_order(n, img.reference(), None).unwrap();
    assert_eq!(
        order.first(),
        Some(&format!("{}:{MIRROR_PORT}", n.ip())),
        "{order:?}"
    );
    assert_eq!(order.get(1), Some(&rig.registry().addr()), "{order:?}");
    assert!(!mirror.requests().is_empty());

    // Uninstall gives the exact pre-Shoal bytes back, and pulls no longer touch the mirror.
    configure(&["--hosts-dir", hosts.to_str().unwrap(), "--uninstall"]);
    assert_eq!(read(&file), existing.as_bytes());
    n.reset_images();
    let seen = mirror.requests().len();
    let order = pull_order(n, img.reference(), None).unwrap();
    assert_eq!(order.first(), Some(&rig.registry().addr()), "{order:?}");
    assert_eq!(mirror.requests().len(), seen);
}
