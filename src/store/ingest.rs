//! Ingest: a tree on disk enters the store in the same pass that hashes it.
//!
//! Small files are held in memory until their hash is known, so re-adding content the store
//! already has writes nothing; large files stream to a temporary file. A tree that already
//! lives inside the store's `tmp/` (a fetcher's `out/`) is *moved* in: its files are renamed,
//! never copied.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::{Staging, Store};
use crate::hash::BlobHash;
use crate::hash::tree::{Node, encode_root};
use crate::hash::walk::{Visitor, walk};
use crate::hash::{NarHash, TreeHash};

/// How files get into the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingest {
    /// Copy the bytes; the source is left alone.
    Copy,
    /// Rename the source files into the store. Only for trees inside the store's own `tmp/`
    /// that nobody else uses: the source tree is consumed.
    Move,
}

/// The result of adding a tree: both hashes, the root node and a few counts.
#[derive(Clone, Debug)]
pub struct Added {
    /// The tree hash.
    pub tree: TreeHash,
    /// The NAR hash.
    pub nar: NarHash,
    /// The root node.
    pub root: Node,
    /// Regular files in the tree.
    pub files: u64,
    /// Bytes of file contents in the tree.
    pub bytes: u64,
    /// Blobs that were not in the store before.
    pub new_blobs: u64,
    /// Bytes of the objects written (those the store lacked).
    pub new_bytes: u64,
}

/// Files up to this size are buffered in memory while they are hashed.
const SMALL_FILE: u64 = 1 << 20;

/// Hears how far an ingest has come: called after each file with its size.
pub type OnFile<'a> = &'a (dyn Fn(u64) + Sync);

struct StoreVisitor<'s> {
    store: &'s Store,
    on_file: Option<OnFile<'s>>,
    scratch: Arc<Staging>,
    mode: Ingest,
    size: u64,
    small: Vec<u8>,
    large: Option<(File, PathBuf)>,
    new_blobs: u64,
    new_bytes: u64,
}

/// Whether a finished object already sits at `dest`. The size check catches a file cut short
/// by a machine crash before it was synced.
fn present(dest: &Path, size: u64) -> bool {
    fs::symlink_metadata(dest).is_ok_and(|m| m.len() == size)
}

impl StoreVisitor<'_> {
    fn install(&self, tmp: &Path, dest: &Path) -> Result<()> {
        let ctx = || format!("cannot store {}", dest.display());
        fs::set_permissions(tmp, fs::Permissions::from_mode(0o444)).with_context(ctx)?;
        fs::rename(tmp, dest).with_context(ctx)
    }

    fn write_new(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.scratch.temp_path("object");
        fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        self.install(&tmp, dest)
    }
}

impl Visitor for StoreVisitor<'_> {
    fn file_start(&mut self, _path: &Path, size: u64) -> Result<()> {
        self.size = size;
        if self.mode == Ingest::Copy {
            if size <= SMALL_FILE {
                self.small.clear();
            } else {
                let tmp = self.scratch.temp_path("blob");
                let file = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
                self.large = Some((file, tmp));
            }
        }
        Ok(())
    }

    fn file_data(&mut self, data: &[u8]) -> Result<()> {
        if self.mode == Ingest::Copy {
            match &mut self.large {
                Some((file, tmp)) => file
                    .write_all(data)
                    .with_context(|| format!("cannot write {}", tmp.display()))?,
                None => self.small.extend_from_slice(data),
            }
        }
        Ok(())
    }

    fn file_end(&mut self, path: &Path, blob: &BlobHash) -> Result<()> {
        if let Some(on_file) = self.on_file {
            on_file(self.size);
        }
        let dest = self.store.blob_path(blob);
        let large = self.large.take();
        if present(&dest, self.size) {
            if let Some((_, tmp)) = large {
                let _ = fs::remove_file(tmp);
            }
            return Ok(());
        }
        self.new_blobs += 1;
        self.new_bytes += self.size;
        match (self.mode, large) {
            (Ingest::Move, _) => self.install(path, &dest),
            (Ingest::Copy, Some((file, tmp))) => {
                drop(file);
                self.install(&tmp, &dest)
            }
            (Ingest::Copy, None) => self.write_new(&dest, &self.small),
        }
    }

    fn directory(&mut self, hash: &TreeHash, object: &[u8]) -> Result<()> {
        let dest = self.store.object_path(hash);
        if present(&dest, object.len() as u64) {
            return Ok(());
        }
        self.new_bytes += object.len() as u64;
        self.write_new(&dest, object)
    }
}

impl Store {
    /// Adds the tree at `path` (directory, file or symlink), publishes it and declares it
    /// live for this process.
    pub fn add_path(&self, path: &Path, mode: Ingest, on_file: Option<OnFile<'_>>) -> Result<Added> {
        let _guard = self.guard()?;
        let added = self.ingest(path, mode, on_file)?;
        self.publish(&added.tree, &added.nar)?;
        self.declare_live(&[added.tree])?;
        Ok(added)
    }

    /// Writes every object of the tree at `path` into the store without publishing it: the
    /// caller checks what it must, then calls [`Store::publish`]. The caller holds a
    /// [`Store::guard`] from before this call until the tree is published and declared live:
    /// an object found present here is relied on, not written again.
    pub fn ingest<'a>(&'a self, path: &Path, mode: Ingest, on_file: Option<OnFile<'a>>) -> Result<Added> {
        self.require_guard("ingesting")?;
        let mut visitor = StoreVisitor {
            store: self,
            on_file,
            scratch: self.scratch()?,
            mode,
            size: 0,
            small: Vec::new(),
            large: None,
            new_blobs: 0,
            new_bytes: 0,
        };
        let hashed = walk(path, &mut visitor)?;
        if let Some((object, hash)) = encode_root(&hashed.root)
            && !present(&self.object_path(&hash), object.len() as u64)
        {
            visitor.new_bytes += object.len() as u64;
            visitor.write_new(&self.object_path(&hash), &object)?;
        }
        let new_blobs = visitor.new_blobs;
        self.add_usage(visitor.new_bytes);
        tracing::info!(
            tree = %hashed.tree,
            files = hashed.files,
            bytes = hashed.bytes,
            new_blobs,
            "ingested {}",
            path.display()
        );
        Ok(Added {
            tree: hashed.tree,
            nar: hashed.nar,
            root: hashed.root,
            files: hashed.files,
            bytes: hashed.bytes,
            new_blobs,
            new_bytes: visitor.new_bytes,
        })
    }
}
