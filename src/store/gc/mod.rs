//! Garbage collection: what keeps the store within bounds while other processes use it.
//!
//! A tree is kept while a root reaches it ([`roots`]: registered locks, hand-made roots, the
//! trees running processes declared live) or while the policy keeps it (recently used, within
//! `--keep-size`). Everything else goes: the records of trees nobody keeps, the index entries
//! naming them, and every blob and tree object no kept tree reaches.
//!
//! The collector marks without any lock, then deletes in short windows holding the gc lock
//! exclusively ([`guard`]); each window first reads the roots and the published trees again
//! and marks what appeared meanwhile, so nothing published or declared live since the marking
//! is lost. Deletion order keeps the store consistent at every instant, so that a `kill -9`
//! anywhere leaves a store `cab store verify` finds clean: index entries, then the records of
//! the trees they name (both directories synced), then the objects that only those trees (or
//! nothing) reached.

mod du;
mod guard;
mod reach;
mod roots;
mod usage;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use self::reach::{Marked, Obj, Objects, Owners};
use super::Store;
use crate::hash::{BlobHash, TreeHash, encoding};

pub use du::{Du, DuRow};
pub(super) use guard::GcLock;
pub use guard::Guard;
pub(super) use roots::Live;
pub use roots::{Indirect, LiveProcess, Root, RootKind, check_root_name};
pub use usage::Usage;

/// How long one exclusive window may spend deleting objects; writers wait at most about this
/// long (plus the window's re-marking) for their turn.
const WINDOW: Duration = Duration::from_millis(50);

/// What to keep beyond the roots, and whether to delete at all.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Only say what would go.
    pub dry_run: bool,
    /// Keep unrooted trees, most recently used first, while the store's objects fit in this
    /// many bytes.
    pub keep_size: Option<u64>,
    /// Keep unrooted trees used within this long.
    pub older_than: Option<Duration>,
    /// The compatibility tag of this cab's compiled modules (`cache/<module>-<tag>.cwasm`):
    /// modules with any other tag were compiled by another wasmtime and are deleted.
    pub module_tag: Option<String>,
}

/// A published tree a collection deleted (or would delete).
#[derive(Clone, Debug)]
pub struct Dropped {
    /// The tree.
    pub tree: TreeHash,
    /// When it was last used.
    pub last_used: Option<SystemTime>,
    /// Bytes no other tree shares: what deleting it alone frees.
    pub alone: u64,
}

/// What a collection did (or, dry, would do).
#[derive(Clone, Debug, Default)]
pub struct Collected {
    /// Nothing was deleted.
    pub dry_run: bool,
    /// Published trees dropped, most recently used first.
    pub trees: Vec<Dropped>,
    /// Published trees kept.
    pub kept_trees: usize,
    /// Of those, kept because a root reaches them.
    pub rooted_trees: usize,
    /// Objects (blobs and tree objects) deleted.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes of the objects kept.
    pub kept_bytes: u64,
    /// Index entries deleted.
    pub index_entries: u64,
    /// Compiled modules of other wasmtime versions (and leftover temporary files) deleted.
    pub modules: u64,
    /// Their bytes.
    pub module_bytes: u64,
    /// Unused derivation lock files deleted.
    pub lock_files: u64,
    /// Exclusive windows taken.
    pub windows: u32,
    /// The longest of them.
    pub longest_window: Duration,
    /// Tree objects some root names that the store lacks (pins not fetched here, damage).
    pub missing_objects: u64,
}

/// Another collection is running on the store.
#[derive(Debug)]
pub struct Busy(PathBuf);

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "another `cab store gc` is running on the store at {}; wait for it to finish",
            self.0.display()
        )
    }
}

impl std::error::Error for Busy {}

/// One object file and its size.
struct Candidate {
    obj: Obj,
    path: PathBuf,
    size: u64,
}

/// Every object file in `blobs/` or `trees/`, by name; names that are not 64 hex digits
/// (nothing cab writes) are left alone.
fn list_objects(store: &Store) -> Result<Vec<(Obj, PathBuf)>> {
    let mut out = Vec::new();
    for (dir, blob) in [("blobs", true), ("trees", false)] {
        for (name, path) in super::verify::sharded_files(&store.root.join(dir))? {
            let Some(hash) = encoding::from_hex(&name) else {
                continue;
            };
            out.push((
                if blob {
                    Obj::Blob(BlobHash(hash))
                } else {
                    Obj::Tree(hash)
                },
                path,
            ));
        }
    }
    Ok(out)
}

fn age(at: Option<SystemTime>) -> Option<Duration> {
    at.and_then(|t| SystemTime::now().duration_since(t).ok())
}

/// The tree an index entry names (its second line); `None` if it cannot be read.
fn index_target(path: &std::path::Path) -> Option<TreeHash> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().nth(1)?.parse().ok()
}

/// Syncs a directory, so that the removals in it are durable before the next step.
fn sync_dir(dir: &std::path::Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

impl Store {
    /// Counts the bytes of every object (one `stat` each) and sets the size estimate to it.
    pub fn measure_usage(&self) -> Result<Usage> {
        let before = self.usage()?.map(|u| u.bytes).unwrap_or(0);
        let mut bytes = 0;
        for (_, path) in list_objects(self)? {
            if let Ok(meta) = fs::symlink_metadata(&path) {
                bytes += meta.len();
            }
        }
        self.set_usage(before, bytes, false)
    }

    /// Takes the gc lock shared: until the guard is dropped, no collector deletes anything.
    /// Hold one from before reading whether an object or tree is present until what relies on
    /// it is published and declared live (see DESIGN.md, "Store").
    pub fn guard(&self) -> Result<Guard> {
        self.gc_lock.shared()
    }

    /// Fails unless this process holds a guard: writing objects without one could race a
    /// collector that deletes them.
    pub(super) fn require_guard(&self, what: &str) -> Result<()> {
        if !self.gc_lock.held() {
            bail!("internal error: {what} outside the gc guard (a bug in cab)");
        }
        Ok(())
    }

    /// Declares `trees` live for the rest of this process's life: no collection deletes them
    /// meanwhile, whether or not they are (wholly) in the store yet. Call it under a guard,
    /// in the same guarded section that found them published or published them. Also records
    /// that they were used now.
    pub fn declare_live(&self, trees: &[TreeHash]) -> Result<()> {
        self.require_guard("declaring trees live")?;
        self.live.declare(trees)
    }

    /// Holds a tree for this process: declares it live and says what the store knows of it,
    /// in one guarded section, so that a tree found published stays so.
    pub fn hold(&self, tree: &TreeHash) -> Result<Option<super::Published>> {
        let _guard = self.guard()?;
        let published = self.published(tree)?;
        if published.is_some() {
            self.declare_live(&[*tree])?;
        }
        Ok(published)
    }

    /// Every root: first the live trees of running processes, then those of `indirect` (what
    /// the registered locks pin, read by the caller, who knows their format), then the
    /// hand-made ones. In this order, a process that registers a lock and then exits is seen
    /// either alive or with its registration in place. With `clean`, stale entries go.
    pub fn gather_roots(&self, clean: bool, indirect: &dyn Fn(&Store, bool) -> Result<Vec<Root>>) -> Result<Vec<Root>> {
        let mut roots = Vec::new();
        for process in self.live_roots(clean)? {
            for tree in process.trees {
                roots.push(Root {
                    kind: RootKind::Live {
                        pid: process.pid,
                        command: process.command.clone(),
                    },
                    tree,
                });
            }
        }
        roots.extend(indirect(self, clean)?);
        for (name, tree) in self.manual_roots()? {
            roots.push(Root {
                kind: RootKind::Manual { name },
                tree,
            });
        }
        Ok(roots)
    }

    /// Collects garbage while other processes keep using the store (see the module's doc).
    /// `indirect` names the trees the registered locks pin. Only one collection runs at a
    /// time per store: another one running is an error ([`Busy`]). The calling thread must
    /// not hold a guard (the collection would wait for it forever); other threads may.
    pub fn collect(&self, policy: &Policy, indirect: &dyn Fn(&Store, bool) -> Result<Vec<Root>>) -> Result<Collected> {
        let Some(_running) = self.try_lock("gc-run")? else {
            return Err(Busy(self.root.clone()).into());
        };
        let usage_before = self.usage()?.map(|u| u.bytes).unwrap_or(0);
        let clean = !policy.dry_run;
        let mut result = Collected {
            dry_run: policy.dry_run,
            ..Collected::default()
        };

        // Marking, with no lock: the roots, then what the policy keeps.
        let published: BTreeSet<TreeHash> = self.roots()?.into_iter().collect();
        let mut objects = Objects::new(self, false);
        let mut marked = Marked::default();
        let roots = self.gather_roots(clean, indirect)?;
        for root in &roots {
            marked.mark(&mut objects, &root.tree)?;
        }
        let mut unrooted: Vec<(TreeHash, Option<SystemTime>)> = published
            .iter()
            .filter(|t| !marked.contains(&Obj::Tree(t.0)))
            .map(|t| (*t, self.last_used(t)))
            .collect();
        result.rooted_trees = published.len() - unrooted.len();
        // Most recently used first: evicting the least recently used means keeping a prefix.
        unrooted.sort_by_key(|t| std::cmp::Reverse(t.1));
        let mut evicting = false;
        for (tree, used) in &unrooted {
            if marked.contains(&Obj::Tree(tree.0)) {
                continue; // inside a tree kept already
            }
            if policy.older_than.is_some_and(|d| age(*used).is_some_and(|a| a < d)) {
                marked.mark(&mut objects, tree)?;
                continue;
            }
            if let Some(limit) = policy.keep_size
                && !evicting
            {
                let (more, new) = marked.would_add(&mut objects, tree)?;
                if marked.bytes + more <= limit {
                    marked.add(new);
                    continue;
                }
                evicting = true;
            }
        }
        let mut dropping: Vec<(TreeHash, Option<SystemTime>)> = unrooted
            .into_iter()
            .filter(|(t, _)| !marked.contains(&Obj::Tree(t.0)))
            .collect();

        // What would be freed: objects no kept tree reaches, and per dropped tree, what it
        // alone holds.
        let mut candidates = Vec::new();
        let mut counted = 0u64;
        for (obj, path) in list_objects(self)? {
            if let Some(size) = marked.size(&obj) {
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
        // Read now, with no lock; the first window re-reads only those it drops.
        let index = self.read_index()?;
        let mut owners = Owners::default();
        for (unit, (tree, _)) in dropping.iter().enumerate() {
            owners.add(&mut objects, unit, tree, Some(&marked))?;
        }
        let alone = owners.alone();
        let alone: HashMap<TreeHash, u64> = dropping
            .iter()
            .enumerate()
            .map(|(unit, (tree, _))| (*tree, alone.get(&unit).copied().unwrap_or(0)))
            .collect();
        let described = |dropping: &[(TreeHash, Option<SystemTime>)]| -> Vec<Dropped> {
            dropping
                .iter()
                .map(|(tree, used)| Dropped {
                    tree: *tree,
                    last_used: *used,
                    alone: alone.get(tree).copied().unwrap_or(0),
                })
                .collect()
        };
        if policy.dry_run {
            result.trees = described(&dropping);
            result.kept_trees = published.len() - dropping.len();
            result.objects = candidates.len() as u64;
            result.bytes = candidates.iter().map(|c| c.size).sum();
            result.kept_bytes = marked.bytes;
            self.tidy(policy, &mut result)?;
            result.missing_objects = objects.missing;
            return Ok(result);
        }

        // Deleting, in exclusive windows.
        let mut known = published;
        let mut first = true;
        let mut next = 0;
        loop {
            let exclusive = self.gc_lock.exclusive()?;
            let opened = Instant::now();
            // What was rooted, declared live or published since the marking is kept.
            for root in self.gather_roots(true, indirect)? {
                marked.mark(&mut objects, &root.tree)?;
            }
            for tree in self.roots()? {
                if known.insert(tree) {
                    marked.mark(&mut objects, &tree)?;
                }
            }
            if first {
                first = false;
                dropping.retain(|(t, _)| !marked.contains(&Obj::Tree(t.0)));
                let gone: HashSet<TreeHash> = dropping.iter().map(|(t, _)| *t).collect();
                result.index_entries = self.drop_index_entries(&index, &known, &gone)?;
                for tree in &gone {
                    let record = self.root_record_path(tree);
                    match fs::remove_file(&record) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", record.display())),
                    }
                    known.remove(tree);
                }
                sync_dir(&self.root.join("roots"))?;
                result.trees = described(&dropping);
            }
            while next < candidates.len() && opened.elapsed() < WINDOW {
                let candidate = &candidates[next];
                next += 1;
                if marked.contains(&candidate.obj) {
                    continue;
                }
                match fs::remove_file(&candidate.path) {
                    Ok(()) => {
                        result.objects += 1;
                        result.bytes += candidate.size;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot remove {}", candidate.path.display()));
                    }
                }
            }
            drop(exclusive);
            result.windows += 1;
            result.longest_window = result.longest_window.max(opened.elapsed());
            if next >= candidates.len() {
                break;
            }
            // Writers waiting for the lock get their turn before the next window.
            std::thread::sleep(Duration::from_millis(1));
        }
        result.kept_trees = known.len();
        result.kept_bytes = marked.bytes;
        self.tidy(policy, &mut result)?;
        result.missing_objects = objects.missing;
        let left = counted.saturating_sub(result.bytes);
        self.set_usage(usage_before, left, true)?;
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

    /// Every index entry and the tree it names (`None`: unreadable).
    fn read_index(&self) -> Result<Vec<(PathBuf, Option<TreeHash>)>> {
        let dir = self.root.join("index");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
            let target = index_target(&path);
            out.push((path, target));
        }
        Ok(out)
    }

    /// Removes the index entries that name a tree in `gone` or no published tree at all
    /// (each read again: it may have been rewritten since), then syncs `index/`, so that they
    /// are gone before the records they name. Entries made since `index` was read name trees
    /// published since, which are kept.
    fn drop_index_entries(
        &self,
        index: &[(PathBuf, Option<TreeHash>)],
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
        sync_dir(&self.root.join("index"))?;
        Ok(dropped)
    }

    /// Compiled modules of other wasmtime versions, temporary files of compilations that
    /// died, and derivation locks nobody holds.
    fn tidy(&self, policy: &Policy, result: &mut Collected) -> Result<()> {
        let cache = self.root.join("cache");
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
        let locks = self.root.join("locks");
        if let Ok(entries) = fs::read_dir(&locks) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with("drv-") {
                    continue;
                }
                // Removed while held by us: a process that opened it meanwhile finds, once it
                // has the lock, that the name no longer leads to its file, and opens it again
                // (see `Store::try_lock`).
                if let Some(lock) = self.try_lock(&name)? {
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
