//! `shoal content`: what this node's containerd holds and what this node would advertise,
//! per image. Useful to answer "why is my image not served by peers?" on a node.
//!
//! The human table lists, per mirrored image, its tag key and every blob reachable from it
//! (media type, size, present or not), then the images that are *not mirrored* (registry
//! outside the allowlist, or a name without a registry) with the reason, then the totals.
//!
//! `--json` prints ONE JSON document with these stable fields:
//!
//! ```text
//! {
//!   "socket":             string, containerd socket
//!   "namespace":          string, containerd namespace
//!   "containerd_version": string
//!   "allowlist":          string, comma-separated registries, or "*" for all
//!   "keys":               [string], the exact set this node advertises, digests first,
//!                         then tag keys (`registry/repo:tag`), each group sorted
//!   "images": [ {                   mirrored images only
//!       "reference":  string, the name containerd stores
//!       "registry":   string, normalised registry host
//!       "tag_key":    string or null (null for digest-only names)
//!       "digest":     string, the image's target (index or manifest)
//!       "media_type": string, the target's media type
//!       "blobs": [ { "digest": string, "media_type": string, "size": integer,
//!                    "present": bool } ],   target first, then children, each once
//!       "problems":   [string], parts of the walk that failed (unparsable manifests)
//!   } ],
//!   "not_mirrored": [ { "reference": string, "reason": string } ]
//! }
//! ```
//!
//! Images outside the allowlist appear only in `not_mirrored`, by name and reason: none of
//! their digests is listed (a digest they share with a mirrored image is in `keys` because of
//! that image). The CRI's `sha256:<config>` aliases are not listed at all.

use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;
use shoal_containerd::{ContentSource, ImageInfo, Inventory};

use crate::cli::{ContainerdArgs, RegistryArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub containerd: ContainerdArgs,
    #[command(flatten)]
    pub registries: RegistryArgs,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    socket: String,
    namespace: String,
    containerd_version: String,
    allowlist: String,
    keys: Vec<String>,
    images: Vec<ImageReport>,
    not_mirrored: Vec<SkippedReport>,
}

#[derive(Serialize)]
struct ImageReport {
    reference: String,
    registry: String,
    tag_key: Option<String>,
    digest: String,
    media_type: String,
    blobs: Vec<BlobReport>,
    problems: Vec<String>,
}

#[derive(Serialize)]
struct BlobReport {
    digest: String,
    media_type: String,
    size: u64,
    present: bool,
}

#[derive(Serialize)]
struct SkippedReport {
    reference: String,
    reason: String,
}

fn image_report(i: &ImageInfo) -> ImageReport {
    let target = &i.target().descriptor;
    ImageReport {
        reference: i.reference.clone(),
        registry: i.registry.clone(),
        tag_key: i.tag_key.as_ref().map(ToString::to_string),
        digest: target.digest.to_string(),
        media_type: target.media_type.clone(),
        blobs: i
            .blobs
            .iter()
            .map(|b| BlobReport {
                digest: b.descriptor.digest.to_string(),
                media_type: b.descriptor.media_type.clone(),
                size: b.descriptor.size,
                present: b.present,
            })
            .collect(),
        problems: i.problems.clone(),
    }
}

fn report(source: &ContentSource, version: String, allowlist: String, inv: &Inventory) -> Report {
    Report {
        socket: source.socket().display().to_string(),
        namespace: source.namespace().to_owned(),
        containerd_version: version,
        allowlist,
        keys: inv.keys().iter().map(ToString::to_string).collect(),
        images: inv.images.iter().map(image_report).collect(),
        not_mirrored: inv
            .not_mirrored
            .iter()
            .map(|s| SkippedReport {
                reference: s.reference.clone(),
                reason: s.reason.clone(),
            })
            .collect(),
    }
}

fn print_table(r: &Report) {
    println!(
        "containerd {} at {} (namespace {}); mirroring {}",
        r.containerd_version, r.socket, r.namespace, r.allowlist
    );
    for i in &r.images {
        println!();
        println!("IMAGE {}", i.reference);
        let advertised = i.blobs.first().is_some_and(|b| b.present);
        match &i.tag_key {
            Some(t) if advertised => println!("  tag key  {t}"),
            Some(t) => println!("  tag key  {t} (not advertised: target absent)"),
            None => println!("  tag key  - (digest reference)"),
        }
        let w = i
            .blobs
            .iter()
            .map(|b| b.media_type.len())
            .max()
            .unwrap_or(10)
            .max(10);
        println!(
            "  {:<71}  {:<w$}  {:>12}  PRESENT",
            "DIGEST", "MEDIA TYPE", "SIZE"
        );
        for b in &i.blobs {
            let present = if b.present { "yes" } else { "no" };
            println!(
                "  {:<71}  {:<w$}  {:>12}  {present}",
                b.digest, b.media_type, b.size
            );
        }
        for p in &i.problems {
            println!("  problem: {p}");
        }
    }
    if !r.not_mirrored.is_empty() {
        println!();
        println!("NOT MIRRORED (nothing advertised for these)");
        for s in &r.not_mirrored {
            println!("  {}  ({})", s.reference, s.reason);
        }
    }
    let tags = r.keys.iter().filter(|k| !k.starts_with("sha")).count();
    println!();
    println!(
        "{} keys advertised: {} tag keys, {} digests, from {} images",
        r.keys.len(),
        tags,
        r.keys.len() - tags,
        r.images.len()
    );
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let c = &args.containerd;
    let source = ContentSource::connect(
        &c.containerd_socket,
        &c.containerd_namespace,
        Some(c.containerd_content_dir.clone()),
    )
    .await?;
    let version = source.version().await?.version;
    let allowlist = args.registries.allowlist();
    let inv = source
        .inventory(&allowlist)
        .await
        .context("listing containerd's images and content")?;
    let r = report(&source, version, allowlist.to_string(), &inv);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_table(&r);
    }
    Ok(ExitCode::SUCCESS)
}
