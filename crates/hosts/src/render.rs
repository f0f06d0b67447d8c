//! Human-readable plans: one line per registry directory and, for `--dry-run`, a unified diff
//! of each hosts.toml that would change.

use std::fmt::{self, Write as _};

use similar::TextDiff;

use crate::plan::{Action, Op, Plan};

impl Action {
    fn sigil(self) -> char {
        match self {
            Action::Create => '+',
            Action::Update => '~',
            Action::Unchanged => '=',
            Action::Restore => '<',
            Action::Remove => '-',
        }
    }
}

impl Plan {
    /// The plan as text; with `diffs`, each changed hosts.toml is followed by its diff.
    pub fn render(&self, diffs: bool) -> String {
        let mut out = String::new();
        let width = self.dirs.iter().map(|d| d.dir.len()).max().unwrap_or(0);
        for d in &self.dirs {
            let _ = writeln!(out, "{} {:width$}  {}", d.action.sigil(), d.dir, d.detail);
            if !diffs || d.ops.is_empty() {
                continue;
            }
            let before = d.before.as_deref().unwrap_or("");
            let after = d.after.as_deref().unwrap_or("");
            if before == after {
                continue;
            }
            let old = format!("a/{}/hosts.toml", d.dir);
            let new = format!("b/{}/hosts.toml", d.dir);
            let old = if d.before.is_some() {
                old.as_str()
            } else {
                "/dev/null"
            };
            let new = if d.after.is_some() {
                new.as_str()
            } else {
                "/dev/null"
            };
            let diff = TextDiff::from_lines(before, after);
            for line in diff
                .unified_diff()
                .context_radius(3)
                .header(old, new)
                .to_string()
                .lines()
            {
                let _ = writeln!(out, "    {line}");
            }
        }
        for op in &self.cleanup {
            if let Op::RemoveStale { path } = op {
                let _ = writeln!(out, "- leftover of an interrupted run: {}", path.display());
            }
        }
        out
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}
