//! Read-ahead by directory. Source trees are many small files, each costing a read round trip
//! on a fresh mount. When the first file of a directory is read, the small files beside it
//! are pushed into the kernel's page cache from a thread of their own (FUSE_NOTIFY_STORE), so a
//! build, an import or a search reading them one after another finds them cached and sends no
//! request; and while files are being read, the small files of every directory listed are
//! pushed as it is listed, ahead of the reader. Only reads start it (a walk that reads nothing
//! pushes nothing), each file is pushed once, and what is pushed is bounded per directory and
//! per second.
//!
//! Over /dev/fuse the push runs on the worker that has just answered, since other workers read
//! the requests meanwhile. A ring thread of FUSE over io_uring must not: a push waits for the
//! page it fills to be unlocked, and the READ holding that lock may sit in one of the same
//! thread's ring entries, never to be answered. Pushes from a ring go to a thread of their own.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::fuse::Channel;
use crate::hash::{BlobHash, TreeHash};
use crate::store::Store;
use crate::sync::MutexExt;

/// Files larger than this are left to the kernel's own read-ahead.
pub const FILE_MAX: u64 = 256 * 1024;
/// At most this many files of one directory are pushed…
pub const DIR_MAX_FILES: usize = 256;
/// …and at most this many bytes.
pub const DIR_MAX_BYTES: u64 = 16 << 20;
/// What all directories together may push per second.
const BYTES_PER_SECOND: u64 = 512 << 20;
/// Directories and files remembered as pushed already.
const REMEMBERED: usize = 65536;
/// Reads less than this long ago make a reader worth reading ahead for.
const READING: Duration = Duration::from_millis(500);
/// One notification carries at most this much.
const CHUNK: usize = 128 * 1024;
/// Pushes waiting for the pushing thread; more are dropped (read-ahead is only ever a guess).
const QUEUED: usize = 64;

/// One file to push: its inode (which the kernel must know) and its blob.
pub struct File {
    /// The inode the kernel knows the file by.
    pub ino: u64,
    /// The blob holding its contents.
    pub blob: BlobHash,
    /// Its size.
    pub size: u64,
}

/// What read-ahead has done, and what it may still do.
pub struct ReadAhead {
    pusher: Arc<Pusher>,
    /// Directories read from already, by (directory inode, tree).
    done: Mutex<lru::LruCache<(u64, TreeHash), ()>>,
    /// When a file was last read, in milliseconds since `started`.
    last_read: AtomicU64,
    started: Instant,
    /// The pushing thread's queue, once a push had to go there (see the module doc); the
    /// thread ends when this is dropped.
    own_thread: Mutex<Option<SyncSender<Job>>>,
}

/// Files to push, and the connection to push them through.
type Job = (Arc<Channel>, Vec<File>);

/// What pushing needs, shared with the pushing thread.
struct Pusher {
    store: Store,
    /// Files pushed already, by inode.
    pushed: Mutex<lru::LruCache<u64, ()>>,
    budget: Mutex<Budget>,
}

impl ReadAhead {
    /// Read-ahead from `store`.
    pub fn new(store: Store) -> ReadAhead {
        let remembered = NonZeroUsize::new(REMEMBERED).expect("non-zero");
        ReadAhead {
            pusher: Arc::new(Pusher {
                store,
                pushed: Mutex::new(lru::LruCache::new(remembered)),
                budget: Mutex::new(Budget::new(BYTES_PER_SECOND)),
            }),
            done: Mutex::new(lru::LruCache::new(remembered)),
            last_read: AtomicU64::new(0),
            started: Instant::now(),
            own_thread: Mutex::new(None),
        }
    }

    /// A file was read just now.
    pub fn read_now(&self) {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        self.last_read.store(now, Ordering::Relaxed);
    }

    /// Whether a file was read a moment ago.
    pub fn reading(&self) -> bool {
        let last = self.last_read.load(Ordering::Relaxed);
        last > 0 && (self.started.elapsed().as_millis() as u64 + 1).saturating_sub(last) < READING.as_millis() as u64
    }

    /// Whether directory `dir` (listing `tree`) is read from for the first time: the caller
    /// then collects its files and calls [`ReadAhead::push`].
    pub fn first_read_in(&self, dir: u64, tree: TreeHash) -> bool {
        let mut done = self.done.locked();
        done.put((dir, tree), ()).is_none()
    }

    /// Pushes `files` through `channel`, each once, within the budget. Over /dev/fuse
    /// (`on_ring` false) it runs on the FUSE worker that has just answered a request: another
    /// thread than the reader's, and one already awake (a thread of its own had to be woken
    /// first, and lost the race to the reader's next read more often than not). From a ring
    /// thread it is handed to read-ahead's own thread (see the module doc).
    pub fn push(&self, channel: &Arc<Channel>, files: Vec<File>, on_ring: bool) {
        if !on_ring {
            return self.pusher.push(channel, files);
        }
        let mut own_thread = self.own_thread.locked();
        if own_thread.is_none() {
            let (queue, jobs) = std::sync::mpsc::sync_channel::<Job>(QUEUED);
            let pusher = self.pusher.clone();
            let spawned = std::thread::Builder::new()
                .name("read-ahead".into())
                .spawn(move || jobs.iter().for_each(|(channel, files)| pusher.push(&channel, files)));
            if let Err(e) = spawned {
                tracing::debug!("read-ahead: no thread to push from ({e})");
                return;
            }
            *own_thread = Some(queue);
        }
        if let Some(queue) = own_thread.as_ref()
            && let Err(TrySendError::Full(_)) = queue.try_send((channel.clone(), files))
        {
            tracing::debug!("read-ahead: {QUEUED} directories wait to be pushed; one more is skipped");
        }
    }
}

impl Pusher {
    fn push(&self, channel: &Channel, files: Vec<File>) {
        let (mut count, mut bytes) = (0, 0);
        for file in files {
            let mut pushed = self.pushed.locked();
            if pushed.put(file.ino, ()).is_some() {
                continue;
            }
            drop(pushed);
            let wait = self.budget.locked().take(file.size);
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            if !push(&self.store, channel, &file) {
                break;
            }
            count += 1;
            bytes += file.size;
        }
        if count > 0 {
            tracing::debug!("read-ahead: pushed {count} files, {bytes} bytes, into the page cache");
        }
    }
}

/// Pushes one file; false when the connection is gone.
fn push(store: &Store, channel: &Channel, file: &File) -> bool {
    let data = match std::fs::read(store.blob_path(&file.blob)) {
        Ok(data) => data,
        Err(e) => {
            tracing::debug!("read-ahead: cannot read blob of inode {}: {e}", file.ino);
            return true;
        }
    };
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        match channel.notify_store(file.ino, (i * CHUNK) as u64, chunk) {
            Ok(()) => {}
            // The kernel forgot the inode meanwhile: nothing to push it into.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return true,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return false,
            Err(e) => {
                tracing::debug!("read-ahead of inode {}: {e}", file.ino);
                return true;
            }
        }
    }
    true
}

/// A token bucket: at most `rate` bytes a second, in bursts of up to a second's worth.
struct Budget {
    rate: u64,
    tokens: u64,
    at: Instant,
}

impl Budget {
    fn new(rate: u64) -> Budget {
        Budget {
            rate,
            tokens: rate,
            at: Instant::now(),
        }
    }

    /// Takes `bytes`; returns how long to wait before using them (zero: at once).
    fn take(&mut self, bytes: u64) -> Duration {
        let now = Instant::now();
        let earned = (now.duration_since(self.at).as_secs_f64() * self.rate as f64) as u64;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(self.rate);
            self.at = now;
        }
        if self.tokens >= bytes {
            self.tokens -= bytes;
            return Duration::ZERO;
        }
        let missing = bytes - self.tokens;
        self.tokens = 0;
        Duration::from_secs_f64(missing as f64 / self.rate as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_paces_what_exceeds_a_second() {
        let mut budget = Budget::new(1 << 20);
        assert_eq!(budget.take(1 << 20), Duration::ZERO, "a second's worth at once");
        let wait = budget.take(256 << 10);
        assert!(wait >= Duration::from_millis(200), "then paced: {wait:?}");
    }
}
