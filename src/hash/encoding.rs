//! Text encodings of digests as Nix and the Cab lock spell them: lowercase hex, Nix's own
//! base32 (a different alphabet and bit order from RFC 4648) and standard padded base64 (SRI).

/// Nix's base32 alphabet: digits and lowercase letters without `e`, `o`, `u` and `t`.
const NIX_BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Lowercase hexadecimal.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses hexadecimal of exactly `N` bytes (either case).
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// Nix base32: the digest read as one little-endian number, printed most significant digit
/// first, 5 bits per character.
pub fn to_nix_base32(bytes: &[u8]) -> String {
    let len = (bytes.len() * 8).div_ceil(5);
    let mut s = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let low = (bytes[i] as u16) >> j;
        let high = if i + 1 < bytes.len() {
            (bytes[i + 1] as u16) << (8 - j)
        } else {
            0
        };
        s.push(NIX_BASE32[((low | high) & 0x1f) as usize] as char);
    }
    s
}

/// Parses Nix base32 of exactly `N` bytes.
pub fn from_nix_base32<const N: usize>(s: &str) -> Option<[u8; N]> {
    let len = (N * 8).div_ceil(5);
    if s.len() != len {
        return None;
    }
    let mut out = [0u8; N];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = NIX_BASE32.iter().position(|&d| d == c)? as u16;
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= (digit << j) as u8;
        let carry = digit >> (8 - j);
        if i + 1 < N {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return None; // bits beyond the digest: not a valid encoding
        }
    }
    Some(out)
}

/// Standard base64 with padding, as SRI hashes use.
pub fn to_base64(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                s.push(BASE64[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Parses padded standard base64 of exactly `N` bytes.
pub fn from_base64<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != N.div_ceil(3) * 4 {
        return None;
    }
    let mut out = Vec::with_capacity(N + 2);
    for quad in s.chunks_exact(4) {
        let mut n = 0u32;
        let mut pad = 0;
        for &c in quad {
            let v = match c {
                b'=' => {
                    pad += 1;
                    0
                }
                _ if pad > 0 => return None,
                _ => BASE64.iter().position(|&d| d == c)? as u32,
            };
            n = (n << 6) | v;
        }
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8][..3 - pad]);
    }
    if out.len() != N {
        return None;
    }
    let mut arr = [0u8; N];
    arr.copy_from_slice(&out);
    // Reject non-canonical encodings (stray bits under the padding) by re-encoding.
    (to_base64(&arr).as_bytes() == s).then_some(arr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_base32_matches_nix() {
        // sha256 of the empty string, as `nix hash to-base32` prints it.
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let bytes: [u8; 32] = from_hex(hex).unwrap();
        let b32 = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        assert_eq!(to_nix_base32(&bytes), b32);
        assert_eq!(from_nix_base32::<32>(b32), Some(bytes));
        assert_eq!(to_base64(&bytes), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        assert_eq!(
            from_base64::<32>("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
            Some(bytes)
        );
    }

    #[test]
    fn round_trips_and_rejects() {
        for n in 0..=255u8 {
            let bytes = [n; 32];
            assert_eq!(from_hex::<32>(&to_hex(&bytes)), Some(bytes));
            assert_eq!(from_nix_base32::<32>(&to_nix_base32(&bytes)), Some(bytes));
            assert_eq!(from_base64::<32>(&to_base64(&bytes)), Some(bytes));
        }
        assert_eq!(from_hex::<2>("zz00"), None);
        assert_eq!(from_nix_base32::<32>("e"), None);
        assert_eq!(from_base64::<32>("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFV="), None);
    }
}
