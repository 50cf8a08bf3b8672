//! The realizer: runs derivations and puts their trees in the store.
//!
//! A WASM derivation runs the fetcher under wasmtime with only the doors [`host`] and
//! [`wasi`] open. While it runs, the realizer reads the hash FIFO (DESIGN.md, "The hash FIFO
//! protocol"): each line the fetcher writes is looked up in the store's index, and on a hit the
//! run is stopped at once — the guest future is dropped, which drops its connections — and the
//! derivation resolves to the stored tree. Otherwise the finished `out/` is ingested (moved,
//! not copied: it lives in the store's `tmp/`), both hashes are computed here, every value the
//! guest reported is checked against them, the expected hashes are checked, and only then is
//! anything published.

pub mod credentials;
mod engine;
mod failure;
mod fetcher;
mod host;
mod output;
pub mod progress;
mod wasi;

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use wasmtime::{Engine, Linker, Module};

pub use self::credentials::{Credentials, Secret};
pub use self::failure::{Cause, Failed, NotFound, OverLimit, network_summary};
pub use self::fetcher::FETCHER_WASM;
use self::host::{Access, Clients, Exit, FifoBarrier, HostState, Http, MemoryLimit};
use self::output::Output;
use self::progress::Progress;
use crate::derivation::{Builder, Derivation, Environment, Forges, Method};
use crate::hash::{NarHash, TreeHash};
use crate::store::remote::{Remote, nix};
use crate::store::{IndexKey, Ingest, Staging, Store};
use crate::sync::MutexExt;

/// What a run may consume. Each has a default a user can raise.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The guest's linear memory, in bytes.
    pub memory: usize,
    /// Wall-clock time for one run.
    pub time: Duration,
    /// Bytes downloaded in one run.
    pub download: u64,
    /// Bytes written into the output tree in one run.
    pub unpacked: u64,
    /// Entries in the output tree.
    pub entries: usize,
    /// How long a server may send nothing before the download counts as stalled.
    pub stall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 256 << 20,
            time: Duration::from_secs(30 * 60),
            download: 8 << 30,
            unpacked: 32 << 30,
            entries: 4_000_000,
            stall: Duration::from_secs(60),
        }
    }
}

/// The outcome of realizing a derivation.
#[derive(Clone, Debug)]
pub struct Realized {
    /// The island's tree (the subpath's, if it has one).
    pub tree: TreeHash,
    /// Its NAR hash.
    pub nar: NarHash,
    /// The commit it came from, where the format has one and it is known.
    pub rev: Option<String>,
    /// The whole fetched tree (equal to `tree` without a subpath).
    pub whole: TreeHash,
    /// Bytes downloaded (0 when the store already had everything).
    pub downloaded: u64,
    /// Whether the run was stopped early because the store already held the tree.
    pub stopped_early: bool,
}

/// The fetcher's exit code for "what the island names does not exist" (a ref the repository
/// lacks, no default branch): fetcher/src/error.rs.
const EXIT_MISSING: i32 = 3;

/// What the last realization of a derivation gave, as its holder notes it in the
/// derivation's lock: `<unix nanoseconds> <tree> <whole> <rev or ->`.
struct LastRealized {
    at: std::time::SystemTime,
    tree: TreeHash,
    whole: TreeHash,
    rev: Option<String>,
}

impl From<&Realized> for LastRealized {
    fn from(r: &Realized) -> Self {
        LastRealized {
            at: std::time::SystemTime::now(),
            tree: r.tree,
            whole: r.whole,
            rev: r.rev.clone(),
        }
    }
}

impl std::fmt::Display for LastRealized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nanos = self
            .at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let rev = self.rev.as_deref().unwrap_or("-");
        writeln!(f, "{nanos} {} {} {rev}", self.tree, self.whole)
    }
}

impl std::str::FromStr for LastRealized {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.split_whitespace();
        let nanos: u64 = parts.next().and_then(|p| p.parse().ok()).ok_or(())?;
        let tree = parts.next().and_then(|p| p.parse().ok()).ok_or(())?;
        let whole = parts.next().and_then(|p| p.parse().ok()).ok_or(())?;
        let rev = match parts.next().ok_or(())? {
            "-" => None,
            rev => Some(rev.to_owned()),
        };
        Ok(LastRealized {
            at: std::time::UNIX_EPOCH + Duration::from_nanos(nanos),
            tree,
            whole,
            rev,
        })
    }
}

/// One line from the hash FIFO, checked.
enum FifoEvent {
    /// A well-formed line, and the stored tree it names, if any.
    Value {
        format: String,
        value: String,
        hit: Option<TreeHash>,
    },
    /// A malformed line: the run fails.
    Malformed(String),
}

/// A compiled module and the linker that binds its imports.
struct Loaded {
    module: Module,
    linker: Arc<Linker<HostState>>,
}

/// How many guests are running, so that the epoch thread ticks only while one is.
#[derive(Default)]
struct Running {
    count: Mutex<usize>,
    wake: std::sync::Condvar,
}

/// Counts one running guest for as long as it lives.
struct RunningGuard(Arc<Running>);

impl RunningGuard {
    fn new(running: &Arc<Running>) -> RunningGuard {
        *running.count.locked() += 1;
        running.wake.notify_all();
        RunningGuard(running.clone())
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        *self.0.count.locked() -= 1;
    }
}

/// Runs derivations into a store.
pub struct Realizer {
    running: Arc<Running>,
    store: Store,
    engine: Engine,
    env: Environment,
    limits: Limits,
    credentials: Arc<Credentials>,
    clients: Arc<Clients>,
    modules: Mutex<HashMap<TreeHash, Arc<Loaded>>>,
    extra_modules: Mutex<HashMap<TreeHash, Vec<u8>>>,
    progress_bars: bool,
    /// A remote store to substitute from (and push to).
    remote: Option<Remote>,
    /// Push every newly realized tree to the remote, with these Nix cache settings.
    push: Option<Arc<nix::CacheWriter>>,
    /// Pushes started in the background, awaited by [`Realizer::finish_pushes`].
    pushes: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The features this realizer offers: `wasm`, and the host system as just another feature.
pub fn features() -> Vec<String> {
    vec![
        "wasm".into(),
        format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
    ]
}

/// A run's staging directory, removed on a blocking thread when the run ends (~0.2 ms of
/// unlinking that need not delay the answer; a one-shot `cab` still waits for it on exit,
/// as the runtime does for blocking work). Without a runtime it is removed at once.
struct CleanUpLater(Option<Staging>);

impl std::ops::Deref for CleanUpLater {
    type Target = Staging;

    fn deref(&self) -> &Staging {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for CleanUpLater {
    fn drop(&mut self) {
        let Some(staging) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(staging))),
            Err(_) => drop(staging),
        }
    }
}

/// The compatibility tag of modules compiled by `engine`: 16 hex digits of wasmtime's
/// compatibility hash (its version and settings), the suffix of their `cache/` file names.
fn engine_tag(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The tag this cab's compiled modules carry in the store's `cache/`; modules with another
/// were compiled by another wasmtime (or with other settings) and cannot be loaded here.
pub fn module_cache_tag() -> Result<String> {
    let engine = Engine::new(&engine::engine_config()).map_err(|e| anyhow!("cannot start wasmtime: {e}"))?;
    Ok(engine_tag(&engine))
}

/// The BLAKE3 of a module's bytes: its name in derivations.
pub fn module_hash(bytes: &[u8]) -> TreeHash {
    TreeHash(*blake3::hash(bytes).as_bytes())
}

impl Realizer {
    /// A realizer over `store`, fetching forge islands from `forges`, without credentials
    /// (see [`Realizer::with_credentials`]).
    pub fn new(store: Store, forges: Forges, limits: Limits) -> Result<Realizer> {
        let engine = Engine::new(&engine::engine_config()).map_err(|e| anyhow!("cannot start wasmtime: {e}"))?;
        // The epoch ticks every 10 ms while a guest runs; each tick lets a running guest
        // yield, so a stopped or timed-out run ends within a tick even in a loop that never
        // calls the host. With no guest running the thread sleeps (an idle mount costs nothing).
        let weak = engine.weak();
        let running: Arc<Running> = Arc::default();
        let ticker = running.clone();
        std::thread::Builder::new()
            .name("epoch".into())
            .spawn(move || {
                loop {
                    {
                        let mut count = ticker.count.locked();
                        while *count == 0 {
                            count = ticker.wake.wait(count).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    let Some(engine) = weak.upgrade() else { break };
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
            .context("cannot start the epoch thread")?;
        // rustls needs a process-wide crypto provider; a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let clients = Arc::new(Clients::new(limits.stall));
        let env = Environment {
            forges,
            fetcher: module_hash(FETCHER_WASM),
        };
        Ok(Realizer {
            running,
            store,
            engine,
            env,
            limits,
            credentials: Arc::default(),
            clients,
            modules: Mutex::default(),
            extra_modules: Mutex::default(),
            progress_bars: true,
            remote: None,
            push: None,
            pushes: Mutex::default(),
        })
    }

    /// Sends `credentials` with the fetcher's requests, each to its own host.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Arc::new(credentials);
        self
    }

    /// Turns progress bars off (they are on where standard error is a terminal).
    pub fn with_remote(mut self, remote: Remote, push: Option<nix::CacheWriter>) -> Self {
        self.remote = Some(remote);
        self.push = push.map(Arc::new);
        self
    }

    /// The remote store, if there is one.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// Waits for the pushes started in the background (a command waits for them before it
    /// exits; a mount lets them run).
    pub async fn finish_pushes(&self) {
        let pushes = std::mem::take(&mut *self.pushes.locked());
        for push in pushes {
            let _ = push.await;
        }
    }

    /// Pushes `trees` to the remote in the background, if pushing is on.
    fn push_later(&self, label: &str, trees: Vec<TreeHash>) {
        let (Some(remote), Some(cache)) = (self.remote.clone(), self.push.clone()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, label) = (self.store.clone(), crate::island::shorten(label).into_owned());
        let task = runtime.spawn(async move {
            for tree in trees {
                match remote.push(&store, &tree, Some(&cache)).await {
                    Ok(pushed) if pushed.already => tracing::debug!("{label}: {tree} is on {remote} already"),
                    Ok(pushed) => tracing::info!(
                        "{label}: pushed {tree} to {remote} ({} objects, {} bytes)",
                        pushed.objects,
                        pushed.bytes
                    ),
                    Err(e) => tracing::warn!("{label}: cannot push {tree} to {remote}: {e:#}"),
                }
            }
        });
        let mut pushes = self.pushes.locked();
        pushes.retain(|p| !p.is_finished());
        pushes.push(task);
    }

    /// A pinned tree the remote holds, fetched from it instead of its source. A remote that
    /// fails (down, slow, corrupt) is warned about, and the source is asked instead.
    async fn substitute(&self, drv: &Derivation, label: &str) -> Result<Option<Realized>> {
        let (Some(remote), Some(hash)) = (&self.remote, drv.hash) else {
            return Ok(None);
        };
        // Pinned by hash alone, a commit's tree needs the fetcher to say its commit.
        if drv.method.has_rev() && drv.rev.is_none() {
            return Ok(None);
        }
        let fetched = match remote.fetch(&self.store, &hash).await {
            Ok(Some(fetched)) => fetched,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(
                    "{label}: the remote {remote} could not give {hash} ({e:#}); fetching it from its source instead"
                );
                return Ok(None);
            }
        };
        let published = self
            .store
            .published(&hash)?
            .with_context(|| format!("{label}: {hash} came from {remote} but is not published here"))?;
        self.check_expected(drv, label, &hash, &published.nar)?;
        tracing::info!(
            "{label}: {hash} from the remote {remote} ({} objects, {} bytes)",
            fetched.objects,
            fetched.bytes
        );
        Ok(Some(Realized {
            tree: hash,
            nar: published.nar,
            rev: drv.rev.clone(),
            whole: hash,
            downloaded: fetched.bytes,
            stopped_early: false,
        }))
    }

    /// Turns progress bars off (they are on where standard error is a terminal).
    pub fn without_progress_bars(mut self) -> Self {
        self.progress_bars = false;
        self
    }

    /// The environment derivations are built in.
    pub fn environment(&self) -> &Environment {
        &self.env
    }

    /// What a run may consume.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Makes another module runnable by hash (for purpose-built test guests).
    pub fn add_module(&self, bytes: Vec<u8>) -> TreeHash {
        let hash = module_hash(&bytes);
        self.extra_modules.locked().insert(hash, bytes);
        hash
    }

    /// Compiles a module once per process, and once per machine via a cache in the store.
    fn load(&self, hash: &TreeHash) -> Result<Arc<Loaded>> {
        if let Some(loaded) = self.modules.locked().get(hash) {
            return Ok(loaded.clone());
        }
        let bytes = if *hash == module_hash(FETCHER_WASM) {
            FETCHER_WASM.to_vec()
        } else {
            let extra = self.extra_modules.locked();
            extra
                .get(hash)
                .cloned()
                .with_context(|| format!("no fetcher module {hash} is known to this cab"))?
        };
        let module = match self.precompiled(hash) {
            Some(module) => module,
            None => self.compile_cached(hash, &bytes)?,
        };
        let mut linker = Linker::new(&self.engine);
        wasi::add_to_linker(&mut linker, &module).map_err(|e| anyhow!("cannot bind WASI: {e}"))?;
        host::add_to_linker(&mut linker).map_err(|e| anyhow!("cannot bind host functions: {e}"))?;
        let loaded = Arc::new(Loaded {
            module,
            linker: Arc::new(linker),
        });
        self.modules.locked().insert(*hash, loaded.clone());
        Ok(loaded)
    }

    /// The fetcher as `build.rs` compiled it, if this engine can load it.
    fn precompiled(&self, hash: &TreeHash) -> Option<Module> {
        // CAB_NO_PRECOMPILED: compile as a cab without it would (benchmarks compare both).
        if *hash != module_hash(FETCHER_WASM)
            || fetcher::FETCHER_PRECOMPILED.is_empty()
            || std::env::var_os("CAB_NO_PRECOMPILED").is_some()
        {
            return None;
        }
        // SAFETY: the bytes were made by `Engine::precompile_module` in build.rs, from the
        // fetcher embedded beside them; wasmtime refuses them if this engine differs.
        match unsafe { Module::deserialize(&self.engine, fetcher::FETCHER_PRECOMPILED) } {
            Ok(module) => Some(module),
            Err(e) => {
                tracing::debug!("the precompiled fetcher does not fit this machine ({e}); compiling it");
                None
            }
        }
    }

    fn compile_cached(&self, hash: &TreeHash, bytes: &[u8]) -> Result<Module> {
        let dir = self.store.root().join("cache");
        let path = dir.join(format!("{}-{}.cwasm", hash.to_hex(), engine_tag(&self.engine)));
        if path.exists() {
            // SAFETY: the cache lives in the user's own store and was written by
            // `Module::serialize` of an engine with the same compatibility hash.
            match unsafe { Module::deserialize_file(&self.engine, &path) } {
                Ok(module) => return Ok(module),
                Err(e) => tracing::warn!("ignoring unusable compiled module {}: {e}", path.display()),
            }
        }
        let module =
            Module::new(&self.engine, bytes).map_err(|e| anyhow!("cannot compile fetcher module {hash}: {e}"))?;
        // The cache is an optimisation: failing to write it is not an error.
        if let Ok(serialized) = module.serialize() {
            let tmp = dir.join(format!(".{}.{}", hash.to_hex(), std::process::id()));
            let _ = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&tmp, serialized))
                .and_then(|()| std::fs::rename(&tmp, &path));
        }
        Ok(module)
    }

    /// Realizes a derivation; `label` names it in logs and errors (usually the island).
    pub async fn realize(&self, drv: &Derivation, label: &str) -> Result<Realized> {
        self.realize_watched(drv, label, &|_| {}).await
    }

    /// Realizes a derivation, telling `on_rev` the commit as soon as the fetcher reports it
    /// (before any download). At most one realization of a derivation runs per store at a
    /// time, in this process or any other: the others wait, then find its tree stored (or,
    /// for a branch, stop after the one round trip that says its commit is stored).
    pub async fn realize_watched(
        &self,
        drv: &Derivation,
        label: &str,
        on_rev: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Realized> {
        let offered = features();
        if let Some(missing) = drv.features.iter().find(|f| !offered.contains(f)) {
            bail!(
                "{label}: needs realizer feature `{missing}`, which this realizer lacks (it offers: {})",
                offered.join(", ")
            );
        }
        if let Some(realized) = self.stored(drv, label)? {
            return Ok(realized);
        }
        let asked = std::time::SystemTime::now();
        let (lock, waited) = self.lock_derivation(drv, label).await?;
        // Whoever held the lock may have stored it meanwhile, or realized this very
        // derivation while we waited: then its result is ours (one download, whoever asks).
        if let Some(realized) = self.stored(drv, label)? {
            return Ok(realized);
        }
        if waited && let Some(realized) = self.realized_meanwhile(&lock, drv, label, asked)? {
            return Ok(realized);
        }
        if let Some(realized) = self.substitute(drv, label).await? {
            return Ok(realized);
        }
        let realized = match &drv.builder {
            Builder::Local { path } => {
                let progress = Progress::new(label, self.progress_bars);
                // From the first object found present to the tree declared live.
                let _guard = self.store.guard()?;
                let added = self
                    .store
                    .ingest(path, Ingest::Copy, Some(&|size| progress.ingested(size)))
                    .with_context(|| format!("{label}: cannot ingest"));
                progress.finish();
                let added = added?;
                self.finish(drv, label, added.tree, Some(added.nar), None, 0, false, Vec::new())
            }
            Builder::Wasm { module } => self.run_wasm(drv, module, label, on_rev).await,
        }?;
        if let Err(e) = lock.write(&LastRealized::from(&realized).to_string()) {
            tracing::debug!("{label}: cannot note the realization in its lock: {e:#}");
        }
        Ok(realized)
    }

    /// The result of a realization of `drv` that ended after `asked`, noted in its lock by
    /// the process that held it.
    fn realized_meanwhile(
        &self,
        lock: &crate::store::StoreLock,
        drv: &Derivation,
        label: &str,
        asked: std::time::SystemTime,
    ) -> Result<Option<Realized>> {
        let Some(last) = lock.read().ok().and_then(|text| text.parse::<LastRealized>().ok()) else {
            return Ok(None);
        };
        let _guard = self.store.guard()?;
        if last.at < asked || self.store.published(&last.whole)?.is_none() {
            return Ok(None);
        }
        let published = self.store.published(&last.tree)?;
        let Some(published) = published else { return Ok(None) };
        self.check_expected(drv, label, &last.tree, &published.nar)?;
        self.store.declare_live(&[last.tree, last.whole])?;
        tracing::info!("{label}: realized by another process meanwhile: {}", last.tree);
        Ok(Some(Realized {
            tree: last.tree,
            nar: published.nar,
            rev: last.rev,
            whole: last.whole,
            downloaded: 0,
            stopped_early: true,
        }))
    }

    /// The derivation's tree if the store can answer without running anything: a pinned
    /// island whose tree is stored, or a pinned derivation realized before. Quick enough for
    /// a FUSE request (a few small file reads).
    pub fn stored(&self, drv: &Derivation, label: &str) -> Result<Option<Realized>> {
        // A tree made from a commit is only answered with its commit: pinned by hash alone,
        // the fetcher must say the commit (one round trip), or the lock would lack it.
        if drv.method.has_rev() && drv.rev.is_none() {
            return Ok(None);
        }
        // A tree found published here is declared live before the guard is dropped.
        let _guard = self.store.guard()?;
        // Fully pinned and stored: no network at all.
        if let Some(hash) = drv.hash
            && let Some(published) = self.store.published(&hash)?
        {
            self.check_rev(drv, label, &hash)?;
            self.check_expected(drv, label, &hash, &published.nar)?;
            self.store.declare_live(&[hash])?;
            tracing::debug!("{label}: {hash} is stored");
            return Ok(Some(Realized {
                tree: hash,
                nar: published.nar,
                rev: drv.rev.clone(),
                whole: hash,
                downloaded: 0,
                stopped_early: false,
            }));
        }
        let id_key = IndexKey::new("derivation", "id", &drv.id().to_string());
        if drv.is_pinned()
            && let Some(whole) = self.store.lookup(&id_key)?
        {
            return self
                .finish(drv, label, whole, None, drv.rev.clone(), 0, false, Vec::new())
                .map(Some);
        }
        Ok(None)
    }

    /// A lock pinning both a commit and a hash must agree with what this store recorded for
    /// that commit: a hand-edited lock naming another stored tree is refused, not served.
    fn check_rev(&self, drv: &Derivation, label: &str, hash: &TreeHash) -> Result<()> {
        let Some(rev) = &drv.rev else { return Ok(()) };
        let Some(whole) = self.store.lookup(&IndexKey::new(drv.method.as_str(), "git-rev", rev))? else {
            return Ok(());
        };
        let got = if drv.subpath.is_empty() {
            whole
        } else {
            match self.store.subtree(&whole, &drv.subpath) {
                Ok(tree) => tree,
                Err(_) => return Ok(()),
            }
        };
        if got != *hash {
            bail!(
                "{label}: hash mismatch: commit {rev} is stored here as another tree than the one pinned\n  \
                 wanted: hash = \"{hash}\"\n     got: hash = \"{got}\""
            );
        }
        Ok(())
    }

    /// Waits until no other realization of `drv` runs on this store; says whether it waited.
    async fn lock_derivation(&self, drv: &Derivation, label: &str) -> Result<(crate::store::StoreLock, bool)> {
        let name = format!("drv-{}", drv.id().to_hex());
        let mut waited = false;
        loop {
            if let Some(lock) = self.store.try_lock(&name)? {
                return Ok((lock, waited));
            }
            if !waited {
                tracing::info!("{label}: another realization of it is running; waiting for it");
                waited = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs the fetcher, and logs what the run cost besides the network (`-vv` shows it):
    /// the realizer's own overhead per run, which the benchmarks read.
    async fn run_wasm(
        &self,
        drv: &Derivation,
        module: &TreeHash,
        label: &str,
        on_rev: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Realized> {
        let started = Instant::now();
        let waited = Arc::new(AtomicU64::new(0));
        let result = self.run_guest(drv, module, label, waited.clone(), on_rev).await;
        let took = started.elapsed();
        let waited = Duration::from_nanos(waited.load(Ordering::Relaxed));
        tracing::debug!(
            "{label}: the fetcher's run took {:.3} ms, {:.3} ms of it waiting for the network, so {:.3} ms of overhead",
            took.as_secs_f64() * 1e3,
            waited.as_secs_f64() * 1e3,
            took.saturating_sub(waited).as_secs_f64() * 1e3
        );
        result
    }

    async fn run_guest(
        &self,
        drv: &Derivation,
        module: &TreeHash,
        label: &str,
        waited: Arc<AtomicU64>,
        on_rev: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Realized> {
        let loaded = self.load(module)?;
        let staging = CleanUpLater(Some(self.store.staging()?));
        let work = staging.path();
        let fifo_path = work.join("hashes");
        make_fifo(&fifo_path)?;
        // Read end first (non-blocking open), so that opening the write end cannot block.
        let receiver = tokio::net::unix::pipe::OpenOptions::new()
            .open_receiver(&fifo_path)
            .with_context(|| format!("cannot open {}", fifo_path.display()))?;
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo_path)
            .with_context(|| format!("cannot open {}", fifo_path.display()))?;

        let (events_tx, mut events) = mpsc::unbounded_channel();
        let store = self.store.clone();
        let how = drv.method.as_str();
        let barrier = FifoBarrier::new();
        let reader_barrier = barrier.clone();
        let remote = self.remote.clone();
        let reader_label = crate::island::shorten(label).into_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(receiver).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut event = classify(&store, how, &line);
                // Not stored here: perhaps a neighbour stored it on the remote.
                if let (
                    Some(remote),
                    FifoEvent::Value {
                        format,
                        value,
                        hit: hit @ None,
                    },
                ) = (&remote, &mut event)
                    && format.starts_with("git-")
                {
                    *hit = from_remote(remote, &store, &IndexKey::new(how, format, value), &reader_label).await;
                }
                // Pass the finding on first, then release the guest's waiting request: the
                // select below is biased to see a hit before the guest runs on.
                let sent = events_tx.send(event);
                reader_barrier.processed_one();
                if sent.is_err() {
                    break;
                }
            }
        });

        let progress = Progress::new(label, self.progress_bars);
        let output = Output::new(&work.join("out"), self.limits.unpacked, self.limits.entries)?;
        let http = Http::new(
            self.clients.clone(),
            Access {
                hosts: drv.hosts.clone(),
                credentials: self.credentials.clone(),
                gitlab: drv.method == Method::GitlabArchive,
            },
            self.limits.download,
            self.limits.stall,
            barrier.clone(),
            waited,
        );
        let limits = MemoryLimit::new(self.limits.memory);
        let mut args = vec![b"fetcher".to_vec()];
        args.extend(drv.args.iter().map(|a| a.as_bytes().to_vec()));
        let state = HostState::new(args, writer, output, http, limits, progress.clone(), label);

        let _running = RunningGuard::new(&self.running);
        let mut store = wasmtime::Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_async_yield_and_update(1);
        let guest = async move {
            let result = async {
                let instance = loaded.linker.instantiate_async(&mut store, &loaded.module).await?;
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await
            }
            .await;
            let mut state = store.into_data();
            state.fifo = None; // end of the FIFO: the reader sees EOF
            (result, state)
        };
        tokio::pin!(guest);
        let deadline = tokio::time::sleep(self.limits.time);
        tokio::pin!(deadline);

        let mut reported: Vec<(String, String)> = Vec::new();
        let mut rev = drv.rev.clone();
        if let Some(rev) = &rev {
            on_rev(rev);
        }
        let (result, state) = loop {
            tokio::select! {
                // Events first: a hit must win over the guest's next step.
                biased;
                Some(event) = events.recv() => {
                    let known = rev.is_some();
                    let hit = note(event, drv, label, &mut reported, &mut rev)?;
                    if !known && let Some(rev) = &rev {
                        on_rev(rev);
                    }
                    if let Some(tree) = hit {
                        // Stop the guest: dropping its future drops its store and connections.
                        progress.finish();
                        tracing::info!("{label}: already stored as {tree}; stopped the fetch after {} bytes", progress.bytes());
                        let downloaded = progress.bytes();
                        let _guard = self.store.guard()?;
                        return self.finish(drv, label, tree, None, rev, downloaded, true, reported);
                    }
                }
                finished = &mut guest => break finished,
                _ = &mut deadline => {
                    progress.finish();
                    return Err(OverLimit::error(format!(
                        "{label}: the fetch took longer than {:?}: over the time limit (raise --max-time)",
                        self.limits.time
                    )));
                }
            }
        };
        progress.finish();
        // Lines written just before the guest exited.
        while let Some(event) = events.recv().await {
            if let Some(tree) = note(event, drv, label, &mut reported, &mut rev)? {
                let _guard = self.store.guard()?;
                return self.finish(drv, label, tree, None, rev, state.http.downloaded, true, reported);
            }
        }
        let code = match result {
            Ok(()) => 0,
            Err(e) => match e.downcast_ref::<Exit>() {
                Some(Exit(code)) => *code,
                None => {
                    if state.limits.hit {
                        return Err(OverLimit::error(format!(
                            "{label}: the fetcher needed more than {} bytes of memory (raise --max-memory)",
                            self.limits.memory
                        )));
                    }
                    let reason = format!("the fetcher crashed: {e}");
                    return Err(failure(label, state.error, reason, &state.stderr_tail));
                }
            },
        };
        if code != 0 {
            let error = failure(
                label,
                state.error,
                format!("the fetcher exited with code {code}"),
                &state.stderr_tail,
            );
            // Before any commit was known: the repository or the ref may not exist at all.
            if rev.is_none() && (state.http.not_found || code == EXIT_MISSING) {
                return Err(anyhow::Error::new(NotFound(format!("{error:#}"))));
            }
            return Err(error);
        }
        let downloaded = state.http.downloaded;
        tracing::debug!("{label}: the fetcher finished; ingesting what it wrote");
        let tree_path = state.output.tree_path();
        drop(state);
        // From the first object found present to the tree declared live.
        let guard = self.store.guard()?;
        let added = self
            .store
            .ingest(&tree_path, Ingest::Move, None)
            .with_context(|| format!("{label}: cannot ingest the fetched tree"))?;
        for (format, value) in &reported {
            let matches = match format.as_str() {
                "blake3" => *value == added.tree.to_string(),
                "nar-sha256" => *value == added.nar.to_string(),
                _ => true,
            };
            if !matches {
                let got = if format == "blake3" {
                    added.tree.to_string()
                } else {
                    added.nar.to_string()
                };
                bail!("{label}: the fetcher reported {format} {value}, but the tree it wrote has {got}");
            }
        }
        let result = self.finish(
            drv,
            label,
            added.tree,
            Some(added.nar),
            rev,
            downloaded,
            false,
            reported,
        );
        drop(guard);
        drop(staging);
        result
    }

    /// Applies the subpath, checks the expected hashes, then publishes, indexes and declares
    /// both trees live. The caller holds the store's guard (from before its ingest, or from
    /// before it found `whole` published).
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        drv: &Derivation,
        label: &str,
        whole: TreeHash,
        whole_nar: Option<NarHash>,
        rev: Option<String>,
        downloaded: u64,
        stopped_early: bool,
        reported: Vec<(String, String)>,
    ) -> Result<Realized> {
        let tree = if drv.subpath.is_empty() {
            whole
        } else {
            self.store
                .subtree(&whole, &drv.subpath)
                .with_context(|| format!("{label}: bad subpath"))?
        };
        let nar = match (&whole_nar, tree == whole) {
            (Some(nar), true) => *nar,
            _ => match self.store.published(&tree)? {
                Some(p) => p.nar,
                None => self.store.nar_hash_of(&tree)?,
            },
        };
        self.check_expected(drv, label, &tree, &nar)?;
        if let Some(nar) = whole_nar {
            self.store.publish(&whole, &nar)?;
        }
        if tree != whole && self.store.published(&tree)?.is_none() {
            self.store.publish(&tree, &nar)?;
        }
        for (format, value) in &reported {
            if format.starts_with("git-") {
                self.store
                    .record(&IndexKey::new(drv.method.as_str(), format, value), &whole)?;
            }
        }
        if drv.is_pinned() {
            self.store
                .record(&IndexKey::new("derivation", "id", &drv.id().to_string()), &whole)?;
        }
        self.store.declare_live(&[tree, whole])?;
        tracing::info!(
            "{label}: {tree}{}",
            rev.as_ref().map(|r| format!(" (commit {r})")).unwrap_or_default()
        );
        // A tree new to this store goes to the remote too (index entries, recorded above,
        // with it), without holding up this answer.
        if whole_nar.is_some() {
            let mut trees = vec![whole];
            if tree != whole {
                trees.push(tree);
            }
            self.push_later(label, trees);
        }
        Ok(Realized {
            tree,
            nar,
            rev,
            whole,
            downloaded,
            stopped_early,
        })
    }

    /// The tree at `subpath` in the published tree `whole`, published in turn: a part of a
    /// tree already checked needs no fetch. Returns it with its narHash.
    pub fn subtree(&self, whole: &TreeHash, subpath: &[String]) -> Result<(TreeHash, NarHash)> {
        // One guarded section: no collection runs while the part is cut from the whole, and
        // the part is live before the guard goes.
        let _guard = self.store.guard()?;
        let tree = self.store.subtree(whole, subpath)?;
        let nar = match self.store.published(&tree)? {
            Some(published) => published.nar,
            None => {
                let nar = self.store.nar_hash_of(&tree)?;
                self.store.publish(&tree, &nar)?;
                nar
            }
        };
        self.store.declare_live(&[tree])?;
        Ok((tree, nar))
    }

    fn check_expected(&self, drv: &Derivation, label: &str, tree: &TreeHash, nar: &NarHash) -> Result<()> {
        if let Some(want) = &drv.hash
            && want != tree
        {
            return Err(Failed::error(
                Cause::Content,
                format!("{label}: hash mismatch\n  wanted: hash = \"{want}\"\n     got: hash = \"{tree}\""),
            ));
        }
        if let Some(want) = &drv.nar_hash
            && want != nar
        {
            return Err(Failed::error(
                Cause::Content,
                format!("{label}: narHash mismatch\n  wanted: narHash = \"{want}\"\n     got: narHash = \"{nar}\""),
            ));
        }
        Ok(())
    }
}

/// Takes one FIFO event: checks it against the derivation, remembers it, and returns the
/// stored tree it names, if any.
fn note(
    event: FifoEvent,
    drv: &Derivation,
    label: &str,
    reported: &mut Vec<(String, String)>,
    rev: &mut Option<String>,
) -> Result<Option<TreeHash>> {
    match event {
        FifoEvent::Malformed(line) => bail!("{label}: the fetcher wrote a malformed line to the hash FIFO: {line:?}"),
        FifoEvent::Value { format, value, hit } => {
            tracing::debug!("{label}: fetcher reports {format} {value}");
            if format == "git-rev" {
                if let Some(want) = &drv.rev
                    && *want != value
                {
                    bail!("{label}: the fetcher reports commit {value}, but the island pins {want}");
                }
                *rev = Some(value.clone());
            }
            reported.push((format, value));
            Ok(hit)
        }
    }
}

/// A failed run's error: the first failure on the host's side if there was one (else
/// `reason`), what the network failure was in a few words, and the guest's last words. Its
/// [`Cause`] is read off the host's error before that is flattened into the message.
fn failure(label: &str, host_error: Option<anyhow::Error>, reason: String, stderr: &[String]) -> anyhow::Error {
    let mut message = format!("{label}: ");
    let cause = match &host_error {
        Some(e) => {
            if let Some(summary) = network_summary(e) {
                message.push_str(&format!("{summary}: "));
            }
            message.push_str(&format!("{e:#}"));
            Cause::of(e)
        }
        None => {
            message.push_str(&reason);
            Cause::Unreachable
        }
    };
    if !stderr.is_empty() {
        message.push_str(&format!("\n  the fetcher said: {}", stderr.join("\n    ")));
    }
    Failed::error(cause, message)
}

fn make_fifo(path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).context("path contains NUL")?;
    // SAFETY: a plain syscall with a valid C string.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot make FIFO {}", path.display()));
    }
    Ok(())
}

/// The tree a remote's index names for `key`, brought into `store`; `None` (with a warning
/// where the remote failed) when it has none to give.
async fn from_remote(remote: &Remote, store: &Store, key: &IndexKey, label: &str) -> Option<TreeHash> {
    let tree = match remote.lookup(key).await {
        Ok(tree) => tree?,
        Err(e) => {
            tracing::warn!("{label}: cannot ask the remote {remote} ({e:#}); fetching from the source");
            return None;
        }
    };
    match remote.fetch(store, &tree).await {
        Ok(Some(fetched)) => {
            tracing::info!(
                "{label}: {tree} ({} {}) from the remote {remote} ({} objects, {} bytes)",
                key.format,
                key.value,
                fetched.objects,
                fetched.bytes
            );
            Some(tree)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("{label}: the remote {remote} could not give {tree} ({e:#}); fetching from the source");
            None
        }
    }
}

/// Checks one FIFO line and looks its value up in the index.
fn classify(store: &Store, how: &str, line: &str) -> FifoEvent {
    let Some((format, value)) = line.split_once(' ') else {
        return FifoEvent::Malformed(line.to_owned());
    };
    let hex40 = |v: &str| v.len() == 40 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let (well_formed, how) = match format {
        "git-rev" | "git-tree" => (hex40(value), how),
        "blake3" => (value.parse::<TreeHash>().is_ok(), IndexKey::ANY),
        "nar-sha256" => (value.parse::<NarHash>().is_ok(), IndexKey::ANY),
        _ => {
            // Forward compatible: a format we do not know is logged and otherwise ignored.
            tracing::info!("hash FIFO: ignoring a line in an unknown format: {line:?}");
            return FifoEvent::Value {
                format: format!("unknown:{format}"),
                value: value.to_owned(),
                hit: None,
            };
        }
    };
    if !well_formed {
        return FifoEvent::Malformed(line.to_owned());
    }
    // A tree the index names is declared live at once: the run may stop and use it.
    let lookup = || -> Result<Option<TreeHash>> {
        let _guard = store.guard()?;
        let hit = store.lookup(&IndexKey::new(how, format, value))?;
        if let Some(tree) = &hit {
            store.declare_live(&[*tree])?;
        }
        Ok(hit)
    };
    let hit = match lookup() {
        Ok(hit) => hit,
        Err(e) => {
            tracing::warn!("index lookup failed: {e:#}");
            None
        }
    };
    FifoEvent::Value {
        format: format.to_owned(),
        value: value.to_owned(),
        hit,
    }
}
