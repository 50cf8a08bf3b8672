//! An archive's entries made in the [`Sink`], the way Nix unpacks archives: parents made before
//! their children whether or not the archive lists them, a directory listed twice made once, a
//! hard link made as a copy of the earlier member it names, and — when the archive holds a
//! single top-level entry — that entry as the tree: a directory (GitHub's `<repo>-<sha>/`), or
//! a lone file or symlink, which Nix then hashes as a file, not as a directory holding it.
//! Shared by tar and zip, which differ only in how they find their entries.

use alloc::collections::BTreeSet;

use crate::error::{Error, Result, show};
use crate::io::Sink;
use crate::prelude::*;

/// A host call that failed for `path`, named.
pub fn failed(op: &str, path: &[u8]) -> Error {
    Error::new(format!("{op} failed for `{}`", show(path)))
}

/// A member's path made safe: relative, `/`-separated, without empty or `.` components (so a
/// leading `./` goes), refusing `..` and NUL. Empty for `.` or `./` alone.
pub fn normalize(name: &[u8]) -> core::result::Result<Vec<u8>, &'static str> {
    if name.starts_with(b"/") {
        return Err("absolute path");
    }
    let mut out = Vec::with_capacity(name.len());
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return Err("path has a `..` component"),
            _ if part.contains(&0) => return Err("NUL in path"),
            _ => {}
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// Directories made so far, whether listed or implied by a deeper path.
#[derive(Default)]
pub struct Dirs(BTreeSet<Vec<u8>>);

impl Dirs {
    /// Makes the directories above `path` that are not made yet.
    pub fn parents<K: Sink>(&mut self, sink: &mut K, path: &[u8]) -> Result<()> {
        for (i, &b) in path.iter().enumerate() {
            if b == b'/' {
                self.make_one(sink, path.get(..i).unwrap_or_default())?;
            }
        }
        Ok(())
    }

    /// Makes directory `path` and those above it, unless they are made already.
    pub fn make<K: Sink>(&mut self, sink: &mut K, path: &[u8]) -> Result<()> {
        self.parents(sink, path)?;
        self.make_one(sink, path)
    }

    fn make_one<K: Sink>(&mut self, sink: &mut K, dir: &[u8]) -> Result<()> {
        if !self.0.contains(dir) {
            sink.mkdir(dir).map_err(|_| failed("out_mkdir", dir))?;
            self.0.insert(dir.to_vec());
        }
        Ok(())
    }
}

/// The tree being made.
pub struct Tree<'k, K> {
    /// Where it is made.
    pub sink: &'k mut K,
    dirs: Dirs,
    /// The first top-level name met.
    top: Option<Vec<u8>>,
    /// Whether a second top-level name was met.
    many: bool,
}

impl<'k, K: Sink> Tree<'k, K> {
    /// An empty tree made in `sink`.
    pub fn new(sink: &'k mut K) -> Tree<'k, K> {
        Tree {
            sink,
            dirs: Dirs::default(),
            top: None,
            many: false,
        }
    }

    /// Notes `path`'s top-level name, and makes its parents.
    fn enter(&mut self, path: &[u8]) -> Result<()> {
        let top = path.split(|&b| b == b'/').next().unwrap_or(path);
        match &self.top {
            None => self.top = Some(top.to_vec()),
            Some(t) if t != top => self.many = true,
            Some(_) => {}
        }
        self.dirs.parents(self.sink, path)
    }

    /// Makes directory `path`, unless it is made already.
    pub fn dir(&mut self, path: &[u8]) -> Result<()> {
        self.enter(path)?;
        self.dirs.make(self.sink, path)
    }

    /// Makes file `path` and returns its handle.
    pub fn create(&mut self, path: &[u8], executable: bool) -> Result<i32> {
        self.enter(path)?;
        self.sink
            .create(path, executable)
            .map_err(|_| failed("out_create", path))
    }

    /// Makes symlink `path`, pointing at `target`.
    pub fn symlink(&mut self, path: &[u8], target: &[u8]) -> Result<()> {
        self.enter(path)?;
        self.sink.symlink(path, target).map_err(|_| failed("out_symlink", path))
    }

    /// Makes `path` a copy of `target`, a file or symlink made before: a hard link, unpacked
    /// as Nix's unpacking leaves it (two names, the same contents and mode). The host refuses
    /// a target that is not such an entry, and says so.
    pub fn hard_link(&mut self, path: &[u8], target: &[u8]) -> Result<()> {
        self.enter(path)?;
        self.sink.copy(target, path).map_err(|_| {
            Error::new(format!(
                "out_copy failed for `{}`: a hard link to `{}`, which must be a file or symlink earlier in the archive",
                show(path),
                show(target)
            ))
        })
    }

    /// Ends the tree: if it has one top-level entry, that entry is the tree.
    pub fn finish(self) -> Result<()> {
        if let Some(top) = self.top.filter(|_| !self.many) {
            self.sink.set_root(&top).map_err(|_| failed("out_set_root", &top))?;
        }
        Ok(())
    }
}
