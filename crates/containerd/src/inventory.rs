//! What this node can serve: containerd's images walked down to the blobs the content store
//! actually holds.
//!
//! An image's name says which registry it came from; only images of allowlisted registries
//! contribute keys. For each, the tag key is advertised when its target (index or manifest) is
//! present, and every digest reachable from the target (index → manifests → config + layers)
//! is advertised only when present: layers discarded after unpack, or platforms of an index that
//! were never pulled, are listed in the detail as absent and never advertised.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use containerd_client::services::v1::{GetImageRequest, ListImagesRequest};
use shoal_oci::{Allowlist, Digest, Document, Key, MAX_MANIFEST_BYTES, TagKey, classify};
use tonic::Code;

use crate::client::ContentSource;
use crate::error::{Error, parse_digest};
use crate::name::ImageName;

/// Nesting depth of indexes followed (an index of indexes is legal but rare).
const MAX_DEPTH: usize = 4;

/// A content descriptor: what a manifest or image record says about a blob.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Descriptor {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// One blob of an image, and whether the content store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub descriptor: Descriptor,
    pub present: bool,
}

/// One image of an allowlisted registry, walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The name containerd stores (`docker.io/library/x:v1`).
    pub reference: String,
    /// Normalised registry host.
    pub registry: String,
    /// `registry/repository:tag`, for names that are tag references.
    pub tag_key: Option<TagKey>,
    /// The image's target first, then every blob reachable from it (manifests, configs, layers)
    /// in manifest order, each once.
    pub blobs: Vec<BlobInfo>,
    /// Things that stopped part of the walk (an unparsable manifest, a malformed child digest).
    pub problems: Vec<String>,
}

impl ImageInfo {
    /// The image's target descriptor (index or manifest).
    pub fn target(&self) -> &BlobInfo {
        &self.blobs[0]
    }

    /// The keys this image contributes: its tag key when the target is present, and every
    /// present digest.
    pub fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        let tag = self
            .tag_key
            .clone()
            .filter(|_| self.target().present)
            .map(Key::Tag);
        tag.into_iter().chain(
            self.blobs
                .iter()
                .filter(|b| b.present)
                .map(|b| Key::Digest(b.descriptor.digest.clone())),
        )
    }
}

/// An image whose content is not advertised, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedImage {
    pub reference: String,
    pub reason: String,
}

/// Every image of the namespace: those that are mirrored (walked) and those that are not.
/// The CRI's `sha256:<config>` aliases appear in neither list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub images: Vec<ImageInfo>,
    pub not_mirrored: Vec<SkippedImage>,
}

impl Inventory {
    /// The set of keys this node advertises.
    pub fn keys(&self) -> BTreeSet<Key> {
        self.images.iter().flat_map(ImageInfo::keys).collect()
    }

    /// The target of a tag key, if this node holds it.
    pub fn resolve(&self, tag: &TagKey) -> Option<&Descriptor> {
        self.images
            .iter()
            .find(|i| i.tag_key.as_ref() == Some(tag) && i.target().present)
            .map(|i| &i.target().descriptor)
    }

    /// What the inventory knows about a present, advertised digest (media type and size).
    pub fn blob(&self, digest: &Digest) -> Option<&Descriptor> {
        self.images
            .iter()
            .flat_map(|i| &i.blobs)
            .find(|b| b.present && &b.descriptor.digest == digest)
            .map(|b| &b.descriptor)
    }
}

fn descriptor(raw_digest: &str, media_type: String, size: i64) -> Result<Descriptor, Error> {
    Ok(Descriptor {
        digest: parse_digest(raw_digest)?,
        media_type,
        size: u64::try_from(size).unwrap_or(0),
    })
}

impl ContentSource {
    /// Lists the namespace's images and walks every allowlisted one.
    pub async fn inventory(&self, allowlist: &Allowlist) -> Result<Inventory, Error> {
        let images = self
            .images()
            .list(self.request(ListImagesRequest::default()))
            .await
            .map_err(|s| Error::rpc("Images.List", s))?
            .into_inner()
            .images;
        let present = self.present_blobs().await?;
        let mut inv = Inventory::default();
        let mut visited = HashSet::new();
        for image in images {
            let name = ImageName::parse(&image.name);
            let skip = |reason: String| SkippedImage {
                reference: image.name.clone(),
                reason,
            };
            let registry = match &name {
                ImageName::CriAlias => continue,
                ImageName::Unqualified(why) => {
                    inv.not_mirrored.push(skip(why.clone()));
                    continue;
                }
                ImageName::Qualified { reference, .. } => reference.registry().to_owned(),
            };
            if !allowlist.allows(&registry) {
                inv.not_mirrored
                    .push(skip(format!("registry {registry} is not in the allowlist")));
                continue;
            }
            let Some(target) = image.target else {
                inv.not_mirrored
                    .push(skip("image has no target".to_owned()));
                continue;
            };
            let target = match descriptor(&target.digest, target.media_type, target.size) {
                Ok(t) => t,
                Err(e) => {
                    inv.not_mirrored.push(skip(e.to_string()));
                    continue;
                }
            };
            let mut info = ImageInfo {
                reference: image.name.clone(),
                registry,
                tag_key: name.tag_key(),
                blobs: Vec::new(),
                problems: Vec::new(),
            };
            self.walk(target, &present, &mut info, &mut visited).await?;
            inv.images.push(info);
        }
        self.inner
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|d, _| visited.contains(d));
        Ok(inv)
    }

    /// Looks a tag key up in containerd directly: the target descriptor of the image named by
    /// the key, when that image exists and its target blob is present. Does not consult the
    /// allowlist; the caller decides what it serves.
    pub async fn resolve_tag(&self, tag: &TagKey) -> Result<Option<Descriptor>, Error> {
        let req = self.request(GetImageRequest {
            name: tag.to_string(),
        });
        let image = match self.images().get(req).await {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => return Err(Error::rpc("Images.Get", s)),
        };
        let Some(target) = image.and_then(|i| i.target) else {
            return Ok(None);
        };
        let target = descriptor(&target.digest, target.media_type, target.size)?;
        Ok(self.stat(&target.digest).await?.map(|_| target))
    }

    /// Walks from `target` breadth-first, appending each blob once to `info.blobs`.
    async fn walk(
        &self,
        target: Descriptor,
        present: &HashMap<Digest, u64>,
        info: &mut ImageInfo,
        visited: &mut HashSet<Digest>,
    ) -> Result<(), Error> {
        let mut seen = HashSet::new();
        let mut queue = vec![(target, 0usize)];
        let mut next = 0;
        while next < queue.len() {
            let (desc, depth) = queue[next].clone();
            next += 1;
            if !seen.insert(desc.digest.clone()) {
                continue;
            }
            let is_present = present.contains_key(&desc.digest);
            let parent =
                is_present && depth < MAX_DEPTH && classify(&desc.media_type).is_manifest_like();
            info.blobs.push(BlobInfo {
                descriptor: desc.clone(),
                present: is_present,
            });
            if !parent {
                continue;
            }
            visited.insert(desc.digest.clone());
            match self.children_of(&desc).await {
                Ok((children, problems)) => {
                    queue.extend(children.iter().map(|c| (c.clone(), depth + 1)));
                    info.problems.extend(problems);
                }
                // The blob went away between List and Read (GC): it is simply not there.
                Err(Error::NotFound(_)) => {
                    if let Some(b) = info.blobs.last_mut() {
                        b.present = false;
                    }
                }
                Err(e @ Error::TooLarge { .. }) => {
                    tracing::warn!(image = %info.reference, error = %e,
                        "manifest too large; its children are not advertised");
                    info.problems.push(e.to_string());
                }
                // Anything else (containerd restarting, an I/O error) fails the whole listing:
                // a partial walk would withdraw keys that are in fact still there.
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The children of a manifest or index, from the cache or by reading and parsing it.
    async fn children_of(
        &self,
        desc: &Descriptor,
    ) -> Result<(Arc<[Descriptor]>, Vec<String>), Error> {
        if let Some(c) = self
            .inner
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&desc.digest)
        {
            return Ok((c.clone(), Vec::new()));
        }
        let bytes = self
            .read_to_vec(&desc.digest, MAX_MANIFEST_BYTES as u64)
            .await?;
        let children: Vec<Descriptor> = match Document::parse(Some(&desc.media_type), &bytes) {
            Ok(doc) => doc
                .children()
                .into_iter()
                .map(|c| Descriptor {
                    digest: c.digest,
                    media_type: c.media_type,
                    size: c.size,
                })
                .collect(),
            Err(e) => {
                // Nothing below an unparsable document is known, so nothing below it is
                // advertised; the document itself still is (it is a present blob).
                tracing::warn!(digest = %desc.digest, error = %e, "cannot parse manifest");
                return Ok((Arc::from(Vec::new()), vec![format!("{}: {e}", desc.digest)]));
            }
        };
        let children: Arc<[Descriptor]> = Arc::from(children);
        self.inner
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(desc.digest.clone(), children.clone());
        Ok((children, Vec::new()))
    }
}
