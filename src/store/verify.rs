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

fn blake3_file(path: &Path, buf: &mut [u8]) -> std::io::Result<[u8; 32]> {
    let mut file = fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    loop {
        match file.read(buf)? {
            0 => return Ok(*hasher.finalize().as_bytes()),
            n => hasher.update(&buf[..n]),
        };
    }
}

/// Re-hashes blobs on a few threads, each with one buffer for all its files: a store read cold
/// keeps several reads in flight (the disk answers them together), and hashing gets every core.
/// Files go in inode order, which on ext4 is close to the order of their blocks. Returns each
/// blob whose contents do not match its name, with what is wrong, sorted by name.
fn check_blobs(mut files: Vec<(String, PathBuf, u64)>) -> Vec<(String, PathBuf, String)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    files.sort_unstable_by_key(|f| f.2);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get() * 2)
        .clamp(2, 16);
    let next = AtomicUsize::new(0);
    let mut problems: Vec<(String, PathBuf, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut buf = vec![0u8; 256 << 10];
                    let mut found = Vec::new();
                    loop {
                        let Some((name, path, _)) = files.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            return found;
                        };
                        let problem = match blake3_file(path, &mut buf) {
                            Ok(hash) if encoding::to_hex(&hash) == *name => continue,
                            Ok(hash) => format!("contents hash to {}", encoding::to_hex(&hash)),
                            Err(e) => format!("cannot read: {e}"),
                        };
                        found.push((name.clone(), path.clone(), problem));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    });
    problems.sort();
    problems
}

/// Every `(name, path)` in a sharded directory (`blobs/` or `trees/`).
pub(super) fn sharded_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    Ok(sharded_files_with_inodes(dir)?
        .into_iter()
        .map(|(name, path, _)| (name, path))
        .collect())
}

/// Every `(name, path, inode number)` in a sharded directory.
fn sharded_files_with_inodes(dir: &Path) -> Result<Vec<(String, PathBuf, u64)>> {
    use std::os::unix::fs::DirEntryExt;
    let mut out = Vec::new();
    for shard in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let shard = shard?;
        let prefix = shard.file_name().to_string_lossy().into_owned();
        for entry in fs::read_dir(shard.path()).with_context(|| format!("cannot list {}", shard.path().display()))? {
            let entry = entry?;
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            out.push((name, entry.path(), entry.ino()));
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
        let blobs = sharded_files_with_inodes(&self.root.join("blobs"))?;
        report.blobs = blobs.len() as u64;
        for (name, path, problem) in check_blobs(blobs) {
            corrupt.push(bad("blob", &name, &path, problem));
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
