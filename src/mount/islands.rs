//! Islands as the mount sees them. Each is realized once however many requests want it, off
//! the request path: a request that needs a tree still being fetched waits on its [`Flight`]
//! without holding a thread (see [`super::fuse::Parked`]).
//!
//! A failure is remembered according to its [`Cause`]: one caused on this machine (no space,
//! too many open files) not at all — the next look tries again, so freeing space is enough;
//! one of the forge or the network for about one user action (`ls` alone asks three times),
//! so that a forge that comes back serves at the next look while a loop of looks costs it at
//! most one attempt a second; one the same request would meet again (a limit, a mismatch) for
//! a few seconds, longer on each repeat. The last failure's text and the moment of the next
//! try are kept for `user.cab.error`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::lazy::Lazy;
use crate::derivation::Derivation;
use crate::derivation::to_derivation;
use crate::hash::TreeHash;
use crate::hash::tree::Node;
use crate::island::Island;
use crate::lock::{Lock, Manifest, Pin};
use crate::realizer::{Cause, Realized, Realizer};
use crate::sync::MutexExt;

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
    /// What kind of failure it is (when to try again; ENOENT for what does not exist).
    pub cause: Cause,
}

impl Failure {
    fn of(error: anyhow::Error) -> Failure {
        Failure {
            cause: Cause::of(&error),
            message: format!("{error:#}"),
        }
    }

    /// The island names something that does not exist (a repository, a ref): ENOENT, not EIO.
    pub fn not_found(&self) -> bool {
        self.cause == Cause::NotFound
    }
}

/// The last failure of an island, as `user.cab.error` tells it.
#[derive(Clone, Debug)]
pub struct LastFailure {
    /// The failure.
    pub failure: Failure,
    /// When it happened.
    pub at: SystemTime,
    /// From when the next look tries again (at once if past).
    pub retry_at: SystemTime,
}

impl LastFailure {
    /// The text of `user.cab.error`: the error, then when it happened and when cab tries
    /// again.
    pub fn describe(&self) -> String {
        let now = SystemTime::now();
        let next = match self.retry_at.duration_since(now) {
            Ok(wait) if !wait.is_zero() => format!(
                "cab tries again at the first look after {} ({:.1} s from now)",
                utc(self.retry_at),
                wait.as_secs_f64()
            ),
            _ => "cab tries again at the next look".to_owned(),
        };
        let why = match self.failure.cause {
            Cause::Local => "this machine ran out of something; it is not remembered",
            Cause::NotFound => "it does not exist at its source",
            Cause::Unreachable => "its source could not be reached or failed",
            Cause::Content => "its source gave an answer cab refuses; asking again gives the same",
        };
        format!(
            "{}\nfailed at {} ({why}); {next}\n",
            self.failure.message.trim_end(),
            utc(self.at)
        )
    }
}

/// A moment as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
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
    /// How it failed, once it has.
    failure: Option<Failure>,
}

impl Flight {
    /// Runs `then` once the realization has ended (now, if it has).
    pub fn when_done(&self, then: impl FnOnce() + Send + 'static) {
        let mut state = self.state.locked();
        if state.done {
            drop(state);
            then();
        } else {
            state.on_done.push(Box::new(then));
        }
    }

    /// Runs `then` once the commit is known or the realization has ended.
    pub fn when_rev_known(&self, then: impl FnOnce() + Send + 'static) {
        let mut state = self.state.locked();
        if state.done || state.rev.is_some() {
            drop(state);
            then();
        } else {
            state.on_rev.push(Box::new(then));
        }
    }

    /// Whether the realization has ended.
    fn is_done(&self) -> bool {
        self.state.locked().done
    }

    /// The commit, if the fetcher has said it.
    pub fn rev(&self) -> Option<String> {
        self.state.locked().rev.clone()
    }

    fn set_rev(&self, rev: &str) {
        let waiters = {
            let mut state = self.state.locked();
            state.rev = Some(rev.to_owned());
            std::mem::take(&mut state.on_rev)
        };
        run_waiters(waiters);
    }

    /// How the realization failed, if it has ended in failure. Its waiters answer with this,
    /// not with a fresh look at the island (which, for a failure not remembered, would start
    /// the next realization and wait again).
    pub fn failure(&self) -> Option<Failure> {
        self.state.locked().failure.clone()
    }

    fn finish(&self, failure: Option<Failure>) {
        let waiters = {
            let mut state = self.state.locked();
            state.done = true;
            state.failure = failure;
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
    last: LastFailure,
    at: Instant,
    until: Instant,
    repeats: u32,
}

/// A failure of the forge or the network answers the requests that come within this long of
/// it: the several requests of one user action (`ls` alone makes three), not the next action.
const UNREACHABLE_MEMORY: Duration = Duration::from_secs(1);
/// A failure the same request would meet again waits this long before the first retry; each
/// repeat doubles it, up to [`CONTENT_MEMORY_MAX`].
const CONTENT_MEMORY: Duration = Duration::from_secs(2);
const CONTENT_MEMORY_MAX: Duration = Duration::from_secs(60);
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
    /// Collect garbage after a realization when the store holds more than this.
    auto_gc: Option<u64>,
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
            auto_gc: None,
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
        let ready = self.ready.locked();
        ready.get(&format!("name:{name}")).cloned()
    }

    /// `island` if it is realized (never starts anything).
    pub fn ready_island(&self, island: &Island) -> Option<Arc<Ready>> {
        let ready = self.ready.locked();
        ready.get(&island.to_string()).cloned()
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
        match crate::pin::record(self.realizer.store(), &manifest.path, &pins) {
            Ok(()) => {
                tracing::info!("{name}: pinned {}", ready.locked);
                self.lock.locked().pins.insert(name.to_owned(), pin);
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
        if let Some(ready) = self.ready.locked().get(&key) {
            return State::Ready(ready.clone());
        }
        if let Some(failure) = self.remembered_failure(&key) {
            return State::Failed(failure);
        }
        // A pinned island whose tree is stored needs no fetch: answered here, at once.
        match self.stored(&island) {
            Ok(Some(ready)) => {
                self.ready.locked().insert(key, ready.clone());
                return State::Ready(ready);
            }
            Ok(None) => {}
            Err(failure) => {
                self.remember_failure(&key, &failure);
                return State::Failed(failure);
            }
        }
        let flight = {
            let mut in_flight = self.in_flight.locked();
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
                    cause: Cause::Unreachable,
                })
            });
            let islands_done = islands.clone();
            // Writing a pin and reading a root node are blocking work.
            let settled = tokio::task::spawn_blocking(move || {
                let islands = islands_done;
                let failed = match outcome {
                    Ok(ready) => {
                        islands.failures.locked().remove(&key);
                        on_first(&islands, &ready);
                        islands.ready.locked().insert(key.clone(), ready);
                        None
                    }
                    Err(failure) => {
                        islands.remember_failure(&key, &failure);
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
            task_flight.finish(failed);
            if let Some(limit) = islands.auto_gc {
                crate::gc::auto_in_background(islands.realizer.store(), limit);
            }
        });
        State::Pending(flight)
    }

    /// The island's tree if it is pinned and stored (no fetch needed).
    fn stored(&self, island: &Island) -> Result<Option<Arc<Ready>>, Failure> {
        let failure = Failure::of;
        let drv = to_derivation(island, self.realizer.environment()).map_err(failure)?;
        let Some(realized) = self.realizer.stored(&drv, &island.to_string()).map_err(failure)? else {
            return Ok(None);
        };
        ready(&self.realizer, island, realized).map(Some).map_err(failure)
    }

    fn remembered_failure(&self, key: &str) -> Option<Failure> {
        let failures = self.failures.locked();
        let remembered = failures.get(key)?;
        (Instant::now() < remembered.until).then(|| remembered.last.failure.clone())
    }

    /// The last failure of the named island `name`, if its last realization failed.
    pub fn failure_named(&self, name: &str) -> Option<LastFailure> {
        self.last_failure(&format!("name:{name}"))
    }

    /// The last failure of `island`, if its last realization failed.
    pub fn failure_island(&self, island: &Island) -> Option<LastFailure> {
        self.last_failure(&island.to_string())
    }

    fn last_failure(&self, key: &str) -> Option<LastFailure> {
        let failures = self.failures.locked();
        failures.get(key).map(|r| r.last.clone())
    }

    fn remember_failure(&self, key: &str, failure: &Failure) {
        let now = Instant::now();
        let mut failures = self.failures.locked();
        let last = failures
            .get(key)
            .filter(|last| now.duration_since(last.at) < REPEAT_WINDOW);
        let repeats = last.map_or(0, |last| last.repeats + 1);
        let same_again = last.is_some_and(|last| last.last.failure.message == failure.message);
        let wait = match failure.cause {
            Cause::Local => Duration::ZERO,
            Cause::NotFound | Cause::Unreachable => UNREACHABLE_MEMORY,
            Cause::Content => CONTENT_MEMORY
                .saturating_mul(1 << repeats.min(16))
                .min(CONTENT_MEMORY_MAX),
        };
        if failures.len() >= FAILURES_KEPT {
            failures.retain(|_, r| now < r.until);
            if failures.len() >= FAILURES_KEPT
                && let Some(oldest) = failures.iter().min_by_key(|(_, r)| r.at).map(|(k, _)| k.clone())
            {
                failures.remove(&oldest);
            }
        }
        let wall = SystemTime::now();
        failures.insert(
            key.to_owned(),
            Remembered {
                last: LastFailure {
                    failure: failure.clone(),
                    at: wall,
                    retry_at: wall + wait,
                },
                at: now,
                until: now + wait,
                repeats,
            },
        );
        drop(failures);
        // One log line per failure, not per look: a failure that repeats with the same words
        // is logged again only at debug.
        let when = match failure.cause {
            Cause::Local => "tried again at the next look".to_owned(),
            _ => format!("not tried again for {:.0} s", wait.as_secs_f64().max(1.0)),
        };
        if same_again {
            tracing::debug!("{}\n  (again, {repeats} times; {when})", failure.message);
        } else {
            tracing::error!("{}\n  ({when})", failure.message);
        }
    }
}

/// Realizes `island`, telling `on_rev` the commit as soon as the fetcher reports it.
async fn realize(realizer: &Realizer, island: &Island, on_rev: &(dyn Fn(&str) + Send + Sync)) -> Outcome {
    let label = island.to_string();
    let failure = Failure::of;
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
    let (nar, fetched, listing) = match remote.fetch_listing(store, &tree).await {
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
    // Live from before the first answer; the guard stays with the listing until it is
    // written (see `Lazy::new`).
    let guard = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let guard = store.guard()?;
            store.declare_live(&[tree])?;
            Ok(guard)
        })
        .await??
    };
    tracing::info!(
        "{label}: {tree} served from the remote {remote} as its files are read (listing: {} objects, {} bytes)",
        fetched.objects,
        fetched.bytes
    );
    let lazy = Lazy::new(remote.clone(), store.clone(), listing, guard, nar, label)?;
    Ok(Some(Arc::new(Ready {
        tree,
        root: lazy.root().clone(),
        rev: drv.rev.clone(),
        locked: island.locked(drv.rev.clone(), tree, nar),
        lazy: Some(lazy),
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

impl Islands {
    /// The published tree `tree`, for the mount's by-hash view: described as an fs island,
    /// held for the life of the mount (declared live: no collection deletes it while it may be
    /// served) and remembered. `None` if it is not published.
    pub fn stored_tree(&self, tree: TreeHash) -> anyhow::Result<Option<Arc<Ready>>> {
        let key = format!("by-hash:{}", tree.to_hex());
        if let Some(ready) = self.ready.locked().get(&key) {
            return Ok(Some(ready.clone()));
        }
        let Some(ready) = stored_tree(&self.realizer, tree)? else {
            return Ok(None);
        };
        self.ready.locked().insert(key, ready.clone());
        Ok(Some(ready))
    }
}

/// A stored tree described as an fs island, held for this process.
fn stored_tree(realizer: &Realizer, tree: TreeHash) -> anyhow::Result<Option<Arc<Ready>>> {
    let Some(published) = realizer.store().hold(&tree)? else {
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
