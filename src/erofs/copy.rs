//! Copies one file's contents into the image (or data file) at a block-aligned offset,
//! sharing blocks instead of copying where the filesystem can.
//!
//! The ladder, tried in order: `FICLONERANGE` for the file's whole blocks (btrfs, XFS: the
//! image's blocks become references to the source's, no data moves), `copy_file_range` (an
//! in-kernel copy) for the rest, then `pread`/`pwrite` through one bounded buffer. A rung
//! that fails as unsupported is not tried again for the rest of the write.
//!
//! A file's last, partial block is always copied. The kernel refuses to clone it into the
//! middle of a file (that would expose the source's bytes past its end), and cloning it at
//! the image's end would not last: extending the image past it makes the filesystem zero its
//! tail, which unshares the block again (on XFS with a copy-on-write preallocation on top).
//! So the destination is made full-length first and only whole blocks are cloned.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use super::format::BLOCK_SIZE;

/// How a write went: how many files took which path, and why a faster path was given up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Regular files with data written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files whose whole blocks were shared by `FICLONERANGE`.
    pub cloned: u64,
    /// The bytes so shared.
    pub cloned_bytes: u64,
    /// Files (or the partial last blocks of cloned ones) copied by `copy_file_range`.
    pub copy_range: u64,
    /// Files (or partial last blocks) copied, wholly or in part, through a buffer.
    pub buffered: u64,
    /// The error that made the writer stop trying `FICLONERANGE`, if it did.
    pub clone_error: Option<i32>,
    /// The error that made the writer stop trying `copy_file_range`, if it did.
    pub copy_range_error: Option<i32>,
}

/// Why a copy failed.
#[derive(Debug)]
pub(crate) enum CopyError {
    /// The source's length is not the size the tree declared.
    Size(u64),
    /// Reading or writing failed.
    Io(io::Error),
}

impl From<io::Error> for CopyError {
    fn from(e: io::Error) -> Self {
        CopyError::Io(e)
    }
}

/// The copy buffer of the last rung.
const BUFFER: usize = 1 << 20;

/// Copies files, remembering which rungs of the ladder work.
pub(crate) struct Copier {
    clone: bool,
    copy_range: bool,
    buffer: Vec<u8>,
    pub stats: WriteStats,
}

impl Copier {
    pub fn new() -> Self {
        Copier {
            clone: true,
            copy_range: true,
            buffer: Vec::new(),
            stats: WriteStats::default(),
        }
    }

    /// Copies all `len` bytes of `src` to `dst` at `dst_off`, a block-aligned offset inside
    /// `dst` (which is already long enough). The source must be exactly `len` bytes long.
    pub fn copy(&mut self, src: &File, len: u64, dst: &File, dst_off: u64) -> Result<(), CopyError> {
        let actual = src.metadata()?.len();
        if actual != len {
            return Err(CopyError::Size(actual));
        }
        if len == 0 {
            return Ok(());
        }
        self.stats.files += 1;
        self.stats.bytes += len;
        let mut done = 0u64;
        let whole = len / BLOCK_SIZE * BLOCK_SIZE;
        if self.clone && whole > 0 {
            let range = libc::file_clone_range {
                src_fd: i64::from(src.as_raw_fd()),
                src_offset: 0,
                src_length: whole,
                dest_offset: dst_off,
            };
            // SAFETY: FICLONERANGE reads a `file_clone_range` that lives across the call.
            let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONERANGE, &range) };
            if r == 0 {
                self.stats.cloned += 1;
                self.stats.cloned_bytes += whole;
                done = whole;
            } else {
                // Any failure (EOPNOTSUPP on tmpfs and ext4, EXDEV across filesystems) means
                // copying instead, from now on.
                self.clone = false;
                self.stats.clone_error = io::Error::last_os_error().raw_os_error();
            }
        }
        if done == len {
            return Ok(());
        }
        if self.copy_range {
            match copy_range(src, done, dst, dst_off + done, len - done) {
                Ok(n) if n == len - done => {
                    self.stats.copy_range += 1;
                    return Ok(());
                }
                // Short: the source shrank since we measured it, or (some pseudo filesystems)
                // the call copies nothing. The buffered copy finds out which.
                Ok(n) => done += n,
                Err((n, e)) => {
                    done += n;
                    if !matches!(
                        e.raw_os_error(),
                        Some(libc::ENOSYS | libc::EXDEV | libc::EOPNOTSUPP | libc::EINVAL | libc::EPERM)
                    ) {
                        return Err(e.into());
                    }
                    // EXDEV: tmpfs sources into an ext4 image, for one.
                    self.copy_range = false;
                    self.stats.copy_range_error = e.raw_os_error();
                }
            }
        }
        self.stats.buffered += 1;
        if self.buffer.is_empty() {
            self.buffer = vec![0; BUFFER];
        }
        while done < len {
            let want = (len - done).min(BUFFER as u64) as usize;
            let n = src.read_at(&mut self.buffer[..want], done)?;
            if n == 0 {
                return Err(CopyError::Size(done));
            }
            dst.write_all_at(&self.buffer[..n], dst_off + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// `copy_file_range` of `len` bytes from `src_off` until done or the source's end; on error,
/// returns how many bytes were copied before it.
fn copy_range(src: &File, src_off: u64, dst: &File, dst_off: u64, len: u64) -> Result<u64, (u64, io::Error)> {
    let offset = |o: u64| libc::loff_t::try_from(o).map_err(|_| (0, io::Error::from_raw_os_error(libc::EFBIG)));
    let mut off_in = offset(src_off)?;
    let mut off_out = offset(dst_off)?;
    let mut done = 0u64;
    while done < len {
        // One call moves at most ~2 GiB anyway; ask for no more than 1 GiB at a time.
        let want = (len - done).min(1 << 30) as usize;
        // SAFETY: both offsets are valid `loff_t`s that outlive the call.
        let n = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, want, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err((done, e));
        }
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    Ok(done)
}
