//! Read-ahead for a walk over a tree that is not in the page cache.
//!
//! A walk reads its files one at a time, in NAR order. From a cold disk each read waits for its
//! own I/O, so a walk of small files runs at the disk's latency rather than its bandwidth: a
//! cold `cab hash` of 100k files took 8.5× its warm time, and realizing a tree larger than the
//! page cache keeps reads back from disk every file the fetcher just wrote. Once the walk meets
//! a file that is not cached, a helper thread asks the kernel for the files of each directory
//! the walk enters (`posix_fadvise(WILLNEED)` queues the reads without waiting for them), so
//! the walk finds them arrived or on their way. A warm walk never starts it: the probe is the
//! file's first read, made with `RWF_NOWAIT`, which fails rather than wait for the disk.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

/// Bytes of each file asked for: whole small files; a large file's later bytes come from the
/// kernel's own read-ahead as the walk reads it.
const AHEAD_BYTES: libc::off_t = 256 * 1024;
/// Files per request to the helper, and requests it may have waiting: with [`AHEAD_BYTES`], at
/// most 256 MiB asked for ahead of the walk, however large a directory.
const BATCH: usize = 128;
const WAITING: usize = 8;

/// What the first read of a file found.
pub enum Probe {
    /// Bytes read from the page cache.
    Read(usize),
    /// The bytes are not cached (or the file ended): read normally.
    Cold,
    /// This filesystem cannot say: read normally, and stop asking.
    Unsupported,
}

/// Reads into `buf` from `file`'s current position only what the page cache holds.
pub fn read_cached(file: &File, buf: &mut [u8]) -> io::Result<Probe> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, valid and writable for its length; offset -1 reads at
    // (and advances) the file's position, as read(2) does.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT) };
    if n > 0 {
        return Ok(Probe::Read(n as usize));
    }
    if n == 0 {
        return Ok(Probe::Cold);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) => Ok(Probe::Cold),
        Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => Ok(Probe::Unsupported),
        Some(libc::EINTR) => Ok(Probe::Cold),
        _ => Err(err),
    }
}

/// The helper thread and the way to it. Dropping it stops the thread.
pub struct Prefetcher {
    requests: Option<SyncSender<(OwnedFd, Vec<CString>)>>,
    thread: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts the helper; `None` where no thread can be started (the walk goes on without).
    pub fn start() -> Option<Prefetcher> {
        let (requests, received) = sync_channel(WAITING);
        let thread = std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || serve(received))
            .ok()?;
        Some(Prefetcher {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Asks for the files `names` of the directory `dir`. Never waits: when the helper is this
    /// far behind, the walk reads them itself.
    pub fn ask(&self, dir: &super::dir::Dir, names: Vec<CString>) {
        let Some(requests) = &self.requests else { return };
        for chunk in names.chunks(BATCH) {
            let Ok(fd) = dir.duplicate() else { return };
            match requests.try_send((fd, chunk.to_vec())) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(requests: Receiver<(OwnedFd, Vec<CString>)>) {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    for (dir, names) in requests {
        for name in names {
            // SAFETY: `name` is NUL-terminated and `dir` open; the descriptor is closed below.
            // A file gone or changed since it was listed is the walk's business, not ours.
            let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
            if fd >= 0 {
                unsafe {
                    libc::posix_fadvise(fd, 0, AHEAD_BYTES, libc::POSIX_FADV_WILLNEED);
                    libc::close(fd);
                }
            }
        }
    }
}
