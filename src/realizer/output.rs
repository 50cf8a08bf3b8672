//! The fetcher's output tree: entries created by byte path under `out/`, on the guest's
//! behalf, with every path checked so that nothing can land outside.
//!
//! The guest never touches the filesystem. It asks for a directory, a file (with its
//! executable bit) or a symlink (any target) at a relative path; we refuse absolute paths,
//! empty, `.` and `..` names, NUL bytes, duplicates, and any parent that is not a directory
//! *we* created — which rules out writing through a symlink, whatever its target.
//!
//! Only the directories are remembered (a few per cent of a tree's entries): a million-file
//! archive must not cost a million paths in memory. Nothing but this module writes under
//! `out/`, and every parent on the way is a directory it made, so the kernel answers the rest —
//! `O_EXCL` refuses a duplicate, `lstat` tells a file from a symlink.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The output tree being built, and what it has cost so far.
pub struct Output {
    root: PathBuf,
    /// The directories made so far, by path: the only entries that may be parents.
    directories: HashSet<Box<[u8]>>,
    /// Entries made so far, of every kind.
    entries: usize,
    open: HashMap<i32, (File, Vec<u8>)>,
    next_handle: i32,
    tree_root: Option<Vec<u8>>,
    /// The scratch file (created on first use) and its length.
    scratch: Option<(File, u64)>,
    /// Bytes written into files and the scratch file so far.
    pub unpacked: u64,
    max_unpacked: u64,
    max_entries: usize,
}

/// Shows a guest path for error messages, bytes that are not UTF-8 escaped.
pub fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

impl Output {
    /// An output tree at `root` (created here), within these limits.
    pub fn new(root: &Path, max_unpacked: u64, max_entries: usize) -> Result<Output> {
        fs::create_dir(root).with_context(|| format!("cannot create {}", root.display()))?;
        Ok(Output {
            root: root.to_owned(),
            directories: HashSet::new(),
            entries: 0,
            open: HashMap::new(),
            next_handle: 1,
            tree_root: None,
            scratch: None,
            unpacked: 0,
            max_unpacked,
            max_entries,
        })
    }

    /// Checks a guest path and returns where it goes on disk: every parent is a directory
    /// made here. Counts the entry against the limit; a duplicate is refused when it is made.
    fn place(&mut self, path: &[u8]) -> Result<PathBuf> {
        let dest = self.existing_parents(path)?;
        if self.entries >= self.max_entries {
            return Err(super::OverLimit::error(format!(
                "more than {} entries: over the limit on entries (raise --max-entries)",
                self.max_entries
            )));
        }
        self.entries += 1;
        Ok(dest)
    }

    /// Checks the names of a guest path and that each of its parents is a directory made
    /// here; returns where it is on disk. Since no parent can be a symlink, the path resolves
    /// inside `out/` without following anything.
    fn existing_parents(&self, path: &[u8]) -> Result<PathBuf> {
        if path.is_empty() {
            bail!("empty path");
        }
        if path.starts_with(b"/") {
            bail!("absolute path `{}`", show(path));
        }
        let mut parent_len = 0;
        for (i, name) in path.split(|&b| b == b'/').enumerate() {
            if name.is_empty() || name == b"." || name == b".." || name.contains(&0) {
                bail!(
                    "`{}` has an invalid name `{}` (empty, `.`, `..` or NUL)",
                    show(path),
                    show(name)
                );
            }
            if i > 0 {
                let parent = &path[..parent_len];
                if !self.directories.contains(parent) {
                    // Its own parents are directories made here: this lstat follows nothing.
                    let why = match fs::symlink_metadata(self.root.join(OsStr::from_bytes(parent))) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
                        _ => "is not a directory",
                    };
                    bail!("`{}`: its parent `{}` {why}", show(path), show(parent));
                }
                parent_len += 1;
            }
            parent_len += name.len();
        }
        Ok(self.root.join(OsStr::from_bytes(path)))
    }

    /// The error for making `dest`, where the guest's `path` already existing is a duplicate
    /// member of its archive.
    fn made_error(e: std::io::Error, path: &[u8], dest: &Path) -> anyhow::Error {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!("`{}` already exists (duplicate member)", show(path))
        } else {
            anyhow::Error::new(e).context(format!("cannot create {}", dest.display()))
        }
    }

    /// Adds `n` bytes to what the run has unpacked, refusing them past the limit.
    fn count(unpacked: &mut u64, max: u64, n: u64, at: impl FnOnce() -> String) -> Result<()> {
        *unpacked += n;
        if *unpacked > max {
            return Err(super::OverLimit::error(format!(
                "more than {max} bytes unpacked ({}): over the limit on unpacked bytes (raise --max-unpacked)",
                at()
            )));
        }
        Ok(())
    }

    /// Creates a directory.
    pub fn mkdir(&mut self, path: &[u8]) -> Result<()> {
        let dest = self.place(path)?;
        fs::create_dir(&dest).map_err(|e| Self::made_error(e, path, &dest))?;
        self.directories.insert(path.into());
        Ok(())
    }

    /// Creates a file and returns a handle to write it through.
    pub fn create(&mut self, path: &[u8], executable: bool) -> Result<i32> {
        let dest = self.place(path)?;
        let mode = if executable { 0o755 } else { 0o644 };
        let file = File::options()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&dest)
            .map_err(|e| Self::made_error(e, path, &dest))?;
        let handle = self.next_handle;
        self.next_handle += 1;
        self.open.insert(handle, (file, path.to_vec()));
        Ok(handle)
    }

    /// Appends bytes to an open file.
    pub fn write(&mut self, handle: i32, data: &[u8]) -> Result<()> {
        let Some((file, path)) = self.open.get_mut(&handle) else {
            bail!("no open output file {handle}")
        };
        Self::count(&mut self.unpacked, self.max_unpacked, data.len() as u64, || {
            format!("at `{}`", show(path))
        })?;
        file.write_all(data)
            .with_context(|| format!("cannot write `{}`", show(path)))
    }

    /// Closes a file.
    pub fn close(&mut self, handle: i32) -> Result<()> {
        match self.open.remove(&handle) {
            Some(_) => Ok(()),
            None => bail!("no open output file {handle}"),
        }
    }

    /// Creates a symlink; the target is data, never followed by us.
    pub fn symlink(&mut self, path: &[u8], target: &[u8]) -> Result<()> {
        if target.is_empty() || target.contains(&0) {
            bail!("symlink `{}` has an empty or NUL-containing target", show(path));
        }
        let dest = self.place(path)?;
        symlink(OsStr::from_bytes(target), &dest).map_err(|e| Self::made_error(e, path, &dest))?;
        Ok(())
    }

    /// Makes `path` a copy of `from`, a closed file or a symlink made earlier in this run: a
    /// hard link in an archive, unpacked as Nix unpacks it (a second name for the same
    /// contents and mode, which the store keeps once anyway).
    pub fn copy(&mut self, from: &[u8], path: &[u8]) -> Result<()> {
        let refused = || {
            anyhow::anyhow!(
                "hard link `{}` to `{}`: the target must be a file or symlink earlier in the archive",
                show(path),
                show(from)
            )
        };
        if self.open.values().any(|(_, p)| p == from) {
            return Err(refused());
        }
        let source = self.existing_parents(from).map_err(|_| refused())?;
        let kind = fs::symlink_metadata(&source).map_err(|_| refused())?.file_type();
        let dest = self.place(path)?;
        if kind.is_symlink() {
            let target = fs::read_link(&source).with_context(|| format!("cannot read {}", source.display()))?;
            symlink(&target, &dest).map_err(|e| Self::made_error(e, path, &dest))?;
        } else if kind.is_file() {
            let mut input = File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&source)
                .with_context(|| format!("cannot read {}", source.display()))?;
            let meta = input
                .metadata()
                .with_context(|| format!("cannot read {}", source.display()))?;
            Self::count(&mut self.unpacked, self.max_unpacked, meta.len(), || {
                format!("at `{}`", show(path))
            })?;
            let mut output = File::options()
                .write(true)
                .create_new(true)
                .mode(meta.permissions().mode())
                .custom_flags(libc::O_NOFOLLOW)
                .open(&dest)
                .map_err(|e| Self::made_error(e, path, &dest))?;
            // Between two files std copies in the kernel, sharing extents where it can.
            std::io::copy(&mut input, &mut output)
                .with_context(|| format!("cannot copy {} to {}", source.display(), dest.display()))?;
        } else {
            return Err(refused());
        }
        Ok(())
    }

    /// Appends to the scratch file (beside `out/`, never part of the tree); returns the offset
    /// the bytes were written at.
    pub fn scratch_append(&mut self, data: &[u8]) -> Result<u64> {
        Self::count(&mut self.unpacked, self.max_unpacked, data.len() as u64, || {
            "scratch".into()
        })?;
        if self.scratch.is_none() {
            let path = self.root.with_file_name("scratch");
            let file = File::options()
                .read(true)
                .append(true)
                .create_new(true)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            self.scratch = Some((file, 0));
        }
        let (file, len) = self.scratch.as_mut().expect("created above");
        file.write_all(data).context("cannot write the scratch file")?;
        let at = *len;
        *len += data.len() as u64;
        Ok(at)
    }

    /// Reads up to `max` bytes of the scratch file at `offset` (fewer at its end).
    pub fn scratch_read(&mut self, offset: i64, max: usize) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let Some((file, len)) = &self.scratch else {
            bail!("scratch_read before any scratch_append")
        };
        if offset < 0 || offset as u64 > *len {
            bail!("scratch_read at {offset}, past the end ({len})");
        }
        let n = max.min((*len - offset as u64) as usize);
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, offset as u64)
            .context("cannot read the scratch file")?;
        Ok(buf)
    }

    /// Declares that the tree is the entry `path` rather than all of `out/`: a directory, or
    /// (an archive holding one file) a closed file or a symlink.
    pub fn set_root(&mut self, path: &[u8]) -> Result<()> {
        let made = self
            .existing_parents(path)
            .is_ok_and(|dest| fs::symlink_metadata(dest).is_ok());
        if !made {
            bail!("`{}` is not an entry of the output", show(path));
        }
        if !self.open.is_empty() {
            bail!("out_set_root while {} output files are still open", self.open.len());
        }
        self.tree_root = Some(path.to_vec());
        Ok(())
    }

    /// Where the finished tree is on disk.
    pub fn tree_path(&self) -> PathBuf {
        match &self.tree_root {
            Some(p) => self.root.join(OsStr::from_bytes(p)),
            None => self.root.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_every_escape() {
        let dir = std::env::temp_dir().join(format!("cab-output-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut out = Output::new(&dir.join("out"), 1 << 20, 100).unwrap();
        out.mkdir(b"a").unwrap();
        out.symlink(b"a/up", b"/etc").unwrap();
        for bad in [
            &b"/etc/passwd"[..],
            b"../x",
            b"a/../../x",
            b"a//b",
            b"a/./b",
            b"a/up/passwd",
            b"nope/x",
            b"",
        ] {
            assert!(out.create(bad, false).is_err(), "{}", show(bad));
        }
        assert!(out.mkdir(b"a").is_err(), "duplicate");
        let h = out.create(b"a/f", true).unwrap();
        out.write(h, b"hi").unwrap();
        out.close(h).unwrap();
        assert!(out.write(h, b"x").is_err());
        // Hard links: copies of earlier files and symlinks only.
        out.copy(b"a/f", b"a/g").unwrap();
        assert_eq!(fs::read(dir.join("out/a/g")).unwrap(), b"hi");
        out.copy(b"a/up", b"a/up2").unwrap();
        assert_eq!(fs::read_link(dir.join("out/a/up2")).unwrap(), Path::new("/etc"));
        assert!(out.copy(b"a", b"a/dir-copy").is_err(), "a directory");
        assert!(out.copy(b"a/none", b"a/x").is_err(), "not made");
        assert!(out.copy(b"a/f", b"a/g").is_err(), "duplicate");
        // Duplicates of every kind, and nothing written through what is already there.
        let duplicate = |e: anyhow::Error| e.to_string().contains("duplicate member");
        assert!(out.create(b"a/f", false).map_err(duplicate).unwrap_err());
        assert!(
            out.create(b"a/up", false).map_err(duplicate).unwrap_err(),
            "over a symlink"
        );
        assert!(
            out.copy(b"a/f", b"a/up").map_err(duplicate).unwrap_err(),
            "copy over a symlink"
        );
        assert!(out.symlink(b"a", b"x").map_err(duplicate).unwrap_err());
        assert!(out.mkdir(b"a/f").map_err(duplicate).unwrap_err());
        let parent = out.create(b"a/f/x", false).unwrap_err().to_string();
        assert!(parent.contains("`a/f` is not a directory"), "{parent}");
        let missing = out.create(b"a/none/x", false).unwrap_err().to_string();
        assert!(missing.contains("`a/none` does not exist"), "{missing}");
        assert_eq!(fs::read(dir.join("out/a/f")).unwrap(), b"hi");
        out.set_root(b"a/f").unwrap();
        out.set_root(b"a/up").unwrap();
        assert!(out.set_root(b"a/nope").is_err());
        out.set_root(b"a").unwrap();
        assert_eq!(out.tree_path(), dir.join("out/a"));
        let big = out.create(b"a/big", false).unwrap();
        assert!(out.write(big, &vec![0; 2 << 20]).is_err(), "unpacked limit");
        fs::remove_dir_all(&dir).unwrap();
    }
}
