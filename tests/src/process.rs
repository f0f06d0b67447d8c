//! Processes the rig starts inside a namespace (registry, containerd, daemons under test): output
//! goes to a log file in the rig directory, the PID is recorded for crash cleanup, and they are
//! stopped by PID (SIGTERM, then SIGKILL after a grace period), never by name.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::alloc::{ProcId, Slot};
use crate::cmd;

/// A child started with `ip netns exec <ns> <program> <args…>`. `ip netns exec` execs the
/// program, so the child's PID is the program's PID.
#[derive(Debug)]
pub(crate) struct Managed {
    name: String,
    child: Child,
    log: PathBuf,
    exited: bool,
}

impl Managed {
    pub(crate) fn spawn(
        slot: &Slot,
        name: &str,
        netns: &str,
        program: &Path,
        args: &[&str],
        log: &Path,
    ) -> Managed {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("shoal rig: cannot open log {}: {e}", log.display()));
        let err = file
            .try_clone()
            .unwrap_or_else(|e| panic!("shoal rig: dup log fd: {e}"));
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "shoal rig: cannot start {name} ({}) in {netns}: {e}",
                    program.display()
                )
            });
        if let Some(id) = ProcId::of(child.id() as i32) {
            slot.record_pid(id);
        }
        Managed {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            exited: false,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// True while the process has not exited.
    pub(crate) fn running(&mut self) -> bool {
        if self.exited {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(_)) | Err(_) => {
                self.exited = true;
                false
            }
            Ok(None) => true,
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Idempotent.
    pub(crate) fn stop(&mut self, grace: Duration) {
        if !self.running() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let mut done = cmd::wait_until(grace, Duration::from_millis(20), || {
            matches!(self.child.try_wait(), Ok(Some(_)) | Err(_))
        });
        if !done {
            let _ = kill(pid, Signal::SIGKILL);
            done = self.child.wait().is_ok();
        }
        if !done {
            eprintln!("shoal rig: {} (pid {pid}) did not exit", self.name);
        }
        self.exited = true;
    }

    /// Panic message helper: what failed plus the tail of this process's log.
    pub(crate) fn failure(&self, what: &str) -> String {
        format!(
            "{what} ({} pid {})\n{}",
            self.name,
            self.child.id(),
            cmd::tail(&self.log, 40)
        )
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// A process started with [`crate::Node::spawn`]. Killed when this handle is dropped, and in any
/// case when the rig is torn down.
#[derive(Debug)]
#[must_use = "dropping a Process kills it"]
pub struct Process {
    inner: Arc<Mutex<Managed>>,
    pid: u32,
    log: PathBuf,
}

impl Process {
    pub(crate) fn new(inner: Arc<Mutex<Managed>>) -> Process {
        let (pid, log) = {
            let m = inner.lock().unwrap_or_else(|p| p.into_inner());
            (m.pid(), m.log_path().to_path_buf())
        };
        Process { inner, pid, log }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stop the process (SIGTERM, SIGKILL after 3 s). Idempotent.
    pub fn kill(&self) {
        self.lock().stop(Duration::from_secs(3));
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        self.lock().running()
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Wait until the log contains `needle`. The error names the process, says whether it
    /// exited, and carries the log tail.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        let mut exited = false;
        cmd::wait_until(timeout, Duration::from_millis(50), || {
            if self.log().contains(needle) {
                return true;
            }
            // Stop waiting once the process is gone; the final check below rereads the log.
            exited = !self.is_running();
            exited
        });
        if self.log().contains(needle) {
            return Ok(());
        }
        Err(format!(
            "{:?} did not appear in the log of pid {} within {timeout:?}{}\n{}",
            needle,
            self.pid,
            if exited { " (the process exited)" } else { "" },
            cmd::tail(&self.log, 40)
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Managed> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
