//! The filesystem: an inode table over three views — named islands at the top, the forges'
//! browsing levels (`github/OWNER/REPO/REF/`, `gitlab/GROUP/…/PROJECT/-/REF/`,
//! `sourcehut/~OWNER/REPO/REF/`, a REF with `/` nested as git nests it), `by-hash/<tree hash>/` for stable paths — and the realized
//! trees beneath them, served straight from the store.
//!
//! No request waits on a thread. A lookup answers at once: an island's directory exists before
//! its contents (a `github/…/REF` lookup waits only for the one ref round trip, so a missing
//! repository or ref is ENOENT). What needs the contents of a tree still being fetched — a
//! listing, a lookup inside it — is parked until the tree is ready, answered EINTR if its
//! caller is interrupted, and EAGAIN before the kernel's request timeout (if one is in force)
//! would end the connection.
//!
//! Caching follows docs/DESIGN.md ("Mount"): inside a realized tree nothing ever changes, so
//! entries and attributes get long TTLs, negative lookups are cached, directory listings and
//! file pages are kept; the levels above change while mounted, so they get short TTLs and no
//! negative caching.
//!
//! This file holds the inodes, their attributes and the dispatch of requests; [`lookup`]
//! (with the forges' browsing rules), [`listing`], [`xattr`], [`files`] (both read paths),
//! [`wait`] (parked requests) and [`ahead`] (both read-aheads) answer the rest.

mod ahead;
mod files;
mod listing;
mod lookup;
mod wait;
mod xattr;

use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use super::fuse::abi::init;
use super::fuse::{Attr, Filesystem, InitIn, InitOut, Op, Reply, Request};
use super::islands::{Islands, Served, State};
use super::read_ahead::ReadAhead;
use super::realization::Realization;
use super::table::Table;
use super::timeout::RequestTimeout;
use crate::hash::TreeHash;
use crate::hash::tree::{Entry, Node, Object};
use crate::island::{Format, Island};
use crate::sync::{MutexExt, RwLockExt};

/// Inside realized trees: effectively forever.
const TREE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The levels above realized trees, which change while mounted.
const TOP_TTL: Duration = Duration::from_secs(1);

/// An errno.
type Errno = i32;

/// What an inode is.
#[derive(Clone, Debug)]
enum Inode {
    Root,
    /// A forge's browsing level (`github/`, `gitlab/`, `sourcehut/`) and the names looked up
    /// below it so far: the repository's path, then any prefix of refs (`release` of
    /// `release/1.2`).
    Browse(Format, Arc<[Arc<str>]>),
    ByHash,
    /// A named island's root, realized or not.
    Named(Arc<str>),
    /// A browsed ref (`github/OWNER/REPO/REF`, …), known to exist; realized or not.
    Browsed(Arc<Island>),
    /// `by-hash/<hash>`, a published tree.
    Stored(TreeHash),
    /// A node of a realized tree, and the island it belongs to (for xattrs).
    Tree {
        node: Node,
        island: Arc<Served>,
    },
}

/// One entry of a listing: its name and what it is.
type Listed = (Box<[u8]>, Inode);

/// What an inode's contents are now: there, or still on their way.
enum Content {
    Now(Inode),
    Wait(Arc<Realization>),
}

/// The root's inode (then the forges' and `by-hash`, see [`Table::new`]).
const ROOT: u64 = 1;

/// The forges whose repositories can be browsed, by their directory at the top.
const FORGES: [(&[u8], Format); 3] = [
    (b"github", Format::Github),
    (b"gitlab", Format::Gitlab),
    (b"sourcehut", Format::Sourcehut),
];

/// A forge's top browsing level.
fn forge_top(format: Format) -> Inode {
    Inode::Browse(format, Arc::from([]))
}

/// How the mount serves file reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    /// FUSE passthrough: the kernel reads the blob file itself (needs CAP_SYS_ADMIN).
    Passthrough,
    /// The daemon answers reads; the kernel keeps the pages.
    Plain,
}

/// How many entries the directories read lately may hold in all (about 100 bytes each): a
/// bound on entries, not directories, as one directory may hold a million.
const DIRECTORIES_HELD: usize = 65_536;

/// The directories read lately, most recent kept, bounded by the entries they hold: they spare
/// a lookup its store read and decode while the kernel walks a directory name by name.
struct Directories {
    lru: lru::LruCache<TreeHash, Arc<Vec<Entry>>>,
    entries: usize,
    budget: usize,
}

impl Directories {
    fn new(budget: usize) -> Directories {
        Directories {
            lru: lru::LruCache::unbounded(),
            entries: 0,
            budget,
        }
    }

    fn get(&mut self, tree: &TreeHash) -> Option<Arc<Vec<Entry>>> {
        self.lru.get(tree).cloned()
    }

    /// Keeps `entries`, dropping the least recently used to make room. The newest is always
    /// kept, even alone over the budget: the kernel walking a huge directory looks its names
    /// up one by one, and reading it again for each would cost the square of its size.
    fn put(&mut self, tree: TreeHash, entries: Arc<Vec<Entry>>) {
        self.entries += entries.len();
        if let Some(old) = self.lru.put(tree, entries) {
            self.entries -= old.len();
        }
        while self.entries > self.budget && self.lru.len() > 1 {
            match self.lru.pop_lru() {
                Some((_, old)) => self.entries -= old.len(),
                None => break,
            }
        }
    }
}

/// The filesystem.
pub struct CabFs {
    islands: Arc<Islands>,
    table: RwLock<Table<Inode>>,
    dirs: Mutex<Directories>,
    /// Passthrough opens: handle → inode.
    open: Mutex<HashMap<u64, u64>>,
    /// Blob files for reads that come without a handle (the plain path), by inode.
    blobs: Mutex<lru::LruCache<u64, Arc<File>>>,
    /// Passthrough backing ids by inode, with the number of opens using each.
    backings: Mutex<HashMap<u64, (u32, usize)>>,
    next_fh: AtomicU64,
    passthrough: AtomicBool,
    /// Whether the read path in use has been logged yet.
    read_path_logged: AtomicBool,
    timeout: RequestTimeout,
    /// How long a request may wait for a fetch (set at INIT; None: as long as it takes).
    budget: OnceLock<Option<Duration>>,
    /// Read-ahead by directory (the plain read path only).
    read_ahead: Option<ReadAhead>,
    /// Directories of lazily served trees whose files were fetched ahead already.
    fetched_dirs: Mutex<lru::LruCache<TreeHash, ()>>,
    uid: u32,
    gid: u32,
    /// The connection, for notifications outside any request (set once mounted).
    notify: OnceLock<Arc<super::fuse::Channel>>,
    /// Test hook (`CAB_FAILPOINT=mount-panic`): a lookup of [`PANIC_NAME`] panics, as a bug
    /// in a handler would.
    panic_hook: bool,
}

/// The name whose lookup panics under `CAB_FAILPOINT=mount-panic`.
const PANIC_NAME: &[u8] = b"cab-failpoint-panic";

impl CabFs {
    /// A filesystem serving `islands` as `options` say.
    pub fn new(islands: Arc<Islands>, options: &super::Options) -> CabFs {
        let read_path = options.read_path;
        let limits = islands.realizer().limits();
        let timeout = RequestTimeout::read(options.request_timeout, limits.time + limits.stall);
        let read_ahead = match read_path {
            ReadPath::Plain if options.read_ahead => Some(ReadAhead::new(islands.realizer().store().clone())),
            _ => None,
        };
        let [github, gitlab, sourcehut] = FORGES.map(|(name, format)| (name, forge_top(format)));
        let table = Table::new(
            Inode::Root,
            [github, gitlab, sourcehut, (&b"by-hash"[..], Inode::ByHash)],
        );
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        CabFs {
            islands,
            table: RwLock::new(table),
            dirs: Mutex::new(Directories::new(DIRECTORIES_HELD)),
            open: Mutex::default(),
            blobs: Mutex::new(lru::LruCache::new(NonZeroUsize::new(256).expect("non-zero"))),
            backings: Mutex::default(),
            next_fh: AtomicU64::new(1),
            passthrough: AtomicBool::new(read_path == ReadPath::Passthrough),
            read_path_logged: AtomicBool::new(false),
            timeout,
            budget: OnceLock::new(),
            read_ahead,
            fetched_dirs: Mutex::new(lru::LruCache::new(NonZeroUsize::new(16384).expect("non-zero"))),
            uid,
            gid,
            panic_hook: std::env::var_os("CAB_FAILPOINT").is_some_and(|v| v == "mount-panic"),
            notify: OnceLock::new(),
        }
    }

    /// The connection notifications go out on.
    pub fn connected(&self, channel: Arc<super::fuse::Channel>) {
        let _ = self.notify.set(channel);
    }

    /// The named island `name` moved to another tree ([`Islands::reload`]). An image mounted
    /// there is replaced by the handover; through FUSE, the name gets a new inode (the kernel
    /// is told to forget its entry), while the old inode stays on the old tree for whoever
    /// holds it — a shell inside, an open file.
    pub fn island_moved(&self, name: &str, old: Option<Arc<Served>>) {
        if self
            .islands
            .handover()
            .is_some_and(|h| h.is_mounted(std::path::Path::new(name)))
        {
            return;
        }
        let Some(old) = old else { return };
        let kind = Inode::Tree {
            node: old.root.clone(),
            island: old,
        };
        let detached = self.table.write_locked().detach(ROOT, name.as_bytes(), kind);
        if detached.is_some()
            && let Some(channel) = self.notify.get()
            && let Err(e) = channel.notify_inval_entry(ROOT, name.as_bytes())
        {
            tracing::debug!("cannot tell the kernel that {name} moved: {e}");
        }
    }

    /// How many inodes the table holds (for tests and statfs).
    pub fn inodes(&self) -> usize {
        self.table.read_locked().len()
    }

    fn kind(&self, ino: u64) -> Option<Inode> {
        self.table.read_locked().get(ino).cloned()
    }

    /// The inode for `name` in `parent`, counted as one more kernel reference.
    fn look_up(&self, parent: u64, name: &[u8], make: impl FnOnce() -> Inode) -> u64 {
        self.table.write_locked().look_up(parent, name, make)
    }

    /// Tells the kernel about `ino`; if it did not take the entry, the reference is dropped.
    fn answer_entry(&self, reply: Reply, ino: u64, kind: &Inode) {
        let ttl = Self::ttl(kind);
        if !reply.entry(&self.attr(ino, kind), ttl, ttl) {
            self.table.write_locked().forget(ino, 1);
        }
    }

    /// Says once which read path serves files (tests and users want to know).
    fn log_read_path(&self, message: &str) {
        if !self.read_path_logged.swap(true, Ordering::Relaxed) {
            tracing::info!("{message}");
        }
    }

    /// A directory of `island`'s tree: its entries, decoded once and kept.
    fn entries(&self, tree: &TreeHash, island: &Served) -> Result<Arc<Vec<Entry>>, Errno> {
        if let Some(entries) = self.dirs.locked().get(tree) {
            return Ok(entries);
        }
        // A tree served from the remote is answered from its listing in memory until the
        // store has it.
        if let Some(entries) = island.contents.directory(tree) {
            return Ok(entries);
        }
        let entries = match self.islands.realizer().store().read_object(tree) {
            Ok(Object::Directory(entries)) => Arc::new(entries),
            Ok(Object::Root(_)) => return Err(libc::ENOTDIR),
            Err(e) => {
                tracing::error!("cannot read directory {tree}: {e:#}");
                return Err(libc::EIO);
            }
        };
        self.dirs.locked().put(*tree, entries.clone());
        Ok(entries)
    }

    /// What an island root looks like without waiting: its root node once realized, else a
    /// directory (its contents are on their way).
    fn shown(&self, kind: &Inode) -> Inode {
        let ready = match kind {
            Inode::Named(name) => self.islands.ready_named(name),
            Inode::Browsed(island) => self.islands.ready_island(island),
            _ => None,
        };
        match ready {
            Some(ready) => Inode::Tree {
                node: ready.root.clone(),
                island: ready,
            },
            None => kind.clone(),
        }
    }

    fn attr(&self, ino: u64, kind: &Inode) -> Attr {
        let (mode, size, nlink) = match self.shown(kind) {
            Inode::Tree {
                node: Node::File { executable, size, .. },
                ..
            } => (libc::S_IFREG | if executable { 0o555 } else { 0o444 }, size, 1),
            Inode::Tree {
                node: Node::Symlink { target },
                ..
            } => (libc::S_IFLNK | 0o777, target.len() as u64, 1),
            _ => (libc::S_IFDIR | 0o555, 4096, 2),
        };
        // Like the Nix store: contents are timeless, so every time is the epoch plus one second.
        // The listings above realized trees grow while mounted; their mtime says how much.
        Attr {
            ino,
            size,
            blocks: size.div_ceil(512),
            time: 1 + self.listing_generation(ino, kind),
            mode,
            nlink,
            uid: self.uid,
            gid: self.gid,
            blksize: 4096,
        }
    }

    /// A number that changes whenever the listing of a top-level directory changes.
    fn listing_generation(&self, ino: u64, kind: &Inode) -> u64 {
        match kind {
            Inode::ByHash => {
                use std::os::unix::fs::MetadataExt;
                let roots = self.islands.realizer().store().root().join("roots");
                std::fs::metadata(roots)
                    .map(|m| m.mtime_nsec() as u64 / 1000 + m.mtime() as u64 * 1_000_000)
                    .unwrap_or(0)
            }
            Inode::Browse(format, path) => {
                let looked_up = self.table.read_locked().children(ino).len() as u64;
                // Below a repository the listing is the forge's: the mtime moves on with each
                // answer, and when the last grows too old, so that the kernel drops its copy
                // and a new branch shows up.
                let answers = lookup::listing_key(*format, path).map_or(0, |key| self.islands.refs().generation(&key));
                looked_up + (answers << 20)
            }
            _ => 0,
        }
    }

    fn ttl(kind: &Inode) -> Duration {
        if matches!(kind, Inode::Tree { .. }) {
            TREE_TTL
        } else {
            TOP_TTL
        }
    }

    /// The contents of an inode: an island root is resolved to its tree, or to the realization
    /// that will bring it.
    fn content(&self, ino: u64) -> Result<Content, Errno> {
        let kind = self.kind(ino).ok_or(libc::ENOENT)?;
        let state = match &kind {
            Inode::Named(name) => self.islands.get_named(name).ok_or(libc::ENOENT)?,
            Inode::Browsed(island) => self.islands.get_island(island),
            Inode::Stored(hash) => {
                return match self.islands.stored_tree(*hash) {
                    Ok(Some(ready)) => Ok(Content::Now(Inode::Tree {
                        node: ready.root.clone(),
                        island: ready,
                    })),
                    Ok(None) => Err(libc::ENOENT),
                    Err(e) => {
                        tracing::error!("cannot read stored tree {hash}: {e:#}");
                        Err(libc::EIO)
                    }
                };
            }
            _ => return Ok(Content::Now(kind)),
        };
        match state {
            State::Ready(ready) => Ok(Content::Now(Inode::Tree {
                node: ready.root.clone(),
                island: ready,
            })),
            State::Pending(realization) => Ok(Content::Wait(realization)),
            // Logged once when it failed; each request only gets the errno. The island's
            // directory exists (it is named, or its ref was found): its contents failed.
            State::Failed(_) => Err(libc::EIO),
        }
    }
}

impl Filesystem for CabFs {
    fn init(&self, offered: &InitIn) -> InitOut {
        let mut flags =
            init::ASYNC_READ | init::DO_READDIRPLUS | init::CACHE_SYMLINKS | init::PARALLEL_DIROPS | init::MAX_PAGES;
        let mut out = InitOut {
            max_readahead: offered.max_readahead,
            max_background: 64,
            congestion_threshold: 48,
            max_write: 128 * 1024,
            max_pages: 256,
            ..InitOut::default()
        };
        if self.passthrough.load(Ordering::Relaxed) {
            if offered.flags & init::PASSTHROUGH != 0 {
                flags |= init::PASSTHROUGH;
                out.max_stack_depth = 1;
            } else {
                tracing::info!("FUSE passthrough is not available from this kernel; serving reads ourselves");
                self.passthrough.store(false, Ordering::Relaxed);
            }
        }
        let offers_timeout = offered.flags & init::REQUEST_TIMEOUT != 0;
        if offers_timeout && let Some(declared) = self.timeout.declared() {
            flags |= init::REQUEST_TIMEOUT;
            out.request_timeout = declared;
        }
        out.flags = flags;
        let in_force = self.timeout.in_force(offers_timeout);
        let budget = in_force.map(RequestTimeout::budget);
        match in_force {
            Some(limit) if self.timeout.cuts_waits(limit) => tracing::warn!(
                "the kernel ends FUSE requests after {} s ({}), sooner than a fetch may take ({} s: \
                 --max-time and --stall-timeout): a request waiting longer than {:.1} s for a fetch is \
                 answered EAGAIN (try again)",
                limit.as_secs(),
                match (offers_timeout, self.timeout.asked) {
                    (true, Some(asked)) if self.timeout.declared() == Some(asked) => "--request-timeout",
                    (true, _) => "/proc/sys/fs/fuse/max_request_timeout caps what cab may declare",
                    (false, _) => "/proc/sys/fs/fuse/default_request_timeout, and this kernel takes no other",
                },
                self.timeout.waits.as_secs(),
                budget.unwrap_or_default().as_secs_f64()
            ),
            Some(limit) => tracing::info!(
                "declared a FUSE request timeout of {} s, which covers the longest fetch (--max-time and \
                 --stall-timeout): requests wait for their trees",
                limit.as_secs()
            ),
            None => {}
        }
        let _ = self.budget.set(budget);
        out
    }

    fn forget(&self, nodes: &[(u64, u64)]) {
        let mut table = self.table.write_locked();
        for &(ino, n) in nodes {
            table.forget(ino, n);
        }
        drop(table);
        let mut blobs = self.blobs.locked();
        for &(ino, _) in nodes {
            blobs.pop(&ino);
        }
    }

    fn handle(self: &Arc<Self>, request: Request<'_>, reply: Reply) {
        let ino = request.nodeid;
        match request.op {
            Op::Lookup { name } => self.lookup(ino, name.to_vec(), reply),
            Op::GetAttr => match self.kind(ino) {
                Some(kind) => reply.attr(&self.attr(ino, &kind), Self::ttl(&self.shown(&kind))),
                None => reply.error(libc::ENOENT),
            },
            Op::ReadLink => self.readlink(ino, reply),
            // Only passthrough opens a file (the plain path refuses open), and its backing
            // must exist first.
            Op::Open { flags } if self.passthrough.load(Ordering::Relaxed) => {
                self.with_contents(ino, reply, move |fs, reply| fs.open(ino, flags, reply))
            }
            Op::Open { flags } => self.open(ino, flags, reply),
            Op::Read { offset, size } => {
                self.with_contents(ino, reply, move |fs, reply| fs.read(ino, offset, size, reply))
            }
            Op::Release { fh } => self.release(fh, reply),
            // Refused, so that the kernel stops asking: it then keeps every directory's
            // listing and pages, and a warm walk sends no opendir/releasedir pair per
            // directory. Listings above the realized trees can change; their mtime changes
            // with them (see `attr`), which makes the kernel drop its cached copy.
            Op::OpenDir => reply.error(libc::ENOSYS),
            Op::ReleaseDir => reply.ok(),
            Op::ReadDir { offset, size } => self.readdir(ino, offset, size, false, reply),
            Op::ReadDirPlus { offset, size } => self.readdir(ino, offset, size, true, reply),
            Op::StatFs => reply.statfs(self.inodes() as u64, 4096, 255),
            Op::GetXattr { name, size } => self.xattr(ino, Some(name.to_vec()), size, reply),
            Op::ListXattr { size } => self.xattr(ino, None, size, reply),
            Op::Access { mask } => {
                if mask as i32 & libc::W_OK != 0 {
                    reply.error(libc::EROFS)
                } else {
                    reply.ok()
                }
            }
            _ => reply.error(libc::ENOSYS),
        }
    }
}
