//! GC roots as the store keeps them, under `gcroots/`:
//!
//! ```text
//! gcroots/manual/<name>      "blake3-…\n": added by hand (`cab store root add`)
//! gcroots/locks/<64 hex>     an indirect root: the absolute path of an islands.lock cab has
//!                            used, then the lock's text as cab last read or wrote it
//! gcroots/live/<id>          one per running process that uses trees; flock-held by it for
//!                            as long as it lives: "<pid> <command>\n", then one tree a line
//! ```
//!
//! What a registered lock roots is decided above the store (it parses the lock); the store
//! only keeps the registrations. A live file whose lock can be taken belongs to a process that
//! died (the kernel released its lock), exactly as staging is recognised.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

use super::super::{Store, staging};
use crate::hash::TreeHash;
use crate::sync::MutexExt;

/// Why a tree is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootKind {
    /// A pin of an `islands.lock` that cab has used on this machine.
    Lock {
        /// The lock's absolute path.
        lock: PathBuf,
        /// The island's name in it.
        island: String,
        /// The whole fetched tree of an island with a subpath (the pin names the subtree).
        whole: bool,
    },
    /// Added by hand (`cab store root add`).
    Manual {
        /// Its name.
        name: String,
    },
    /// Declared live by a running process: a mount serving it, a fetch using it.
    Live {
        /// The process.
        pid: u32,
        /// Its command line, as it wrote it.
        command: String,
    },
}

/// One root: a tree and why it is kept. The tree need not be in the store (a pin not fetched
/// here yet, a tree a process is still fetching).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    /// Why.
    pub kind: RootKind,
    /// The tree.
    pub tree: TreeHash,
}

/// An indirect root: a file outside the store whose contents name trees.
#[derive(Clone, Debug)]
pub struct Indirect {
    /// The file it names (an `islands.lock`).
    pub path: PathBuf,
    /// Its text when cab last read or wrote it.
    pub remembered: String,
}

/// A process's declared live trees.
#[derive(Clone, Debug)]
pub struct LiveProcess {
    /// Its pid.
    pub pid: u32,
    /// Its command line.
    pub command: String,
    /// The trees it declared live.
    pub trees: Vec<TreeHash>,
}

/// Checks the name of a hand-made root: one short path component of plain characters.
pub fn check_root_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-@".contains(&b));
    if !ok {
        bail!("`{name}` cannot name a root: use up to 128 letters, digits and `._+-@`, not starting with `.`");
    }
    Ok(())
}

fn list_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .collect::<io::Result<Vec<_>>>()
            .with_context(|| format!("cannot list {}", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot list {}", dir.display())),
    }
}

/// The key of an indirect root's file: BLAKE3 of the path it names.
fn indirect_key(path: &Path) -> String {
    blake3::hash(path.as_os_str().as_bytes()).to_hex().to_string()
}

impl Store {
    fn gcroots(&self, kind: &str) -> PathBuf {
        self.root.join("gcroots").join(kind)
    }

    /// Roots `tree` by hand under `name`, replacing a root of that name; returns the tree it
    /// named before. The tree must be published here.
    pub fn add_root(&self, name: &str, tree: &TreeHash) -> Result<Option<TreeHash>> {
        check_root_name(name)?;
        // Checked and written under the guard: no collector can delete the tree in between.
        let _guard = self.guard()?;
        if self.published(tree)?.is_none() {
            bail!(
                "{tree} is not in the store at {}: fetch or add it first",
                self.root.display()
            );
        }
        let dir = self.gcroots("manual");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let before = self.manual_root(name)?;
        self.write_atomically(&dir.join(name), format!("{tree}\n").as_bytes(), true)?;
        Ok(before)
    }

    fn manual_root(&self, name: &str) -> Result<Option<TreeHash>> {
        let path = self.gcroots("manual").join(name);
        match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse()
                .map(Some)
                .with_context(|| format!("the root {} is corrupt", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Removes the hand-made root `name`; returns the tree it named, if there was one.
    pub fn remove_root(&self, name: &str) -> Result<Option<TreeHash>> {
        check_root_name(name)?;
        let before = self.manual_root(name)?;
        if before.is_some() {
            let path = self.gcroots("manual").join(name);
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
        Ok(before)
    }

    /// Every hand-made root, by name.
    pub fn manual_roots(&self) -> Result<Vec<(String, TreeHash)>> {
        let mut out = Vec::new();
        for entry in list_dir(&self.gcroots("manual"))? {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if check_root_name(&name).is_err() {
                continue; // a temporary file, or not ours
            }
            if let Some(tree) = self.manual_root(&name)? {
                out.push((name, tree));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Registers `path` (absolute) as an indirect root, remembering `text` as its contents.
    /// Writes nothing when the registration already says the same.
    pub fn register_indirect(&self, path: &Path, text: &str) -> Result<()> {
        if !path.is_absolute() || path.as_os_str().as_bytes().contains(&b'\n') {
            bail!(
                "cannot register {} as a gc root: not an absolute path on one line",
                path.display()
            );
        }
        let dir = self.gcroots("locks");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut contents = path.as_os_str().as_bytes().to_vec();
        contents.push(b'\n');
        contents.extend_from_slice(text.as_bytes());
        let dest = dir.join(indirect_key(path));
        if fs::read(&dest).is_ok_and(|old| old == contents) {
            return Ok(());
        }
        self.write_atomically(&dest, &contents, false)
    }

    /// Every indirect root registered in this store.
    pub fn indirect_roots(&self) -> Result<Vec<Indirect>> {
        let mut out = Vec::new();
        for entry in list_dir(&self.gcroots("locks"))? {
            let name = entry.file_name();
            if name.to_str().is_none_or(|n| n.len() != 64) {
                continue;
            }
            let bytes = match fs::read(entry.path()) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", entry.path().display())),
            };
            let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
                tracing::warn!("ignoring a corrupt gc root registration {}", entry.path().display());
                continue;
            };
            out.push(Indirect {
                path: PathBuf::from(OsStr::from_bytes(&bytes[..end])),
                remembered: String::from_utf8_lossy(&bytes[end + 1..]).into_owned(),
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Drops the registration of `path`; says whether there was one.
    pub fn unregister_indirect(&self, path: &Path) -> Result<bool> {
        let file = self.gcroots("locks").join(indirect_key(path));
        match fs::remove_file(&file) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", file.display())),
        }
    }

    /// The trees every running process declared live. With `clean`, the files of processes
    /// that died are removed.
    pub fn live_roots(&self, clean: bool) -> Result<Vec<LiveProcess>> {
        let dir = self.gcroots("live");
        let mut out = Vec::new();
        let pending = |path: &Path| path.extension().is_some_and(|e| e == "pending");
        for (_, text) in staging::held_records(&dir, clean, pending)? {
            let mut lines = text.lines();
            let (pid, command) = lines
                .next()
                .and_then(|l| l.split_once(' '))
                .and_then(|(pid, cmd)| Some((pid.parse().ok()?, cmd.to_owned())))
                .unwrap_or((0, String::new()));
            // A line being appended at this moment may be cut short: only whole ones count
            // (a collector reads again under the exclusive lock, when no line is half-written).
            let trees = lines.filter_map(|l| l.parse().ok()).collect();
            out.push(LiveProcess { pid, command, trees });
        }
        if clean {
            staging::remove_abandoned_pending(&dir);
        }
        Ok(out)
    }
}

/// This process's declared live trees: its file under `gcroots/live/`, made on first use and
/// removed when the process is done with the store.
#[derive(Debug)]
pub(in crate::store) struct Live {
    dir: PathBuf,
    roots: PathBuf,
    state: Mutex<LiveState>,
}

#[derive(Debug, Default)]
struct LiveState {
    file: Option<(File, PathBuf)>,
    declared: HashSet<TreeHash>,
}

/// This process's command line, shortened, for `cab store root ls` and `du`.
fn command_line() -> String {
    let mut line: String = std::env::args().collect::<Vec<_>>().join(" ");
    line.retain(|c| !c.is_control());
    crate::text::shorten(&line).into_owned()
}

impl Live {
    pub(in crate::store) fn new(store_root: &Path) -> Live {
        Live {
            dir: store_root.join("gcroots").join("live"),
            roots: store_root.join("roots"),
            state: Mutex::default(),
        }
    }

    /// Declares `trees` live for the rest of this process's life (call under a guard), and
    /// records that they were used now.
    pub(in crate::store) fn declare(&self, trees: &[TreeHash]) -> Result<()> {
        let mut state = self.state.locked();
        let new: Vec<TreeHash> = trees.iter().filter(|t| !state.declared.contains(t)).copied().collect();
        if new.is_empty() {
            return Ok(());
        }
        if state.file.is_none() {
            fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
            let (mut file, path) = staging::create_held(&self.dir, &staging::unique_id())?;
            writeln!(file, "{} {}", std::process::id(), command_line())
                .with_context(|| format!("cannot write {}", path.display()))?;
            state.file = Some((file, path));
        }
        let mut lines = String::new();
        for tree in &new {
            lines.push_str(&format!("{tree}\n"));
        }
        if let Some((file, path)) = &mut state.file {
            file.write_all(lines.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        for tree in new {
            touch(&self.roots.join(tree.to_hex()));
            state.declared.insert(tree);
        }
        Ok(())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        // Used until now: the least-recently-used order of `gc --keep-size` sees it so.
        for tree in &state.declared {
            touch(&self.roots.join(tree.to_hex()));
        }
        // The file goes first, the lock (with the descriptor) after it.
        if let Some((file, path)) = state.file.take() {
            let _ = fs::remove_file(path);
            drop(file);
        }
    }
}

/// Sets a published tree's record's modification time to now: its last use. Nothing if the
/// tree is not published.
fn touch(record: &Path) {
    let Ok(path) = std::ffi::CString::new(record.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid C string; null times mean "now".
    unsafe {
        libc::utimensat(libc::AT_FDCWD, path.as_ptr(), std::ptr::null(), 0);
    }
}
