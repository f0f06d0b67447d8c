//! Turning what an operator types (`sha256:…`, `nginx:1.27`, `ghcr.io/o/a@sha256:…`) into the
//! list of blobs `find` and `explain` report on.
//!
//! An image is walked from this node's containerd when it holds it; otherwise its manifests are
//! fetched through this node's own mirror, which resolves them through peers exactly as
//! containerd would (so `find` also works on a node that never pulled the image).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use shoal_containerd::ImageInfo;
use shoal_oci::{ACCEPT_MANIFESTS, Digest, Document, MediaKind, Reference, classify};

use super::server::AdminState;

/// How long a manifest fetch through the local mirror may take.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(10);
/// `ns` is host[:port], encoded the way containerd does (`127.0.0.1%3A5000`).
const NS: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'-')
    .remove(b'_');
/// Manifests of an index followed at most (bounds work on huge multi-platform indexes).
const MAX_CHILD_MANIFESTS: usize = 32;

/// What the operator asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Digest(Digest),
    Image(Reference),
}

impl Target {
    /// A digest when it looks like one (`algo:hex`), an image reference otherwise.
    pub fn parse(input: &str) -> Result<Target, String> {
        let input = input.trim();
        if input.is_empty() {
            return Err("empty target: give a digest (sha256:…) or an image reference".into());
        }
        if input.starts_with("sha256:") || input.starts_with("sha512:") {
            return input
                .parse()
                .map(Target::Digest)
                .map_err(|e| format!("{input:?} is not a valid digest: {e}"));
        }
        Reference::parse(input)
            .map(Target::Image)
            .map_err(|e| format!("{input:?} is neither a digest nor an image reference: {e}"))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Target::Digest(_) => "digest",
            Target::Image(_) => "image",
        }
    }
}

/// One blob of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

impl BlobRef {
    pub fn role(&self) -> &'static str {
        role(&self.media_type)
    }
}

/// `index`, `manifest`, `config`, `layer` or `other`, from a media type.
pub fn role(media_type: &str) -> &'static str {
    if media_type.is_empty() {
        return "";
    }
    match classify(media_type) {
        MediaKind::Index => "index",
        MediaKind::Manifest => "manifest",
        MediaKind::Config => "config",
        MediaKind::Layer => "layer",
        MediaKind::Other => "other",
    }
}

/// An image walked down to its blobs.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub reference: String,
    pub resolved_from: String,
    pub blobs: Vec<BlobRef>,
}

/// Walks `r` from local containerd, else through the local mirror.
pub async fn image(state: &AdminState, r: &Reference) -> Result<Resolved, String> {
    let local_err = match local(state, r).await {
        Ok(Some(res)) => return Ok(res),
        Ok(None) => None,
        Err(e) => Some(e),
    };
    match via_mirror(state, r).await {
        Ok(res) => Ok(res),
        Err(e) => Err(match local_err {
            Some(l) => format!("{r}: containerd lookup failed ({l}); through the mirror: {e}"),
            None => format!("{r} is not in this node's containerd, and through the mirror: {e}"),
        }),
    }
}

async fn local(state: &AdminState, r: &Reference) -> Result<Option<Resolved>, String> {
    let Some(source) = state.store.source() else {
        return Ok(None);
    };
    let inv = source
        .inventory(&state.allowlist)
        .await
        .map_err(|e| e.to_string())?;
    let wanted = |i: &&ImageInfo| match r.digest() {
        Some(d) => &i.target().descriptor.digest == d,
        None => i.tag_key.is_some() && i.tag_key == r.tag_key(),
    };
    Ok(inv.images.iter().find(wanted).map(|i| Resolved {
        reference: r.to_string(),
        resolved_from: format!("local containerd ({})", i.reference),
        blobs: i
            .blobs
            .iter()
            .map(|b| BlobRef {
                digest: b.descriptor.digest.clone(),
                media_type: b.descriptor.media_type.clone(),
                size: b.descriptor.size,
            })
            .collect(),
    }))
}

/// The mirror URL to use from this node: an unspecified listen address means loopback.
pub fn mirror_base(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        Ipv4Addr::LOCALHOST.into()
    } else {
        addr.ip()
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

async fn via_mirror(state: &AdminState, r: &Reference) -> Result<Resolved, String> {
    let top_ref = match r.digest() {
        Some(d) => d.to_string(),
        None => r
            .tag()
            .map(|t| t.to_string())
            .unwrap_or_else(|| "latest".into()),
    };
    let (top, doc) = fetch_manifest(state, r, &top_ref).await?;
    let mut blobs = vec![top];
    match &doc {
        Document::Manifest(_) => push_children(&mut blobs, &doc),
        Document::Index(index) => {
            for m in index.manifests.iter().take(MAX_CHILD_MANIFESTS) {
                blobs.push(BlobRef {
                    digest: m.digest.clone(),
                    media_type: m.media_type.clone(),
                    size: m.size,
                });
                if !m.kind().is_manifest_like() {
                    continue;
                }
                match fetch_manifest(state, r, &m.digest.to_string()).await {
                    Ok((_, child)) => push_children(&mut blobs, &child),
                    // Platforms no peer holds are common (nobody pulled arm64): keep the
                    // manifest row, skip its children.
                    Err(e) => {
                        tracing::debug!(digest = %m.digest, error = %e, "child manifest not fetched")
                    }
                }
            }
        }
    }
    Ok(Resolved {
        reference: r.to_string(),
        resolved_from: "peers, through the local mirror".into(),
        blobs,
    })
}

fn push_children(blobs: &mut Vec<BlobRef>, doc: &Document) {
    for c in doc.children() {
        if blobs.iter().any(|b| b.digest == c.digest) {
            continue;
        }
        blobs.push(BlobRef {
            digest: c.digest,
            media_type: c.media_type,
            size: c.size,
        });
    }
}

async fn fetch_manifest(
    state: &AdminState,
    r: &Reference,
    reference: &str,
) -> Result<(BlobRef, Document), String> {
    let ns = percent_encoding::utf8_percent_encode(r.registry(), NS);
    let url = format!(
        "{}/v2/{}/manifests/{}?ns={ns}",
        mirror_base(state.mirror_addr),
        r.repository(),
        reference
    );
    let resp = state
        .http
        .get(&url)
        .header(reqwest::header::ACCEPT, ACCEPT_MANIFESTS.join(", "))
        .timeout(MANIFEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!(
            "GET {url}: HTTP {} (no peer holds it, or its registry is not mirrored)",
            resp.status()
        ));
    }
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
    let doc = Document::parse(content_type.as_deref(), &body)
        .map_err(|e| format!("{url}: not a manifest: {e}"))?;
    let media_type = doc
        .media_type()
        .map(str::to_owned)
        .or(content_type)
        .unwrap_or_default();
    let blob = BlobRef {
        digest: Digest::sha256_of(&body),
        media_type,
        size: body.len() as u64,
    };
    Ok((blob, doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_digest_or_image() {
        let d = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        assert!(matches!(Target::parse(d), Ok(Target::Digest(_))));
        match Target::parse("nginx:1.27").unwrap() {
            Target::Image(r) => assert_eq!(r.to_string(), "docker.io/library/nginx:1.27"),
            other => panic!("{other:?}"),
        }
        assert!(
            Target::parse("sha256:nothex")
                .unwrap_err()
                .contains("not a valid digest")
        );
        assert!(Target::parse("").is_err());
        assert!(Target::parse("UPPER/Case").is_err());
    }

    #[test]
    fn roles_follow_media_types() {
        assert_eq!(role("application/vnd.oci.image.index.v1+json"), "index");
        assert_eq!(
            role("application/vnd.docker.distribution.manifest.v2+json"),
            "manifest"
        );
        assert_eq!(role("application/vnd.oci.image.config.v1+json"), "config");
        assert_eq!(role("application/vnd.oci.image.layer.v1.tar+gzip"), "layer");
        assert_eq!(role("text/plain"), "other");
        assert_eq!(role(""), "");
    }

    #[test]
    fn unspecified_mirror_address_means_loopback() {
        assert_eq!(
            mirror_base("0.0.0.0:5000".parse().unwrap()),
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            mirror_base("10.1.2.3:5000".parse().unwrap()),
            "http://10.1.2.3:5000"
        );
    }
}
