//! Packs: a tree's small files in a few large remote objects, so that realizing a whole tree
//! from a remote costs a few hundred requests rather than one per file. Per-object overhead
//! dominates an S3 service's time for source trees (the 54k-entry bench tree: 46k GETs took
//! longer than the forge's one archive); a pack is one GET for up to [`PACK_MAX`] bytes.
//!
//! Which files go into which pack is a function of the listing alone, so a pack needs no index
//! and a reader computes exactly what a pusher wrote:
//!
//! - a *unit* is a directory whose subtree holds at most [`PACK_MAX`] bytes of small files
//!   (each at most [`SMALL`]): its pack is every small file of the subtree, `packs/<tree hex>`;
//! - a directory holding more is split: its own small files are one unit,
//!   `packs/<tree hex>.own`, and each subdirectory is visited in turn.
//!
//! A pack's bytes are `"cab-pack 1\n"` and then the unit's blobs, each once, in the order of a
//! top-down walk (a directory's files in name order, then its subdirectories). Each blob is
//! checked against its BLAKE3 when unpacked, so a pack cannot say anything its blobs do not
//! prove. Units are named by tree hashes, so they deduplicate as trees do: a new revision
//! uploads only the packs of the subtrees that changed. Blobs are also stored one by one
//! (the unit of lazy reads and of the fallback when a pack is missing or corrupt).

use std::collections::{HashMap, HashSet};

use anyhow::{Result, bail};

use crate::hash::tree::{Node, Object};
use crate::hash::{BlobHash, TreeHash};

/// Files up to this size go into packs; larger ones are fetched alone.
pub const SMALL: u64 = 256 * 1024;
/// A unit's small files total at most this.
pub const PACK_MAX: u64 = 8 * 1024 * 1024;
const MAGIC: &[u8] = b"cab-pack 1\n";

/// One pack: its key and its blobs in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// The key under the remote (`packs/…`).
    pub key: String,
    /// The blobs, each once, with their sizes.
    pub blobs: Vec<(BlobHash, u64)>,
}

impl Unit {
    /// Whether a fetch that lacks `missing` of its blobs takes the pack rather than the blobs
    /// one by one: when most of it is missing (the pack costs one request, but brings the
    /// blobs already here again).
    pub fn worth_fetching(&self, missing: usize) -> bool {
        missing >= 2 && missing * 2 >= self.blobs.len()
    }
}

/// The units of the tree `root`, whose objects `object` finds (every directory of it).
pub fn units<'a>(root: &TreeHash, object: impl Fn(&TreeHash) -> Option<&'a Object>) -> Result<Vec<Unit>> {
    let entries = |tree: &TreeHash| -> Result<&'a [crate::hash::tree::Entry]> {
        match object(tree) {
            Some(Object::Directory(entries)) => Ok(entries),
            Some(Object::Root(_)) => Ok(&[]),
            None => bail!("the listing lacks directory {tree}"),
        }
    };
    // Small bytes below each directory, bottom-up (iteratively: trees can be deep).
    let mut small: HashMap<TreeHash, u64> = HashMap::new();
    let mut stack = vec![(*root, false)];
    while let Some((tree, children_done)) = stack.pop() {
        if small.contains_key(&tree) {
            continue;
        }
        let subdirectories = entries(&tree)?.iter().filter_map(|e| match e.node {
            Node::Directory { tree } => Some(tree),
            _ => None,
        });
        if !children_done {
            stack.push((tree, true));
            stack.extend(subdirectories.filter(|t| !small.contains_key(t)).map(|t| (t, false)));
            continue;
        }
        let mut total = 0u64;
        for entry in entries(&tree)? {
            total = total.saturating_add(match &entry.node {
                Node::File { size, .. } if *size <= SMALL => *size,
                Node::Directory { tree } => small.get(tree).copied().unwrap_or(0),
                _ => 0,
            });
        }
        small.insert(tree, total);
    }
    let mut out = Vec::new();
    let mut seen_units = HashSet::new();
    let mut visit = vec![*root];
    while let Some(tree) = visit.pop() {
        if !seen_units.insert(tree) {
            continue;
        }
        if small.get(&tree).copied().unwrap_or(0) <= PACK_MAX {
            let blobs = walk_small(&tree, &entries)?;
            if !blobs.is_empty() {
                out.push(Unit {
                    key: format!("packs/{}", tree.to_hex()),
                    blobs,
                });
            }
            continue;
        }
        let mut own = Vec::new();
        let mut seen = HashSet::new();
        let mut subdirectories = Vec::new();
        for entry in entries(&tree)? {
            match &entry.node {
                Node::File { blob, size, .. } if *size <= SMALL && seen.insert(*blob) => own.push((*blob, *size)),
                Node::Directory { tree } => subdirectories.push(*tree),
                _ => {}
            }
        }
        if !own.is_empty() {
            out.push(Unit {
                key: format!("packs/{}.own", tree.to_hex()),
                blobs: own,
            });
        }
        visit.extend(subdirectories.into_iter().rev());
    }
    Ok(out)
}

/// Every directory object of `tree`, read from `store` (whose listing of it is whole).
pub fn stored_listing(store: &crate::store::Store, tree: &TreeHash) -> Result<HashMap<TreeHash, Object>> {
    let mut listing = HashMap::new();
    let mut next = vec![*tree];
    while let Some(hash) = next.pop() {
        if listing.contains_key(&hash) {
            continue;
        }
        let object = store.read_object(&hash)?;
        if let Object::Directory(entries) = &object {
            next.extend(entries.iter().filter_map(|e| match e.node {
                Node::Directory { tree } => Some(tree),
                _ => None,
            }));
        }
        listing.insert(hash, object);
    }
    Ok(listing)
}

/// Every small file of the subtree `tree`, each blob once, in top-down walk order.
fn walk_small<'a>(
    tree: &TreeHash,
    entries: &dyn Fn(&TreeHash) -> Result<&'a [crate::hash::tree::Entry]>,
) -> Result<Vec<(BlobHash, u64)>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut next = vec![*tree];
    while let Some(dir) = next.pop() {
        let mut subdirectories = Vec::new();
        for entry in entries(&dir)? {
            match &entry.node {
                Node::File { blob, size, .. } if *size <= SMALL && seen.insert(*blob) => out.push((*blob, *size)),
                Node::Directory { tree } => subdirectories.push(*tree),
                _ => {}
            }
        }
        next.extend(subdirectories.into_iter().rev());
    }
    Ok(out)
}

/// A pack's bytes, from its blobs' bytes in the unit's order.
pub fn encode<'a>(blobs: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for bytes in blobs {
        out.extend_from_slice(bytes);
    }
    out
}

/// The blobs of a pack of `unit`, each checked against its name; an error says what is wrong.
pub fn decode<'a>(unit: &Unit, bytes: &'a [u8]) -> Result<Vec<(BlobHash, &'a [u8])>> {
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        bail!("not a cab pack");
    };
    let mut out = Vec::with_capacity(unit.blobs.len());
    for (blob, size) in &unit.blobs {
        let size = usize::try_from(*size)?;
        if rest.len() < size {
            bail!("cut short");
        }
        let (bytes, tail) = rest.split_at(size);
        if BlobHash::of(bytes) != *blob {
            bail!("its bytes for blob {} do not hash to its name", blob.to_hex());
        }
        out.push((*blob, bytes));
        rest = tail;
    }
    if !rest.is_empty() {
        bail!("{} bytes too many", rest.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::tree::{Entry, encode_directory};

    fn file(name: &str, bytes: &[u8]) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            node: Node::File {
                executable: false,
                size: bytes.len() as u64,
                blob: BlobHash::of(bytes),
            },
        }
    }

    fn dir(objects: &mut HashMap<TreeHash, Object>, name: &str, entries: Vec<Entry>) -> (Entry, TreeHash) {
        let (_, tree) = encode_directory(&entries);
        objects.insert(tree, Object::Directory(entries));
        (
            Entry {
                name: name.as_bytes().to_vec(),
                node: Node::Directory { tree },
            },
            tree,
        )
    }

    #[test]
    fn small_trees_are_one_unit_and_big_ones_split() {
        let mut objects = HashMap::new();
        let (a, a_tree) = dir(&mut objects, "a", vec![file("x", b"xx"), file("y", b"yy")]);
        let big = vec![7u8; (SMALL - 1) as usize];
        let many: Vec<Entry> = (0..40u8)
            .map(|i| {
                let mut bytes = big.clone();
                bytes[0] = i;
                file(&format!("f{i:02}"), &bytes)
            })
            .collect();
        let (b, b_tree) = dir(&mut objects, "b", many);
        let (_, root) = dir(
            &mut objects,
            "",
            vec![a.clone(), b, file("z", b"zz"), file("zz", b"xx")],
        );
        let units = units(&root, |t| objects.get(t)).unwrap();
        let keys: Vec<&str> = units.iter().map(|u| u.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                format!("packs/{}.own", root.to_hex()),
                format!("packs/{}", a_tree.to_hex()),
                format!("packs/{}.own", b_tree.to_hex()),
            ]
        );
        // The root's own: z, then zz's blob is x's, but that is in another unit: kept here too.
        assert_eq!(units[0].blobs.len(), 2);
        let (_, small_root) = dir(&mut objects, "", vec![a, file("z", b"zz")]);
        let one = super::units(&small_root, |t| objects.get(t)).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].blobs.len(), 3);
        // Walk order: the root's own files, then a's.
        let bytes: Vec<&[u8]> = vec![b"zz", b"xx", b"yy"];
        let pack = encode(bytes.iter().copied());
        assert_eq!(decode(&one[0], &pack).unwrap().len(), 3);
        let mut bad = pack.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(decode(&one[0], &bad).is_err());
        assert!(decode(&one[0], &pack[..pack.len() - 1]).is_err());
    }
}
