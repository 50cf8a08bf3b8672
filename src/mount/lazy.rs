//! Trees served before their files are here. A pinned island the remote store holds is served
//! as soon as its listing is (every tree object, from the remote's bundle in one request):
//! names, kinds, sizes and modes are all in the tree objects. A file's contents are fetched
//! when it is first read — once, however many readers wait — checked against their BLAKE3,
//! written to the store, and from then on served like any stored blob. The tree is published
//! in the store only once every blob is there and its narHash checks out (`--prefetch`
//! completes it in the background); until then it lives in the mount's table only, and its
//! nodes say `user.cab.complete = "no"`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::hash::tree::{Node, Object};
use crate::hash::{NarHash, TreeHash, encoding};
use crate::store::Store;
use crate::store::remote::Remote;

/// Runs with the outcome of a blob's fetch: `Ok` once the blob is in the store.
type Waiter = Box<dyn FnOnce(Result<(), ()>) + Send>;

/// A tree whose files arrive when read.
pub struct Lazy {
    remote: Remote,
    store: Store,
    tree: TreeHash,
    nar: NarHash,
    label: String,
    complete: AtomicBool,
    /// Blobs being fetched, and who waits for each.
    fetching: Mutex<HashMap<[u8; 32], Vec<Waiter>>>,
}

/// Directories' small files fetched ahead in one go: at most this many files a directory…
const PREFETCH_FILES: usize = 256;
/// …of at most this size each.
const PREFETCH_FILE_MAX: u64 = 256 * 1024;

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("tree", &self.tree)
            .field("remote", &self.remote.to_string())
            .field("complete", &self.is_complete())
            .finish()
    }
}

impl Lazy {
    /// `tree` (whose listing is in `store`), its narHash as the lock or the remote records it,
    /// its files from `remote`.
    pub fn new(remote: Remote, store: Store, tree: TreeHash, nar: NarHash, label: &str) -> Arc<Lazy> {
        Arc::new(Lazy {
            remote,
            store,
            tree,
            nar,
            label: crate::island::shorten(label).into_owned(),
            complete: AtomicBool::new(false),
            fetching: Mutex::default(),
        })
    }

    /// Whether every file is here and the tree published.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Relaxed)
    }

    /// Whether the blob is in the store already.
    pub fn present(&self, blob: &[u8; 32], size: u64) -> bool {
        self.is_complete() || self.store.has_blob(blob, size)
    }

    /// Runs `then` once `blob` is in the store (or its fetch failed): at once if it is there,
    /// else after the one fetch every waiter shares. A failure is logged once per attempt and
    /// not remembered: the next read tries again.
    pub fn when_present(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        blob: [u8; 32],
        size: u64,
        then: impl FnOnce(Result<(), ()>) + Send + 'static,
    ) {
        if self.present(&blob, size) {
            return then(Ok(()));
        }
        {
            let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(waiters) = fetching.get_mut(&blob) {
                waiters.push(Box::new(then));
                return;
            }
            fetching.insert(blob, vec![Box::new(then)]);
        }
        let lazy = self.clone();
        runtime.spawn(async move {
            let result = lazy.remote.fetch_blob(&lazy.store, &blob, size).await;
            if let Err(e) = &result {
                tracing::error!(
                    "{}: cannot fetch blob {} from {}: {e:#} (reads of that file fail; the next read tries again)",
                    lazy.label,
                    encoding::to_hex(&blob),
                    lazy.remote
                );
            }
            let waiters = lazy
                .fetching
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&blob)
                .unwrap_or_default();
            let outcome = result.map(|_| ()).map_err(|_| ());
            // Waiters answer requests: a blocking thread's work.
            let _ = tokio::task::spawn_blocking(move || waiters.into_iter().for_each(|w| w(outcome))).await;
        });
    }

    /// Fetches, in the background, the small files of a directory that are not here yet (a
    /// reader going through a directory then finds them stored).
    pub fn prefetch(self: &Arc<Self>, runtime: &tokio::runtime::Handle, files: Vec<([u8; 32], u64)>) {
        let missing: Vec<_> = files
            .into_iter()
            .filter(|(blob, size)| *size <= PREFETCH_FILE_MAX && !self.present(blob, *size))
            .take(PREFETCH_FILES)
            .collect();
        for (blob, size) in missing {
            self.when_present(runtime, blob, size, |_| {});
        }
    }

    /// Fetches every file not here yet, checks the narHash, and publishes the tree.
    pub fn complete_in_background(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let lazy = self.clone();
        runtime.spawn(async move {
            let outcome = lazy.complete().await;
            match outcome {
                Ok(()) => tracing::info!("{}: every file of {} is here; published", lazy.label, lazy.tree),
                Err(e) => tracing::warn!("{}: cannot complete {}: {e:#}", lazy.label, lazy.tree),
            }
        });
    }

    async fn complete(self: &Arc<Self>) -> anyhow::Result<()> {
        let store = self.store.clone();
        let tree = self.tree;
        let blobs = tokio::task::spawn_blocking(move || blobs_of(&store, &tree)).await??;
        let mut tasks = tokio::task::JoinSet::new();
        let mut pending = blobs.into_iter().filter(|(b, s)| !self.store.has_blob(b, *s));
        loop {
            while tasks.len() < 16
                && let Some((blob, size)) = pending.next()
            {
                let (remote, store) = (self.remote.clone(), self.store.clone());
                tasks.spawn(async move { remote.fetch_blob(&store, &blob, size).await });
            }
            let Some(done) = tasks.join_next().await else { break };
            done??;
        }
        let (store, tree, nar) = (self.store.clone(), self.tree, self.nar);
        tokio::task::spawn_blocking(move || {
            let got = store.nar_hash_of(&tree)?;
            if got != nar {
                anyhow::bail!("its files make narHash {got}, not the recorded {nar}");
            }
            store.publish(&tree, &nar)
        })
        .await??;
        self.complete.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Every blob a stored listing names, with its size.
fn blobs_of(store: &Store, tree: &TreeHash) -> anyhow::Result<Vec<([u8; 32], u64)>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut next = vec![*tree];
    while let Some(hash) = next.pop() {
        if !seen.insert(hash) {
            continue;
        }
        let nodes = match store.read_object(&hash)? {
            Object::Directory(entries) => entries.into_iter().map(|e| e.node).collect(),
            Object::Root(node) => vec![node],
        };
        for node in nodes {
            match node {
                Node::File { blob, size, .. } => out.push((blob, size)),
                Node::Directory { tree } => next.push(tree),
                Node::Symlink { .. } => {}
            }
        }
    }
    Ok(out)
}
