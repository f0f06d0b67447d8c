//! Small helpers to run external tools (`ip`, `ctr`, `skopeo`, ...) and to turn their failures
//! into messages that say what was run and what it printed, so a red test explains itself.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

/// Render a command line for error messages.
pub(crate) fn render(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Run a command to completion, capturing its output. A spawn failure (binary missing) becomes
/// an `Output`-less error string.
pub(crate) fn output(program: &str, args: &[&str]) -> Result<Output, String> {
    Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("could not run `{}`: {e}", render(program, args)))
}

/// Run a command and require exit status 0; the error carries stdout and stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<Output, String> {
    let out = output(program, args)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(describe_failure(&render(program, args), &out))
    }
}

/// Like [`run`] but panics with the failure description; for rig plumbing that must work.
pub(crate) fn must(program: &str, args: &[&str]) -> Output {
    run(program, args).unwrap_or_else(|e| panic!("shoal rig: {e}"))
}

/// A one-paragraph description of a failed command.
pub(crate) fn describe_failure(cmdline: &str, out: &Output) -> String {
    format!(
        "`{cmdline}` failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// The last `lines` lines of a text file (or a note that it could not be read).
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let mut s = format!(
                "--- last {} lines of {} ---\n",
                all.len() - start,
                path.display()
            );
            for l in &all[start..] {
                s.push_str(l);
                s.push('\n');
            }
            s
        }
        Err(e) => format!("--- {} unreadable: {e} ---\n", path.display()),
    }
}

/// Poll `check` every `every` until it returns true or `timeout` passes; true on success.
pub(crate) fn wait_until(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}

/// True when `name` resolves to an executable on `PATH` (or is an existing path).
pub(crate) fn on_path(name: &str) -> bool {
    if name.contains('/') {
        return Path::new(name).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}
