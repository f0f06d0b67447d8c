//! Media types of the OCI image spec and their Docker v2 equivalents, and their classification.
//!
//! The mirror must answer manifests with the exact media type it was given and must know which
//! blobs are manifests (walked for their children) and which are opaque layers, whichever of the
//! two vocabularies an image was pushed with.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-platform).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image configuration.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI empty descriptor payload (`{}`), used as the config of artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI non-distributable uncompressed layer (deprecated by the spec, still seen).
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// OCI non-distributable gzip layer.
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// OCI non-distributable zstd layer.
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker container configuration.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker foreign layer (fetched from its `urls`, e.g. Windows base layers).
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// The manifest media types the mirror accepts and serves, most specific first; suitable for an
/// `Accept` header when asking for a manifest.
pub const ACCEPT_MANIFESTS: &[&str] = &[
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
];

/// What role a blob of a given media type plays in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// A list of manifests (OCI index, Docker manifest list).
    Index,
    /// An image manifest.
    Manifest,
    /// An image configuration.
    Config,
    /// A filesystem layer.
    Layer,
    /// Anything else (artifacts, attestations, unknown types).
    Other,
}

impl MediaKind {
    /// Index or manifest: content served from the `/manifests/` endpoint.
    pub fn is_manifest_like(self) -> bool {
        matches!(self, MediaKind::Index | MediaKind::Manifest)
    }
}

/// Classify a media type. Parameters (`; charset=utf-8`), surrounding whitespace and case are
/// ignored, as they are for any HTTP media type.
pub fn classify(media_type: &str) -> MediaKind {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => MediaKind::Index,
        OCI_MANIFEST | DOCKER_MANIFEST => MediaKind::Manifest,
        OCI_CONFIG | DOCKER_CONFIG => MediaKind::Config,
        // Every OCI layer variant shares this prefix, including future compressions.
        e if e.starts_with("application/vnd.oci.image.layer.")
            || e.starts_with("application/vnd.docker.image.rootfs.") =>
        {
            MediaKind::Layer
        }
        _ => MediaKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_constant() {
        assert_eq!(classify(OCI_INDEX), MediaKind::Index);
        assert_eq!(classify(DOCKER_MANIFEST_LIST), MediaKind::Index);
        assert_eq!(classify(OCI_MANIFEST), MediaKind::Manifest);
        assert_eq!(classify(DOCKER_MANIFEST), MediaKind::Manifest);
        assert_eq!(classify(OCI_CONFIG), MediaKind::Config);
        assert_eq!(classify(DOCKER_CONFIG), MediaKind::Config);
        for layer in [
            OCI_LAYER_TAR,
            OCI_LAYER_TAR_GZIP,
            OCI_LAYER_TAR_ZSTD,
            OCI_LAYER_NONDISTRIBUTABLE_TAR,
            OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP,
            OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD,
            DOCKER_LAYER_TAR_GZIP,
            DOCKER_FOREIGN_LAYER,
        ] {
            assert_eq!(classify(layer), MediaKind::Layer, "{layer}");
        }
        assert_eq!(classify(OCI_EMPTY), MediaKind::Other);
        assert_eq!(classify("application/json"), MediaKind::Other);
        assert_eq!(classify(""), MediaKind::Other);
    }

    #[test]
    fn ignores_parameters_case_and_whitespace() {
        assert_eq!(
            classify(" Application/VND.oci.image.index.v1+json ; charset=utf-8"),
            MediaKind::Index
        );
    }

    #[test]
    fn accept_list_is_manifests_only() {
        assert!(
            ACCEPT_MANIFESTS
                .iter()
                .all(|m| classify(m).is_manifest_like())
        );
        assert!(!MediaKind::Layer.is_manifest_like());
    }
}
