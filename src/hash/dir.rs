//! Directory access relative to an open directory descriptor (`openat` and friends).
//!
//! Walking a large tree by full paths makes the kernel resolve every path from the root, and
//! fails past `PATH_MAX`; holding each directory open and naming children relative to it does
//! neither. `O_NOFOLLOW` everywhere: a tree's symlinks are data, never followed.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What a directory entry is, as far as a tree cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryType {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// Anything a tree cannot hold, described for the error message.
    Unsupported(&'static str),
}

impl EntryType {
    /// Classifies an `st_mode`.
    pub fn from_mode(mode: libc::mode_t) -> EntryType {
        match mode & libc::S_IFMT {
            libc::S_IFREG => EntryType::File,
            libc::S_IFDIR => EntryType::Directory,
            libc::S_IFLNK => EntryType::Symlink,
            libc::S_IFSOCK => EntryType::Unsupported("a socket"),
            libc::S_IFIFO => EntryType::Unsupported("a FIFO"),
            libc::S_IFBLK => EntryType::Unsupported("a block device"),
            libc::S_IFCHR => EntryType::Unsupported("a character device"),
            _ => EntryType::Unsupported("of an unknown file type"),
        }
    }
}

/// An open directory.
pub struct Dir {
    fd: OwnedFd,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

impl Dir {
    /// Opens the directory at `path` (not following a final symlink).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let path = cstring(path)?;
        Self::open_at(libc::AT_FDCWD, &path)
    }

    fn open_at(dirfd: libc::c_int, name: &CStr) -> io::Result<Dir> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `name` is a valid NUL-terminated string; the returned fd is owned by us.
        let fd = cvt(unsafe { libc::openat(dirfd, name.as_ptr(), flags) })?;
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Opens the child directory `name`.
    pub fn open_dir(&self, name: &CStr) -> io::Result<Dir> {
        Self::open_at(self.fd.as_raw_fd(), name)
    }

    /// Opens the child file `name` for reading. `O_NONBLOCK` so that an entry swapped for a
    /// FIFO since it was listed cannot hang us; the caller checks the type with `fstat`.
    pub fn open_file(&self, name: &CStr) -> io::Result<File> {
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // SAFETY: as in `open_at`.
        let fd = cvt(unsafe { libc::openat(self.fd.as_raw_fd(), name.as_ptr(), flags) })?;
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// A second descriptor of this directory, for another thread to open its children by.
    pub fn duplicate(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// Reads the target of the child symlink `name`.
    pub fn read_link(&self, name: &CStr) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes.
            let n = unsafe { libc::readlinkat(self.fd.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if (n as usize) < buf.len() {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            buf.resize(buf.len() * 2, 0);
        }
    }

    /// `lstat` of the child `name`.
    pub fn stat(&self, name: &CStr) -> io::Result<libc::stat> {
        // SAFETY: `st` is plain old data, fully written by a successful fstatat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::fstatat(self.fd.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
        Ok(st)
    }

    /// Lists the directory: every name but `.` and `..`, with its type (from `d_type`, or
    /// `lstat` where the filesystem does not say).
    pub fn list(&self) -> io::Result<Vec<(CString, EntryType)>> {
        // fdopendir takes ownership of the descriptor it is given, so give it a duplicate.
        // SAFETY: plain descriptor calls; the DIR stream is closed below on every path.
        let dup = cvt(unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        let stream = unsafe { libc::fdopendir(dup) };
        if stream.is_null() {
            let err = io::Error::last_os_error();
            unsafe { libc::close(dup) };
            return Err(err);
        }
        let mut out = Vec::new();
        let result = loop {
            // readdir signals errors only through errno, so clear it first.
            unsafe { *libc::__errno_location() = 0 };
            let entry = unsafe { libc::readdir64(stream) };
            if entry.is_null() {
                let errno = io::Error::last_os_error();
                break if errno.raw_os_error() == Some(0) {
                    Ok(())
                } else {
                    Err(errno)
                };
            }
            // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated.
            let (name, d_type) = unsafe { (CStr::from_ptr((*entry).d_name.as_ptr()), (*entry).d_type) };
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let kind = match d_type {
                libc::DT_REG => EntryType::File,
                libc::DT_DIR => EntryType::Directory,
                libc::DT_LNK => EntryType::Symlink,
                libc::DT_UNKNOWN => match self.stat(name) {
                    Ok(st) => EntryType::from_mode(st.st_mode),
                    Err(e) => break Err(e),
                },
                _ => EntryType::from_mode(match d_type {
                    libc::DT_SOCK => libc::S_IFSOCK,
                    libc::DT_FIFO => libc::S_IFIFO,
                    libc::DT_BLK => libc::S_IFBLK,
                    libc::DT_CHR => libc::S_IFCHR,
                    _ => 0,
                }),
            };
            out.push((name.to_owned(), kind));
        };
        unsafe { libc::closedir(stream) };
        result.map(|()| out)
    }
}
