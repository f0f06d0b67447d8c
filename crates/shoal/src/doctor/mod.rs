//! `shoal doctor`'s checks: the manual troubleshooting checklists of the operators' runbooks
//! (look for `_default`, stale ingests, `config_path`, 401s, untrusted certificates, unresolvable
//! hosts…) as code.
//!
//! Every check returns PASS, WARN, FAIL or SKIP with the evidence it saw and, when not passing,
//! the fix. File checks need nothing running; the containerd, network and daemon checks are
//! each bounded by a timeout and are skipped (never hang) when what they need is not there.

pub mod auth;
pub mod bootstrap;
pub mod checks;
pub mod config;
pub mod drift;
pub mod foreign;
pub mod hosts;
pub mod ingests;
pub mod layout;
pub mod override_path;
pub mod probe;
pub mod scheme;
pub mod speed;
pub mod token;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use shoal_oci::Allowlist;

pub use probe::DaemonState;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Pass,
    Skip,
    Warn,
    Fail,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Pass => "PASS",
            Level::Skip => "SKIP",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable identifier for scripts (`default-catch-all`, `stale-ingests`, …).
    pub id: &'static str,
    pub title: &'static str,
    pub status: Level,
    /// What was looked at and found, one fact per line.
    pub evidence: Vec<String>,
    /// What to do; empty when passing.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl Check {
    pub fn new(id: &'static str, title: &'static str) -> Check {
        Check {
            id,
            title,
            status: Level::Pass,
            evidence: Vec::new(),
            fix: String::new(),
        }
    }

    /// Raises the verdict to `level` (never lowers it) and records `fact`.
    pub fn raise(&mut self, level: Level, fact: impl Into<String>) {
        self.status = self.status.max(level);
        self.evidence.push(fact.into());
    }

    pub fn note(&mut self, fact: impl Into<String>) {
        self.evidence.push(fact.into());
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Check {
        if self.status != Level::Pass {
            self.fix = fix.into();
        }
        self
    }
}

/// What the checks look at.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub hosts_dir: PathBuf,
    pub containerd_config: PathBuf,
    pub containerd_socket: PathBuf,
    /// containerd's root when given (`--containerd-root`); else from its config or the layout.
    pub containerd_root: Option<PathBuf>,
    /// Where the node's filesystem is (paths read from its config are taken under it).
    pub host_root: PathBuf,
    pub admin_socket: PathBuf,
    pub allowlist: Allowlist,
    /// URLs known to be Shoal's mirror (besides marked `[host]` tables).
    pub mirrors: Vec<String>,
    /// An ingest untouched for longer is stale.
    pub stale_after: Duration,
    /// Bound of each network or RPC probe.
    pub timeout: Duration,
    /// A mirror answering slower than this is reported slow.
    pub slow_after: Duration,
    /// Whether the defaults were Talos' (for the wording of fixes).
    pub talos: bool,
    /// The recognised layout (for defaults and the wording of fixes).
    pub layout: layout::Layout,
}

/// The node's overall state, and `shoal doctor`'s exit code for it (docs/doctor.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// No FAIL (WARN and SKIP allowed) and the daemon runs: exit 0.
    Healthy,
    /// At least one FAIL: a pull on this node fails, hangs or bypasses the allowlist: exit 1.
    Broken,
    /// No FAIL, but the daemon is not running on this node: pulls go upstream: exit 3.
    NoDaemon,
}

/// Exit codes; 2 is clap's for a bad command line.
pub const EXIT_HEALTHY: u8 = 0;
pub const EXIT_BROKEN: u8 = 1;
pub const EXIT_NO_DAEMON: u8 = 3;

fn verdict(s: &Summary, daemon: DaemonState) -> (Verdict, u8) {
    if s.fail > 0 {
        (Verdict::Broken, EXIT_BROKEN)
    } else if daemon == DaemonState::NotRunning {
        (Verdict::NoDaemon, EXIT_NO_DAEMON)
    } else {
        (Verdict::Healthy, EXIT_HEALTHY)
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub layout: layout::Layout,
    pub verdict: Verdict,
    /// What `shoal doctor` exits with.
    pub exit_code: u8,
    pub daemon: DaemonState,
    pub hosts_dir: PathBuf,
    pub containerd_config: PathBuf,
    pub containerd_socket: PathBuf,
    pub admin_socket: PathBuf,
    pub checks: Vec<Check>,
    pub summary: Summary,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub skip: usize,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.summary.fail > 0
    }
}

/// Runs every check, in the order of the runbook.
pub async fn run(inputs: &Inputs) -> Report {
    let files = hosts::scan(&inputs.hosts_dir, &inputs.mirrors);
    let cfg = config::ContainerdConfig::read(&inputs.containerd_config);
    let version = probe::containerd_version(&inputs.containerd_socket, inputs.timeout).await;
    let images = probe::node_images(&inputs.containerd_socket, inputs.timeout).await;
    let mut checks = vec![
        checks::default_catch_all(inputs, &files),
        checks::allowlisted_without_shoal(inputs, &files),
        checks::shoal_for_unlisted(inputs, &files),
        ingests::stale_ingests(inputs, &cfg),
        checks::config_path(inputs, &cfg, &version),
        checks::discard_unpacked(inputs, &cfg),
        checks::transfer_service(&cfg, &version),
    ];
    let (mirror, resolve, auth, speed, foreign, (daemon, daemon_state, daemon_list)) = tokio::join!(
        probe::mirror_reachable(inputs, &files),
        probe::hosts_resolve(inputs, &files),
        auth::registry_auth(inputs, &files, &cfg, &images),
        speed::mirror_speed(inputs, &files, &cfg, &images),
        foreign::foreign_mirrors(inputs, &files),
        probe::daemon_peers(inputs),
    );
    let drift = drift::daemon_allowlist(inputs, &files, daemon_list.as_deref());
    let bootstrap = bootstrap::bootstrap_loop(inputs, &files, &images);
    checks.extend([
        mirror, resolve, auth, speed, foreign, daemon, drift, bootstrap,
    ]);
    let mut summary = Summary::default();
    for c in &checks {
        match c.status {
            Level::Pass => summary.pass += 1,
            Level::Warn => summary.warn += 1,
            Level::Fail => summary.fail += 1,
            Level::Skip => summary.skip += 1,
        }
    }
    let (verdict, exit_code) = verdict(&summary, daemon_state);
    Report {
        layout: inputs.layout,
        verdict,
        exit_code,
        daemon: daemon_state,
        hosts_dir: inputs.hosts_dir.clone(),
        containerd_config: inputs.containerd_config.clone(),
        containerd_socket: inputs.containerd_socket.clone(),
        admin_socket: inputs.admin_socket.clone(),
        checks,
        summary,
    }
}

/// The human-readable report.
pub fn text(r: &Report, colour: bool) -> String {
    use crate::admin::render::paint;
    let mut out = format!(
        "shoal doctor ({} layout): hosts dir {}, containerd config {}, containerd socket {}, admin socket {}\n\n",
        r.layout.name(),
        r.hosts_dir.display(),
        r.containerd_config.display(),
        r.containerd_socket.display(),
        r.admin_socket.display()
    );
    for (i, c) in r.checks.iter().enumerate() {
        let code = match c.status {
            Level::Pass => "32",
            Level::Skip => "2",
            Level::Warn => "33",
            Level::Fail => "31",
        };
        out.push_str(&format!(
            "{}  {:>2}. {} [{}]\n",
            paint(c.status.label(), code, colour),
            i + 1,
            c.title,
            c.id
        ));
        for e in &c.evidence {
            out.push_str(&format!("          {e}\n"));
        }
        if !c.fix.is_empty() {
            out.push_str(&format!("          fix: {}\n", c.fix));
        }
    }
    let s = &r.summary;
    out.push_str(&format!(
        "\n{} pass, {} warn, {} fail, {} skip\n",
        s.pass, s.warn, s.fail, s.skip
    ));
    out.push_str(&match r.verdict {
        Verdict::Healthy => "verdict: healthy (exit 0)\n".to_owned(),
        Verdict::Broken => format!(
            "verdict: broken, {} check(s) failed (exit {EXIT_BROKEN})\n",
            s.fail
        ),
        Verdict::NoDaemon => format!(
            "verdict: the shoal daemon is not running on this node; pulls go upstream (exit {EXIT_NO_DAEMON})\n"
        ),
    });
    out
}
