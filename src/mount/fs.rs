//! The filesystem: an inode table over three views — named islands at the top, the forges'
//! browsing levels (`github/OWNER/REPO/REF/`, `gitlab/GROUP/…/PROJECT/-/REF/`,
//! `sourcehut/~OWNER/REPO/REF/`), `by-hash/<tree hash>/` for stable paths — and the realized
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

use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use super::fuse::abi::{fopen, init};
use super::fuse::{Attr, Dirents, Filesystem, InitIn, InitOut, Op, Parked, Reply, Request};
use super::islands::{Failure, Flight, Islands, LastFailure, Ready, State};
use super::prefetch::{self, Prefetcher};
use super::table::Table;
use super::timeout::RequestTimeout;
use crate::hash::tree::{Entry, Node, Object};
use crate::hash::{BlobHash, TreeHash};
use crate::island::{Config, Format, Island};
use crate::sync::{MutexExt, RwLockExt};

/// Inside realized trees: effectively forever.
const TREE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The levels above realized trees, which change while mounted.
const TOP_TTL: Duration = Duration::from_secs(1);

/// An errno.
type Errno = i32;

/// What an inode is.
#[derive(Clone, Debug)]
enum Kind {
    Root,
    /// A forge's browsing level (`github/`, `gitlab/`, `sourcehut/`) and the names looked up
    /// below it so far, before the ref.
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
        island: Arc<Ready>,
    },
}

/// One entry of a listing: its name and what it is.
type Listed = (Box<[u8]>, Kind);

/// What an inode's contents are now: there, or still on their way.
enum Content {
    Now(Kind),
    Wait(Arc<Flight>),
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
fn forge_top(format: Format) -> Kind {
    Kind::Browse(format, Arc::from([]))
}

/// How the mount serves file reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    /// FUSE passthrough: the kernel reads the blob file itself (needs CAP_SYS_ADMIN).
    Passthrough,
    /// The daemon answers reads; the kernel keeps the pages.
    Plain,
}

/// The filesystem.
pub struct CabFs {
    islands: Arc<Islands>,
    table: RwLock<Table<Kind>>,
    dirs: Mutex<lru::LruCache<TreeHash, Arc<Vec<Entry>>>>,
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
    prefetch: Option<Prefetcher>,
    /// Directories of lazily served trees whose files were fetched ahead already.
    fetched_dirs: Mutex<lru::LruCache<TreeHash, ()>>,
    uid: u32,
    gid: u32,
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
        let prefetch = match read_path {
            ReadPath::Plain if options.read_ahead => Some(Prefetcher::new(islands.realizer().store().clone())),
            _ => None,
        };
        let [github, gitlab, sourcehut] = FORGES.map(|(name, format)| (name, forge_top(format)));
        let table = Table::new(Kind::Root, [github, gitlab, sourcehut, (&b"by-hash"[..], Kind::ByHash)]);
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        CabFs {
            islands,
            table: RwLock::new(table),
            dirs: Mutex::new(lru::LruCache::new(NonZeroUsize::new(4096).expect("non-zero"))),
            open: Mutex::default(),
            blobs: Mutex::new(lru::LruCache::new(NonZeroUsize::new(256).expect("non-zero"))),
            backings: Mutex::default(),
            next_fh: AtomicU64::new(1),
            passthrough: AtomicBool::new(read_path == ReadPath::Passthrough),
            read_path_logged: AtomicBool::new(false),
            timeout,
            budget: OnceLock::new(),
            prefetch,
            fetched_dirs: Mutex::new(lru::LruCache::new(NonZeroUsize::new(16384).expect("non-zero"))),
            uid,
            gid,
            panic_hook: std::env::var_os("CAB_FAILPOINT").is_some_and(|v| v == "mount-panic"),
        }
    }

    /// How many inodes the table holds (for tests and statfs).
    pub fn inodes(&self) -> usize {
        self.table.read_locked().len()
    }

    fn kind(&self, ino: u64) -> Option<Kind> {
        self.table.read_locked().get(ino).cloned()
    }

    /// The inode for `name` in `parent`, counted as one more kernel reference.
    fn look_up(&self, parent: u64, name: &[u8], make: impl FnOnce() -> Kind) -> u64 {
        self.table.write_locked().look_up(parent, name, make)
    }

    /// Tells the kernel about `ino`; if it did not take the entry, the reference is dropped.
    fn answer_entry(&self, reply: Reply, ino: u64, kind: &Kind) {
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
    fn entries(&self, tree: &TreeHash, island: &Ready) -> Result<Arc<Vec<Entry>>, Errno> {
        if let Some(entries) = self.dirs.locked().get(tree) {
            return Ok(entries.clone());
        }
        // A tree served from the remote is answered from its listing in memory until the
        // store has it.
        if let Some(entries) = island.lazy.as_ref().and_then(|lazy| lazy.unwritten_directory(tree)) {
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
    fn shown(&self, kind: &Kind) -> Kind {
        let ready = match kind {
            Kind::Named(name) => self.islands.ready_named(name),
            Kind::Browsed(island) => self.islands.ready_island(island),
            _ => None,
        };
        match ready {
            Some(ready) => Kind::Tree {
                node: ready.root.clone(),
                island: ready,
            },
            None => kind.clone(),
        }
    }

    fn attr(&self, ino: u64, kind: &Kind) -> Attr {
        let (mode, size, nlink) = match self.shown(kind) {
            Kind::Tree {
                node: Node::File { executable, size, .. },
                ..
            } => (libc::S_IFREG | if executable { 0o555 } else { 0o444 }, size, 1),
            Kind::Tree {
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
    fn listing_generation(&self, ino: u64, kind: &Kind) -> u64 {
        match kind {
            Kind::ByHash => {
                use std::os::unix::fs::MetadataExt;
                let roots = self.islands.realizer().store().root().join("roots");
                std::fs::metadata(roots)
                    .map(|m| m.mtime_nsec() as u64 / 1000 + m.mtime() as u64 * 1_000_000)
                    .unwrap_or(0)
            }
            Kind::Browse(..) => {
                let table = self.table.read_locked();
                table.children(ino).len() as u64
            }
            _ => 0,
        }
    }

    fn ttl(kind: &Kind) -> Duration {
        if matches!(kind, Kind::Tree { .. }) {
            TREE_TTL
        } else {
            TOP_TTL
        }
    }

    /// The contents of an inode: an island root is resolved to its tree, or to the flight
    /// that will bring it.
    fn content(&self, ino: u64) -> Result<Content, Errno> {
        let kind = self.kind(ino).ok_or(libc::ENOENT)?;
        let state = match &kind {
            Kind::Named(name) => self.islands.get_named(name).ok_or(libc::ENOENT)?,
            Kind::Browsed(island) => self.islands.get_island(island),
            Kind::Stored(hash) => {
                return match self.islands.stored_tree(*hash) {
                    Ok(Some(ready)) => Ok(Content::Now(Kind::Tree {
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
            State::Ready(ready) => Ok(Content::Now(Kind::Tree {
                node: ready.root.clone(),
                island: ready,
            })),
            State::Pending(flight) => Ok(Content::Wait(flight)),
            // Logged once when it failed; each request only gets the errno. The island's
            // directory exists (it is named, or its ref was found): its contents failed.
            State::Failed(_) => Err(libc::EIO),
        }
    }

    /// Parks `reply` until `flight` has ended (or only learned its commit, with `rev_only`),
    /// then runs `then` with it; a failed flight answers EIO (ENOENT for what does not exist,
    /// where only its commit was awaited). Bounded by the request budget where the kernel has
    /// one.
    fn wait(
        self: &Arc<Self>,
        flight: Arc<Flight>,
        reply: Reply,
        rev_only: bool,
        then: impl FnOnce(&Arc<CabFs>, Reply) + Send + 'static,
    ) {
        self.wait_or(flight, reply, rev_only, then, move |_, reply, failure| {
            reply.error(if rev_only && failure.not_found() {
                libc::ENOENT
            } else {
                libc::EIO
            })
        });
    }

    /// [`CabFs::wait`], answering a failed flight with `failed`.
    fn wait_or(
        self: &Arc<Self>,
        flight: Arc<Flight>,
        reply: Reply,
        rev_only: bool,
        then: impl FnOnce(&Arc<CabFs>, Reply) + Send + 'static,
        failed: impl FnOnce(&Arc<CabFs>, Reply, &Failure) + Send + 'static,
    ) {
        let parked = self.park(reply);
        let fs = self.clone();
        let watched = flight.clone();
        let resume = move || {
            if let Some(reply) = parked.take() {
                match watched.failure() {
                    Some(failure) => failed(&fs, reply, &failure),
                    None => then(&fs, reply),
                }
            }
        };
        if rev_only {
            flight.when_rev_known(resume);
        } else {
            flight.when_done(resume);
        }
    }

    /// Parks `reply` (no thread holds it; an interrupt answers it EINTR), answered EAGAIN
    /// if it is still waiting when the request budget runs out.
    fn park(&self, reply: Reply) -> Parked {
        let parked = reply.park();
        if let Some(budget) = self.budget.get().copied().flatten() {
            let timer = parked.clone();
            self.islands.runtime().spawn(async move {
                tokio::time::sleep(budget).await;
                if let Some(reply) = timer.take() {
                    tracing::warn!(
                        "a request waited {:.1} s for a fetch that is still running; answered \
                         EAGAIN (try again) before the kernel's FUSE request timeout would end the mount",
                        budget.as_secs_f64()
                    );
                    reply.error(libc::EAGAIN);
                }
            });
        }
        parked
    }

    /// The file behind `ino`, once its contents are here: a file of a tree served lazily is
    /// fetched first (the request parked meanwhile), then `then` runs with the reply. Answers
    /// EIO itself when the fetch fails.
    fn with_contents(self: &Arc<Self>, ino: u64, reply: Reply, then: impl FnOnce(&Arc<CabFs>, Reply) + Send + 'static) {
        let lazy = match self.content(ino) {
            Ok(Content::Now(Kind::Tree {
                node: Node::File { blob, size, .. },
                island,
            })) => island
                .lazy
                .clone()
                .filter(|l| !l.present(&blob, size))
                .map(|l| (l, blob, size)),
            _ => None,
        };
        let Some((lazy, blob, size)) = lazy else {
            return then(self, reply);
        };
        self.lazy_read_ahead(ino);
        let parked = self.park(reply);
        let fs = self.clone();
        lazy.when_present(self.islands.runtime(), blob, size, move |fetched| {
            if let Some(reply) = parked.take() {
                match fetched {
                    Ok(()) => then(&fs, reply),
                    Err(()) => reply.error(libc::EIO),
                }
            }
        });
    }

    fn lookup(self: &Arc<Self>, parent: u64, name: Vec<u8>, reply: Reply) {
        let Some(parent_kind) = self.kind(parent) else {
            return reply.error(libc::ENOENT);
        };
        if self.panic_hook && name == PANIC_NAME {
            panic!(
                "CAB_FAILPOINT=mount-panic: a lookup of {}",
                String::from_utf8_lossy(PANIC_NAME)
            );
        }
        let text = std::str::from_utf8(&name).ok();
        match parent_kind {
            Kind::Root => match &name[..] {
                b"by-hash" => self.answer_entry(reply, self.look_up(ROOT, &name, || Kind::ByHash), &Kind::ByHash),
                forge if let Some((_, format)) = FORGES.iter().find(|(n, _)| *n == forge) => {
                    let kind = forge_top(*format);
                    self.answer_entry(reply, self.look_up(ROOT, &name, || kind.clone()), &kind)
                }
                _ => {
                    let Some(text) = text.filter(|t| self.islands.has_name(t)) else {
                        return reply.error(libc::ENOENT);
                    };
                    // The directory exists before its contents: start the realization and
                    // answer now.
                    let _ = self.islands.get_named(text);
                    let kind = Kind::Named(text.into());
                    let ino = self.look_up(ROOT, &name, || kind.clone());
                    self.answer_entry(reply, ino, &kind);
                }
            },
            Kind::Browse(format, path) => match text.map(|t| browse_step(format, &path, t)) {
                Some(Step::Deeper) => {
                    let mut deeper = path.to_vec();
                    deeper.push(text.unwrap_or_default().into());
                    let kind = Kind::Browse(format, deeper.into());
                    let ino = self.look_up(parent, &name, || kind.clone());
                    self.answer_entry(reply, ino, &kind);
                }
                Some(Step::Ref(island)) => match self.islands.get_island(&island) {
                    State::Failed(failure) => reply.error(if failure.not_found() { libc::ENOENT } else { libc::EIO }),
                    State::Pending(flight) if flight.rev().is_none() => {
                        // One round trip tells whether the ref exists.
                        self.wait(flight, reply, true, move |fs, reply| fs.lookup(parent, name, reply));
                    }
                    State::Ready(_) | State::Pending(_) => {
                        let kind = Kind::Browsed(Arc::new(island));
                        let ino = self.look_up(parent, &name, || kind.clone());
                        self.answer_entry(reply, ino, &kind);
                    }
                },
                Some(Step::Nothing) | None => reply.error(libc::ENOENT),
            },
            Kind::ByHash => {
                let Some(hash) = text.and_then(|t| t.parse::<TreeHash>().ok()) else {
                    return reply.error(libc::ENOENT);
                };
                match self.islands.realizer().store().published(&hash) {
                    Ok(Some(_)) => {
                        let kind = Kind::Stored(hash);
                        let ino = self.look_up(parent, &name, || kind.clone());
                        self.answer_entry(reply, ino, &kind);
                    }
                    Ok(None) => reply.error(libc::ENOENT),
                    Err(_) => reply.error(libc::EIO),
                }
            }
            Kind::Named(_) | Kind::Browsed(_) | Kind::Stored(_) => match self.content(parent) {
                Ok(Content::Now(kind)) => self.lookup_in_tree(parent, &kind, &name, reply),
                Ok(Content::Wait(flight)) => {
                    self.wait(flight, reply, false, move |fs, reply| fs.lookup(parent, name, reply))
                }
                Err(e) => reply.error(e),
            },
            kind @ Kind::Tree { .. } => self.lookup_in_tree(parent, &kind, &name, reply),
        }
    }

    fn lookup_in_tree(&self, parent: u64, parent_kind: &Kind, name: &[u8], reply: Reply) {
        let Kind::Tree {
            node: Node::Directory { tree },
            island,
        } = parent_kind
        else {
            return reply.error(libc::ENOTDIR);
        };
        let entries = match self.entries(tree, island) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        match entries.binary_search_by(|e| e.name.as_slice().cmp(name)) {
            Ok(at) => {
                let kind = Kind::Tree {
                    node: entries[at].node.clone(),
                    island: island.clone(),
                };
                let ino = self.look_up(parent, name, || kind.clone());
                self.answer_entry(reply, ino, &kind);
            }
            // A negative entry with a long TTL: the kernel remembers the absence.
            Err(_) => reply.negative_entry(TREE_TTL),
        }
    }

    /// The entries of a directory: (name, kind), in order.
    fn list(&self, ino: u64, kind: Kind) -> Result<Vec<Listed>, Errno> {
        Ok(match kind {
            Kind::Tree {
                node: Node::Directory { tree },
                island,
            } => self
                .entries(&tree, &island)?
                .iter()
                .map(|entry| {
                    let kind = Kind::Tree {
                        node: entry.node.clone(),
                        island: island.clone(),
                    };
                    (entry.name.as_slice().into(), kind)
                })
                .collect(),
            Kind::Tree { .. } => return Err(libc::ENOTDIR),
            Kind::Root => {
                let mut out: Vec<Listed> = FORGES
                    .iter()
                    .map(|(name, format)| (Box::from(*name), forge_top(*format)))
                    .collect();
                out.push((b"by-hash"[..].into(), Kind::ByHash));
                // Named islands are listed without realizing them: listing must stay cheap.
                for name in self.islands.names() {
                    let kind = Kind::Named(name.as_str().into());
                    out.push((name.into_bytes().into(), kind));
                }
                out
            }
            Kind::ByHash => {
                let roots = self.islands.realizer().store().roots().map_err(|_| libc::EIO)?;
                roots
                    .into_iter()
                    .map(|hash| (hash.to_string().into_bytes().into(), Kind::Stored(hash)))
                    .collect()
            }
            // Browsing levels list what the kernel has looked up and still holds.
            Kind::Browse(..) => {
                let table = self.table.read_locked();
                table
                    .children(ino)
                    .into_iter()
                    .map(|(_, name, kind)| (name, kind))
                    .collect()
            }
            Kind::Named(_) | Kind::Browsed(_) | Kind::Stored(_) => unreachable!("resolved by content()"),
        })
    }

    fn readdir(self: &Arc<Self>, ino: u64, offset: u64, size: u32, plus: bool, reply: Reply) {
        let kind = match self.content(ino) {
            Ok(Content::Now(kind)) => kind,
            Ok(Content::Wait(flight)) => {
                return self.wait(flight, reply, false, move |fs, reply| {
                    fs.readdir(ino, offset, size, plus, reply)
                });
            }
            Err(e) => return reply.error(e),
        };
        let here = self.kind(ino).unwrap_or(Kind::Root);
        let children = match self.list(ino, kind) {
            Ok(children) => children,
            Err(e) => return reply.error(e),
        };
        let mut dirents = Dirents::new(size);
        // While something is reading, the files of a directory it lists are pushed ahead of
        // it (see `prefetch`); a walk that reads nothing pushes nothing.
        let mut listed_files = Vec::new();
        let read_ahead = plus && self.reading();
        let dots = [(&b"."[..], here.clone()), (&b".."[..], here)];
        let all = dots
            .into_iter()
            .map(|(n, k)| (n.into(), k, true))
            .chain(children.into_iter().map(|(n, k)| (n, k, false)));
        for (i, (name, kind, dot)) in all.enumerate().skip(offset as usize) {
            let next = (i + 1) as u64;
            let full = if plus {
                // Each entry given with its attributes is a reference the kernel holds (but
                // for `.` and `..`), so it is counted only once it surely fits.
                if !dirents.fits(&name, true) {
                    true
                } else {
                    let child = if dot {
                        ino
                    } else {
                        self.look_up(ino, &name, || kind.clone())
                    };
                    if read_ahead
                        && !dot
                        && let Kind::Tree {
                            node: Node::File { blob, size, .. },
                            ..
                        } = &kind
                        && (1..=prefetch::FILE_MAX).contains(size)
                    {
                        listed_files.push(prefetch::File {
                            ino: child,
                            blob: *blob,
                            size: *size,
                        });
                    }
                    !dirents.add_plus(&self.attr(child, &kind), Self::ttl(&kind), next, &name)
                }
            } else {
                let table = self.table.read_locked();
                // Plain readdir gives no reference: an inode number that is not in the table
                // is shown as a stable stand-in.
                let child = if dot {
                    ino
                } else {
                    table.find(ino, &name).unwrap_or_else(|| stand_in_ino(ino, &name))
                };
                !dirents.add(child, next, self.attr(child, &kind).dirent_type(), &name)
            };
            if full {
                break;
            }
        }
        let channel = reply.channel().clone();
        dirents.send(reply);
        if let Some(prefetcher) = self.prefetch.as_ref().filter(|_| !listed_files.is_empty()) {
            listed_files.truncate(prefetch::DIR_MAX_FILES);
            prefetcher.push(&channel, listed_files);
        }
    }

    /// Whether files were read a moment ago (read-ahead is for readers, not for walks).
    fn reading(&self) -> bool {
        self.prefetch.as_ref().is_some_and(|p| p.reading()) && !self.passthrough.load(Ordering::Relaxed)
    }

    fn xattrs(&self, kind: &Kind) -> Vec<(&'static str, Vec<u8>)> {
        let Kind::Tree { node, island } = kind else {
            return Vec::new();
        };
        let hash = crate::hash::tree::root_hash(node);
        let mut out = vec![("user.cab.hash", hash.to_string().into_bytes())];
        if let Some(rev) = &island.rev {
            out.push(("user.cab.rev", rev.clone().into_bytes()));
        }
        if island.locked.format != Format::Fs || island.locked.fs_path().is_some() {
            out.push(("user.cab.island", island.locked.to_string().into_bytes()));
        }
        // A tree served while its files still arrive is not in the store yet.
        let complete = island.lazy.as_ref().is_none_or(|lazy| lazy.is_complete());
        out.push(("user.cab.complete", if complete { &b"yes"[..] } else { b"no" }.to_vec()));
        out
    }

    fn xattr(self: &Arc<Self>, ino: u64, name: Option<Vec<u8>>, size: u32, reply: Reply) {
        let kind = match self.content(ino) {
            Ok(Content::Now(kind)) => kind,
            Ok(Content::Wait(flight)) => {
                let again = name.clone();
                return self.wait_or(
                    flight,
                    reply,
                    false,
                    move |fs, reply| fs.xattr(ino, again, size, reply),
                    move |fs, reply, _| match fs.island_failure(ino) {
                        Some(last) => {
                            answer_xattrs(&[("user.cab.error", last.describe().into_bytes())], name, size, reply)
                        }
                        None => reply.error(libc::EIO),
                    },
                );
            }
            // An island that failed says why (an errno alone tells a user nothing).
            Err(e) => {
                return match self.island_failure(ino) {
                    Some(last) => answer_xattrs(&[("user.cab.error", last.describe().into_bytes())], name, size, reply),
                    None => reply.error(e),
                };
            }
        };
        answer_xattrs(&self.xattrs(&kind), name, size, reply);
    }

    /// The last failure of the island whose root `ino` is, if it failed.
    fn island_failure(&self, ino: u64) -> Option<LastFailure> {
        match self.kind(ino)? {
            Kind::Named(name) => self.islands.failure_named(&name),
            Kind::Browsed(island) => self.islands.failure_island(&island),
            _ => None,
        }
    }

    /// The file node behind `ino` (a file in a tree, or an island whose root is a file).
    fn file(&self, ino: u64) -> Result<BlobHash, Errno> {
        match self.content(ino)? {
            Content::Now(Kind::Tree {
                node: Node::File { blob, .. },
                ..
            }) => Ok(blob),
            Content::Now(_) => Err(libc::EISDIR),
            Content::Wait(_) => Err(libc::EAGAIN),
        }
    }

    /// The blob behind a file inode, opened once and kept for a while (reads without a handle).
    fn blob_file(&self, ino: u64) -> Result<Arc<File>, Errno> {
        if let Some(file) = self.blobs.locked().get(&ino) {
            return Ok(file.clone());
        }
        let blob = self.file(ino)?;
        let path = self.islands.realizer().store().blob_path(&blob);
        let file = Arc::new(File::open(&path).map_err(|e| {
            tracing::error!("cannot open blob {}: {e}", path.display());
            libc::EIO
        })?);
        self.blobs.locked().put(ino, file.clone());
        Ok(file)
    }

    fn open(&self, ino: u64, flags: u32, reply: Reply) {
        let blob = match self.file(ino) {
            Ok(blob) => blob,
            Err(e) => return reply.error(e),
        };
        if flags as i32 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        if !self.passthrough.load(Ordering::Relaxed) {
            // The plain path: refuse open, so that the kernel stops sending open/release
            // pairs and keeps every file's pages: a warm read is then served from the page
            // cache alone. Reads arrive with no handle and find the blob by inode.
            self.log_read_path("serving file reads without passthrough");
            return reply.error(libc::ENOSYS);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        // One backing file per inode while any open of it lives: the kernel refuses a second,
        // different backing for an inode that is already open.
        let mut backings = self.backings.locked();
        let id = match backings.get_mut(&ino) {
            Some((id, opens)) => {
                *opens += 1;
                *id
            }
            None => {
                let path = self.islands.realizer().store().blob_path(&blob);
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(e) => {
                        tracing::error!("cannot open blob {}: {e}", path.display());
                        return reply.error(libc::EIO);
                    }
                };
                match reply.channel().open_backing(&file) {
                    Ok(id) => {
                        self.log_read_path("serving file reads through FUSE passthrough");
                        backings.insert(ino, (id, 1));
                        id
                    }
                    Err(e) => {
                        tracing::info!("FUSE passthrough refused ({e}); serving reads ourselves from now on");
                        self.passthrough.store(false, Ordering::Relaxed);
                        return reply.error(libc::ENOSYS);
                    }
                }
            }
        };
        drop(backings);
        self.open.locked().insert(fh, ino);
        reply.opened(fh, fopen::PASSTHROUGH, id);
    }

    fn read(&self, ino: u64, offset: u64, size: u32, reply: Reply) {
        // Reads come here only on the plain path (no handle), or for a passthrough file the
        // kernel did not pass through; either way the blob is found by inode.
        let file = match self.blob_file(ino) {
            Ok(file) => file,
            Err(e) => return reply.error(e),
        };
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return reply.error(libc::EIO),
            }
        }
        let channel = reply.channel().clone();
        reply.data(&buf[..filled]);
        if offset == 0 {
            self.read_ahead(ino, channel);
        }
    }

    /// The directory of a tree that `ino` is in: its inode, `ino`'s name in it, its tree, and
    /// the island it belongs to.
    fn parent_directory(&self, ino: u64) -> Option<(u64, Vec<u8>, TreeHash, Arc<Ready>)> {
        let (parent, name) = self.table.read_locked().parent(ino).map(|(p, n)| (p, n.to_vec()))?;
        match self.content(parent) {
            Ok(Content::Now(Kind::Tree {
                node: Node::Directory { tree },
                island,
            })) => Some((parent, name, tree, island)),
            _ => None,
        }
    }

    /// For a tree served lazily: the first read in a directory fetches the small files beside
    /// it from the remote in the background, so a reader going through the directory finds
    /// them stored rather than paying a round trip to the remote each.
    fn lazy_read_ahead(&self, ino: u64) {
        let Ok(Content::Now(Kind::Tree { island, .. })) = self.content(ino) else {
            return;
        };
        let Some(lazy) = island.lazy.as_ref().filter(|l| !l.is_complete()) else {
            return;
        };
        let Some((_, _, tree, _)) = self.parent_directory(ino) else {
            return;
        };
        let seen = self.fetched_dirs.locked().put(tree, ());
        if seen.is_some() {
            return;
        }
        let Ok(entries) = self.entries(&tree, &island) else {
            return;
        };
        let files = entries
            .iter()
            .filter_map(|e| match e.node {
                Node::File { blob, size, .. } => Some((blob, size)),
                _ => None,
            })
            .collect();
        lazy.prefetch(self.islands.runtime(), files);
    }

    /// The first read in a directory pushes the small files beside it into the page cache
    /// (see [`prefetch`]), those the kernel knows of (only those can be pushed).
    fn read_ahead(&self, ino: u64, channel: Arc<super::fuse::Channel>) {
        let Some(prefetcher) = &self.prefetch else { return };
        if self.passthrough.load(Ordering::Relaxed) {
            return;
        }
        let Some((parent, name, tree, island)) = self.parent_directory(ino) else {
            return;
        };
        prefetcher.read_now();
        if !prefetcher.first_read_in(parent, tree) {
            return;
        }
        let Ok(entries) = self.entries(&tree, &island) else {
            return;
        };
        // The files after this one first (a reader goes through a directory in order), then
        // those before it.
        let at = entries.partition_point(|e| e.name.as_slice() <= name.as_slice());
        let (before, after) = entries.split_at(at);
        let table = self.table.read_locked();
        let (mut files, mut bytes) = (Vec::new(), 0);
        for entry in after.iter().chain(before).filter(|e| e.name != name) {
            let Node::File { blob, size, .. } = entry.node else {
                continue;
            };
            if size == 0 || size > prefetch::FILE_MAX {
                continue;
            }
            let Some(ino) = table.find(parent, &entry.name) else {
                continue;
            };
            files.push(prefetch::File { ino, blob, size });
            bytes += size;
            if files.len() >= prefetch::DIR_MAX_FILES || bytes >= prefetch::DIR_MAX_BYTES {
                break;
            }
        }
        drop(table);
        prefetcher.push(&channel, files);
    }

    fn release(&self, fh: u64, reply: Reply) {
        let ino = self.open.locked().remove(&fh);
        if let Some(ino) = ino {
            let mut backings = self.backings.locked();
            if let Some((id, opens)) = backings.get_mut(&ino) {
                *opens -= 1;
                if *opens == 0 {
                    reply.channel().close_backing(*id);
                    backings.remove(&ino);
                }
            }
        }
        reply.ok();
    }

    fn readlink(self: &Arc<Self>, ino: u64, reply: Reply) {
        match self.content(ino) {
            Ok(Content::Now(Kind::Tree {
                node: Node::Symlink { target },
                ..
            })) => reply.data(&target),
            Ok(Content::Now(_)) => reply.error(libc::EINVAL),
            Ok(Content::Wait(flight)) => self.wait(flight, reply, false, move |fs, reply| fs.readlink(ino, reply)),
            Err(e) => reply.error(e),
        }
    }
}

/// Answers getxattr (`name`) or listxattr (`None`) from `xattrs`.
fn answer_xattrs(xattrs: &[(&str, Vec<u8>)], name: Option<Vec<u8>>, size: u32, reply: Reply) {
    let value = match &name {
        Some(name) => match xattrs.iter().find(|(n, _)| n.as_bytes() == name.as_slice()) {
            Some((_, value)) => value.clone(),
            None => return reply.error(libc::ENODATA),
        },
        None => {
            let mut list = Vec::new();
            for (name, _) in xattrs {
                list.extend_from_slice(name.as_bytes());
                list.push(0);
            }
            list
        }
    };
    if size == 0 {
        reply.xattr_size(value.len() as u32)
    } else if (size as usize) < value.len() {
        reply.error(libc::ERANGE)
    } else {
        reply.data(&value)
    }
}

/// What a name means one level below a forge's browsing path.
enum Step {
    /// Another name of the repository's path.
    Deeper,
    /// The ref: the path names a repository, and this is the island.
    Ref(Island),
    /// Nothing: not a name the forge could have.
    Nothing,
}

/// The meaning of `name` below `path` in `forge`'s browsing levels: `github/OWNER/REPO/REF`,
/// `sourcehut/~OWNER/REPO/REF`, and `gitlab/GROUP/…/PROJECT/-/REF` — GitLab nests groups to
/// any depth, so the project's path ends where GitLab's own URLs end it, at `-`.
fn browse_step(forge: Format, path: &[Arc<str>], name: &str) -> Step {
    let name_ok = crate::island::forge_name_ok(name) && name.len() <= 100;
    let depth = path.len();
    let deeper = match forge {
        Format::Gitlab if path.last().is_some_and(|p| &**p == "-") => {
            let project = path[..depth - 1].join("/");
            return browsed_island(forge, &project, name).map_or(Step::Nothing, Step::Ref);
        }
        Format::Gitlab if name == "-" => depth >= 2,
        Format::Gitlab => name_ok && depth < crate::island::MAX_GITLAB_DEPTH,
        Format::Sourcehut if depth == 0 => name.strip_prefix('~').is_some_and(crate::island::forge_name_ok),
        _ if depth < 2 => name_ok,
        _ => return browsed_island(forge, &path.join("/"), name).map_or(Step::Nothing, Step::Ref),
    };
    if deeper { Step::Deeper } else { Step::Nothing }
}

/// A browsed repository at a ref as an island, validated as a literal would be.
fn browsed_island(format: Format, location: &str, reference: &str) -> Option<Island> {
    let island = Island {
        format,
        location: location.to_owned(),
        config: Config {
            r#ref: Some(reference.to_owned()),
            ..Config::default()
        },
        subpath: None,
    };
    island.to_string().parse().ok()
}

/// An inode number for a plain-readdir entry the table does not hold: stable, and never one
/// the table hands out (the high bit is set).
fn stand_in_ino(parent: u64, name: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&parent.to_le_bytes());
    h.update(name);
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or_default()) | 1 << 63
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
