//! File contents, by the two read paths: the plain path (open refused, so the kernel keeps
//! every page; reads come without a handle and find the blob by inode) and FUSE passthrough
//! (one backing file per inode, shared and counted across opens); and symlink targets.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{CabFs, Content, Errno, Inode};
use crate::hash::BlobHash;
use crate::hash::tree::Node;
use crate::mount::fuse::Reply;
use crate::mount::fuse::abi::fopen;
use crate::sync::MutexExt;

impl CabFs {
    /// The file node behind `ino` (a file in a tree, or an island whose root is a file).
    pub(super) fn file(&self, ino: u64) -> Result<BlobHash, Errno> {
        match self.content(ino)? {
            Content::Now(Inode::Tree {
                node: Node::File { blob, .. },
                ..
            }) => Ok(blob),
            Content::Now(_) => Err(libc::EISDIR),
            Content::Wait(_) => Err(libc::EAGAIN),
        }
    }

    /// The blob behind a file inode, opened once and kept for a while (reads without a handle).
    pub(super) fn blob_file(&self, ino: u64) -> Result<Arc<File>, Errno> {
        if let Some(file) = self.blobs.locked().get(&ino) {
            return Ok(file.clone());
        }
        let blob = self.file(ino)?;
        let path = self.islands.realizer().store().blob_path(&blob);
        let file = Arc::new(File::open(&path).map_err(|e| {
            tracing::error!("cannot open blob {}: {e}", path.display());
            libc::EIO
        })?);
        self.blobs.locked().put(ino, file.clone());
        Ok(file)
    }

    pub(super) fn open(&self, ino: u64, flags: u32, reply: Reply) {
        let blob = match self.file(ino) {
            Ok(blob) => blob,
            Err(e) => return reply.error(e),
        };
        if flags as i32 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        if !self.passthrough.load(Ordering::Relaxed) {
            // The plain path: refuse open, so that the kernel stops sending open/release
            // pairs and keeps every file's pages: a warm read is then served from the page
            // cache alone. Reads arrive with no handle and find the blob by inode.
            self.log_read_path("serving file reads without passthrough");
            return reply.error(libc::ENOSYS);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        // One backing file per inode while any open of it lives: the kernel refuses a second,
        // different backing for an inode that is already open.
        let mut backings = self.backings.locked();
        let id = match backings.get_mut(&ino) {
            Some((id, opens)) => {
                *opens += 1;
                *id
            }
            None => {
                let path = self.islands.realizer().store().blob_path(&blob);
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(e) => {
                        tracing::error!("cannot open blob {}: {e}", path.display());
                        return reply.error(libc::EIO);
                    }
                };
                match reply.channel().open_backing(&file) {
                    Ok(id) => {
                        self.log_read_path("serving file reads through FUSE passthrough");
                        backings.insert(ino, (id, 1));
                        id
                    }
                    Err(e) => {
                        tracing::info!("FUSE passthrough refused ({e}); serving reads ourselves from now on");
                        self.passthrough.store(false, Ordering::Relaxed);
                        return reply.error(libc::ENOSYS);
                    }
                }
            }
        };
        drop(backings);
        self.open.locked().insert(fh, ino);
        reply.opened(fh, fopen::PASSTHROUGH, id);
    }

    pub(super) fn read(&self, ino: u64, offset: u64, size: u32, reply: Reply) {
        // Reads come here only on the plain path (no handle), or for a passthrough file the
        // kernel did not pass through; either way the blob is found by inode.
        let file = match self.blob_file(ino) {
            Ok(file) => file,
            Err(e) => return reply.error(e),
        };
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return reply.error(libc::EIO),
            }
        }
        let (channel, on_ring) = (reply.channel().clone(), reply.over_io_uring());
        reply.data(&buf[..filled]);
        if offset == 0 {
            self.read_ahead(ino, channel, on_ring);
        }
    }

    pub(super) fn release(&self, fh: u64, reply: Reply) {
        let ino = self.open.locked().remove(&fh);
        if let Some(ino) = ino {
            let mut backings = self.backings.locked();
            if let Some((id, opens)) = backings.get_mut(&ino) {
                *opens -= 1;
                if *opens == 0 {
                    reply.channel().close_backing(*id);
                    backings.remove(&ino);
                }
            }
        }
        reply.ok();
    }

    pub(super) fn readlink(self: &Arc<Self>, ino: u64, reply: Reply) {
        match self.content(ino) {
            Ok(Content::Now(Inode::Tree {
                node: Node::Symlink { target },
                ..
            })) => reply.data(&target),
            Ok(Content::Now(_)) => reply.error(libc::EINVAL),
            Ok(Content::Wait(realization)) => {
                self.wait(realization, reply, false, move |fs, reply| fs.readlink(ino, reply))
            }
            Err(e) => reply.error(e),
        }
    }
}
