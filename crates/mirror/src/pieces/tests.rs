//! Piece lists: encoding, the check of each piece on its own, the holder's one-pass computation.

use super::*;

/// The list of `blob`: the states at its piece boundaries.
fn list_of(blob: &[u8], piece_size: u64) -> PieceList {
    let mut states = Vec::new();
    let mut h = ChainHasher::new();
    for c in blob.chunks(piece_size as usize) {
        h.update(c);
        if h.len() < blob.len() as u64 {
            states.push(h.state().unwrap());
        }
    }
    PieceList {
        piece_size,
        size: blob.len() as u64,
        states,
    }
}

fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Which pieces of `blob` fail `list`, each checked on its own.
fn failing(list: &PieceList, blob: &[u8], digest: &Digest) -> Vec<u64> {
    (0..list.pieces())
        .filter(|&i| {
            let start = (i * list.piece_size) as usize;
            let end = (start + list.piece_size as usize).min(blob.len());
            let chunk = Bytes::copy_from_slice(&blob[start..end]);
            list.expect(i, digest).check(&[chunk]).is_err()
        })
        .collect()
}

#[test]
fn lists_round_trip_and_bad_lists_are_refused() {
    let size = 3 * MIN_PIECE + 5;
    let list = list_of(&blob(size as usize), MIN_PIECE);
    assert_eq!(list.states.len(), 3);
    let enc = list.encode();
    assert_eq!(PieceList::decode(&enc, size).unwrap(), list);
    assert!(matches!(
        PieceList::decode(&enc, size + 1),
        Err(ListError::Size { .. })
    ));
    assert!(matches!(
        PieceList::decode(&enc[..enc.len() - 1], size),
        Err(ListError::Count { .. })
    ));
    assert!(matches!(
        PieceList::decode(&enc[..3], size),
        Err(ListError::Short(3))
    ));
    let mut tiny = enc.clone();
    tiny[..8].copy_from_slice(&16u64.to_be_bytes());
    assert!(matches!(
        PieceList::decode(&tiny, size),
        Err(ListError::PieceSize(16))
    ));
    // A piece size that is not a whole number of SHA-256 blocks has no states.
    let mut odd = enc.clone();
    odd[..8].copy_from_slice(&(MIN_PIECE + 1).to_be_bytes());
    assert!(matches!(
        PieceList::decode(&odd, size),
        Err(ListError::PieceSize(_))
    ));
    assert!(enc.len() as u64 <= PieceList::max_encoded(size));
    // One piece: no state at all, the piece's check is the digest.
    let one = list_of(&blob(10), MIN_PIECE);
    assert!(one.states.is_empty());
    assert_eq!(PieceList::decode(&one.encode(), 10).unwrap(), one);
}

#[test]
fn every_piece_of_the_right_blob_passes_on_its_own() {
    for len in [
        1,
        64,
        MIN_PIECE as usize,
        3 * MIN_PIECE as usize,
        3 * MIN_PIECE as usize + 100,
    ] {
        let b = blob(len);
        let d = Digest::sha256_of(&b);
        let list = list_of(&b, MIN_PIECE);
        assert_eq!(failing(&list, &b, &d), Vec::<u64>::new(), "len {len}");
    }
}

#[test]
fn a_flipped_byte_fails_exactly_its_piece() {
    let len = 4 * MIN_PIECE as usize + 777;
    let good = blob(len);
    let d = Digest::sha256_of(&good);
    let list = list_of(&good, MIN_PIECE);
    for at in [
        0,
        63,
        64,
        MIN_PIECE as usize - 1,
        2 * MIN_PIECE as usize + 5,
        len - 1,
    ] {
        let mut bad = good.clone();
        bad[at] ^= 0x20;
        let piece = at as u64 / MIN_PIECE;
        assert_eq!(failing(&list, &bad, &d), vec![piece], "byte {at}");
    }
}

#[test]
fn a_list_of_other_bytes_passes_them_until_the_last_piece() {
    // A holder serving wrong bytes with their own states: every piece but the last passes,
    // the last cannot reach the real digest.
    let good = blob(3 * MIN_PIECE as usize + 9);
    let mut other = good.clone();
    other[10] ^= 1;
    let lie = list_of(&other, MIN_PIECE);
    let d = Digest::sha256_of(&good);
    assert_eq!(failing(&lie, &other, &d), vec![3]);
    // The right bytes fail the lying list at the first piece that differs.
    assert_eq!(failing(&lie, &good, &d), vec![0, 3]);
    let last = lie.expect(3, &d);
    let tail = Bytes::copy_from_slice(&other[3 * MIN_PIECE as usize..]);
    assert_eq!(last.check(&[tail]), Err(Some(Digest::sha256_of(&other))));
}

#[tokio::test]
async fn the_holder_computes_the_list_in_one_pass_and_refuses_corrupt_content() {
    let b = blob(3 * MIN_PIECE as usize + 100);
    let d = Digest::sha256_of(&b);
    // Reads cut anywhere: the states must not depend on the read sizes.
    let store = Chunked(Bytes::from(b.clone()), 1000);
    let list = compute(&store, &d, b.len() as u64, MIN_PIECE)
        .await
        .unwrap();
    assert_eq!(list, list_of(&b, MIN_PIECE));
    let other = Digest::sha256_of(b"something else");
    assert!(matches!(
        compute(&store, &other, b.len() as u64, MIN_PIECE).await,
        Err(ComputeError::Corrupt(got)) if got == d
    ));
    assert!(matches!(
        compute(&store, &d, b.len() as u64 - 1, MIN_PIECE).await,
        Err(ComputeError::Length { .. })
    ));
}

/// A local store holding one blob, read back in chunks of a fixed size.
#[derive(Debug)]
struct Chunked(Bytes, usize);

impl LocalStore for Chunked {
    fn stat<'a>(
        &'a self,
        _: &'a Digest,
    ) -> futures::future::BoxFuture<'a, Option<crate::source::BlobInfo>> {
        Box::pin(async { None })
    }

    fn read<'a>(
        &'a self,
        _: &'a Digest,
        _: u64,
        _: Option<u64>,
    ) -> futures::future::BoxFuture<'a, std::io::Result<crate::source::ByteStream>> {
        let chunks: Vec<std::io::Result<Bytes>> = (0..self.0.len())
            .step_by(self.1)
            .map(|i| Ok(self.0.slice(i..(i + self.1).min(self.0.len()))))
            .collect();
        Box::pin(async move { Ok(futures::stream::iter(chunks).boxed()) })
    }

    fn resolve_tag<'a>(
        &'a self,
        _: &'a shoal_oci::TagKey,
    ) -> futures::future::BoxFuture<'a, Option<crate::source::Descriptor>> {
        Box::pin(async { None })
    }
}

#[test]
fn eviction_keeps_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..5 {
        std::fs::write(tmp.path().join(format!("f{i}")), b"x").unwrap();
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i);
        let f = std::fs::File::options()
            .write(true)
            .open(tmp.path().join(format!("f{i}")))
            .unwrap();
        f.set_modified(t).unwrap();
    }
    evict(tmp.path(), 3).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["f2", "f3", "f4"]);
}
