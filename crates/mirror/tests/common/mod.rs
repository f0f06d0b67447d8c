//! In-memory fakes for the mirror's data sources, and loopback fake peers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use shoal_mirror::{
    BlobInfo, ByteStream, Descriptor, EventLog, FetchEventKind, LocalStore, MirrorConfig,
    MirrorState, Provider, Providers,
};
use shoal_oci::{Allowlist, Digest, Key, Range, TagKey};
use tower::ServiceExt;

pub const REG: &str = "docker.io";

/// A content store in memory, counting calls.
#[derive(Debug, Default)]
pub struct MemStore {
    pub blobs: Mutex<HashMap<Digest, (Bytes, Option<String>)>>,
    pub tags: Mutex<HashMap<TagKey, Descriptor>>,
    pub stats: AtomicUsize,
}

impl MemStore {
    pub fn put(&self, data: &[u8], media_type: Option<&str>) -> Digest {
        let d = Digest::sha256_of(data);
        self.blobs.lock().unwrap().insert(
            d.clone(),
            (Bytes::copy_from_slice(data), media_type.map(str::to_owned)),
        );
        d
    }

    pub fn tag(&self, repo: &str, tag: &str, manifest: &[u8], media_type: &str) -> Digest {
        let d = self.put(manifest, None);
        self.tags.lock().unwrap().insert(
            TagKey::new(REG, repo, tag),
            Descriptor {
                digest: d.clone(),
                media_type: media_type.into(),
                size: manifest.len() as u64,
            },
        );
        d
    }
}

impl LocalStore for MemStore {
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Option<BlobInfo>> {
        self.stats.fetch_add(1, Ordering::SeqCst);
        let r = self
            .blobs
            .lock()
            .unwrap()
            .get(digest)
            .map(|(b, mt)| BlobInfo {
                size: b.len() as u64,
                media_type: mt.clone(),
            });
        async move { r }.boxed()
    }

    fn read<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: Option<u64>,
    ) -> BoxFuture<'a, io::Result<ByteStream>> {
        let r = self
            .blobs
            .lock()
            .unwrap()
            .get(digest)
            .map(|(b, _)| b.clone());
        async move {
            let b = r.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "absent"))?;
            let end = len.map_or(b.len(), |l| (offset + l) as usize);
            let part = b.slice(offset as usize..end);
            let chunks: Vec<io::Result<Bytes>> = part
                .chunks(16 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Ok(futures::stream::iter(chunks).boxed())
        }
        .boxed()
    }

    fn resolve_tag<'a>(&'a self, tag: &'a TagKey) -> BoxFuture<'a, Option<Descriptor>> {
        let r = self.tags.lock().unwrap().get(tag).cloned();
        async move { r }.boxed()
    }
}

/// Providers per key; after the listed ones the stream stays pending forever (like a DHT
/// query still running). Counts `find` calls.
#[derive(Debug, Default)]
pub struct FakeProviders {
    pub map: Mutex<HashMap<Key, Vec<Provider>>>,
    pub finds: AtomicUsize,
}

impl FakeProviders {
    pub fn add(&self, key: Key, addr: SocketAddr, peer: &str) {
        self.map
            .lock()
            .unwrap()
            .entry(key)
            .or_default()
            .push(Provider {
                peer: peer.into(),
                addr,
            });
    }
    pub fn finds(&self) -> usize {
        self.finds.load(Ordering::SeqCst)
    }
}

impl Providers for FakeProviders {
    fn find(&self, key: &Key) -> BoxStream<'static, Provider> {
        self.finds.fetch_add(1, Ordering::SeqCst);
        let list = self
            .map
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default();
        futures::stream::iter(list)
            .chain(futures::stream::pending())
            .boxed()
    }
}

pub fn config() -> MirrorConfig {
    MirrorConfig {
        allowlist: Allowlist::default(),
        // Shared by tests that do not look at it; those that do use `spool_dir()`.
        spool_dir: std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mirror-spool"),
        connect_timeout: Duration::from_millis(300),
        first_byte_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(400),
        hedge_after: Duration::from_millis(150),
        ..MirrorConfig::default()
    }
}

/// A fresh spool directory for one test (removed when dropped).
pub fn spool_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("spool-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// Files currently in a spool directory (it may not exist yet).
pub fn spool_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// A mirror with an empty local store, its own spool directory and event log, asking `prov`
/// for providers (the client side of the peer-download tests).
pub struct Client {
    pub r: Router,
    pub st: MirrorState,
    pub log: Arc<EventLog>,
    pub spool: tempfile::TempDir,
}

impl Client {
    pub fn new(cfg: MirrorConfig, prov: &Arc<FakeProviders>) -> Client {
        let spool = spool_dir();
        let cfg = MirrorConfig {
            spool_dir: spool.path().join("spool"),
            ..cfg
        };
        let log = Arc::new(EventLog::new(1000));
        let st = MirrorState::builder(cfg, Arc::new(MemStore::default()), prov.clone())
            .events(log.clone())
            .build()
            .unwrap();
        Client {
            r: shoal_mirror::router(st.clone()),
            st,
            log,
            spool,
        }
    }

    /// Spool files present now.
    pub fn spooled(&self) -> usize {
        spool_files(&self.spool.path().join("spool"))
    }
}

pub fn state(cfg: MirrorConfig, store: &Arc<MemStore>, prov: &Arc<FakeProviders>) -> MirrorState {
    MirrorState::builder(cfg, store.clone(), prov.clone())
        .build()
        .unwrap()
}

/// Status, headers and the body (Err if the body stream failed).
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Result<Bytes, String>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn ok_body(&self) -> &Bytes {
        self.body.as_ref().expect("body completed")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.ok_body()).expect("JSON body")
    }
}

pub async fn send(router: &Router, req: http::Request<Body>) -> Answer {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .map_err(|e| e.to_string());
    Answer {
        status,
        headers,
        body,
    }
}

pub fn get(uri: &str) -> http::Request<Body> {
    http::Request::get(uri).body(Body::empty()).unwrap()
}

pub fn blob_uri(d: &Digest) -> String {
    format!("/v2/library/test/blobs/{d}?ns={REG}")
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ seed as u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// How a fake peer misbehaves.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Good,
    /// Same length, one byte flipped near the end.
    Corrupt,
    /// Send this many bytes, then break the connection.
    DieAfter(usize),
    /// Never send response headers.
    Hang,
    /// Send this many bytes, then stall forever.
    StallAfter(usize),
    /// Every byte inverted: whatever range it serves is wrong.
    CorruptAll,
    /// Serve normally until this many bytes were sent over all requests, then break the
    /// connection and refuse (503) every later request: a holder that dies mid-download.
    DieAfterTotal(usize),
    /// Same length, the byte at this offset flipped.
    CorruptAt(usize),
}

/// A fake peer serving one blob; records the `Range` header of every request.
#[derive(Debug)]
pub struct FakePeer {
    pub blob: Bytes,
    pub digest: Digest,
    pub mode: Mode,
    pub ranges: Mutex<Vec<Option<String>>>,
    pub peer_marked: Mutex<Vec<bool>>,
    /// Bytes per second each response is paced at (`None`: as fast as loopback goes).
    pub rate: Option<u64>,
    /// Body bytes sent over all requests.
    pub sent: AtomicUsize,
    /// The piece list served at `/shoal/v2/pieces/<digest>` (404 when `None`).
    pub list: Mutex<Option<Vec<u8>>>,
    /// Piece-list requests received.
    pub list_asks: AtomicUsize,
}

async fn fake_handler(State(p): State<Arc<FakePeer>>, req: Request) -> Response {
    // Piece-list requests are counted apart from blob requests.
    if req.uri().path().starts_with("/shoal/v2/pieces/") {
        if !req.uri().path().ends_with(&p.digest.to_string()) {
            return StatusCode::NOT_FOUND.into_response();
        }
        p.list_asks.fetch_add(1, Ordering::SeqCst);
        return match p.list.lock().unwrap().clone() {
            Some(l) => l.into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    let range = req
        .headers()
        .get(header::RANGE)
        .map(|v| v.to_str().unwrap().to_owned());
    p.ranges.lock().unwrap().push(range.clone());
    p.peer_marked
        .lock()
        .unwrap()
        .push(req.headers().contains_key(shoal_mirror::PEER_HEADER));
    if !req.uri().path().ends_with(&p.digest.to_string()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut blob = p.blob.to_vec();
    match p.mode {
        Mode::Corrupt => {
            let i = blob.len() - 2;
            blob[i] ^= 0xff;
        }
        Mode::CorruptAll => blob.iter_mut().for_each(|b| *b ^= 0xff),
        Mode::CorruptAt(i) => blob[i] ^= 0xff,
        Mode::DieAfterTotal(n) if p.sent.load(Ordering::SeqCst) >= n => {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        _ => {}
    }
    let size = blob.len() as u64;
    let (status, start, end) = match range.as_deref().map(|r| r.parse::<Range>().unwrap()) {
        Some(r) => {
            let br = r.resolve(size).unwrap();
            (StatusCode::PARTIAL_CONTENT, br.start, br.end_inclusive + 1)
        }
        None => (StatusCode::OK, 0, size),
    };
    if let Mode::Hang = p.mode {
        futures::future::pending::<()>().await;
    }
    let part = Bytes::from(blob).slice(start as usize..end as usize);
    let chunks: Vec<Bytes> = part.chunks(8 * 1024).map(Bytes::copy_from_slice).collect();
    let mode = p.mode;
    let mut sent = 0usize;
    let peer = p.clone();
    let stream = futures::stream::iter(chunks).then(move |c| {
        let before = sent;
        sent += c.len();
        let peer = peer.clone();
        async move {
            if let Some(rate) = peer.rate {
                let pause = Duration::from_secs_f64(c.len() as f64 / rate as f64);
                tokio::time::sleep(pause).await;
            }
            let total = peer.sent.fetch_add(c.len(), Ordering::SeqCst);
            match mode {
                Mode::DieAfterTotal(n) if total >= n => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(io::Error::other("peer died"))
                }
                Mode::DieAfter(n) if before >= n => {
                    // Let hyper flush what was sent before breaking the connection.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(io::Error::other("peer died"))
                }
                Mode::StallAfter(n) if before >= n => {
                    futures::future::pending::<()>().await;
                    Ok(c)
                }
                _ => Ok(c),
            }
        }
    });
    let mut res = Response::new(Body::from_stream(stream));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_LENGTH, (end - start).into());
    h.insert(
        header::CONTENT_TYPE,
        "application/octet-stream".parse().unwrap(),
    );
    h.insert(
        "docker-content-digest",
        p.digest.to_string().parse().unwrap(),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        let cr = format!("bytes {start}-{}/{size}", end - 1);
        h.insert(header::CONTENT_RANGE, cr.parse().unwrap());
    }
    res
}

/// Serve `router` on 127.0.0.1:0 (loopback only); returns its address.
pub async fn serve(router: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, router).await;
    });
    addr
}

pub async fn fake_peer(blob: &[u8], mode: Mode) -> (Arc<FakePeer>, SocketAddr) {
    paced_peer(blob, mode, None).await
}

/// A fake peer whose responses are paced at `rate` bytes per second.
pub async fn paced_peer(blob: &[u8], mode: Mode, rate: Option<u64>) -> (Arc<FakePeer>, SocketAddr) {
    let p = Arc::new(FakePeer {
        blob: Bytes::copy_from_slice(blob),
        digest: Digest::sha256_of(blob),
        mode,
        ranges: Mutex::new(vec![]),
        peer_marked: Mutex::new(vec![]),
        rate,
        sent: AtomicUsize::new(0),
        list: Mutex::new(None),
        list_asks: AtomicUsize::new(0),
    });
    let addr = serve(Router::new().fallback(fake_handler).with_state(p.clone())).await;
    (p, addr)
}

/// A piece list in the wire format (piece size, blob size, big-endian u64s, then the SHA-256
/// chaining state at the end of every piece but the last) for `blob`.
pub fn piece_list(blob: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(piece as u64).to_be_bytes());
    out.extend_from_slice(&(blob.len() as u64).to_be_bytes());
    let mut h = shoal_oci::ChainHasher::new();
    for c in blob.chunks(piece) {
        h.update(c);
        if h.len() < blob.len() as u64 {
            out.extend_from_slice(&h.state().unwrap().to_bytes());
        }
    }
    out
}

/// An ingest control that records aborts.
#[derive(Debug)]
pub struct FakeIngest {
    pub available: std::sync::atomic::AtomicBool,
    pub aborts: Mutex<Vec<Digest>>,
}

impl FakeIngest {
    pub fn new() -> Arc<FakeIngest> {
        Arc::new(FakeIngest {
            available: std::sync::atomic::AtomicBool::new(true),
            aborts: Mutex::new(Vec::new()),
        })
    }
    pub fn aborted(&self) -> usize {
        self.aborts.lock().unwrap().len()
    }
}

impl shoal_mirror::IngestControl for FakeIngest {
    fn available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }
    fn abort<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<usize, String>> {
        self.aborts.lock().unwrap().push(digest.clone());
        async { Ok(1) }.boxed()
    }
}

impl Client {
    /// A client mirror that streams peer blobs (it can abort ingests through `ingest`).
    pub fn streaming(
        cfg: MirrorConfig,
        prov: &Arc<FakeProviders>,
        ingest: Arc<FakeIngest>,
    ) -> Client {
        let spool = spool_dir();
        let cfg = MirrorConfig {
            spool_dir: spool.path().join("spool"),
            ..cfg
        };
        let log = Arc::new(EventLog::new(1000));
        let st = MirrorState::builder(cfg, Arc::new(MemStore::default()), prov.clone())
            .events(log.clone())
            .ingest(ingest)
            .build()
            .unwrap();
        Client {
            r: shoal_mirror::router(st.clone()),
            st,
            log,
            spool,
        }
    }
}

/// Status and what the body delivered before it ended or failed.
pub struct Got {
    pub status: StatusCode,
    pub bytes: Vec<u8>,
    pub failed: bool,
}

pub async fn fetch(c: &Client, d: &Digest) -> Got {
    let res = c.r.clone().oneshot(get(&blob_uri(d))).await.unwrap();
    let status = res.status();
    let mut body = res.into_body();
    let mut bytes = Vec::new();
    let mut failed = false;
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => {
                if let Ok(b) = f.into_data() {
                    bytes.extend_from_slice(&b);
                }
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    Got {
        status,
        bytes,
        failed,
    }
}

/// Bytes per peer from the `Served` events of the last verified download, checking that the
/// spans of all peers are disjoint and cover the blob exactly.
pub fn served(log: &EventLog, key: &str, size: u64) -> HashMap<String, u64> {
    let mut by_peer = HashMap::new();
    let mut spans = Vec::new();
    for e in log.for_key(key) {
        if let FetchEventKind::Served { bytes, spans: s } = e.kind {
            assert_eq!(bytes, s.iter().map(|(a, b)| b - a).sum::<u64>());
            *by_peer.entry(e.peer.unwrap()).or_insert(0) += bytes;
            spans.extend(s);
        }
    }
    spans.sort_unstable();
    let mut at = 0;
    for (s, e) in spans {
        assert_eq!(s, at, "spans must tile the blob: {by_peer:?}");
        at = e;
    }
    assert_eq!(at, size);
    by_peer
}
