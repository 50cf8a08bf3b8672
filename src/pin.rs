//! Pinning: realizing the islands a manifest names and recording each one's fully locked
//! literal in the lock. `cab update`, `cab mount --update` and the mount's first lookup of an
//! unpinned island all go through here, so the lock is always written the same way.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::derivation::to_derivation;
use crate::island::Island;
use crate::lock::{LockGuard, Manifest, Pin, lock_path};
use crate::realizer::{Realized, Realizer};
use crate::store::Store;

/// What happened to one island in an update.
#[derive(Clone, Debug)]
pub struct Change {
    /// The island's name.
    pub name: String,
    /// The pin before, if there was one.
    pub old: Option<Island>,
    /// The pin now.
    pub new: Island,
}

impl Change {
    /// Whether the pin moved (or is new).
    pub fn moved(&self) -> bool {
        self.old.as_ref() != Some(&self.new)
    }

    /// `name: <old rev> → <new rev>`, with hashes where there is no rev.
    pub fn describe(&self) -> String {
        let short = |island: &Island| match (&island.config.rev, &island.config.hash) {
            (Some(rev), _) => rev.clone(),
            (None, Some(hash)) => hash.to_string(),
            (None, None) => "(unpinned)".into(),
        };
        let old = self.old.as_ref().map(short).unwrap_or_else(|| "(new)".into());
        format!("{}: {old} → {}", self.name, short(&self.new))
    }
}

/// Realizes `island` and returns it with its locked literal.
pub async fn realize(realizer: &Realizer, island: &Island) -> Result<(Realized, Island)> {
    let drv = to_derivation(island, realizer.environment())?;
    let realized = realizer.realize(&drv, &island.to_string()).await?;
    let locked = island.locked(realized.rev.clone(), realized.tree, realized.nar);
    Ok((realized, locked))
}

/// Records pins in the lock beside `manifest_path`, under the lock's guard, keeping every other
/// entry as it is on disk now (another process may have written it meanwhile), and registers
/// the lock as a gc root of `store`.
pub fn record(store: &Store, manifest_path: &Path, pins: &BTreeMap<String, Pin>) -> Result<()> {
    let path = lock_path(manifest_path);
    let guard = LockGuard::acquire(&path)?;
    let mut lock = guard.read()?;
    for (name, pin) in pins {
        lock.pins.insert(name.clone(), pin.clone());
    }
    guard.write(&lock)?;
    crate::gc::register_lock(store, &path, &lock);
    Ok(())
}

/// Re-resolves the named islands (all when `names` is empty) from their manifest literals —
/// branches move, pins are re-fetched — and rewrites the lock. Names the manifest no longer has
/// are dropped from the lock. Fails without touching the lock if any island fails.
pub async fn update(realizer: &Arc<Realizer>, manifest: &Manifest, names: &[String]) -> Result<Vec<Change>> {
    for name in names {
        if !manifest.islands.contains_key(name) {
            bail!("{}: no island named `{name}`", manifest.path.display());
        }
    }
    let old_path = lock_path(&manifest.path);
    let old = crate::lock::Lock::read(&old_path)?;
    if old_path.exists() {
        crate::gc::register_lock(realizer.store(), &old_path, &old);
    }
    let chosen: Vec<(&String, &Island)> = manifest
        .islands
        .iter()
        .filter(|(name, _)| names.is_empty() || names.contains(name))
        .collect();
    // All at once: an unchanged island costs one round trip, and they overlap.
    let mut tasks = tokio::task::JoinSet::new();
    for (name, island) in chosen {
        let (realizer, name, island) = (realizer.clone(), name.clone(), island.clone());
        tasks.spawn(async move {
            // The manifest's literal may itself pin a rev or hash; only what it leaves open moves.
            let result = realize(&realizer, &island).await;
            (name, island, result)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.context("an update task panicked")?);
    }
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut changes = Vec::new();
    let mut pins = BTreeMap::new();
    let mut failures = Vec::new();
    for (name, original, result) in results {
        match result {
            Ok((_, locked)) => {
                changes.push(Change {
                    name: name.clone(),
                    old: old.pins.get(&name).map(|p| p.locked.clone()),
                    new: locked.clone(),
                });
                pins.insert(name, Pin { original, locked });
            }
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "the lock was left as it was, because {} failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    let path = lock_path(&manifest.path);
    let guard = LockGuard::acquire(&path)?;
    let mut lock = guard.read()?;
    lock.pins.retain(|name, _| manifest.islands.contains_key(name));
    lock.pins.extend(pins);
    guard.write(&lock).context("cannot write the new pins")?;
    // Registered while this process still holds the new trees live: a collection sees them
    // kept by one or the other.
    crate::gc::register_lock(realizer.store(), &path, &lock);
    Ok(changes)
}
