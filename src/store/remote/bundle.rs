//! Bundles: every tree object of a published tree in one remote object, so a machine learns a
//! whole tree's listing — names, kinds, sizes, modes — in one request, not one per directory.
//!
//! ```text
//! "cab-bundle 1\n", then for each object: its length (u32, little-endian) and its bytes
//! ```
//!
//! Objects carry no names: each is named by the BLAKE3 of its bytes, as in the store, so a
//! bundle cannot say anything its objects do not prove.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};

use super::super::Store;
use crate::hash::TreeHash;
use crate::hash::tree::{Node, Object};

const MAGIC: &[u8] = b"cab-bundle 1\n";

/// The bundle of `tree`, from `store`.
pub fn encode(store: &Store, tree: &TreeHash) -> Result<Vec<u8>> {
    let mut out = MAGIC.to_vec();
    let mut seen = std::collections::HashSet::new();
    let mut next = vec![*tree];
    while let Some(hash) = next.pop() {
        if !seen.insert(hash) {
            continue;
        }
        let path = store.object_path(&hash);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if let Object::Directory(entries) =
            Object::decode(&bytes).with_context(|| format!("tree object {hash} is corrupt"))?
        {
            next.extend(entries.iter().filter_map(|e| match e.node {
                Node::Directory { tree } => Some(tree),
                _ => None,
            }));
        }
        let len = u32::try_from(bytes.len()).context("a tree object over 4 GiB")?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// The objects of a bundle, each checked against the hash that will name it.
pub fn decode(bytes: &[u8]) -> Result<HashMap<TreeHash, Vec<u8>>> {
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        bail!("not a cab bundle");
    };
    let mut out = HashMap::new();
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            bail!("a bundle cut short");
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            bail!("a bundle cut short");
        }
        let (object, tail) = tail.split_at(len);
        out.insert(TreeHash(*blake3::hash(object).as_bytes()), object.to_vec());
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bundles_are_refused() {
        assert!(decode(b"not a bundle").is_err());
        let mut cut = MAGIC.to_vec();
        cut.extend_from_slice(&10u32.to_le_bytes());
        cut.extend_from_slice(b"short");
        assert!(decode(&cut).is_err());
        let mut one = MAGIC.to_vec();
        one.extend_from_slice(&3u32.to_le_bytes());
        one.extend_from_slice(b"abc");
        let objects = decode(&one).unwrap();
        assert_eq!(
            objects.get(&TreeHash(*blake3::hash(b"abc").as_bytes())).map(|v| &v[..]),
            Some(&b"abc"[..])
        );
    }
}
