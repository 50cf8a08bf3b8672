//! Git's delta format (gitformat-pack, "Deltified representation"): the base's size and the
//! result's size as little-endian base-128 numbers, then instructions that either copy a
//! range of the base or insert bytes carried in the delta itself.

use crate::error::{Error, Result};
use crate::prelude::*;

fn bad(why: &str) -> Error {
    Error::new(format!("corrupt delta: {why}"))
}

/// A size in the delta header.
fn size(delta: &mut core::slice::Iter<'_, u8>) -> Result<usize> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *delta.next().ok_or_else(|| bad("truncated header"))?;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return usize::try_from(value).map_err(|_| bad("size too large"));
        }
    }
    Err(bad("size too large"))
}

/// The object `delta` makes of `base`. The result is checked against the size the delta
/// announces, and it never grows past it, whatever the instructions say.
pub fn apply(base: &[u8], delta: &[u8]) -> Result<Vec<u8>> {
    let mut d = delta.iter();
    if size(&mut d)? != base.len() {
        return Err(bad("its base has another size"));
    }
    let want = size(&mut d)?;
    let mut out = Vec::new();
    // Room for what the delta most likely makes, not for what it announces: a few bytes of
    // delta could announce gigabytes (a fuzz test found that), and the result grows only as
    // the instructions make it.
    out.try_reserve_exact(want.min(base.len().saturating_add(delta.len())))
        .map_err(|_| bad("result too large"))?;
    while let Some(&op) = d.next() {
        let piece = if op & 0x80 != 0 {
            // Copy: which offset and size bytes follow is given by the low seven bits.
            let mut fields = [0usize; 2];
            for bit in 0..7 {
                if op & (1 << bit) != 0 {
                    let b = *d.next().ok_or_else(|| bad("truncated copy"))?;
                    let (field, shift) = if bit < 4 { (0, bit) } else { (1, bit - 4) };
                    if let Some(f) = fields.get_mut(field) {
                        *f |= usize::from(b) << (8 * shift);
                    }
                }
            }
            let [offset, len] = fields;
            let len = if len == 0 { 0x10000 } else { len };
            base.get(offset..offset.saturating_add(len))
                .ok_or_else(|| bad("copy outside its base"))?
        } else if op != 0 {
            let rest = d.as_slice();
            let piece = rest.get(..usize::from(op)).ok_or_else(|| bad("truncated insert"))?;
            d = rest.get(piece.len()..).unwrap_or_default().iter();
            piece
        } else {
            return Err(bad("reserved instruction 0"));
        };
        if piece.len() > want - out.len() {
            return Err(bad("result larger than announced"));
        }
        out.try_reserve(piece.len()).map_err(|_| bad("result too large"))?;
        out.extend_from_slice(piece);
    }
    if out.len() != want {
        return Err(bad("result smaller than announced"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn header(base: usize, result: usize) -> Vec<u8> {
        let mut d = Vec::new();
        varint(base, &mut d);
        varint(result, &mut d);
        d
    }

    #[test]
    fn copies_and_inserts() {
        let base = b"0123456789abcdefghij";
        let mut d = header(base.len(), 13);
        d.extend_from_slice(&[0x91, 10, 3]); // copy offset 10, size 3: "abc"
        d.extend_from_slice(&[4, b'-', b'-', b'-', b'-']); // insert "----"
        d.extend_from_slice(&[0x90, 6]); // copy offset 0, size 6: "012345"
        assert_eq!(apply(base, &d).unwrap(), b"abc----012345");
    }

    #[test]
    fn size_zero_means_64k_and_multibyte_fields() {
        let base: Vec<u8> = (0..0x20000u32).map(|i| (i % 251) as u8).collect();
        let mut d = header(base.len(), 0x10000 + 2);
        d.extend_from_slice(&[0x83, 0x34, 0x12]); // offset 0x1234, size 0 = 0x10000
        d.extend_from_slice(&[0xb3, 0x01, 0x00, 0x01, 0x00]); // offset 1, size 1 (high bytes zero)
        d.extend_from_slice(&[0x80 | 0x01 | 0x10, 0x05, 0x01]); // offset 5, size 1
        let got = apply(&base, &d).unwrap();
        assert_eq!(&got[..0x10000], &base[0x1234..0x11234]);
        assert_eq!(&got[0x10000..], &[base[1], base[5]]);
    }

    #[test]
    fn refuses_bad_deltas() {
        let base = b"hello world";
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (header(5, 3), "its base has another size"),
            ([header(11, 3), vec![0x91, 10, 3]].concat(), "copy outside its base"),
            (
                [header(11, 3), vec![0x91, 0, 4]].concat(),
                "result larger than announced",
            ),
            (
                [header(11, 3), vec![0x91, 0, 2]].concat(),
                "result smaller than announced",
            ),
            ([header(11, 3), vec![5, b'a']].concat(), "truncated insert"),
            ([header(11, 3), vec![0]].concat(), "reserved instruction 0"),
            ([header(11, 3), vec![0x91, 0]].concat(), "truncated copy"),
            (vec![0x8b], "truncated header"),
            (vec![0xff; 12], "size too large"),
        ];
        for (d, why) in cases {
            assert_eq!(apply(base, &d).unwrap_err().message(), format!("corrupt delta: {why}"));
        }
    }
}
