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

/// A running CRC-32.
#[derive(Debug, Clone, Copy, Default)]
pub struct Crc32(u32);

impl Crc32 {
    /// A fresh checksum.
    pub fn new() -> Crc32 {
        Crc32(0)
    }

    /// Adds `data`.
    #[allow(clippy::indexing_slicing, reason = "the index is masked to 0..=255")]
    pub fn update(&mut self, data: &[u8]) {
        let mut c = !self.0;
        for &b in data {
            c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = !c;
    }

    /// The checksum of everything added.
    pub fn value(&self) -> u32 {
        self.0
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
}
