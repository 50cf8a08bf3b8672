//! Reading ahead of a reader, both ways: a tree whose files are still arriving is told where
//! a reader reads (its small files fetched ahead, the rest once the reader has gone through
//! many directories), and the plain read path pushes a directory's small files into the
//! kernel's page cache at the first read in it ([`read_ahead`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{CabFs, Content, Inode};
use crate::hash::TreeHash;
use crate::hash::tree::Node;
use crate::mount::fuse::Channel;
use crate::mount::islands::Served;
use crate::mount::read_ahead;
use crate::sync::{MutexExt, RwLockExt};

impl CabFs {
    /// The directory of a tree that `ino` is in: its inode, `ino`'s name in it, its tree, and
    /// the island it belongs to.
    pub(super) fn parent_directory(&self, ino: u64) -> Option<(u64, Vec<u8>, TreeHash, Arc<Served>)> {
        let (parent, name) = self.table.read_locked().parent(ino).map(|(p, n)| (p, n.to_vec()))?;
        match self.content(parent) {
            Ok(Content::Now(Inode::Tree {
                node: Node::Directory { tree },
                island,
            })) => Some((parent, name, tree, island)),
            _ => None,
        }
    }

    /// For a tree whose files are still arriving: the first read in a directory tells where
    /// its files are (so that its small files can be fetched ahead, and the rest of the tree
    /// once a reader has gone through many directories), so a reader going through the
    /// directory finds them stored rather than waiting for each.
    pub(super) fn fetch_ahead(&self, ino: u64) {
        let Ok(Content::Now(Inode::Tree { island, .. })) = self.content(ino) else {
            return;
        };
        if island.contents.is_complete() {
            return;
        }
        let Some((_, _, tree, _)) = self.parent_directory(ino) else {
            return;
        };
        let seen = self.fetched_dirs.locked().put(tree, ());
        if seen.is_some() {
            return;
        }
        let Ok(entries) = self.entries(&tree, &island) else {
            return;
        };
        let files = entries
            .iter()
            .filter_map(|e| match e.node {
                Node::File { blob, size, .. } => Some((blob, size)),
                _ => None,
            })
            .collect();
        island.contents.clone().reading_in(files);
    }

    /// The first read in a directory pushes the small files beside it into the page cache
    /// (see [`read_ahead`]), those the kernel knows of (only those can be pushed).
    pub(super) fn read_ahead(&self, ino: u64, channel: Arc<Channel>, on_ring: bool) {
        let Some(read_ahead) = &self.read_ahead else { return };
        if self.passthrough.load(Ordering::Relaxed) {
            return;
        }
        let Some((parent, name, tree, island)) = self.parent_directory(ino) else {
            return;
        };
        read_ahead.read_now();
        if !read_ahead.first_read_in(parent, tree) {
            return;
        }
        let Ok(entries) = self.entries(&tree, &island) else {
            return;
        };
        // The files after this one first (a reader goes through a directory in order), then
        // those before it.
        let at = entries.partition_point(|e| e.name.as_slice() <= name.as_slice());
        let (before, after) = entries.split_at(at);
        let table = self.table.read_locked();
        let (mut files, mut bytes) = (Vec::new(), 0);
        for entry in after.iter().chain(before).filter(|e| e.name != name) {
            let Node::File { blob, size, .. } = entry.node else {
                continue;
            };
            if size == 0 || size > read_ahead::FILE_MAX {
                continue;
            }
            let Some(ino) = table.find(parent, &entry.name) else {
                continue;
            };
            files.push(read_ahead::File { ino, blob, size });
            bytes += size;
            if files.len() >= read_ahead::DIR_MAX_FILES || bytes >= read_ahead::DIR_MAX_BYTES {
                break;
            }
        }
        drop(table);
        read_ahead.push(&channel, files, on_ring);
    }
}
