//! The realizer: turns a derivation into a tree ready to be read — the one place that decides
//! where a tree comes from.
//!
//! A tree passes through these states, and the first that answers wins (DESIGN.md, "The
//! realizer"): stored already (pinned and published, or a pinned derivation realized before);
//! served lazily from the remote store (its listing now, its files as they are read: only
//! for a caller that serves it); realized meanwhile by another process that held the
//! derivation's lock; substituted whole from the remote; fetched — the WASM fetcher run under
//! wasmtime with only its doors open, or a local path copied in. Whatever the way, the answer
//! is a [`Realized`] tree whose contents the caller reads through one small trait
//! ([`Contents`]): every file in the store, or some still on their way.
//!
//! While the fetcher runs, the realizer reads its hash FIFO ([`fifo`]): a line that names a
//! stored tree stops the run at once. Otherwise the finished `out/` is ingested (moved, not
//! copied: it lives in the store's `tmp/`), both hashes are computed here, every value the
//! guest reported is checked against them, the expected hashes are checked, and only then is
//! anything published ([`finish`]).

mod conditional;
pub mod credentials;
pub mod delegate;
mod engine;
mod epoch;
mod failure;
mod fetcher;
mod fifo;
mod finish;
mod host;
mod locks;
mod modules;
mod output;
pub mod progress;
mod refs;
mod remote;
mod run;
mod wasi;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use wasmtime::Engine;

pub use self::credentials::{Credentials, Secret};
use self::epoch::Running;
pub use self::failure::{Cause, Failed, NotFound, OverLimit, network_summary};
pub use self::fetcher::FETCHER_WASM;
use self::finish::Found;
use self::host::Clients;
use self::locks::LastRealized;
use self::modules::Loaded;
pub use self::modules::{module_cache_tag, module_hash};
use self::progress::Progress;
pub use self::refs::RefList;
use crate::derivation::{Builder, Derivation, Environment, Forges};
use crate::hash::tree::Node;
use crate::hash::{NarHash, TreeHash};
use crate::store::remote::{Remote, nix};
use crate::store::{Contents, IndexKey, Ingest, Store, Stored};

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

/// How a tree came to be ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Published in the store already: pinned, a pinned derivation realized before, or a
    /// commit the fetcher reported whose tree is stored (the run stopped early).
    Stored,
    /// Realized by another process while this one waited for the derivation's lock.
    Meanwhile,
    /// Substituted whole from the remote store.
    Substituted,
    /// Its listing from the remote store; its files arrive as they are read.
    Lazily,
    /// Fetched from its source (or copied from a local path) and published here now.
    Fetched,
    /// Realized by a realizer on another machine, and taken from the remote store: whole, or
    /// its listing with its files as they are read.
    Elsewhere,
}

/// A derivation realized: the tree ready to be read, and how it came to be.
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
    /// How it became ready.
    pub source: Source,
    /// Its root node (a directory, a file or a symlink).
    pub root: Node,
    /// Where its files are: all in the store, or some still on their way.
    pub contents: Arc<dyn Contents>,
}

/// What the caller will do with a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Have it whole in the store (imports, `cab fetch`).
    Whole,
    /// Know its pin (`cab update`): as `Whole`, except that a tree realized on another machine
    /// is checked against the remote's listing and left there, not brought over a slow link
    /// only to be pinned (a mount serves it lazily later).
    Pin,
    /// Serve it: files may arrive as they are read; with `complete`, all of them in the
    /// background.
    Serve { complete: bool },
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
    /// Pushes started in the background (by trees realized to be served), awaited by
    /// [`Realizer::finish_pushes`].
    pushes: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Where derivations may be realized besides here.
    realizers: Option<delegate::Realizers>,
    /// The machine this realizer works for, when it is another (`cab realize --stdio`).
    requester: Option<Arc<dyn delegate::Requester>>,
    /// The features this machine offers.
    features: Vec<String>,
}

/// The features every realizer offers: `wasm` (it runs the fetcher), `network` (it reaches
/// the forges), and its system as just another feature.
fn builtin_features() -> Vec<String> {
    vec![
        "wasm".into(),
        "network".into(),
        format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
    ]
}

impl Realizer {
    /// A realizer over `store`, fetching forge islands from `forges`, without credentials
    /// (see [`Realizer::with_credentials`]).
    pub fn new(store: Store, forges: Forges, limits: Limits) -> Result<Realizer> {
        let engine = Engine::new(&engine::engine_config()).map_err(|e| anyhow!("cannot start wasmtime: {e}"))?;
        let running: Arc<Running> = Arc::default();
        epoch::start_ticking(&engine, &running)?;
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
            realizers: None,
            requester: None,
            features: builtin_features(),
        })
    }

    /// Offers `extra` features besides the builtin ones (what this machine can do that others
    /// cannot, such as reach a private network).
    pub fn with_features(mut self, extra: &[String]) -> Self {
        for feature in extra {
            if !self.features.contains(feature) {
                self.features.push(feature.clone());
            }
        }
        self
    }

    /// The features this machine offers.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// This realizer without its pushes, and where they went: a realizer for another machine
    /// pushes what that machine needs itself, and the Nix cache entries after answering.
    fn without_nix_pushes(mut self) -> (Self, Option<Arc<nix::CacheWriter>>) {
        let nix = self.push.take();
        (self, nix)
    }

    /// Realizes derivations on the first of `realizers` that fits ([`delegate`]).
    pub fn with_realizers(mut self, realizers: delegate::Realizers) -> Self {
        self.realizers = Some(realizers);
        self
    }

    /// Works for another machine: asks `requester` about every line the fetcher reports that
    /// names no tree here, and tells it how downloads go.
    fn with_requester(mut self, requester: Arc<dyn delegate::Requester>) -> Self {
        self.requester = Some(requester);
        self
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

    /// Realizes a derivation whole into the store; `label` names it in logs and errors
    /// (usually the island). A tree new to the store is pushed to the remote before this
    /// returns, when pushing is on.
    pub async fn realize(&self, drv: &Derivation, label: &str) -> Result<Realized> {
        self.ready(drv, label, Want::Whole, &|_| {}).await
    }

    /// Pins a derivation: like [`Realizer::realize`], but a tree realized on another machine is
    /// only checked against the remote, not brought here (`Want::Pin`).
    pub async fn pin(&self, drv: &Derivation, label: &str) -> Result<Realized> {
        self.ready(drv, label, Want::Pin, &|_| {}).await
    }

    /// Makes a derivation's tree ready to be served: like [`Realizer::realize`], but a pinned
    /// tree the remote holds is ready from its listing alone, its files fetched as they are
    /// read (all of them in the background with `complete`); `on_rev` hears the commit as soon
    /// as the fetcher reports it (before any download); a new tree is pushed in the
    /// background ([`Realizer::finish_pushes`]).
    pub async fn serve(
        &self,
        drv: &Derivation,
        label: &str,
        complete: bool,
        on_rev: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Realized> {
        self.ready(drv, label, Want::Serve { complete }, on_rev).await
    }

    /// The one way a derivation becomes a ready tree: the states of the module doc, in
    /// order. At most one realization of a derivation runs per store at a time, in this
    /// process or any other: the others wait, then find its tree stored (or, for a branch,
    /// stop after the one round trip that says its commit is stored).
    async fn ready(
        &self,
        drv: &Derivation,
        label: &str,
        want: Want,
        on_rev: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Realized> {
        if let Some(realized) = self.stored(drv, label)? {
            return Ok(realized);
        }
        if let Want::Serve { complete } = want
            && let Some(realized) = self.serve_lazily(drv, label, complete).await?
        {
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
        // A local path is only here; a fetch goes where the realizers say.
        let realized = match &drv.builder {
            Builder::Local { path } => {
                self.check_features(drv, label)?;
                self.copy_in(drv, label, path)?
            }
            Builder::Wasm { module } => match self.delegate(drv, label, want, on_rev).await? {
                Some(realized) => realized,
                None => {
                    self.check_features(drv, label)?;
                    self.run_wasm(drv, module, label, on_rev).await?
                }
            },
        };
        if let Err(e) = lock.write(&LastRealized::from(&realized).to_string()) {
            tracing::debug!("{label}: cannot note the realization in its lock: {e:#}");
        }
        drop(lock);
        // A tree new to this store goes to the remote too (index entries with it).
        if realized.source == Source::Fetched {
            let mut trees = vec![realized.whole];
            if realized.tree != realized.whole {
                trees.push(realized.tree);
            }
            self.push(label, trees, matches!(want, Want::Whole | Want::Pin)).await;
        }
        Ok(realized)
    }

    /// Every feature the derivation requires must be offered here.
    fn check_features(&self, drv: &Derivation, label: &str) -> Result<()> {
        let offered = &self.features;
        if let Some(missing) = drv.features.iter().find(|f| !offered.contains(f)) {
            bail!(
                "{label}: needs realizer feature `{missing}`, which this realizer lacks (it offers: {})",
                offered.join(", ")
            );
        }
        Ok(())
    }

    /// A local tree copied into the store (progress shown).
    fn copy_in(&self, drv: &Derivation, label: &str, path: &std::path::Path) -> Result<Realized> {
        let progress = Progress::new(label, self.progress_bars);
        // From the first object found present to the tree declared live.
        let _guard = self.store.guard()?;
        let added = self
            .store
            .ingest(path, Ingest::Copy, Some(&|size| progress.ingested(size)))
            .with_context(|| format!("{label}: cannot ingest"));
        progress.finish();
        let added = added?;
        let found = Found {
            whole: added.tree,
            ingested: Some(added.nar),
            rev: None,
            downloaded: 0,
            stopped_early: false,
            reported: Vec::new(),
        };
        self.finish(drv, label, found)
    }

    /// A tree published in the store, ready: every file there. The caller has declared it
    /// live.
    fn in_store(
        &self,
        tree: TreeHash,
        nar: NarHash,
        rev: Option<String>,
        whole: TreeHash,
        source: Source,
    ) -> Result<Realized> {
        Ok(Realized {
            tree,
            nar,
            rev,
            whole,
            downloaded: 0,
            stopped_early: false,
            source,
            root: self.store.root_node(&tree)?,
            contents: Arc::new(Stored),
        })
    }

    /// The published tree `tree`, held for this process (declared live: no collection deletes
    /// it while it may be read), ready; `None` if it is not published.
    pub fn published(&self, tree: &TreeHash) -> Result<Option<Realized>> {
        let Some(published) = self.store.hold(tree)? else {
            return Ok(None);
        };
        self.in_store(*tree, published.nar, None, *tree, Source::Stored)
            .map(Some)
    }

    /// The derivation's tree if the store can answer without running anything: a pinned
    /// island whose tree is stored, or a pinned derivation realized before. Quick enough for
    /// a FUSE request (a few small file reads).
    pub fn stored(&self, drv: &Derivation, label: &str) -> Result<Option<Realized>> {
        // A tree made from a commit is only answered with its commit: pinned by hash alone,
        // the fetcher must say the commit (one round trip), or the lock would lack it.
        if drv.needs_commit() {
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
            return self
                .in_store(hash, published.nar, drv.rev.clone(), hash, Source::Stored)
                .map(Some);
        }
        let id_key = IndexKey::new("derivation", "id", &drv.id().to_string());
        if drv.is_pinned()
            && let Some(whole) = self.store.lookup(&id_key)?
        {
            let found = Found {
                whole,
                ingested: None,
                rev: drv.rev.clone(),
                downloaded: 0,
                stopped_early: false,
                reported: Vec::new(),
            };
            return self.finish(drv, label, found).map(Some);
        }
        Ok(None)
    }
}
