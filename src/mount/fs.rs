//! The FUSE filesystem: an inode table over three views — named islands at the top,
//! `github/OWNER/REPO/REF/` for browsing, `by-hash/<tree hash>/` for stable paths — and the
//! realized trees beneath them, served straight from the store.
//!
//! Caching follows DESIGN.md ("Mount"): inside a realized tree nothing ever changes, so entries
//! and attributes get long TTLs, negative lookups are cached, directory listings and file pages
//! are kept; the levels above change while mounted, so they get short TTLs and no negative
//! caching, and realization hangs off their lookups.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::islands::{Islands, Ready};
use crate::hash::TreeHash;
use crate::hash::tree::{Entry, Node, Object};
use crate::island::{Config, Format, Island};

/// Inside realized trees: effectively forever.
const TREE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The levels above realized trees, which change while mounted.
const TOP_TTL: Duration = Duration::from_secs(1);

/// What an inode is.
#[derive(Clone, Debug)]
enum Kind {
    Root,
    Github,
    GithubOwner(String),
    GithubRepo(String, String),
    ByHash,
    /// A named island listed but not looked up yet (listing must not fetch).
    Named(String),
    /// A stored tree listed under `by-hash/` but not looked up yet.
    Stored(TreeHash),
    /// A node of a realized tree, and the island it belongs to (for xattrs).
    Tree {
        node: Node,
        island: Arc<Ready>,
    },
}

/// The inode table. Inodes are never reused during a mount; a path always gets the same one.
#[derive(Default)]
struct Table {
    inodes: Vec<Kind>,
    by_name: HashMap<(u64, Vec<u8>), u64>,
}

impl Table {
    fn get(&self, ino: u64) -> Option<&Kind> {
        self.inodes.get(ino.checked_sub(1)? as usize)
    }

    fn intern(&mut self, parent: u64, name: &[u8], make: impl FnOnce() -> Kind) -> u64 {
        if let Some(&ino) = self.by_name.get(&(parent, name.to_vec())) {
            return ino;
        }
        self.inodes.push(make());
        let ino = self.inodes.len() as u64;
        self.by_name.insert((parent, name.to_vec()), ino);
        ino
    }
}

/// A file opened through passthrough: the inode whose backing it uses.
struct Open {
    ino: u64,
}

/// The filesystem.
pub struct CabFs {
    islands: Arc<Islands>,
    table: RwLock<Table>,
    dirs: Mutex<lru::LruCache<TreeHash, Arc<Vec<Entry>>>>,
    open: Mutex<HashMap<u64, Open>>,
    /// Blob files for reads that come without a handle (the plain path), by inode.
    blobs: Mutex<lru::LruCache<u64, Arc<File>>>,
    /// Passthrough backing files by inode, with the number of opens using each.
    backings: Mutex<HashMap<u64, (BackingId, usize)>>,
    next_fh: AtomicU64,
    passthrough: AtomicBool,
    /// Whether the read path in use has been logged yet.
    passthrough_seen: AtomicBool,
    uid: u32,
    gid: u32,
}

const ROOT: u64 = 1;
const GITHUB: u64 = 2;
const BY_HASH: u64 = 3;

impl CabFs {
    /// A filesystem serving `islands`; `passthrough` asks for FUSE passthrough where allowed.
    pub fn new(islands: Arc<Islands>, passthrough: bool) -> CabFs {
        let mut table = Table::default();
        table.inodes.push(Kind::Root);
        table.inodes.push(Kind::Github);
        table.inodes.push(Kind::ByHash);
        table.by_name.insert((ROOT, b"github".to_vec()), GITHUB);
        table.by_name.insert((ROOT, b"by-hash".to_vec()), BY_HASH);
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
            passthrough: AtomicBool::new(passthrough),
            passthrough_seen: AtomicBool::new(false),
            uid,
            gid,
        }
    }

    /// The blob behind a file inode, opened once and kept for a while (reads without a handle).
    fn blob_file(&self, ino: INodeNo) -> Result<Arc<File>, Errno> {
        if let Some(file) = self.blobs.lock().unwrap_or_else(|e| e.into_inner()).get(&ino.0) {
            return Ok(file.clone());
        }
        let Some(Kind::Tree {
            node: Node::File { blob, .. },
            ..
        }) = self.kind(ino)
        else {
            return Err(Errno::EISDIR);
        };
        let path = self.islands.realizer().store().blob_path(&blob);
        let file = Arc::new(File::open(&path).map_err(|e| {
            tracing::error!("cannot open blob {}: {e}", path.display());
            Errno::EIO
        })?);
        self.blobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(ino.0, file.clone());
        Ok(file)
    }

    /// The plain path: refuse open, so that the kernel stops sending open/release pairs
    /// (`no_open`) and keeps every file's pages (KEEP_CACHE): a warm read is then served from
    /// the page cache alone. Reads arrive with no handle and find the blob by inode.
    fn open_plain(&self, reply: ReplyOpen) {
        self.log_read_path("serving file reads without passthrough");
        reply.error(Errno::ENOSYS);
    }

    fn remember(&self, fh: u64, open: Open) {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(fh, open);
    }

    /// Says once which read path serves files (tests and users want to know).
    fn log_read_path(&self, message: &str) {
        if !self.passthrough_seen.swap(true, Ordering::Relaxed) {
            tracing::info!("{message}");
        }
    }

    fn kind(&self, ino: INodeNo) -> Option<Kind> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).get(ino.0).cloned()
    }

    fn intern(&self, parent: u64, name: &[u8], make: impl FnOnce() -> Kind) -> u64 {
        self.table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .intern(parent, name, make)
    }

    /// A directory's entries, decoded once and kept.
    fn entries(&self, tree: &TreeHash) -> Result<Arc<Vec<Entry>>, Errno> {
        if let Some(entries) = self.dirs.lock().unwrap_or_else(|e| e.into_inner()).get(tree) {
            return Ok(entries.clone());
        }
        let entries = match self.islands.realizer().store().read_object(tree) {
            Ok(Object::Directory(entries)) => Arc::new(entries),
            Ok(Object::Root(_)) => return Err(Errno::ENOTDIR),
            Err(e) => {
                tracing::error!("cannot read directory {tree}: {e:#}");
                return Err(Errno::EIO);
            }
        };
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(*tree, entries.clone());
        Ok(entries)
    }

    fn attr(&self, ino: u64, kind: &Kind) -> FileAttr {
        let (file_type, perm, size, nlink) = match kind {
            Kind::Tree {
                node: Node::File { executable, size, .. },
                ..
            } => (FileType::RegularFile, if *executable { 0o555 } else { 0o444 }, *size, 1),
            Kind::Tree {
                node: Node::Symlink { target },
                ..
            } => (FileType::Symlink, 0o777, target.len() as u64, 1),
            _ => (FileType::Directory, 0o555, 4096, 2),
        };
        // Like the Nix store: contents are timeless, so every time is the epoch plus one second.
        // The listings above realized trees grow while mounted; their mtime says how much.
        let time = UNIX_EPOCH + Duration::from_secs(1 + self.listing_generation(ino, kind));
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind: file_type,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
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
            Kind::Github | Kind::GithubOwner(_) | Kind::GithubRepo(..) => {
                let table = self.table.read().unwrap_or_else(|e| e.into_inner());
                table.by_name.keys().filter(|(parent, _)| *parent == ino).count() as u64
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

    /// The kind of `ino`, realizing a listed-but-unrealized island first.
    fn settle(&self, ino: u64) -> Result<Kind, Errno> {
        let kind = self.kind(INodeNo(ino)).ok_or(Errno::ENOENT)?;
        let (parent, name) = match &kind {
            Kind::Named(name) => (ROOT, name.clone().into_bytes()),
            Kind::Stored(hash) => (BY_HASH, hash.to_string().into_bytes()),
            _ => return Ok(kind),
        };
        Ok(self.resolve(parent, &name)?.1)
    }

    /// Resolves `name` in `parent` to an inode and its kind.
    fn resolve(&self, parent: u64, name: &[u8]) -> Result<(u64, Kind), Errno> {
        let parent_kind = self.settle(parent)?;
        let text = std::str::from_utf8(name).map_err(|_| Errno::ENOENT);
        let ready = |result: Result<Arc<Ready>, String>| result.map_err(|_| Errno::EIO);
        let tree_root = |ready: Arc<Ready>| -> Result<Kind, Errno> {
            let node = self.islands.realizer().store().root_node(&ready.tree).map_err(|e| {
                tracing::error!("cannot read {}: {e:#}", ready.tree);
                Errno::EIO
            })?;
            Ok(Kind::Tree { node, island: ready })
        };
        let kind = match &parent_kind {
            Kind::Root => match name {
                b"github" => return Ok((GITHUB, Kind::Github)),
                b"by-hash" => return Ok((BY_HASH, Kind::ByHash)),
                _ => {
                    let Some(result) = self.islands.get_named(text?) else {
                        return Err(Errno::ENOENT);
                    };
                    tree_root(ready(result)?)?
                }
            },
            Kind::Github => {
                let owner = text?;
                if !valid_github_part(owner) {
                    return Err(Errno::ENOENT);
                }
                Kind::GithubOwner(owner.to_owned())
            }
            Kind::GithubOwner(owner) => {
                let repo = text?;
                if !valid_github_part(repo) {
                    return Err(Errno::ENOENT);
                }
                Kind::GithubRepo(owner.clone(), repo.to_owned())
            }
            Kind::GithubRepo(owner, repo) => {
                let reference = text?;
                let config = Config {
                    r#ref: Some(reference.to_owned()),
                    ..Config::default()
                };
                let island = Island {
                    format: Format::Github,
                    location: format!("{owner}/{repo}"),
                    config,
                    subpath: None,
                };
                // Round-trip through the parser: it validates the ref as a literal would.
                let island: Island = island.to_string().parse().map_err(|_| Errno::ENOENT)?;
                tree_root(ready(self.islands.get_island(&island))?)?
            }
            Kind::ByHash => {
                let hash: TreeHash = text?.parse().map_err(|_| Errno::ENOENT)?;
                let store = self.islands.realizer().store();
                match store.published(&hash) {
                    Ok(Some(published)) => {
                        let locked = Island {
                            format: Format::Fs,
                            location: String::new(),
                            config: Config {
                                hash: Some(hash),
                                nar_hash: Some(published.nar),
                                ..Config::default()
                            },
                            subpath: None,
                        };
                        tree_root(Arc::new(Ready {
                            tree: hash,
                            rev: None,
                            locked,
                        }))?
                    }
                    Ok(None) => return Err(Errno::ENOENT),
                    Err(_) => return Err(Errno::EIO),
                }
            }
            Kind::Tree {
                node: Node::Directory { tree },
                island,
            } => {
                let entries = self.entries(tree)?;
                let at = entries
                    .binary_search_by(|e| e.name.as_slice().cmp(name))
                    .map_err(|_| Errno::ENOENT)?;
                Kind::Tree {
                    node: entries[at].node.clone(),
                    island: island.clone(),
                }
            }
            Kind::Tree { .. } => return Err(Errno::ENOTDIR),
            Kind::Named(_) | Kind::Stored(_) => unreachable!("settled above"),
        };
        let fresh = kind.clone();
        let ino = self.intern(parent, name, move || fresh);
        // Top-level names are re-resolved on every lookup (a pin may have been written); keep
        // the table's kind current for them.
        if !matches!(parent_kind, Kind::Tree { .. }) {
            let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = table.inodes.get_mut(ino as usize - 1) {
                *slot = kind.clone();
            }
        }
        Ok((ino, kind))
    }

    /// The children of a directory inode: (name, kind) pairs, interned.
    fn children(&self, ino: u64) -> Result<Vec<(u64, Vec<u8>, Kind)>, Errno> {
        let kind = self.settle(ino)?;
        let mut out = Vec::new();
        match kind {
            Kind::Tree {
                node: Node::Directory { tree },
                island,
            } => {
                for entry in self.entries(&tree)?.iter() {
                    let kind = Kind::Tree {
                        node: entry.node.clone(),
                        island: island.clone(),
                    };
                    let child = kind.clone();
                    let ino = self.intern(ino, &entry.name, move || child);
                    out.push((ino, entry.name.clone(), kind));
                }
            }
            Kind::Tree { .. } => return Err(Errno::ENOTDIR),
            Kind::Root => {
                out.push((GITHUB, b"github".to_vec(), Kind::Github));
                out.push((BY_HASH, b"by-hash".to_vec(), Kind::ByHash));
                // Named islands are listed without realizing them: listing must stay cheap.
                for name in self.islands.names() {
                    let listed = Kind::Named(name.clone());
                    let ino = self.intern(ROOT, name.as_bytes(), || listed);
                    let kind = self.kind(INodeNo(ino)).unwrap_or(Kind::Named(name.clone()));
                    out.push((ino, name.into_bytes(), kind));
                }
            }
            Kind::ByHash => {
                let roots = self.islands.realizer().store().roots().map_err(|_| Errno::EIO)?;
                for hash in roots {
                    let name = hash.to_string().into_bytes();
                    let ino = self.intern(BY_HASH, &name, || Kind::Stored(hash));
                    let kind = self.kind(INodeNo(ino)).unwrap_or(Kind::Stored(hash));
                    out.push((ino, name, kind));
                }
            }
            // Browsing levels list what has been looked up so far.
            Kind::Named(_) | Kind::Stored(_) => unreachable!("settled above"),
            Kind::Github | Kind::GithubOwner(_) | Kind::GithubRepo(..) => {
                let table = self.table.read().unwrap_or_else(|e| e.into_inner());
                let mut seen: Vec<_> = table
                    .by_name
                    .iter()
                    .filter(|((parent, _), _)| *parent == ino)
                    .filter_map(|((_, name), &child)| Some((child, name.clone(), table.get(child)?.clone())))
                    .collect();
                seen.sort_by(|a, b| a.1.cmp(&b.1));
                out.extend(seen);
            }
        }
        Ok(out)
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
        out.push(("user.cab.island", island.locked.to_string().into_bytes()));
        out
    }
}

fn valid_github_part(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Filesystem for CabFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(flag);
        }
        let _ = config.set_max_readahead(1 << 20);
        if self.passthrough.load(Ordering::Relaxed) {
            let granted =
                config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() && config.set_max_stack_depth(1).is_ok();
            if !granted {
                tracing::info!("FUSE passthrough is not available from this kernel; serving reads ourselves");
                self.passthrough.store(false, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.resolve(parent.0, name.as_bytes()) {
            Ok((ino, kind)) => reply.entry(&Self::ttl(&kind), &self.attr(ino, &kind), Generation(0)),
            Err(e) if e == Errno::ENOENT && matches!(self.kind(parent), Some(Kind::Tree { .. })) => {
                // A negative entry (inode 0) with a long TTL: the kernel remembers the absence.
                let mut attr = self.attr(0, &Kind::Root);
                attr.ino = INodeNo(0);
                reply.entry(&TREE_TTL, &attr, Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.kind(ino) {
            Some(kind) => reply.attr(&Self::ttl(&kind), &self.attr(ino.0, &kind)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.kind(ino) {
            Some(Kind::Tree {
                node: Node::Symlink { target },
                ..
            }) => reply.data(&target),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(Kind::Tree {
            node: Node::File { blob, .. },
            ..
        }) = self.kind(ino)
        else {
            return reply.error(Errno::EISDIR);
        };
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        if self.passthrough.load(Ordering::Relaxed) {
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            // One backing file per inode while any open of it lives: the kernel refuses a
            // second, different backing for an inode that is already open.
            let mut backings = self.backings.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((backing, opens)) = backings.get_mut(&ino.0) {
                *opens += 1;
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), backing);
            } else {
                let path = self.islands.realizer().store().blob_path(&blob);
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(e) => {
                        tracing::error!("cannot open blob {}: {e}", path.display());
                        return reply.error(Errno::EIO);
                    }
                };
                match reply.open_backing(&file) {
                    Ok(backing) => {
                        self.log_read_path("serving file reads through FUSE passthrough");
                        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing);
                        backings.insert(ino.0, (backing, 1));
                    }
                    Err(e) => {
                        tracing::info!("FUSE passthrough refused ({e}); serving reads ourselves from now on");
                        self.passthrough.store(false, Ordering::Relaxed);
                        drop(backings);
                        return self.open_plain(reply);
                    }
                }
            }
            self.remember(fh, Open { ino: ino.0 });
            return;
        }
        self.open_plain(reply);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
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
                Err(_) => return reply.error(Errno::EIO),
            }
        }
        reply.data(&buf[..filled]);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&fh.0);
        if let Some(Open { ino, .. }) = open {
            let mut backings = self.backings.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, opens)) = backings.get_mut(&ino) {
                *opens -= 1;
                if *opens == 0 {
                    backings.remove(&ino);
                }
            }
        }
        reply.ok();
    }

    /// Refused, so that the kernel stops asking (`no_opendir`): it then keeps every
    /// directory's listing and pages (KEEP_CACHE | CACHE_DIR), and a warm walk sends us no
    /// opendir/releasedir pair per directory. Listings above the realized trees can change;
    /// their mtime changes with them (see [`CabFs::attr`]), which makes the kernel drop its
    /// cached copy.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let children = match self.children(ino.0) {
            Ok(children) => children,
            Err(e) => return reply.error(e),
        };
        let dots = [
            (ino.0, b".".to_vec(), FileType::Directory),
            (ino.0, b"..".to_vec(), FileType::Directory),
        ];
        let all = dots.into_iter().chain(children.into_iter().map(|(i, n, k)| {
            let t = self.attr(i, &k).kind;
            (i, n, t)
        }));
        for (i, (child, name, file_type)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, file_type, OsStr::from_bytes(&name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let children = match self.children(ino.0) {
            Ok(children) => children,
            Err(e) => return reply.error(e),
        };
        let here = self.kind(ino).unwrap_or(Kind::Root);
        let dots = [(ino.0, b".".to_vec(), here.clone()), (ino.0, b"..".to_vec(), here)];
        for (i, (child, name, kind)) in dots.into_iter().chain(children).enumerate().skip(offset as usize) {
            // Listed islands are not realized by listing: they show as directories with a short
            // TTL, and are realized when something looks inside.
            let attr = self.attr(child, &kind);
            if reply.add(
                INodeNo(child),
                (i + 1) as u64,
                OsStr::from_bytes(&name),
                &Self::ttl(&kind),
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        reply.statfs(0, 0, 0, table.inodes.len() as u64, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(kind) = self.kind(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match self
            .xattrs(&kind)
            .into_iter()
            .find(|(n, _)| n.as_bytes() == name.as_bytes())
        {
            None => reply.error(Errno::NO_XATTR),
            Some((_, value)) if size == 0 => reply.size(value.len() as u32),
            Some((_, value)) if (size as usize) < value.len() => reply.error(Errno::ERANGE),
            Some((_, value)) => reply.data(&value),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(kind) = self.kind(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let mut list = Vec::new();
        for (name, _) in self.xattrs(&kind) {
            list.extend_from_slice(name.as_bytes());
            list.push(0);
        }
        if size == 0 {
            reply.size(list.len() as u32)
        } else if (size as usize) < list.len() {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(&list)
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.bits() & libc::W_OK != 0 {
            reply.error(Errno::EROFS)
        } else {
            reply.ok()
        }
    }
}
