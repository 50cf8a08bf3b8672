//! Islands as the mount sees them: realized on first lookup, exactly once however many
//! lookups arrive at the same time, with failures not remembered (the next lookup tries again).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use crate::hash::TreeHash;
use crate::island::Island;
use crate::lock::{Lock, Manifest, Pin};
use crate::realizer::Realizer;

/// A realized island: what its tree is and how to describe it (xattrs).
#[derive(Debug)]
pub struct Ready {
    /// The island's tree.
    pub tree: TreeHash,
    /// The commit, where there is one.
    pub rev: Option<String>,
    /// The locked literal.
    pub locked: Island,
}

#[derive(Default)]
struct Slot {
    result: Mutex<Option<Result<Arc<Ready>, String>>>,
    done: Condvar,
}

/// The named islands (from the manifest, pinned by the lock) and every island realized so far.
pub struct Islands {
    realizer: Arc<Realizer>,
    runtime: tokio::runtime::Handle,
    manifest: Option<Manifest>,
    lock: Mutex<Lock>,
    ready: Mutex<HashMap<String, Arc<Ready>>>,
    in_flight: Mutex<HashMap<String, Arc<Slot>>>,
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
        }
    }

    /// The realizer (its store serves the trees).
    pub fn realizer(&self) -> &Realizer {
        &self.realizer
    }

    /// The names of the manifest's islands, sorted.
    pub fn names(&self) -> Vec<String> {
        self.manifest
            .as_ref()
            .map(|m| m.islands.keys().cloned().collect())
            .unwrap_or_default()
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

    /// The named island `name`, realized (None if the manifest has no such name).
    pub fn get_named(&self, name: &str) -> Option<Result<Arc<Ready>, String>> {
        let (island, pinned) = self.named(name)?;
        let manifest_path = self.manifest.as_ref().map(|m| m.path.clone());
        Some(self.get(&format!("name:{name}"), &island, |ready| {
            if !pinned && let Some(path) = manifest_path {
                self.pin(&path, name, ready);
            }
        }))
    }

    /// Any island, realized once and remembered for the life of the mount.
    pub fn get_island(&self, island: &Island) -> Result<Arc<Ready>, String> {
        self.get(&island.to_string(), island, |_| {})
    }

    /// Self-fixing: the first realization of an unpinned named island writes its pin.
    fn pin(&self, manifest: &Path, name: &str, ready: &Ready) {
        let Some(original) = self.manifest.as_ref().and_then(|m| m.islands.get(name)).cloned() else {
            return;
        };
        let pin = Pin {
            original,
            locked: ready.locked.clone(),
        };
        let mut pins = BTreeMap::new();
        pins.insert(name.to_owned(), pin.clone());
        match crate::pin::record(manifest, &pins) {
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

    fn get(&self, key: &str, island: &Island, on_first: impl FnOnce(&Ready)) -> Result<Arc<Ready>, String> {
        if let Some(ready) = self.ready.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Ok(ready.clone());
        }
        let (slot, leader) = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match in_flight.get(key) {
                Some(slot) => (slot.clone(), false),
                None => {
                    let slot = Arc::new(Slot::default());
                    in_flight.insert(key.to_owned(), slot.clone());
                    (slot, true)
                }
            }
        };
        if !leader {
            let mut result = slot.result.lock().unwrap_or_else(|e| e.into_inner());
            while result.is_none() {
                result = slot.done.wait(result).unwrap_or_else(|e| e.into_inner());
            }
            return result.clone().expect("set before notify");
        }
        tracing::info!("{island}: fetching");
        let realizer = self.realizer.clone();
        let island_owned = island.clone();
        let outcome = self
            .runtime
            .block_on(async move { crate::pin::realize(&realizer, &island_owned).await })
            .map(|(realized, locked)| {
                Arc::new(Ready {
                    tree: realized.tree,
                    rev: realized.rev,
                    locked,
                })
            })
            .map_err(|e| format!("{e:#}"));
        match &outcome {
            Ok(ready) => {
                on_first(ready);
                self.ready
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.to_owned(), ready.clone());
            }
            Err(e) => tracing::error!("{island}: {e}"),
        }
        *slot.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome.clone());
        slot.done.notify_all();
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        outcome
    }
}
