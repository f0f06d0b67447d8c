//! Cross-thread and cross-process allocation of rig resources: the concurrency gate and the
//! per-rig test subnet.
//!
//! Tests run as threads of one process and `cargo test` may run several test binaries at once, so
//! every claim is a lock file under [`LOCK_DIR`] created with `O_EXCL` and naming its owner by
//! PID and process start time (PIDs alone are reused). A short `flock`-protected critical section
//! serialises scanning and claiming, so two processes can never both take over the same stale
//! file. A rig that died without tearing down (SIGKILL) leaves its lock file behind: the next
//! claimer of that subnet kills the processes it recorded, deletes its namespaces and route, and
//! removes its directory before reusing the subnet.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cmd;

/// Where every rig lock lives (tmpfs on a normal system, so a reboot clears it).
pub(crate) const LOCK_DIR: &str = "/run/shoal-rig";
/// First two octets of every rig subnet: rig `n` owns `10.213.n.0/24`.
pub(crate) const SUBNET_PREFIX: &str = "10.213";
/// Default number of rigs allowed to run at the same time (2 cores).
const DEFAULT_PARALLEL: u32 = 2;

/// A process identity that survives PID reuse: PID plus start time in clock ticks since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcId {
    pub(crate) pid: i32,
    start: u64,
}

impl ProcId {
    /// Identity of a live process, `None` if it does not exist (or is a zombie being reaped).
    pub(crate) fn of(pid: i32) -> Option<ProcId> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        // Fields after the name start at field 3 (state); starttime is field 22.
        let start = rest.split_whitespace().nth(19)?.parse().ok()?;
        Some(ProcId { pid, start })
    }

    pub(crate) fn me() -> ProcId {
        ProcId::of(std::process::id() as i32).expect("/proc/self/stat is readable")
    }

    pub(crate) fn alive(&self) -> bool {
        ProcId::of(self.pid) == Some(*self)
    }

    fn render(&self) -> String {
        format!("{} {}", self.pid, self.start)
    }

    fn parse(s: &str) -> Option<ProcId> {
        let mut it = s.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start = it.next()?.parse().ok()?;
        Some(ProcId { pid, start })
    }
}

/// Holds the global allocation lock for the duration of a scan-and-claim.
fn critical_section() -> Flock<File> {
    fs::create_dir_all(LOCK_DIR)
        .unwrap_or_else(|e| panic!("shoal rig: cannot create {LOCK_DIR}: {e}"));
    let path = Path::new(LOCK_DIR).join("alloc.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("shoal rig: cannot open {}: {e}", path.display()));
    Flock::lock(file, FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("shoal rig: flock {}: {e}", path.display()))
}

enum Claim {
    Ours,
    Busy,
    /// The file belongs to a dead owner; its contents are returned for cleanup.
    Stale(String),
}

/// Must be called inside [`critical_section`].
fn try_claim(path: &Path) -> Claim {
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(mut f) => {
            writeln!(f, "owner {}", ProcId::me().render())
                .unwrap_or_else(|e| panic!("shoal rig: write {}: {e}", path.display()));
            Claim::Ours
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let content = fs::read_to_string(path).unwrap_or_default();
            let owner = content
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("owner "))
                .and_then(ProcId::parse);
            match owner {
                Some(o) if o.alive() => Claim::Busy,
                // Written inside the critical section, so unparsable means the writer crashed.
                _ => Claim::Stale(content),
            }
        }
        Err(e) => panic!("shoal rig: cannot create {}: {e}", path.display()),
    }
}

/// A claimed lock file; removed on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    path: PathBuf,
    pub(crate) index: u32,
}

impl Slot {
    /// Append a record (`pid <pid> <start>` or `dir <path>`) used to clean up after a crash.
    pub(crate) fn record(&self, line: &str) {
        if let Ok(mut f) = OpenOptions::new().append(true).open(&self.path) {
            let _ = writeln!(f, "{line}");
        }
    }

    pub(crate) fn record_pid(&self, id: ProcId) {
        self.record(&format!("pid {}", id.render()));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// How many rigs may run at once (`SHOAL_RIG_PARALLEL`, default 2).
fn parallelism() -> u32 {
    match std::env::var("SHOAL_RIG_PARALLEL") {
        Ok(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("SHOAL_RIG_PARALLEL={v:?}: expected a positive integer")),
        Err(_) => DEFAULT_PARALLEL,
    }
}

/// Block until this rig may run. Rigs in this and other processes share the same slots.
pub(crate) fn acquire_gate() -> Slot {
    let parallel = parallelism();
    let mut announced = false;
    loop {
        {
            let _cs = critical_section();
            for k in 0..parallel {
                let path = Path::new(LOCK_DIR).join(format!("gate-{k}.lock"));
                match try_claim(&path) {
                    Claim::Ours => return Slot { path, index: k },
                    Claim::Busy => {}
                    Claim::Stale(_) => {
                        let _ = fs::remove_file(&path);
                        if let Claim::Ours = try_claim(&path) {
                            return Slot { path, index: k };
                        }
                    }
                }
            }
        }
        if !announced {
            eprintln!("shoal rig: {parallel} rig(s) already running (SHOAL_RIG_PARALLEL); waiting");
            announced = true;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The subnet `10.213.<n>.0/24` of slot `n`.
pub(crate) fn subnet_of(n: u32) -> String {
    format!("{SUBNET_PREFIX}.{n}.0/24")
}

/// True when the host already routes (part of) the subnet somewhere other than its default
/// route; such a subnet is in real use and must not be shadowed by our unreachable route.
fn host_uses(subnet: &str) -> bool {
    let out = cmd::must("ip", &["-4", "route", "show", "match", subnet]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| !l.trim().is_empty() && !l.starts_with("default"))
}

/// Claim a free subnet index in 1..=254, cleaning up after dead rigs on the way.
pub(crate) fn acquire_subnet() -> Slot {
    let _cs = critical_section();
    for n in 1..=254u32 {
        let path = Path::new(LOCK_DIR).join(format!("subnet-{n}.lock"));
        let claimed = match try_claim(&path) {
            Claim::Ours => true,
            Claim::Busy => false,
            Claim::Stale(content) => {
                cleanup_dead_rig(n, &content);
                let _ = fs::remove_file(&path);
                matches!(try_claim(&path), Claim::Ours)
            }
        };
        if !claimed {
            continue;
        }
        if host_uses(&subnet_of(n)) {
            let _ = fs::remove_file(&path);
            continue;
        }
        return Slot { path, index: n };
    }
    panic!("shoal rig: no free test subnet in {SUBNET_PREFIX}.1-254.0/24 (see {LOCK_DIR})");
}

/// Undo what a rig that died without teardown left behind, using the records in its lock file.
fn cleanup_dead_rig(n: u32, records: &str) {
    eprintln!(
        "shoal rig: cleaning up after a dead rig on {}",
        subnet_of(n)
    );
    for line in records.lines() {
        if let Some(id) = line.strip_prefix("pid ").and_then(ProcId::parse)
            && id.alive()
        {
            let _ = kill(Pid::from_raw(id.pid), Signal::SIGKILL);
        }
    }
    // Give the kernel a moment to reap killed processes before their namespaces go.
    thread::sleep(Duration::from_millis(100));
    let prefix = format!("shoal-{n}-");
    if let Ok(out) = cmd::output("ip", &["netns", "list"]) {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(&prefix) {
                let _ = cmd::output("ip", &["netns", "del", name]);
            }
        }
    }
    let subnet = subnet_of(n);
    let _ = cmd::output("ip", &["route", "del", "unreachable", &subnet]);
    for line in records.lines() {
        if let Some(dir) = line.strip_prefix("dir ") {
            let dir = Path::new(dir);
            // Only ever delete what a rig created: its own directory under the temp dir.
            let ours = dir
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with("shoal-rig-"));
            if ours && dir.starts_with(std::env::temp_dir()) {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_pid() -> ProcId {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcId::of(child.id() as i32).unwrap();
        child.wait().unwrap();
        id
    }

    #[test]
    fn claims_detect_live_and_dead_owners() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        assert!(matches!(try_claim(&path), Claim::Ours));
        assert!(
            matches!(try_claim(&path), Claim::Busy),
            "we are alive: busy"
        );
        fs::write(&path, format!("owner {}\npid 1 2\n", dead_pid().render())).unwrap();
        match try_claim(&path) {
            Claim::Stale(content) => assert!(content.contains("pid 1 2")),
            _ => panic!("a dead owner must make the claim stale"),
        }
        fs::write(&path, "").unwrap();
        assert!(
            matches!(try_claim(&path), Claim::Stale(_)),
            "unparsable owner is stale"
        );
    }

    #[test]
    fn proc_id_tells_reused_pids_apart() {
        let me = ProcId::me();
        assert!(me.alive());
        assert!(
            !ProcId {
                pid: me.pid,
                start: me.start + 1
            }
            .alive()
        );
        assert!(!dead_pid().alive());
    }

    /// Needs root (as the whole suite does): leftovers of a SIGKILLed rig are removed.
    #[test]
    fn leftovers_of_a_dead_rig_are_cleaned_up() {
        let n = 254;
        let path = Path::new(LOCK_DIR).join(format!("subnet-{n}.lock"));
        // Claim subnet 254 for real so no concurrent rig uses it meanwhile.
        let slot = loop {
            {
                let _cs = critical_section();
                match try_claim(&path) {
                    Claim::Ours => {
                        break Slot {
                            path: path.clone(),
                            index: n,
                        };
                    }
                    Claim::Stale(c) => {
                        cleanup_dead_rig(n, &c);
                        let _ = fs::remove_file(&path);
                    }
                    Claim::Busy => {}
                }
            }
            thread::sleep(Duration::from_millis(200));
        };
        let subnet = subnet_of(n);
        let ns = format!("shoal-{n}-n1");
        cmd::must("ip", &["route", "add", "unreachable", &subnet]);
        cmd::must("ip", &["netns", "add", &ns]);
        let dir = std::env::temp_dir().join(format!("shoal-rig-{n}-leftover"));
        fs::create_dir_all(dir.join("sub")).unwrap();
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "sleep", "600"])
            .spawn()
            .unwrap();
        let id = ProcId::of(child.id() as i32).unwrap();
        let records = format!(
            "owner {}\npid {}\ndir {}\n",
            dead_pid().render(),
            id.render(),
            dir.display()
        );

        cleanup_dead_rig(n, &records);

        assert!(
            child.wait().is_ok_and(|s| !s.success()),
            "recorded process must be killed"
        );
        let routes =
            String::from_utf8_lossy(&cmd::must("ip", &["route", "show"]).stdout).into_owned();
        assert!(!routes.contains(&subnet), "route left: {routes}");
        let list =
            String::from_utf8_lossy(&cmd::must("ip", &["netns", "list"]).stdout).into_owned();
        assert!(!list.contains(&ns), "netns left: {list}");
        assert!(!dir.exists());
        drop(slot);
        assert!(!path.exists());
    }
}
