//! Editing one hosts.toml while keeping everything that is not Shoal's: parse with `toml_edit`
//! (comments and formatting survive), find Shoal's `[host]` tables by their marker comment,
//! remove them, and insert fresh ones *above* every existing `[host]` table.
//!
//! Order matters because containerd 1.6 sorts `[host]` entries by their line number in the file,
//! not by map order: Shoal's tables must physically come first.

use std::path::Path;

use toml_edit::{Array, Decor, DocumentMut, InlineTable, Item, Key, Table, Value};

use crate::HostsError;
use crate::settings::{Settings, go_duration, upstream_server};

/// The comment line that marks a `[host]` table as Shoal's. Anything without it is someone
/// else's and is never modified or removed.
pub const MARKER: &str = "# shoal-managed:";
const MARKER_LINE: &str =
    "# shoal-managed: Shoal's mirror, kept first by `shoal configure`; removed by --uninstall.";
const NEW_FILE_HEADER: &str = "# Written by `shoal configure` (no hosts.toml existed here);\n\
# `shoal configure --uninstall` deletes this file. Entries you add below are kept.\n";

/// A parsed hosts.toml that Shoal may edit.
#[derive(Debug, Clone)]
pub(crate) struct HostsDoc {
    doc: DocumentMut,
}

impl HostsDoc {
    /// Parses `bytes` (the contents of `path`) and checks the layout is one Shoal can edit
    /// without changing what containerd reads from the rest of the file.
    pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Self, HostsError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let (line, column) = line_col(bytes, e.valid_up_to());
            HostsError::Malformed {
                path: path.to_owned(),
                line,
                column,
                message: "not valid UTF-8".to_owned(),
            }
        })?;
        let parsed = toml_edit::Document::parse(text.to_owned()).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_col(text.as_bytes(), s.start))
                .unwrap_or((1, 1));
            HostsError::Malformed {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        let unsupported = |item: &Item, reason: &str| {
            let (line, column) = item
                .span()
                .map(|s| line_col(text.as_bytes(), s.start))
                .unwrap_or((1, 1));
            HostsError::Unsupported {
                path: path.to_owned(),
                line,
                column,
                reason: reason.to_owned(),
            }
        };
        if let Some(host) = parsed.as_table().get("host") {
            let Some(t) = host.as_table() else {
                return Err(unsupported(
                    host,
                    "`host` must be written as [host.\"…\"] tables, not an inline table or value",
                ));
            };
            if t.is_dotted() {
                return Err(unsupported(
                    host,
                    "`host` entries written as dotted keys are not supported; use [host.\"…\"] tables",
                ));
            }
            for (_, child) in t.iter() {
                if !child.is_table() {
                    return Err(unsupported(
                        child,
                        "`host` entries must be [host.\"…\"] tables, not inline tables or values",
                    ));
                }
            }
        }
        Ok(HostsDoc {
            doc: parsed.into_mut(),
        })
    }

    /// A new hosts.toml for `registry` (`None`: `_default`, which has no `server`, so each
    /// registry falls back to itself). `certs` are Docker-layout cert files already in the
    /// directory: containerd stops reading them once a hosts.toml exists, so they are listed
    /// explicitly for the upstream to keep their effect.
    pub(crate) fn new_file(registry: Option<&str>, plain_http: bool, certs: &CertFiles) -> Self {
        let mut doc = DocumentMut::new();
        let mut first = true;
        let mut put = |doc: &mut DocumentMut, key: &str, value: Value| {
            let prefix = if first { NEW_FILE_HEADER } else { "" };
            first = false;
            let key = Key::new(key).with_leaf_decor(Decor::new(prefix, " "));
            doc.as_table_mut()
                .insert_formatted(&key, Item::Value(value.decorated(" ", "")));
        };
        if let Some(r) = registry {
            put(
                &mut doc,
                "server",
                Value::from(upstream_server(r, plain_http)),
            );
        }
        if !certs.ca.is_empty() {
            put(&mut doc, "ca", Value::Array(certs.ca.iter().collect()));
        }
        if !certs.client.is_empty() {
            let pairs: Array = certs
                .client
                .iter()
                .map(|(c, k)| match k {
                    Some(k) => Value::Array([c, k].into_iter().collect()),
                    None => Value::from(c.as_str()),
                })
                .collect();
            put(&mut doc, "client", Value::Array(pairs));
        }
        if first {
            // Nothing above the tables: the header comment goes on the first Shoal table.
            doc.decor_mut().set_prefix(NEW_FILE_HEADER);
        }
        HostsDoc { doc }
    }

    pub(crate) fn render(&self) -> String {
        self.doc.to_string()
    }

    fn hosts(&self) -> Option<&Table> {
        self.doc.get("host").and_then(Item::as_table)
    }

    /// Keys of the `[host]` tables in file order, with whether each is Shoal's.
    pub(crate) fn host_entries(&self) -> Vec<(String, bool)> {
        let Some(hosts) = self.hosts() else {
            return Vec::new();
        };
        let mut v: Vec<(isize, String, bool)> = hosts
            .iter()
            .filter_map(|(k, item)| {
                let t = item.as_table()?;
                let key = hosts.key(k)?;
                Some((
                    t.position().unwrap_or(isize::MAX),
                    k.to_owned(),
                    is_shoal(key, t),
                ))
            })
            .collect();
        v.sort_by_key(|(pos, _, _)| *pos);
        v.into_iter().map(|(_, k, s)| (k, s)).collect()
    }

    pub(crate) fn shoal_count(&self) -> usize {
        self.host_entries().iter().filter(|(_, s)| *s).count()
    }

    pub(crate) fn foreign_count(&self) -> usize {
        self.host_entries().iter().filter(|(_, s)| !*s).count()
    }

    /// Removes Shoal's `[host]` tables and returns them (key and table, in file order).
    pub(crate) fn strip(&mut self) -> Vec<(Key, Table)> {
        let shoal: Vec<String> = self
            .host_entries()
            .into_iter()
            .filter(|(_, s)| *s)
            .map(|(k, _)| k)
            .collect();
        let first_is_shoal = self.doc.as_table().get_values().is_empty()
            && self.hosts().is_some_and(Table::is_implicit)
            && self.host_entries().first().is_some_and(|(_, s)| *s);
        let Some(hosts) = self.doc.get_mut("host").and_then(Item::as_table_mut) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for k in shoal {
            if let Some((key, Item::Table(t))) = hosts.remove_entry(&k) {
                out.push((key, t));
            }
        }
        // With nothing above it, a file's leading comment is parsed into the first table's
        // decor; when that table is Shoal's, keep the comment at the top of the document.
        if first_is_shoal {
            if let Some(lead) = out.first().map(|(_, t)| leading_comment(t)) {
                if !lead.is_empty() {
                    let cur = self
                        .doc
                        .decor()
                        .prefix()
                        .and_then(|p| p.as_str())
                        .unwrap_or("")
                        .to_owned();
                    self.doc.decor_mut().set_prefix(format!("{cur}{lead}"));
                }
            }
        }
        out
    }

    /// The Shoal tables for `settings`, skipping mirror URLs that a foreign `[host]` table
    /// already lists (returned second: the existing entry stays, and stays someone else's).
    pub(crate) fn shoal_tables(&self, settings: &Settings) -> (Vec<(Key, Table)>, Vec<String>) {
        let existing: Vec<String> = self.host_entries().into_iter().map(|(k, _)| k).collect();
        let mut tables = Vec::new();
        let mut collisions = Vec::new();
        for m in &settings.mirrors {
            let url = m.url.as_str();
            if existing.iter().any(|k| k.trim_end_matches('/') == url) {
                collisions.push(url.to_owned());
                continue;
            }
            let mut t = Table::new();
            let mut put = |k: &str, v: Value| {
                let key = Key::new(k).with_leaf_decor(Decor::new("  ", " "));
                t.insert_formatted(&key, Item::Value(v.decorated(" ", "")));
            };
            let caps: Array = settings.capabilities().iter().copied().collect();
            put("capabilities", Value::Array(caps));
            if let Some(d) = settings.dial_timeout {
                put("dial_timeout", Value::from(go_duration(d)));
            }
            if !m.headers.is_empty() {
                let mut h = InlineTable::new();
                for (name, value) in &m.headers {
                    h.insert(name, Value::from(value.as_str()));
                }
                put("header", Value::InlineTable(h));
            }
            tables.push((Key::new(url), t));
        }
        (tables, collisions)
    }

    /// Inserts `tables` (Shoal's, already stripped from this document) above every existing
    /// `[host]` table, in the given order, with the marker comment.
    pub(crate) fn insert_first(&mut self, tables: Vec<(Key, Table)>) {
        if tables.is_empty() {
            return;
        }
        let root_has_values = !self.doc.as_table().get_values().is_empty();
        let n = tables.len() as isize;
        // Make room right before the first existing [host."…"] table: every table from there on
        // (whatever its path) moves down by `n`, so an explicit `[host]` header stays above.
        let first = self.hosts().and_then(|h| {
            h.iter()
                .filter_map(|(_, i)| i.as_table().and_then(Table::position))
                .min()
        });
        let start = match first {
            Some(p) => {
                shift_positions(self.doc.as_table_mut(), p, n);
                p
            }
            None => max_position(self.doc.as_table()) + 1,
        };
        if !self.doc.contains_key("host") {
            let mut t = Table::new();
            t.set_implicit(true);
            self.doc.insert("host", Item::Table(t));
        }
        let hosts = self
            .doc
            .get_mut("host")
            .and_then(Item::as_table_mut)
            .expect("host is a table (checked when parsed)");
        // The first foreign table now follows a Shoal table: give it a blank line above.
        let first_foreign = hosts
            .iter_mut()
            .filter_map(|(_, i)| i.as_table_mut())
            .min_by_key(|t| t.position().unwrap_or(isize::MAX));
        if let Some(t) = first_foreign {
            let prefix = t.decor().prefix().and_then(|p| p.as_str()).unwrap_or("");
            if !prefix.starts_with('\n') {
                let p = format!("\n{prefix}");
                t.decor_mut().set_prefix(p);
            }
        }
        for (i, (key, mut table)) in tables.into_iter().enumerate() {
            let i = i as isize;
            let blank = if i > 0 || root_has_values { "\n" } else { "" };
            table
                .decor_mut()
                .set_prefix(format!("{blank}{MARKER_LINE}\n"));
            table.decor_mut().set_suffix("");
            table.set_position(Some(start + i));
            let key = Key::new(key.get());
            hosts.insert_formatted(&key, Item::Table(table));
        }
    }
}

fn shift_positions(t: &mut Table, from: isize, by: isize) {
    if let Some(p) = t.position().filter(|p| *p >= from) {
        t.set_position(Some(p + by));
    }
    for (_, item) in t.iter_mut() {
        match item {
            Item::Table(c) => shift_positions(c, from, by),
            Item::ArrayOfTables(a) => a.iter_mut().for_each(|c| shift_positions(c, from, by)),
            _ => {}
        }
    }
}

fn max_position(t: &Table) -> isize {
    let mut m = t.position().unwrap_or(0);
    for (_, item) in t.iter() {
        let c = match item {
            Item::Table(c) => max_position(c),
            Item::ArrayOfTables(a) => a.iter().map(max_position).max().unwrap_or(0),
            _ => 0,
        };
        m = m.max(c);
    }
    m
}

/// The part of a Shoal table's leading decor above its marker line, without blank lines.
fn leading_comment(t: &Table) -> String {
    let prefix = t.decor().prefix().and_then(|p| p.as_str()).unwrap_or("");
    let mut out = String::new();
    for line in prefix.lines() {
        if line.trim_start().starts_with(MARKER) {
            break;
        }
        if !line.trim().is_empty() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn is_shoal(key: &toml_edit::Key, t: &Table) -> bool {
    let has = |d: &Decor| {
        d.prefix()
            .and_then(|p| p.as_str())
            .is_some_and(|p| p.lines().any(|l| l.trim_start().starts_with(MARKER)))
    };
    has(t.decor()) || has(key.leaf_decor())
}

/// Docker-layout certificate files found in a host directory (names relative to it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CertFiles {
    pub ca: Vec<String>,
    pub client: Vec<(String, Option<String>)>,
}

impl CertFiles {
    /// The files containerd's certificate-directory fallback would load, from sorted names.
    pub(crate) fn from_names(names: &[String]) -> Self {
        let mut c = CertFiles::default();
        for n in names {
            if n.ends_with(".crt") {
                c.ca.push(n.clone());
            }
            if let Some(stem) = n.strip_suffix(".cert") {
                let key = format!("{stem}.key");
                let key = names.contains(&key).then_some(key);
                c.client.push((n.clone(), key));
            }
        }
        c
    }
}

/// 1-based line and column of a byte offset.
fn line_col(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{MirrorHost, Settings};
    use shoal_oci::Allowlist;

    fn settings(urls: &[&str]) -> Settings {
        Settings {
            mirrors: urls
                .iter()
                .map(|u| MirrorHost::new(u.parse().unwrap()))
                .collect(),
            allowlist: Allowlist::default(),
            resolve_tags: true,
            dial_timeout: None,
        }
    }

    fn merged(input: &str, s: &Settings) -> String {
        let mut d = HostsDoc::parse(Path::new("x/hosts.toml"), input.as_bytes()).unwrap();
        d.strip();
        let (t, _) = d.shoal_tables(s);
        d.insert_first(t);
        d.render()
    }

    #[test]
    fn prepends_and_keeps_comments() {
        let input = "# Talos\nserver = \"https://harbor\"\n\n# internal\n[host.\"http://harbor.svc\"]\n  capabilities = [\"pull\", \"resolve\"] # keep\n  skip_verify = true\n";
        let out = merged(input, &settings(&["http://127.0.0.1:5000"]));
        let shoal = out.find("[host.\"http://127.0.0.1:5000\"]").unwrap();
        let theirs = out.find("[host.\"http://harbor.svc\"]").unwrap();
        assert!(shoal < theirs, "{out}");
        assert!(out.contains("# internal\n[host.\"http://harbor.svc\"]\n  capabilities = [\"pull\", \"resolve\"] # keep\n  skip_verify = true\n"), "{out}");
        assert!(
            out.starts_with("# Talos\nserver = \"https://harbor\"\n"),
            "{out}"
        );
        // Idempotent on its own output.
        assert_eq!(merged(&out, &settings(&["http://127.0.0.1:5000"])), out);
    }

    #[test]
    fn strip_finds_only_marked_tables() {
        let out = merged(
            "[host.\"http://a\"]\n  capabilities = [\"pull\"]\n",
            &settings(&["http://127.0.0.1:5000", "http://10.0.0.1:5000"]),
        );
        let mut d = HostsDoc::parse(Path::new("h"), out.as_bytes()).unwrap();
        let entries = d.host_entries();
        assert_eq!(
            entries,
            vec![
                ("http://127.0.0.1:5000".to_owned(), true),
                ("http://10.0.0.1:5000".to_owned(), true),
                ("http://a".to_owned(), false)
            ]
        );
        assert_eq!(d.strip().len(), 2);
        assert_eq!(d.host_entries(), vec![("http://a".to_owned(), false)]);
    }

    #[test]
    fn collision_with_foreign_entry_is_not_taken_over() {
        let d = HostsDoc::parse(
            Path::new("h"),
            b"[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\"]\n",
        )
        .unwrap();
        let (t, c) = d.shoal_tables(&settings(&["http://127.0.0.1:5000"]));
        assert!(t.is_empty());
        assert_eq!(c, vec!["http://127.0.0.1:5000".to_owned()]);
    }

    #[test]
    fn malformed_names_line_and_column() {
        let e = HostsDoc::parse(
            Path::new("/d/quay.io/hosts.toml"),
            b"server = \"x\"\n[host.\"a\"\ncapabilities = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/d/quay.io/hosts.toml:2:"), "{e}");
        let e = HostsDoc::parse(
            Path::new("f"),
            b"host = { \"http://a\" = { capabilities = [\"pull\"] } }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("f:1:") && e.contains("inline"), "{e}");
        let e = HostsDoc::parse(Path::new("f"), b"a = 1\n\xff\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f:2:1") && e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn cert_files_follow_containerd_fallback() {
        let names: Vec<String> = [
            "ca.crt",
            "client.cert",
            "client.key",
            "other.cert",
            "README",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let c = CertFiles::from_names(&names);
        assert_eq!(c.ca, vec!["ca.crt"]);
        assert_eq!(
            c.client,
            vec![
                ("client.cert".to_owned(), Some("client.key".to_owned())),
                ("other.cert".to_owned(), None)
            ]
        );
    }
}
