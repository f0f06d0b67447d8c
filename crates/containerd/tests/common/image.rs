//! OCI archives (an OCI image layout in a tar) built by hand with reproducible digests, for
//! `ctr images import`. Layers are uncompressed tars (`…layer.v1.tar`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use shoal_oci::{Digest, Hasher};

pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// A blob of an image: in memory, or (for big layers) in a file.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub data: BlobData,
}

#[derive(Debug, Clone)]
pub enum BlobData {
    Mem(Vec<u8>),
    File(std::path::PathBuf),
}

impl Blob {
    pub fn mem(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            digest: Digest::sha256_of(&data),
            media_type: media_type.to_owned(),
            size: data.len() as u64,
            data: BlobData::Mem(data),
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest.to_string(), "size": self.size})
    }
}

/// An uncompressed layer tar holding one small file.
pub fn small_layer(file: &str, content: &str) -> Blob {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_577_836_800);
    h.set_cksum();
    b.append_data(&mut h, file, content.as_bytes()).unwrap();
    Blob::mem(LAYER, b.into_inner().unwrap())
}

/// Deterministic bytes: 1 MiB blocks of a fixed pattern, each stamped with its index so that
/// every offset's byte depends on where it is.
struct Pattern {
    block: Vec<u8>,
    pos: u64,
    len: u64,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let bs = self.block.len() as u64;
        let n = (buf.len() as u64)
            .min(self.len - self.pos)
            .min(bs - self.pos % bs) as usize;
        let at = (self.pos % bs) as usize;
        buf[..n].copy_from_slice(&self.block[at..at + n]);
        let idx = (self.pos / bs).to_le_bytes();
        for (i, byte) in buf[..n].iter_mut().enumerate() {
            let off = at + i;
            if off < 8 {
                *byte = idx[off];
            } else {
                break;
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

struct HashingFile {
    file: std::fs::File,
    hasher: Hasher,
    len: u64,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// A layer tar holding one file of `bytes` deterministic bytes, written to `path`.
pub fn big_layer(path: &Path, bytes: u64) -> Blob {
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let out = HashingFile {
        file: std::fs::File::create(path).unwrap(),
        hasher: Digest::sha256_of(b"").hasher(),
        len: 0,
    };
    let mut b = tar::Builder::new(out);
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes);
    h.set_mode(0o644);
    h.set_mtime(1_577_836_800);
    h.set_cksum();
    let data = Pattern {
        block,
        pos: 0,
        len: bytes,
    };
    b.append_data(&mut h, "big.bin", data).unwrap();
    let out = b.into_inner().unwrap();
    Blob {
        digest: out.hasher.finish(),
        media_type: LAYER.to_owned(),
        size: out.len,
        data: BlobData::File(path.to_owned()),
    }
}

/// One platform's manifest: config + layers.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

pub fn manifest(arch: &str, layers: Vec<Blob>) -> Manifest {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
    let config = serde_json::json!({
        "architecture": arch, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = Blob::mem(CONFIG, serde_json::to_vec(&config).unwrap());
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    Manifest {
        manifest: Blob::mem(MANIFEST, serde_json::to_vec(&m).unwrap()),
        config,
        layers,
    }
}

/// An image: a name and a target (a manifest, or an index of manifests).
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub target: Blob,
    pub index: Option<Blob>,
    pub manifests: Vec<(String, Manifest)>,
}

impl Image {
    pub fn single(name: &str, m: Manifest) -> Image {
        Image {
            name: name.to_owned(),
            target: m.manifest.clone(),
            index: None,
            manifests: vec![("amd64".into(), m)],
        }
    }

    pub fn multi(name: &str, manifests: Vec<(String, Manifest)>) -> Image {
        let idx = serde_json::json!({
            "schemaVersion": 2, "mediaType": INDEX,
            "manifests": manifests.iter().map(|(arch, m)| {
                let mut d = m.manifest.descriptor();
                d["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
                d
            }).collect::<Vec<_>>(),
        });
        let index = Blob::mem(INDEX, serde_json::to_vec(&idx).unwrap());
        Image {
            name: name.to_owned(),
            target: index.clone(),
            index: Some(index),
            manifests,
        }
    }

    /// Every blob, the target first.
    pub fn blobs(&self) -> Vec<Blob> {
        let mut out: BTreeMap<Digest, Blob> = BTreeMap::new();
        for (_, m) in &self.manifests {
            for b in std::iter::once(&m.manifest)
                .chain(std::iter::once(&m.config))
                .chain(&m.layers)
            {
                out.insert(b.digest.clone(), b.clone());
            }
        }
        if let Some(i) = &self.index {
            out.insert(i.digest.clone(), i.clone());
        }
        out.into_values().collect()
    }

    /// Writes the image as an OCI archive, named by `io.containerd.image.name`.
    pub fn write_archive(&self, path: &Path) {
        fn add(b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
        add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        let mut top = self.target.descriptor();
        top["annotations"] = serde_json::json!({"io.containerd.image.name": self.name});
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
        add(&mut b, "index.json", &serde_json::to_vec(&index).unwrap());
        for blob in self.blobs() {
            let name = format!("blobs/sha256/{}", blob.digest.hex());
            match &blob.data {
                BlobData::Mem(d) => add(&mut b, &name, d),
                BlobData::File(p) => b.append_path_with_name(p, &name).unwrap(),
            }
        }
        b.into_inner().unwrap().sync_all().unwrap();
    }
}
