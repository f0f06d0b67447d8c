//! Plain-text output shared by the debugging commands: aligned tables, human sizes and ages,
//! and colour only when stdout is a terminal (and `NO_COLOR` is unset).

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::Duration;

/// A table with a header row; columns are padded to their widest cell.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let mut width: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(visible_len(c));
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate().take(cols) {
                if i + 1 == cols {
                    l.push_str(c);
                } else {
                    let pad = width[i].saturating_sub(visible_len(c));
                    let _ = write!(l, "{c}{}  ", " ".repeat(pad));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&self.headers);
        for r in &self.rows {
            line(r);
        }
        out
    }
}

/// Length without ANSI colour sequences.
fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for ch in s.chars() {
        match (in_escape, ch) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// Whether to colour stdout.
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// `text` in an ANSI colour (`"32"` green, `"33"` yellow, `"31"` red) when `on`.
pub fn paint(text: &str, code: &str, on: bool) -> String {
    if on {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// `1.5 MiB`, `349 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A compact age or duration: `850ms`, `12s`, `3m4s`, `2h5m`, `3d4h`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Milliseconds as [`age`].
pub fn age_ms(ms: u64) -> String {
    age(Duration::from_millis(ms))
}

/// A local time stamp for epoch milliseconds (UTC, RFC 3339, second precision).
pub fn timestamp(epoch_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(epoch_ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_ignores_colour_codes() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["xxxx".into(), "1".into()]);
        t.row(vec![paint("y", "31", true), "2".into()]);
        assert_eq!(
            t.render(),
            "A     LONGER\nxxxx  1\n\x1b[31my\x1b[0m     2\n"
        );
    }

    #[test]
    fn humanises_sizes_and_ages() {
        assert_eq!(bytes(349), "349 B");
        assert_eq!(bytes(1_051_286), "1.0 MiB");
        assert_eq!(age(Duration::from_millis(850)), "850ms");
        assert_eq!(age(Duration::from_secs(184)), "3m4s");
        assert_eq!(age(Duration::from_secs(7500)), "2h5m");
        assert_eq!(age(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d4h");
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
    }
}
