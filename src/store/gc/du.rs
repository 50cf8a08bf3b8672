//! `cab store du`: where the bytes are — per root, per unrooted tree, and the rest — with the
//! bytes trees share counted once in every total.

use std::collections::HashMap;
use std::fs;
use std::time::SystemTime;

use anyhow::Result;

use super::reach::{Marked, Objects, Owners, closure};
use super::{Root, RootKind, list_objects};
use crate::hash::TreeHash;
use crate::store::Store;

/// One tree in the report.
#[derive(Clone, Debug)]
pub struct DuRow {
    /// The tree.
    pub tree: TreeHash,
    /// What roots it (empty: nothing; the tree is published but unrooted).
    pub roots: Vec<RootKind>,
    /// Whether it is published in this store.
    pub published: bool,
    /// When it was last used.
    pub last_used: Option<SystemTime>,
    /// Every byte it needs, each object once.
    pub size: u64,
    /// The bytes no other tree in the report needs: what dropping it alone would free.
    pub alone: u64,
}

/// Where the store's bytes are.
#[derive(Clone, Debug, Default)]
pub struct Du {
    /// Rooted trees (each with its roots), largest first.
    pub rooted: Vec<DuRow>,
    /// Published trees no root reaches, most recently used first.
    pub unrooted: Vec<DuRow>,
    /// Bytes the rooted trees need, shared bytes once.
    pub rooted_bytes: u64,
    /// Bytes the unrooted trees need beyond those.
    pub unrooted_bytes: u64,
    /// Objects no published or rooted tree reaches (a failed fetch's, or one in flight).
    pub unreferenced_objects: u64,
    /// Their bytes.
    pub unreferenced_bytes: u64,
    /// Compiled fetcher modules (`cache/`).
    pub module_bytes: u64,
}

impl Du {
    /// Everything counted.
    pub fn total(&self) -> u64 {
        self.rooted_bytes + self.unrooted_bytes + self.unreferenced_bytes + self.module_bytes
    }
}

impl Store {
    /// Accounts for every byte of `blobs/`, `trees/` and `cache/` against `roots` (as
    /// [`Store::gather_roots`] returns them) and the published trees.
    pub fn du(&self, roots: Vec<Root>) -> Result<Du> {
        // Nothing is deleted while the bytes are counted.
        let _guard = self.guard()?;
        let mut by_tree: Vec<(TreeHash, Vec<RootKind>)> = Vec::new();
        let mut index: HashMap<TreeHash, usize> = HashMap::new();
        for root in roots {
            let at = *index.entry(root.tree).or_insert_with(|| {
                by_tree.push((root.tree, Vec::new()));
                by_tree.len() - 1
            });
            by_tree[at].1.push(root.kind);
        }
        let mut objects = Objects::new(self, true);
        let mut all = Marked::default();
        for (tree, _) in &by_tree {
            all.mark(&mut objects, tree)?;
        }
        let rooted_bytes = all.bytes;
        let mut unrooted: Vec<TreeHash> = Vec::new();
        for tree in self.roots()? {
            if !index.contains_key(&tree) {
                unrooted.push(tree);
                all.mark(&mut objects, &tree)?;
            }
        }
        // Who needs what alone, among every tree listed.
        let units: Vec<TreeHash> = by_tree
            .iter()
            .map(|(t, _)| *t)
            .chain(unrooted.iter().copied())
            .collect();
        let mut owners = Owners::default();
        for (unit, tree) in units.iter().enumerate() {
            owners.add(&mut objects, unit, tree, None)?;
        }
        let alone = owners.alone();
        let mut row = |unit: usize, tree: TreeHash, roots: Vec<RootKind>| -> Result<DuRow> {
            let published = self.published(&tree)?.is_some();
            Ok(DuRow {
                tree,
                roots,
                published,
                last_used: if published { self.last_used(&tree) } else { None },
                size: closure(&mut objects, &tree)?,
                alone: alone.get(&unit).copied().unwrap_or(0),
            })
        };
        let mut du = Du::default();
        for (unit, (tree, kinds)) in by_tree.into_iter().enumerate() {
            du.rooted.push(row(unit, tree, kinds)?);
        }
        let first = du.rooted.len();
        for (i, tree) in unrooted.into_iter().enumerate() {
            du.unrooted.push(row(first + i, tree, Vec::new())?);
        }
        du.rooted.sort_by(|a, b| b.size.cmp(&a.size).then(a.tree.cmp(&b.tree)));
        du.unrooted
            .sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.tree.cmp(&b.tree)));
        du.rooted_bytes = rooted_bytes;
        du.unrooted_bytes = all.bytes - rooted_bytes;
        for (obj, path) in list_objects(self)? {
            if all.contains(&obj) {
                continue;
            }
            if let Ok(meta) = fs::symlink_metadata(&path) {
                du.unreferenced_objects += 1;
                du.unreferenced_bytes += meta.len();
            }
        }
        if let Ok(entries) = fs::read_dir(self.root.join("cache")) {
            du.module_bytes = entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum();
        }
        Ok(du)
    }
}
