//! One collection, phase by phase, as the module's doc describes them: mark what the roots and
//! the policy keep (no lock), plan what that leaves to free, then either report the plan (a dry
//! run) or carry it out in short exclusive windows, each of which first marks what appeared
//! since. The phases share one [`Collection`], which holds what has been marked so far.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use super::reach::{Marked, Obj, Objects, Owners};
use super::{Busy, Collected, Dropped, IndirectRoots, Policy, list_objects};
use crate::hash::TreeHash;
use crate::store::Store;

/// How long one exclusive window may spend deleting objects; writers wait at most about this
/// long (plus the window's re-marking) for their turn.
const WINDOW: Duration = Duration::from_millis(50);

/// A published tree and when it was last used.
type Used = (TreeHash, Option<SystemTime>);

/// An index entry's path and the tree it names (`None`: unreadable).
type IndexEntry = (PathBuf, Option<TreeHash>);

impl Store {
    /// Collects garbage while other processes keep using the store (see the module's doc).
    /// `indirect` names the trees the registered locks pin. Only one collection runs at a
    /// time per store: another one running is an error ([`Busy`]). The calling thread must
    /// not hold a guard (the collection would wait for it forever); other threads may.
    pub fn collect(&self, policy: &Policy, indirect: &dyn IndirectRoots) -> Result<Collected> {
        let Some(_running) = self.try_lock("gc-run")? else {
            return Err(Busy(self.root.clone()).into());
        };
        let usage_before = self.usage()?.map(|u| u.bytes).unwrap_or(0);
        let mut collection = Collection::new(self, policy, indirect)?;
        let unrooted = collection.mark_roots()?;
        let dropping = collection.keep_by_policy(unrooted)?;
        let plan = collection.plan(dropping)?;
        if policy.dry_run {
            return collection.report(&plan);
        }
        collection.delete(plan, usage_before)
    }
}

/// One object file and its size.
struct Candidate {
    obj: Obj,
    path: PathBuf,
    size: u64,
}

/// What the marking leaves to free, worked out before any lock is taken.
struct Plan {
    /// Unrooted trees the policy does not keep, most recently used first.
    dropping: Vec<Used>,
    /// Objects no kept tree reached when listed; each is checked again before it goes.
    candidates: Vec<Candidate>,
    /// Bytes of every object listed, kept or not: the store's size before deleting.
    counted: u64,
    /// Per dropped tree, the bytes no other tree shares.
    alone: HashMap<TreeHash, u64>,
    /// The index as read with no lock; the first window re-reads only the entries it drops.
    index: Vec<IndexEntry>,
}

impl Plan {
    /// The dropped trees as the result reports them.
    fn described(&self) -> Vec<Dropped> {
        self.dropping
            .iter()
            .map(|(tree, used)| Dropped {
                tree: *tree,
                last_used: *used,
                alone: self.alone.get(tree).copied().unwrap_or(0),
            })
            .collect()
    }
}

/// A collection in progress.
struct Collection<'s> {
    store: &'s Store,
    policy: &'s Policy,
    indirect: &'s dyn IndirectRoots,
    /// The published trees known to the collection: read at the start, joined by those
    /// published since, left by those whose records it drops.
    published: BTreeSet<TreeHash>,
    objects: Objects<'s>,
    /// Everything kept so far; only ever grows.
    marked: Marked,
    result: Collected,
}

impl<'s> Collection<'s> {
    fn new(store: &'s Store, policy: &'s Policy, indirect: &'s dyn IndirectRoots) -> Result<Collection<'s>> {
        Ok(Collection {
            store,
            policy,
            indirect,
            published: store.roots()?.into_iter().collect(),
            objects: Objects::new(store, false),
            marked: Marked::default(),
            result: Collected {
                dry_run: policy.dry_run,
                ..Collected::default()
            },
        })
    }

    /// Marks what the roots reach, with no lock; returns the published trees they do not
    /// reach, most recently used first. A dry run leaves stale roots in place.
    fn mark_roots(&mut self) -> Result<Vec<Used>> {
        let clean = !self.policy.dry_run;
        for root in self.store.gather_roots(clean, self.indirect)? {
            self.marked.mark(&mut self.objects, &root.tree)?;
        }
        let mut unrooted: Vec<Used> = self
            .published
            .iter()
            .filter(|t| !self.marked.contains(&Obj::Tree(t.0)))
            .map(|t| (*t, self.store.last_used(t)))
            .collect();
        self.result.rooted_trees = self.published.len() - unrooted.len();
        // Most recently used first: evicting the least recently used means keeping a prefix.
        unrooted.sort_by_key(|t| std::cmp::Reverse(t.1));
        Ok(unrooted)
    }

    /// Marks the unrooted trees the policy keeps (used recently, or within the size to keep);
    /// returns the others, which the collection drops.
    fn keep_by_policy(&mut self, unrooted: Vec<Used>) -> Result<Vec<Used>> {
        let mut evicting = false;
        for (tree, used) in &unrooted {
            if self.marked.contains(&Obj::Tree(tree.0)) {
                continue; // inside a tree kept already
            }
            if self
                .policy
                .older_than
                .is_some_and(|d| age(*used).is_some_and(|a| a < d))
            {
                self.marked.mark(&mut self.objects, tree)?;
                continue;
            }
            if let Some(limit) = self.policy.keep_size
                && !evicting
            {
                let (more, new) = self.marked.would_add(&mut self.objects, tree)?;
                if self.marked.bytes + more <= limit {
                    self.marked.add(new);
                    continue;
                }
                evicting = true;
            }
        }
        Ok(unrooted
            .into_iter()
            .filter(|(t, _)| !self.marked.contains(&Obj::Tree(t.0)))
            .collect())
    }

    /// What would be freed: the objects no kept tree reaches, and per dropped tree, what it
    /// alone holds. Still with no lock.
    fn plan(&mut self, dropping: Vec<Used>) -> Result<Plan> {
        let mut candidates = Vec::new();
        let mut counted = 0u64;
        for (obj, path) in list_objects(self.store)? {
            if let Some(size) = self.marked.size(&obj) {
                counted += size;
                continue;
            }
            match fs::symlink_metadata(&path) {
                Ok(meta) => {
                    counted += meta.len();
                    candidates.push(Candidate {
                        obj,
                        path,
                        size: meta.len(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
            }
        }
        let index = read_index(self.store)?;
        let mut owners = Owners::default();
        for (unit, (tree, _)) in dropping.iter().enumerate() {
            owners.add(&mut self.objects, unit, tree, Some(&self.marked))?;
        }
        let alone = owners.alone();
        let alone = dropping
            .iter()
            .enumerate()
            .map(|(unit, (tree, _))| (*tree, alone.get(&unit).copied().unwrap_or(0)))
            .collect();
        Ok(Plan {
            dropping,
            candidates,
            counted,
            alone,
            index,
        })
    }

    /// A dry run's result: the plan, with nothing deleted.
    fn report(mut self, plan: &Plan) -> Result<Collected> {
        self.result.trees = plan.described();
        self.result.kept_trees = self.published.len() - plan.dropping.len();
        self.result.objects = plan.candidates.len() as u64;
        self.result.bytes = plan.candidates.iter().map(|c| c.size).sum();
        self.result.kept_bytes = self.marked.bytes;
        self.tidy()?;
        self.result.missing_objects = self.objects.missing;
        Ok(self.result)
    }

    /// Carries out the plan in exclusive windows of at most [`WINDOW`] each: the first drops
    /// the index entries and records, and every one deletes objects until its time is up.
    fn delete(mut self, mut plan: Plan, usage_before: u64) -> Result<Collected> {
        let mut first = true;
        let mut next = 0;
        loop {
            let exclusive = self.store.gc_lock.exclusive()?;
            let opened = Instant::now();
            self.mark_since()?;
            if first {
                first = false;
                self.drop_records(&mut plan)?;
            }
            next = self.delete_objects(&plan.candidates, next, opened)?;
            drop(exclusive);
            self.result.windows += 1;
            self.result.longest_window = self.result.longest_window.max(opened.elapsed());
            if next >= plan.candidates.len() {
                break;
            }
            // Writers waiting for the lock get their turn before the next window.
            std::thread::sleep(Duration::from_millis(1));
        }
        self.result.kept_trees = self.published.len();
        self.result.kept_bytes = self.marked.bytes;
        self.tidy()?;
        self.result.missing_objects = self.objects.missing;
        let left = plan.counted.saturating_sub(self.result.bytes);
        self.store.set_usage(usage_before, left, true)?;
        let result = self.result;
        tracing::info!(
            trees = result.trees.len(),
            objects = result.objects,
            bytes = result.bytes,
            windows = result.windows,
            longest_window_ms = result.longest_window.as_millis() as u64,
            "collected garbage"
        );
        Ok(result)
    }

    /// Marks what was rooted, declared live or published since the marking, so that it is
    /// kept. Called at the start of every window, under the exclusive lock.
    fn mark_since(&mut self) -> Result<()> {
        for root in self.store.gather_roots(true, self.indirect)? {
            self.marked.mark(&mut self.objects, &root.tree)?;
        }
        for tree in self.store.roots()? {
            if self.published.insert(tree) {
                self.marked.mark(&mut self.objects, &tree)?;
            }
        }
        Ok(())
    }

    /// The first window's work: forgets the dropped trees that are still not kept, index
    /// entries first, then their records, each directory synced before the next step.
    fn drop_records(&mut self, plan: &mut Plan) -> Result<()> {
        plan.dropping.retain(|(t, _)| !self.marked.contains(&Obj::Tree(t.0)));
        let gone: HashSet<TreeHash> = plan.dropping.iter().map(|(t, _)| *t).collect();
        self.result.index_entries = drop_index_entries(self.store, &plan.index, &self.published, &gone)?;
        for tree in &gone {
            let record = self.store.root_record_path(tree);
            match fs::remove_file(&record) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", record.display())),
            }
            self.published.remove(tree);
        }
        sync_dir(&self.store.root.join("roots"))?;
        self.result.trees = plan.described();
        Ok(())
    }

    /// Deletes candidates from `next` on, skipping those marked since, until the window
    /// opened at `opened` has run its time; returns where to go on from.
    fn delete_objects(&mut self, candidates: &[Candidate], mut next: usize, opened: Instant) -> Result<usize> {
        while next < candidates.len() && opened.elapsed() < WINDOW {
            let candidate = &candidates[next];
            next += 1;
            if self.marked.contains(&candidate.obj) {
                continue;
            }
            match fs::remove_file(&candidate.path) {
                Ok(()) => {
                    self.result.objects += 1;
                    self.result.bytes += candidate.size;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", candidate.path.display()));
                }
            }
        }
        Ok(next)
    }

    /// Compiled modules of other wasmtime versions, temporary files of compilations that
    /// died, and derivation locks nobody holds.
    fn tidy(&mut self) -> Result<()> {
        let (store, policy, result) = (self.store, self.policy, &mut self.result);
        let cache = store.root.join("cache");
        if let Ok(entries) = fs::read_dir(&cache) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Ok(meta) = entry.metadata() else { continue };
                let stale = if let Some(stem) = name.strip_suffix(".cwasm") {
                    policy
                        .module_tag
                        .as_ref()
                        .is_some_and(|tag| !stem.ends_with(&format!("-{tag}")))
                } else {
                    // `.<module>.<pid>`, being written: only an old one was left by a process
                    // that died.
                    name.starts_with('.')
                        && meta
                            .modified()
                            .ok()
                            .and_then(|m| m.elapsed().ok())
                            .is_some_and(|a| a > Duration::from_secs(3600))
                };
                if stale && (policy.dry_run || fs::remove_file(entry.path()).is_ok()) {
                    result.modules += 1;
                    result.module_bytes += meta.len();
                }
            }
        }
        let locks = store.root.join("locks");
        if let Ok(entries) = fs::read_dir(&locks) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with("drv-") {
                    continue;
                }
                // Removed while held by us: a process that opened it meanwhile finds, once it
                // has the lock, that the name no longer leads to its file, and opens it again
                // (see `Store::try_lock`).
                if let Some(lock) = store.try_lock(&name)? {
                    if policy.dry_run || fs::remove_file(entry.path()).is_ok() {
                        result.lock_files += 1;
                    }
                    drop(lock);
                }
            }
        }
        Ok(())
    }
}

fn age(at: Option<SystemTime>) -> Option<Duration> {
    at.and_then(|t| SystemTime::now().duration_since(t).ok())
}

/// Every index entry and the tree it names.
fn read_index(store: &Store) -> Result<Vec<IndexEntry>> {
    let dir = store.root.join("index");
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        let target = index_target(&path);
        out.push((path, target));
    }
    Ok(out)
}

/// The tree an index entry names (its second line); `None` if it cannot be read.
fn index_target(path: &Path) -> Option<TreeHash> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().nth(1)?.parse().ok()
}

/// Removes the index entries that name a tree in `gone` or no published tree at all (each
/// read again: it may have been rewritten since), then syncs `index/`, so that they are gone
/// before the records they name. Entries made since `index` was read name trees published
/// since, which are kept.
fn drop_index_entries(
    store: &Store,
    index: &[IndexEntry],
    published: &BTreeSet<TreeHash>,
    gone: &HashSet<TreeHash>,
) -> Result<u64> {
    let keep = |target: Option<TreeHash>| target.is_some_and(|t| published.contains(&t) && !gone.contains(&t));
    let mut dropped = 0;
    for (path, target) in index {
        if keep(*target) || keep(index_target(path)) {
            continue;
        }
        match fs::remove_file(path) {
            Ok(()) => dropped += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
    sync_dir(&store.root.join("index"))?;
    Ok(dropped)
}

/// Syncs a directory, so that the removals in it are durable before the next step.
fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}
