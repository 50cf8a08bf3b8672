//! The inode table: which inode number stands for which path, and how many references the
//! kernel holds on each. An inode lives while the kernel holds it (each lookup answered adds a
//! reference, FORGET drops them) and goes when the last is dropped, so a mount browsed for
//! weeks holds only what the kernel still caches. Numbers are never reused.

use std::collections::HashMap;

/// The inodes that exist for the whole mount (the root and the mount's own directories).
pub const PERMANENT: u64 = 5;

struct Entry<K> {
    kind: K,
    parent: u64,
    name: Box<[u8]>,
    /// References the kernel holds.
    lookups: u64,
}

/// Returns the allocator's free memory to the system: glibc keeps what was freed in its arenas
/// (the names and kinds of a million forgotten inodes, in small pieces) unless asked.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Inodes by number and by (parent, name).
pub struct Table<K> {
    inodes: HashMap<u64, Entry<K>>,
    by_name: HashMap<(u64, Box<[u8]>), u64>,
    next: u64,
}

impl<K: Clone> Table<K> {
    /// A table holding the permanent inodes `1..=PERMANENT` (the first is the root; the others
    /// are its children `names`).
    pub fn new(root: K, children: [(&[u8], K); PERMANENT as usize - 1]) -> Table<K> {
        let mut table = Table {
            inodes: HashMap::new(),
            by_name: HashMap::new(),
            next: 1,
        };
        table.insert(0, b"", root);
        for (name, kind) in children {
            table.insert(1, name, kind);
        }
        table
    }

    fn insert(&mut self, parent: u64, name: &[u8], kind: K) -> u64 {
        let ino = self.next;
        self.next += 1;
        self.inodes.insert(
            ino,
            Entry {
                kind,
                parent,
                name: name.into(),
                lookups: 0,
            },
        );
        if parent != 0 {
            self.by_name.insert((parent, name.into()), ino);
        }
        ino
    }

    /// The kind of `ino`.
    pub fn get(&self, ino: u64) -> Option<&K> {
        self.inodes.get(&ino).map(|e| &e.kind)
    }

    /// The directory `ino` is in, and its name there.
    pub fn parent(&self, ino: u64) -> Option<(u64, &[u8])> {
        self.inodes.get(&ino).map(|e| (e.parent, &e.name[..]))
    }

    /// The inode `name` in `parent` has, if it has one now.
    pub fn find(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.by_name.get(&(parent, name.into())).copied()
    }

    /// The inode for `name` in `parent` (made with `make` if new), with one more kernel
    /// reference: call this exactly when the kernel is about to be told of it.
    pub fn look_up(&mut self, parent: u64, name: &[u8], make: impl FnOnce() -> K) -> u64 {
        let ino = match self.find(parent, name) {
            Some(ino) => ino,
            None => self.insert(parent, name, make()),
        };
        if let Some(entry) = self.inodes.get_mut(&ino) {
            entry.lookups += 1;
        }
        ino
    }

    /// The kernel dropped `n` references to `ino`; it goes when none are left.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino <= PERMANENT {
            return;
        }
        let Some(entry) = self.inodes.get_mut(&ino) else { return };
        entry.lookups = entry.lookups.saturating_sub(n);
        if entry.lookups == 0
            && let Some(entry) = self.inodes.remove(&ino)
        {
            let key = (entry.parent, entry.name);
            if self.by_name.get(&key) == Some(&ino) {
                self.by_name.remove(&key);
            }
            self.shrink_if_mostly_empty();
        }
    }

    /// Gives memory back once the kernel has forgotten most of what it was told: a hash map
    /// keeps its largest capacity, so after a walk of a million entries the table would hold
    /// room for a million however few remain. Amortized: the maps are rebuilt at a quarter of
    /// their capacity, so each shrink follows as many forgets as it costs.
    fn shrink_if_mostly_empty(&mut self) {
        const SMALL: usize = 4096;
        let capacity = self.inodes.capacity();
        if capacity > SMALL && self.inodes.len() < capacity / 4 {
            self.inodes.shrink_to_fit();
            self.by_name.shrink_to_fit();
            give_back_freed_memory();
        }
    }

    /// `name` in `parent` names a new inode from the next lookup on; the inode it named now
    /// becomes `kind` for whoever still holds it, until the kernel forgets it.
    pub fn detach(&mut self, parent: u64, name: &[u8], kind: K) -> Option<u64> {
        let ino = self.by_name.remove(&(parent, name.into()))?;
        if let Some(entry) = self.inodes.get_mut(&ino) {
            entry.kind = kind;
        }
        Some(ino)
    }

    /// The children of `parent` the table holds, sorted by name.
    pub fn children(&self, parent: u64) -> Vec<(u64, Box<[u8]>, K)> {
        let mut out: Vec<_> = self
            .by_name
            .iter()
            .filter(|((p, _), _)| *p == parent)
            .filter_map(|((_, name), &ino)| Some((ino, name.clone(), self.get(ino)?.clone())))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// How many inodes exist.
    pub fn len(&self) -> usize {
        self.inodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table<&'static str> {
        Table::new(
            "root",
            [
                (b"github", "github"),
                (b"gitlab", "gitlab"),
                (b"sourcehut", "sourcehut"),
                (b"by-hash", "by-hash"),
            ],
        )
    }

    #[test]
    fn lookups_hold_inodes_and_forgets_free_them() {
        let mut t = table();
        assert_eq!(t.find(1, b"github"), Some(2));
        let a = t.look_up(1, b"a", || "a");
        assert_eq!(t.look_up(1, b"a", || unreachable!()), a, "same name, same inode");
        let child = t.look_up(a, b"x", || "x");
        assert_eq!(t.len(), PERMANENT as usize + 2);
        t.forget(child, 1);
        assert_eq!(t.get(child), None);
        t.forget(a, 1);
        assert_eq!(t.get(a), Some(&"a"), "one reference left");
        t.forget(a, 1);
        assert_eq!(t.get(a), None);
        assert_eq!(t.len(), PERMANENT as usize);
        let again = t.look_up(1, b"a", || "a");
        assert!(again > child, "numbers are never reused");
        t.forget(1, 100);
        assert_eq!(t.get(1), Some(&"root"), "permanent inodes stay");
    }

    #[test]
    fn children_are_listed_sorted() {
        let mut t = table();
        for name in [&b"zeta"[..], b"alpha"] {
            t.look_up(2, name, || "owner");
        }
        let names: Vec<_> = t.children(2).into_iter().map(|(_, n, _)| n).collect();
        assert_eq!(names, [&b"alpha"[..], b"zeta"].map(Box::from));
    }
}
