//! Garbage collection as cab runs it. The store collects by itself (`store::gc`) but cannot
//! read islands.lock files; this module can: it registers each lock cab reads or writes as
//! an indirect root, turns the registered locks into the trees they pin, and runs collections
//! with them — on request, or automatically when the store outgrows a size.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

use crate::derivation::{Environment, to_derivation};
use crate::lock::Lock;
use crate::store::gc::IndirectRoots;
use crate::store::{Collected, IndexKey, Policy, Root, RootKind, Store};

/// The absolute path a lock is registered under (its directory resolved, so that the same lock
/// reached by two paths is one registration).
pub fn absolute_lock_path(path: &Path) -> Result<PathBuf> {
    let path = std::path::absolute(path).with_context(|| format!("bad path {}", path.display()))?;
    Ok(
        match (path.parent().and_then(|p| p.canonicalize().ok()), path.file_name()) {
            (Some(dir), Some(name)) => dir.join(name),
            _ => path,
        },
    )
}

/// Registers the lock at `path` as an indirect root of `store`, remembering its pins as
/// `lock` has them. Called whenever cab reads or writes a lock; a failure is logged, never
/// fatal (the lock's trees are then only as safe as before registration existed).
pub fn register_lock(store: &Store, path: &Path, lock: &Lock) {
    let result = absolute_lock_path(path).and_then(|path| store.register_indirect(&path, &lock.render()));
    if let Err(e) = result {
        tracing::warn!("cannot register {} as a gc root: {e:#}", path.display());
    }
}

/// The registered locks as roots: what the store cannot read itself (see
/// [`IndirectRoots`]), read by the module that knows the lock's format.
pub struct LockRoots;

impl IndirectRoots for LockRoots {
    /// The trees the registered locks pin. A lock that is gone (deleted, or moved: its old
    /// path is empty) roots nothing, and with `clean` its registration is dropped. A lock that
    /// cannot be read or parsed (mid-edit, a merge conflict) roots the pins cab last saw in it.
    fn roots(&self, store: &Store, clean: bool) -> Result<Vec<Root>> {
        let mut roots = Vec::new();
        for registered in store.indirect_roots()? {
            let path = registered.path;
            let lock = match std::fs::read_to_string(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if clean {
                        tracing::info!("{} is gone: its pins no longer keep anything", path.display());
                        store.unregister_indirect(&path)?;
                    }
                    continue;
                }
                Ok(text) => match Lock::parse(&text) {
                    Ok(lock) => {
                        if clean && text != registered.remembered {
                            store.register_indirect(&path, &text)?;
                        }
                        lock
                    }
                    Err(e) => {
                        tracing::warn!(
                            "the lock {} is invalid ({e:#}); keeping the pins cab last saw in it",
                            path.display()
                        );
                        Lock::parse(&registered.remembered).unwrap_or_default()
                    }
                },
                Err(e) => {
                    tracing::warn!(
                        "cannot read the lock {} ({e}); keeping the pins cab last saw in it",
                        path.display()
                    );
                    Lock::parse(&registered.remembered).unwrap_or_default()
                }
            };
            for (name, pin) in lock.pins {
                let Some(tree) = pin.locked.config.hash else { continue };
                roots.push(Root {
                    kind: RootKind::Lock {
                        lock: path.clone(),
                        island: name.clone(),
                        whole: false,
                    },
                    tree,
                });
                // An island with a subpath pins the subtree; the whole tree its commit gave is kept
                // too, so that `cab update` of it, unchanged, stays one round trip (the fetcher
                // reports the commit and the store answers with the whole tree).
                if let Some(whole) = whole_tree(store, &pin.locked)?
                    && whole != tree
                {
                    roots.push(Root {
                        kind: RootKind::Lock {
                            lock: path.clone(),
                            island: name,
                            whole: true,
                        },
                        tree: whole,
                    });
                }
            }
        }
        Ok(roots)
    }
}

/// The whole tree a locked island with a subpath was cut from, where the store recorded which
/// tree its commit gave (`github`, `git`).
fn whole_tree(store: &Store, locked: &crate::island::Island) -> Result<Option<crate::hash::TreeHash>> {
    let (Some(_), Some(rev)) = (&locked.subpath, &locked.config.rev) else {
        return Ok(None);
    };
    // Only the method is used, and it depends on the format alone.
    let env = Environment {
        forges: Default::default(),
        fetcher: crate::realizer::module_hash(crate::realizer::FETCHER_WASM),
    };
    let method = to_derivation(locked, &env)?.method;
    if !method.has_rev() {
        return Ok(None);
    }
    store.lookup(&IndexKey::new(method.as_str(), "git-rev", rev))
}

/// Every root of `store` (nothing is cleaned up).
pub fn roots(store: &Store) -> Result<Vec<Root>> {
    store.gather_roots(false, &LockRoots)
}

/// Collects garbage with the registered locks as roots, also dropping compiled modules that
/// this cab's wasmtime cannot load.
pub fn collect(store: &Store, mut policy: Policy) -> Result<Collected> {
    if policy.module_tag.is_none() {
        match crate::realizer::module_cache_tag() {
            Ok(tag) => policy.module_tag = Some(tag),
            Err(e) => tracing::warn!("compiled modules are left alone: {e:#}"),
        }
    }
    let collected = store.collect(&policy, &LockRoots)?;
    // Images of trees the collection deleted go with them (the cache's bound is kept where
    // images are written).
    if !policy.dry_run {
        match store.trim_images(u64::MAX, &std::collections::HashSet::new()) {
            Ok(0) => {}
            Ok(freed) => tracing::info!("deleted {freed} bytes of images of trees that are gone"),
            Err(e) => tracing::warn!("cannot tidy the image cache: {e:#}"),
        }
    }
    Ok(collected)
}

/// Collects if the store has grown past `limit` bytes (`--gc-auto-size`), down to 80% of
/// it, keeping the most recently used unrooted trees. When the roots alone need more than the
/// limit, the next automatic collection waits until the store has grown by a tenth of it.
/// Best effort: problems are logged, and a collection already running elsewhere is left to it.
pub fn auto(store: &Store, limit: u64) {
    static RUNNING: AtomicBool = AtomicBool::new(false);
    if RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    let result = (|| -> Result<()> {
        let usage = match store.usage()? {
            Some(usage) => usage,
            // A store older than the estimate: count once.
            None => store.measure_usage()?,
        };
        if usage.bytes <= limit {
            return Ok(());
        }
        if usage
            .after_gc
            .is_some_and(|after| after > limit && usage.bytes < after + limit / 10)
        {
            return Ok(());
        }
        let keep = limit / 10 * 8;
        tracing::info!(
            "the store holds about {} bytes, over the automatic collection size {limit}; collecting down to {keep}",
            usage.bytes
        );
        let collected = match collect(
            store,
            Policy {
                keep_size: Some(keep),
                ..Policy::default()
            },
        ) {
            Ok(collected) => collected,
            Err(e) if e.is::<crate::store::gc::Busy>() => return Ok(()),
            Err(e) => return Err(e),
        };
        tracing::info!(
            "automatic collection: {} trees, {} objects, {} bytes freed",
            collected.trees.len(),
            collected.objects,
            collected.bytes
        );
        if collected.kept_bytes > limit {
            tracing::warn!(
                "the store's roots alone hold {} bytes, more than the automatic collection size {limit}: \
                 raise it, or drop roots (`cab store root ls`, `cab store du`)",
                collected.kept_bytes
            );
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!("automatic garbage collection failed: {e:#}");
    }
    RUNNING.store(false, Ordering::Release);
}

/// [`auto`] on a thread of its own (a mount must not wait for it).
pub fn auto_in_background(store: &Store, limit: u64) {
    let store = store.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("gc".into())
        .spawn(move || auto(&store, limit))
    {
        tracing::warn!("cannot start the automatic garbage collection: {e}");
    }
}
