//! Inventory against a real containerd: what is advertised, what is not, and why.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::image::{Image, manifest, small_layer};
use common::{Containerd, NS};
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{CreateImageRequest, Image as CImage};
use containerd_client::tonic::Request;
use containerd_client::types::Descriptor as CDescriptor;
use containerd_client::with_namespace;
use shoal_oci::{Allowlist, Digest, Key, TagKey};

fn keys_of(img: &Image, tag: &str) -> BTreeSet<Key> {
    let mut k: BTreeSet<Key> = img
        .blobs()
        .into_iter()
        .map(|b| Key::Digest(b.digest))
        .collect();
    k.insert(tag.parse().unwrap());
    k
}

async fn create_image(c: &Containerd, name: &str, target: &Digest, media_type: &str, size: u64) {
    let ch = containerd_client::connect(c.socket()).await.unwrap();
    let image = CImage {
        name: name.to_owned(),
        target: Some(CDescriptor {
            media_type: media_type.to_owned(),
            digest: target.to_string(),
            size: size as i64,
            annotations: Default::default(),
        }),
        ..Default::default()
    };
    let req = CreateImageRequest {
        image: Some(image),
        source_date_epoch: None,
    };
    ImagesClient::new(ch)
        .create(with_namespace!(req, NS))
        .await
        .unwrap();
}

#[tokio::test]
async fn advertises_allowlisted_images_and_nothing_else() {
    common::init_tracing();
    let c = Containerd::start();
    let tmp = tempfile::tempdir().unwrap();
    let shared = small_layer("shared.txt", "shared by both images\n");
    let a = Image::single(
        "docker.io/library/inv-a:v1",
        manifest(
            "amd64",
            vec![shared.clone(), small_layer("a.txt", "only a\n")],
        ),
    );
    let h = Image::single(
        "harbor.test/team/app:v1",
        manifest(
            "amd64",
            vec![shared.clone(), small_layer("h.txt", "only harbor\n")],
        ),
    );
    for (img, file) in [(&a, "a.tar"), (&h, "h.tar")] {
        img.write_archive(&tmp.path().join(file));
        c.import(&tmp.path().join(file), &[]);
    }

    let src = c.source(true).await;
    assert_eq!(src.version().await.unwrap().version, "1.6.20~ds1");
    let inv = src.inventory(&Allowlist::default()).await.unwrap();
    let keys = inv.keys();
    assert_eq!(keys, keys_of(&a, "docker.io/library/inv-a:v1"));
    // The shared layer is advertised (through a); harbor's own blobs are not.
    assert!(keys.contains(&Key::Digest(shared.digest.clone())));
    for b in h.blobs() {
        if b.digest != shared.digest {
            assert!(
                !keys.contains(&Key::Digest(b.digest.clone())),
                "{} leaked",
                b.digest
            );
        }
    }
    assert_eq!(inv.images.len(), 1);
    let info = &inv.images[0];
    assert_eq!(info.reference, "docker.io/library/inv-a:v1");
    assert_eq!(info.registry, "docker.io");
    assert_eq!(info.target().descriptor.digest, a.target.digest);
    let detail: BTreeSet<(String, String, u64, bool)> = info
        .blobs
        .iter()
        .map(|b| {
            let d = &b.descriptor;
            (
                d.digest.to_string(),
                d.media_type.clone(),
                d.size,
                b.present,
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, u64, bool)> = a
        .blobs()
        .into_iter()
        .map(|b| (b.digest.to_string(), b.media_type, b.size, true))
        .collect();
    assert_eq!(detail, expected);
    assert!(info.problems.is_empty(), "{:?}", info.problems);
    assert_eq!(inv.not_mirrored.len(), 1);
    assert_eq!(inv.not_mirrored[0].reference, "harbor.test/team/app:v1");
    assert!(inv.not_mirrored[0].reason.contains("allowlist"));

    // Resolving tags and stat'ing digests.
    let tag = TagKey::new("docker.io", "library/inv-a", "v1");
    let resolved = inv.resolve(&tag).unwrap();
    assert_eq!(
        (&resolved.digest, resolved.size),
        (&a.target.digest, a.target.size)
    );
    assert_eq!(
        src.resolve_tag(&tag).await.unwrap().as_ref(),
        Some(resolved)
    );
    let missing = TagKey::new("docker.io", "library/inv-a", "v2");
    assert_eq!(src.resolve_tag(&missing).await.unwrap(), None);
    assert_eq!(inv.resolve(&missing), None);
    let layer = &a.manifests[0].1.layers[1];
    assert_eq!(src.stat(&layer.digest).await.unwrap(), Some(layer.size));
    assert_eq!(
        inv.blob(&layer.digest).unwrap().media_type,
        layer.media_type
    );
    assert_eq!(src.stat(&Digest::sha256_of(b"absent")).await.unwrap(), None);

    // With every registry allowed, harbor's image is advertised too.
    let all = src.inventory(&Allowlist::All).await.unwrap().keys();
    assert_eq!(
        all,
        &keys_of(&a, "docker.io/library/inv-a:v1") | &keys_of(&h, "harbor.test/team/app:v1")
    );
}

#[tokio::test]
async fn advertises_only_present_blobs() {
    common::init_tracing();
    let c = Containerd::start();
    let tmp = tempfile::tempdir().unwrap();
    let amd = manifest(
        "amd64",
        vec![
            small_layer("amd.txt", "amd64 layer\n"),
            small_layer("two.txt", "second\n"),
        ],
    );
    let arm = manifest("arm64", vec![small_layer("arm.txt", "arm64 layer\n")]);
    let multi = Image::multi(
        "docker.io/library/inv-multi:v1",
        vec![("amd64".into(), amd.clone()), ("arm64".into(), arm.clone())],
    );
    multi.write_archive(&tmp.path().join("m.tar"));
    c.import(&tmp.path().join("m.tar"), &["--platform", "linux/amd64"]);
    // Whatever the import kept of arm64, make sure none of it is present (a node that pulled
    // only amd64), and drop one amd64 layer as if discarded after unpack.
    for b in [&arm.manifest, &arm.config, &arm.layers[0], &amd.layers[1]] {
        let _ = c.ctr_raw(&["content", "rm", &b.digest.to_string()]);
    }

    let src = c.source(true).await;
    let inv = src.inventory(&Allowlist::default()).await.unwrap();
    let expected: BTreeSet<Key> = [
        Key::Tag(TagKey::new("docker.io", "library/inv-multi", "v1")),
        Key::Digest(multi.target.digest.clone()),
        Key::Digest(amd.manifest.digest.clone()),
        Key::Digest(amd.config.digest.clone()),
        Key::Digest(amd.layers[0].digest.clone()),
    ]
    .into_iter()
    .collect();
    assert_eq!(inv.keys(), expected);
    let info = &inv.images[0];
    let present = |d: &Digest| {
        info.blobs
            .iter()
            .find(|b| &b.descriptor.digest == d)
            .map(|b| b.present)
    };
    assert_eq!(present(&amd.layers[1].digest), Some(false));
    assert_eq!(present(&arm.manifest.digest), Some(false));
    // The absent arm64 manifest cannot be read, so its children are unknown, not listed.
    assert_eq!(present(&arm.config.digest), None);
}

#[tokio::test]
async fn skips_cri_aliases_and_survives_malformed_manifests() {
    common::init_tracing();
    let c = Containerd::start();
    let tmp = tempfile::tempdir().unwrap();
    let m = manifest("amd64", vec![small_layer("x.txt", "x\n")]);
    let img = Image::single("docker.io/library/inv-x:v1", m.clone());
    img.write_archive(&tmp.path().join("x.tar"));
    c.import(&tmp.path().join("x.tar"), &[]);
    // The CRI names every image a second time after its config digest.
    let alias = m.config.digest.to_string();
    create_image(
        &c,
        &alias,
        &m.manifest.digest,
        &m.manifest.media_type,
        m.manifest.size,
    )
    .await;

    // A manifest whose layer digest is malformed (a path traversal attempt): the manifest
    // itself is a present blob and advertised, the problem is reported, nothing below it is
    // walked, nothing panics.
    let bad = format!(
        r#"{{"schemaVersion":2,"mediaType":"{mt}","config":{{"mediaType":"{cmt}","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"{lmt}","digest":"sha256:../../../etc/passwd","size":1}}]}}"#,
        mt = common::image::MANIFEST,
        cmt = common::image::CONFIG,
        cd = m.config.digest,
        cs = m.config.size,
        lmt = common::image::LAYER,
    );
    let bad_digest = Digest::sha256_of(bad.as_bytes());
    // Image first: content no image references is garbage-collected right after ingest.
    create_image(
        &c,
        "docker.io/library/inv-bad:v1",
        &bad_digest,
        common::image::MANIFEST,
        bad.len() as u64,
    )
    .await;
    let mut ingest = Command::new("ctr")
        .arg("-a")
        .arg(c.socket())
        .args(["-n", NS, "content", "ingest", "--expected-digest"])
        .arg(bad_digest.to_string())
        .arg("bad-manifest")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    ingest
        .stdin
        .take()
        .unwrap()
        .write_all(bad.as_bytes())
        .unwrap();
    assert!(ingest.wait().unwrap().success());

    let src = c.source(false).await;
    let inv = src.inventory(&Allowlist::default()).await.unwrap();
    let refs: Vec<&str> = inv.images.iter().map(|i| i.reference.as_str()).collect();
    assert_eq!(refs.len(), 2, "{refs:?}");
    assert!(!refs.contains(&alias.as_str()));
    assert!(inv.not_mirrored.is_empty(), "{:?}", inv.not_mirrored);
    let bad_info = inv
        .images
        .iter()
        .find(|i| i.reference == "docker.io/library/inv-bad:v1")
        .unwrap();
    assert_eq!(bad_info.problems.len(), 1, "{bad_info:?}");
    assert!(
        bad_info.problems[0].contains("invalid manifest"),
        "{:?}",
        bad_info.problems
    );
    assert_eq!(bad_info.blobs.len(), 1);
    let keys = inv.keys();
    assert!(keys.contains(&Key::Digest(bad_digest)));
    assert!(keys.contains(&"docker.io/library/inv-bad:v1".parse().unwrap()));
}
