//! Image manifests and indexes as serde documents, and the one step of walking an image.
//!
//! Shoal advertises every blob of an image it holds, which means walking index -> manifests ->
//! config + layers. The walk's I/O belongs to the caller; this module parses one document
//! (fetched from containerd, a peer or a registry, so untrusted) and names its children.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};

use crate::Digest;
use crate::media::{self, MediaKind};

/// Largest manifest accepted, as the `distribution` registry limits it (4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Descriptor sizes are int64 in the spec; anything larger is refused.
fn deserialize_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let size = u64::deserialize(d)?;
    if size > i64::MAX as u64 {
        return Err(serde::de::Error::custom(format!(
            "descriptor size {size} exceeds the int64 maximum"
        )));
    }
    Ok(size)
}

/// The platform an index entry's manifest runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A typed, content-addressed reference to a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    #[serde(deserialize_with = "deserialize_size")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// The role of the described blob, from its media type.
    pub fn kind(&self) -> MediaKind {
        media::classify(&self.media_type)
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Why a manifest document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {len} bytes; at most {MAX_MANIFEST_BYTES} are accepted")]
    TooLarge { len: usize },
    #[error("manifest is not a JSON object: {0}")]
    NotJson(String),
    #[error("media type {0:?} is not an image manifest or index")]
    UnsupportedMediaType(String),
    #[error("document is neither an index (manifests) nor a manifest (config + layers)")]
    Unrecognised,
    #[error("schemaVersion {0} is not supported (expected 2)")]
    UnsupportedSchemaVersion(u32),
    #[error("invalid {kind}: {message}")]
    Invalid { kind: &'static str, message: String },
}

/// Just enough of a document to tell which kind it is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    media_type: Option<String>,
    manifests: Option<IgnoredAny>,
    config: Option<IgnoredAny>,
    layers: Option<IgnoredAny>,
}

/// A parsed manifest-like document.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "documents are parsed one at a time; boxing would only complicate matching"
)]
pub enum Document {
    Index(ImageIndex),
    Manifest(ImageManifest),
}

impl Document {
    /// Parse `bytes`, deciding between index and manifest by the document's own `mediaType`,
    /// else by `media_type_hint` (e.g. the `Content-Type` it came with), else by structure.
    /// Unknown fields are ignored; digests, sizes and `schemaVersion` are validated.
    pub fn parse(media_type_hint: Option<&str>, bytes: &[u8]) -> Result<Document, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { len: bytes.len() });
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::NotJson(e.to_string()))?;
        let kind = match probe.media_type.as_deref() {
            Some(mt) => match media::classify(mt) {
                k @ (MediaKind::Index | MediaKind::Manifest) => k,
                _ => return Err(ManifestError::UnsupportedMediaType(mt.to_owned())),
            },
            None => match media_type_hint.map(media::classify) {
                Some(k @ (MediaKind::Index | MediaKind::Manifest)) => k,
                _ if probe.manifests.is_some() => MediaKind::Index,
                _ if probe.config.is_some() && probe.layers.is_some() => MediaKind::Manifest,
                _ => return Err(ManifestError::Unrecognised),
            },
        };
        let invalid = |kind| {
            move |e: serde_json::Error| ManifestError::Invalid {
                kind,
                message: e.to_string(),
            }
        };
        let (doc, version) = if kind == MediaKind::Index {
            let index: ImageIndex = serde_json::from_slice(bytes).map_err(invalid("index"))?;
            let v = index.schema_version;
            (Document::Index(index), v)
        } else {
            let manifest: ImageManifest =
                serde_json::from_slice(bytes).map_err(invalid("manifest"))?;
            let v = manifest.schema_version;
            (Document::Manifest(manifest), v)
        };
        if version != 2 {
            return Err(ManifestError::UnsupportedSchemaVersion(version));
        }
        Ok(doc)
    }

    /// The document's declared media type, if it declares one.
    pub fn media_type(&self) -> Option<&str> {
        match self {
            Document::Index(i) => i.media_type.as_deref(),
            Document::Manifest(m) => m.media_type.as_deref(),
        }
    }

    /// The blobs this document points at, in walk order: an index's manifests, or a manifest's
    /// config followed by its layers. A `subject` is not a child (it points back at the
    /// image this one refers to) and is not included.
    pub fn children(&self) -> Vec<Descriptor> {
        match self {
            Document::Index(i) => i.manifests.clone(),
            Document::Manifest(m) => std::iter::once(&m.config)
                .chain(&m.layers)
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn manifest_json(media_type: Option<&str>) -> String {
        let mt = media_type.map_or(String::new(), |m| format!(r#""mediaType":"{m}","#));
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"{}","digest":"{D1}","size":7}},
            "layers":[{{"mediaType":"{}","digest":"{D2}","size":100,"urls":["https://x"]}},
                      {{"mediaType":"{}","digest":"{D3}","size":200}}],
            "annotations":{{"a":"b"}},"futureField":[1,2]}}"#,
            media::DOCKER_CONFIG,
            media::DOCKER_FOREIGN_LAYER,
            media::DOCKER_LAYER_TAR_GZIP
        )
    }

    fn index_json(media_type: Option<&str>) -> String {
        let mt = media_type.map_or(String::new(), |m| format!(r#""mediaType":"{m}","#));
        format!(
            r#"{{"schemaVersion":2,{mt}"manifests":[
              {{"mediaType":"{om}","digest":"{D1}","size":10,
                "platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{om}","digest":"{D2}","size":11,
                "platform":{{"architecture":"arm64","os":"linux","variant":"v8","os.version":"x"}}}}]}}"#,
            om = media::OCI_MANIFEST
        )
    }

    #[test]
    fn manifest_by_media_type_field() {
        let doc =
            Document::parse(None, manifest_json(Some(media::DOCKER_MANIFEST)).as_bytes()).unwrap();
        let Document::Manifest(m) = &doc else {
            panic!("expected a manifest, got {doc:?}");
        };
        assert_eq!(m.layers[0].urls, vec!["https://x".to_owned()]);
        assert_eq!(m.annotations.get("a").map(String::as_str), Some("b"));
        assert_eq!(doc.media_type(), Some(media::DOCKER_MANIFEST));
        let kids = doc.children();
        let digests: Vec<String> = kids.iter().map(|d| d.digest.to_string()).collect();
        assert_eq!(digests, [D1, D2, D3]);
        assert_eq!(kids[0].kind(), MediaKind::Config);
        assert_eq!(kids[1].kind(), MediaKind::Layer);
    }

    #[test]
    fn index_by_hint_then_by_structure() {
        let json = index_json(None);
        let by_hint = Document::parse(Some(media::OCI_INDEX), json.as_bytes()).unwrap();
        let by_shape = Document::parse(Some("application/json"), json.as_bytes()).unwrap();
        assert_eq!(by_hint, by_shape);
        let Document::Index(i) = &by_hint else {
            panic!("expected an index, got {by_hint:?}");
        };
        let arm = i.manifests[1].platform.as_ref().unwrap();
        assert_eq!(arm.variant.as_deref(), Some("v8"));
        assert_eq!(arm.os_version.as_deref(), Some("x"));
        assert_eq!(by_hint.children().len(), 2);
        assert_eq!(by_hint.children()[0].kind(), MediaKind::Manifest);
    }

    #[test]
    fn media_type_field_beats_hint() {
        let json = manifest_json(Some(media::OCI_MANIFEST));
        let doc = Document::parse(Some(media::OCI_INDEX), json.as_bytes()).unwrap();
        assert!(matches!(doc, Document::Manifest(_)));
        let doc = Document::parse(None, manifest_json(None).as_bytes()).unwrap();
        assert!(matches!(doc, Document::Manifest(_)));
    }

    #[test]
    fn refuses_bad_documents_with_reason() {
        assert!(matches!(
            Document::parse(None, b"not json"),
            Err(ManifestError::NotJson(_))
        ));
        assert!(matches!(
            Document::parse(None, b"[1]"),
            Err(ManifestError::NotJson(_))
        ));
        assert_eq!(
            Document::parse(None, br#"{"schemaVersion":2}"#),
            Err(ManifestError::Unrecognised)
        );
        assert_eq!(
            Document::parse(
                None,
                br#"{"mediaType":"application/vnd.oci.image.layer.v1.tar"}"#
            ),
            Err(ManifestError::UnsupportedMediaType(
                media::OCI_LAYER_TAR.into()
            ))
        );
        let v1 = manifest_json(None).replace("\"schemaVersion\":2", "\"schemaVersion\":1");
        assert_eq!(
            Document::parse(None, v1.as_bytes()),
            Err(ManifestError::UnsupportedSchemaVersion(1))
        );
        let bad_digest = manifest_json(None).replace(D2, "sha256:nothex");
        assert!(matches!(
            Document::parse(None, bad_digest.as_bytes()),
            Err(ManifestError::Invalid {
                kind: "manifest",
                ..
            })
        ));
        for size in ["-1", "9223372036854775808", "1.5"] {
            let bad_size = manifest_json(None).replace("\"size\":100", &format!("\"size\":{size}"));
            assert!(
                matches!(
                    Document::parse(None, bad_size.as_bytes()),
                    Err(ManifestError::Invalid { .. })
                ),
                "{size}"
            );
        }
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert_eq!(
            Document::parse(None, &big),
            Err(ManifestError::TooLarge {
                len: MAX_MANIFEST_BYTES + 1
            })
        );
    }

    #[test]
    fn serialises_back_without_empty_fields() {
        let doc = Document::parse(None, index_json(Some(media::OCI_INDEX)).as_bytes()).unwrap();
        let Document::Index(i) = doc else {
            panic!("expected an index");
        };
        let json = serde_json::to_string(&i).unwrap();
        assert!(!json.contains("annotations") && !json.contains("urls"));
        let again: ImageIndex = serde_json::from_str(&json).unwrap();
        assert_eq!(again, i);
    }
}
