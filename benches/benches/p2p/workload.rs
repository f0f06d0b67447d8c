//! Key sets shaped like a cluster's images: a few base layers nearly every node holds, then
//! application images picked with a Zipf-like popularity, so some keys are held by most nodes
//! and most keys by one or two.

use std::collections::{BTreeSet, HashMap};

use shoal_p2p::Key;

/// Small deterministic PRNG (xorshift64*): reproducible choices without a dependency.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.below(1 << 30) as f64 / (1u64 << 30) as f64
    }
}

/// Keys per image: layers, config, manifest, index, tag.
const KEYS_PER_IMAGE: usize = 25;
/// Base images (distro layers) nearly every node holds.
const BASE_IMAGES: usize = 4;
/// Share of nodes holding each base image.
const BASE_SHARE: f64 = 0.9;

/// Key `n` of image `image` (images of one run share a `run` tag so runs never collide).
pub fn key(run: u64, image: u64, n: u64) -> Key {
    format!("sha256:{run:016x}{image:016x}{n:032x}")
        .parse()
        .expect("valid digest")
}

/// A key set of about `keys` keys for one node (node seeds differ, catalogue is shared).
pub fn node_keys(run: u64, keys: usize, catalogue: usize, rng: &mut Rng) -> BTreeSet<Key> {
    let mut out = BTreeSet::new();
    for image in 0..BASE_IMAGES {
        if rng.unit() < BASE_SHARE {
            add_image(&mut out, run, image as u64, keys);
        }
    }
    // Zipf(1) over the catalogue by inverse transform on the harmonic CDF (approximated by ln).
    let h = (catalogue as f64).ln() + 0.5772;
    let mut guard = 0;
    while out.len() < keys && guard < 100_000 {
        guard += 1;
        let rank = ((rng.unit() * h - 0.5772).exp()).floor() as usize;
        let image = BASE_IMAGES + rank.min(catalogue - 1);
        add_image(&mut out, run, image as u64, keys);
    }
    out
}

fn add_image(out: &mut BTreeSet<Key>, run: u64, image: u64, cap: usize) {
    for n in 0..KEYS_PER_IMAGE as u64 {
        if out.len() >= cap {
            return;
        }
        out.insert(key(run, image, n));
    }
}

/// How many live nodes hold each key.
pub fn holders<'a>(sets: impl Iterator<Item = &'a BTreeSet<Key>>) -> HashMap<Key, usize> {
    let mut m: HashMap<Key, usize> = HashMap::new();
    for s in sets {
        for k in s {
            *m.entry(k.clone()).or_default() += 1;
        }
    }
    m
}
