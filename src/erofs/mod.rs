//! Writes EROFS images of content-addressed trees, so that the kernel can serve a tree that
//! is whole in the store (a file-backed EROFS mount) instead of cab's FUSE mount.
//!
//! Two phases. The caller first describes the tree in a [`Tree`]: directories, regular files
//! (size, executable bit, and a source key `S` saying where the contents are) and symlinks,
//! each with xattrs; children are added in byte order of their names. [`Tree::plan`] then
//! lays it out (superblock, inodes, xattrs, directory blocks, one block-aligned extent per
//! file) and the [`Plan`] writes it to files the caller opened, copying file contents in
//! from the caller's `open(&S)` callback one file at a time, through a bounded buffer or,
//! where the filesystem can, by sharing blocks (`FICLONERANGE`).
//!
//! What the mounted image shows is fixed by the format choices here: modes by kind (files
//! 0444, executables 0555, directories 0555, symlinks 0777), every time 1 s after the epoch,
//! nlink 1 for files and symlinks and 2 for directories, one uid/gid for the whole tree.
//! Data is uncompressed and each file starts on a block boundary. The same input gives the
//! same bytes.
//!
//! Two placements of the file data ([`Placement`]): in the image, or in a separate data
//! file that a metadata-only image reaches as an extra device (`mount -o device=DATA`). The
//! data file depends only on the tree's shape and file sizes, so trees that differ only in
//! xattrs (a tree served under several names) can share one.
//!
//! ```no_run
//! # use cab::erofs;
//! # fn main() -> Result<(), erofs::Error> {
//! use std::fs::File;
//! let mut tree = erofs::Tree::new([("user.cab.rev", "r1")])?;
//! let root = tree.root();
//! let bin = tree.add_dir(root, b"bin", [("user.cab.rev", "r1")])?;
//! tree.add_file(bin, b"tool", 1234, true, "/store/blobs/ab12".to_string(), [("user.cab.rev", "r1")])?;
//! tree.add_symlink(root, b"lib", b"/usr/lib", [("user.cab.rev", "r1")])?;
//! let plan = tree.plan(&erofs::Options::default())?;
//! let out = File::create("/tmp/tree.erofs")?;
//! plan.write_image(&out, |path| File::open(path))?;
//! # Ok(())
//! # }
//! ```

mod copy;
mod format;
mod layout;
mod tree;
mod write;

use std::fmt;
use std::fs::File;
use std::io;

pub use copy::WriteStats;
pub use format::BLOCK_SIZE;
pub use tree::{NodeId, Tree};

/// Where the file data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// One image holding metadata and data ([`Plan::write_image`]).
    #[default]
    InImage,
    /// A metadata image ([`Plan::write_metadata`]) and a data file ([`Plan::write_data`]),
    /// mounted with `-o device=DATAFILE`.
    SeparateFile,
}

/// Image-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Owner of every node.
    pub uid: u32,
    /// Group of every node.
    pub gid: u32,
    /// Where the file data goes.
    pub placement: Placement,
    /// Volume UUID (the kernel shows it as the superblock's `s_uuid`).
    pub uuid: [u8; 16],
    /// Volume name, at most 15 bytes.
    pub volume_name: Vec<u8>,
    /// For [`Placement::SeparateFile`]: the data device's tag, at most 64 bytes. The kernel
    /// only uses it as a path when no `device=` option is given; tools print it.
    pub device_tag: Vec<u8>,
}

/// What can go wrong describing, laying out or writing a tree.
#[derive(Debug)]
pub enum Error {
    /// A name that is empty, longer than 255 bytes, `.`, `..`, or has `/` or NUL in it.
    InvalidName(Vec<u8>),
    /// A child whose name is not greater than its previous sibling's.
    Unsorted(Vec<u8>),
    /// A parent that is not a directory.
    NotADirectory(NodeId),
    /// A symlink target that is empty, longer than 4095 bytes, or has NUL in it.
    InvalidSymlink(Vec<u8>),
    /// An xattr name EROFS cannot store (not `user.`, `trusted.`, `security.` or a POSIX
    /// ACL; longer than 255 bytes; twice on one node) or a value over 65535 bytes.
    InvalidXattr(Vec<u8>),
    /// An option out of range.
    InvalidOption(&'static str),
    /// Past a format limit (what is named overflowed).
    TooLarge(&'static str),
    /// A write call that does not match the plan's [`Placement`].
    WrongPlacement,
    /// A source whose length is not the size given for its file.
    SizeMismatch {
        /// The file.
        node: NodeId,
        /// Its name (the last component).
        name: Vec<u8>,
        /// The size the tree gave.
        expected: u64,
        /// The size of what `open` returned.
        actual: u64,
    },
    /// The `open` callback failed for a file.
    Source {
        /// The file.
        node: NodeId,
        /// Its name (the last component).
        name: Vec<u8>,
        /// What `open` said.
        error: io::Error,
    },
    /// Writing the image failed.
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidName(n) => write!(f, "invalid name \"{}\"", n.escape_ascii()),
            Error::Unsorted(n) => write!(f, "\"{}\" is not after its previous sibling", n.escape_ascii()),
            Error::NotADirectory(id) => write!(f, "node {} is not a directory", id.0),
            Error::InvalidSymlink(t) => write!(f, "invalid symlink target \"{}\"", t.escape_ascii()),
            Error::InvalidXattr(n) => write!(f, "xattr \"{}\" cannot be stored", n.escape_ascii()),
            Error::InvalidOption(what) => write!(f, "invalid option: {what}"),
            Error::TooLarge(what) => write!(f, "too large for EROFS: {what}"),
            Error::WrongPlacement => write!(f, "this write does not match the plan's data placement"),
            Error::SizeMismatch {
                name, expected, actual, ..
            } => {
                write!(
                    f,
                    "\"{}\" should be {expected} bytes, its source has {actual}",
                    name.escape_ascii()
                )
            }
            Error::Source { name, error, .. } => write!(f, "opening \"{}\": {error}", name.escape_ascii()),
            Error::Io(e) => write!(f, "writing the image: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Source { error, .. } | Error::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// A tree laid out and ready to write.
#[derive(Debug)]
pub struct Plan<'t, S> {
    tree: &'t Tree<S>,
    layout: layout::Layout,
    options: Options,
}

impl<S> Tree<S> {
    /// Lays the tree out. Memory: about 30 bytes per node on top of the tree's own.
    pub fn plan(&self, options: &Options) -> Result<Plan<'_, S>, Error> {
        if options.volume_name.len() > 15 {
            return Err(Error::InvalidOption("volume name longer than 15 bytes"));
        }
        if options.device_tag.len() > 64 {
            return Err(Error::InvalidOption("device tag longer than 64 bytes"));
        }
        let layout = layout::lay_out(self, options)?;
        Ok(Plan {
            tree: self,
            layout,
            options: options.clone(),
        })
    }
}

impl<S> Plan<'_, S> {
    /// Bytes of the image: everything for [`Placement::InImage`], the metadata for
    /// [`Placement::SeparateFile`].
    pub fn image_len(&self) -> u64 {
        let blocks = match self.options.placement {
            Placement::InImage => self.layout.meta_blocks + self.layout.data_blocks,
            Placement::SeparateFile => self.layout.meta_blocks,
        };
        u64::from(blocks) * BLOCK_SIZE
    }

    /// Bytes of metadata at the start of the image: superblock, inodes, xattrs, directories.
    /// The kernel reads metadata from the image file one page at a time without read-ahead,
    /// so reading this range once after mounting (`posix_fadvise(WILLNEED)`, or a plain read)
    /// makes a cold first walk or read-all as fast as with a warm cache.
    pub fn metadata_len(&self) -> u64 {
        u64::from(self.layout.meta_blocks) * BLOCK_SIZE
    }

    /// Bytes of file data (block-aligned extents), in the image or in the data file.
    pub fn data_len(&self) -> u64 {
        u64::from(self.layout.data_blocks) * BLOCK_SIZE
    }

    /// The root directory's nid.
    pub fn root_nid(&self) -> u64 {
        u64::from(self.layout.place[0].nid)
    }

    /// Where a node's inode is in the image (its nid times 32): its inode number on a mount.
    pub fn nid(&self, node: NodeId) -> Option<u64> {
        self.layout.place.get(node.0 as usize).map(|p| u64::from(p.nid))
    }

    /// Where a regular file's data is: byte offset in the image (or in the data file, for
    /// [`Placement::SeparateFile`]) and length. `None` for other nodes and empty files.
    pub fn file_extent(&self, node: NodeId) -> Option<(u64, u64)> {
        let tree::Kind::File { size, .. } = self.tree.nodes.get(node.0 as usize)?.kind else {
            return None;
        };
        let base = match self.options.placement {
            Placement::InImage => 0,
            Placement::SeparateFile => self.layout.meta_blocks,
        };
        (size > 0).then(|| {
            (
                u64::from(self.layout.place[node.0 as usize].blkaddr - base) * BLOCK_SIZE,
                size,
            )
        })
    }

    /// Writes the whole image to `out` (truncated first), for [`Placement::InImage`].
    /// `open` gives each non-empty regular file's contents, which are then copied in.
    pub fn write_image<F>(&self, out: &File, open: F) -> Result<WriteStats, Error>
    where
        F: FnMut(&S) -> io::Result<File>,
    {
        if self.options.placement != Placement::InImage {
            return Err(Error::WrongPlacement);
        }
        out.set_len(0)?;
        write::write_metadata(self.tree, &self.layout, &self.options, out)?;
        write::write_data(self.tree, &self.layout, out, 0, open)
    }

    /// Writes the metadata image to `out` (truncated first), for [`Placement::SeparateFile`].
    pub fn write_metadata(&self, out: &File) -> Result<(), Error> {
        if self.options.placement != Placement::SeparateFile {
            return Err(Error::WrongPlacement);
        }
        out.set_len(0)?;
        let end = write::write_metadata(self.tree, &self.layout, &self.options, out)?;
        out.set_len(end)?;
        Ok(())
    }

    /// Writes the data file to `out` (truncated first), for [`Placement::SeparateFile`].
    /// It holds every file's data, block-aligned, depth-first, and nothing else, so any
    /// tree of the same shape and file sizes gives the same data file.
    pub fn write_data<F>(&self, out: &File, open: F) -> Result<WriteStats, Error>
    where
        F: FnMut(&S) -> io::Result<File>,
    {
        if self.options.placement != Placement::SeparateFile {
            return Err(Error::WrongPlacement);
        }
        out.set_len(0)?;
        write::write_data(self.tree, &self.layout, out, self.layout.meta_blocks, open)
    }
}
