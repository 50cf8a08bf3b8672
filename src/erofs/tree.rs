//! The caller's description of a tree, kept compact: trees reach a million entries.
//!
//! Nodes are 32-byte records in one vector; names and symlink targets live in one byte arena;
//! every distinct xattr (name and value) is stored once, encoded as its on-disk entry, and
//! nodes refer to it by index. A value repeated on many nodes therefore costs 4 bytes per
//! node here and, once the layout makes it a shared xattr, 4 bytes per inode in the image.
//! File contents are not here: each file carries the caller's source key `S` instead.

use std::hash::{DefaultHasher, Hash, Hasher};

use super::Error;
use super::format::{self, NAME_MAX};

/// "No node" in the child and sibling links.
pub(crate) const NONE: u32 = u32::MAX;

/// The longest symlink target: the kernel's PATH_MAX counts a terminating NUL.
pub(crate) const SYMLINK_MAX: usize = 4095;

/// Identifies a node of a [`Tree`]: returned by the `add_*` calls, passed as a parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(pub(crate) u32);

/// What a node is, with the fields that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A directory; `last_child` makes appending (and checking the order) O(1).
    Dir { first_child: u32, last_child: u32 },
    /// A regular file of `size` bytes; `source` indexes the tree's source keys.
    File { size: u64, executable: bool, source: u32 },
    /// A symlink whose target is `len` bytes at `at` in the name arena.
    Symlink { at: u32, len: u16 },
}

/// One node, 32 bytes.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub name_at: u32,
    pub name_len: u8,
    pub xattr_count: u16,
    pub xattrs_at: u32,
    pub next_sibling: u32,
    pub kind: Kind,
}

/// Every distinct xattr, encoded once as an on-disk entry (unpadded).
///
/// Equal entries are found through a small set-associative cache rather than a map of every
/// entry: on a million-node tree most entries are unique (a per-node hash) and a map would
/// cost some 35 bytes per node to find the few values that repeat. A cached entry that has
/// been reused is never evicted by one that has not, so a value that repeats across the tree
/// stays found; one that misses the cache is merely stored again (shared or inline), which
/// is still a correct image.
#[derive(Debug, Default)]
pub(crate) struct Xattrs {
    /// Concatenated entries: name length, name index, value size (LE), suffix, value.
    pub bytes: Vec<u8>,
    /// Where each entry starts in `bytes`.
    pub at: Vec<u32>,
    /// The cache: [`CACHE_WAYS`] slots per set, allocated on first use.
    cache: Vec<Slot>,
}

/// One cache slot: an entry's hash and id, and whether it was found again since.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    key: u64,
    id: u32,
    reused: bool,
    used: bool,
}

const CACHE_SETS: usize = 1 << 12;
const CACHE_WAYS: usize = 4;

impl Xattrs {
    /// The entry's name index, suffix and value.
    pub fn get(&self, id: u32) -> (u8, &[u8], &[u8]) {
        let at = self.at[id as usize] as usize;
        let b = &self.bytes[at..];
        let (suffix_len, index) = (b[0] as usize, b[1]);
        let value_len = u16::from_le_bytes([b[2], b[3]]) as usize;
        let suffix = &b[4..4 + suffix_len];
        (index, suffix, &b[4 + suffix_len..4 + suffix_len + value_len])
    }

    /// The on-disk size of the entry, padded.
    pub fn size(&self, id: u32) -> u64 {
        let (_, suffix, value) = self.get(id);
        format::xattr_entry_size(suffix.len(), value.len())
    }

    fn intern(&mut self, index: u8, suffix: &[u8], value: &[u8]) -> Result<u32, Error> {
        let start = self.bytes.len();
        self.bytes.push(suffix.len() as u8);
        self.bytes.push(index);
        self.bytes.extend_from_slice(&(value.len() as u16).to_le_bytes());
        self.bytes.extend_from_slice(suffix);
        self.bytes.extend_from_slice(value);
        let mut hasher = DefaultHasher::new();
        self.bytes[start..].hash(&mut hasher);
        let key = hasher.finish();
        if self.cache.is_empty() {
            self.cache = vec![Slot::default(); CACHE_SETS * CACHE_WAYS];
        }
        let set = (key as usize % CACHE_SETS) * CACHE_WAYS;
        for way in set..set + CACHE_WAYS {
            let slot = self.cache[way];
            if slot.used && slot.key == key && self.entry_bytes(slot.id) == &self.bytes[start..] {
                self.bytes.truncate(start);
                self.cache[way].reused = true;
                return Ok(slot.id);
            }
        }
        let id = u32::try_from(self.at.len()).map_err(|_| Error::TooLarge("distinct xattrs"))?;
        let at = u32::try_from(start).map_err(|_| Error::TooLarge("xattr bytes"))?;
        self.at.push(at);
        // An empty slot, else one never reused; a set of reused entries keeps them.
        let ways = &mut self.cache[set..set + CACHE_WAYS];
        let victim = ways
            .iter()
            .position(|s| !s.used)
            .or_else(|| ways.iter().position(|s| !s.reused));
        if let Some(way) = victim {
            ways[way] = Slot {
                key,
                id,
                reused: false,
                used: true,
            };
        }
        Ok(id)
    }

    fn entry_bytes(&self, id: u32) -> &[u8] {
        let (_, suffix, value) = self.get(id);
        let at = self.at[id as usize] as usize;
        &self.bytes[at..at + 4 + suffix.len() + value.len()]
    }
}

/// A tree to be written as an EROFS image: the caller adds nodes, children of a directory in
/// strictly increasing byte order of their names, then lays it out with [`Tree::plan`].
///
/// `S` is whatever tells the caller where a regular file's contents are (a path, a blob
/// hash): the writer hands it back to the caller's `open` callback when it copies the data.
///
/// [`Tree::plan`]: Tree::plan
#[derive(Debug)]
pub struct Tree<S> {
    pub(crate) nodes: Vec<Node>,
    pub(crate) names: Vec<u8>,
    pub(crate) sources: Vec<S>,
    pub(crate) xattrs: Xattrs,
    pub(crate) xattr_refs: Vec<u32>,
}

impl<S> Tree<S> {
    /// A tree holding only its root directory, with these xattrs.
    pub fn new<N, V>(root_xattrs: impl IntoIterator<Item = (N, V)>) -> Result<Self, Error>
    where
        N: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let mut tree = Tree {
            nodes: Vec::new(),
            names: Vec::new(),
            sources: Vec::new(),
            xattrs: Xattrs::default(),
            xattr_refs: Vec::new(),
        };
        let (xattrs_at, xattr_count) = tree.add_xattrs(root_xattrs)?;
        tree.nodes.push(Node {
            name_at: 0,
            name_len: 0,
            xattr_count,
            xattrs_at,
            next_sibling: NONE,
            kind: Kind::Dir {
                first_child: NONE,
                last_child: NONE,
            },
        });
        Ok(tree)
    }

    /// The root directory.
    pub fn root(&self) -> NodeId {
        NodeId(0)
    }

    /// Number of nodes, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is only its root.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    /// Adds a directory under `parent`.
    pub fn add_dir<N, V>(
        &mut self,
        parent: NodeId,
        name: &[u8],
        xattrs: impl IntoIterator<Item = (N, V)>,
    ) -> Result<NodeId, Error>
    where
        N: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        self.add(parent, name, xattrs, |_| {
            Ok(Kind::Dir {
                first_child: NONE,
                last_child: NONE,
            })
        })
    }

    /// Adds a regular file of `size` bytes under `parent`; `source` is handed back to the
    /// write call's `open` callback to get the contents, which must then be `size` bytes.
    pub fn add_file<N, V>(
        &mut self,
        parent: NodeId,
        name: &[u8],
        size: u64,
        executable: bool,
        source: S,
        xattrs: impl IntoIterator<Item = (N, V)>,
    ) -> Result<NodeId, Error>
    where
        N: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let index = u32::try_from(self.sources.len()).map_err(|_| Error::TooLarge("files"))?;
        let id = self.add(parent, name, xattrs, |_| {
            Ok(Kind::File {
                size,
                executable,
                source: index,
            })
        })?;
        self.sources.push(source);
        Ok(id)
    }

    /// Adds a symlink under `parent`; `target` is any bytes but NUL, 1 to 4095 of them.
    pub fn add_symlink<N, V>(
        &mut self,
        parent: NodeId,
        name: &[u8],
        target: &[u8],
        xattrs: impl IntoIterator<Item = (N, V)>,
    ) -> Result<NodeId, Error>
    where
        N: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
            return Err(Error::InvalidSymlink(target.to_vec()));
        }
        self.add(parent, name, xattrs, |names| {
            let at = u32::try_from(names.len()).map_err(|_| Error::TooLarge("names"))?;
            names.extend_from_slice(target);
            Ok(Kind::Symlink {
                at,
                len: target.len() as u16,
            })
        })
    }

    /// Validates the name and its place after the parent's last child, then links the node.
    fn add<N, V>(
        &mut self,
        parent: NodeId,
        name: &[u8],
        xattrs: impl IntoIterator<Item = (N, V)>,
        kind: impl FnOnce(&mut Vec<u8>) -> Result<Kind, Error>,
    ) -> Result<NodeId, Error>
    where
        N: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        if name.is_empty()
            || name.len() > NAME_MAX
            || name.contains(&b'/')
            || name.contains(&0)
            || name == b"."
            || name == b".."
        {
            return Err(Error::InvalidName(name.to_vec()));
        }
        let Some(&Node {
            kind: Kind::Dir {
                first_child,
                last_child,
            },
            ..
        }) = self.nodes.get(parent.0 as usize)
        else {
            return Err(Error::NotADirectory(parent));
        };
        if last_child != NONE && self.name(last_child) >= name {
            return Err(Error::Unsorted(name.to_vec()));
        }
        let id = u32::try_from(self.nodes.len())
            .ok()
            .filter(|&id| id != NONE)
            .ok_or(Error::TooLarge("nodes"))?;
        let names_len = self.names.len();
        let refs_len = self.xattr_refs.len();
        let built = (|| {
            let name_at = u32::try_from(self.names.len()).map_err(|_| Error::TooLarge("names"))?;
            self.names.extend_from_slice(name);
            let (xattrs_at, xattr_count) = self.add_xattrs(xattrs)?;
            let kind = kind(&mut self.names)?;
            Ok(Node {
                name_at,
                name_len: name.len() as u8,
                xattr_count,
                xattrs_at,
                next_sibling: NONE,
                kind,
            })
        })();
        let node = match built {
            Ok(node) => node,
            Err(e) => {
                // Leave the tree as it was: the caller may skip the node and go on.
                self.names.truncate(names_len);
                self.xattr_refs.truncate(refs_len);
                return Err(e);
            }
        };
        self.nodes.push(node);
        let first_child = if last_child == NONE {
            id
        } else {
            self.nodes[last_child as usize].next_sibling = id;
            first_child
        };
        self.nodes[parent.0 as usize].kind = Kind::Dir {
            first_child,
            last_child: id,
        };
        Ok(NodeId(id))
    }

    /// Interns a node's xattrs; names must be distinct within the node.
    fn add_xattrs<N, V>(&mut self, xattrs: impl IntoIterator<Item = (N, V)>) -> Result<(u32, u16), Error>
    where
        N: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let at = u32::try_from(self.xattr_refs.len()).map_err(|_| Error::TooLarge("xattr references"))?;
        for (name, value) in xattrs {
            let (name, value) = (name.as_ref(), value.as_ref());
            let parsed = format::split_xattr_name(name).filter(|_| name.len() <= NAME_MAX);
            let Some((index, suffix)) = parsed else {
                return Err(Error::InvalidXattr(name.to_vec()));
            };
            if value.len() > usize::from(u16::MAX) {
                return Err(Error::InvalidXattr(name.to_vec()));
            }
            let duplicate = self.xattr_refs[at as usize..].iter().any(|&id| {
                let (i, s, _) = self.xattrs.get(id);
                i == index && s == suffix
            });
            if duplicate {
                return Err(Error::InvalidXattr(name.to_vec()));
            }
            let id = self.xattrs.intern(index, suffix, value)?;
            self.xattr_refs.push(id);
        }
        let count = self.xattr_refs.len() - at as usize;
        let count = u16::try_from(count).map_err(|_| Error::TooLarge("xattrs on one node"))?;
        Ok((at, count))
    }

    /// A node's name bytes (empty for the root).
    pub(crate) fn name(&self, node: u32) -> &[u8] {
        let n = &self.nodes[node as usize];
        &self.names[n.name_at as usize..n.name_at as usize + n.name_len as usize]
    }

    /// A node's xattr entry ids.
    pub(crate) fn xattr_ids(&self, node: u32) -> &[u32] {
        let n = &self.nodes[node as usize];
        &self.xattr_refs[n.xattrs_at as usize..n.xattrs_at as usize + n.xattr_count as usize]
    }

    /// A symlink's target bytes.
    pub(crate) fn target(&self, at: u32, len: u16) -> &[u8] {
        &self.names[at as usize..at as usize + len as usize]
    }

    /// The children of a directory, in name order.
    pub(crate) fn children(&self, dir: u32) -> Children<'_, S> {
        let next = match self.nodes[dir as usize].kind {
            Kind::Dir { first_child, .. } => first_child,
            _ => NONE,
        };
        Children { tree: self, next }
    }
}

/// Iterator over a directory's children.
pub(crate) struct Children<'a, S> {
    tree: &'a Tree<S>,
    next: u32,
}

impl<S> Iterator for Children<'_, S> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.next == NONE {
            return None;
        }
        let id = self.next;
        self.next = self.tree.nodes[id as usize].next_sibling;
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_XATTRS: [(&[u8], &[u8]); 0] = [];

    #[test]
    fn node_records_stay_small() {
        assert!(std::mem::size_of::<Node>() <= 32, "{}", std::mem::size_of::<Node>());
    }

    #[test]
    fn children_must_come_in_increasing_byte_order() {
        let mut t: Tree<()> = Tree::new(NO_XATTRS).unwrap();
        let root = t.root();
        t.add_dir(root, b"b", NO_XATTRS).unwrap();
        assert!(matches!(t.add_dir(root, b"a", NO_XATTRS), Err(Error::Unsorted(_))));
        assert!(matches!(t.add_dir(root, b"b", NO_XATTRS), Err(Error::Unsorted(_))));
        t.add_file(root, b"b\xff", 0, false, (), NO_XATTRS).unwrap();
        let kids: Vec<_> = t.children(0).map(|c| t.name(c).to_vec()).collect();
        assert_eq!(kids, [b"b".to_vec(), b"b\xff".to_vec()]);
    }

    #[test]
    fn bad_names_and_parents_are_refused() {
        let mut t: Tree<()> = Tree::new(NO_XATTRS).unwrap();
        let root = t.root();
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0", &[b'x'; 256]] {
            assert!(
                matches!(t.add_dir(root, bad, NO_XATTRS), Err(Error::InvalidName(_))),
                "{bad:?}"
            );
        }
        let f = t.add_file(root, b"f", 1, false, (), NO_XATTRS).unwrap();
        assert!(matches!(t.add_dir(f, b"x", NO_XATTRS), Err(Error::NotADirectory(_))));
        assert!(t.add_symlink(root, b"l", b"", NO_XATTRS).is_err());
        assert!(t.add_symlink(root, b"l", &[b'a'; 4096], NO_XATTRS).is_err());
        assert!(t.add_dir(root, &[b'x'; 255], NO_XATTRS).is_ok());
    }

    #[test]
    fn equal_xattrs_are_stored_once_and_bad_ones_refused() {
        let mut t: Tree<()> = Tree::new([("user.rev", "r1")]).unwrap();
        let root = t.root();
        let a = t.add_dir(root, b"a", [("user.rev", "r1"), ("user.hash", "1")]).unwrap();
        t.add_dir(root, b"b", [("user.rev", "r1"), ("user.hash", "2")]).unwrap();
        assert_eq!(t.xattrs.at.len(), 3);
        // A repeated value survives a flood of unique ones in its cache set.
        for i in 0..100_000u32 {
            t.xattrs.intern(1, b"hash", &i.to_le_bytes()).unwrap();
        }
        let rev = t.xattrs.intern(1, b"rev", b"r1").unwrap();
        assert_eq!(rev, 0);
        assert_eq!(t.xattr_ids(a.0), [0, 1]);
        assert_eq!(t.xattrs.get(1), (1, &b"hash"[..], &b"1"[..]));
        let refs = t.xattr_refs.len();
        assert!(t.add_dir(root, b"c", [("user.x", "1"), ("user.x", "2")]).is_err());
        assert!(t.add_dir(root, b"c", [("bogus.x", "1")]).is_err());
        assert!(t.add_dir(root, b"c", [("user.x", vec![0u8; 65536])]).is_err());
        assert_eq!(t.xattr_refs.len(), refs, "a refused node leaves nothing behind");
        t.add_dir(root, b"c", NO_XATTRS).unwrap();
    }
}
