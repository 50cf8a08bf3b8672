//! Where everything goes: the pass between describing a tree and writing it.
//!
//! The image is laid out in this order, every region computed before a byte is written:
//!
//! 1. block 0: the superblock at 1024, a device slot at 1152 (zero unless the data is a
//!    separate file), then the first inodes from 1280 on;
//! 2. inodes, in breadth-first order (root first, so its nid fits the superblock's 16 bits;
//!    a directory's children are adjacent, so listing it with `stat` reads few blocks).
//!    Each inode is followed by its xattr body and, where it fits, the tail of its data
//!    (a directory's last block, a symlink's target). An inode record that fits in a block
//!    never straddles two: inline data must not, and one block read then gets the whole inode;
//! 3. shared xattrs, from a block boundary (their ids count 4-byte units from there);
//! 4. directory blocks (and the rare symlink too long to inline), breadth-first;
//! 5. file data, each file from a block boundary (so that it can be a reflink of its source),
//!    in depth-first order, the order `find` and `tar` visit files in.
//!
//! Regions 1–4 are the metadata. In the split placement the file data goes to a separate
//! data file instead, laid out exactly as region 5 would be, so it depends only on the tree's
//! shape and file sizes, never on xattrs. Files then are chunk-based inodes with one chunk
//! index (device 1, block in the data file) after their xattrs. The kernel would also follow
//! flat inodes through the device slot's unified addressing, but fsck.erofs (1.5 to 1.9.3)
//! reads such blocks from the wrong device; chunk indexes work in both.

use super::format::{
    self, BLOCK_SIZE, CHUNK_INDEX_SIZE, COMPACT_INODE_SIZE, DIRENT_SIZE, EXTENDED_INODE_SIZE, INODE_SLOT,
    MAX_SHARED_PER_INODE, XATTR_BODY_HEADER_SIZE, align_up,
};
use super::tree::{Kind, NONE, Tree};
use super::{Error, Options, Placement};

/// Where the first inode record goes: after the superblock and one device slot.
pub(crate) const FIRST_INODE_AT: u64 = format::DEVICE_SLOT_OFF * format::DEVICE_SLOT_SIZE + format::DEVICE_SLOT_SIZE;

/// The node uses an extended inode.
pub(crate) const EXTENDED: u8 = 1;
/// The node's data tail is inline after its inode and xattrs.
pub(crate) const INLINE: u8 = 2;
/// The node is a chunk-based file: one chunk index follows its xattrs.
pub(crate) const CHUNKED: u8 = 4;

/// Where one node went.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Place {
    /// The inode's offset in the image / 32.
    pub nid: u32,
    /// First data block (files, non-inline directory blocks and symlinks), else 0.
    pub blkaddr: u32,
    /// The parent directory's node (the root's is itself), for `..`.
    pub parent: u32,
    /// [`EXTENDED`], [`INLINE`], [`CHUNKED`].
    pub flags: u8,
}

/// The computed layout of a tree.
#[derive(Debug)]
pub(crate) struct Layout {
    /// Nodes in inode order (breadth-first).
    pub order: Vec<u32>,
    /// Regular files with data, in data order (depth-first).
    pub data_order: Vec<u32>,
    /// Per node.
    pub place: Vec<Place>,
    /// Per distinct xattr: its shared id, or [`NONE`] if it is stored inline.
    pub shared_id: Vec<u32>,
    /// Shared xattrs in the order of the shared area.
    pub shared_order: Vec<u32>,
    /// Start of the shared xattr area.
    pub xattr_blkaddr: u32,
    /// Start of the directory (and long symlink) blocks.
    pub dir_blkaddr: u32,
    /// Blocks of metadata: file data starts here.
    pub meta_blocks: u32,
    /// Blocks of file data.
    pub data_blocks: u32,
}

/// One directory entry: `.`, `..` or a child node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    Dot,
    DotDot,
    Child(u32),
}

/// A directory's entries in byte order of their names, `.` and `..` merged in (a child's
/// name may sort before them: `!` and `-` are below `.`).
pub(crate) fn dir_entries<S>(tree: &Tree<S>, dir: u32) -> impl Iterator<Item = (&[u8], Entry)> {
    let mut dots = [(&b"."[..], Entry::Dot), (&b".."[..], Entry::DotDot)]
        .into_iter()
        .peekable();
    let mut children = tree.children(dir).map(|c| (tree.name(c), Entry::Child(c))).peekable();
    std::iter::from_fn(move || match (dots.peek(), children.peek()) {
        (Some(d), Some(c)) if d.0 < c.0 => dots.next(),
        (_, Some(_)) => children.next(),
        (Some(_), None) => dots.next(),
        (None, None) => None,
    })
}

/// Splits a directory's entries into blocks: calls `block` with each block's entries and
/// returns the directory's size (full blocks, then the bytes the last block uses).
pub(crate) fn pack_dir<'a>(
    entries: impl Iterator<Item = (&'a [u8], Entry)>,
    mut block: impl FnMut(&[(&'a [u8], Entry)]),
) -> u64 {
    let mut full = 0u64;
    let mut used = 0u64;
    let mut current: Vec<(&[u8], Entry)> = Vec::new();
    for (name, entry) in entries {
        let need = DIRENT_SIZE + name.len() as u64;
        if used + need > BLOCK_SIZE {
            block(&current);
            current.clear();
            full += 1;
            used = 0;
        }
        used += need;
        current.push((name, entry));
    }
    block(&current);
    full * BLOCK_SIZE + used
}

/// A directory's size in bytes.
pub(crate) fn dir_size<S>(tree: &Tree<S>, dir: u32) -> u64 {
    pack_dir(dir_entries(tree, dir), |_| {})
}

/// Which of a node's xattrs are referenced as shared ones: at most 255 (the count is a
/// byte); the rest are stored inline.
pub(crate) fn xattr_split<'a, S>(
    tree: &'a Tree<S>,
    shared_id: &'a [u32],
    node: u32,
) -> impl Iterator<Item = (u32, bool)> + 'a {
    let mut shared = 0usize;
    tree.xattr_ids(node).iter().map(move |&id| {
        let is_shared = shared_id[id as usize] != NONE && shared < MAX_SHARED_PER_INODE;
        shared += usize::from(is_shared);
        (id, is_shared)
    })
}

/// The size of a node's xattr body and its shared count.
pub(crate) fn xattr_body<S>(tree: &Tree<S>, shared_id: &[u32], node: u32) -> (u64, u8) {
    if tree.xattr_ids(node).is_empty() {
        return (0, 0);
    }
    let mut size = XATTR_BODY_HEADER_SIZE;
    let mut shared = 0u8;
    for (id, is_shared) in xattr_split(tree, shared_id, node) {
        if is_shared {
            size += 4;
            shared += 1;
        } else {
            size += tree.xattrs.size(id);
        }
    }
    (size, shared)
}

/// The inode's `i_xattr_icount` for a body of `size` bytes.
pub(crate) fn xattr_icount(size: u64) -> Result<u16, Error> {
    if size == 0 {
        return Ok(0);
    }
    u16::try_from((size - XATTR_BODY_HEADER_SIZE) / 4 + 1).map_err(|_| Error::TooLarge("xattrs of one node"))
}

/// A node's data size: a directory's entries, a file's bytes, a symlink's target.
pub(crate) fn data_size<S>(tree: &Tree<S>, node: u32) -> u64 {
    match tree.nodes[node as usize].kind {
        Kind::Dir { .. } => dir_size(tree, node),
        Kind::File { size, .. } => size,
        Kind::Symlink { len, .. } => u64::from(len),
    }
}

/// Lays the tree out.
pub(crate) fn lay_out<S>(tree: &Tree<S>, options: &Options) -> Result<Layout, Error> {
    let n = tree.nodes.len();
    let mut place = vec![Place::default(); n];

    // Breadth-first inode order; record parents on the way.
    let mut order = Vec::with_capacity(n);
    order.push(0u32);
    let mut i = 0;
    while i < order.len() {
        let dir = order[i];
        if matches!(tree.nodes[dir as usize].kind, Kind::Dir { .. }) {
            for child in tree.children(dir) {
                place[child as usize].parent = dir;
                order.push(child);
            }
        }
        i += 1;
    }

    // Shared xattrs: entries on two nodes or more, in order of first use.
    let mut uses = vec![0u32; tree.xattrs.at.len()];
    for &id in &tree.xattr_refs {
        uses[id as usize] = uses[id as usize].saturating_add(1);
    }
    let mut shared_id = vec![NONE; uses.len()];
    let mut shared_order = Vec::new();
    let mut shared_size = 0u64;
    for &node in &order {
        for &id in tree.xattr_ids(node) {
            if uses[id as usize] >= 2 && shared_id[id as usize] == NONE {
                shared_id[id as usize] =
                    u32::try_from(shared_size / 4).map_err(|_| Error::TooLarge("shared xattrs"))?;
                shared_order.push(id);
                shared_size += tree.xattrs.size(id);
            }
        }
    }
    drop(uses);

    // Inode records.
    let split = options.placement == Placement::SeparateFile;
    let mut pos = FIRST_INODE_AT;
    for &node in &order {
        let kind = tree.nodes[node as usize].kind;
        let size = data_size(tree, node);
        let extended =
            options.uid > u32::from(u16::MAX) || options.gid > u32::from(u16::MAX) || size > u64::from(u32::MAX);
        let inode_size = if extended {
            EXTENDED_INODE_SIZE
        } else {
            COMPACT_INODE_SIZE
        };
        let (body, _) = xattr_body(tree, &shared_id, node);
        xattr_icount(body)?;
        let chunked = split && matches!(kind, Kind::File { size: 1.., .. });
        if chunked && format::single_chunk_format(size).is_none() {
            return Err(Error::TooLarge("file (for one chunk)"));
        }
        let base = if chunked {
            align_up(inode_size + body, CHUNK_INDEX_SIZE) + CHUNK_INDEX_SIZE
        } else {
            inode_size + body
        };
        let tail = match kind {
            Kind::Dir { .. } => size % BLOCK_SIZE,
            Kind::Symlink { .. } => size,
            Kind::File { .. } => 0,
        };
        let room = BLOCK_SIZE - pos % BLOCK_SIZE;
        let inline = if tail == 0 || base + tail > BLOCK_SIZE {
            false
        } else if base + tail <= room {
            true
        } else {
            // Either start a new block (wasting what is left of this one) or keep the tail
            // out of line (wasting the rest of its own block): whichever wastes less.
            room <= BLOCK_SIZE - tail || base > room
        };
        let record = base + if inline { tail } else { 0 };
        if record <= BLOCK_SIZE && record > room {
            pos = align_up(pos, BLOCK_SIZE);
        }
        let nid = u32::try_from(pos / INODE_SLOT).map_err(|_| Error::TooLarge("metadata"))?;
        place[node as usize].nid = nid;
        place[node as usize].flags =
            if extended { EXTENDED } else { 0 } | if inline { INLINE } else { 0 } | if chunked { CHUNKED } else { 0 };
        pos = align_up(pos + record, INODE_SLOT);
    }
    if place[0].nid > u32::from(u16::MAX) {
        return Err(Error::TooLarge("root nid"));
    }

    let xattr_start = align_up(pos, BLOCK_SIZE);
    let xattr_blkaddr = to_block(xattr_start)?;
    let dir_start = align_up(xattr_start + shared_size, BLOCK_SIZE);
    let dir_blkaddr = to_block(dir_start)?;

    // Out-of-line directory blocks and symlink targets.
    let mut block = u64::from(dir_blkaddr);
    for &node in &order {
        let p = &mut place[node as usize];
        let blocks = match tree.nodes[node as usize].kind {
            Kind::Dir { .. } if p.flags & INLINE != 0 => dir_size(tree, node) / BLOCK_SIZE,
            Kind::Dir { .. } => dir_size(tree, node).div_ceil(BLOCK_SIZE),
            Kind::Symlink { .. } if p.flags & INLINE == 0 => 1,
            _ => 0,
        };
        if blocks > 0 {
            p.blkaddr = u32::try_from(block).map_err(|_| Error::TooLarge("image"))?;
            block += blocks;
        }
    }
    let meta_blocks = u32::try_from(block).map_err(|_| Error::TooLarge("image"))?;

    // File data, depth-first.
    let mut data_order = Vec::new();
    let mut stack = vec![0u32];
    let mut children = Vec::new();
    while let Some(node) = stack.pop() {
        match tree.nodes[node as usize].kind {
            Kind::Dir { .. } => {
                children.extend(tree.children(node));
                stack.extend(children.drain(..).rev());
            }
            Kind::File { size, .. } if size > 0 => {
                place[node as usize].blkaddr = u32::try_from(block).map_err(|_| Error::TooLarge("image"))?;
                block += size.div_ceil(BLOCK_SIZE);
                data_order.push(node);
            }
            _ => {}
        }
    }
    let end = u32::try_from(block).map_err(|_| Error::TooLarge("image"))?;

    Ok(Layout {
        order,
        data_order,
        place,
        shared_id,
        shared_order,
        xattr_blkaddr,
        dir_blkaddr,
        meta_blocks,
        data_blocks: end - meta_blocks,
    })
}

fn to_block(offset: u64) -> Result<u32, Error> {
    u32::try_from(offset / BLOCK_SIZE).map_err(|_| Error::TooLarge("image"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE_X: [(&[u8], &[u8]); 0] = [];

    fn names(tree: &Tree<()>, dir: u32) -> Vec<Vec<u8>> {
        dir_entries(tree, dir).map(|(n, _)| n.to_vec()).collect()
    }

    #[test]
    fn dots_sort_among_the_children() {
        let mut t: Tree<()> = Tree::new(NONE_X).unwrap();
        let r = t.root();
        for name in [&b"!"[..], b"-", b".a", b"a", b"\xff"] {
            t.add_dir(r, name, NONE_X).unwrap();
        }
        let expected: Vec<Vec<u8>> = [&b"!"[..], b"-", b".", b"..", b".a", b"a", b"\xff"]
            .iter()
            .map(|n| n.to_vec())
            .collect();
        assert_eq!(names(&t, 0), expected);
        let d = t.add_dir(r, b"\xff\xff", NONE_X).unwrap();
        assert_eq!(names(&t, d.0), [b".".to_vec(), b"..".to_vec()]);
    }

    #[test]
    fn directories_fill_blocks_without_splitting_entries() {
        let mut t: Tree<()> = Tree::new(NONE_X).unwrap();
        let r = t.root();
        // "." and ".." take 27 bytes; 200-byte names take 212 bytes each: 19 fit the rest of
        // the first block (27 + 19 * 212 = 4055), the 20th starts the second.
        for i in 0..20u8 {
            let mut name = vec![b'n'; 200];
            name[199] = b'a' + i;
            t.add_file(r, &name, 0, false, (), NONE_X).unwrap();
        }
        let mut blocks = Vec::new();
        let size = pack_dir(dir_entries(&t, 0), |b| blocks.push(b.len()));
        assert_eq!(blocks, [21, 1]);
        assert_eq!(size, BLOCK_SIZE + 212);
    }

    #[test]
    fn root_first_files_on_block_boundaries_depth_first() {
        let mut t: Tree<()> = Tree::new(NONE_X).unwrap();
        let r = t.root();
        let a = t.add_dir(r, b"a", NONE_X).unwrap();
        t.add_file(a, b"x", 5000, false, (), NONE_X).unwrap();
        t.add_file(r, b"b", 1, true, (), NONE_X).unwrap();
        t.add_file(r, b"c", 0, false, (), NONE_X).unwrap();
        let l = lay_out(&t, &Options::default()).unwrap();
        assert_eq!(l.place[0].nid as u64 * INODE_SLOT, FIRST_INODE_AT);
        assert_eq!(l.order, [0, 1, 3, 4, 2]);
        assert_eq!(l.data_order, [2, 3], "a/x before b: depth-first");
        assert_eq!(l.place[2].blkaddr, l.meta_blocks);
        assert_eq!(l.place[3].blkaddr, l.meta_blocks + 2);
        assert_eq!(l.place[4].blkaddr, 0, "an empty file has no blocks");
        assert_eq!(l.data_blocks, 3);
        assert!(l.place.iter().all(|p| p.flags & EXTENDED == 0));
    }

    #[test]
    fn inode_records_never_straddle_blocks_and_large_ones_are_extended() {
        let mut t: Tree<()> = Tree::new(NONE_X).unwrap();
        let r = t.root();
        // Symlinks of 1000 bytes: 32 + 1000 per record, so every few records a new block.
        for i in 0..20u8 {
            t.add_symlink(r, &[b'a' + i], &[b'x'; 1000], NONE_X).unwrap();
        }
        t.add_file(r, b"z", 1 << 32, false, (), NONE_X).unwrap();
        let l = lay_out(&t, &Options::default()).unwrap();
        for &node in &l.order[1..21] {
            let start = l.place[node as usize].nid as u64 * INODE_SLOT;
            assert_eq!(start / BLOCK_SIZE, (start + 1031) / BLOCK_SIZE, "node {node}");
            assert_ne!(l.place[node as usize].flags & INLINE, 0);
        }
        assert_eq!(l.place[21].flags, EXTENDED);
    }

    #[test]
    fn a_directory_tail_goes_inline_or_to_a_block_whichever_wastes_less() {
        let mut t: Tree<()> = Tree::new(NONE_X).unwrap();
        let r = t.root();
        // 27 + 30 * 132 = 3987 bytes: after the root's record (1280..1378) there are 2688
        // bytes left in block 0. Padding would waste those; a block of its own wastes 109.
        let a = t.add_dir(r, b"a", NONE_X).unwrap();
        for i in 0..30u8 {
            let mut name = vec![b'x'; 120];
            name[0] = b'a' + i;
            t.add_file(a, &name, 0, false, (), NONE_X).unwrap();
        }
        // 27 + 15 * 267 + 64 = 4096 bytes exactly: one whole block, nothing to inline.
        let b = t.add_dir(r, b"b", NONE_X).unwrap();
        for i in 0..15u8 {
            t.add_file(b, &[b'a' + i; 255], 0, false, (), NONE_X).unwrap();
        }
        t.add_file(b, &[b'z'; 52], 0, false, (), NONE_X).unwrap();
        // Small: inline.
        let c = t.add_dir(r, b"c", NONE_X).unwrap();
        let l = lay_out(&t, &Options::default()).unwrap();
        assert_eq!(dir_size(&t, a.0), 3987);
        assert_eq!(dir_size(&t, b.0), 4096);
        let (pa, pb, pc) = (l.place[a.0 as usize], l.place[b.0 as usize], l.place[c.0 as usize]);
        assert_eq!((pa.flags, pa.blkaddr), (0, l.dir_blkaddr));
        assert_eq!((pb.flags, pb.blkaddr), (0, l.dir_blkaddr + 1));
        assert_eq!((pc.flags, pc.blkaddr), (INLINE, 0));
        assert_eq!(l.meta_blocks, l.dir_blkaddr + 2);
    }

    #[test]
    fn values_on_two_nodes_or_more_are_shared() {
        let mut t: Tree<()> = Tree::new([("user.rev", "r")]).unwrap();
        let r = t.root();
        t.add_dir(r, b"a", [("user.rev", "r"), ("user.hash", "1")]).unwrap();
        let l = lay_out(&t, &Options::default()).unwrap();
        assert_eq!(l.shared_order, [0]);
        assert_eq!(l.shared_id, [0, NONE]);
        assert_eq!(xattr_body(&t, &l.shared_id, 1), (12 + 4 + 12, 1));
    }
}
