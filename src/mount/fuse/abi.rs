//! The FUSE kernel ABI (`include/uapi/linux/fuse.h`) as far as cab speaks it: opcodes, flags,
//! and the byte layout of every message it reads or writes. Messages are in the host's byte
//! order; they are read and written field by field here, so no other module sees an offset.

/// The protocol's major version.
pub const MAJOR: u32 = 7;
/// The newest minor version this implementation knows (7.43 added `request_timeout`).
pub const MINOR: u32 = 44;

/// Request opcodes.
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const TMPFILE: u32 = 51;
}

/// Capability bits of `FUSE_INIT` (the high 32 in `flags2`).
pub mod init {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const NO_OPENDIR_SUPPORT: u64 = 1 << 24;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const PASSTHROUGH: u64 = 1 << 37;
    /// Requests through io_uring rings instead of read(2) (7.42, Linux 6.14+): the kernel
    /// offers it while `/sys/module/fuse/parameters/enable_uring` is on, the server echoes it.
    pub const OVER_IO_URING: u64 = 1 << 41;
    pub const REQUEST_TIMEOUT: u64 = 1 << 42;
}

/// FUSE over io_uring (`struct fuse_uring_req_header`, `struct fuse_uring_cmd_req`): each ring
/// entry is a header buffer and a payload buffer the kernel copies requests into and answers
/// out of.
pub mod ring {
    /// `in_out`: the request's `fuse_in_header`, then the answer's `fuse_out_header`.
    pub const IN_OUT: usize = 0;
    /// `op_in`: the operation's first argument (its fixed struct; empty for lookups).
    pub const OP_IN: usize = 128;
    /// The size of `op_in`.
    pub const OP_IN_SIZE: usize = 128;
    /// `ring_ent_in_out.commit_id`: what COMMIT_AND_FETCH names the request by.
    pub const COMMIT_ID: usize = 256 + 8;
    /// `ring_ent_in_out.payload_sz`: the payload's length, each way.
    pub const PAYLOAD_SIZE: usize = 256 + 16;
    /// `sizeof(struct fuse_uring_req_header)`.
    pub const HEADER_SIZE: usize = 288;
    /// `FUSE_IO_URING_CMD_REGISTER` (in `sqe->cmd_op`): hands the kernel an entry.
    pub const CMD_REGISTER: u32 = 1;
    /// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`: answers an entry's request and hands it back.
    pub const CMD_COMMIT_AND_FETCH: u32 = 2;
    /// The smallest payload buffer the kernel takes: `FUSE_MIN_READ_BUFFER`, `max_write`, and
    /// `max_pages` pages (32 when `MAX_PAGES` is not agreed), whichever is largest.
    pub fn payload_size(max_write: u32, max_pages: Option<u16>) -> usize {
        // SAFETY: a plain getter.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let pages = max_pages.map_or(32, usize::from) * page;
        super::MIN_READ_BUFFER.max(max_write as usize).max(pages)
    }
}

/// Flags of an open reply.
pub mod fopen {
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const CACHE_DIR: u32 = 1 << 3;
    pub const PASSTHROUGH: u32 = 1 << 7;
}

/// Notification codes (sent with unique 0, the code in the error field).
pub mod notify {
    pub const INVAL_ENTRY: i32 = 3;
    pub const STORE: i32 = 4;
}

/// Set on the unique of an interrupt request (the interrupted request's unique, marked).
pub const INT_REQ_BIT: u64 = 1;

/// ioctls on /dev/fuse: `_IOR(229, 0, u32)`, `_IOW(229, 1, struct fuse_backing_map)`,
/// `_IOW(229, 2, u32)`.
pub const DEV_IOC_CLONE: u64 = 0x8004_e500;
/// Registers a backing file for passthrough; returns its id.
pub const DEV_IOC_BACKING_OPEN: u64 = 0x4010_e501;
/// Drops a backing file id.
pub const DEV_IOC_BACKING_CLOSE: u64 = 0x4004_e502;

/// The kernel refuses a read buffer smaller than this.
pub const MIN_READ_BUFFER: usize = 8192;

/// `struct fuse_in_header`: every request starts with it.
#[derive(Clone, Copy, Debug)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl InHeader {
    /// Its size on the wire.
    pub const SIZE: usize = 40;

    /// Reads the header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Option<InHeader> {
        let mut f = Fields::new(bytes);
        let header = InHeader {
            len: f.u32()?,
            opcode: f.u32()?,
            unique: f.u64()?,
            nodeid: f.u64()?,
            uid: f.u32()?,
            gid: f.u32()?,
            pid: f.u32()?,
        };
        // total_extlen and padding follow; cab asks for no extensions.
        f.skip(4)?;
        Some(header)
    }
}

/// Reads the fields of a request body in order.
pub struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Fields of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Fields<'a> {
        Fields { bytes }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    /// A `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.take(4)?.try_into().ok()?))
    }

    /// A `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.take(8)?.try_into().ok()?))
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    /// A NUL-terminated name (without its NUL).
    pub fn name(&mut self) -> Option<&'a [u8]> {
        let end = self.bytes.iter().position(|&b| b == 0)?;
        let name = self.take(end)?;
        self.skip(1)?;
        Some(name)
    }
}

/// Builds a reply body field by field.
#[derive(Default)]
pub struct Out {
    /// The bytes so far.
    pub bytes: Vec<u8>,
}

impl Out {
    /// An empty body with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Out {
        Out {
            bytes: Vec::with_capacity(capacity),
        }
    }

    /// Appends a `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// Appends an `i32`.
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// Appends zero bytes up to the next multiple of 8 (dirents are 8-aligned).
    pub fn pad8(&mut self) -> &mut Self {
        let padded = self.bytes.len().next_multiple_of(8);
        self.bytes.resize(padded, 0);
        self
    }
}

/// The attributes of an inode: `struct fuse_attr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    /// atime, mtime and ctime alike, in seconds (cab's contents are timeless).
    pub time: u64,
    /// File type and permission bits, as in `st_mode`.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub blksize: u32,
}

impl Attr {
    /// The `d_type` of a directory entry for this inode.
    pub fn dirent_type(&self) -> u32 {
        (self.mode & libc::S_IFMT) >> 12
    }

    fn encode(&self, out: &mut Out) {
        out.u64(self.ino).u64(self.size).u64(self.blocks);
        out.u64(self.time).u64(self.time).u64(self.time);
        out.u32(0).u32(0).u32(0);
        out.u32(self.mode).u32(self.nlink).u32(self.uid).u32(self.gid);
        out.u32(0); // rdev
        out.u32(self.blksize);
        out.u32(0); // flags
    }
}

/// A validity period as the kernel takes it: seconds and nanoseconds.
fn split(ttl: std::time::Duration) -> (u64, u32) {
    (ttl.as_secs(), ttl.subsec_nanos())
}

/// `struct fuse_entry_out`: the answer to a lookup.
pub fn entry_out(out: &mut Out, attr: &Attr, entry_ttl: std::time::Duration, attr_ttl: std::time::Duration) {
    let (es, en) = split(entry_ttl);
    let (as_, an) = split(attr_ttl);
    out.u64(attr.ino).u64(0).u64(es).u64(as_).u32(en).u32(an);
    attr.encode(out);
}

/// `struct fuse_attr_out`: the answer to getattr.
pub fn attr_out(out: &mut Out, attr: &Attr, ttl: std::time::Duration) {
    let (s, n) = split(ttl);
    out.u64(s).u32(n).u32(0);
    attr.encode(out);
}

/// `struct fuse_dirent` header size (before the name).
pub const DIRENT_SIZE: usize = 24;
/// `struct fuse_entry_out` size.
pub const ENTRY_OUT_SIZE: usize = 128;

/// Appends one `struct fuse_dirent`.
pub fn dirent(out: &mut Out, ino: u64, offset: u64, kind: u32, name: &[u8]) {
    out.u64(ino).u64(offset).u32(name.len() as u32).u32(kind);
    out.bytes.extend_from_slice(name);
    out.pad8();
}

/// What the kernel offered in `FUSE_INIT`.
#[derive(Clone, Copy, Debug)]
pub struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u64,
}

impl InitIn {
    /// Reads `struct fuse_init_in`.
    pub fn parse(body: &[u8]) -> Option<InitIn> {
        let mut f = Fields::new(body);
        let (major, minor, max_readahead, low) = (f.u32()?, f.u32()?, f.u32()?, f.u32()?);
        let mut flags = u64::from(low);
        if flags & init::INIT_EXT != 0 {
            flags |= u64::from(f.u32().unwrap_or(0)) << 32;
        }
        Some(InitIn {
            major,
            minor,
            max_readahead,
            flags,
        })
    }
}

/// What cab answers to `FUSE_INIT`.
#[derive(Clone, Copy, Debug, Default)]
pub struct InitOut {
    pub max_readahead: u32,
    pub flags: u64,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub max_pages: u16,
    pub max_stack_depth: u32,
    /// Seconds; honoured when `flags` has [`init::REQUEST_TIMEOUT`].
    pub request_timeout: u16,
}

impl InitOut {
    /// `struct fuse_init_out` (64 bytes).
    pub fn encode(&self, minor: u32) -> Vec<u8> {
        let flags = self.flags | init::INIT_EXT;
        let mut out = Out::with_capacity(64);
        out.u32(MAJOR).u32(minor).u32(self.max_readahead).u32(flags as u32);
        out.u16(self.max_background).u16(self.congestion_threshold);
        out.u32(self.max_write).u32(1); // time_gran: 1 ns
        out.u16(self.max_pages).u16(0); // map_alignment
        out.u32((flags >> 32) as u32);
        out.u32(self.max_stack_depth);
        out.u16(self.request_timeout);
        out.bytes.resize(64, 0);
        out.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_the_kernel_sizes() {
        let attr = Attr::default();
        let mut out = Out::default();
        attr.encode(&mut out);
        assert_eq!(out.bytes.len(), 88, "struct fuse_attr");
        let mut out = Out::default();
        entry_out(&mut out, &attr, Default::default(), Default::default());
        assert_eq!(out.bytes.len(), ENTRY_OUT_SIZE, "struct fuse_entry_out");
        let mut out = Out::default();
        attr_out(&mut out, &attr, Default::default());
        assert_eq!(out.bytes.len(), 104, "struct fuse_attr_out");
        assert_eq!(InitOut::default().encode(MINOR).len(), 64, "struct fuse_init_out");
        let mut out = Out::default();
        dirent(&mut out, 1, 1, 4, b"abc");
        assert_eq!(out.bytes.len(), 32, "24 + name, 8-aligned");
    }

    #[test]
    fn ioctl_numbers_match_their_definitions() {
        let ioc = |dir: u64, size: u64, nr: u64| (dir << 30) | (size << 16) | (229 << 8) | nr;
        assert_eq!(DEV_IOC_CLONE, ioc(2, 4, 0));
        assert_eq!(DEV_IOC_BACKING_OPEN, ioc(1, 16, 1));
        assert_eq!(DEV_IOC_BACKING_CLOSE, ioc(1, 4, 2));
    }

    #[test]
    fn names_and_headers_parse() {
        let mut bytes = Vec::new();
        for v in [40u32, opcode::LOOKUP] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        bytes.extend_from_slice(&7u64.to_ne_bytes());
        bytes.extend_from_slice(&1u64.to_ne_bytes());
        for v in [0u32, 0, 42, 0] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        let header = InHeader::parse(&bytes).unwrap();
        assert_eq!((header.unique, header.nodeid, header.pid), (7, 1, 42));
        let mut f = Fields::new(b"name\0rest");
        assert_eq!(f.name(), Some(&b"name"[..]));
        assert_eq!(Fields::new(b"unterminated").name(), None);
    }
}
