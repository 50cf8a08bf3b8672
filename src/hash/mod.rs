//! The two hashes every tree carries: the Cab tree hash (BLAKE3 over the canonical Merkle
//! encoding in DESIGN.md) and the Nix NAR SHA-256, with the text forms each is written in.
//!
//! Both are computed in one pass over a tree's bytes by [`walk`]; the store's ingest uses the
//! same walk, so hashing a tree and storing it can never disagree.

pub mod dir;
pub mod encoding;
pub mod nar;
mod prefetch;
pub mod tree;
pub mod walk;

use std::fmt;
use std::str::FromStr;

pub use tree::{Entry, Kind, Node};
pub use walk::{HashedTree, hash_path};

/// The Cab tree hash: BLAKE3 of a tree's canonical encoding, written `blake3-<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TreeHash(pub [u8; 32]);

/// The name of a blob: BLAKE3 of a file's contents. Written as 64 lowercase hex digits (the
/// blob's file name in a store, its key on a remote); a tree hash names a tree object, never a
/// blob, and the two are kept apart by type.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// The BLAKE3 of `bytes`.
    pub fn of(bytes: &[u8]) -> BlobHash {
        BlobHash(*blake3::hash(bytes).as_bytes())
    }

    /// The 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        encoding::to_hex(&self.0)
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blob {}", self.to_hex())
    }
}

/// The Nix NAR hash: SHA-256 of the tree's Nix archive, written as SRI `sha256-<base64>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NarHash(pub [u8; 32]);

/// A digest string that is not in the expected form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadHash {
    /// What the input should have looked like.
    pub expected: &'static str,
}

impl fmt::Display for BadHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected {}", self.expected)
    }
}

impl std::error::Error for BadHash {}

impl TreeHash {
    /// The prefix of the text form.
    pub const PREFIX: &'static str = "blake3-";

    /// The 64 lowercase hex digits, without the prefix (store file names, `by-hash/`).
    pub fn to_hex(&self) -> String {
        encoding::to_hex(&self.0)
    }

    /// Parses bare hex, as used for store object names.
    pub fn from_hex(s: &str) -> Option<Self> {
        (s.bytes().all(|b| !b.is_ascii_uppercase())).then_some(())?;
        encoding::from_hex(s).map(TreeHash)
    }
}

impl fmt::Display for TreeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.to_hex())
    }
}

impl fmt::Debug for TreeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for TreeHash {
    type Err = BadHash;

    fn from_str(s: &str) -> Result<Self, BadHash> {
        s.strip_prefix(Self::PREFIX)
            .and_then(TreeHash::from_hex)
            .ok_or(BadHash {
                expected: "`blake3-` followed by 64 lowercase hex digits",
            })
    }
}

/// How a NAR hash is printed; the names are Nix's own flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NarHashStyle {
    /// `sha256-<base64>`, Nix's default.
    #[default]
    Sri,
    /// Nix's base32, as `--base32` prints it.
    Base32,
    /// Lowercase hex, as `--base16` prints it.
    Base16,
    /// Plain base64, as `--base64` prints it.
    Base64,
}

impl NarHash {
    /// The prefix of the SRI text form.
    pub const PREFIX: &'static str = "sha256-";

    /// Prints the hash as `nix hash path` does with the matching flag.
    pub fn display(&self, style: NarHashStyle) -> String {
        match style {
            NarHashStyle::Sri => self.to_string(),
            NarHashStyle::Base32 => encoding::to_nix_base32(&self.0),
            NarHashStyle::Base16 => encoding::to_hex(&self.0),
            NarHashStyle::Base64 => encoding::to_base64(&self.0),
        }
    }
}

impl fmt::Display for NarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, encoding::to_base64(&self.0))
    }
}

impl fmt::Debug for NarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for NarHash {
    type Err = BadHash;

    /// Accepts the SRI form the lock uses, and `sha256:<nix base32 or hex>` as older Nix
    /// expressions write it.
    fn from_str(s: &str) -> Result<Self, BadHash> {
        let bad = BadHash {
            expected: "`sha256-` followed by 44 base64 characters",
        };
        if let Some(b64) = s.strip_prefix(Self::PREFIX) {
            return encoding::from_base64(b64).map(NarHash).ok_or(bad);
        }
        if let Some(rest) = s.strip_prefix("sha256:") {
            return encoding::from_nix_base32(rest)
                .or_else(|| encoding::from_hex(rest))
                .map(NarHash)
                .ok_or(bad);
        }
        Err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        let t: TreeHash = format!("blake3-{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(t.to_string().parse::<TreeHash>().unwrap(), t);
        assert!("blake3-AB".parse::<TreeHash>().is_err());
        assert!(format!("blake3-{}", "AB".repeat(32)).parse::<TreeHash>().is_err());
        let n: NarHash = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".parse().unwrap();
        assert_eq!(
            n.display(NarHashStyle::Base32),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        let again: NarHash = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
            .parse()
            .unwrap();
        assert_eq!(again, n);
    }
}
