//! Property tests: every printable type parses back to itself, range resolution stays inside
//! the blob, and no parser panics on arbitrary input.

use proptest::prelude::*;
use shoal_oci::{
    Algorithm, Allowlist, ApiPath, Descriptor, Digest, Document, ErrorBody, ErrorCode, ErrorInfo,
    ImageIndex, ImageManifest, Key, ManifestRef, Range, RangeError, Reference, Repository, Tag,
    TagKey, media,
};

fn digest() -> impl Strategy<Value = Digest> {
    prop_oneof![
        "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")),
        "[0-9a-f]{128}".prop_map(|h| format!("sha512:{h}"))
    ]
    .prop_map(|s| s.parse().expect("generated digest is valid"))
}

fn repository() -> impl Strategy<Value = Repository> {
    let component = r"[a-z0-9]{1,8}((\.|_|__|-{1,3})[a-z0-9]{1,8}){0,2}";
    proptest::string::string_regex(&format!("{component}(/{component}){{0,3}}"))
        .expect("valid regex")
        .prop_map(|s| s.parse().expect("generated repository is valid"))
}

fn tag() -> impl Strategy<Value = Tag> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}".prop_map(|s| s.parse().expect("generated tag is valid"))
}

/// Registries that a reference's first component is recognised as.
fn registry() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("docker.io".to_owned()),
        Just("localhost".to_owned()),
        Just("localhost:5000".to_owned()),
        Just("[::1]:5000".to_owned()),
        "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){1,2}(:[1-9][0-9]{0,3})?",
    ]
}

fn manifest_ref() -> impl Strategy<Value = ManifestRef> {
    prop_oneof![
        tag().prop_map(ManifestRef::Tag),
        digest().prop_map(ManifestRef::Digest)
    ]
}

fn api_path() -> impl Strategy<Value = ApiPath> {
    prop_oneof![
        Just(ApiPath::Base),
        (repository(), manifest_ref()).prop_map(|(repository, reference)| ApiPath::Manifest {
            repository,
            reference
        }),
        (repository(), digest())
            .prop_map(|(repository, digest)| ApiPath::Blob { repository, digest }),
    ]
}

fn range() -> impl Strategy<Value = Range> {
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Range::Bounded {
            first: a.min(b),
            last: a.max(b)
        }),
        (0u64..2000, 0u64..2000).prop_map(|(a, b)| Range::Bounded {
            first: a.min(b),
            last: a.max(b)
        }),
        any::<u64>().prop_map(|first| Range::From { first }),
        (0u64..2000).prop_map(|first| Range::From { first }),
        any::<u64>().prop_map(|length| Range::Suffix { length }),
        (0u64..2000).prop_map(|length| Range::Suffix { length }),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..2000, any::<u64>()]
}

fn descriptor(media_type: &'static str) -> impl Strategy<Value = Descriptor> {
    (digest(), 0u64..=i64::MAX as u64).prop_map(move |(digest, size)| Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
        platform: None,
        annotations: Default::default(),
        urls: Vec::new(),
        artifact_type: None,
    })
}

/// Strings biased toward the characters the parsers care about.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        r"[/a-zA-Z0-9:.@_%\\\[\]=, \t-]{0,80}",
        r"/v2/[/a-z0-9:.@_%\\-]{0,80}",
        r"bytes ?= ?[0-9, -]{0,30}",
    ]
}

proptest! {
    #[test]
    fn digest_round_trips(d in digest()) {
        prop_assert_eq!(d.to_string().parse::<Digest>(), Ok(d.clone()));
        let json = serde_json::to_string(&d).unwrap();
        prop_assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }

    #[test]
    fn computed_digests_round_trip(data in any::<Vec<u8>>(), sha512 in any::<bool>()) {
        let alg = if sha512 { Algorithm::Sha512 } else { Algorithm::Sha256 };
        let d = Digest::compute(alg, &data);
        prop_assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
    }

    #[test]
    fn key_round_trips(reg in registry(), repo in repository(), t in tag(), d in digest()) {
        for key in [Key::Tag(TagKey::new(reg.as_str(), repo.as_str(), t.as_str())), Key::Digest(d.clone())] {
            prop_assert_eq!(key.to_string().parse::<Key>(), Ok(key.clone()));
        }
    }

    #[test]
    fn reference_round_trips(
        reg in registry(),
        repo in repository(),
        t in proptest::option::of(tag()),
        d in proptest::option::of(digest()),
    ) {
        let r = Reference::new(&reg, repo, t.clone(), d.clone()).unwrap();
        let printed = r.to_string();
        let again = Reference::parse(&printed).unwrap();
        prop_assert_eq!(&again, &r);
        prop_assert_eq!(again.to_string(), printed);
        prop_assert_eq!(r.digest(), d.as_ref());
        if t.is_none() && d.is_none() {
            prop_assert_eq!(r.tag().map(Tag::as_str), Some("latest"));
        }
        prop_assert_eq!(r.tag_key().is_some(), r.tag().is_some());
    }

    #[test]
    fn api_path_round_trips(p in api_path()) {
        prop_assert_eq!(ApiPath::parse(&p.to_string()), Ok(p));
    }

    /// A registry put in front of any content path is split off again, normalised, and the rest
    /// parses to the same route; a path without a registry prefix is never split.
    #[test]
    fn registry_prefix_splits_back(reg in registry(), p in api_path()) {
        prop_assume!(p != ApiPath::Base);
        let plain = p.to_string();
        let prefixed = format!("/v2/{reg}/{}", &plain["/v2/".len()..]);
        let (got, rest) = shoal_oci::split_registry(&prefixed).expect("split");
        prop_assert_eq!(got, shoal_oci::normalize_registry(&reg));
        prop_assert_eq!(ApiPath::parse(&rest), Ok(p.clone()));
        if let Some((first, _)) = plain["/v2/".len()..].split_once('/') {
            if !first.contains('.') {
                prop_assert_eq!(shoal_oci::split_registry(&plain), None);
            }
        }
    }

    #[test]
    fn range_round_trips_and_resolves_inside_the_blob(r in range(), size in size()) {
        prop_assert_eq!(r.to_string().parse::<Range>(), Ok(r));
        match r.resolve(size) {
            Ok(br) => {
                prop_assert!(br.start <= br.end_inclusive && br.end_inclusive < size);
                prop_assert_eq!(br.len(), br.end_inclusive - br.start + 1);
                match r {
                    Range::Bounded { first, last } => {
                        prop_assert_eq!(br.start, first);
                        prop_assert_eq!(br.end_inclusive, last.min(size - 1));
                    }
                    Range::From { first } => {
                        prop_assert_eq!((br.start, br.end_inclusive), (first, size - 1));
                    }
                    Range::Suffix { length } => {
                        prop_assert_eq!(br.end_inclusive, size - 1);
                        prop_assert_eq!(br.len(), length.min(size));
                    }
                }
                let expected = format!("bytes {}-{}/{size}", br.start, br.end_inclusive);
                prop_assert_eq!(r.content_range(size), expected);
            }
            Err(e) => {
                prop_assert_eq!(e, RangeError::Unsatisfiable { range: r, size });
                let unsatisfiable = size == 0 || match r {
                    Range::Bounded { first, .. } | Range::From { first } => first >= size,
                    Range::Suffix { length } => length == 0,
                };
                prop_assert!(unsatisfiable);
                prop_assert_eq!(r.content_range(size), format!("bytes */{size}"));
            }
        }
    }

    #[test]
    fn error_body_json_round_trips(
        codes in proptest::collection::vec(proptest::sample::select(ErrorCode::ALL.to_vec()), 1..4),
        message in any::<String>(),
        detail in proptest::option::of(prop_oneof![
            any::<String>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (any::<String>(), any::<u32>()).prop_map(|(k, v)| serde_json::json!({ k: v })),
        ]),
    ) {
        let body = ErrorBody {
            errors: codes
                .iter()
                .map(|&code| ErrorInfo { code, message: message.clone(), detail: detail.clone() })
                .collect(),
        };
        prop_assert_eq!(ErrorBody::from_json(body.to_json().as_bytes()).unwrap(), body.clone());
        prop_assert_eq!(body.status(), codes[0].status());
        let single = ErrorBody::single(codes[0], message, detail);
        prop_assert_eq!(ErrorBody::from_json(single.to_json().as_bytes()).unwrap(), single);
    }

    #[test]
    fn generated_documents_parse_back(
        config in descriptor(media::OCI_CONFIG),
        layers in proptest::collection::vec(descriptor(media::OCI_LAYER_TAR_GZIP), 0..5),
        entries in proptest::collection::vec(descriptor(media::OCI_MANIFEST), 0..5),
        hinted in any::<bool>(),
    ) {
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: (!hinted).then(|| media::OCI_MANIFEST.to_owned()),
            artifact_type: None,
            config: config.clone(),
            layers: layers.clone(),
            subject: None,
            annotations: Default::default(),
        };
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let doc = Document::parse(hinted.then_some(media::OCI_MANIFEST), &bytes).unwrap();
        let mut children = vec![config];
        children.extend(layers);
        prop_assert_eq!(doc.children(), children);
        prop_assert_eq!(doc, Document::Manifest(manifest));

        let index = ImageIndex {
            schema_version: 2,
            media_type: (!hinted).then(|| media::OCI_INDEX.to_owned()),
            manifests: entries.clone(),
            subject: None,
            annotations: Default::default(),
        };
        let bytes = serde_json::to_vec(&index).unwrap();
        let doc = Document::parse(None, &bytes).unwrap();
        prop_assert_eq!(doc.children(), entries);
        prop_assert_eq!(doc, Document::Index(index));
    }

    #[test]
    fn parsers_never_panic(s in nasty()) {
        let _ = s.parse::<Digest>();
        let _ = s.parse::<Key>();
        let _ = s.parse::<Repository>();
        let _ = s.parse::<Tag>();
        let _ = s.parse::<ManifestRef>();
        if let Ok(a) = s.parse::<Allowlist>() {
            // The scheme of a plain-HTTP entry survives printing.
            prop_assert_eq!(a.to_string().parse::<Allowlist>(), Ok(a));
        }
        let _ = media::classify(&s);
        let _ = ErrorBody::from_json(s.as_bytes());
        let _ = Document::parse(Some(&s), s.as_bytes());
        if let Ok(r) = s.parse::<Reference>() {
            // Whatever parses must print in a form that parses to the same reference.
            prop_assert_eq!(r.to_string().parse::<Reference>(), Ok(r));
        }
        if let Ok(p) = ApiPath::parse(&s) {
            prop_assert_eq!(ApiPath::parse(&p.to_string()), Ok(p));
        }
        if let Ok(r) = s.parse::<Range>() {
            prop_assert_eq!(r.to_string().parse::<Range>(), Ok(r));
            for size in [0, 1, 1000, u64::MAX] {
                let _ = r.resolve(size);
                let _ = r.content_range(size);
            }
        }
    }

    #[test]
    fn documents_never_panic(bytes in any::<Vec<u8>>(), hint in proptest::option::of(any::<String>())) {
        let _ = Document::parse(hint.as_deref(), &bytes);
        let _ = ErrorBody::from_json(&bytes);
    }
}
