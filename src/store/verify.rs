//! Verify: re-hash every object in the store and check that every published tree is whole.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Store;
use crate::hash::tree::{Node, Object};
use crate::hash::{TreeHash, encoding};

/// One problem `verify` found.
#[derive(Debug, Clone)]
pub struct Corruption {
    /// The object's kind: `blob`, `tree`, `root` or `index`.
    pub kind: &'static str,
    /// The object's name (hex) as it appears in the store.
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

/// What `verify` checked and found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Blobs re-hashed.
    pub blobs: u64,
    /// Tree objects re-hashed.
    pub objects: u64,
    /// Published trees checked for completeness.
    pub roots: u64,
    /// Index entries checked.
    pub index: u64,
    /// Files of the image cache checked (a damaged one is deleted, to be written again).
    pub images: u64,
    /// Everything found wrong.
    pub corrupt: Vec<Corruption>,
}

fn blake3_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(*hasher.finalize().as_bytes()),
            n => hasher.update(&buf[..n]),
        };
    }
}

/// Every `(name, path)` in a sharded directory (`blobs/` or `trees/`).
pub(super) fn sharded_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for shard in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let shard = shard?;
        let prefix = shard.file_name().to_string_lossy().into_owned();
        for entry in fs::read_dir(shard.path()).with_context(|| format!("cannot list {}", shard.path().display()))? {
            let entry = entry?;
            out.push((format!("{prefix}{}", entry.file_name().to_string_lossy()), entry.path()));
        }
    }
    Ok(out)
}

impl Store {
    /// Re-hashes every blob and tree object, checks that every published tree has all its
    /// parts, and that every index entry names a published tree.
    pub fn verify(&self) -> Result<VerifyReport> {
        // A collection deleting meanwhile would show trees half gone; none runs while this
        // guard is held.
        let _guard = self.guard()?;
        let mut report = VerifyReport::default();
        let bad = |kind, name: &str, path: &Path, problem: String| {
            tracing::error!("corrupt {kind} {name} at {}: {problem}", path.display());
            Corruption {
                kind,
                name: name.to_owned(),
                path: path.to_owned(),
                problem,
            }
        };
        let mut corrupt = Vec::new();
        for (name, path) in sharded_files(&self.root.join("blobs"))? {
            report.blobs += 1;
            match blake3_file(&path) {
                Ok(hash) if encoding::to_hex(&hash) == name => {}
                Ok(hash) => corrupt.push(bad(
                    "blob",
                    &name,
                    &path,
                    format!("contents hash to {}", encoding::to_hex(&hash)),
                )),
                Err(e) => corrupt.push(bad("blob", &name, &path, format!("cannot read: {e}"))),
            }
        }
        for (name, path) in sharded_files(&self.root.join("trees"))? {
            report.objects += 1;
            match fs::read(&path) {
                Ok(bytes) if blake3::hash(&bytes).to_hex().as_str() != name => corrupt.push(bad(
                    "tree",
                    &name,
                    &path,
                    format!("bytes hash to {}", blake3::hash(&bytes).to_hex()),
                )),
                Ok(bytes) => {
                    if let Err(e) = Object::decode(&bytes) {
                        corrupt.push(bad("tree", &name, &path, e.to_string()));
                    }
                }
                Err(e) => corrupt.push(bad("tree", &name, &path, format!("cannot read: {e}"))),
            }
        }
        // Completeness: walk each published tree.
        for tree in self.roots()? {
            let mut seen: HashSet<TreeHash> = HashSet::new();
            report.roots += 1;
            let path = self.root_record_path(&tree);
            if let Err(e) = self.published(&tree) {
                corrupt.push(bad("root", &tree.to_hex(), &path, format!("{e:#}")));
            }
            if let Err(problem) = self.check_complete(&tree, &mut seen) {
                corrupt.push(bad("root", &tree.to_hex(), &path, problem));
            }
        }
        let index = self.root.join("index");
        for entry in fs::read_dir(&index).with_context(|| format!("cannot list {}", index.display()))? {
            let entry = entry?;
            report.index += 1;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let target = fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.lines().nth(1).and_then(|l| l.parse::<TreeHash>().ok()));
            match target {
                Some(tree) if self.root_record_path(&tree).exists() => {}
                Some(tree) => corrupt.push(bad(
                    "index",
                    &name,
                    &path,
                    format!("names {tree}, which is not published"),
                )),
                None => corrupt.push(bad("index", &name, &path, "unreadable entry".into())),
            }
        }
        let (images, damaged) = self.verify_images()?;
        report.images = images;
        corrupt.extend(damaged);
        report.corrupt = corrupt;
        Ok(report)
    }

    /// Whether every part of the published `tree` is in the store (no re-hashing: `verify`
    /// does that for the whole store).
    pub fn check_tree(&self, tree: &TreeHash) -> Result<(), String> {
        self.check_complete(tree, &mut HashSet::new())
    }

    fn check_complete(&self, tree: &TreeHash, seen: &mut HashSet<TreeHash>) -> Result<(), String> {
        let mut pending = vec![*tree];
        while let Some(tree) = pending.pop() {
            if !seen.insert(tree) {
                continue;
            }
            let entries = match self.read_object(&tree) {
                Ok(Object::Directory(entries)) => entries.into_iter().map(|e| e.node).collect(),
                Ok(Object::Root(node)) => vec![node],
                Err(e) => return Err(format!("{e:#}")),
            };
            for node in entries {
                match node {
                    Node::Directory { tree } => pending.push(tree),
                    Node::File { size, blob, .. } => {
                        let path = self.blob_path(&blob);
                        match fs::metadata(&path) {
                            Ok(m) if m.len() == size => {}
                            Ok(m) => {
                                return Err(format!(
                                    "blob {} has {} bytes, expected {size}",
                                    path.display(),
                                    m.len()
                                ));
                            }
                            Err(_) => return Err(format!("blob {} is missing", path.display())),
                        }
                    }
                    Node::Symlink { .. } => {}
                }
            }
        }
        Ok(())
    }
}
