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
    name: Name,
    /// References the kernel holds.
    lookups: u64,
}

/// A name in a directory, kept inline when it is short (most file names are): a walk of a
/// million entries then allocates nothing per inode, so what the kernel forgets leaves no
/// small pieces behind in the allocator for a longer-lived allocation to pin.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Name {
    Short { len: u8, bytes: [u8; Name::SHORT] },
    Long(Box<[u8]>),
}

impl Name {
    /// The longest name kept inline (the enum is then as large as a boxed slice plus its tag).
    const SHORT: usize = 22;

    /// The one form of `name` (short names are always inline, so equal names hash equally).
    fn new(name: &[u8]) -> Name {
        match u8::try_from(name.len()) {
            Ok(len) if name.len() <= Name::SHORT => {
                let mut bytes = [0; Name::SHORT];
                bytes[..name.len()].copy_from_slice(name);
                Name::Short { len, bytes }
            }
            _ => Name::Long(name.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Short { len, bytes } => &bytes[..usize::from(*len)],
            Name::Long(name) => name,
        }
    }
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

/// Keeps the table's large maps in memory of their own. glibc raises its mmap threshold each
/// time a mapped block is freed (up to 32 MiB), so once the maps have grown and been resized a
/// few times, their next copies land in the heap, and the small allocations that come later
/// settle between them: after a walk of a million entries and the kernel forgetting them, the
/// heap kept ~50 MiB it could not give back around a few MiB still in use. A fixed threshold
/// maps every large block on its own and unmaps it when freed.
fn keep_large_maps_out_of_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; 128 KiB is its own default.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Inodes by number and by (parent, name).
pub struct Table<K> {
    inodes: HashMap<u64, Entry<K>>,
    by_name: HashMap<(u64, Name), u64>,
    next: u64,
}

impl<K: Clone> Table<K> {
    /// A table holding the permanent inodes `1..=PERMANENT` (the first is the root; the others
    /// are its children `names`).
    pub fn new(root: K, children: [(&[u8], K); PERMANENT as usize - 1]) -> Table<K> {
        keep_large_maps_out_of_the_heap();
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
                name: Name::new(name),
                lookups: 0,
            },
        );
        if parent != 0 {
            self.by_name.insert((parent, Name::new(name)), ino);
        }
        ino
    }

    /// The kind of `ino`.
    pub fn get(&self, ino: u64) -> Option<&K> {
        self.inodes.get(&ino).map(|e| &e.kind)
    }

    /// The directory `ino` is in, and its name there.
    pub fn parent(&self, ino: u64) -> Option<(u64, &[u8])> {
        self.inodes.get(&ino).map(|e| (e.parent, e.name.as_bytes()))
    }

    /// The inode `name` in `parent` has, if it has one now.
    pub fn find(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.by_name.get(&(parent, Name::new(name))).copied()
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
        let ino = self.by_name.remove(&(parent, Name::new(name)))?;
        if let Some(entry) = self.inodes.get_mut(&ino) {
            entry.kind = kind;
        }
        Some(ino)
    }

    /// The children of `parent` the table holds, sorted by name.
    pub fn children(&self, parent: u64) -> Vec<(u64, Box<[u8]>, K)> {
        let mut out: Vec<(u64, Box<[u8]>, K)> = self
            .by_name
            .iter()
            .filter(|((p, _), _)| *p == parent)
            .filter_map(|((_, name), &ino)| Some((ino, name.as_bytes().into(), self.get(ino)?.clone())))
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

    #[test]
    fn long_and_short_names_are_found_alike() {
        let mut t = table();
        let long = [b'n'; 300];
        for name in [&b""[..], b"a", &long[..Name::SHORT], &long[..Name::SHORT + 1], &long] {
            let ino = t.look_up(2, name, || "x");
            assert_eq!(t.find(2, name), Some(ino), "{} bytes", name.len());
            assert_eq!(t.parent(ino), Some((2, name)));
        }
        assert_eq!(t.find(2, &long[..5]), None);
        assert_eq!(std::mem::size_of::<Name>(), std::mem::size_of::<Box<[u8]>>() + 8);
    }
}
