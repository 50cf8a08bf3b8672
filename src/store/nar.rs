//! NARs of trees already in the store: their hashes, for trees that were never walked on disk
//! as a whole (an island's subpath of a fetched tree), and their bytes, for a Nix binary cache.

use std::fs::File;
use std::io::Read;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::Store;
use crate::hash::tree::{Node, Object};
use crate::hash::{NarHash, TreeHash, nar};

impl Store {
    /// Computes the NAR hash of a stored tree from its objects and blobs.
    pub fn nar_hash_of(&self, tree: &TreeHash) -> Result<NarHash> {
        let mut sha = Sha256::new();
        self.write_nar(tree, &mut |bytes| {
            sha.update(bytes);
            Ok(())
        })?;
        Ok(NarHash(sha.finalize().into()))
    }

    /// Produces the NAR of a stored tree, in pieces, in order; returns its size.
    pub fn write_nar(&self, tree: &TreeHash, emit: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        let root = self.root_node(tree)?;
        let mut out = NarOut {
            emit,
            buf: Vec::with_capacity(1 << 16),
            size: 0,
        };
        nar::header(&mut out.buf);
        self.nar_node(&root, &mut out)?;
        out.flush()?;
        Ok(out.size)
    }

    /// The root node of a stored tree.
    pub fn root_node(&self, tree: &TreeHash) -> Result<Node> {
        Ok(match self.read_object(tree)? {
            Object::Root(node) => node,
            Object::Directory(_) => Node::Directory { tree: *tree },
        })
    }

    fn nar_node(&self, node: &Node, out: &mut NarOut<'_>) -> Result<()> {
        match node {
            Node::Symlink { target } => nar::symlink(&mut out.buf, target),
            Node::File { executable, size, blob } => {
                nar::file_start(&mut out.buf, *executable, *size);
                out.flush()?;
                let path = self.blob_path(blob);
                let mut file = File::open(&path).with_context(|| format!("cannot read blob {}", path.display()))?;
                let mut chunk = vec![0u8; 1 << 16];
                let mut seen = 0u64;
                loop {
                    let n = file
                        .read(&mut chunk)
                        .with_context(|| format!("cannot read blob {}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    seen += n as u64;
                    out.write(&chunk[..n])?;
                }
                if seen != *size {
                    bail!(
                        "blob {} has {seen} bytes, its tree says {size}: run `cab store verify`",
                        path.display()
                    );
                }
                nar::file_end(&mut out.buf, *size);
            }
            Node::Directory { tree } => {
                let Object::Directory(entries) = self.read_object(tree)? else {
                    bail!("tree object {tree} should be a directory");
                };
                nar::directory_start(&mut out.buf);
                for entry in &entries {
                    nar::entry_start(&mut out.buf, &entry.name);
                    self.nar_node(&entry.node, out)?;
                    nar::entry_end(&mut out.buf);
                }
                nar::directory_end(&mut out.buf);
            }
        }
        if out.buf.len() >= 1 << 16 {
            out.flush()?;
        }
        Ok(())
    }

    /// The tree at `names` inside the stored tree `whole`. A file or symlink there becomes a
    /// tree of its own (its root node object is written if missing).
    pub fn subtree(&self, whole: &TreeHash, names: &[String]) -> Result<TreeHash> {
        let mut node = Node::Directory { tree: *whole };
        for (i, name) in names.iter().enumerate() {
            let Node::Directory { tree } = &node else {
                bail!("/{} is not a directory", names[..i].join("/"));
            };
            let Object::Directory(entries) = self.read_object(tree)? else {
                bail!("tree object {tree} should be a directory");
            };
            let Ok(at) = entries.binary_search_by(|e| e.name.as_slice().cmp(name.as_bytes())) else {
                bail!("the tree has no /{}", names[..=i].join("/"));
            };
            node = entries[at].node.clone();
        }
        Ok(match node {
            Node::Directory { tree } => tree,
            other => {
                let (object, hash) = crate::hash::tree::encode_root(&other).expect("not a directory");
                if !self.object_path(&hash).exists() {
                    self.write_atomically(&self.object_path(&hash), &object, true)?;
                }
                hash
            }
        })
    }
}

/// Where a NAR goes: framing is gathered in `buf`, contents pass straight through.
struct NarOut<'a> {
    emit: &'a mut dyn FnMut(&[u8]) -> Result<()>,
    buf: Vec<u8>,
    size: u64,
}

impl NarOut<'_> {
    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.size += self.buf.len() as u64;
            (self.emit)(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.flush()?;
        self.size += bytes.len() as u64;
        (self.emit)(bytes)
    }
}
