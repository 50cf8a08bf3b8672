//! SHA-1 (FIPS 180-4), as git names objects and checks packs with it. Written out here in a
//! few hundred bytes of code: only git's ids need it, and git's ids are what it must match.

use crate::prelude::*;

/// A running SHA-1.
#[derive(Clone)]
pub struct Sha1 {
    state: [u32; 5],
    block: [u8; 64],
    /// Bytes added so far.
    len: u64,
}

impl Default for Sha1 {
    fn default() -> Sha1 {
        Sha1 {
            state: [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476, 0xc3d2_e1f0],
            block: [0; 64],
            len: 0,
        }
    }
}

impl Sha1 {
    /// Adds `data`.
    #[allow(
        clippy::indexing_slicing,
        reason = "`used` < 64 and `take` fits what is left of the block"
    )]
    pub fn update(&mut self, mut data: &[u8]) {
        let used = (self.len & 63) as usize;
        self.len = self.len.wrapping_add(data.len() as u64);
        if used > 0 {
            let take = (64 - used).min(data.len());
            self.block[used..used + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if used + take < 64 {
                return;
            }
            compress(&mut self.state, &self.block);
        }
        let mut blocks = data.chunks_exact(64);
        for block in &mut blocks {
            compress(&mut self.state, block);
        }
        let rest = blocks.remainder();
        self.block[..rest.len()].copy_from_slice(rest);
    }

    /// The digest of everything added.
    pub fn finish(mut self) -> [u8; 20] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = [0u8; 64];
        pad[0] = 0x80;
        let used = (self.len & 63) as usize;
        self.update(pad.get(..(119 - used) % 64 + 1).unwrap_or_default());
        self.update(&bits.to_be_bytes());
        let mut out = [0u8; 20];
        for (o, s) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&s.to_be_bytes());
        }
        out
    }
}

/// The SHA-1 of `data`.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h = Sha1::default();
    h.update(data);
    h.finish()
}

/// One block. The four kinds of round are four loops, not one loop that picks the kind each
/// time: built for size, the module keeps what it is written as, and the pick cost a third of
/// the hashing, which is most of what a git fetch computes.
#[allow(clippy::indexing_slicing, reason = "t is 16..80 and a block is 64 bytes")]
fn compress(state: &mut [u32; 5], block: &[u8]) {
    let mut w = [0u32; 80];
    for (w, b) in w.iter_mut().zip(block.chunks_exact(4)) {
        *w = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    }
    for t in 16..80 {
        w[t] = (w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16]).rotate_left(1);
    }
    let mut v = *state;
    for &word in &w[..20] {
        let [_, b, c, d, _] = v;
        round(&mut v, (b & c) | (!b & d), 0x5a82_7999, word);
    }
    for &word in &w[20..40] {
        let [_, b, c, d, _] = v;
        round(&mut v, b ^ c ^ d, 0x6ed9_eba1, word);
    }
    for &word in &w[40..60] {
        let [_, b, c, d, _] = v;
        round(&mut v, (b & c) | (b & d) | (c & d), 0x8f1b_bcdc, word);
    }
    for &word in &w[60..] {
        let [_, b, c, d, _] = v;
        round(&mut v, b ^ c ^ d, 0xca62_c1d6, word);
    }
    for (s, v) in state.iter_mut().zip(v) {
        *s = s.wrapping_add(v);
    }
}

#[inline(always)]
fn round(v: &mut [u32; 5], f: u32, k: u32, word: u32) {
    let [a, b, c, d, e] = *v;
    let temp = a
        .rotate_left(5)
        .wrapping_add(f)
        .wrapping_add(e)
        .wrapping_add(k)
        .wrapping_add(word);
    *v = [temp, a, b.rotate_left(30), c, d];
}

/// `id` as 40 lowercase hex digits.
pub fn hex(id: &[u8; 20]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(40);
    for &b in id {
        for n in [b >> 4, b & 15] {
            s.push(char::from(DIGITS.get(usize::from(n)).copied().unwrap_or(b'0')));
        }
    }
    s
}

/// 40 hex digits (either case) as an id.
pub fn parse_hex(text: &[u8]) -> Option<[u8; 20]> {
    if text.len() != 40 {
        return None;
    }
    let mut id = [0u8; 20];
    for (b, pair) in id.iter_mut().zip(text.chunks_exact(2)) {
        let mut v = 0;
        for &c in pair {
            v = v * 16 + (c as char).to_digit(16)? as u8;
        }
        *b = v;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(data: &[u8]) -> String {
        hex(&sha1(data))
    }

    #[test]
    fn known_vectors() {
        assert_eq!(h(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(h(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            h(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        assert_eq!(
            h(b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),
            "a49b2446a02c645bf419f995b67091253a04a259"
        );
        assert_eq!(h(&vec![b'a'; 1_000_000]), "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
        // git's id of an empty blob and of the empty tree.
        assert_eq!(h(b"blob 0\0"), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        assert_eq!(h(b"tree 0\0"), "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
    }

    #[test]
    fn streaming_matches_one_shot_at_every_split() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = sha1(&data);
        for cut in 0..data.len() {
            let mut s = Sha1::default();
            s.update(&data[..cut]);
            s.update(&data[cut..]);
            assert_eq!(s.finish(), whole, "cut at {cut}");
        }
        // Lengths around the padding boundary.
        for len in 54..=66 {
            let out = std::process::Command::new("sha1sum")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(&data[..len])?;
                    c.wait_with_output()
                })
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout[..40]),
                h(&data[..len]),
                "length {len}"
            );
        }
    }

    #[test]
    fn hex_round_trip() {
        let id = sha1(b"x");
        assert_eq!(parse_hex(hex(&id).as_bytes()), Some(id));
        assert_eq!(parse_hex(hex(&id).to_uppercase().as_bytes()), Some(id));
        assert_eq!(parse_hex(b"12"), None);
        assert_eq!(parse_hex(&[b'g'; 40]), None);
    }
}
