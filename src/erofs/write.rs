//! Emits a laid-out tree: the metadata as one sequential, buffered stream from offset 0,
//! then each file's data at its block (see [`super::copy`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::copy::{Copier, CopyError, WriteStats};
use super::format::{self, BLOCK_SIZE, INODE_SLOT};
use super::layout::{self, CHUNKED, EXTENDED, Entry, INLINE, Layout};
use super::tree::{Kind, Tree};
use super::{Error, NodeId, Options, Placement};

/// Modes are fixed by kind: the tree is read-only content.
const FILE_MODE: u16 = 0o444;
const EXEC_MODE: u16 = 0o555;
const DIR_MODE: u16 = 0o555;
const SYMLINK_MODE: u16 = 0o777;
/// Every timestamp: one second after the epoch.
const TIME: u64 = 1;

/// Buffers sequential writes at increasing offsets; gaps are written as zeros.
struct Stream<'f> {
    file: &'f File,
    /// Offset of `buf[0]`.
    at: u64,
    buf: Vec<u8>,
}

impl Stream<'_> {
    const FLUSH: usize = 1 << 20;

    fn pos(&self) -> u64 {
        self.at + self.buf.len() as u64
    }

    fn pad_to(&mut self, offset: u64) -> io::Result<()> {
        // The layout places everything in increasing order; anything else is a bug here, and
        // writing on would corrupt the image silently.
        if offset < self.pos() {
            return Err(io::Error::other(format!("metadata layout overlaps at {offset}")));
        }
        while self.pos() < offset {
            let n = (offset - self.pos()).min(Self::FLUSH as u64) as usize;
            self.buf.resize(self.buf.len() + n, 0);
            self.flush_if_full()?;
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        self.flush_if_full()
    }

    fn flush_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() >= Self::FLUSH {
            self.flush()
        } else {
            Ok(())
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.buf, self.at)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// Writes the metadata (regions 1–4 of the layout) to `out` from offset 0; returns its end.
pub(crate) fn write_metadata<S>(tree: &Tree<S>, layout: &Layout, options: &Options, out: &File) -> Result<u64, Error> {
    let split = options.placement == Placement::SeparateFile;
    let mut w = Stream {
        file: out,
        at: 0,
        buf: Vec::with_capacity(Stream::FLUSH + 2 * BLOCK_SIZE as usize),
    };

    let mut volume_name = [0u8; 16];
    volume_name[..options.volume_name.len()].copy_from_slice(&options.volume_name);
    let sb = format::SuperBlock {
        root_nid: layout.place[0].nid as u16,
        inos: tree.nodes.len() as u64,
        epoch: TIME,
        blocks: if split {
            layout.meta_blocks
        } else {
            layout.meta_blocks + layout.data_blocks
        },
        meta_blkaddr: 0,
        xattr_blkaddr: layout.xattr_blkaddr,
        uuid: options.uuid,
        volume_name,
        extra_devices: u16::from(split),
        chunked: split,
    };
    w.pad_to(format::SUPER_OFFSET)?;
    w.write(&sb.encode())?;
    if split {
        let mut tag = [0u8; 64];
        tag[..options.device_tag.len()].copy_from_slice(&options.device_tag);
        w.write(&format::device_slot(&tag, layout.data_blocks, layout.meta_blocks))?;
    }

    // Inode records.
    let mut record = Vec::new();
    let mut dir = Vec::new();
    for (index, &node) in layout.order.iter().enumerate() {
        let place = layout.place[node as usize];
        record.clear();
        let (body, shared) = layout::xattr_body(tree, &layout.shared_id, node);
        let size = layout::data_size(tree, node);
        let (mode, nlink) = match tree.nodes[node as usize].kind {
            Kind::Dir { .. } => (format::S_IFDIR | DIR_MODE, 2),
            Kind::File { executable: false, .. } => (format::S_IFREG | FILE_MODE, 1),
            Kind::File { executable: true, .. } => (format::S_IFREG | EXEC_MODE, 1),
            Kind::Symlink { .. } => (format::S_IFLNK | SYMLINK_MODE, 1),
        };
        let inline = place.flags & INLINE != 0;
        let chunk_format = if place.flags & CHUNKED != 0 {
            format::single_chunk_format(size)
        } else {
            None
        };
        let (data_layout, i_u) = match chunk_format {
            Some(chunk_format) => (format::LAYOUT_CHUNK_BASED, u32::from(chunk_format)),
            None if inline => (format::LAYOUT_FLAT_INLINE, place.blkaddr),
            None => (format::LAYOUT_FLAT_PLAIN, place.blkaddr),
        };
        format::Inode {
            extended: place.flags & EXTENDED != 0,
            layout: data_layout,
            xattr_icount: layout::xattr_icount(body)?,
            mode,
            nlink,
            size,
            blkaddr: i_u,
            // Inode numbers for 32-bit stat: 1, 2, ... in inode order.
            ino: (index as u32).wrapping_add(1),
            uid: options.uid,
            gid: options.gid,
            mtime: TIME,
        }
        .encode(&mut record);
        if body > 0 {
            record.extend_from_slice(&format::xattr_body_header(shared));
            // Shared ids first, then the inline entries.
            let xattrs = || layout::xattr_split(tree, &layout.shared_id, node);
            for (id, _) in xattrs().filter(|&(_, shared)| shared) {
                record.extend_from_slice(&layout.shared_id[id as usize].to_le_bytes());
            }
            for (id, _) in xattrs().filter(|&(_, shared)| !shared) {
                let (index, suffix, value) = tree.xattrs.get(id);
                format::xattr_entry(index, suffix, value, &mut record);
            }
        }
        if chunk_format.is_some() {
            // The index is 8-byte aligned (the inode itself is 32-byte aligned) and names the
            // file's block in the data file, device 1.
            record.resize(record.len().next_multiple_of(format::CHUNK_INDEX_SIZE as usize), 0);
            record.extend_from_slice(&format::chunk_index(1, place.blkaddr - layout.meta_blocks));
        }
        if inline {
            match tree.nodes[node as usize].kind {
                Kind::Dir { .. } => {
                    dir_data(tree, layout, node, &mut dir);
                    let full = dir.len() as u64 / BLOCK_SIZE * BLOCK_SIZE;
                    record.extend_from_slice(&dir[full as usize..]);
                }
                Kind::Symlink { at, len } => record.extend_from_slice(tree.target(at, len)),
                Kind::File { .. } => {}
            }
        }
        w.pad_to(u64::from(place.nid) * INODE_SLOT)?;
        w.write(&record)?;
    }

    // Shared xattrs.
    w.pad_to(u64::from(layout.xattr_blkaddr) * BLOCK_SIZE)?;
    for &id in &layout.shared_order {
        let (index, suffix, value) = tree.xattrs.get(id);
        record.clear();
        format::xattr_entry(index, suffix, value, &mut record);
        w.write(&record)?;
    }

    // Directory blocks and long symlinks, in the order the layout gave them blocks.
    w.pad_to(u64::from(layout.dir_blkaddr) * BLOCK_SIZE)?;
    for &node in &layout.order {
        let place = layout.place[node as usize];
        let inline = place.flags & INLINE != 0;
        let bytes = match tree.nodes[node as usize].kind {
            Kind::Dir { .. } => {
                dir_data(tree, layout, node, &mut dir);
                let end = if inline {
                    dir.len() / BLOCK_SIZE as usize * BLOCK_SIZE as usize
                } else {
                    dir.len()
                };
                &dir[..end]
            }
            Kind::Symlink { at, len } if !inline => tree.target(at, len),
            _ => continue,
        };
        if bytes.is_empty() {
            continue;
        }
        w.pad_to(u64::from(place.blkaddr) * BLOCK_SIZE)?;
        w.write(bytes)?;
    }
    let end = u64::from(layout.meta_blocks) * BLOCK_SIZE;
    w.pad_to(end)?;
    w.flush()?;
    Ok(end)
}

/// A directory's data (all its blocks, the last one only as long as it is used) into `out`.
fn dir_data<S>(tree: &Tree<S>, layout: &Layout, dir: u32, out: &mut Vec<u8>) {
    out.clear();
    let nid = |node: u32| u64::from(layout.place[node as usize].nid);
    let parent = layout.place[dir as usize].parent;
    layout::pack_dir(layout::dir_entries(tree, dir), |entries| {
        // Full blocks before this one are padded to the block size.
        out.resize(out.len().next_multiple_of(BLOCK_SIZE as usize), 0);
        let mut nameoff = entries.len() as u64 * format::DIRENT_SIZE;
        for &(name, entry) in entries {
            let (target, file_type) = match entry {
                Entry::Dot => (nid(dir), format::FT_DIR),
                Entry::DotDot => (nid(parent), format::FT_DIR),
                Entry::Child(child) => (
                    nid(child),
                    match tree.nodes[child as usize].kind {
                        Kind::Dir { .. } => format::FT_DIR,
                        Kind::File { .. } => format::FT_REG_FILE,
                        Kind::Symlink { .. } => format::FT_SYMLINK,
                    },
                ),
            };
            // A block holds at most 4096 bytes, so offsets in it fit 16 bits.
            out.extend_from_slice(&format::dirent(target, nameoff as u16, file_type));
            nameoff += name.len() as u64;
        }
        for &(name, _) in entries {
            out.extend_from_slice(name);
        }
    });
}

/// Copies every file's data to `out`, file block `b` going to offset `(b - base) * 4096`.
pub(crate) fn write_data<S, F>(
    tree: &Tree<S>,
    layout: &Layout,
    out: &File,
    base: u32,
    mut open: F,
) -> Result<WriteStats, Error>
where
    F: FnMut(&S) -> io::Result<File>,
{
    // Full length first: files land inside the image, never past its end (see `copy`).
    out.set_len(u64::from(layout.data_blocks + layout.meta_blocks - base) * BLOCK_SIZE)?;
    let mut copier = Copier::new();
    for &node in &layout.data_order {
        let Kind::File { size, source, .. } = tree.nodes[node as usize].kind else {
            continue;
        };
        let failed = |e: io::Error| Error::Source {
            node: NodeId(node),
            name: tree.name(node).to_vec(),
            error: e,
        };
        let src = open(&tree.sources[source as usize]).map_err(failed)?;
        let offset = u64::from(layout.place[node as usize].blkaddr - base) * BLOCK_SIZE;
        copier.copy(&src, size, out, offset).map_err(|e| match e {
            CopyError::Size(actual) => Error::SizeMismatch {
                node: NodeId(node),
                name: tree.name(node).to_vec(),
                expected: size,
                actual,
            },
            CopyError::Io(e) => Error::Io(e),
        })?;
    }
    Ok(copier.stats)
}
