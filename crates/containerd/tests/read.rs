//! Reading blobs through both paths (content directory and `Content.Read`), at offsets and in
//! ranges, with every byte checked against the digest.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::time::Instant;

use common::Containerd;
use common::image::{BlobData, Image, big_layer, manifest, small_layer};
use futures::StreamExt;
use shoal_containerd::{Blob, ContentSource, Error, MAX_CHUNK, MIN_CHUNK, ReadPath};
use shoal_oci::Digest;

/// Hashes `prefix` followed by the stream; returns the digest, the byte count and the largest
/// chunk seen. Checks that every chunk but the last has the size [`chunk_len`] gives for what
/// came before it: small while little was taken, never over [`MAX_CHUNK`].
async fn hash(prefix: &[u8], blob: Blob) -> (Digest, u64, usize) {
    let mut h = Digest::sha256_of(b"").hasher();
    h.update(prefix);
    let (mut n, mut max) = (0u64, 0usize);
    let mut s = blob.stream;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.unwrap();
        h.update(&chunk);
        assert_eq!(
            chunk.len(),
            shoal_containerd::chunk_len(n, blob.len - n),
            "chunk after {n} bytes"
        );
        n += chunk.len() as u64;
        max = max.max(chunk.len());
    }
    (h.finish(), n, max)
}

async fn collect(blob: Blob) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = blob.stream;
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// Reads at 0, 1 and size-1 through `src`, expecting `path`, checking the digest.
async fn check_offsets(
    src: &ContentSource,
    digest: &Digest,
    first: u8,
    last: u8,
    size: u64,
    path: ReadPath,
) {
    let t = Instant::now();
    let b = src.read(digest, 0).await.unwrap();
    assert_eq!((b.path, b.size, b.offset, b.len), (path, size, 0, size));
    let (d, n, max) = hash(&[], b).await;
    assert_eq!((&d, n), (digest, size));
    assert!(max <= MAX_CHUNK, "chunk of {max} bytes");
    let b = src.read(digest, 1).await.unwrap();
    assert_eq!((b.path, b.offset, b.len), (path, 1, size - 1));
    let (d, n, _) = hash(&[first], b).await;
    assert_eq!((&d, n), (digest, size - 1));
    let b = src.read(digest, size - 1).await.unwrap();
    assert_eq!(collect(b).await, vec![last]);
    eprintln!("{path:?}: 3 reads of {size} bytes in {:?}", t.elapsed());
}

#[tokio::test]
async fn reads_small_blobs_through_disk_and_rpc() {
    common::init_tracing();
    let c = Containerd::start();
    let tmp = tempfile::tempdir().unwrap();
    // Several disk chunks and several 1 MiB RPC messages.
    let text: String = (0..200_000).map(|i| format!("{i:08}\n")).collect();
    let layer = small_layer("numbers.txt", &text);
    let img = Image::single(
        "docker.io/library/read-a:v1",
        manifest("amd64", vec![layer.clone()]),
    );
    img.write_archive(&tmp.path().join("a.tar"));
    c.import(&tmp.path().join("a.tar"), &[]);
    let BlobData::Mem(data) = &layer.data else {
        unreachable!()
    };
    let (first, last, size) = (data[0], data[data.len() - 1], layer.size);

    let disk = c.source(true).await;
    check_offsets(&disk, &layer.digest, first, last, size, ReadPath::Disk).await;
    let rpc = c.source(false).await;
    check_offsets(&rpc, &layer.digest, first, last, size, ReadPath::Rpc).await;
    // A content directory that does not hold the blob falls back to the API.
    let elsewhere = ContentSource::connect(&c.socket(), common::NS, Some(tmp.path().to_owned()))
        .await
        .unwrap();
    check_offsets(&elsewhere, &layer.digest, first, last, size, ReadPath::Rpc).await;

    // Bounded ranges, both paths.
    for src in [&disk, &rpc] {
        for (off, len) in [
            (0u64, 1u64),
            (1, 10),
            (12345, 1 << 20),
            (size - 5, 5),
            (size, 0),
        ] {
            let b = src.read_range(&layer.digest, off, len).await.unwrap();
            assert_eq!((b.offset, b.len), (off, len));
            let got = collect(b).await;
            assert_eq!(
                got,
                &data[off as usize..(off + len) as usize],
                "range {off}+{len}"
            );
        }
        // Out of range, missing, and another namespace's blob.
        let e = src
            .read_range(&layer.digest, size - 1, 2)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::OutOfRange { .. }), "{e}");
        assert!(e.to_string().contains(&layer.digest.to_string()), "{e}");
        let e = src.read(&layer.digest, size + 1).await.unwrap_err();
        assert!(matches!(e, Error::OutOfRange { .. }), "{e}");
        let absent = Digest::sha256_of(b"not there");
        let e = src.read(&absent, 0).await.unwrap_err();
        assert!(matches!(&e, Error::NotFound(d) if d == &absent), "{e}");
    }
}

#[tokio::test]
async fn disk_path_does_not_leak_other_namespaces() {
    let c = Containerd::start();
    let tmp = tempfile::tempdir().unwrap();
    let layer = small_layer("other.txt", "only in namespace other\n");
    let img = Image::single(
        "docker.io/library/other:v1",
        manifest("amd64", vec![layer.clone()]),
    );
    img.write_archive(&tmp.path().join("o.tar"));
    let out = std::process::Command::new("ctr")
        .arg("-a")
        .arg(c.socket())
        .args(["-n", "other", "images", "import", "--no-unpack"])
        .arg(tmp.path().join("o.tar"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = c
        .content_dir()
        .join("blobs/sha256")
        .join(layer.digest.hex());
    assert!(path.is_file(), "the blob is on disk");
    let src = c.source(true).await;
    let e = src.read(&layer.digest, 0).await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
}

#[tokio::test]
async fn reads_a_200mb_layer_at_offsets() {
    common::init_tracing();
    let c = Containerd::start();
    let tmp = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let layer = big_layer(&tmp.path().join("big.tar"), 200 << 20);
    let img = Image::single(
        "docker.io/library/read-big:v1",
        manifest("amd64", vec![layer.clone()]),
    );
    img.write_archive(&tmp.path().join("big-image.tar"));
    eprintln!("built a {} byte layer in {:?}", layer.size, t.elapsed());
    let t = Instant::now();
    c.import(&tmp.path().join("big-image.tar"), &[]);
    eprintln!("imported in {:?}", t.elapsed());
    let mut f = std::fs::File::open(tmp.path().join("big.tar")).unwrap();
    let mut first = [0u8];
    f.read_exact(&mut first).unwrap();
    let mut last = [0u8];
    f.seek(SeekFrom::End(-1)).unwrap();
    f.read_exact(&mut last).unwrap();
    assert!(layer.size >= 200 << 20);

    let disk = c.source(true).await;
    check_offsets(
        &disk,
        &layer.digest,
        first[0],
        last[0],
        layer.size,
        ReadPath::Disk,
    )
    .await;
    let rpc = c.source(false).await;
    check_offsets(
        &rpc,
        &layer.digest,
        first[0],
        last[0],
        layer.size,
        ReadPath::Rpc,
    )
    .await;
}

/// A reader that stops asking holds no thread and at most one small chunk: with tokio's
/// blocking pool cut to 2 threads, 16 reads of a 1.8 MB blob that each took one chunk and then
/// stopped still leave a 17th read free to run to the end (a thread per reader for the whole
/// transfer queued it forever), on both paths.
#[test]
fn stalled_readers_hold_no_thread() {
    common::init_tracing();
    let c = Containerd::start();
    let tmp = tempfile::tempdir().unwrap();
    let text: String = (0..200_000).map(|i| format!("{i:08}\n")).collect();
    let layer = small_layer("stalled.txt", &text);
    let img = Image::single(
        "docker.io/library/read-stalled:v1",
        manifest("amd64", vec![layer.clone()]),
    );
    img.write_archive(&tmp.path().join("s.tar"));
    c.import(&tmp.path().join("s.tar"), &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A thread per reader hangs here rather than fails: bound the whole run.
    let run = async {
        for (disk, path) in [(true, ReadPath::Disk), (false, ReadPath::Rpc)] {
            let src = c.source(disk).await;
            let mut held = Vec::new();
            for _ in 0..16 {
                let mut b = src.read(&layer.digest, 0).await.unwrap();
                assert_eq!(b.path, path);
                let first = b.stream.next().await.unwrap().unwrap();
                assert_eq!(first.len(), MIN_CHUNK);
                held.push(b);
            }
            let b = src.read(&layer.digest, 0).await.unwrap();
            let last = hash(&[], b).await;
            assert_eq!((last.0, last.1), (layer.digest.clone(), layer.size));
            // The stalled ones still finish correctly when they resume.
            for b in held.drain(..) {
                let rest = collect(b).await;
                assert_eq!(rest.len() as u64, layer.size - MIN_CHUNK as u64);
            }
        }
    };
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(120), run)
            .await
            .expect("16 stalled reads and one more, on both paths, within 2 minutes");
    });
}
