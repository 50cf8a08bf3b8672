//! Islands as the mount sees them. Each is realized once however many requests want it, off
//! the request path: a request that needs a tree still being fetched waits on its [`Flight`]
//! without holding a thread (see [`super::fuse::Parked`]). A failure is remembered for a few
//! seconds, longer on each repeat, so a path that keeps failing does not hammer the forge.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::lazy::Lazy;
use crate::derivation::Derivation;
use crate::derivation::to_derivation;
use crate::hash::TreeHash;
use crate::hash::tree::Node;
use crate::island::Island;
use crate::lock::{Lock, Manifest, Pin};
use crate::realizer::{NotFound, Realized, Realizer};

/// A realized island: what its tree is and how to describe it (xattrs).
#[derive(Debug)]
pub struct Ready {
    /// The island's tree.
    pub tree: TreeHash,
    /// Its root node (a directory, a file or a symlink).
    pub root: Node,
    /// The commit, where there is one.
    pub rev: Option<String>,
    /// The locked literal.
    pub locked: Island,
    /// Files still on their way from the remote store (a tree served before it is whole).
    pub lazy: Option<Arc<Lazy>>,
}

/// Why an island could not be realized.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The error, as logged.
    pub message: String,
    /// The island names something that does not exist (a repository, a ref): ENOENT, not EIO.
    pub not_found: bool,
}

/// How a realization ended.
pub type Outcome = Result<Arc<Ready>, Failure>;

/// What an island is, as far as is known now.
pub enum State {
    /// Realized.
    Ready(Arc<Ready>),
    /// Being realized.
    Pending(Arc<Flight>),
    /// Failed recently; not tried again before the memory expires.
    Failed(Failure),
}

type Waiter = Box<dyn FnOnce() + Send>;

/// One realization in progress, and who waits for it.
#[derive(Default)]
pub struct Flight {
    state: Mutex<FlightState>,
}

#[derive(Default)]
struct FlightState {
    /// The commit, once the fetcher has said it.
    rev: Option<String>,
    done: bool,
    /// Waiters for the commit (or the end, whichever is first).
    on_rev: Vec<Waiter>,
    /// Waiters for the end.
    on_done: Vec<Waiter>,
}

impl Flight {
    /// Runs `then` once the realization has ended (now, if it has).
    pub fn when_done(&self, then: impl FnOnce() + Send + 'static) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.done {
            drop(state);
            then();
        } else {
            state.on_done.push(Box::new(then));
        }
    }

    /// Runs `then` once the commit is known or the realization has ended.
    pub fn when_rev_known(&self, then: impl FnOnce() + Send + 'static) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.done || state.rev.is_some() {
            drop(state);
            then();
        } else {
            state.on_rev.push(Box::new(then));
        }
    }

    /// Whether the realization has ended.
    fn is_done(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).done
    }

    /// The commit, if the fetcher has said it.
    pub fn rev(&self) -> Option<String> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).rev.clone()
    }

    fn set_rev(&self, rev: &str) {
        let waiters = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.rev = Some(rev.to_owned());
            std::mem::take(&mut state.on_rev)
        };
        run_waiters(waiters);
    }

    fn finish(&self) {
        let waiters = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.done = true;
            let mut waiters = std::mem::take(&mut state.on_rev);
            waiters.append(&mut state.on_done);
            waiters
        };
        run_waiters(waiters);
    }
}

/// Waiters answer requests (reading tree objects on the way): a blocking thread's work.
fn run_waiters(waiters: Vec<Waiter>) {
    if waiters.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || waiters.into_iter().for_each(|w| w()))),
        Err(_) => waiters.into_iter().for_each(|w| w()),
    }
}

/// A remembered failure.
struct Remembered {
    failure: Failure,
    at: Instant,
    until: Instant,
    repeats: u32,
}

/// The first retry waits this long; each repeat doubles it, up to [`FAILURE_MEMORY_MAX`].
const FAILURE_MEMORY: Duration = Duration::from_secs(2);
const FAILURE_MEMORY_MAX: Duration = Duration::from_secs(60);
/// Repeats count as repeats when they come within this long of the last failure.
const REPEAT_WINDOW: Duration = Duration::from_secs(600);
/// At most this many failures are remembered (distinct bad paths must not grow memory).
const FAILURES_KEPT: usize = 4096;

/// The named islands (from the manifest, pinned by the lock) and every island realized so far.
pub struct Islands {
    realizer: Arc<Realizer>,
    runtime: tokio::runtime::Handle,
    manifest: Option<Manifest>,
    lock: Mutex<Lock>,
    ready: Mutex<HashMap<String, Arc<Ready>>>,
    in_flight: Mutex<HashMap<String, Arc<Flight>>>,
    failures: Mutex<HashMap<String, Remembered>>,
    /// Complete trees served lazily in the background (`cab mount --prefetch`).
    prefetch: bool,
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
            realizer,
            runtime,
            manifest,
            lock: Mutex::new(lock),
            ready: Mutex::default(),
            in_flight: Mutex::default(),
            failures: Mutex::default(),
            prefetch: false,
        }
    }

    /// Completes every tree served lazily in the background, publishing it when whole.
    pub fn with_prefetch(mut self, prefetch: bool) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// With `--prefetch`: starts realizing every named island now, so that those served
    /// lazily complete without waiting to be looked at.
    pub fn start_prefetching(self: &Arc<Self>) {
        if self.prefetch {
            for name in self.names() {
                let _ = self.get_named(&name);
            }
        }
    }

    /// The realizer (its store serves the trees).
    pub fn realizer(&self) -> &Realizer {
        &self.realizer
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

    /// The named island `name` if it is realized (never starts anything).
    pub fn ready_named(&self, name: &str) -> Option<Arc<Ready>> {
        let ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        ready.get(&format!("name:{name}")).cloned()
    }

    /// `island` if it is realized (never starts anything).
    pub fn ready_island(&self, island: &Island) -> Option<Arc<Ready>> {
        let ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        ready.get(&island.to_string()).cloned()
    }

    /// The island a name stands for: its lock pin if current, else the manifest's literal.
    fn named(&self, name: &str) -> Option<(Island, bool)> {
        let island = self.manifest.as_ref()?.islands.get(name)?;
        let lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        Some(match lock.current(name, island) {
            Some(pin) => (pin.locked.clone(), true),
            None => (island.clone(), false),
        })
    }

    /// The named island `name`, realizing it if it is not yet (None: no such name).
    pub fn get_named(self: &Arc<Self>, name: &str) -> Option<State> {
        let (island, pinned) = self.named(name)?;
        let key = format!("name:{name}");
        let name = name.to_owned();
        Some(self.get(key, island, move |islands, ready| {
            if !pinned {
                islands.pin(&name, ready);
            }
        }))
    }

    /// Any island, realized once and remembered for the life of the mount.
    pub fn get_island(self: &Arc<Self>, island: &Island) -> State {
        self.get(island.to_string(), island.clone(), |_, _| {})
    }

    /// Self-fixing: the first realization of an unpinned named island writes its pin.
    fn pin(&self, name: &str, ready: &Ready) {
        let Some(manifest) = &self.manifest else { return };
        let Some(original) = manifest.islands.get(name).cloned() else {
            return;
        };
        let pin = Pin {
            original,
            locked: ready.locked.clone(),
        };
        let mut pins = BTreeMap::new();
        pins.insert(name.to_owned(), pin.clone());
        match crate::pin::record(&manifest.path, &pins) {
            Ok(()) => {
                tracing::info!("{name}: pinned {}", ready.locked);
                self.lock
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pins
                    .insert(name.to_owned(), pin);
            }
            Err(e) => tracing::error!("{name}: cannot record its pin: {e:#}"),
        }
    }

    fn get(
        self: &Arc<Self>,
        key: String,
        island: Island,
        on_first: impl FnOnce(&Islands, &Ready) + Send + 'static,
    ) -> State {
        if let Some(ready) = self.ready.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return State::Ready(ready.clone());
        }
        if let Some(failure) = self.remembered_failure(&key) {
            return State::Failed(failure);
        }
        // A pinned island whose tree is stored needs no fetch: answered here, at once.
        match self.stored(&island) {
            Ok(Some(ready)) => {
                self.ready
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, ready.clone());
                return State::Ready(ready);
            }
            Ok(None) => {}
            Err(failure) => {
                self.remember_failure(&key, &failure);
                return State::Failed(failure);
            }
        }
        let flight = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            // A flight that ended but is still listed (its bookkeeping failed) is not waited
            // on: a waiter resumed at once would find it again, forever.
            if let Some(flight) = in_flight.get(&key).filter(|f| !f.is_done()) {
                return State::Pending(flight.clone());
            }
            let flight = Arc::new(Flight::default());
            in_flight.insert(key.clone(), flight.clone());
            flight
        };
        tracing::info!("{}: fetching", crate::island::shorten(&island.to_string()));
        let islands = self.clone();
        let task_flight = flight.clone();
        self.runtime.spawn(async move {
            let watcher = task_flight.clone();
            let realizing = islands.clone();
            // Its own task, so that a panic in it is a failure like any other, not a flight
            // that never ends.
            let outcome = tokio::spawn(async move {
                let on_rev = move |rev: &str| watcher.set_rev(rev);
                let ready = realize(&realizing.realizer, &island, &on_rev).await;
                if let Ok(ready) = &ready
                    && let Some(lazy) = &ready.lazy
                    && realizing.prefetch
                {
                    lazy.complete_in_background(&realizing.runtime);
                }
                ready
            })
            .await
            .unwrap_or_else(|e| {
                Err(Failure {
                    message: format!(
                        "{}: the realization panicked (a bug in cab): {e}",
                        crate::island::shorten(&key)
                    ),
                    not_found: false,
                })
            });
            let islands_done = islands.clone();
            // Writing a pin and reading a root node are blocking work.
            let settled = tokio::task::spawn_blocking(move || {
                let islands = islands_done;
                match outcome {
                    Ok(ready) => {
                        on_first(&islands, &ready);
                        islands
                            .ready
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(key.clone(), ready);
                    }
                    Err(failure) => islands.remember_failure(&key, &failure),
                }
                islands.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            })
            .await;
            if settled.is_err() {
                tracing::error!("a realization's bookkeeping panicked");
            }
            task_flight.finish();
        });
        State::Pending(flight)
    }

    /// The island's tree if it is pinned and stored (no fetch needed).
    fn stored(&self, island: &Island) -> Result<Option<Arc<Ready>>, Failure> {
        let failure = |e: anyhow::Error| Failure {
            message: format!("{e:#}"),
            not_found: false,
        };
        let drv = to_derivation(island, self.realizer.environment()).map_err(failure)?;
        let Some(realized) = self.realizer.stored(&drv, &island.to_string()).map_err(failure)? else {
            return Ok(None);
        };
        ready(&self.realizer, island, realized).map(Some).map_err(failure)
    }

    fn remembered_failure(&self, key: &str) -> Option<Failure> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let remembered = failures.get(key)?;
        (Instant::now() < remembered.until).then(|| remembered.failure.clone())
    }

    fn remember_failure(&self, key: &str, failure: &Failure) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let repeats = match failures.get(key) {
            Some(last) if now.duration_since(last.at) < REPEAT_WINDOW => last.repeats + 1,
            _ => 0,
        };
        let wait = FAILURE_MEMORY
            .saturating_mul(1 << repeats.min(16))
            .min(FAILURE_MEMORY_MAX);
        if failures.len() >= FAILURES_KEPT {
            failures.retain(|_, r| now < r.until);
            if failures.len() >= FAILURES_KEPT
                && let Some(oldest) = failures.iter().min_by_key(|(_, r)| r.at).map(|(k, _)| k.clone())
            {
                failures.remove(&oldest);
            }
        }
        failures.insert(
            key.to_owned(),
            Remembered {
                failure: failure.clone(),
                at: now,
                until: now + wait,
                repeats,
            },
        );
        // The one log line for this failure (the realizer's message names the island).
        tracing::error!("{}\n  (not tried again for {} s)", failure.message, wait.as_secs());
    }
}

/// Realizes `island`, telling `on_rev` the commit as soon as the fetcher reports it.
async fn realize(realizer: &Realizer, island: &Island, on_rev: &(dyn Fn(&str) + Send + Sync)) -> Outcome {
    let label = island.to_string();
    let failure = |e: anyhow::Error| Failure {
        not_found: e.chain().any(|c| c.is::<NotFound>()),
        message: format!("{e:#}"),
    };
    let drv = to_derivation(island, realizer.environment()).map_err(failure)?;
    if let Some(ready) = lazily(realizer, island, &drv, &label).await.map_err(failure)? {
        return Ok(ready);
    }
    let realized = realizer.realize_watched(&drv, &label, on_rev).await.map_err(failure)?;
    ready(realizer, island, realized).map_err(failure)
}

/// A pinned island the remote store holds, served from its listing alone, its files fetched
/// when read (see [`Lazy`]); `None` when there is no remote or it lacks the tree (a failing
/// remote is warned about, and the island realized as usual).
async fn lazily(
    realizer: &Realizer,
    island: &Island,
    drv: &Derivation,
    label: &str,
) -> anyhow::Result<Option<Arc<Ready>>> {
    let (Some(remote), Some(tree)) = (realizer.remote(), drv.hash) else {
        return Ok(None);
    };
    // A commit's tree pinned by hash alone needs the fetcher to say its commit.
    if drv.method.has_rev() && drv.rev.is_none() {
        return Ok(None);
    }
    let store = realizer.store();
    let (nar, fetched) = match remote.fetch_listing(store, &tree).await {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::warn!("{label}: the remote {remote} could not list {tree} ({e:#}); realizing it as usual");
            return Ok(None);
        }
    };
    // The narHash comes from the lock (or the remote's record), never guessed.
    if let Some(want) = &drv.nar_hash
        && *want != nar
    {
        anyhow::bail!(
            "{label}: narHash mismatch: the remote {remote} records another narHash for {tree}\n  \
             wanted: narHash = \"{want}\"\n     got: narHash = \"{nar}\""
        );
    }
    tracing::info!(
        "{label}: {tree} served from the remote {remote} as its files are read (listing: {} objects, {} bytes)",
        fetched.objects,
        fetched.bytes
    );
    let root = store.root_node(&tree)?;
    Ok(Some(Arc::new(Ready {
        tree,
        root,
        rev: drv.rev.clone(),
        locked: island.locked(drv.rev.clone(), tree, nar),
        lazy: Some(Lazy::new(remote.clone(), store.clone(), tree, nar, label)),
    })))
}

fn ready(realizer: &Realizer, island: &Island, realized: Realized) -> anyhow::Result<Arc<Ready>> {
    let root = realizer.store().root_node(&realized.tree)?;
    Ok(Arc::new(Ready {
        tree: realized.tree,
        root,
        locked: island.locked(realized.rev.clone(), realized.tree, realized.nar),
        rev: realized.rev,
        lazy: None,
    }))
}

/// Used by the mount's by-hash view: a stored tree described as an fs island.
pub fn stored_tree(realizer: &Realizer, tree: TreeHash) -> anyhow::Result<Option<Arc<Ready>>> {
    let Some(published) = realizer.store().published(&tree)? else {
        return Ok(None);
    };
    let locked = Island {
        format: crate::island::Format::Fs,
        location: String::new(),
        config: crate::island::Config {
            hash: Some(tree),
            nar_hash: Some(published.nar),
            ..Default::default()
        },
        subpath: None,
    };
    Ok(Some(Arc::new(Ready {
        tree,
        root: realizer.store().root_node(&tree)?,
        rev: None,
        locked,
        lazy: None,
    })))
}
