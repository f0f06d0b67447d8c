//! The test images: built offline with reproducible digests and cached on disk across runs
//! (the 200 MB one takes seconds to build), so every test and every run sees the same bytes.
//!
//! Each image lives in `/var/tmp/shoal-rig/images/<name>-v<CONTENT_VERSION>/` (override the base
//! with `SHOAL_RIG_IMAGE_CACHE`), an OCI image layout plus `shoal-image.json` describing it. A
//! layout is built in a temporary directory next to it under an `flock` and renamed into place, so
//! concurrent test processes never see half an image. Bump [`CONTENT_VERSION`] whenever the
//! content changes.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use flate2::Compression;
use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;
use shoal_oci::Digest;

use crate::layout::{
    Blob, Content, Entry, LayoutWriter, MT_CONFIG, MT_INDEX, MT_MANIFEST, config, manifest,
};

/// Version of the images' content; part of the cache directory name.
const CONTENT_VERSION: u32 = 1;
const DEFAULT_CACHE: &str = "/var/tmp/shoal-rig/images";
/// Size of the big image's only file: 200 MiB.
pub const BIG_FILE_BYTES: u64 = 200 * 1024 * 1024;

/// An image in an OCI layout on disk, with the reference it is pushed and pulled under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestImage {
    reference: String,
    layout: PathBuf,
    manifest_digest: Digest,
    media_type: String,
    blobs: Vec<(Digest, String, u64)>,
}

impl TestImage {
    /// `docker.io/library/shoal-small:v1`: two layers (1 MiB of random bytes, then a text file).
    pub fn small() -> TestImage {
        Self::small_at("docker.io/library/shoal-small:v1")
    }

    /// The small image's content under another reference (identical digests), e.g.
    /// `harbor.test/team/app:v1`. Panics if `reference` has no tag.
    pub fn small_at(reference: &str) -> TestImage {
        split_reference(reference).unwrap_or_else(|e| panic!("TestImage::small_at: {e}"));
        let mut img = cached("small", build_small);
        img.reference = reference.to_string();
        img
    }

    /// `docker.io/library/shoal-big:v1`: one layer with a 200 MiB file of incompressible bytes.
    pub fn big() -> TestImage {
        let mut img = cached("big", build_big);
        img.reference = "docker.io/library/shoal-big:v1".into();
        img
    }

    /// `docker.io/library/shoal-huge:v1`: one layer with a 1 GiB file of incompressible bytes
    /// (benchmarks and multi-peer transfers; built once, then cached).
    pub fn huge() -> TestImage {
        let mut img = cached("huge", build_huge);
        img.reference = "docker.io/library/shoal-huge:v1".into();
        img
    }

    /// `docker.io/library/shoal-multi:v1`: an OCI index of a linux/amd64 and a linux/arm64 image.
    pub fn multi_platform() -> TestImage {
        let mut img = cached("multi", build_multi);
        img.reference = "docker.io/library/shoal-multi:v1".into();
        img
    }

    /// The full reference, e.g. `docker.io/library/shoal-small:v1`.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Registry host of the reference (`docker.io`, `harbor.test`).
    pub fn registry_host(&self) -> String {
        split_reference(&self.reference).expect("validated").0
    }

    /// Repository path inside the registry (`library/shoal-small`).
    pub fn repository(&self) -> String {
        split_reference(&self.reference).expect("validated").1
    }

    /// Tag (`v1`).
    pub fn tag(&self) -> String {
        split_reference(&self.reference).expect("validated").2
    }

    /// Digest of the top-level manifest (the index for [`TestImage::multi_platform`]).
    pub fn manifest_digest(&self) -> Digest {
        self.manifest_digest.clone()
    }

    /// Media type of the top-level manifest.
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    /// Whether the top level is an index (push with `--all`).
    pub fn is_index(&self) -> bool {
        self.media_type == MT_INDEX
    }

    /// Every blob: index, manifests, configs and layers, as (digest, media type, size).
    pub fn blobs(&self) -> Vec<(Digest, String, u64)> {
        self.blobs.clone()
    }

    /// The layer blobs only.
    pub fn layers(&self) -> Vec<(Digest, u64)> {
        self.blobs
            .iter()
            .filter(|(_, mt, _)| mt.contains(".layer."))
            .map(|(d, _, s)| (d.clone(), *s))
            .collect()
    }

    /// Sum of all blob sizes.
    pub fn total_size(&self) -> u64 {
        self.blobs.iter().map(|(_, _, s)| s).sum()
    }

    /// The cached OCI layout directory (read-only: shared by every test and run).
    pub fn layout_dir(&self) -> &Path {
        &self.layout
    }

    /// Path of one blob inside the layout.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.layout
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }
}

/// Split `host/repo/path:tag` into (host, repository, tag) with Docker's defaults: no host means
/// `docker.io`, and a one-component docker.io repository gets `library/`.
pub fn split_reference(reference: &str) -> Result<(String, String, String), String> {
    let (name, tag) = match reference.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') && !t.is_empty() => (n, t),
        _ => return Err(format!("reference {reference:?} has no tag")),
    };
    if name.contains('@') || name.is_empty() {
        return Err(format!("reference {reference:?} must be name:tag"));
    }
    let (host, repo) = match name.split_once('/') {
        Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => {
            (h, r.to_string())
        }
        _ => ("docker.io", name.to_string()),
    };
    let repo = if host == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo
    };
    Ok((host.to_string(), repo, tag.to_string()))
}

fn cache_base() -> PathBuf {
    std::env::var_os("SHOAL_RIG_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// What `build` returns: the top-level blob and every blob.
type Built = (Blob, Vec<Blob>);

/// Load image `name` from the cache, building it first if needed.
fn cached(name: &str, build: fn(&mut LayoutWriter) -> Built) -> TestImage {
    let base = cache_base();
    let dir = base.join(format!("{name}-v{CONTENT_VERSION}"));
    if let Some(img) = load(&dir) {
        return img;
    }
    fs::create_dir_all(&base).unwrap_or_else(|e| panic!("create {}: {e}", base.display()));
    let lock_path = base.join(format!(".{name}-v{CONTENT_VERSION}.lock"));
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock {}: {e}", lock_path.display()));
    // Someone else may have finished the build while we waited for the lock.
    if let Some(img) = load(&dir) {
        return img;
    }
    if dir.exists() {
        // A directory without a readable description is a leftover of an older layout: rebuild.
        fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
    }
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}-build-"))
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("tempdir in {}: {e}", base.display()));
    let started = std::time::Instant::now();
    let mut w = LayoutWriter::create(tmp.path());
    let (top, all) = build(&mut w);
    w.index(&top, "v1");
    let desc = serde_json::json!({
        "manifest_digest": top.digest.to_string(),
        "media_type": top.media_type,
        "blobs": all.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let desc_path = tmp.path().join("shoal-image.json");
    fs::write(&desc_path, serde_json::to_vec_pretty(&desc).expect("JSON"))
        .unwrap_or_else(|e| panic!("write {}: {e}", desc_path.display()));
    let tmp_path = tmp.keep();
    fs::rename(&tmp_path, &dir)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp_path.display(), dir.display()));
    eprintln!(
        "shoal rig: built test image {name} in {:.1?} at {}",
        started.elapsed(),
        dir.display()
    );
    load(&dir).unwrap_or_else(|| panic!("image just built at {} is unreadable", dir.display()))
}

/// Read a cached layout's description; `None` if absent or incomplete.
fn load(dir: &Path) -> Option<TestImage> {
    let text = fs::read(dir.join("shoal-image.json")).ok()?;
    let v: Value = serde_json::from_slice(&text).ok()?;
    let manifest_digest: Digest = v["manifest_digest"].as_str()?.parse().ok()?;
    let media_type = v["media_type"].as_str()?.to_string();
    let mut blobs = Vec::new();
    for b in v["blobs"].as_array()? {
        let d: Digest = b["digest"].as_str()?.parse().ok()?;
        let size = b["size"].as_u64()?;
        // Cheap integrity check: every blob is present with the right size.
        let meta = fs::metadata(dir.join("blobs/sha256").join(d.hex())).ok()?;
        if meta.len() != size {
            return None;
        }
        blobs.push((d, b["mediaType"].as_str()?.to_string(), size));
    }
    Some(TestImage {
        reference: String::new(),
        layout: dir.to_path_buf(),
        manifest_digest,
        media_type,
        blobs,
    })
}

fn image(
    w: &mut LayoutWriter,
    arch: &str,
    layers: &[(Vec<Entry>, Compression)],
    all: &mut Vec<Blob>,
) -> Blob {
    let mut blobs = Vec::new();
    let mut diff_ids = Vec::new();
    for (entries, level) in layers {
        let (blob, diff_id) = w.layer(entries, *level);
        blobs.push(blob);
        diff_ids.push(diff_id);
    }
    let cfg = w.json_blob(MT_CONFIG, &config(arch, &diff_ids));
    let man = w.json_blob(MT_MANIFEST, &manifest(&cfg, &blobs));
    all.push(man.clone());
    all.push(cfg);
    all.extend(blobs);
    man
}

fn build_small(w: &mut LayoutWriter) -> Built {
    let mut all = Vec::new();
    let layers = vec![
        (
            vec![
                Entry::Dir("etc/"),
                Entry::File(
                    "etc/rand1m.bin",
                    Content::Random {
                        seed: 1,
                        len: 1 << 20,
                    },
                ),
            ],
            Compression::default(),
        ),
        (
            vec![
                Entry::Dir("etc/"),
                Entry::File(
                    "etc/hello.txt",
                    Content::Text("hello from shoal-small v1\n".into()),
                ),
            ],
            Compression::default(),
        ),
    ];
    let top = image(w, "amd64", &layers, &mut all);
    (top, all)
}

fn build_big(w: &mut LayoutWriter) -> Built {
    build_one_file(w, 2, BIG_FILE_BYTES)
}

fn build_huge(w: &mut LayoutWriter) -> Built {
    build_one_file(w, 3, 1 << 30)
}

/// An image of one layer holding one file of `len` incompressible bytes.
fn build_one_file(w: &mut LayoutWriter, seed: u64, len: u64) -> Built {
    let mut all = Vec::new();
    // Level 0 (stored blocks): the bytes are incompressible anyway and this keeps the build fast.
    let layers = vec![(
        vec![
            Entry::Dir("data/"),
            Entry::File("data/big.bin", Content::Random { seed, len }),
        ],
        Compression::none(),
    )];
    let top = image(w, "amd64", &layers, &mut all);
    (top, all)
}

fn build_multi(w: &mut LayoutWriter) -> Built {
    let mut all = Vec::new();
    let mut manifests = Vec::new();
    for (arch, seed) in [("amd64", 3u64), ("arm64", 4u64)] {
        let layers = vec![(
            vec![
                Entry::Dir("etc/"),
                Entry::File("etc/arch.txt", Content::Text(format!("{arch}\n"))),
                Entry::File(
                    "etc/rand.bin",
                    Content::Random {
                        seed,
                        len: 256 * 1024,
                    },
                ),
            ],
            Compression::default(),
        )];
        let man = image(w, arch, &layers, &mut all);
        let mut desc = man.descriptor();
        desc["platform"] = serde_json::json!({ "architecture": arch, "os": "linux" });
        manifests.push(desc);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": manifests,
    });
    let top = w.json_blob(MT_INDEX, &index);
    all.insert(0, top.clone());
    (top, all)
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn references_split_like_docker() {
        let s = |r: &str| split_reference(r).unwrap();
        assert_eq!(
            s("docker.io/library/a:v1"),
            ("docker.io".into(), "library/a".into(), "v1".into())
        );
        assert_eq!(
            s("a:v1"),
            ("docker.io".into(), "library/a".into(), "v1".into())
        );
        assert_eq!(
            s("harbor.test/team/app:v2"),
            ("harbor.test".into(), "team/app".into(), "v2".into())
        );
        assert_eq!(
            s("localhost:5000/x:t"),
            ("localhost:5000".into(), "x".into(), "t".into())
        );
        assert!(split_reference("harbor.test/team/app").is_err());
        assert!(split_reference("localhost:5000/x").is_err());
    }
}

#[cfg(test)]
mod build_tests {
    use super::{build_multi, build_small};
    use crate::layout::LayoutWriter;
    use shoal_oci::Digest;

    #[test]
    fn builds_are_reproducible_and_blobs_match_their_digests() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for build in [build_small, build_multi] {
            let (top_a, all_a) = build(&mut LayoutWriter::create(a.path()));
            let (top_b, all_b) = build(&mut LayoutWriter::create(b.path()));
            assert_eq!(top_a.digest, top_b.digest);
            let da: Vec<_> = all_a.iter().map(|x| (x.digest.clone(), x.size)).collect();
            let db: Vec<_> = all_b.iter().map(|x| (x.digest.clone(), x.size)).collect();
            assert_eq!(da, db);
            for blob in &all_a {
                let bytes =
                    std::fs::read(a.path().join("blobs/sha256").join(blob.digest.hex())).unwrap();
                assert_eq!(Digest::sha256_of(&bytes), blob.digest);
                assert_eq!(bytes.len() as u64, blob.size);
            }
        }
    }

    #[test]
    fn small_has_two_layers_and_multi_two_platforms() {
        let small = super::TestImage::small();
        assert_eq!(small.layers().len(), 2);
        assert_eq!(small.reference(), "docker.io/library/shoal-small:v1");
        let other = super::TestImage::small_at("harbor.test/team/app:v1");
        assert_eq!(other.manifest_digest(), small.manifest_digest());
        assert_eq!(
            (other.registry_host().as_str(), other.repository().as_str()),
            ("harbor.test", "team/app")
        );
        let multi = super::TestImage::multi_platform();
        assert!(multi.is_index());
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(multi.blob_path(&multi.manifest_digest())).unwrap(),
        )
        .unwrap();
        let archs: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().unwrap())
            .collect();
        assert_eq!(archs, ["amd64", "arm64"]);
        // index + 2 x (manifest, config, layer)
        assert_eq!(multi.blobs().len(), 7);
    }
}
