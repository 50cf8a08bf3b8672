//! Remote stores: where a fleet of machines shares its trees. A remote holds what a local store
//! holds, under keys named by the same hashes, so a machine fetches exactly what its own store
//! lacks and checks every byte against the hash that names it before using it:
//!
//! ```text
//! REMOTE/
//!   blobs/<64 hex>        file contents, named by their BLAKE3
//!   trees/<64 hex>        tree objects, named by their BLAKE3
//!   bundles/<64 hex>      every tree object of a published tree, in one object (a machine
//!                         learns a whole tree's listing in one request)
//!   packs/<64 hex>[.own]  a subtree's small files in one object (see [`pack`]): a whole
//!                         tree in a few hundred requests, not one per file
//!   published/<64 hex>    "nar-sha256 sha256-…\n": the tree is whole on the remote
//!   index/<64 hex>        index entries, the same names and text as a local store's
//!   nix-cache-info, <hash>.narinfo, nar/<hash>.nar.zst
//!                         a Nix binary cache of the same trees (see [`nix`])
//! ```
//!
//! Pushing keeps one invariant: an object that names others is written after them (a tree
//! object after its blobs and subtrees, `published/` last), so a directory found on the
//! remote has everything below it, and a push skips whole subtrees already there — the second
//! revision of a repository uploads what changed. Where the objects live is a [`Backend`]:
//! S3, a directory or read-only HTTP; nothing above this module knows which.

pub mod backend;
mod bundle;
pub mod health;
pub mod lazy;
pub mod nix;
pub mod pack;
mod s3;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub use self::backend::{Backend, Body};
use super::{IndexKey, Store};
use crate::hash::tree::{Node, Object};
use crate::hash::{BlobHash, NarHash, TreeHash};

/// Requests in flight at once to a remote.
const CONCURRENCY: usize = 16;

/// A remote store.
#[derive(Clone)]
pub struct Remote {
    /// The backend, watched: every request's outcome is recorded in its health.
    backend: Arc<health::Watched>,
}

/// What fetching a tree from a remote did.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    /// The tree's NAR hash (checked against the remote's record).
    pub nar: Option<NarHash>,
    /// Objects downloaded.
    pub objects: u64,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// What pushing a tree did.
#[derive(Clone, Debug, Default)]
pub struct Pushed {
    /// Objects uploaded (blobs, tree objects, records, the Nix cache entry).
    pub objects: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Of those, the Nix binary cache entry's (its NAR is a whole copy of the tree,
    /// compressed: Nix's format has no sharing between paths).
    pub nix_bytes: u64,
    /// Whether the remote already had the whole tree.
    pub already: bool,
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.backend.describe())
    }
}

/// Connect and stall timeouts for a remote: a remote that is down or slow gives way to the
/// forge quickly instead of holding a fetch.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Giving up connecting.
    pub connect: Duration,
    /// Giving up a request that sends nothing.
    pub stall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            stall: Duration::from_secs(30),
        }
    }
}

impl Remote {
    /// Opens the remote at `url`: `s3://BUCKET[/PREFIX]?endpoint=…&region=…`, `file:///DIR`,
    /// or `http(s)://…` (read-only).
    pub fn open(url: &str, timeouts: Timeouts) -> Result<Remote> {
        // `read_timeout` runs from the start of a request to its answer, sending included: an
        // upload taking longer than the stall timeout would fail while it progresses, so
        // uploads get a client without it and watch their own progress (s3.rs).
        let client = |read_timeout: bool| {
            // rustls needs a process-wide crypto provider; a second install is a no-op error.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut builder = reqwest::Client::builder()
                .connect_timeout(timeouts.connect)
                .user_agent(concat!("cab/", env!("CARGO_PKG_VERSION")));
            if read_timeout {
                builder = builder.read_timeout(timeouts.stall);
            }
            // `NAME.localhost` is loopback (RFC 6761), as curl and browsers resolve it: a
            // bucket's website endpoint on this machine is named that way, and the system's
            // resolver may not know it.
            let host = reqwest::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .and_then(|u| u.host_str().map(str::to_owned));
            if let Some(host) = host.filter(|h| h.ends_with(".localhost")) {
                builder = builder.resolve(&host, std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
            }
            builder.build().context("cannot set up HTTP for the remote")
        };
        let backend: Arc<dyn Backend> = if url.starts_with("s3://") {
            let location = s3::Location::parse(url)?;
            Arc::new(s3::S3::new(&location, client(true)?, client(false)?, timeouts.stall)?)
        } else if let Some(path) = url.strip_prefix("file://") {
            Arc::new(backend::Directory::new(std::path::Path::new(path)))
        } else if url.starts_with("http://") || url.starts_with("https://") {
            Arc::new(backend::Http::new(url, client(true)?)?)
        } else {
            bail!("remote `{url}`: use s3://BUCKET?endpoint=URL&region=R, file:///DIR or http(s)://URL (read-only)");
        };
        Ok(Remote::with_backend(backend))
    }

    /// A remote over `backend`.
    pub fn with_backend(backend: Arc<dyn Backend>) -> Remote {
        Remote {
            backend: Arc::new(health::Watched::new(backend)),
        }
    }

    /// The backend (for the Nix cache writer), watched as every request of this remote is.
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// What this process's requests to the remote have given so far (for `cab status`: no
    /// request is made to learn it).
    pub fn health(&self) -> health::Health {
        self.backend.health()
    }

    fn blob_key(blob: &BlobHash) -> String {
        format!("blobs/{}", blob.to_hex())
    }

    fn tree_key(tree: &TreeHash) -> String {
        format!("trees/{}", tree.to_hex())
    }

    fn published_key(tree: &TreeHash) -> String {
        format!("published/{}", tree.to_hex())
    }

    fn bundle_key(tree: &TreeHash) -> String {
        format!("bundles/{}", tree.to_hex())
    }

    /// The NAR hash the remote records for `tree`, if the whole tree is there.
    pub async fn published(&self, tree: &TreeHash) -> Result<Option<NarHash>> {
        let Some(bytes) = self.backend.get(&Self::published_key(tree)).await? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        let nar = text
            .lines()
            .find_map(|l| l.strip_prefix("nar-sha256 "))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{self}: the record of {tree} is corrupt"))?;
        Ok(Some(nar))
    }

    /// The tree an index key names on the remote, if any.
    pub async fn lookup(&self, key: &IndexKey) -> Result<Option<TreeHash>> {
        let name = Store::index_file_name(key);
        let Some(bytes) = self.backend.get(&format!("index/{name}")).await? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        let mut lines = text.lines();
        // The entry says which key it is for: one stored under another key's name is refused.
        let said = lines.next().unwrap_or_default();
        if said != format!("{} {} {}", key.how, key.format, key.value) {
            bail!("{self}: index entry {name} is for `{said}`, not for {}", key.value);
        }
        let tree = lines
            .next()
            .and_then(|l| l.parse().ok())
            .with_context(|| format!("{self}: index entry {name} is corrupt"))?;
        Ok(Some(tree))
    }

    /// Brings `tree` from the remote into `store`, whole, verified and published; `None` if
    /// the remote does not have it. A corrupt or missing object fails with its name. The
    /// tree is declared live for this process (a fetch in flight, then a tree in use) before
    /// any object of it found in the store is relied on: its listing goes in first, so that a
    /// collection meanwhile marks every blob of it that is here.
    pub async fn fetch(&self, store: &Store, tree: &TreeHash) -> Result<Option<Fetched>> {
        let Some(nar) = self.published(tree).await? else {
            return Ok(None);
        };
        if store.hold(tree)?.is_some() {
            return Ok(Some(Fetched {
                nar: Some(nar),
                ..Fetched::default()
            }));
        }
        let mut fetched = Fetched::default();
        let objects = self.tree_objects(store, tree, &mut fetched).await?;
        let Listing { objects, .. } = store_listing(store, Listing { tree: *tree, objects }).await?;
        // Every blob the tree names that this store lacks.
        let mut wanted: HashMap<BlobHash, u64> = HashMap::new();
        for (object, _) in objects.values() {
            for node in object.nodes() {
                if let Node::File { blob, size, .. } = node
                    && !store.has_blob(blob, *size)
                {
                    wanted.insert(*blob, *size);
                }
            }
        }
        // Small files come in packs where most of a pack is wanted; the rest one by one.
        let mut packs = Vec::new();
        for unit in pack::units(tree, |hash| objects.get(hash).map(|(object, _)| object))? {
            let missing = unit.blobs.iter().filter(|(b, _)| wanted.contains_key(b)).count();
            if unit.worth_fetching(missing) {
                for (blob, _) in &unit.blobs {
                    wanted.remove(blob);
                }
                packs.push(unit);
            }
        }
        let jobs = packs
            .into_iter()
            .map(Job::Pack)
            .chain(wanted.into_iter().map(|(blob, size)| Job::Blob(blob, size)));
        let download = |job: Job| {
            let (remote, store) = (self.clone(), store.clone());
            async move {
                match job {
                    Job::Pack(unit) => remote.fetch_pack(&store, &unit).await,
                    Job::Blob(blob, size) => remote.fetch_blob(&store, &blob, size).await.map(|b| (1, b)),
                }
            }
        };
        bounded(jobs, download, "a download task panicked", |(objects, bytes)| {
            fetched.objects += objects;
            fetched.bytes += bytes;
        })
        .await?;
        let got = tokio::task::spawn_blocking({
            let (store, tree) = (store.clone(), *tree);
            move || store.nar_hash_of(&tree)
        })
        .await
        .context("a hashing task panicked")??;
        if got != nar {
            bail!(
                "{self}: tree {tree} is recorded with narHash {nar}, but its objects make {got}: the remote is corrupt"
            );
        }
        let _guard = store.guard()?;
        store.publish(tree, &nar)?;
        fetched.nar = Some(nar);
        Ok(Some(fetched))
    }

    /// Fetches only the listing of `tree` — its tree objects, from its bundle in one request,
    /// each checked against its name — without its blobs: enough to serve names, kinds, sizes
    /// and modes at once, with file contents fetched when read ([`Remote::fetch_blob`]). The
    /// listing is returned in memory, so that it can be served before it is written
    /// ([`Listing::store`]). Returns the narHash the remote records with it, or `None` if the
    /// remote does not have the tree.
    pub async fn fetch_listing(&self, store: &Store, tree: &TreeHash) -> Result<Option<(NarHash, Fetched, Listing)>> {
        let Some(nar) = self.published(tree).await? else {
            return Ok(None);
        };
        let mut fetched = Fetched::default();
        let objects = self.tree_objects(store, tree, &mut fetched).await?;
        fetched.nar = Some(nar);
        Ok(Some((nar, fetched, Listing { tree: *tree, objects })))
    }

    /// One blob, checked against its name and size, into `store`; returns its size. The blob
    /// belongs to a tree this process has declared live (whose listing is in `store`), so a
    /// collection keeps it from the moment it is written, or found there.
    pub async fn fetch_blob(&self, store: &Store, blob: &BlobHash, size: u64) -> Result<u64> {
        let key = Self::blob_key(blob);
        let bytes = self
            .backend
            .get(&key)
            .await?
            .with_context(|| format!("{self}: {key} is missing (the remote is incomplete)"))?;
        if bytes.len() as u64 != size || BlobHash::of(&bytes) != *blob {
            bail!("{self}: {key} is corrupt (its bytes do not hash to its name)");
        }
        let store = store.clone();
        let blob = *blob;
        tokio::task::spawn_blocking(move || {
            let _guard = store.guard()?;
            store.add_blob(&blob, &bytes)
        })
        .await
        .context("a storing task panicked")??;
        Ok(size)
    }

    /// The blobs of `unit` from its pack, each checked, into `store`; returns the requests
    /// and bytes it took. A pack that is missing or does not check out gives way to its blobs
    /// one by one (a warning names a corrupt one).
    pub async fn fetch_pack(&self, store: &Store, unit: &pack::Unit) -> Result<(u64, u64)> {
        match self.backend.get(&unit.key).await {
            Ok(Some(bytes)) => {
                let len = bytes.len() as u64;
                let (store, owned) = (store.clone(), unit.clone());
                // Checked and stored in one pass over the bytes: the BLAKE3 of every blob once.
                let corrupt = tokio::task::spawn_blocking(move || {
                    let blobs = match pack::decode(&owned, &bytes) {
                        Ok(blobs) => blobs,
                        Err(e) => return anyhow::Ok(Some(e)),
                    };
                    let _guard = store.guard()?;
                    store.add_blobs(blobs.iter().map(|(blob, bytes)| (blob, *bytes)))?;
                    Ok(None)
                })
                .await
                .context("a storing task panicked")??;
                match corrupt {
                    None => return Ok((1, len)),
                    Some(e) => {
                        tracing::warn!("{self}: {} is corrupt ({e:#}); fetching its files one by one", unit.key)
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                "{self}: cannot fetch {} ({e:#}); fetching its files one by one",
                unit.key
            ),
        }
        let mut requests = 1;
        let mut total = 0;
        for (blob, size) in &unit.blobs {
            if !store.has_blob(blob, *size) {
                total += self.fetch_blob(store, blob, *size).await?;
                requests += 1;
            }
        }
        Ok((requests, total))
    }

    /// Uploads the packs of `tree` the remote lacks (after its blobs: a pack only speeds up
    /// what the blobs already give).
    async fn push_packs(&self, store: &Store, tree: &TreeHash, pushed: &mut Pushed) -> Result<()> {
        let units = {
            let (store, tree) = (store.clone(), *tree);
            tokio::task::spawn_blocking(move || {
                let listing = pack::stored_listing(&store, &tree)?;
                pack::units(&tree, |hash| listing.get(hash))
            })
            .await
            .context("a listing task panicked")??
        };
        let present = self.exist_all(&units, |u| u.key.clone()).await?;
        let missing: Vec<pack::Unit> = units
            .into_iter()
            .zip(present)
            .filter(|(_, there)| !there)
            .map(|(u, _)| u)
            .collect();
        // Each task builds its pack and uploads it, so reading blobs overlaps the uploads;
        // at most CONCURRENCY packs are in memory at once (a whole tree's would not fit).
        let upload = |unit: pack::Unit| {
            let (store, backend) = (store.clone(), self.backend.clone());
            async move {
                let key = unit.key.clone();
                let bytes = tokio::task::spawn_blocking(move || {
                    let contents = unit
                        .blobs
                        .iter()
                        .map(|(blob, _)| {
                            let path = store.blob_path(blob);
                            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    anyhow::Ok(pack::encode(contents.iter().map(Vec::as_slice)))
                })
                .await
                .context("a packing task panicked")??;
                let len = bytes.len() as u64;
                backend.put(&key, Body::Bytes(bytes)).await?;
                anyhow::Ok(len)
            }
        };
        bounded(missing, upload, "an upload task panicked", |len| {
            pushed.bytes += len;
            pushed.objects += 1;
        })
        .await
    }

    /// Every tree object of `tree`, by hash: from its bundle in one request, else one by one.
    /// Each is checked against its name.
    async fn tree_objects(
        &self,
        store: &Store,
        tree: &TreeHash,
        fetched: &mut Fetched,
    ) -> Result<HashMap<TreeHash, (Object, Vec<u8>)>> {
        let mut known: HashMap<TreeHash, Vec<u8>> = HashMap::new();
        match self.backend.get(&Self::bundle_key(tree)).await {
            Ok(Some(bytes)) => {
                fetched.objects += 1;
                fetched.bytes += bytes.len() as u64;
                match bundle::decode(&bytes) {
                    Ok(objects) => known.extend(objects),
                    Err(e) => tracing::warn!(
                        "{self}: the bundle of {tree} is unusable ({e:#}); fetching its objects one by one"
                    ),
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("{self}: cannot fetch the bundle of {tree} ({e:#}); fetching its objects one by one")
            }
        }
        let mut objects = HashMap::new();
        let mut next = vec![*tree];
        while !next.is_empty() {
            let mut level = Vec::new();
            // A directory that appears twice in a level (two identical subtrees) is taken once:
            // its second sight would find it neither in the bundle any more nor stored yet.
            let mut in_level = HashSet::new();
            for hash in next.drain(..) {
                if objects.contains_key(&hash) || !in_level.insert(hash) {
                    continue;
                }
                if let Some(bytes) = known.remove(&hash) {
                    level.push((hash, bytes));
                } else if let Ok(bytes) = std::fs::read(store.object_path(&hash)) {
                    level.push((hash, bytes));
                } else {
                    let key = Self::tree_key(&hash);
                    let bytes = self
                        .backend
                        .get(&key)
                        .await?
                        .with_context(|| format!("{self}: {key} is missing (the remote is incomplete)"))?;
                    fetched.objects += 1;
                    fetched.bytes += bytes.len() as u64;
                    level.push((hash, bytes));
                }
            }
            for (hash, bytes) in level {
                if blake3::hash(&bytes).as_bytes() != &hash.0 {
                    bail!("{self}: tree object {hash} is corrupt (its bytes do not hash to its name)");
                }
                let object =
                    Object::decode(&bytes).with_context(|| format!("{self}: tree object {hash} is corrupt"))?;
                if let Object::Directory(entries) = &object {
                    next.extend(entries.iter().filter_map(|e| match e.node {
                        Node::Directory { tree } => Some(tree),
                        _ => None,
                    }));
                }
                objects.insert(hash, (object, bytes));
            }
        }
        Ok(objects)
    }

    /// Uploads `tree` (published in `store`) and its index entries, skipping what the remote
    /// has; with `nix`, also a Nix binary cache entry for it.
    pub async fn push(&self, store: &Store, tree: &TreeHash, nix: Option<&nix::CacheWriter>) -> Result<Pushed> {
        // Held: a collection cannot take it away in the middle of the upload.
        let published = store
            .hold(tree)?
            .with_context(|| format!("{tree} is not published in this store"))?;
        let mut pushed = Pushed::default();
        let already = self.published(tree).await?.is_some();
        if !already {
            self.push_objects(store, tree, &mut pushed).await?;
            let bundle = bundle::encode(store, tree)?;
            pushed.bytes += bundle.len() as u64;
            pushed.objects += 1;
            self.backend.put(&Self::bundle_key(tree), Body::Bytes(bundle)).await?;
            self.push_packs(store, tree, &mut pushed).await?;
        }
        if let Some(nix) = nix
            && (!already || !nix.has(self, &published.nar).await?)
        {
            let (objects, bytes) = nix.write(self, store, tree, &published.nar).await?;
            pushed.objects += objects;
            pushed.bytes += bytes;
            pushed.nix_bytes += bytes;
        }
        if !already {
            let record = format!("nar-sha256 {}\n", published.nar);
            pushed.bytes += record.len() as u64;
            pushed.objects += 1;
            self.backend
                .put(&Self::published_key(tree), Body::Bytes(record.into_bytes()))
                .await?;
        }
        for (name, text) in store.index_entries_for(tree)? {
            let key = format!("index/{name}");
            if self.backend.get(&key).await?.is_some_and(|old| old == text.as_bytes()) {
                continue;
            }
            pushed.bytes += text.len() as u64;
            pushed.objects += 1;
            self.backend.put(&key, Body::Bytes(text.into_bytes())).await?;
        }
        pushed.already = already;
        Ok(pushed)
    }

    /// The objects of `tree` the remote lacks: whole subtrees are skipped when their tree
    /// object is there (it was written after everything below it).
    async fn push_objects(&self, store: &Store, tree: &TreeHash, pushed: &mut Pushed) -> Result<()> {
        // Top down: which tree objects are missing, level by level.
        // Only the hashes are kept (a million-entry tree has ~50k objects): each is read
        // again when it is uploaded.
        let mut missing_levels: Vec<Vec<TreeHash>> = Vec::new();
        let mut blobs: HashSet<BlobHash> = HashSet::new();
        let mut level = vec![*tree];
        while !level.is_empty() {
            let present = self.exist_all(&level, Self::tree_key).await?;
            let mut missing = Vec::new();
            let mut next = Vec::new();
            for (hash, there) in level.into_iter().zip(present) {
                if there {
                    continue;
                }
                let path = store.object_path(&hash);
                let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                let object = Object::decode(&bytes).with_context(|| format!("tree object {hash} is corrupt"))?;
                for node in object.nodes() {
                    match node {
                        Node::File { blob, .. } => {
                            blobs.insert(*blob);
                        }
                        Node::Directory { tree } => next.push(*tree),
                        Node::Symlink { .. } => {}
                    }
                }
                missing.push(hash);
            }
            missing_levels.push(missing);
            next.sort();
            next.dedup();
            level = next;
        }
        // Blobs first, then tree objects from the deepest level up.
        // Keys and paths are made as the uploads go, not all at once (a million blobs).
        let blobs: Vec<BlobHash> = blobs.into_iter().collect();
        let present = self.exist_all(&blobs, Self::blob_key).await?;
        let missing: Vec<BlobHash> = blobs
            .into_iter()
            .zip(present)
            .filter(|(_, there)| !there)
            .map(|(blob, _)| blob)
            .collect();
        let uploads = missing
            .into_iter()
            .map(|blob| (Self::blob_key(&blob), Body::File(store.blob_path(&blob))));
        self.put_all(uploads, pushed).await?;
        for missing in missing_levels.into_iter().rev() {
            let uploads = missing
                .into_iter()
                .map(|hash| (Self::tree_key(&hash), Body::File(store.object_path(&hash))));
            self.put_all(uploads, pushed).await?;
        }
        Ok(())
    }

    /// Whether each key exists, asked concurrently.
    async fn exist_all<T>(&self, items: &[T], key: fn(&T) -> String) -> Result<Vec<bool>> {
        let mut out = vec![false; items.len()];
        let keys = (0..items.len()).map(|i| key(&items[i]));
        let ask = |(i, key): (usize, String)| {
            let backend = self.backend.clone();
            async move { Ok((i, backend.exists(&key).await?)) }
        };
        let answered = |(i, there): (usize, bool)| out[i] = there;
        bounded(keys.enumerate(), ask, "a request task panicked", answered).await?;
        Ok(out)
    }

    /// Uploads every `(key, body)`, concurrently, counting them into `pushed`.
    async fn put_all(&self, uploads: impl IntoIterator<Item = (String, Body)>, pushed: &mut Pushed) -> Result<()> {
        let upload = |(key, body): (String, Body)| {
            let backend = self.backend.clone();
            async move {
                let body = small_in_memory(body).await?;
                let len = body.len()?;
                backend.put(&key, body).await?;
                anyhow::Ok(len)
            }
        };
        bounded(uploads, upload, "an upload task panicked", |len| {
            pushed.bytes += len;
            pushed.objects += 1;
        })
        .await
    }
}

/// A file of at most 1 MiB as bytes: one read, no second open by the upload.
async fn small_in_memory(body: Body) -> Result<Body> {
    let Body::File(path) = body else {
        return Ok(body);
    };
    let len = tokio::fs::metadata(&path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > 1 << 20 {
        return Ok(Body::File(path));
    }
    let bytes = tokio::fs::read(&path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Body::Bytes(bytes))
}

/// Runs `work` on every item, at most [`CONCURRENCY`] at once, and hands each result to
/// `done` as it comes. The first failure (or a task's panic, told as `panicked`) ends it, and
/// the tasks still running are aborted with the `JoinSet`.
async fn bounded<I, W, F, T>(items: I, mut work: W, panicked: &'static str, mut done: impl FnMut(T)) -> Result<()>
where
    I: IntoIterator,
    W: FnMut(I::Item) -> F,
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    let mut pending = items.into_iter();
    loop {
        while tasks.len() < CONCURRENCY
            && let Some(item) = pending.next()
        {
            tasks.spawn(work(item));
        }
        let Some(joined) = tasks.join_next().await else { break };
        done(joined.context(panicked)??);
    }
    Ok(())
}

/// One download of a whole-tree fetch.
enum Job {
    Pack(pack::Unit),
    Blob(BlobHash, u64),
}

/// The listing of a tree — every tree object of it, checked against its name — fetched from a
/// remote and not necessarily written to the store yet.
pub struct Listing {
    tree: TreeHash,
    objects: HashMap<TreeHash, (Object, Vec<u8>)>,
}

impl Listing {
    /// The tree it lists.
    pub fn tree(&self) -> TreeHash {
        self.tree
    }

    /// Its objects, decoded.
    pub fn objects(&self) -> impl Iterator<Item = (&TreeHash, &Object)> {
        self.objects.iter().map(|(hash, (object, _))| (hash, object))
    }

    /// One object of it.
    pub fn object(&self, tree: &TreeHash) -> Option<&Object> {
        self.objects.get(tree).map(|(object, _)| object)
    }

    /// How many objects it has.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether it has none (never, for a real tree).
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Writes every object into `store`. The caller holds a guard under which the tree was
    /// declared live, from before the first object is written until the last is: an object
    /// found already there is relied on, not written again, so no collection may delete it
    /// before the tree that needs it is live.
    pub fn store(&self, store: &Store) -> Result<()> {
        store.add_objects(self.objects.iter().map(|(hash, (_, bytes))| (hash, bytes.as_slice())))
    }
}

/// Writes a tree's listing (every tree object of it) into `store` and declares the tree live,
/// in one guarded section (see [`Listing::store`]).
async fn store_listing(store: &Store, listing: Listing) -> Result<Listing> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let _guard = store.guard()?;
        store.declare_live(&[listing.tree])?;
        listing.store(&store)?;
        Ok(listing)
    })
    .await
    .context("a storing task panicked")?
}
