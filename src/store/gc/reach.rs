//! What trees reach: the objects (tree objects and blobs) each tree needs, and their sizes.
//!
//! Trees are Merkle trees, so a directory object already marked has its whole subtree marked:
//! marking a second revision of a tree reads only the directories that changed. Sizes come
//! from the objects themselves (a tree object's length) and from the parents (a blob's size is
//! in its directory entry), so no blob is ever opened or stat'ed here.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::super::Store;
use crate::hash::tree::{Node, Object};
use crate::hash::{BlobHash, TreeHash};

/// One object of the store. Tree objects and blobs live in different directories and their
/// names can coincide (a file whose bytes are a directory object), so the kind is part of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(in crate::store) enum Obj {
    /// `trees/…`
    Tree([u8; 32]),
    /// `blobs/…`
    Blob(BlobHash),
}

/// A tree object's children with their sizes (a child tree's size is known once it is read).
type Children = Arc<Vec<(Obj, u64)>>;

/// Reads tree objects, keeping them decoded when asked to (for walks that visit objects more
/// than once), and counts the objects found missing.
pub(in crate::store) struct Objects<'s> {
    store: &'s Store,
    keep: bool,
    cache: HashMap<[u8; 32], Option<(u64, Children)>>,
    /// Tree objects that a walk wanted and the store lacks.
    pub missing: u64,
}

impl<'s> Objects<'s> {
    /// A reader; `keep` keeps every object read decoded in memory.
    pub(in crate::store) fn new(store: &'s Store, keep: bool) -> Objects<'s> {
        Objects {
            store,
            keep,
            cache: HashMap::new(),
            missing: 0,
        }
    }

    /// The length of a tree object and its children; `None` if the store lacks it (a tree
    /// not fetched yet, or still being fetched).
    fn read(&mut self, tree: &[u8; 32]) -> Result<Option<(u64, Children)>> {
        if let Some(known) = self.cache.get(tree) {
            return Ok(known.clone());
        }
        let path = self.store.object_path(&TreeHash(*tree));
        let found = match std::fs::read(&path) {
            Ok(bytes) => {
                let object = Object::decode(&bytes)
                    .with_context(|| format!("tree object {} is corrupt: run `cab store verify`", path.display()))?;
                let children = object
                    .nodes()
                    .filter_map(|node| match node {
                        Node::File { size, blob, .. } => Some((Obj::Blob(*blob), *size)),
                        Node::Directory { tree } => Some((Obj::Tree(tree.0), 0)),
                        Node::Symlink { .. } => None,
                    })
                    .collect();
                Some((bytes.len() as u64, Arc::new(children)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.missing += 1;
                None
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read tree object {}", path.display())),
        };
        if self.keep {
            self.cache.insert(*tree, found.clone());
        }
        Ok(found)
    }

    /// Every object `tree` reaches that `skip` does not already hold, with sizes, each once.
    /// A tree object in `skip` is not entered: its subtree is there too.
    fn reach(&mut self, tree: &TreeHash, skip: &HashMap<Obj, u64>) -> Result<HashMap<Obj, u64>> {
        let mut found: HashMap<Obj, u64> = HashMap::new();
        let mut pending = vec![tree.0];
        while let Some(tree) = pending.pop() {
            let obj = Obj::Tree(tree);
            if skip.contains_key(&obj) || found.contains_key(&obj) {
                continue;
            }
            let Some((len, children)) = self.read(&tree)? else {
                continue;
            };
            found.insert(obj, len);
            for &(child, size) in children.iter() {
                match child {
                    Obj::Tree(hash) => pending.push(hash),
                    Obj::Blob(_) if !skip.contains_key(&child) => {
                        found.insert(child, size);
                    }
                    Obj::Blob(_) => {}
                }
            }
        }
        Ok(found)
    }
}

/// A set of objects (what some trees reach), with their total size.
#[derive(Debug, Default)]
pub(in crate::store) struct Marked {
    sizes: HashMap<Obj, u64>,
    /// The sum of their sizes.
    pub bytes: u64,
}

impl Marked {
    /// Whether `obj` is marked.
    pub(in crate::store) fn contains(&self, obj: &Obj) -> bool {
        self.sizes.contains_key(obj)
    }

    /// The size of a marked object.
    pub(in crate::store) fn size(&self, obj: &Obj) -> Option<u64> {
        self.sizes.get(obj).copied()
    }

    /// Marks everything `tree` reaches.
    pub(in crate::store) fn mark(&mut self, objects: &mut Objects, tree: &TreeHash) -> Result<()> {
        let new = objects.reach(tree, &self.sizes)?;
        self.add(new);
        Ok(())
    }

    /// What marking `tree` would add, and how many bytes that is, without marking it.
    pub(in crate::store) fn would_add(
        &self,
        objects: &mut Objects,
        tree: &TreeHash,
    ) -> Result<(u64, HashMap<Obj, u64>)> {
        let new = objects.reach(tree, &self.sizes)?;
        Ok((new.values().sum(), new))
    }

    /// Marks what [`Marked::would_add`] found.
    pub(in crate::store) fn add(&mut self, new: HashMap<Obj, u64>) {
        for (obj, size) in new {
            if self.sizes.insert(obj, size).is_none() {
                self.bytes += size;
            }
        }
    }
}

/// Who reaches an object: one tree only, or several.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    One(usize),
    Shared,
}

/// Which objects each of several trees reaches alone, for "what would deleting this tree
/// free". Each object goes from unowned to one owner to shared at most once, so accounting for
/// N revisions of a tree costs about one walk of what they hold, not N walks.
#[derive(Default)]
pub(in crate::store) struct Owners {
    owner: HashMap<Obj, Owner>,
    sizes: HashMap<Obj, u64>,
}

impl Owners {
    /// Accounts for `tree` as unit `unit`, leaving out the objects in `ignore`.
    pub(in crate::store) fn add(
        &mut self,
        objects: &mut Objects,
        unit: usize,
        tree: &TreeHash,
        ignore: Option<&Marked>,
    ) -> Result<()> {
        // (object, size, whether it is being reached through an object found shared)
        let mut pending = vec![(Obj::Tree(tree.0), 0, false)];
        while let Some((obj, size, sharing)) = pending.pop() {
            if ignore.is_some_and(|m| m.contains(&obj)) {
                continue;
            }
            let now = self.owner.get(&obj).copied();
            let next = match (now, sharing) {
                (Some(Owner::Shared), _) => continue,
                (Some(Owner::One(u)), false) if u == unit => continue,
                (None, false) => Owner::One(unit),
                _ => Owner::Shared,
            };
            self.owner.insert(obj, next);
            let Obj::Tree(hash) = obj else {
                self.sizes.insert(obj, size);
                continue;
            };
            let Some((len, children)) = objects.read(&hash)? else {
                continue;
            };
            self.sizes.insert(obj, len);
            let sharing = next == Owner::Shared;
            for &(child, size) in children.iter() {
                pending.push((child, size, sharing));
            }
        }
        Ok(())
    }

    /// Bytes each unit reaches alone.
    pub(in crate::store) fn alone(&self) -> HashMap<usize, u64> {
        let mut out: HashMap<usize, u64> = HashMap::new();
        for (obj, owner) in &self.owner {
            if let Owner::One(unit) = owner {
                *out.entry(*unit).or_default() += self.sizes.get(obj).copied().unwrap_or(0);
            }
        }
        out
    }
}

/// Everything `tree` needs, in bytes, each object once.
pub(in crate::store) fn closure(objects: &mut Objects, tree: &TreeHash) -> Result<u64> {
    let mut seen: HashSet<Obj> = HashSet::new();
    let mut bytes = 0;
    let mut pending = vec![tree.0];
    while let Some(tree) = pending.pop() {
        if !seen.insert(Obj::Tree(tree)) {
            continue;
        }
        let Some((len, children)) = objects.read(&tree)? else {
            continue;
        };
        bytes += len;
        for &(child, size) in children.iter() {
            match child {
                Obj::Tree(hash) => pending.push(hash),
                Obj::Blob(_) => {
                    if seen.insert(child) {
                        bytes += size;
                    }
                }
            }
        }
    }
    Ok(bytes)
}
