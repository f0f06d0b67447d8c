//! Writing OCI image layouts with reproducible digests, offline: tar layers with fixed owners,
//! modes and mtimes, gzip without timestamps, file contents from a seeded ChaCha stream (whose
//! output is fixed by its spec, unlike `rand`'s general-purpose generators), and JSON with
//! sorted keys whatever serde_json features the workspace enables.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use shoal_oci::Digest;

pub(crate) const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// 2020-01-01T00:00:00Z, the mtime of every tar entry.
const MTIME: u64 = 1_577_836_800;

/// A blob written to a layout.
#[derive(Debug, Clone)]
pub(crate) struct Blob {
    pub(crate) digest: Digest,
    pub(crate) media_type: String,
    pub(crate) size: u64,
}

impl Blob {
    /// The OCI descriptor of this blob.
    pub(crate) fn descriptor(&self) -> Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest.to_string(),
            "size": self.size,
        })
    }
}

/// What goes into a file of a layer.
#[derive(Debug, Clone)]
pub(crate) enum Content {
    Text(String),
    /// `len` bytes of the ChaCha8 stream seeded with `seed`.
    Random {
        seed: u64,
        len: u64,
    },
}

#[derive(Debug, Clone)]
pub(crate) enum Entry {
    Dir(&'static str),
    File(&'static str, Content),
}

/// Fills reads from a seeded ChaCha8 stream in fixed 64 KiB blocks, so the bytes do not depend
/// on how the consumer sizes its reads.
struct RandomReader {
    rng: ChaCha8Rng,
    block: Vec<u8>,
    pos: usize,
    remaining: u64,
}

impl RandomReader {
    fn new(seed: u64, len: u64) -> RandomReader {
        RandomReader {
            rng: ChaCha8Rng::seed_from_u64(seed),
            block: vec![0; 64 * 1024],
            pos: 64 * 1024,
            remaining: len,
        }
    }
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        if self.pos == self.block.len() {
            self.rng.fill_bytes(&mut self.block);
            self.pos = 0;
        }
        let n = buf
            .len()
            .min(self.block.len() - self.pos)
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (W, Digest, u64) {
        let hex = hex::encode(self.hasher.finalize());
        let digest = format!("sha256:{hex}").parse().expect("sha256 digest");
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An OCI image layout directory being written.
#[derive(Debug)]
pub(crate) struct LayoutWriter {
    root: PathBuf,
    tmp_counter: u32,
}

fn io_panic<T>(what: &str, path: &Path) -> impl FnOnce(io::Error) -> T {
    let what = what.to_string();
    let path = path.display().to_string();
    move |e| panic!("shoal image build: {what} {path}: {e}")
}

impl LayoutWriter {
    pub(crate) fn create(root: &Path) -> LayoutWriter {
        let blobs = root.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap_or_else(io_panic("create", &blobs));
        let layout = root.join("oci-layout");
        fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .unwrap_or_else(io_panic("write", &layout));
        LayoutWriter {
            root: root.to_path_buf(),
            tmp_counter: 0,
        }
    }

    fn tmp_path(&mut self) -> PathBuf {
        self.tmp_counter += 1;
        self.root.join(format!("blobs/.tmp-{}", self.tmp_counter))
    }

    fn commit(&self, tmp: &Path, digest: &Digest) {
        let dest = self.root.join("blobs/sha256").join(digest.hex());
        fs::rename(tmp, &dest).unwrap_or_else(io_panic("rename to", &dest));
    }

    /// Store `bytes` as a blob.
    pub(crate) fn blob(&mut self, media_type: &str, bytes: &[u8]) -> Blob {
        let digest = Digest::sha256_of(bytes);
        let tmp = self.tmp_path();
        fs::write(&tmp, bytes).unwrap_or_else(io_panic("write", &tmp));
        self.commit(&tmp, &digest);
        Blob {
            digest,
            media_type: media_type.to_string(),
            size: bytes.len() as u64,
        }
    }

    /// Store a JSON document (keys sorted) as a blob.
    pub(crate) fn json_blob(&mut self, media_type: &str, value: &Value) -> Blob {
        let bytes = serde_json::to_vec(&canonical(value)).expect("JSON serialises");
        self.blob(media_type, &bytes)
    }

    /// Build a gzip tar layer from `entries`; returns the blob and its diff_id (digest of the tar).
    pub(crate) fn layer(&mut self, entries: &[Entry], level: Compression) -> (Blob, Digest) {
        let tmp = self.tmp_path();
        let file = File::create(&tmp).unwrap_or_else(io_panic("create", &tmp));
        let outer = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
        let gz = flate2::GzBuilder::new().mtime(0).write(outer, level);
        let mut tar = tar::Builder::new(HashWriter::new(gz));
        for entry in entries {
            append(&mut tar, entry).unwrap_or_else(io_panic("append tar entry to", &tmp));
        }
        let inner = tar
            .into_inner()
            .unwrap_or_else(io_panic("finish tar", &tmp));
        let (gz, diff_id, _) = inner.finish();
        let outer: HashWriter<BufWriter<File>> =
            gz.finish().unwrap_or_else(io_panic("finish gzip", &tmp));
        let (mut buf, digest, size) = outer.finish();
        buf.flush().unwrap_or_else(io_panic("flush", &tmp));
        drop(buf);
        self.commit(&tmp, &digest);
        let blob = Blob {
            digest,
            media_type: MT_LAYER_GZIP.to_string(),
            size,
        };
        (blob, diff_id)
    }

    /// Write `index.json` pointing at `top` under the tag annotation `tag`.
    pub(crate) fn index(&self, top: &Blob, tag: &str) {
        let mut desc = top.descriptor();
        desc["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": tag });
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": [desc] });
        let path = self.root.join("index.json");
        let bytes = serde_json::to_vec(&canonical(&index)).expect("JSON serialises");
        fs::write(&path, bytes).unwrap_or_else(io_panic("write", &path));
    }
}

fn append<W: Write>(tar: &mut tar::Builder<W>, entry: &Entry) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    match entry {
        Entry::Dir(path) => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, path, io::empty())
        }
        Entry::File(path, content) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            match content {
                Content::Text(t) => {
                    h.set_size(t.len() as u64);
                    tar.append_data(&mut h, path, t.as_bytes())
                }
                Content::Random { seed, len } => {
                    h.set_size(*len);
                    tar.append_data(&mut h, path, RandomReader::new(*seed, *len))
                }
            }
        }
    }
}

/// Rebuild `v` inserting object keys in sorted order, so the serialisation is the same with
/// serde_json's default BTreeMap and with its `preserve_order` feature.
pub(crate) fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), canonical(&m[k]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// An image config for `arch` whose rootfs is `diff_ids`.
pub(crate) fn config(arch: &str, diff_ids: &[Digest]) -> Value {
    let ids: Vec<String> = diff_ids.iter().map(|d| d.to_string()).collect();
    serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Cmd": ["/bin/sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] },
        "rootfs": { "type": "layers", "diff_ids": ids },
    })
}

/// An OCI image manifest.
pub(crate) fn manifest(config: &Blob, layers: &[Blob]) -> Value {
    let layers: Vec<Value> = layers.iter().map(Blob::descriptor).collect();
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": config.descriptor(),
        "layers": layers,
    })
}
