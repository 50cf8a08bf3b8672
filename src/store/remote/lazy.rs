//! Trees served before their files are here ([`LazyTree`], the remote's [`Contents`]). A
//! pinned tree the remote store holds is ready as soon as its listing is (every tree object,
//! from the remote's bundle in one request): names, kinds, sizes and modes are all in the tree
//! objects. A file's contents are fetched when it is first read — once, however many readers
//! wait — checked against their BLAKE3, written to the store, and from then on read like any
//! stored blob. The tree is published in the store only once every blob is there and its
//! narHash checks out (a completion in the background does that: asked for, or started by a
//! reader going through many directories); until then only whoever serves it knows it.
//!
//! The listing is served from memory the moment it arrives: writing its objects to the store
//! (thousands of small files) happens behind the first answer, never before it. The tree is
//! declared live, and the store's guard taken, before the first answer and held until every
//! object is written, so a collection keeps every file of it fetched meanwhile, and every one
//! fetched later, whether or not it is published yet.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore};

use super::{Listing, Remote, pack};
use crate::hash::tree::{Entry, Node, Object};
use crate::hash::{BlobHash, NarHash, TreeHash};
use crate::store::contents::{Arrival, Contents, LocalShare};
use crate::store::{Guard, Store};
use crate::sync::{MutexExt, RwLockExt};

/// One blob being fetched: who waits for it, and how a reader hurries it along when it was
/// queued in the background.
struct BlobFetch {
    waiters: Vec<Arrival>,
    urgent: Arc<Notify>,
}

/// Which of the tree's files are in the store, for `cab status`: counted from the listing
/// once it is written, then kept up as files arrive. Each blob is counted once, whoever finds
/// it here first (the count, a fetch landing, a reader).
#[derive(Default)]
struct Tally {
    /// Files (distinct blobs) and bytes in the tree, once the listing has been counted.
    totals: Option<(u64, u64)>,
    /// Blobs known to be here (emptied once the tree is complete).
    local: HashSet<BlobHash>,
    files_local: u64,
    bytes_local: u64,
}

impl Tally {
    fn here(&mut self, blob: BlobHash, size: u64) {
        if self.local.insert(blob) {
            self.files_local += 1;
            self.bytes_local += size;
        }
    }
}

/// What one fetch downloads.
enum Download {
    Blob(BlobHash, u64),
    Pack(pack::Unit),
}

/// A tree whose files arrive when read.
pub struct LazyTree {
    runtime: tokio::runtime::Handle,
    remote: Remote,
    store: Store,
    tree: TreeHash,
    nar: NarHash,
    label: String,
    complete: AtomicBool,
    /// Whether a completion runs (started by `--prefetch` or by a reader going through many
    /// directories).
    completing: AtomicBool,
    /// Directories read in so far (their first read each).
    directories_read: AtomicUsize,
    /// Blobs being fetched, and who waits for each.
    fetching: Mutex<HashMap<BlobHash, BlobFetch>>,
    /// Background fetches at once: enough to keep a remote busy, few enough that a reader's
    /// own fetches are not stuck behind a flood of them.
    background: Arc<Semaphore>,
    /// The root node, from the listing.
    root: Node,
    /// The listing while its objects are being written to the store (then `None`: the store
    /// has them).
    unwritten: std::sync::RwLock<Option<Arc<Listing>>>,
    /// Whether the listing is in the store yet (`Some(false)`: writing it failed).
    written: tokio::sync::watch::Receiver<Option<bool>>,
    /// How much of it is here.
    tally: Mutex<Tally>,
}

/// Directories' small files fetched ahead in one go: at most this many files a directory…
const FETCH_AHEAD_FILES: usize = 256;
/// …of at most this size each.
const FETCH_AHEAD_FILE_MAX: u64 = 256 * 1024;
/// A reader that has gone through this many directories is reading the tree, not a few files
/// of it: the rest of the tree is fetched in the background, in the order a walk reads it, as
/// fast as the remote gives it, instead of one directory's round trip at a time.
const BULK_DIRECTORIES: usize = 32;
/// Background fetches at once.
const BACKGROUND_FETCHES: usize = 16;

impl std::fmt::Debug for LazyTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyTree")
            .field("tree", &self.tree)
            .field("remote", &self.remote.to_string())
            .field("complete", &self.is_complete())
            .finish()
    }
}

impl LazyTree {
    /// The tree `listing` lists, with its narHash as the lock or the remote records it, its
    /// files from `remote`. `guard` is the store's guard under which the tree was declared
    /// live; the listing is written to `store` in the background, under it, while it is
    /// served from memory.
    pub fn new(
        remote: Remote,
        store: Store,
        listing: Listing,
        guard: Guard,
        nar: NarHash,
        label: &str,
    ) -> anyhow::Result<Arc<LazyTree>> {
        let tree = listing.tree();
        let root = match listing.object(&tree) {
            Some(Object::Root(node)) => node.clone(),
            Some(Object::Directory(_)) => Node::Directory { tree },
            None => anyhow::bail!("the listing of {tree} lacks its root"),
        };
        let listing = Arc::new(listing);
        let (written_tx, written) = tokio::sync::watch::channel(None);
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("a tree served lazily needs the async runtime"))?;
        let lazy = Arc::new(LazyTree {
            runtime: runtime.clone(),
            remote,
            store: store.clone(),
            tree,
            nar,
            label: crate::text::shorten(label).into_owned(),
            complete: AtomicBool::new(false),
            completing: AtomicBool::new(false),
            directories_read: AtomicUsize::new(0),
            fetching: Mutex::default(),
            background: Arc::new(Semaphore::new(BACKGROUND_FETCHES)),
            root,
            unwritten: std::sync::RwLock::new(Some(listing.clone())),
            written,
            tally: Mutex::default(),
        });
        let writer = Arc::downgrade(&lazy);
        let label = lazy.label.clone();
        let write = move || {
            let started = std::time::Instant::now();
            let result = listing.store(&store);
            drop(guard);
            match &result {
                Ok(()) => tracing::debug!(
                    "{label}: wrote the {} objects of its listing in {:.2} s",
                    listing.len(),
                    started.elapsed().as_secs_f64()
                ),
                Err(e) => tracing::error!(
                    "{label}: cannot write its listing to the store ({e:#}); it is served from memory, \
                     and not completed"
                ),
            }
            if result.is_ok()
                && let Some(lazy) = writer.upgrade()
            {
                *lazy.unwritten.write_locked() = None;
            }
            let _ = written_tx.send(Some(result.is_ok()));
            if let Some(lazy) = writer.upgrade() {
                lazy.count(&listing);
            }
        };
        drop(runtime.spawn_blocking(write));
        Ok(lazy)
    }

    /// The root node of the tree.
    pub fn root(&self) -> &Node {
        &self.root
    }

    /// The listing, while it is still being written to the store (afterwards the store has
    /// it).
    fn unwritten(&self) -> Option<Arc<Listing>> {
        self.unwritten.read_locked().clone()
    }

    /// The entries of directory `tree` of this tree, while its listing is still being written
    /// to the store (afterwards the store has them).
    pub fn unwritten_directory(&self, tree: &TreeHash) -> Option<Arc<Vec<Entry>>> {
        match self.unwritten()?.object(tree)? {
            Object::Directory(entries) => Some(Arc::new(entries.clone())),
            Object::Root(_) => None,
        }
    }

    /// Waits until the listing is in the store.
    async fn listing_written(&self) -> anyhow::Result<()> {
        let mut written = self.written.clone();
        match written.wait_for(Option::is_some).await.map(|w| *w) {
            Ok(Some(true)) => Ok(()),
            _ => anyhow::bail!("its listing could not be written to the store"),
        }
    }

    /// Whether the blob is in the store already.
    fn present(&self, blob: &BlobHash, size: u64) -> bool {
        self.is_complete() || self.store.has_blob(blob, size)
    }

    /// Counts the files of `listing` and those of them the store has (behind the first
    /// answers: a stat per file).
    fn count(&self, listing: &Listing) {
        let mut files = HashMap::new();
        for (_, object) in listing.objects() {
            for node in object.nodes() {
                if let Node::File { blob, size, .. } = node {
                    files.insert(*blob, *size);
                }
            }
        }
        self.tally.locked().totals = Some((files.len() as u64, files.values().sum()));
        for (blob, size) in files {
            if self.is_complete() {
                return;
            }
            if self.store.has_blob(&blob, size) {
                self.landed(blob, size);
            }
        }
    }

    /// `blob` is in the store now.
    fn landed(&self, blob: BlobHash, size: u64) {
        if !self.is_complete() {
            self.tally.locked().here(blob, size);
        }
    }

    /// Joins (or starts) the fetch of `blob`: a reader's now, a background one when a slot of
    /// [`BACKGROUND_FETCHES`] is free.
    fn join(self: &Arc<Self>, blob: BlobHash, size: u64, background: bool, then: Arrival) {
        if self.present(&blob, size) {
            self.landed(blob, size);
            return then(Ok(()));
        }
        let urgent = {
            let mut fetching = self.fetching.locked();
            if let Some(flight) = fetching.get_mut(&blob) {
                flight.waiters.push(then);
                if !background {
                    flight.urgent.notify_one();
                }
                return;
            }
            let urgent = Arc::new(Notify::new());
            fetching.insert(
                blob,
                BlobFetch {
                    waiters: vec![then],
                    urgent: urgent.clone(),
                },
            );
            urgent
        };
        self.fly(Download::Blob(blob, size), vec![blob], urgent, background);
    }

    /// Runs one download for the flights of `blobs` and lands them: a background one once a
    /// slot is free, or at once if a reader comes to want one of them meanwhile.
    fn fly(self: &Arc<Self>, download: Download, blobs: Vec<BlobHash>, urgent: Arc<Notify>, background: bool) {
        let lazy = self.clone();
        self.runtime.spawn(async move {
            let _slot = if background {
                tokio::select! {
                    slot = lazy.background.clone().acquire_owned() => slot.ok(),
                    () = urgent.notified() => None,
                }
            } else {
                None
            };
            let (result, what) = match &download {
                Download::Blob(blob, size) => {
                    let result = if lazy.store.has_blob(blob, *size) {
                        Ok(())
                    } else {
                        lazy.remote.fetch_blob(&lazy.store, blob, *size).await.map(|_| ())
                    };
                    (result, format!("blob {blob}"))
                }
                Download::Pack(unit) => (
                    lazy.remote.fetch_pack(&lazy.store, unit).await.map(|_| ()),
                    unit.key.clone(),
                ),
            };
            if result.is_ok() {
                match &download {
                    Download::Blob(blob, size) => lazy.landed(*blob, *size),
                    Download::Pack(unit) => unit.blobs.iter().for_each(|(blob, size)| lazy.landed(*blob, *size)),
                }
            }
            if let Err(e) = &result {
                tracing::error!(
                    "{}: cannot fetch {what} from {}: {e:#} (reads of its files fail; the next read tries again)",
                    lazy.label,
                    lazy.remote
                );
            }
            let waiters: Vec<Arrival> = {
                let mut fetching = lazy.fetching.locked();
                blobs
                    .iter()
                    .filter_map(|blob| fetching.remove(blob))
                    .flat_map(|flight| flight.waiters)
                    .collect()
            };
            let outcome = result.map_err(|_| ());
            // Waiters answer requests: a blocking thread's work.
            let _ = tokio::task::spawn_blocking(move || waiters.into_iter().for_each(|w| w(outcome))).await;
        });
    }

    /// Queues the pack of `unit` in the background: each of its blobs not here and not in
    /// flight becomes a flight of the pack's one download (hurried along when a reader wants
    /// any of them); every blob's outcome goes to `done`.
    fn join_pack(self: &Arc<Self>, unit: pack::Unit, done: &tokio::sync::mpsc::UnboundedSender<Result<(), ()>>) {
        let missing: Vec<BlobHash> = unit
            .blobs
            .iter()
            .filter(|(blob, size)| !self.present(blob, *size))
            .map(|(blob, _)| *blob)
            .collect();
        let urgent = Arc::new(Notify::new());
        let mut mine = Vec::new();
        {
            let mut fetching = self.fetching.locked();
            for blob in missing {
                let done = done.clone();
                let waiter: Arrival = Box::new(move |outcome| {
                    let _ = done.send(outcome);
                });
                if let Some(flight) = fetching.get_mut(&blob) {
                    flight.waiters.push(waiter);
                    continue;
                }
                fetching.insert(
                    blob,
                    BlobFetch {
                        waiters: vec![waiter],
                        urgent: urgent.clone(),
                    },
                );
                mine.push(blob);
            }
        }
        if !mine.is_empty() {
            self.fly(Download::Pack(unit), mine, urgent, true);
        }
    }

    /// A reader's first read in a directory: fetches, in the background, the small files of
    /// the directory that are not here yet (the reader then finds them stored); once a reader
    /// has gone through [`BULK_DIRECTORIES`] directories, the rest of the tree too.
    fn fetch_ahead(self: &Arc<Self>, files: Vec<(BlobHash, u64)>) {
        let missing: Vec<_> = files
            .into_iter()
            .filter(|(blob, size)| *size <= FETCH_AHEAD_FILE_MAX && !self.present(blob, *size))
            .take(FETCH_AHEAD_FILES)
            .collect();
        for (blob, size) in missing {
            self.join(blob, size, false, Box::new(|_| {}));
        }
        if self.directories_read.fetch_add(1, Ordering::Relaxed) + 1 == BULK_DIRECTORIES {
            tracing::info!(
                "{}: read in {BULK_DIRECTORIES} directories; fetching the rest in the background",
                self.label
            );
            self.complete_in_background();
        }
    }

    /// Fetches every file not here yet, checks the narHash, and publishes the tree (once at a
    /// time; a failed completion may be started again).
    pub fn complete_in_background(self: &Arc<Self>) {
        if self.is_complete() || self.completing.swap(true, Ordering::AcqRel) {
            return;
        }
        let lazy = self.clone();
        self.runtime.spawn(async move {
            let outcome = lazy.complete().await;
            lazy.completing.store(false, Ordering::Release);
            match outcome {
                Ok(()) => tracing::info!("{}: every file of {} is here; published", lazy.label, lazy.tree),
                Err(e) => tracing::warn!("{}: cannot complete {}: {e:#}", lazy.label, lazy.tree),
            }
        });
    }

    async fn complete(self: &Arc<Self>) -> anyhow::Result<()> {
        let store = self.store.clone();
        let tree = self.tree;
        // From the listing in memory while it is being written (the fetches need not wait
        // for the store), else from the store.
        let unwritten = self.unwritten();
        let (units, blobs) = tokio::task::spawn_blocking(move || match unwritten {
            Some(listing) => {
                let object = |hash: &TreeHash| listing.object(hash);
                anyhow::Ok((pack::units(&tree, object)?, blobs_in_walk_order(&tree, object)?))
            }
            None => {
                let listing = pack::stored_listing(&store, &tree)?;
                let object = |hash: &TreeHash| listing.get(hash);
                anyhow::Ok((pack::units(&tree, object)?, blobs_in_walk_order(&tree, object)?))
            }
        })
        .await??;
        // Every missing blob queued at once, in walk order (the background slots are handed out
        // first come, first served): a reader walking the tree finds files arriving ahead of it,
        // and joins the fetch of any it reaches first. Small files come in packs where most of
        // a pack is missing, as a whole fetch takes them.
        let (done, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
        let mut packed = HashSet::new();
        for unit in units {
            let missing = unit.blobs.iter().filter(|(b, size)| !self.present(b, *size)).count();
            if unit.worth_fetching(missing) {
                packed.extend(unit.blobs.iter().map(|(blob, _)| *blob));
                self.join_pack(unit, &done);
            }
        }
        for (blob, size) in blobs.into_iter().filter(|(blob, _)| !packed.contains(blob)) {
            let done = done.clone();
            self.join(
                blob,
                size,
                true,
                Box::new(move |outcome| {
                    let _ = done.send(outcome);
                }),
            );
        }
        drop(done);
        let mut failed = 0;
        while let Some(outcome) = outcomes.recv().await {
            failed += usize::from(outcome.is_err());
        }
        if failed > 0 {
            anyhow::bail!("{failed} files could not be fetched from {}", self.remote);
        }
        // Publishing reads the tree's objects from the store.
        self.listing_written().await?;
        let (store, tree, nar) = (self.store.clone(), self.tree, self.nar);
        tokio::task::spawn_blocking(move || {
            let got = store.nar_hash_of(&tree)?;
            if got != nar {
                anyhow::bail!("its files make narHash {got}, not the recorded {nar}");
            }
            // The tree is live (since its listing came), so its objects are all kept; the
            // guard is what publishing asks of every writer.
            let _guard = store.guard()?;
            store.publish(&tree, &nar)
        })
        .await??;
        self.complete.store(true, Ordering::Relaxed);
        // Every file is here: the set that told which were is not needed any more.
        self.tally.locked().local = HashSet::new();
        Ok(())
    }
}

impl Contents for LazyTree {
    fn directory(&self, tree: &TreeHash) -> Option<Arc<Vec<Entry>>> {
        self.unwritten_directory(tree)
    }

    fn has(&self, blob: &BlobHash, size: u64) -> bool {
        self.present(blob, size)
    }

    /// At once if the blob is there, else after the one fetch every waiter shares — hurried
    /// along if it was queued in the background. A failure is logged once per attempt and not
    /// remembered: the next read tries again.
    fn when_here(self: Arc<Self>, blob: BlobHash, size: u64, then: Arrival) {
        self.join(blob, size, false, then);
    }

    fn reading_in(self: Arc<Self>, files: Vec<(BlobHash, u64)>) {
        if !self.is_complete() {
            self.fetch_ahead(files);
        }
    }

    fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Relaxed)
    }

    fn local_share(&self) -> Option<LocalShare> {
        let tally = self.tally.locked();
        let (files, bytes) = tally.totals?;
        if self.is_complete() {
            return Some(LocalShare {
                files_local: files,
                files,
                bytes_local: bytes,
                bytes,
            });
        }
        Some(LocalShare {
            files_local: tally.files_local.min(files),
            files,
            bytes_local: tally.bytes_local.min(bytes),
            bytes,
        })
    }
}

/// Every blob a stored listing names, with its size, in the order a top-down walk reads
/// them: a directory's files, then each of its subdirectories in name order.
fn blobs_in_walk_order<'a>(
    tree: &TreeHash,
    object: impl Fn(&TreeHash) -> Option<&'a Object>,
) -> anyhow::Result<Vec<(BlobHash, u64)>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut next = vec![*tree];
    while let Some(hash) = next.pop() {
        if !seen.insert(hash) {
            continue;
        }
        let Some(object) = object(&hash) else {
            anyhow::bail!("the listing lacks directory {hash}");
        };
        let mut subdirectories = Vec::new();
        for node in object.nodes() {
            match node {
                Node::File { blob, size, .. } => out.push((*blob, *size)),
                Node::Directory { tree } => subdirectories.push(*tree),
                Node::Symlink { .. } => {}
            }
        }
        next.extend(subdirectories.into_iter().rev());
    }
    Ok(out)
}
