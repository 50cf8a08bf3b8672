//! NAR hashes of trees already in the store, for trees that were never walked on disk as a
//! whole (an island's subpath of a fetched tree).

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
        let root = self.root_node(tree)?;
        let mut sha = Sha256::new();
        let mut buf = Vec::with_capacity(4096);
        nar::header(&mut buf);
        self.nar_node(&root, &mut sha, &mut buf)?;
        sha.update(&buf);
        Ok(NarHash(sha.finalize().into()))
    }

    /// The root node of a stored tree.
    pub fn root_node(&self, tree: &TreeHash) -> Result<Node> {
        Ok(match self.read_object(tree)? {
            Object::Root(node) => node,
            Object::Directory(_) => Node::Directory { tree: *tree },
        })
    }

    fn nar_node(&self, node: &Node, sha: &mut Sha256, buf: &mut Vec<u8>) -> Result<()> {
        match node {
            Node::Symlink { target } => nar::symlink(buf, target),
            Node::File { executable, size, blob } => {
                nar::file_start(buf, *executable, *size);
                sha.update(&buf[..]);
                buf.clear();
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
                    sha.update(&chunk[..n]);
                }
                if seen != *size {
                    bail!(
                        "blob {} has {seen} bytes, its tree says {size}: run `cab store verify`",
                        path.display()
                    );
                }
                nar::file_end(buf, *size);
            }
            Node::Directory { tree } => {
                let Object::Directory(entries) = self.read_object(tree)? else {
                    bail!("tree object {tree} should be a directory");
                };
                nar::directory_start(buf);
                for entry in &entries {
                    nar::entry_start(buf, &entry.name);
                    self.nar_node(&entry.node, sha, buf)?;
                    nar::entry_end(buf);
                }
                nar::directory_end(buf);
            }
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
