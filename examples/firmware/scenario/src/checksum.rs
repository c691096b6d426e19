//! FNV-1a, 64-bit, and the deterministic patterns the scenario writes.

/// The FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// The FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// An FNV-1a 64-bit hasher.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(FNV_OFFSET)
    }
}

impl Fnv1a {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }
    /// Hash bytes.
    pub fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }
    /// Hash a `u64` as 8 little-endian bytes.
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// The splitmix64 finaliser: a fixed, well-mixed function of `x`.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The CPU's initial content of the page at `va`: word `w` is `mix(va + 8 w)`.
pub fn fill_page(va: u64, page: &mut [u8]) {
    for (w, chunk) in page.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(va.wrapping_add(8 * w as u64)).to_le_bytes());
    }
}

/// The value word `w` of the page at `va` holds after [`fill_page`].
pub fn initial_word(va: u64, w: u64) -> u64 {
    mix(va.wrapping_add(8 * w))
}

/// The stamp a device store of generation `gen` leaves at `va`.
pub fn stamp(va: u64, gen: u64) -> u64 {
    mix(va ^ (gen << 56) ^ 0x00de_7ce0_0000_0000)
}
