//! Helpers shared by the hosts-directory tests: copying and reading whole trees, and settings.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use shoal_hosts::{MirrorHost, Settings};
use shoal_oci::Allowlist;

/// Every entry under `root`: directories map to `None`, files to their bytes.
pub fn read_tree(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            out.insert(rel, None);
            walk(root, &p, out);
        } else {
            out.insert(rel, Some(fs::read(&p).unwrap()));
        }
    }
}

pub fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    if !src.exists() {
        return;
    }
    for e in fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let to = dst.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_tree(&p, &to);
        } else {
            fs::copy(&p, &to).unwrap();
        }
    }
}

/// Renders a tree difference readably for assertion messages.
pub fn tree_diff(
    got: &BTreeMap<String, Option<Vec<u8>>>,
    want: &BTreeMap<String, Option<Vec<u8>>>,
) -> String {
    let mut s = String::new();
    for (k, v) in want {
        match got.get(k) {
            None => s.push_str(&format!("missing: {k}\n")),
            Some(g) if g != v => s.push_str(&format!(
                "differs: {k}\n--- want\n{}\n--- got\n{}\n",
                v.as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default(),
                g.as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
            )),
            _ => {}
        }
    }
    for k in got.keys() {
        if !want.contains_key(k) {
            s.push_str(&format!("unexpected: {k}\n"));
        }
    }
    s
}

pub fn settings(mirrors: &[&str], registries: &str) -> Settings {
    Settings {
        mirrors: mirrors
            .iter()
            .map(|m| MirrorHost::new(m.parse().unwrap()))
            .collect(),
        allowlist: registries.parse::<Allowlist>().unwrap(),
        resolve_tags: true,
        dial_timeout: None,
    }
}

pub fn golden_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case)
}

pub const DEFAULTS: &str =
    "docker.io,ghcr.io,gcr.io,registry.k8s.io,quay.io,mcr.microsoft.com,public.ecr.aws";
