//! The canonical tree encoding behind the Cab tree hash.
//!
//! A directory object lists its entries sorted by name bytes; each entry carries its name,
//! its kind, and what a reader needs without opening anything else: a file's size and the
//! BLAKE3 of its contents, a symlink's target, a directory's own tree hash. Sizes and kinds
//! live in the parent so that `lookup`, `getattr` and `readdir` never touch blob data.
//!
//! ```text
//! directory object = "cab-dir1" u64(count) { u64(len(name)) name node }
//! root node object = "cab-node" node            (a tree whose root is a file or symlink)
//! node             = "f" u64(size) blake3(contents)     regular file
//!                  | "x" u64(size) blake3(contents)     executable file
//!                  | "l" u64(len(target)) target        symlink
//!                  | "d" tree-hash(child directory)
//! ```
//! Integers are little-endian. The tree hash of a directory is the BLAKE3 of its directory
//! object; of a file or symlink root, the BLAKE3 of its root node object. The two magics
//! keep the forms apart, so no directory can hash like a lone file.

use super::{BlobHash, TreeHash};

const DIR_MAGIC: &[u8; 8] = b"cab-dir1";
const NODE_MAGIC: &[u8; 8] = b"cab-node";

/// What a tree entry is. Only the executable bit survives from a file's mode, as in Nix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A regular file.
    File,
    /// A regular file with its executable bit set.
    Executable,
    /// A symbolic link.
    Symlink,
    /// A directory.
    Directory,
}

/// One node of a tree, as its parent records it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// A regular file: its size and the BLAKE3 of its contents (its blob's name).
    File {
        /// Whether the executable bit is set.
        executable: bool,
        /// Length of the contents in bytes.
        size: u64,
        /// BLAKE3 of the contents.
        blob: BlobHash,
    },
    /// A symbolic link and its target, which may be anything (absolute, dangling).
    Symlink {
        /// The link target as bytes.
        target: Vec<u8>,
    },
    /// A directory, named by its tree hash.
    Directory {
        /// The child's tree hash.
        tree: TreeHash,
    },
}

impl Node {
    /// The node's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Node::File { executable: false, .. } => Kind::File,
            Node::File { executable: true, .. } => Kind::Executable,
            Node::Symlink { .. } => Kind::Symlink,
            Node::Directory { .. } => Kind::Directory,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Node::File { executable, size, blob } => {
                out.push(if *executable { b'x' } else { b'f' });
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(&blob.0);
            }
            Node::Symlink { target } => {
                out.push(b'l');
                out.extend_from_slice(&(target.len() as u64).to_le_bytes());
                out.extend_from_slice(target);
            }
            Node::Directory { tree } => {
                out.push(b'd');
                out.extend_from_slice(&tree.0);
            }
        }
    }
}

/// A named entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The name as bytes: never empty, `.` or `..`, and free of `/` and NUL.
    pub name: Vec<u8>,
    /// What the name points at.
    pub node: Node,
}

/// A decoded object from the store's `trees/`: a directory, or the root node of a tree whose
/// root is not a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// A directory's entries, sorted by name bytes.
    Directory(Vec<Entry>),
    /// A file or symlink standing alone as the root of a tree.
    Root(Node),
}

/// Whether `name` may appear in a directory: what Nix and POSIX both accept.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// Encodes a directory whose entries are already sorted by name; returns the object bytes and
/// its tree hash.
pub fn encode_directory(entries: &[Entry]) -> (Vec<u8>, TreeHash) {
    debug_assert!(entries.windows(2).all(|w| w[0].name < w[1].name));
    let mut out = Vec::with_capacity(16 + entries.len() * 64);
    out.extend_from_slice(DIR_MAGIC);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for entry in entries {
        out.extend_from_slice(&(entry.name.len() as u64).to_le_bytes());
        out.extend_from_slice(&entry.name);
        entry.node.encode(&mut out);
    }
    let hash = TreeHash(*blake3::hash(&out).as_bytes());
    (out, hash)
}

/// Encodes the root of a tree. A directory root is named by its directory object (which the
/// caller already has), so only a file or symlink root yields an object here.
pub fn encode_root(root: &Node) -> Option<(Vec<u8>, TreeHash)> {
    if matches!(root, Node::Directory { .. }) {
        return None;
    }
    let mut out = NODE_MAGIC.to_vec();
    root.encode(&mut out);
    let hash = TreeHash(*blake3::hash(&out).as_bytes());
    Some((out, hash))
}

/// The tree hash of a tree with this root.
pub fn root_hash(root: &Node) -> TreeHash {
    match root {
        Node::Directory { tree } => *tree,
        other => encode_root(other).map(|(_, h)| h).unwrap_or(TreeHash([0; 32])),
    }
}

/// Why bytes are not a valid tree object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadObject(pub &'static str);

impl std::fmt::Display for BadObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed tree object: {}", self.0)
    }
}

impl std::error::Error for BadObject {}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadObject> {
        if self.0.len() < n {
            return Err(BadObject("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, BadObject> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn len(&mut self) -> Result<usize, BadObject> {
        let n = self.u64()?;
        if n > self.0.len() as u64 {
            return Err(BadObject("length past the end"));
        }
        Ok(n as usize)
    }

    fn hash(&mut self) -> Result<[u8; 32], BadObject> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }

    fn node(&mut self) -> Result<Node, BadObject> {
        Ok(match self.take(1)?[0] {
            tag @ (b'f' | b'x') => {
                let size = self.u64()?;
                Node::File {
                    executable: tag == b'x',
                    size,
                    blob: BlobHash(self.hash()?),
                }
            }
            b'l' => {
                let n = self.len()?;
                Node::Symlink {
                    target: self.take(n)?.to_vec(),
                }
            }
            b'd' => Node::Directory {
                tree: TreeHash(self.hash()?),
            },
            _ => return Err(BadObject("unknown node tag")),
        })
    }
}

impl Object {
    /// Every node the object holds: a directory's entries' nodes, or the lone root node.
    pub fn nodes(&self) -> Box<dyn Iterator<Item = &Node> + '_> {
        match self {
            Object::Directory(entries) => Box::new(entries.iter().map(|e| &e.node)),
            Object::Root(node) => Box::new(std::iter::once(node)),
        }
    }

    /// Decodes and validates an object (sorted, unique, valid names; nothing trailing).
    pub fn decode(bytes: &[u8]) -> Result<Object, BadObject> {
        let mut r = Reader(bytes);
        let magic = r.take(8)?;
        let object = if magic == DIR_MAGIC {
            let count = r.u64()?;
            // Each entry takes at least 8 + 1 (name) + 1 + 8 (an empty symlink target's length):
            // refuse absurd counts before allocating for them.
            if count > (bytes.len() / 18) as u64 {
                return Err(BadObject("entry count past the end"));
            }
            let mut entries: Vec<Entry> = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let n = r.len()?;
                let name = r.take(n)?.to_vec();
                if !valid_name(&name) {
                    return Err(BadObject("invalid entry name"));
                }
                if entries.last().is_some_and(|last| last.name >= name) {
                    return Err(BadObject("entries not sorted or not unique"));
                }
                entries.push(Entry { name, node: r.node()? });
            }
            Object::Directory(entries)
        } else if magic == NODE_MAGIC {
            match r.node()? {
                Node::Directory { .. } => return Err(BadObject("a root node object names a directory")),
                node => Object::Root(node),
            }
        } else {
            return Err(BadObject("unknown magic"));
        };
        if !r.0.is_empty() {
            return Err(BadObject("trailing bytes"));
        }
        Ok(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &[u8], executable: bool) -> Node {
        Node::File {
            executable,
            size: data.len() as u64,
            blob: BlobHash::of(data),
        }
    }

    fn dir(entries: Vec<(&str, Node)>) -> Node {
        let entries: Vec<Entry> = entries
            .into_iter()
            .map(|(n, node)| Entry {
                name: n.as_bytes().to_vec(),
                node,
            })
            .collect();
        Node::Directory {
            tree: encode_directory(&entries).1,
        }
    }

    /// Golden vectors: if one of these changes, every stored tree and every lock file changes
    /// with it. Change them only together with a deliberate encoding version bump. (They were
    /// computed independently, from the encoding in this module's doc, with Python's blake3.)
    #[test]
    fn golden_vectors() {
        let cases: Vec<(Node, &str)> = vec![
            (
                dir(vec![]),
                "blake3-1602cd99d0c0d29c9e20bbab7823a097964f2b6cea1ec76e1fa98c2ff772a889",
            ),
            (
                file(b"", false),
                "blake3-3e3c102b9a5328ee32592c0963f1db6b35b2079fdbdb9d98c42cb9a1bb9f03ed",
            ),
            (
                file(b"hello\n", true),
                "blake3-9c68c29d3ae844fff8ca29879f92a3ef16cd92d52a61d25a3059faa5c656ba42",
            ),
            (
                Node::Symlink {
                    target: b"../target".to_vec(),
                },
                "blake3-3034ab73197d60c099f88eeff42ff5a513af50f1af8130886872f5a2b844351c",
            ),
            (
                dir(vec![
                    ("a", file(b"hello\n", false)),
                    ("b", file(b"#!/bin/sh\n", true)),
                    (
                        "c",
                        Node::Symlink {
                            target: b"/abs/path".to_vec(),
                        },
                    ),
                    ("d", dir(vec![("e", file(b"", false))])),
                ]),
                "blake3-5de07552d472a26c479460b2047e2046e7344809c52d217cb76ff62638eb5b1b",
            ),
        ];
        for (node, want) in cases {
            assert_eq!(root_hash(&node).to_string(), want, "{node:?}");
        }
    }

    #[test]
    fn decode_round_trips_and_validates() {
        let entries = vec![
            Entry {
                name: b"a".to_vec(),
                node: file(b"x", false),
            },
            Entry {
                name: b"b\xff".to_vec(),
                node: Node::Symlink { target: b"a".to_vec() },
            },
            Entry {
                name: b"c".to_vec(),
                node: dir(vec![]),
            },
        ];
        let (bytes, _) = encode_directory(&entries);
        assert_eq!(Object::decode(&bytes), Ok(Object::Directory(entries)));
        assert!(Object::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut swapped = bytes.clone();
        swapped.push(0);
        assert!(Object::decode(&swapped).is_err());
        // The smallest entries: one-byte names, short symlink targets.
        let small: Vec<Entry> = (b'a'..=b'z')
            .map(|c| Entry {
                name: vec![c],
                node: Node::Symlink { target: b"t".to_vec() },
            })
            .collect();
        let (bytes, _) = encode_directory(&small);
        assert_eq!(Object::decode(&bytes), Ok(Object::Directory(small)));
        let (root, _) = encode_root(&file(b"x", true)).unwrap();
        assert_eq!(Object::decode(&root), Ok(Object::Root(file(b"x", true))));
    }
}
