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
//! nothing) reached. `collect.rs` is that sequence, phase by phase.

mod collect;
mod du;
mod guard;
mod reach;
mod roots;
mod usage;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};

use self::reach::Obj;
use super::Store;
use crate::hash::{BlobHash, TreeHash, encoding};

pub use du::{Du, DuRow};
pub(super) use guard::GcLock;
pub use guard::Guard;
pub(super) use roots::Live;
pub use roots::{Indirect, LiveProcess, Root, RootKind, check_root_name};
pub use usage::Usage;

/// The roots the store cannot read itself: trees named by files outside it, in a format only
/// the caller knows (cab's `gc::LockRoots` reads the registered islands.lock files). The store
/// asks for them each time it gathers its roots, so a collection sees registrations made while
/// it runs.
pub trait IndirectRoots {
    /// The trees the registered indirect roots name. With `clean`, registrations that no longer
    /// lead anywhere may be dropped (a collection that deletes asks so; a dry run or a listing
    /// does not).
    fn roots(&self, store: &Store, clean: bool) -> Result<Vec<Root>>;
}

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
    pub fn gather_roots(&self, clean: bool, indirect: &dyn IndirectRoots) -> Result<Vec<Root>> {
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
        roots.extend(indirect.roots(self, clean)?);
        for (name, tree) in self.manual_roots()? {
            roots.push(Root {
                kind: RootKind::Manual { name },
                tree,
            });
        }
        Ok(roots)
    }
}
