//! The mirror router with arbitrary methods, paths, queries and headers, over an in-memory
//! store (one blob, one manifest, one tag) and a DHT that knows nobody. Asserts no panic, a
//! bounded answer, and that every non-2xx answer to a GET carries the OCI error JSON.
#![no_main]

use std::io;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use axum::body::Body;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use http::{Method, Request};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use shoal_mirror::{
    BlobInfo, ByteStream, Descriptor, LocalStore, MirrorConfig, MirrorState, Provider, Providers,
};
use shoal_oci::{Digest, ErrorBody, Key, TagKey, media};
use tower::ServiceExt;

/// Content the store holds; their digests are in `fuzz/dicts/router.dict`.
const BLOB: &[u8] = b"shoal fuzz blob";
const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

struct Store {
    blob: Digest,
    manifest: Digest,
}

impl Store {
    fn get(&self, d: &Digest) -> Option<(&'static [u8], Option<String>)> {
        if *d == self.blob {
            Some((BLOB, None))
        } else if *d == self.manifest {
            Some((MANIFEST, Some(media::OCI_MANIFEST.to_owned())))
        } else {
            None
        }
    }
}

impl LocalStore for Store {
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Option<BlobInfo>> {
        let info = self.get(digest).map(|(b, media_type)| BlobInfo {
            size: b.len() as u64,
            media_type,
        });
        async move { info }.boxed()
    }

    fn read<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: Option<u64>,
    ) -> BoxFuture<'a, io::Result<ByteStream>> {
        let found = self.get(digest).map(|(b, _)| b);
        async move {
            let b = found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "absent"))?;
            // The router must only ask for ranges inside the blob.
            let start = usize::try_from(offset).expect("offset fits");
            assert!(
                start <= b.len(),
                "read at {offset} of a {} byte blob",
                b.len()
            );
            let end = len.map_or(b.len(), |l| start + usize::try_from(l).expect("len fits"));
            assert!(end <= b.len(), "read to {end} of a {} byte blob", b.len());
            let part = Bytes::from_static(&b[start..end]);
            Ok(futures::stream::iter([Ok(part)]).boxed())
        }
        .boxed()
    }

    fn resolve_tag<'a>(&'a self, tag: &'a TagKey) -> BoxFuture<'a, Option<Descriptor>> {
        let found = (*tag == TagKey::new("docker.io", "library/fuzz", "v1")).then(|| Descriptor {
            digest: self.manifest.clone(),
            media_type: media::OCI_MANIFEST.to_owned(),
            size: MANIFEST.len() as u64,
        });
        async move { found }.boxed()
    }
}

/// A DHT that has finished its lookup and found nobody.
struct Nobody;

impl Providers for Nobody {
    fn find(&self, _key: &Key) -> BoxStream<'static, Provider> {
        futures::stream::empty().boxed()
    }
}

struct World {
    rt: tokio::runtime::Runtime,
    state: MirrorState,
    _spool: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let spool = tempfile::tempdir().expect("spool dir");
        let store = Store {
            blob: Digest::sha256_of(BLOB),
            manifest: Digest::sha256_of(MANIFEST),
        };
        let cfg = MirrorConfig {
            spool_dir: spool.path().to_owned(),
            ..MirrorConfig::default()
        };
        let state = MirrorState::builder(cfg, Arc::new(store), Arc::new(Nobody))
            .build()
            .expect("mirror state");
        World {
            rt,
            state,
            _spool: spool,
        }
    })
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    method: u8,
    path: &'a str,
    query: Option<&'a str>,
    headers: Vec<(&'a str, &'a [u8])>,
}

const METHODS: [Method; 5] = [
    Method::GET,
    Method::HEAD,
    Method::GET,
    Method::POST,
    Method::PUT,
];

fuzz_target!(|input: Input<'_>| {
    let method = METHODS[usize::from(input.method) % METHODS.len()].clone();
    let uri = match input.query {
        Some(q) => format!("{}?{q}", input.path),
        None => input.path.to_owned(),
    };
    let mut req = Request::builder().method(method.clone()).uri(uri);
    for (name, value) in input.headers.iter().take(16) {
        req = req.header(*name, *value);
    }
    // hyper never hands the router a request it could not parse: skip what http refuses.
    let Ok(req) = req.body(Body::empty()) else {
        return;
    };
    let w = world();
    let router = shoal_mirror::router(w.state.clone());
    w.rt.block_on(async move {
        let res = tokio::time::timeout(std::time::Duration::from_secs(5), router.oneshot(req))
            .await
            .expect("the router answers within 5 s")
            .expect("infallible");
        let status = res.status();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        if status.is_success() || method == Method::HEAD {
            return;
        }
        let parsed: ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{status} body is not OCI error JSON ({e}): {:?}",
                String::from_utf8_lossy(&body)
            )
        });
        assert!(!parsed.errors.is_empty(), "{status}: empty errors");
    });
});
