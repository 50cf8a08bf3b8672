//! Islands as the mount sees them: the named ones of the manifest (pinned by the lock), the
//! ones browsed by forge path, and the published trees of `by-hash/`. Each is made ready once
//! however many requests want it, off the request path — the realizer decides where its tree
//! comes from; the mount only serves what it answers ([`Served`]). A request that needs a tree
//! still on its way waits on its [`Realization`] without holding a thread; a failure is
//! remembered by its cause ([`super::failures`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use super::failures::{Failure, Failures, LastFailure};
use super::handover::Handover;
use super::realization::Realization;
use super::refs::RefListings;
use crate::derivation::{Derivation, to_derivation};
use crate::hash::TreeHash;
use crate::hash::tree::Node;
use crate::island::{Format, Island};
use crate::lock::{Lock, Manifest, Pin};
use crate::realizer::{Cause, Realized, Realizer};
use crate::store::Contents;
use crate::sync::MutexExt;

/// A tree the mount serves, and how to describe it (xattrs).
#[derive(Debug)]
pub struct Served {
    /// The tree.
    pub tree: TreeHash,
    /// Its root node (a directory, a file or a symlink).
    pub root: Node,
    /// The commit, where there is one.
    pub rev: Option<String>,
    /// The locked literal (for a `by-hash/` tree: an `fs` island naming just its hashes).
    pub locked: Island,
    /// Where its files are.
    pub contents: Arc<dyn Contents>,
}

impl Served {
    /// `user.cab.island`: the locked literal, except for a `by-hash/` tree, which is no
    /// island.
    pub fn island_xattr(&self) -> Option<String> {
        (self.locked.format != crate::island::Format::Fs || self.locked.fs_path().is_some())
            .then(|| self.locked.to_string())
    }

    fn new(island: &Island, realized: Realized) -> Arc<Served> {
        Arc::new(Served {
            tree: realized.tree,
            root: realized.root,
            locked: island.locked(realized.rev.clone(), realized.tree, realized.nar),
            rev: realized.rev,
            contents: realized.contents,
        })
    }
}

/// Which island: a name of the manifest, a browsed literal, or a `by-hash/` tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Named(String),
    Browsed(Island),
    ByHash(TreeHash),
}

impl Key {
    /// Where the island is below the mount point.
    fn place(&self) -> Option<PathBuf> {
        match self {
            Key::Named(name) => Some(PathBuf::from(name)),
            Key::ByHash(tree) => Some(PathBuf::from(format!("by-hash/{tree}"))),
            Key::Browsed(island) => {
                // A browsed commit id is its own place.
                let reference = island.config.r#ref.as_deref().or(island.config.rev.as_deref())?;
                let forge = match island.format {
                    Format::Github => "github",
                    Format::Gitlab => "gitlab",
                    Format::Sourcehut => "sourcehut",
                    _ => return None,
                };
                let mut path = PathBuf::from(forge).join(&island.location);
                if island.format == Format::Gitlab {
                    path.push("-");
                }
                Some(path.join(reference))
            }
        }
    }
}

/// What an island is, as far as is known now.
pub enum State {
    /// Ready to be served.
    Ready(Arc<Served>),
    /// Being made ready.
    Pending(Arc<Realization>),
    /// Failed recently; not tried again before the memory expires.
    Failed(Failure),
}

/// The named islands (from the manifest, pinned by the lock) and every island served so far.
pub struct Islands {
    realizer: Arc<Realizer>,
    runtime: tokio::runtime::Handle,
    manifest: Option<Manifest>,
    lock: Mutex<Lock>,
    served: Mutex<HashMap<Key, Arc<Served>>>,
    in_flight: Mutex<HashMap<Key, Arc<Realization>>>,
    failures: Failures<Key>,
    /// Collect garbage after a realization when the store holds more than this.
    auto_gc: Option<u64>,
    /// Bring every file of a tree served lazily in the background (`cab mount --prefetch`).
    complete: bool,
    /// Who hands whole trees over to the kernel, once the mount is up (if anyone may).
    handover: OnceLock<Arc<Handover>>,
    /// What the browsed repositories' refs are (their listings).
    refs: Arc<RefListings>,
}

impl Islands {
    /// Islands served from `manifest` (if any) with pins from `lock`.
    pub fn new(
        realizer: Arc<Realizer>,
        runtime: tokio::runtime::Handle,
        manifest: Option<Manifest>,
        lock: Lock,
    ) -> Self {
        Islands {
            refs: Arc::new(RefListings::new(realizer.clone(), runtime.clone())),
            realizer,
            runtime,
            manifest,
            lock: Mutex::new(lock),
            served: Mutex::default(),
            in_flight: Mutex::default(),
            failures: Failures::default(),
            auto_gc: None,
            complete: false,
            handover: OnceLock::new(),
        }
    }

    /// From now on, every island that is ready and whole is offered to `handover`, and so is
    /// every one ready already.
    pub fn hand_over_to(&self, handover: Arc<Handover>) {
        let _ = self.handover.set(handover);
        let served: Vec<(Key, Arc<Served>)> = self
            .served
            .locked()
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        for (key, served) in served {
            self.offer(&key, &served);
        }
    }

    /// What the mount serves and is doing, for `cab status` (see `mount::control`): each
    /// island served (where, which tree and commit, served by the kernel or through FUSE, whole
    /// or still arriving, and then how much of it is here), each realization in flight, each
    /// failure remembered, the remote's health as the mount's own requests found it.
    pub fn status(&self) -> serde_json::Value {
        use serde_json::json;
        let place = |key: &Key| match key.place() {
            Some(place) => place.display().to_string(),
            None => format!("{key:?}"),
        };
        let handover = self.handover.get();
        let mut served: Vec<serde_json::Value> = self
            .served
            .locked()
            .iter()
            .map(|(key, s)| {
                let kernel = key.place().is_some_and(|p| handover.is_some_and(|h| h.is_mounted(&p)));
                let complete = s.contents.is_complete();
                json!({
                    "place": place(key),
                    "island": s.island_xattr(),
                    "tree": s.tree.to_string(),
                    "rev": s.rev,
                    "served_by": if kernel { "kernel" } else if complete { "fuse" } else { "fuse, lazily" },
                    "complete": complete,
                    "local": s.contents.local_share(),
                })
            })
            .collect();
        served.sort_by_key(|v| v["place"].as_str().map(str::to_owned));
        let mut fetching: Vec<serde_json::Value> = self
            .in_flight
            .locked()
            .iter()
            .filter(|(_, r)| !r.is_done())
            .map(|(key, r)| json!({ "place": place(key), "rev": r.rev() }))
            .collect();
        fetching.sort_by_key(|v| v["place"].as_str().map(str::to_owned));
        let stamp = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut failed: Vec<serde_json::Value> = self
            .failures
            .all()
            .into_iter()
            .map(|(key, last)| {
                json!({
                    "place": place(&key),
                    "error": last.failure.message,
                    "at": stamp(last.at),
                    "retry_at": stamp(last.retry_at),
                })
            })
            .collect();
        failed.sort_by_key(|v| v["place"].as_str().map(str::to_owned));
        let downloads: Vec<serde_json::Value> = crate::realizer::progress::in_flight()
            .into_iter()
            .map(|f| {
                let seconds = f.elapsed.as_secs_f64();
                json!({
                    "label": f.label,
                    "bytes": f.bytes,
                    "files": f.files,
                    "seconds": (seconds * 10.0).round() / 10.0,
                    "bytes_per_second": if seconds > 0.0 { (f.bytes as f64 / seconds) as u64 } else { 0 },
                })
            })
            .collect();
        json!({
            "islands": self.names(),
            "served": served,
            "fetching": fetching,
            "downloads": downloads,
            "failed": failed,
            "pushes_pending": self.realizer.pushes_pending(),
            "remote": self.realizer.remote().map(|remote| {
                let mut health = serde_json::to_value(remote.health()).unwrap_or_default();
                if let Some(health) = health.as_object_mut() {
                    health.insert("url".into(), remote.to_string().into());
                }
                health
            }),
        })
    }

    /// Offers a ready island to the kernel (see [`Handover::offer`]).
    fn offer(&self, key: &Key, served: &Served) {
        if let (Some(handover), Some(place)) = (self.handover.get(), key.place()) {
            handover.offer(place, served);
        }
    }

    /// The handover, if trees are handed to the kernel.
    pub fn handover(&self) -> Option<&Arc<Handover>> {
        self.handover.get()
    }

    /// Brings every file of each tree served lazily in the background (the `prefetch`
    /// setting), publishing it when whole.
    pub fn completing_lazy_trees(mut self, complete: bool) -> Self {
        self.complete = complete;
        self
    }

    /// With the `prefetch` setting: makes every named island ready now, so that those served
    /// lazily complete without waiting to be looked at.
    pub fn start_completing(self: &Arc<Self>) {
        if self.complete {
            for name in self.names() {
                let _ = self.get_named(&name);
            }
        }
    }

    /// Collects garbage in the background after each realization that leaves the store
    /// holding more than `limit` bytes (`--gc-auto-size`).
    pub fn with_auto_gc(mut self, limit: Option<u64>) -> Self {
        self.auto_gc = limit;
        self
    }

    /// The realizer (its store serves the trees).
    pub fn realizer(&self) -> &Realizer {
        &self.realizer
    }

    /// The browsed repositories' ref listings.
    pub fn refs(&self) -> &Arc<RefListings> {
        &self.refs
    }

    /// The runtime realizations run on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// The names of the manifest's islands, sorted.
    pub fn names(&self) -> Vec<String> {
        self.manifest
            .as_ref()
            .map(|m| m.islands.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether the manifest names `name`.
    pub fn has_name(&self, name: &str) -> bool {
        self.manifest.as_ref().is_some_and(|m| m.islands.contains_key(name))
    }

    /// The named island `name` if it is ready (never starts anything).
    pub fn ready_named(&self, name: &str) -> Option<Arc<Served>> {
        self.served.locked().get(&Key::Named(name.to_owned())).cloned()
    }

    /// `island` if it is ready (never starts anything).
    pub fn ready_island(&self, island: &Island) -> Option<Arc<Served>> {
        self.served.locked().get(&Key::Browsed(island.clone())).cloned()
    }

    /// The last failure of the named island `name`, if its last realization failed.
    pub fn failure_named(&self, name: &str) -> Option<LastFailure> {
        self.failures.last(&Key::Named(name.to_owned()))
    }

    /// The last failure of `island`, if its last realization failed.
    pub fn failure_island(&self, island: &Island) -> Option<LastFailure> {
        self.failures.last(&Key::Browsed(island.clone()))
    }

    /// Forgets `island`'s last failure: a browsed name that is no ref turned out to be a
    /// directory of refs, which `cab status` must not report as failing.
    pub fn forget_failure(&self, island: &Island) {
        self.failures.forget(&Key::Browsed(island.clone()));
    }

    /// The island a name stands for: its lock pin if current, else the manifest's literal.
    fn named(&self, name: &str) -> Option<(Island, bool)> {
        let island = self.manifest.as_ref()?.islands.get(name)?;
        let lock = self.lock.locked();
        Some(match lock.current(name, island) {
            Some(pin) => (pin.locked.clone(), true),
            None => (island.clone(), false),
        })
    }

    /// The named island `name`, making it ready if it is not yet (None: no such name).
    pub fn get_named(self: &Arc<Self>, name: &str) -> Option<State> {
        let (island, pinned) = self.named(name)?;
        let key = Key::Named(name.to_owned());
        let name = name.to_owned();
        Some(self.get(key, island, move |islands, served| {
            if !pinned {
                islands.pin(&name, served);
            }
        }))
    }

    /// Any island, made ready once and remembered for the life of the mount.
    pub fn get_island(self: &Arc<Self>, island: &Island) -> State {
        self.get(Key::Browsed(island.clone()), island.clone(), |_, _| {})
    }

    /// Reads the lock again (it changed: `cab update`, `cab mount --update` of this mount):
    /// every named island whose pin moved is made ready again, the new tree in the old one's
    /// place. Returns those islands, each with the tree it served (if it was ready), for the
    /// filesystem to move its readers on.
    pub fn reload(self: &Arc<Self>) -> Vec<(String, Option<Arc<Served>>)> {
        let Some(manifest) = &self.manifest else {
            return Vec::new();
        };
        let path = crate::lock::lock_path(&manifest.path);
        let new = match Lock::read(&path) {
            Ok(lock) => lock,
            Err(e) => {
                tracing::error!("cannot read the lock again: {e:#}; the mount serves what it served");
                return Vec::new();
            }
        };
        let old = std::mem::replace(&mut *self.lock.locked(), new.clone());
        let mut moved = Vec::new();
        for (name, island) in &manifest.islands {
            let before = old.current(name, island).map(|p| &p.locked);
            let after = new.current(name, island).map(|p| &p.locked);
            if before == after {
                continue;
            }
            let key = Key::Named(name.clone());
            let served = self.served.locked().remove(&key);
            self.failures.forget(&key);
            if let Some(after) = after {
                tracing::info!("{name}: moved to {after}");
            }
            moved.push((name.clone(), served));
        }
        for (name, _) in &moved {
            let _ = self.get_named(name);
        }
        moved
    }

    /// Self-fixing: the first realization of an unpinned named island writes its pin.
    fn pin(&self, name: &str, served: &Served) {
        let Some(manifest) = &self.manifest else { return };
        let Some(original) = manifest.islands.get(name).cloned() else {
            return;
        };
        let pin = Pin {
            original,
            locked: served.locked.clone(),
        };
        let mut pins = BTreeMap::new();
        pins.insert(name.to_owned(), pin.clone());
        match crate::pin::record(self.realizer.store(), &manifest.path, &pins) {
            Ok(()) => {
                tracing::info!("{name}: pinned {}", served.locked);
                self.lock.locked().pins.insert(name.to_owned(), pin);
            }
            Err(e) => tracing::error!("{name}: cannot record its pin: {e:#}"),
        }
    }

    fn get(
        self: &Arc<Self>,
        key: Key,
        island: Island,
        on_first: impl FnOnce(&Islands, &Served) + Send + 'static,
    ) -> State {
        if let Some(served) = self.served.locked().get(&key) {
            return State::Ready(served.clone());
        }
        if let Some(failure) = self.failures.remembered(&key) {
            return State::Failed(failure);
        }
        let label = island.to_string();
        // The derivation, once: the store is asked with it now, the realizer with it later.
        let drv = match to_derivation(&island, self.realizer.environment()) {
            Ok(drv) => drv,
            Err(e) => {
                let failure = Failure::of(e);
                self.failures.remember(&key, &failure);
                return State::Failed(failure);
            }
        };
        // A pinned island whose tree is stored needs no fetch: answered here, at once.
        match self.realizer.stored(&drv, &label) {
            Ok(Some(realized)) => {
                let served = Served::new(&island, realized);
                self.served.locked().insert(key.clone(), served.clone());
                self.offer(&key, &served);
                return State::Ready(served);
            }
            Ok(None) => {}
            Err(e) => {
                let failure = Failure::of(e);
                self.failures.remember(&key, &failure);
                return State::Failed(failure);
            }
        }
        let realization = {
            let mut in_flight = self.in_flight.locked();
            // A realization that ended but is still listed (its bookkeeping failed) is not
            // waited on: a waiter resumed at once would find it again, forever.
            if let Some(realization) = in_flight.get(&key).filter(|r| !r.is_done()) {
                return State::Pending(realization.clone());
            }
            let realization = Arc::new(Realization::default());
            in_flight.insert(key.clone(), realization.clone());
            realization
        };
        tracing::info!("{}: fetching", crate::text::shorten(&label));
        let islands = self.clone();
        let task_realization = realization.clone();
        self.runtime.spawn(async move {
            let outcome = islands.make_ready(&island, drv, &label, task_realization.clone()).await;
            islands.settle(key, outcome, on_first, &task_realization).await;
        });
        State::Pending(realization)
    }

    /// Asks the realizer for `island`'s tree, telling `realization` its commit as soon as the
    /// fetcher reports it. In a task of its own, so that a panic in it is a failure like any
    /// other, not a realization that never ends.
    async fn make_ready(
        self: &Arc<Self>,
        island: &Island,
        drv: Derivation,
        label: &str,
        realization: Arc<Realization>,
    ) -> Result<Arc<Served>, Failure> {
        let (realizer, island_owned, label_owned) = (self.realizer.clone(), island.clone(), label.to_owned());
        let complete = self.complete;
        tokio::spawn(async move {
            let on_rev = move |rev: &str| realization.set_rev(rev);
            let realized = realizer
                .serve(&drv, &label_owned, complete, &on_rev)
                .await
                .map_err(Failure::of)?;
            Ok(Served::new(&island_owned, realized))
        })
        .await
        .unwrap_or_else(|e| {
            Err(Failure {
                message: format!(
                    "{}: the realization panicked (a bug in cab): {e}",
                    crate::text::shorten(label)
                ),
                cause: Cause::Unreachable,
            })
        })
    }

    /// Records how a realization ended, then lets its waiters run.
    async fn settle(
        self: &Arc<Self>,
        key: Key,
        outcome: Result<Arc<Served>, Failure>,
        on_first: impl FnOnce(&Islands, &Served) + Send + 'static,
        realization: &Realization,
    ) {
        let islands = self.clone();
        // Writing a pin is blocking work.
        let settled = tokio::task::spawn_blocking(move || {
            let failed = match outcome {
                Ok(served) => {
                    islands.failures.forget(&key);
                    on_first(&islands, &served);
                    islands.served.locked().insert(key.clone(), served.clone());
                    islands.offer(&key, &served);
                    None
                }
                Err(failure) => {
                    islands.failures.remember(&key, &failure);
                    Some(failure)
                }
            };
            islands.in_flight.locked().remove(&key);
            failed
        })
        .await;
        let failed = settled.unwrap_or_else(|_| {
            Some(Failure {
                message: "a realization's bookkeeping panicked (a bug in cab)".into(),
                cause: Cause::Unreachable,
            })
        });
        realization.finish(failed);
        if let Some(limit) = self.auto_gc {
            crate::collection::auto_in_background(self.realizer.store(), limit);
        }
    }

    /// The published tree `tree`, for the mount's by-hash view: described as an fs island,
    /// held for the life of the mount (declared live: no collection deletes it while it may be
    /// served) and remembered. `None` if it is not published.
    pub fn stored_tree(&self, tree: TreeHash) -> anyhow::Result<Option<Arc<Served>>> {
        let key = Key::ByHash(tree);
        if let Some(served) = self.served.locked().get(&key) {
            return Ok(Some(served.clone()));
        }
        let Some(realized) = self.realizer.published(&tree)? else {
            return Ok(None);
        };
        let locked = Island {
            format: crate::island::Format::Fs,
            location: String::new(),
            config: crate::island::Config {
                hash: Some(tree),
                nar_hash: Some(realized.nar),
                ..Default::default()
            },
            subpath: None,
        };
        let served = Arc::new(Served {
            tree,
            root: realized.root,
            rev: None,
            locked,
            contents: realized.contents,
        });
        self.served.locked().insert(key.clone(), served.clone());
        self.offer(&key, &served);
        Ok(Some(served))
    }
}
