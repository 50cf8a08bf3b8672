//! One request from the kernel, parsed: the header, and the operation with its arguments.
//! Everything cab does not serve is one of two catch-alls: [`Op::Write`] (refused with
//! EROFS, the mount is read-only) or [`Op::Unsupported`] (ENOSYS, so the kernel stops asking).

use super::abi::{Fields, InHeader, InitIn, opcode};

/// A parsed request; names borrow from the read buffer.
#[derive(Debug)]
pub struct Request<'a> {
    /// The kernel's id for this request: its reply carries it.
    pub unique: u64,
    /// The inode the operation is on.
    pub nodeid: u64,
    /// Who asked.
    pub uid: u32,
    /// Who asked.
    pub gid: u32,
    /// Who asked.
    pub pid: u32,
    /// What is asked.
    pub op: Op<'a>,
}

/// An operation and its arguments.
#[derive(Debug)]
pub enum Op<'a> {
    Init(InitIn),
    Destroy,
    Interrupt {
        unique: u64,
    },
    Lookup {
        name: &'a [u8],
    },
    Forget {
        nlookup: u64,
    },
    BatchForget {
        nodes: Vec<(u64, u64)>,
    },
    GetAttr,
    ReadLink,
    Open {
        flags: u32,
    },
    Read {
        offset: u64,
        size: u32,
    },
    Release {
        fh: u64,
    },
    OpenDir,
    ReadDir {
        offset: u64,
        size: u32,
    },
    ReadDirPlus {
        offset: u64,
        size: u32,
    },
    ReleaseDir,
    StatFs,
    GetXattr {
        name: &'a [u8],
        size: u32,
    },
    ListXattr {
        size: u32,
    },
    Access {
        mask: u32,
    },
    /// Anything that would change the tree.
    Write,
    /// Anything else, by opcode.
    Unsupported(u32),
}

impl Request<'_> {
    /// Parses one message as read from /dev/fuse.
    pub fn parse(message: &[u8]) -> Option<Request<'_>> {
        let header = InHeader::parse(message)?;
        let body = message.get(InHeader::SIZE..header.len as usize)?;
        let mut f = Fields::new(body);
        let op = match header.opcode {
            opcode::INIT => Op::Init(InitIn::parse(body)?),
            opcode::DESTROY => Op::Destroy,
            opcode::INTERRUPT => Op::Interrupt { unique: f.u64()? },
            opcode::LOOKUP => Op::Lookup { name: f.name()? },
            opcode::FORGET => Op::Forget { nlookup: f.u64()? },
            opcode::BATCH_FORGET => {
                let count = f.u32()?;
                f.skip(4)?;
                let mut nodes = Vec::with_capacity(count.min(1 << 16) as usize);
                for _ in 0..count {
                    nodes.push((f.u64()?, f.u64()?));
                }
                Op::BatchForget { nodes }
            }
            opcode::GETATTR => Op::GetAttr,
            opcode::READLINK => Op::ReadLink,
            opcode::OPEN => Op::Open { flags: f.u32()? },
            opcode::READ | opcode::READDIR | opcode::READDIRPLUS => {
                // struct fuse_read_in: fh, offset, size, …
                f.skip(8)?;
                let (offset, size) = (f.u64()?, f.u32()?);
                match header.opcode {
                    opcode::READ => Op::Read { offset, size },
                    opcode::READDIR => Op::ReadDir { offset, size },
                    _ => Op::ReadDirPlus { offset, size },
                }
            }
            opcode::RELEASE => Op::Release { fh: f.u64()? },
            opcode::OPENDIR => Op::OpenDir,
            opcode::RELEASEDIR => Op::ReleaseDir,
            opcode::STATFS => Op::StatFs,
            opcode::GETXATTR => {
                let size = f.u32()?;
                f.skip(4)?;
                Op::GetXattr { name: f.name()?, size }
            }
            opcode::LISTXATTR => Op::ListXattr { size: f.u32()? },
            opcode::ACCESS => Op::Access { mask: f.u32()? },
            opcode::SETATTR
            | opcode::SYMLINK
            | opcode::MKNOD
            | opcode::MKDIR
            | opcode::UNLINK
            | opcode::RMDIR
            | opcode::RENAME
            | opcode::RENAME2
            | opcode::LINK
            | opcode::WRITE
            | opcode::SETXATTR
            | opcode::REMOVEXATTR
            | opcode::CREATE
            | opcode::TMPFILE
            | opcode::FALLOCATE
            | opcode::COPY_FILE_RANGE => Op::Write,
            other => Op::Unsupported(other),
        };
        Some(Request {
            unique: header.unique,
            nodeid: header.nodeid,
            uid: header.uid,
            gid: header.gid,
            pid: header.pid,
            op,
        })
    }

    /// The operation's name, for logs.
    pub fn op_name(&self) -> &'static str {
        match self.op {
            Op::Init(_) => "INIT",
            Op::Destroy => "DESTROY",
            Op::Interrupt { .. } => "INTERRUPT",
            Op::Lookup { .. } => "LOOKUP",
            Op::Forget { .. } => "FORGET",
            Op::BatchForget { .. } => "BATCH_FORGET",
            Op::GetAttr => "GETATTR",
            Op::ReadLink => "READLINK",
            Op::Open { .. } => "OPEN",
            Op::Read { .. } => "READ",
            Op::Release { .. } => "RELEASE",
            Op::OpenDir => "OPENDIR",
            Op::ReadDir { .. } => "READDIR",
            Op::ReadDirPlus { .. } => "READDIRPLUS",
            Op::ReleaseDir => "RELEASEDIR",
            Op::StatFs => "STATFS",
            Op::GetXattr { .. } => "GETXATTR",
            Op::ListXattr { .. } => "LISTXATTR",
            Op::Access { .. } => "ACCESS",
            Op::Write => "a write",
            Op::Unsupported(_) => "an unsupported operation",
        }
    }

    /// Whether the kernel expects no reply (forgets).
    pub fn is_one_way(&self) -> bool {
        matches!(self.op, Op::Forget { .. } | Op::BatchForget { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((40 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&opcode.to_ne_bytes());
        m.extend_from_slice(&unique.to_ne_bytes());
        m.extend_from_slice(&nodeid.to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn parses_lookups_reads_and_forgets() {
        let m = message(opcode::LOOKUP, 9, 1, b"src\0");
        let r = Request::parse(&m).unwrap();
        assert!(matches!(r.op, Op::Lookup { name: b"src" }));
        assert_eq!((r.unique, r.nodeid), (9, 1));

        let mut body = Vec::new();
        body.extend_from_slice(&5u64.to_ne_bytes());
        body.extend_from_slice(&4096u64.to_ne_bytes());
        body.extend_from_slice(&8192u32.to_ne_bytes());
        body.extend_from_slice(&[0; 20]);
        let m = message(opcode::READ, 10, 7, &body);
        assert!(matches!(
            Request::parse(&m).unwrap().op,
            Op::Read {
                offset: 4096,
                size: 8192
            }
        ));

        let mut body = Vec::new();
        body.extend_from_slice(&2u32.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        for v in [5u64, 1, 6, 3] {
            body.extend_from_slice(&v.to_ne_bytes());
        }
        let m = message(opcode::BATCH_FORGET, 0, 0, &body);
        let r = Request::parse(&m).unwrap();
        assert!(r.is_one_way());
        match r.op {
            Op::BatchForget { nodes } => assert_eq!(nodes, [(5, 1), (6, 3)]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_or_odd_messages_are_refused_not_panics() {
        assert!(Request::parse(&[0; 10]).is_none());
        let m = message(opcode::LOOKUP, 1, 1, b"no nul");
        assert!(Request::parse(&m).is_none());
        let mut body = u32::MAX.to_ne_bytes().to_vec();
        body.extend_from_slice(&[0; 4]);
        let m = message(opcode::BATCH_FORGET, 1, 1, &body);
        assert!(Request::parse(&m).is_none(), "a count the body does not hold");
        let m = message(opcode::MKDIR, 1, 1, b"x\0");
        assert!(matches!(Request::parse(&m).unwrap().op, Op::Write));
    }
}
