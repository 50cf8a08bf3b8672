//! The EROFS on-disk structures this writer emits, encoded by hand into little-endian bytes.
//!
//! Only the subset the writer needs is here: the superblock, one device slot, compact and
//! extended inodes, the xattr body header and entries, and directory entries. Each encoder
//! writes every field explicitly (no `#[repr(C)]` transmutes), so the byte layout is visible
//! and checked by the unit tests against offsets taken from the format definition.

/// log2 of the block size: 4096 bytes, the page size, which every kernel mounts.
pub const BLOCK_BITS: u8 = 12;
/// The block size in bytes.
pub const BLOCK_SIZE: u64 = 1 << BLOCK_BITS;
/// Where the superblock starts in block 0 (room for a boot sector before it).
pub const SUPER_OFFSET: u64 = 1024;
/// The superblock's magic number.
pub const SUPER_MAGIC: u32 = 0xE0F5_E1E2;
/// The superblock's size without extension slots.
pub const SUPER_SIZE: u64 = 128;
/// One device-table slot.
pub const DEVICE_SLOT_SIZE: u64 = 128;
/// The device table follows the superblock; its offset is counted in slots.
pub const DEVICE_SLOT_OFF: u64 = (SUPER_OFFSET + SUPER_SIZE) / DEVICE_SLOT_SIZE;
/// Incompatible feature: some inodes are chunk-based.
pub const INCOMPAT_CHUNKED_FILE: u32 = 0x0000_0004;
/// Incompatible feature: the superblock has a device table (extra devices).
pub const INCOMPAT_DEVICE_TABLE: u32 = 0x0000_0008;

/// The unit of inode numbers (nids): an inode's byte offset in the metadata area / 32.
pub const INODE_SLOT: u64 = 32;
/// A compact (32-byte) inode: 16-bit uid/gid, 32-bit size, mtime from the superblock.
pub const COMPACT_INODE_SIZE: u64 = 32;
/// An extended (64-byte) inode: 32-bit uid/gid, 64-bit size, its own mtime.
pub const EXTENDED_INODE_SIZE: u64 = 64;

/// Data layout: whole blocks at a block address, no inline tail.
pub const LAYOUT_FLAT_PLAIN: u16 = 0;
/// Data layout: whole blocks at a block address, the last partial block inline after the inode.
pub const LAYOUT_FLAT_INLINE: u16 = 2;
/// Data layout: chunks, each with an index (device id, block address) after the inode.
pub const LAYOUT_CHUNK_BASED: u16 = 4;
/// Chunk format flag: 8-byte indexes with a device id (rather than bare block addresses).
pub const CHUNK_FORMAT_INDEXES: u16 = 0x0020;
/// The largest chunk size, as log2 of blocks per chunk (a 5-bit field).
pub const CHUNK_BITS_MAX: u32 = 31;
/// One chunk index.
pub const CHUNK_INDEX_SIZE: u64 = 8;

/// A directory entry's fixed part: nid (8), name offset (2), file type (1), reserved (1).
pub const DIRENT_SIZE: u64 = 12;
/// The longest name a directory entry can hold (and Linux allows).
pub const NAME_MAX: usize = 255;

/// The inline xattr body header: name filter (4), shared count (1), reserved (7).
pub const XATTR_BODY_HEADER_SIZE: u64 = 12;
/// An xattr entry's fixed part: name length (1), name index (1), value size (2).
pub const XATTR_ENTRY_HEADER_SIZE: u64 = 4;
/// Most shared xattrs one inode can reference (the count is a byte).
pub const MAX_SHARED_PER_INODE: usize = 255;

/// Directory entry file types (the kernel's FT_* values).
pub const FT_REG_FILE: u8 = 1;
/// Directory entry file type of a directory.
pub const FT_DIR: u8 = 2;
/// Directory entry file type of a symlink.
pub const FT_SYMLINK: u8 = 7;

/// `S_IFREG`, `S_IFDIR`, `S_IFLNK` as the 16-bit mode field holds them.
pub const S_IFREG: u16 = 0o100_000;
/// Mode type bits of a directory.
pub const S_IFDIR: u16 = 0o040_000;
/// Mode type bits of a symlink.
pub const S_IFLNK: u16 = 0o120_000;

/// Xattr name prefixes EROFS encodes as an index byte, longest match first where one
/// prefix extends another. The POSIX ACL names are whole names (empty suffix).
const XATTR_PREFIXES: [(&[u8], u8); 5] = [
    (b"user.", 1),
    (b"system.posix_acl_access", 2),
    (b"system.posix_acl_default", 3),
    (b"trusted.", 4),
    (b"security.", 6),
];

/// Splits an xattr name into EROFS's prefix index and the stored suffix, or `None` for a
/// namespace EROFS cannot store (the kernel serves no other index; `lustre.` has none).
pub fn split_xattr_name(name: &[u8]) -> Option<(u8, &[u8])> {
    for (prefix, index) in XATTR_PREFIXES {
        if let Some(suffix) = name.strip_prefix(prefix) {
            let whole_name = index == 2 || index == 3;
            // ACL names must match exactly; namespaced names need a non-empty suffix.
            return match (whole_name, suffix.is_empty()) {
                (true, true) | (false, false) => Some((index, suffix)),
                _ => None,
            };
        }
    }
    None
}

/// Rounds `n` up to a multiple of `to` (a power of two).
pub const fn align_up(n: u64, to: u64) -> u64 {
    (n + to - 1) & !(to - 1)
}

/// The on-disk size of an xattr entry with this suffix and value, padded to 4 bytes.
pub const fn xattr_entry_size(suffix_len: usize, value_len: usize) -> u64 {
    align_up(XATTR_ENTRY_HEADER_SIZE + suffix_len as u64 + value_len as u64, 4)
}

/// The fields of the superblock this writer sets; everything else is zero.
#[derive(Debug, Clone, Default)]
pub struct SuperBlock {
    /// The root directory's nid (16 bits on disk: the root is laid out first).
    pub root_nid: u16,
    /// Number of inodes.
    pub inos: u64,
    /// Base time of compact inodes (their mtime is this plus their 32-bit offset).
    pub epoch: u64,
    /// Blocks of the primary device (this image).
    pub blocks: u32,
    /// Block where nid 0 lives.
    pub meta_blkaddr: u32,
    /// Block from which shared xattr ids count (in 4-byte units).
    pub xattr_blkaddr: u32,
    /// Volume UUID.
    pub uuid: [u8; 16],
    /// Volume name, NUL-padded (at most 15 bytes so the kernel finds a terminator).
    pub volume_name: [u8; 16],
    /// Extra devices (0 or 1 here); non-zero sets the device-table feature.
    pub extra_devices: u16,
    /// Some inodes are chunk-based.
    pub chunked: bool,
}

impl SuperBlock {
    /// The 128 bytes at offset 1024 of the image.
    pub fn encode(&self) -> [u8; SUPER_SIZE as usize] {
        let mut b = [0u8; SUPER_SIZE as usize];
        put32(&mut b, 0, SUPER_MAGIC);
        // 4: checksum (feature not set), 8: feature_compat (none).
        b[12] = BLOCK_BITS;
        // 13: sb_extslots = 0 (128-byte superblock).
        put16(&mut b, 14, self.root_nid);
        put64(&mut b, 16, self.inos);
        put64(&mut b, 24, self.epoch);
        // 32: nanoseconds of compact inode times = 0.
        put32(&mut b, 36, self.blocks);
        put32(&mut b, 40, self.meta_blkaddr);
        put32(&mut b, 44, self.xattr_blkaddr);
        b[48..64].copy_from_slice(&self.uuid);
        b[64..80].copy_from_slice(&self.volume_name);
        let devices = if self.extra_devices > 0 {
            INCOMPAT_DEVICE_TABLE
        } else {
            0
        };
        let chunked = if self.chunked { INCOMPAT_CHUNKED_FILE } else { 0 };
        put32(&mut b, 80, devices | chunked);
        // 84: compression algorithms = 0.
        put16(&mut b, 86, self.extra_devices);
        put16(
            &mut b,
            88,
            if self.extra_devices > 0 {
                DEVICE_SLOT_OFF as u16
            } else {
                0
            },
        );
        // 90: dirblkbits = 0 (directory blocks are filesystem blocks); the rest stays zero.
        b
    }
}

/// One device-table slot: an extra device of `blocks` blocks, which block addresses of the
/// primary device reach from `uniaddr` on ("unified addressing").
pub fn device_slot(tag: &[u8; 64], blocks: u32, uniaddr: u32) -> [u8; DEVICE_SLOT_SIZE as usize] {
    let mut b = [0u8; DEVICE_SLOT_SIZE as usize];
    b[..64].copy_from_slice(tag);
    put32(&mut b, 64, blocks);
    put32(&mut b, 68, uniaddr);
    b
}

/// The fields of an inode this writer sets.
#[derive(Debug, Clone, Default)]
pub struct Inode {
    /// 64-byte form (needed for sizes ≥ 4 GiB or ids ≥ 65536).
    pub extended: bool,
    /// [`LAYOUT_FLAT_PLAIN`] or [`LAYOUT_FLAT_INLINE`].
    pub layout: u16,
    /// Inline xattr body size in 4-byte units past the 12-byte header (0 for no body).
    pub xattr_icount: u16,
    /// Type and permission bits.
    pub mode: u16,
    /// Link count.
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// The `i_u` field: first data block (flat layouts) or chunk format (chunk-based).
    pub blkaddr: u32,
    /// 32-bit inode number for old stat calls; unique per image.
    pub ino: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time in seconds (extended inodes only; compact ones use the epoch).
    pub mtime: u64,
}

impl Inode {
    /// Appends the 32- or 64-byte inode to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let format = self.layout << 1 | u16::from(self.extended);
        if self.extended {
            let mut b = [0u8; EXTENDED_INODE_SIZE as usize];
            put16(&mut b, 0, format);
            put16(&mut b, 2, self.xattr_icount);
            put16(&mut b, 4, self.mode);
            // 6: i_nb, unused without the 48-bit feature.
            put64(&mut b, 8, self.size);
            put32(&mut b, 16, self.blkaddr);
            put32(&mut b, 20, self.ino);
            put32(&mut b, 24, self.uid);
            put32(&mut b, 28, self.gid);
            put64(&mut b, 32, self.mtime);
            // 40: mtime nanoseconds = 0.
            put32(&mut b, 44, self.nlink);
            out.extend_from_slice(&b);
        } else {
            let mut b = [0u8; COMPACT_INODE_SIZE as usize];
            put16(&mut b, 0, format);
            put16(&mut b, 2, self.xattr_icount);
            put16(&mut b, 4, self.mode);
            // Callers only choose compact inodes when these fit (see the layout).
            put16(&mut b, 6, self.nlink as u16);
            put32(&mut b, 8, self.size as u32);
            // 12: mtime offset from the epoch = 0 (older kernels read it as reserved).
            put32(&mut b, 16, self.blkaddr);
            put32(&mut b, 20, self.ino);
            put16(&mut b, 24, self.uid as u16);
            put16(&mut b, 26, self.gid as u16);
            out.extend_from_slice(&b);
        }
    }
}

/// The inline xattr body header. The name filter stays 0: without the filter feature bit
/// the kernel ignores it.
pub fn xattr_body_header(shared_count: u8) -> [u8; XATTR_BODY_HEADER_SIZE as usize] {
    let mut b = [0u8; XATTR_BODY_HEADER_SIZE as usize];
    b[4] = shared_count;
    b
}

/// Appends an xattr entry (header, suffix, value, zero padding to 4 bytes).
pub fn xattr_entry(index: u8, suffix: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.push(suffix.len() as u8);
    out.push(index);
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(suffix);
    out.extend_from_slice(value);
    let end = start + xattr_entry_size(suffix.len(), value.len()) as usize;
    out.resize(end, 0);
}

/// A chunk index: the chunk is at block `blkaddr` of device `device_id` (0: this image).
pub fn chunk_index(device_id: u16, blkaddr: u32) -> [u8; CHUNK_INDEX_SIZE as usize] {
    let mut b = [0u8; CHUNK_INDEX_SIZE as usize];
    put16(&mut b, 2, device_id);
    put32(&mut b, 4, blkaddr);
    b
}

/// The chunk format of a chunk-based file of `size` bytes held in one chunk, or `None` if
/// no chunk is that large.
pub fn single_chunk_format(size: u64) -> Option<u16> {
    let blocks = size.div_ceil(BLOCK_SIZE).max(1);
    let bits = blocks.next_power_of_two().trailing_zeros();
    (bits <= CHUNK_BITS_MAX).then_some(bits as u16 | CHUNK_FORMAT_INDEXES)
}

/// One directory entry's fixed part.
pub fn dirent(nid: u64, nameoff: u16, file_type: u8) -> [u8; DIRENT_SIZE as usize] {
    let mut b = [0u8; DIRENT_SIZE as usize];
    put64(&mut b, 0, nid);
    put16(&mut b, 8, nameoff);
    b[10] = file_type;
    b
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn get32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    #[test]
    fn superblock_fields_sit_at_their_offsets() {
        let sb = SuperBlock {
            root_nid: 40,
            inos: 7,
            epoch: 1,
            blocks: 9,
            meta_blkaddr: 0,
            xattr_blkaddr: 3,
            extra_devices: 1,
            ..SuperBlock::default()
        };
        let b = sb.encode();
        assert_eq!(get32(&b, 0), SUPER_MAGIC);
        assert_eq!(b[12], 12);
        assert_eq!(get16(&b, 14), 40);
        assert_eq!(b[16], 7);
        assert_eq!(b[24], 1);
        assert_eq!(get32(&b, 36), 9);
        assert_eq!(get32(&b, 44), 3);
        assert_eq!(get32(&b, 80), INCOMPAT_DEVICE_TABLE);
        assert_eq!(get16(&b, 86), 1);
        assert_eq!(get16(&b, 88), 9, "the device table starts right after the superblock");
    }

    #[test]
    fn inodes_are_32_or_64_bytes_with_format_bits() {
        let mut out = Vec::new();
        let inode = Inode {
            layout: LAYOUT_FLAT_INLINE,
            mode: S_IFDIR | 0o555,
            nlink: 2,
            ..Inode::default()
        };
        inode.encode(&mut out);
        assert_eq!(out.len(), 32);
        assert_eq!(get16(&out, 0), 4, "layout 2, compact");
        assert_eq!(get16(&out, 6), 2);
        out.clear();
        Inode {
            extended: true,
            size: 1 << 32,
            nlink: 1,
            ..inode
        }
        .encode(&mut out);
        assert_eq!(out.len(), 64);
        assert_eq!(get16(&out, 0), 5, "layout 2, extended");
        assert_eq!(out[12], 1, "high half of the 64-bit size");
        assert_eq!(get32(&out, 44), 1);
    }

    #[test]
    fn xattr_names_split_into_index_and_suffix() {
        assert_eq!(split_xattr_name(b"user.cab.hash"), Some((1, &b"cab.hash"[..])));
        assert_eq!(split_xattr_name(b"trusted.x"), Some((4, &b"x"[..])));
        assert_eq!(split_xattr_name(b"security.selinux"), Some((6, &b"selinux"[..])));
        assert_eq!(split_xattr_name(b"system.posix_acl_access"), Some((2, &b""[..])));
        assert_eq!(split_xattr_name(b"system.posix_acl_accessx"), None);
        assert_eq!(split_xattr_name(b"user."), None);
        assert_eq!(split_xattr_name(b"lustre.x"), None);
        assert_eq!(split_xattr_name(b"other"), None);
    }

    #[test]
    fn one_chunk_covers_the_whole_file() {
        assert_eq!(single_chunk_format(1), Some(CHUNK_FORMAT_INDEXES));
        assert_eq!(single_chunk_format(4096), Some(CHUNK_FORMAT_INDEXES));
        assert_eq!(single_chunk_format(4097), Some(1 | CHUNK_FORMAT_INDEXES));
        assert_eq!(single_chunk_format(3 * 4096), Some(2 | CHUNK_FORMAT_INDEXES));
        assert_eq!(single_chunk_format(4096 << 31), Some(31 | CHUNK_FORMAT_INDEXES));
        assert_eq!(single_chunk_format((4096 << 31) + 1), None);
        assert_eq!(chunk_index(1, 7), [0, 0, 1, 0, 7, 0, 0, 0]);
    }

    #[test]
    fn xattr_entries_are_padded_to_four_bytes() {
        let mut out = Vec::new();
        xattr_entry(1, b"ab", b"xyz", &mut out);
        assert_eq!(out, [2, 1, 3, 0, b'a', b'b', b'x', b'y', b'z', 0, 0, 0]);
        assert_eq!(xattr_entry_size(2, 3), 12);
    }
}
