//! CRC-32 (the IEEE polynomial, as gzip uses it): the gzip trailer's check that what we
//! unpacked is what was packed. miniz_oxide offers only Adler-32, and a 1 KiB table built at
//! compile time is all this needs.

#[allow(
    clippy::indexing_slicing,
    reason = "evaluated at compile time, where a bad index fails the build"
)]
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

use crate::prelude::*;

/// A running CRC-32.
#[derive(Debug, Clone, Copy, Default)]
pub struct Crc32(u32);

impl Crc32 {
    /// A fresh checksum.
    pub fn new() -> Crc32 {
        Crc32(0)
    }

    /// Adds `data`, a byte at a time: for headers and other short runs.
    pub fn update(&mut self, data: &[u8]) {
        self.0 = !bytewise(!self.0, data);
    }

    /// Adds `data` eight bytes per step, with `tables`: for whole inflated streams, where a
    /// byte at a time was a quarter of the fetcher's time unpacking a tarball.
    #[allow(clippy::indexing_slicing, reason = "every index is masked to 0..=255")]
    pub fn update_fast(&mut self, tables: &Slicing8, data: &[u8]) {
        let t = &*tables.0;
        let mut c = !self.0;
        let mut chunks = data.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let lo = u32::from_le_bytes([word[0], word[1], word[2], word[3]]) ^ c;
            let hi = u32::from_le_bytes([word[4], word[5], word[6], word[7]]);
            c = t[7][(lo & 0xff) as usize]
                ^ t[6][((lo >> 8) & 0xff) as usize]
                ^ t[5][((lo >> 16) & 0xff) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][(hi & 0xff) as usize]
                ^ t[2][((hi >> 8) & 0xff) as usize]
                ^ t[1][((hi >> 16) & 0xff) as usize]
                ^ t[0][(hi >> 24) as usize];
        }
        self.0 = !bytewise(c, chunks.remainder());
    }

    /// The checksum of everything added.
    pub fn value(&self) -> u32 {
        self.0
    }
}

#[allow(clippy::indexing_slicing, reason = "the index is masked to 0..=255")]
fn bytewise(mut c: u32, data: &[u8]) -> u32 {
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    c
}

/// The eight tables of slicing-by-8: `[k][b]` is the CRC of byte `b` followed by `k` zero
/// bytes. Built at run time (8 KiB of heap, a few microseconds), as 8 KiB of constants would
/// be a tenth of the module.
pub struct Slicing8(Box<[[u32; 256]; 8]>);

impl Default for Slicing8 {
    /// Builds the tables.
    #[allow(clippy::indexing_slicing, reason = "k is 1..8 and every index is masked to 0..=255")]
    fn default() -> Slicing8 {
        let mut t = Box::new([[0u32; 256]; 8]);
        t[0] = TABLE;
        for k in 1..8 {
            for b in 0..256 {
                let prev = t[k - 1][b];
                t[k][b] = (prev >> 8) ^ TABLE[(prev & 0xff) as usize];
            }
        }
        Slicing8(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let mut c = Crc32::new();
        assert_eq!(c.value(), 0);
        c.update(b"123456789");
        assert_eq!(c.value(), 0xcbf4_3926);
        let mut split = Crc32::new();
        split.update(b"1234");
        split.update(b"56789");
        assert_eq!(split.value(), 0xcbf4_3926);
    }

    #[test]
    fn eight_at_a_time_agrees_with_one_at_a_time() {
        let tables = Slicing8::default();
        let data = crate::testing::noise(10_000, 3);
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 1000, 9999] {
            for split in [0, 1, 5, len / 2] {
                let split = split.min(len);
                let mut slow = Crc32::new();
                slow.update(&data[..len]);
                let mut fast = Crc32::new();
                fast.update_fast(&tables, &data[..split]);
                fast.update_fast(&tables, &data[split..len]);
                assert_eq!(fast.value(), slow.value(), "len {len} split {split}");
            }
        }
        let mut c = Crc32::new();
        c.update_fast(&tables, b"123456789");
        assert_eq!(c.value(), 0xcbf4_3926);
    }
}
