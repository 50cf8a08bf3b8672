//! Export: a stored tree written back out as ordinary files.
//!
//! The tree is built under a temporary name beside the destination and renamed into place
//! when complete, so nobody ever sees a half-exported tree under the real name.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::Store;
use crate::hash::TreeHash;
use crate::hash::tree::{Node, Object};

impl Store {
    /// Writes the published tree `tree` to `dest`, which must not exist yet. The tree is
    /// held for this process (no collection deletes it meanwhile).
    pub fn export(&self, tree: &TreeHash, dest: &Path) -> Result<()> {
        if self.hold(tree)?.is_none() {
            bail!("{tree} is not in the store at {}", self.root.display());
        }
        if fs::symlink_metadata(dest).is_ok() {
            bail!(
                "{} already exists: export writes a new tree and never overwrites",
                dest.display()
            );
        }
        let name = dest
            .file_name()
            .with_context(|| format!("{} names no file", dest.display()))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".cab-export-{}", std::process::id()));
        let tmp = dest.with_file_name(tmp_name);
        let result = self.export_into(tree, &tmp).and_then(|()| {
            fs::rename(&tmp, dest).with_context(|| format!("cannot move the export into {}", dest.display()))
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp).or_else(|_| fs::remove_file(&tmp));
        }
        result
    }

    fn export_into(&self, tree: &TreeHash, dest: &Path) -> Result<()> {
        let root = match self.read_object(tree)? {
            Object::Root(node) => node,
            Object::Directory(_) => Node::Directory { tree: *tree },
        };
        // An explicit stack of (node, path): depth is bounded by memory, not the thread stack.
        let mut pending: Vec<(Node, PathBuf)> = vec![(root, dest.to_owned())];
        while let Some((node, path)) = pending.pop() {
            let ctx = || format!("cannot write {}", path.display());
            match node {
                Node::File { executable, size, blob } => {
                    let source = self.blob_path(&blob);
                    let copied = fs::copy(&source, &path).with_context(ctx)?;
                    if copied != size {
                        bail!(
                            "blob {} has {copied} bytes, its tree says {size}: run `cab store verify`",
                            source.display()
                        );
                    }
                    let mode = if executable { 0o755 } else { 0o644 };
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).with_context(ctx)?;
                }
                Node::Symlink { target } => symlink(OsStr::from_bytes(&target), &path).with_context(ctx)?,
                Node::Directory { tree } => {
                    fs::create_dir(&path).with_context(ctx)?;
                    let Object::Directory(entries) = self.read_object(&tree)? else {
                        bail!("tree object {tree} should be a directory");
                    };
                    for entry in entries {
                        pending.push((entry.node, path.join(OsStr::from_bytes(&entry.name))));
                    }
                }
            }
        }
        Ok(())
    }
}
