//! One pass over a tree on disk that yields both hashes, and lets the store copy the bytes as
//! they go by.
//!
//! The NAR SHA-256 is a single sequential stream, so it gets a thread of its own; this thread
//! walks the tree, reads each file once, BLAKE3-hashes it and hands the same buffers (framing
//! and contents together, batched) to the SHA-256 thread. On two cores the two hashes overlap
//! and the walk costs about as much as SHA-256 alone. A tree not in the page cache is read
//! ahead of the walk by a third (see `prefetch`).

use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::dir::{Dir, EntryType};
use super::prefetch::{Prefetcher, Probe, read_cached};
use super::tree::{self, Entry, Node};
use super::{BlobHash, NarHash, TreeHash, nar};

/// What a walk found: the root node, both hashes and some counts for progress and reports.
#[derive(Clone, Debug)]
pub struct HashedTree {
    /// The root as its parent would record it.
    pub root: Node,
    /// The Cab tree hash.
    pub tree: TreeHash,
    /// The Nix NAR hash.
    pub nar: NarHash,
    /// Regular files seen.
    pub files: u64,
    /// Bytes of file contents seen.
    pub bytes: u64,
}

/// Hears about every file and directory as the walk meets them, in NAR order (depth first,
/// names sorted by bytes). The store implements this to write blobs and tree objects; plain
/// hashing ignores it.
pub trait Visitor {
    /// A regular file begins; its bytes follow through [`Visitor::file_data`].
    fn file_start(&mut self, _path: &Path, _size: u64) -> Result<()> {
        Ok(())
    }
    /// The next bytes of the current file.
    fn file_data(&mut self, _data: &[u8]) -> Result<()> {
        Ok(())
    }
    /// The current file is done; `blob` is the BLAKE3 of its contents.
    fn file_end(&mut self, _path: &Path, _blob: &BlobHash) -> Result<()> {
        Ok(())
    }
    /// A directory is done; `object` is its canonical encoding, named `hash`.
    fn directory(&mut self, _hash: &TreeHash, _object: &[u8]) -> Result<()> {
        Ok(())
    }
}

/// A visitor that does nothing: hashing only.
pub struct HashOnly;

impl Visitor for HashOnly {}

/// Computes the tree hash and NAR hash of the tree at `path` (a directory, file or symlink;
/// symlinks are not followed).
pub fn hash_path(path: &Path) -> Result<HashedTree> {
    walk(path, &mut HashOnly)
}

/// Walks the tree at `path`, hashing it and telling `visitor` about every node.
pub fn walk(path: &Path, visitor: &mut dyn Visitor) -> Result<HashedTree> {
    let meta = fs::symlink_metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut walker = Walker {
        nar: NarStream::start(),
        scratch: Vec::with_capacity(4096),
        visitor,
        files: 0,
        bytes: 0,
        ahead: Ahead::Probing,
        cold_now: false,
    };
    walker.scratch.clear();
    nar::header(&mut walker.scratch);
    walker.flush_scratch();
    let root = walker.root(path, &meta)?;
    walker.flush_scratch();
    let nar = walker.nar.finish()?;
    Ok(HashedTree {
        tree: tree::root_hash(&root),
        root,
        nar,
        files: walker.files,
        bytes: walker.bytes,
    })
}

/// A directory being walked: its sorted children and the entries finished so far.
struct Frame {
    dir: Dir,
    path: PathBuf,
    name_in_parent: Vec<u8>,
    children: Vec<(CString, EntryType)>,
    next: usize,
    entries: Vec<Entry>,
}

struct Walker<'v> {
    nar: NarStream,
    /// Framing bytes on their way into the NAR stream.
    scratch: Vec<u8>,
    visitor: &'v mut dyn Visitor,
    files: u64,
    bytes: u64,
    ahead: Ahead,
    /// The file just read was the first found cold: the read-ahead has just started.
    cold_now: bool,
}

/// Whether files are read ahead of the walk.
enum Ahead {
    /// Not yet: each file's first read asks the page cache only, until one misses.
    Probing,
    /// Never: this filesystem cannot answer the probe, or no thread could start.
    Off,
    /// The tree is cold: the files of each directory entered are asked for.
    On(Prefetcher),
}

impl Walker<'_> {
    fn flush_scratch(&mut self) {
        let scratch = std::mem::take(&mut self.scratch);
        self.nar.push(&scratch);
        self.scratch = scratch;
        self.scratch.clear();
    }

    /// Hashes the root node. Directories are walked with an explicit stack, so depth is
    /// bounded by memory, not by the thread's stack.
    fn root(&mut self, path: &Path, meta: &fs::Metadata) -> Result<Node> {
        let file_type = EntryType::from_mode(meta.mode() as libc::mode_t);
        match file_type {
            EntryType::Directory => {}
            EntryType::File => {
                let file = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                return self.file(path, file);
            }
            EntryType::Symlink => {
                let target = fs::read_link(path).with_context(|| format!("cannot read symlink {}", path.display()))?;
                return Ok(self.symlink(target.into_os_string().into_vec()));
            }
            EntryType::Unsupported(what) => bail!("{} is {what}: {ONLY}", path.display()),
        }
        let dir = Dir::open(path).with_context(|| format!("cannot open directory {}", path.display()))?;
        let mut stack = vec![self.open_directory(dir, path.to_owned(), Vec::new())?];
        loop {
            let top = stack.last_mut().expect("stack is never empty here");
            if top.next == top.children.len() {
                let done = stack.pop().expect("non-empty");
                nar::directory_end(&mut self.scratch);
                let (object, hash) = tree::encode_directory(&done.entries);
                self.visitor
                    .directory(&hash, &object)
                    .with_context(|| format!("cannot store directory {}", done.path.display()))?;
                let node = Node::Directory { tree: hash };
                match stack.last_mut() {
                    None => {
                        self.flush_scratch();
                        return Ok(node);
                    }
                    Some(parent) => {
                        nar::entry_end(&mut self.scratch);
                        parent.entries.push(Entry {
                            name: done.name_in_parent,
                            node,
                        });
                    }
                }
                continue;
            }
            let (name, file_type) = &top.children[top.next];
            top.next += 1;
            let child = top.path.join(OsStr::from_bytes(name.to_bytes()));
            nar::entry_start(&mut self.scratch, name.to_bytes());
            let node = match file_type {
                EntryType::Directory => {
                    let dir = top
                        .dir
                        .open_dir(name)
                        .with_context(|| format!("cannot open directory {}", child.display()))?;
                    let name = name.to_bytes().to_vec();
                    let frame = self.open_directory(dir, child, name)?;
                    stack.push(frame);
                    continue;
                }
                EntryType::File => {
                    let file = top
                        .dir
                        .open_file(name)
                        .with_context(|| format!("cannot open {}", child.display()))?;
                    let node = self.file(&child, file)?;
                    if std::mem::take(&mut self.cold_now)
                        && let Ahead::On(prefetcher) = &self.ahead
                    {
                        let top = stack.last().expect("non-empty");
                        prefetcher.ask(&top.dir, files_of(&top.children[top.next..]));
                    }
                    node
                }
                EntryType::Symlink => {
                    let target = top
                        .dir
                        .read_link(name)
                        .with_context(|| format!("cannot read symlink {}", child.display()))?;
                    self.symlink(target)
                }
                EntryType::Unsupported(what) => bail!("{} is {what}: {ONLY}", child.display()),
            };
            nar::entry_end(&mut self.scratch);
            let top = stack.last_mut().expect("non-empty");
            let name = top.children[top.next - 1].0.to_bytes().to_vec();
            top.entries.push(Entry { name, node });
        }
    }

    fn open_directory(&mut self, dir: Dir, path: PathBuf, name_in_parent: Vec<u8>) -> Result<Frame> {
        let mut children = dir
            .list()
            .with_context(|| format!("cannot list directory {}", path.display()))?;
        children.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        if let Ahead::On(prefetcher) = &self.ahead {
            prefetcher.ask(&dir, files_of(&children));
        }
        nar::directory_start(&mut self.scratch);
        Ok(Frame {
            dir,
            path,
            name_in_parent,
            children,
            next: 0,
            entries: Vec::new(),
        })
    }

    fn symlink(&mut self, target: Vec<u8>) -> Node {
        nar::symlink(&mut self.scratch, &target);
        Node::Symlink { target }
    }

    fn file(&mut self, path: &Path, mut file: File) -> Result<Node> {
        let meta = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if let EntryType::Unsupported(what) = EntryType::from_mode(meta.mode() as libc::mode_t) {
            bail!("{} is {what}: {ONLY}", path.display());
        }
        if !meta.is_file() {
            bail!("{} changed while it was being read", path.display());
        }
        // Nix keeps only the owner's executable bit; so do we.
        let (size, executable) = (meta.len(), meta.mode() & 0o100 != 0);
        nar::file_start(&mut self.scratch, executable, size);
        self.flush_scratch();
        self.visitor.file_start(path, size)?;

        // Exactly `size` bytes, as Nix reads them: the NAR header has already promised that
        // many. A file that shrinks under us is an error.
        let mut blake = blake3::Hasher::new();
        let mut remaining = size;
        let mut probe = matches!(self.ahead, Ahead::Probing);
        while remaining > 0 {
            let space = self.nar.space();
            let want = space.len().min(remaining.min(usize::MAX as u64) as usize);
            let n = if std::mem::take(&mut probe) {
                match read_cached(&file, &mut space[..want]) {
                    Ok(Probe::Read(n)) => n,
                    Ok(Probe::Cold) => {
                        tracing::debug!("{} is not in the page cache: reading the tree ahead", path.display());
                        self.ahead = Prefetcher::start().map_or(Ahead::Off, Ahead::On);
                        self.cold_now = true;
                        continue;
                    }
                    Ok(Probe::Unsupported) => {
                        self.ahead = Ahead::Off;
                        continue;
                    }
                    Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
                }
            } else {
                match file.read(&mut space[..want]) {
                    Ok(0) => bail!("{} shrank while it was being read", path.display()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
                }
            };
            let data = &space[..n];
            blake.update(data);
            self.visitor.file_data(data)?;
            self.nar.commit(n);
            remaining -= n as u64;
        }
        let blob = BlobHash(*blake.finalize().as_bytes());
        self.visitor.file_end(path, &blob)?;
        nar::file_end(&mut self.scratch, size);
        self.files += 1;
        self.bytes += size;
        Ok(Node::File { executable, size, blob })
    }
}

const ONLY: &str = "a tree may hold only regular files, directories and symlinks";

/// The names of the regular files among `children`, for the read-ahead.
fn files_of(children: &[(CString, EntryType)]) -> Vec<CString> {
    children
        .iter()
        .filter(|(_, kind)| matches!(kind, EntryType::File))
        .map(|(name, _)| name.clone())
        .collect()
}

/// The NAR byte stream, batched into large buffers that a second thread feeds to SHA-256.
struct NarStream {
    buf: Vec<u8>,
    fill: usize,
    full: Option<SyncSender<(Vec<u8>, usize)>>,
    empty: Receiver<Vec<u8>>,
    spare_buffers: usize,
    hasher: Option<JoinHandle<[u8; 32]>>,
}

const BATCH: usize = 1 << 20;
const BUFFERS: usize = 16;

impl NarStream {
    fn start() -> NarStream {
        let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(BUFFERS);
        let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS);
        let hasher = std::thread::Builder::new()
            .name("nar-sha256".into())
            .spawn(move || {
                let mut sha = Sha256::new();
                for (buf, len) in full_rx {
                    sha.update(&buf[..len]);
                    // The walker may have finished and stopped listening; that is fine.
                    let _ = empty_tx.try_send(buf);
                }
                sha.finalize().into()
            })
            .expect("cannot spawn the NAR hashing thread");
        NarStream {
            buf: vec![0; BATCH],
            fill: 0,
            full: Some(full_tx),
            empty: empty_rx,
            spare_buffers: BUFFERS - 1,
            hasher: Some(hasher),
        }
    }

    /// Free space at the end of the current batch; never empty.
    fn space(&mut self) -> &mut [u8] {
        if self.fill == self.buf.len() {
            self.send();
        }
        &mut self.buf[self.fill..]
    }

    /// Counts `n` bytes written into [`NarStream::space`] as part of the stream.
    fn commit(&mut self, n: usize) {
        self.fill += n;
    }

    /// Appends bytes to the stream.
    fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let space = self.space();
            let n = space.len().min(data.len());
            space[..n].copy_from_slice(&data[..n]);
            self.commit(n);
            data = &data[n..];
        }
    }

    fn send(&mut self) {
        let next = if self.spare_buffers > 0 {
            self.spare_buffers -= 1;
            vec![0; BATCH]
        } else {
            self.empty.recv().unwrap_or_else(|_| vec![0; BATCH])
        };
        let full = std::mem::replace(&mut self.buf, next);
        if let Some(tx) = &self.full {
            // The hashing thread only stops when we drop the sender, so this cannot fail
            // unless it panicked, which `finish` reports.
            let _ = tx.send((full, self.fill));
        }
        self.fill = 0;
    }

    fn finish(mut self) -> Result<NarHash> {
        if self.fill > 0 {
            self.send();
        }
        self.full = None;
        let digest = self
            .hasher
            .take()
            .expect("finish is called once")
            .join()
            .map_err(|_| anyhow::anyhow!("the NAR hashing thread panicked"))?;
        Ok(NarHash(digest))
    }
}

impl Drop for NarStream {
    fn drop(&mut self) {
        // On an error path: let the hashing thread see the end of the stream and exit.
        self.full = None;
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
    }
}
