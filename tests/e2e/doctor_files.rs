//! `shoal doctor` and what other tools leave on a node: another P2P mirror's files (Spegel),
//! bad input (a hanging mirror, a config that does not parse, a missing hosts dir), Harbor
//! proxy-cache paths, and the mirror's own image behind the mirror. Same style as `doctor`:
//! one rig per test, asserted by status, evidence and fix.

use std::time::{Duration, Instant};

use shoal_tests::{Rig, shoal_bin};

use crate::cli::{assert_finding, check, configure, write};
use crate::doctor::doctor;

/// Item 7: files of another P2P mirror (Spegel). A `_default` it wrote survives
/// `shoal configure --uninstall`, and doctor says whose it is and where to change it; a [host]
/// entry it left in a per-registry file is recognised, stale (refused) or hanging (FAIL, within
/// --timeout).
#[test]
fn doctor_recognises_another_p2p_mirrors_files() {
    let rig = Rig::builder().nodes(1).start();
    let n = rig.node(0);
    let plain = n.dir().join("config.toml");
    configure(n);
    let spegel_default = "[host.'http://127.0.0.1:29999']\n  capabilities = ['pull', 'resolve']\n  dial_timeout = '200ms'\n";
    write(&n.hosts_dir().join("_default/hosts.toml"), spegel_default);
    let out = std::process::Command::new(shoal_bin())
        .args(["configure", "--uninstall", "--hosts-dir"])
        .arg(n.hosts_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(n.hosts_dir().join("_default/hosts.toml").exists());
    let (code, r, _) = doctor(n, &plain, &[]);
    assert_eq!(code, 1);
    assert_finding(
        &r,
        "default-catch-all",
        "fail",
        "written by Spegel, not Shoal",
        "spegel.mirroredRegistries",
    );
    assert!(
        check(&r, "default-catch-all")["fix"]
            .as_str()
            .unwrap()
            .contains("removes only what Shoal wrote")
    );
    std::fs::remove_dir_all(n.hosts_dir().join("_default")).unwrap();
    configure(n);

    // Spegel's entry left in docker.io's file, nothing listening: stale, WARN.
    let file = n.hosts_dir().join("docker.io/hosts.toml");
    let shoal_file = std::fs::read_to_string(&file).unwrap();
    write(
        &file,
        &format!(
            "{shoal_file}\n[host.\"http://127.0.0.1:29999\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    );
    let (_, r, _) = doctor(n, &plain, &[]);
    assert_finding(
        &r,
        "foreign-mirrors",
        "warn",
        "[host.\\\"http://127.0.0.1:29999\\\"] (Spegel's port) is stale",
        "delete the tables",
    );
    assert_ne!(check(&r, "registry-auth")["status"], "warn", "{r}");

    // The same entry hanging (accepts, never answers): FAIL, and doctor is bounded by --timeout.
    let _hang = shoal_tests::HangingListener::start(n, 29999);
    let started = Instant::now();
    let (_, r, _) = doctor(n, &plain, &["--timeout", "1s"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_finding(
        &r,
        "foreign-mirrors",
        "fail",
        "does not answer within 1s",
        "uninstall",
    );

    // Bad input: a registry that hangs, a config that does not parse, a hosts dir that cannot
    // be read: each a finding, within --timeout per probe, never a panic.
    let _hung_registry = shoal_tests::HangingListener::start(n, 5031);
    write(
        &n.hosts_dir().join("hung.test/hosts.toml"),
        &shoal_tests::hosts_toml("http://127.0.0.1:5031"),
    );
    let broken = n.dir().join("broken.toml");
    write(
        &broken,
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"\n",
    );
    let started = Instant::now();
    let (code, r, _) = doctor(n, &broken, &["--timeout", "1s"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code, 1);
    assert_finding(
        &r,
        "registry-auth",
        "fail",
        "GET http://127.0.0.1:5031/v2/: no answer within 1s",
        "does not answer",
    );
    assert_finding(
        &r,
        "config-path",
        "warn",
        "is not valid TOML",
        "--containerd-config",
    );
    assert_finding(
        &r,
        "stale-ingests",
        "skip",
        "containerd's root is unknown",
        "--containerd-root",
    );
    let missing = n.dir().join("no-such-hosts-dir").display().to_string();
    let (_, r, _) = doctor(n, &plain, &["--hosts-dir", &missing]);
    assert_finding(
        &r,
        "default-catch-all",
        "skip",
        "cannot read the hosts directory",
        "--hosts-dir",
    );
}

/// Item 5: an endpoint with `override_path = true` (a Harbor proxy-cache project) is probed as
/// containerd uses it, with a manifest this node holds: the right API root passes, a mistyped
/// project is a FAIL (its `/v2/` would be a 404 either way).
#[test]
fn doctor_probes_override_path_endpoints_as_containerd_does() {
    let rig = Rig::builder().nodes(1).start();
    let n = rig.node(0);
    let img = shoal_tests::TestImage::small();
    rig.registry().push(&img);
    n.pull(img.reference()).unwrap();
    let plain = n.dir().join("config.toml");
    let upstream = rig.registry().url();
    let hosts_with = |root: &str| {
        format!(
            "server = \"{upstream}\"\n\n[host.\"{upstream}{root}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
        )
    };
    let file = n.hosts_dir().join("docker.io/hosts.toml");
    write(&file, &hosts_with("/v2"));
    let (_, r, _) = doctor(n, &plain, &[]);
    let ev = check(&r, "registry-auth")["evidence"].to_string();
    assert!(
        ev.contains(&format!(
            "HEAD {upstream}/v2/library/shoal-small/manifests/sha256:"
        )) && ev.contains("-> 200 OK (override_path"),
        "{ev}"
    );
    assert_ne!(check(&r, "registry-auth")["status"], "fail", "{r}");

    write(&file, &hosts_with("/v2/dockerhub"));
    // containerd: the mistyped project answers 404, the pull only works through the fallback.
    assert!(n.ctr(&["images", "rm", img.reference()]).status.success());
    let hosts = n.hosts_dir().display().to_string();
    let mut args = vec!["images", "pull"];
    args.extend_from_slice(shoal_tests::ctr_pull_local_args());
    args.extend(["--hosts-dir", &hosts, img.reference()]);
    let pull = n.ctr(&args);
    assert!(pull.status.success());
    let log = String::from_utf8_lossy(&pull.stderr).into_owned();
    assert!(log.contains("response was http.StatusNotFound"), "{log}");
    let (code, r, _) = doctor(n, &plain, &[]);
    assert_eq!(code, 1);
    assert_finding(
        &r,
        "registry-auth",
        "fail",
        "/v2/dockerhub/library/shoal-small/manifests/sha256:",
        "proxy-cache project",
    );
}

/// Item 9: Shoal's own image pulled only through Shoal's mirror can never be pulled back while
/// the daemon is down. containerd's pull fails exactly so; doctor says it, and passes once the
/// registry's upstream is the fallback (what `shoal configure` writes).
#[test]
fn doctor_flags_the_mirrors_own_image_behind_the_mirror() {
    let rig = Rig::builder().nodes(1).start();
    let n = rig.node(0);
    let img = shoal_tests::TestImage::small_at("ghcr.io/shoal-org/shoal:v1");
    rig.registry().push(&img);
    configure(n);
    n.pull(img.reference()).unwrap();
    let plain = n.dir().join("config.toml");
    let mirror = ["--mirror", "http://127.0.0.1:5000"];
    let (_, r, _) = doctor(n, &plain, &mirror);
    assert_finding(&r, "bootstrap-loop", "pass", "falls back to http://", "");

    // Only the mirror, as `server` too: the loop.
    let file = n.hosts_dir().join("ghcr.io/hosts.toml");
    let configured = std::fs::read_to_string(&file).unwrap();
    write(&file, &shoal_tests::hosts_toml("http://127.0.0.1:5000"));
    let (code, r, _) = doctor(n, &plain, &mirror);
    assert_eq!(code, 1);
    assert_finding(
        &r,
        "bootstrap-loop",
        "fail",
        "ghcr.io/shoal-org/shoal:v1 (Shoal's own image): every endpoint",
        "the registry's upstream as `server`",
    );
    // containerd, with the daemon down (as here), cannot pull it back.
    assert!(n.ctr(&["images", "rm", img.reference()]).status.success());
    let pull = n.pull(img.reference()).unwrap_err();
    assert!(pull.contains("connection refused"), "{pull}");
    write(&file, &configured);
    n.pull(img.reference()).unwrap();
}
