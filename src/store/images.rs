//! The image cache: EROFS images of stored trees, so that the kernel can serve a tree that is
//! whole in the store (a file-backed EROFS mount) at its own speed instead of through FUSE
//! round trips (DESIGN.md, "Kernel-served trees").
//!
//! ```text
//! STORE/images/<tree hex>.data                  every file's data, each block-aligned: one per tree
//! STORE/images/<tree hex>-<label hex>.meta      a metadata image of the tree (names, modes,
//!                                               sizes, symlinks, xattrs) for one label
//! STORE/images/<tree hex>-<label hex>.label     that label, as text, and the BLAKE3 of the
//!                                               metadata image (checked before each mount)
//! ```
//!
//! A tree's xattrs are the same on every node but two, `user.cab.rev` and `user.cab.island`,
//! which say which island serves it; the same tree served under two islands differs only
//! there. So the data, which depends only on the tree, is written once, and each label — the
//! island's xattrs and the owner the mount shows — gets a small metadata image that reaches
//! the data as an extra device (`device=`). Both are written from the store's objects and
//! blobs as a stream (no directory is materialized first), through a temporary file and a
//! rename; the writer is deterministic, so `cab store verify` checks a metadata image by
//! writing it again, and the data by hashing each file's extent against its blob. The cache is
//! bounded (`image-cache-size`): the images least recently mounted go first.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use super::{Corruption, Store};
use crate::erofs::{self, NodeId, Options, Placement};
use crate::hash::tree::{Node, Object, root_hash};
use crate::hash::{BlobHash, TreeHash};

/// What tells the images of one tree apart: the island's xattrs and the owner every node
/// shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Label {
    /// `user.cab.rev`, where there is a commit.
    pub rev: Option<String>,
    /// `user.cab.island`, the locked literal (none for a `by-hash/` tree).
    pub island: Option<String>,
    /// The owner of every node (the mount's own uid and gid).
    pub owner: (u32, u32),
}

impl Label {
    /// 16 hex digits naming the label in file names.
    fn id(&self) -> String {
        let mut h = blake3::Hasher::new();
        for part in [self.rev.as_deref(), self.island.as_deref()] {
            let part = part.unwrap_or("");
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(&self.owner.0.to_le_bytes());
        h.update(&self.owner.1.to_le_bytes());
        h.finalize().to_hex()[..16].to_owned()
    }

    /// The label as its `.label` file holds it: the rev, the island, `uid gid`, a line each
    /// (an empty line for none).
    fn to_text(&self) -> String {
        format!(
            "{}\n{}\n{} {}\n",
            self.rev.as_deref().unwrap_or(""),
            self.island.as_deref().unwrap_or(""),
            self.owner.0,
            self.owner.1
        )
    }

    fn from_text(text: &str) -> Option<Label> {
        let mut lines = text.lines();
        let some = |line: &str| (!line.is_empty()).then(|| line.to_owned());
        let rev = some(lines.next()?);
        let island = some(lines.next()?);
        let (uid, gid) = lines.next()?.split_once(' ')?;
        Some(Label {
            rev,
            island,
            owner: (uid.parse().ok()?, gid.parse().ok()?),
        })
    }

    /// The writer's options for an image of `tree` under this label.
    fn options(&self, tree: &TreeHash) -> Options {
        Options {
            uid: self.owner.0,
            gid: self.owner.1,
            placement: Placement::SeparateFile,
            device_tag: tree.to_hex().into_bytes(),
            volume_name: b"cab".to_vec(),
            ..Options::default()
        }
    }

    /// The xattrs of `node`, in the order cab's FUSE mount lists them.
    fn xattrs(&self, node: &Node) -> Vec<(&'static str, Vec<u8>)> {
        let mut out = vec![("user.cab.hash", root_hash(node).to_string().into_bytes())];
        if let Some(rev) = &self.rev {
            out.push(("user.cab.rev", rev.clone().into_bytes()));
        }
        if let Some(island) = &self.island {
            out.push(("user.cab.island", island.clone().into_bytes()));
        }
        out.push(("user.cab.complete", b"yes".to_vec()));
        out
    }
}

/// An image ready to mount.
#[derive(Clone, Debug)]
pub struct Image {
    /// The tree it shows.
    pub tree: TreeHash,
    /// The metadata image (the mount's source).
    pub meta: PathBuf,
    /// The data file (the mount's `device=`).
    pub data: PathBuf,
    /// Bytes of metadata at the start of `meta`, worth reading once after mounting (the
    /// kernel reads metadata a page at a time, without read-ahead).
    pub metadata_len: u64,
    /// Whether this call wrote it (false: it was in the cache).
    pub built: bool,
}

/// A tree described for the writer: every regular file's node, blob and size, to find its
/// extent again.
struct Described {
    tree: erofs::Tree<BlobHash>,
    files: Vec<(NodeId, BlobHash, u64)>,
}

impl Store {
    fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// The metadata image, its label's file, and the data file of `tree` under `label`.
    fn image_paths(&self, tree: &TreeHash, label: &Label) -> (PathBuf, PathBuf, PathBuf) {
        let dir = self.images_dir();
        let stem = format!("{}-{}", tree.to_hex(), label.id());
        (
            dir.join(format!("{stem}.meta")),
            dir.join(format!("{stem}.label")),
            dir.join(format!("{}.data", tree.to_hex())),
        )
    }

    /// The image of the published tree `tree` under `label`, written now if the cache lacks
    /// it (or holds a damaged one: the wrong size, or metadata that is not what its label
    /// recorded). Room is made within `limit` bytes first, deleting the least recently
    /// mounted images but those of `keep`; `None` if there is no room. The caller holds the
    /// tree live while it is used.
    pub fn image(&self, tree: &TreeHash, label: &Label, limit: u64, keep: &HashSet<TreeHash>) -> Result<Option<Image>> {
        let (meta, label_path, data) = self.image_paths(tree, label);
        let described = self.describe(tree, label)?;
        let plan = described
            .tree
            .plan(&label.options(tree))
            .with_context(|| format!("{tree} cannot be an EROFS image"))?;
        let len = |path: &Path| fs::metadata(path).map(|m| m.len()).ok();
        let data_whole = len(&data) == Some(plan.data_len());
        let meta_whole = len(&meta) == Some(plan.image_len()) && recorded_hash(&label_path) == file_hash(&meta);
        let needed = if data_whole { 0 } else { plan.data_len() } + if meta_whole { 0 } else { plan.image_len() };
        if needed > 0 {
            let mut keep = keep.clone();
            keep.insert(*tree);
            self.trim_images(limit.saturating_sub(needed), &keep)?;
            if self.image_bytes()? + needed > limit {
                return Ok(None);
            }
        }
        let mut built = false;
        let ctx = || format!("cannot write the image of {tree} in {}", self.images_dir().display());
        fs::create_dir_all(self.images_dir()).with_context(ctx)?;
        if !data_whole {
            let tmp = self.scratch()?.temp_path("image-data");
            let out = File::create(&tmp).with_context(ctx)?;
            let stats = plan
                .write_data(&out, |blob| File::open(self.blob_path(blob)))
                .with_context(ctx)?;
            out.sync_all().with_context(ctx)?;
            fs::rename(&tmp, &data).with_context(ctx)?;
            tracing::debug!("{tree}: image data written ({stats:?})");
            built = true;
        }
        if !meta_whole {
            let tmp = self.scratch()?.temp_path("image-meta");
            let out = File::create(&tmp).with_context(ctx)?;
            plan.write_metadata(&out).with_context(ctx)?;
            out.sync_all().with_context(ctx)?;
            let hash = file_hash(&tmp).with_context(ctx)?;
            let text = format!("{}{}\n", label.to_text(), hash.to_hex());
            self.write_atomically(&label_path, text.as_bytes(), false)
                .with_context(ctx)?;
            fs::rename(&tmp, &meta).with_context(ctx)?;
            built = true;
        }
        // The cache keeps what was mounted last: the mtime says when.
        for path in [&meta, &data] {
            let _ = File::options()
                .write(true)
                .open(path)
                .and_then(|f| f.set_modified(SystemTime::now()));
        }
        Ok(Some(Image {
            tree: *tree,
            meta,
            data,
            metadata_len: plan.metadata_len(),
            built,
        }))
    }

    /// Deletes the image of `tree` under `label` (it did not mount: the next call writes it
    /// again).
    pub fn forget_image(&self, tree: &TreeHash, label: &Label) {
        let (meta, label_path, data) = self.image_paths(tree, label);
        for path in [meta, label_path, data] {
            let _ = fs::remove_file(path);
        }
    }

    /// The published tree `tree` described for the writer, top-down from its objects.
    fn describe(&self, tree: &TreeHash, label: &Label) -> Result<Described> {
        let root = self.root_node(tree)?;
        if !matches!(root, Node::Directory { .. }) {
            bail!("{tree} is a lone file or symlink, not a directory an image can show");
        }
        let mut out = Described {
            tree: erofs::Tree::new(label.xattrs(&root))?,
            files: Vec::new(),
        };
        let mut next = vec![(out.tree.root(), *tree)];
        while let Some((parent, directory)) = next.pop() {
            let Object::Directory(entries) = self.read_object(&directory)? else {
                bail!("tree object {directory} is not a directory");
            };
            for entry in entries {
                let xattrs = label.xattrs(&entry.node);
                let name = &entry.name;
                match entry.node {
                    Node::Directory { tree } => {
                        let id = out.tree.add_dir(parent, name, xattrs)?;
                        next.push((id, tree));
                    }
                    Node::File { executable, size, blob } => {
                        let id = out.tree.add_file(parent, name, size, executable, blob, xattrs)?;
                        out.files.push((id, blob, size));
                    }
                    Node::Symlink { ref target } => {
                        out.tree.add_symlink(parent, name, target, xattrs)?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Bytes the image cache holds.
    pub fn image_bytes(&self) -> Result<u64> {
        Ok(self.cached_images()?.iter().map(|i| i.bytes).sum())
    }

    /// Every file of the image cache, least recently mounted first.
    fn cached_images(&self) -> Result<Vec<Cached>> {
        let dir = self.images_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(tree) = name.get(..64).and_then(TreeHash::from_hex) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            out.push(Cached {
                tree,
                path: entry.path(),
                bytes: meta.len(),
                used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        out.sort_by_key(|c| c.used);
        Ok(out)
    }

    /// Deletes images until the cache holds at most `limit` bytes, least recently mounted
    /// first, sparing the images of `keep` (trees being served: a mounted image's file is held
    /// by the kernel anyway, and deleting it would only free the space at unmount). Also
    /// deletes every image of a tree that is no longer published. Returns the bytes freed.
    pub fn trim_images(&self, limit: u64, keep: &HashSet<TreeHash>) -> Result<u64> {
        let cached = self.cached_images()?;
        let mut total: u64 = cached.iter().map(|c| c.bytes).sum();
        let mut freed = 0;
        for image in cached {
            let gone = self.published(&image.tree)?.is_none();
            if !gone && (total <= limit || keep.contains(&image.tree)) {
                continue;
            }
            match fs::remove_file(&image.path) {
                Ok(()) => {
                    total = total.saturating_sub(image.bytes);
                    freed += image.bytes;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot delete {}", image.path.display())),
            }
        }
        Ok(freed)
    }

    /// Checks every image of the cache against its tree: a metadata image must be exactly what
    /// the tree and its label give (written again and compared), a data file must hold every
    /// file's bytes at its extent. A damaged image is reported and deleted (the next mount
    /// writes it again). Returns how many files were checked.
    pub fn verify_images(&self) -> Result<(u64, Vec<Corruption>)> {
        let mut checked = 0;
        let mut corrupt = Vec::new();
        for image in self.cached_images()? {
            let name = image
                .path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let problem = if self.published(&image.tree)?.is_none() {
                Some("its tree is not published".to_owned())
            } else if name.ends_with(".data") {
                self.check_data(&image.tree, &image.path)?
            } else if let Some(stem) = name.strip_suffix(".meta") {
                self.check_meta(&image.tree, stem, &image.path)?
            } else {
                continue;
            };
            checked += 1;
            if let Some(problem) = problem {
                tracing::error!("corrupt image {name}: {problem}; deleted (the next mount writes it again)");
                let _ = fs::remove_file(&image.path);
                corrupt.push(Corruption {
                    kind: "image",
                    name,
                    path: image.path,
                    problem,
                });
            }
        }
        Ok((checked, corrupt))
    }

    fn check_data(&self, tree: &TreeHash, path: &Path) -> Result<Option<String>> {
        let described = self.describe(tree, &Label::default())?;
        let plan = described.tree.plan(&Label::default().options(tree))?;
        let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        if file.metadata()?.len() != plan.data_len() {
            return Ok(Some(format!(
                "{} bytes, not {}",
                file.metadata()?.len(),
                plan.data_len()
            )));
        }
        let mut buf = vec![0u8; 1 << 16];
        for (id, blob, size) in &described.files {
            let Some((offset, len)) = plan.file_extent(*id) else {
                continue;
            };
            debug_assert_eq!(len, *size);
            file.seek(SeekFrom::Start(offset))?;
            let mut hasher = blake3::Hasher::new();
            let mut left = len;
            while left > 0 {
                let n = (left as usize).min(buf.len());
                file.read_exact(&mut buf[..n])?;
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            if hasher.finalize().as_bytes() != &blob.0 {
                return Ok(Some(format!("the bytes at {offset} are not blob {blob}")));
            }
        }
        Ok(None)
    }

    fn check_meta(&self, tree: &TreeHash, stem: &str, path: &Path) -> Result<Option<String>> {
        let label_path = path.with_file_name(format!("{stem}.label"));
        let Some(label) = fs::read_to_string(&label_path).ok().and_then(|t| Label::from_text(&t)) else {
            return Ok(Some(format!(
                "its label {} is missing or unreadable",
                label_path.display()
            )));
        };
        if !stem.ends_with(&label.id()) {
            return Ok(Some("its label is not the one its name says".to_owned()));
        }
        let plan_tree = self.describe(tree, &label)?;
        let plan = plan_tree.tree.plan(&label.options(tree))?;
        let tmp = self.scratch()?.temp_path("image-check");
        let out = File::create(&tmp)?;
        plan.write_metadata(&out)?;
        let same = fs::read(&tmp)? == fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let _ = fs::remove_file(&tmp);
        Ok((!same).then(|| "it is not the image its tree and label give".to_owned()))
    }
}

/// The BLAKE3 of a file's bytes (`None` if it cannot be read).
fn file_hash(path: &Path) -> Option<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(File::open(path).ok()?).ok()?;
    Some(hasher.finalize())
}

/// The metadata image's BLAKE3 its `.label` file recorded (its last line).
fn recorded_hash(label_path: &Path) -> Option<blake3::Hash> {
    let text = fs::read_to_string(label_path).ok()?;
    blake3::Hash::from_hex(text.lines().nth(3)?).ok()
}

/// One file of the image cache.
struct Cached {
    tree: TreeHash,
    path: PathBuf,
    bytes: u64,
    used: SystemTime,
}
