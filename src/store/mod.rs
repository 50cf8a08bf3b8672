//! The local content-addressed store: plain files under one root, shared safely by any number
//! of `cab` processes.
//!
//! ```text
//! STORE/
//!   version                  "cab-store 1"
//!   blobs/ab/cdef…           file contents, named by their BLAKE3 (read-only, written once)
//!   trees/ab/cdef…           tree objects (hash::tree), named by their BLAKE3
//!   roots/<64 hex>           one per published tree: what is known of it (its narHash)
//!   index/<64 hex>           (how made, format, value) → tree hash, one small file per key
//!   tmp/<id>/ + <id>.lock    staging; <id>.lock is held (flock) by the live owner
//!   locks/<name>             store-wide locks (flock), e.g. one per derivation being realized,
//!                            and `gc`, which keeps the collector from deleting what is in use
//!   cache/                   compiled fetcher modules (an optimisation; never published)
//!   gcroots/                 what keeps trees from the collector (see [`gc`])
//!   usage                    an estimate of the bytes of objects, for automatic collection
//!   images/                  EROFS images of stored trees, for the kernel to serve ([`images`])
//!   mounts/<pid>             the running mounts, flock-held by their daemons ([`mounts`])
//! ```
//!
//! Every file enters by an atomic rename of a finished temporary file, so a reader sees an
//! object whole or not at all, and two writers of the same object race harmlessly. A tree is
//! *published* — its `roots/` record written, then its index entries — only after every object
//! it needs is durable (one `syncfs`), so a crash leaves garbage at worst, never a published
//! tree with missing parts. A staging directory whose lock nobody holds belonged to a process
//! that died; the next process to open the store removes it.

pub mod contents;
mod export;
pub mod gc;
pub mod images;
mod ingest;
pub mod mounts;
mod nar;
pub mod remote;
mod staging;
mod verify;

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};

use crate::hash::tree::Object;
use crate::hash::{BlobHash, NarHash, TreeHash, encoding};

use crate::sync::MutexExt;
pub use contents::{Arrival, Contents, Stored};
pub use gc::{Collected, Du, Guard, Policy, Root, RootKind, Usage};
pub use ingest::{Added, Ingest, OnFile};
pub use staging::Staging;
pub use verify::{Corruption, VerifyReport};

const VERSION: &str = "cab-store 1";

/// A handle on a store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// This process's staging directory for temporary files, made on first use.
    scratch: Arc<Mutex<Option<Arc<Staging>>>>,
    /// The gc lock, held shared by this process's guards.
    gc_lock: Arc<gc::GcLock>,
    /// The trees this process declared live.
    live: Arc<gc::Live>,
}

/// A store-wide lock, held until dropped (see [`Store::try_lock`]). Its file can carry a
/// short note from one holder to the next.
#[derive(Debug)]
pub struct StoreLock {
    file: fs::File,
}

impl StoreLock {
    /// The note the last holder left.
    pub fn read(&self) -> io::Result<String> {
        use std::io::Read;
        let mut text = String::new();
        (&self.file).read_to_string(&mut text)?;
        Ok(text)
    }

    /// Replaces the note.
    pub fn write(&self, note: &str) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.set_len(0)?;
        self.file.write_all_at(note.as_bytes(), 0)
    }
}

/// What the store knows of a published tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The tree's hash.
    pub tree: TreeHash,
    /// Its NAR hash, computed by the store when it was ingested.
    pub nar: NarHash,
}

/// One index key: how a tree was made, and one value a fetcher reported for it (DESIGN.md,
/// "The hash FIFO protocol"). Values that name the content itself (`blake3`, `nar-sha256`)
/// use [`IndexKey::ANY`] as `how`, since they mean the same tree however it was made.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexKey {
    /// How the tree was made, e.g. `github-archive`, `git-pack`, or `*`.
    pub how: String,
    /// The FIFO format, e.g. `git-rev`.
    pub format: String,
    /// The reported value.
    pub value: String,
}

impl IndexKey {
    /// The `how` of content hashes, which do not depend on how a tree was made.
    pub const ANY: &'static str = "*";

    /// A key.
    pub fn new(how: &str, format: &str, value: &str) -> IndexKey {
        IndexKey {
            how: how.into(),
            format: format.into(),
            value: value.into(),
        }
    }

    fn file_name(&self) -> String {
        let mut h = blake3::Hasher::new();
        for part in [&self.how, &self.format, &self.value] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().to_hex().to_string()
    }
}

/// The default store location: `$XDG_CACHE_HOME/cab/store`, else `~/.cache/cab/store`.
pub fn default_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("cab/store"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache/cab/store")),
        None => bail!("cannot find a place for the store: set CAB_STORE, XDG_CACHE_HOME or HOME, or pass --store"),
    }
}

fn sharded(dir: &Path, hex: &str) -> PathBuf {
    dir.join(&hex[..2]).join(&hex[2..])
}

impl Store {
    /// Opens (creating if needed) the store at `root`, and removes staging left by processes
    /// that died.
    pub fn open(root: &Path) -> Result<Store> {
        let store = Store {
            root: root.to_owned(),
            scratch: Arc::default(),
            gc_lock: Arc::new(gc::GcLock::new(root.join("locks").join("gc"))),
            live: Arc::new(gc::Live::new(root)),
        };
        let version = root.join("version");
        match fs::read_to_string(&version) {
            Ok(v) if v.trim() == VERSION => {}
            Ok(v) => bail!(
                "{} is a store of another version ({:?}, this cab reads {VERSION:?}); use another --store",
                root.display(),
                v.trim()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => store.create()?,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", version.display())),
        }
        staging::clean_stale(&root.join("tmp"));
        Ok(store)
    }

    fn create(&self) -> Result<()> {
        let ctx = || format!("cannot create the store at {}", self.root.display());
        for dir in ["blobs", "trees"] {
            for byte in 0..=255u8 {
                fs::create_dir_all(self.root.join(dir).join(encoding::to_hex(&[byte]))).with_context(ctx)?;
            }
        }
        for dir in [
            "roots",
            "index",
            "tmp",
            "locks",
            "gcroots/manual",
            "gcroots/locks",
            "gcroots/live",
        ] {
            fs::create_dir_all(self.root.join(dir)).with_context(ctx)?;
        }
        // Another process may be creating the store too: the version file goes in by rename.
        let tmp = self.scratch()?.temp_path("version");
        fs::write(&tmp, format!("{VERSION}\n")).with_context(ctx)?;
        fs::rename(&tmp, self.root.join("version")).with_context(ctx)?;
        Ok(())
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A new private staging directory inside the store (same filesystem, so its files can
    /// enter the store by rename).
    pub fn staging(&self) -> Result<Staging> {
        Staging::new(&self.root.join("tmp"))
    }

    /// Takes the store-wide lock `name` if nobody holds it (in this process or another).
    /// It is held until the returned guard is dropped, or its holder dies.
    pub fn try_lock(&self, name: &str) -> Result<Option<StoreLock>> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.root.join("locks");
        let path = dir.join(name);
        let ctx = || format!("cannot take the lock {}", path.display());
        let open = || {
            fs::File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        };
        loop {
            let file = match open() {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // A store made before locks existed.
                    fs::create_dir_all(&dir).with_context(ctx)?;
                    open().with_context(ctx)?
                }
                other => other.with_context(ctx)?,
            };
            if !staging::try_lock(&file).with_context(ctx)? {
                return Ok(None);
            }
            // The collector removes lock files nobody holds, holding them as it does: the
            // file locked here may have been removed (and another made) since it was opened.
            let mine = file.metadata().with_context(ctx)?;
            match fs::metadata(&path) {
                Ok(now) if now.ino() == mine.ino() && now.dev() == mine.dev() => {
                    return Ok(Some(StoreLock { file }));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(ctx),
            }
        }
    }

    /// This process's staging directory, shared by everything this handle writes.
    fn scratch(&self) -> Result<Arc<Staging>> {
        let mut slot = self.scratch.locked();
        if let Some(staging) = &*slot {
            return Ok(staging.clone());
        }
        let staging = Arc::new(self.staging()?);
        *slot = Some(staging.clone());
        Ok(staging)
    }

    /// Where the blob with these contents' BLAKE3 lives.
    pub fn blob_path(&self, blob: &BlobHash) -> PathBuf {
        sharded(&self.root.join("blobs"), &blob.to_hex())
    }

    /// Where the tree object with this hash lives.
    pub fn object_path(&self, tree: &TreeHash) -> PathBuf {
        sharded(&self.root.join("trees"), &tree.to_hex())
    }

    pub(crate) fn root_record_path(&self, tree: &TreeHash) -> PathBuf {
        self.root.join("roots").join(tree.to_hex())
    }

    /// Reads and decodes a tree object.
    pub fn read_object(&self, tree: &TreeHash) -> Result<Object> {
        let path = self.object_path(tree);
        let bytes = fs::read(&path).with_context(|| format!("cannot read tree object {}", path.display()))?;
        Object::decode(&bytes).with_context(|| format!("tree object {tree} is corrupt ({})", path.display()))
    }

    /// What the store knows of a published tree, or `None` if it is not published here.
    pub fn published(&self, tree: &TreeHash) -> Result<Option<Published>> {
        let path = self.root_record_path(tree);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let nar = text
            .lines()
            .find_map(|l| l.strip_prefix("nar-sha256 "))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("root record {} is corrupt", path.display()))?;
        Ok(Some(Published { tree: *tree, nar }))
    }

    /// Every published tree.
    pub fn roots(&self) -> Result<Vec<TreeHash>> {
        let dir = self.root.join("roots");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            if let Some(hash) = entry.file_name().to_str().and_then(TreeHash::from_hex) {
                out.push(hash);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Looks a key up in the index; only published trees are answered.
    pub fn lookup(&self, key: &IndexKey) -> Result<Option<TreeHash>> {
        let path = self.root.join("index").join(key.file_name());
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let tree = text.lines().nth(1).and_then(|l| l.parse::<TreeHash>().ok());
        match tree {
            Some(tree) if self.published(&tree)?.is_some() => Ok(Some(tree)),
            Some(_) => Ok(None),
            None => bail!("index entry {} is corrupt", path.display()),
        }
    }

    /// The notes of the index entry under `key` ([`Store::record_noted`]), whether or not the
    /// tree it names is still published; `None` when there is no such entry.
    pub fn index_notes(&self, key: &IndexKey) -> Result<Option<String>> {
        let path = self.root.join("index").join(key.file_name());
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.lines().skip(2).map(|l| format!("{l}\n")).collect())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Whether the blob named `blob` is here with `size` bytes.
    pub fn has_blob(&self, blob: &BlobHash, size: u64) -> bool {
        fs::symlink_metadata(self.blob_path(blob)).is_ok_and(|m| m.len() == size)
    }

    /// Stores a blob whose contents the caller has checked against its name. A blob already
    /// here is not written again, so the caller follows the gc protocol as an ingest does: it
    /// holds a [`Store::guard`] (required here), and either the blob belongs to a tree it has
    /// declared live already or it declares that tree live before dropping the guard.
    pub fn add_blob(&self, blob: &BlobHash, bytes: &[u8]) -> Result<()> {
        self.add_blobs([(blob, bytes)])
    }

    /// Stores blobs as [`Store::add_blob`] does, counting them in the usage once.
    pub fn add_blobs<'a>(&self, blobs: impl IntoIterator<Item = (&'a BlobHash, &'a [u8])>) -> Result<()> {
        self.require_guard("storing a blob")?;
        let mut written = 0;
        let mut result = Ok(());
        for (blob, bytes) in blobs {
            if self.has_blob(blob, bytes.len() as u64) {
                continue;
            }
            result = self.write_atomically(&self.blob_path(blob), bytes, false);
            if result.is_err() {
                break;
            }
            written += bytes.len() as u64;
        }
        self.add_usage(written);
        result
    }

    /// Stores a tree object whose bytes the caller has checked against its name, under the
    /// same protocol as [`Store::add_blob`].
    pub fn add_object(&self, tree: &TreeHash, bytes: &[u8]) -> Result<()> {
        self.add_objects([(tree, bytes)])
    }

    /// Stores tree objects as [`Store::add_object`] does, counting them in the usage once.
    pub fn add_objects<'a>(&self, objects: impl IntoIterator<Item = (&'a TreeHash, &'a [u8])>) -> Result<()> {
        self.require_guard("storing a tree object")?;
        let mut written = 0;
        let mut result = Ok(());
        for (tree, bytes) in objects {
            let path = self.object_path(tree);
            if fs::symlink_metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
                continue;
            }
            result = self.write_atomically(&path, bytes, false);
            if result.is_err() {
                break;
            }
            written += bytes.len() as u64;
        }
        self.add_usage(written);
        result
    }

    /// The index entries that name `tree`: each entry's file name and text.
    pub fn index_entries_for(&self, tree: &TreeHash) -> Result<Vec<(String, String)>> {
        let dir = self.root.join("index");
        let want = tree.to_string();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.len() != 64 {
                continue;
            }
            let Ok(text) = fs::read_to_string(entry.path()) else {
                continue;
            };
            if text.lines().nth(1) == Some(want.as_str()) {
                out.push((name, text));
            }
        }
        Ok(out)
    }

    /// The file name an index key is stored under, here and on a remote.
    pub fn index_file_name(key: &IndexKey) -> String {
        key.file_name()
    }

    /// Records `key → tree` for a published tree.
    pub fn record(&self, key: &IndexKey, tree: &TreeHash) -> Result<()> {
        self.record_noted(key, tree, "")
    }

    /// Records `key → tree` with `notes`: lines after the tree's that only readers of that
    /// kind of key read ([`Store::index_notes`]), gone with the entry.
    pub fn record_noted(&self, key: &IndexKey, tree: &TreeHash, notes: &str) -> Result<()> {
        // The check and the write in one guarded section: a collector cannot drop the tree
        // in between and leave an entry naming nothing.
        let _guard = self.guard()?;
        if self.published(tree)?.is_none() {
            bail!("cannot index {tree}: it is not published in this store");
        }
        let text = format!("{} {} {}\n{tree}\n{notes}", key.how, key.format, key.value);
        let path = self.root.join("index").join(key.file_name());
        // Re-recording what is there (every unchanged island does) writes nothing.
        if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
            return Ok(());
        }
        self.write_atomically(&path, text.as_bytes(), false)
    }

    /// Makes an ingested tree visible: its root record, written only after all its objects
    /// are durable, then its content-hash index entries. The caller holds the guard it took
    /// before the ingest, and declares the tree live before dropping it.
    pub fn publish(&self, tree: &TreeHash, nar: &NarHash) -> Result<()> {
        self.require_guard("publishing")?;
        // Already published: its objects are durable and its record written; nothing to do
        // (and no filesystem-wide sync to pay for).
        if self.published(tree)?.is_some_and(|p| p.nar == *nar) {
            return Ok(());
        }
        sync_filesystem(&self.root)?;
        if std::env::var_os("CAB_FAILPOINT").is_some_and(|v| v == "store-before-publish") {
            // Test hook: die the way a crash would, objects written and synced, nothing published.
            std::process::abort();
        }
        let text = format!("nar-sha256 {nar}\n");
        self.write_atomically(&self.root_record_path(tree), text.as_bytes(), true)?;
        self.record(&IndexKey::new(IndexKey::ANY, "blake3", &tree.to_string()), tree)?;
        self.record(&IndexKey::new(IndexKey::ANY, "nar-sha256", &nar.to_string()), tree)?;
        tracing::debug!(%tree, %nar, "published");
        Ok(())
    }

    /// Writes `bytes` to `dest` through a temporary file and a rename; `durable` also syncs
    /// the file and its directory.
    fn write_atomically(&self, dest: &Path, bytes: &[u8], durable: bool) -> Result<()> {
        let tmp = self.scratch()?.temp_path("file");
        let ctx = || format!("cannot write {}", dest.display());
        let mut file = fs::File::create(&tmp).with_context(ctx)?;
        file.write_all(bytes).with_context(ctx)?;
        if durable {
            file.sync_all().with_context(ctx)?;
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444)).with_context(ctx)?;
        fs::rename(&tmp, dest).with_context(ctx)?;
        if durable && let Some(parent) = dest.parent() {
            fs::File::open(parent).and_then(|d| d.sync_all()).with_context(ctx)?;
        }
        Ok(())
    }
}

/// Flushes everything written to the filesystem holding `path`: one call instead of an
/// `fsync` per object.
fn sync_filesystem(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: a plain syscall on a descriptor we own.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("cannot sync {}", path.display()));
    }
    Ok(())
}
