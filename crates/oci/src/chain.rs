//! SHA-256 that can stop and resume at any 64-byte boundary of a stream.
//!
//! SHA-256 processes its input in 64-byte blocks, carrying eight 32-bit words (the *chaining
//! state*) from one block to the next; the digest is the state after the padded final block.
//! The state after the first `k·64` bytes therefore says everything about those bytes that
//! the digest will ever depend on. Publishing the states at every piece boundary of a blob
//! (pieces being a multiple of 64 bytes) lets a receiver check each piece on its own, from the
//! state before it to the state after it, and check the last piece by finishing from the
//! state before it: every byte is hashed exactly once, and when every piece passed, the blob
//! hashed to its digest (the mirror's piece lists are built on this, see its `pieces` module).
//!
//! This is plain FIPS 180-4 SHA-256: the compression function is `sha2`'s (SHA-NI when the CPU
//! has it, like [`sha2::Sha256`]), the padding is 0x80, zeros and the 64-bit big-endian bit
//! length. Only the state is exposed, never anything weaker than SHA-256 itself.

use sha2::digest::block_buffer::{BlockBuffer, Eager};
use sha2::digest::consts::U64;

use crate::digest::{Algorithm, Digest};

/// SHA-256's block size: chaining states exist only at multiples of it.
pub const BLOCK: u64 = 64;

/// SHA-256's initial chaining state (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// The SHA-256 chaining state after a multiple of 64 bytes, as 32 bytes (the eight words
/// big-endian, the way the digest itself is written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainState([u8; 32]);

impl ChainState {
    /// The state before any byte (SHA-256's IV).
    pub const INITIAL: ChainState = ChainState::from_words(IV);

    pub const fn from_bytes(bytes: [u8; 32]) -> ChainState {
        ChainState(bytes)
    }

    pub fn to_bytes(self) -> [u8; 32] {
        self.0
    }

    const fn from_words(words: [u32; 8]) -> ChainState {
        let mut out = [0u8; 32];
        let mut i = 0;
        while i < 8 {
            let b = words[i].to_be_bytes();
            out[4 * i] = b[0];
            out[4 * i + 1] = b[1];
            out[4 * i + 2] = b[2];
            out[4 * i + 3] = b[3];
            i += 1;
        }
        ChainState(out)
    }

    fn words(self) -> [u32; 8] {
        let mut w = [0u32; 8];
        for (w, b) in w.iter_mut().zip(self.0.chunks_exact(4)) {
            *w = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        }
        w
    }
}

/// Why a [`ChainHasher`] cannot resume at an offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a SHA-256 chaining state exists only at multiples of {BLOCK} bytes, not at {0}")]
pub struct NotAligned(pub u64);

/// Incremental SHA-256 whose chaining state can be read at block boundaries and that can start
/// from such a state.
#[derive(Clone)]
pub struct ChainHasher {
    state: [u32; 8],
    /// Bytes not yet compressed (fewer than a block).
    buffer: BlockBuffer<U64, Eager>,
    /// Bytes hashed in all, from the start of the stream.
    len: u64,
}

impl std::fmt::Debug for ChainHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainHasher")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Default for ChainHasher {
    fn default() -> Self {
        ChainHasher::new()
    }
}

impl ChainHasher {
    /// A hasher at the start of a stream.
    pub fn new() -> ChainHasher {
        ChainHasher {
            state: IV,
            buffer: BlockBuffer::default(),
            len: 0,
        }
    }

    /// A hasher that continues a stream whose first `offset` bytes left it in `state`.
    pub fn resume(state: ChainState, offset: u64) -> Result<ChainHasher, NotAligned> {
        if offset % BLOCK != 0 {
            return Err(NotAligned(offset));
        }
        Ok(ChainHasher {
            state: state.words(),
            buffer: BlockBuffer::default(),
            len: offset,
        })
    }

    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        let state = &mut self.state;
        self.buffer
            .digest_blocks(data, |blocks| sha2::compress256(state, blocks));
    }

    /// Bytes hashed so far (counting the offset resumed from).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chaining state, when the bytes hashed so far end on a block boundary.
    pub fn state(&self) -> Option<ChainState> {
        (self.buffer.get_pos() == 0).then(|| ChainState::from_words(self.state))
    }

    /// Pad, compress the final block(s) and return the digest of the whole stream.
    pub fn finish(mut self) -> Digest {
        let state = &mut self.state;
        self.buffer.len64_padding_be(self.len * 8, |block| {
            sha2::compress256(state, std::slice::from_ref(block))
        });
        let out = ChainState::from_words(self.state).to_bytes();
        Digest::from_raw(Algorithm::Sha256, &out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn empty_and_known_vectors() {
        assert_eq!(ChainHasher::new().finish(), Digest::sha256_of(b""));
        let mut h = ChainHasher::new();
        h.update(b"abc");
        assert_eq!(
            h.finish().to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            ChainHasher::new().state(),
            Some(ChainState::INITIAL),
            "the state before any byte is the IV"
        );
    }

    #[test]
    fn resuming_needs_a_block_boundary() {
        assert_eq!(
            ChainHasher::resume(ChainState::INITIAL, 65).unwrap_err(),
            NotAligned(65)
        );
        let mut h = ChainHasher::new();
        h.update(&[0; 65]);
        assert_eq!(h.state(), None);
        h.update(&[0; 63]);
        assert!(h.state().is_some());
    }

    proptest! {
        /// Hashing in arbitrary chunks, and stopping at a block boundary to resume from the
        /// published state, gives exactly `Sha256::digest` of the whole.
        #[test]
        fn resumed_hashing_equals_sha256(
            len in 0usize..5000,
            seed: u8,
            split in 0usize..5000,
            chunk in 1usize..300,
        ) {
            let bytes = data(len, seed);
            let cut = (split.min(len) / 64) * 64;
            let mut first = ChainHasher::new();
            for c in bytes[..cut].chunks(chunk) {
                first.update(c);
            }
            let state = first.state().expect("cut is on a block boundary");
            let mut rest = ChainHasher::resume(state, cut as u64).unwrap();
            for c in bytes[cut..].chunks(chunk) {
                rest.update(c);
            }
            prop_assert_eq!(rest.len(), len as u64);
            prop_assert_eq!(rest.finish(), Digest::sha256_of(&bytes));
        }
    }
}
