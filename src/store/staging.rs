//! Private staging directories under the store's `tmp/`, and the clean-up of those left by
//! processes that died.
//!
//! Each staging directory `tmp/<id>/` has a sibling `tmp/<id>.lock` that its owner holds with
//! `flock` for as long as it lives. The kernel drops the lock when the owner dies, however it
//! dies, so "can I take the lock?" is an exact test for "is this staging stale?" — no pid
//! guessing, no clocks.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// A staging directory owned by this process; removed with everything in it when dropped.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    counter: AtomicU64,
}

/// Takes `file`'s exclusive flock if nobody holds it.
pub(super) fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: a plain syscall on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The text of every file in `dir` that a live process holds locked (its record), with its
/// path; a file nobody holds belonged to a process that is gone, however it ended, and is
/// removed when `clean`. Files `skip` says yes to are passed over.
pub(super) fn held_records(dir: &Path, clean: bool, skip: impl Fn(&Path) -> bool) -> Result<Vec<(PathBuf, String)>> {
    use std::io::Read;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        if skip(&path) {
            continue;
        }
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        if try_lock(&file).with_context(|| format!("cannot lock {}", path.display()))? {
            if clean {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        let mut text = String::new();
        file.read_to_string(&mut text)
            .with_context(|| format!("cannot read {}", path.display()))?;
        out.push((path, text));
    }
    Ok(out)
}

/// A name no other file of this store will have: pid, time and a counter.
pub(super) fn unique_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates `dir/<name>` with this process holding its exclusive flock from the start: it is
/// made as `<name>.pending`, locked, then renamed into view, so that no cleaner testing
/// "can I take the lock?" ever sees it unlocked while its owner lives.
pub(super) fn create_held(dir: &Path, name: &str) -> Result<(File, PathBuf)> {
    let ctx = || format!("cannot create a file in {}", dir.display());
    let pending = dir.join(format!("{name}.pending"));
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&pending)
        .with_context(ctx)?;
    if !try_lock(&file).with_context(ctx)? {
        anyhow::bail!("{} is locked by another process", pending.display());
    }
    let path = dir.join(name);
    fs::rename(&pending, &path).with_context(ctx)?;
    Ok((file, path))
}

impl Staging {
    /// Makes a new staging directory in `tmp`.
    pub fn new(tmp: &Path) -> Result<Staging> {
        let id = unique_id();
        let ctx = || format!("cannot create a staging directory in {}", tmp.display());
        let (lock, lock_path) = create_held(tmp, &format!("{id}.lock")).with_context(ctx)?;
        let dir = tmp.join(&id);
        fs::create_dir(&dir).with_context(ctx)?;
        Ok(Staging {
            dir,
            lock_path,
            _lock: lock,
            counter: AtomicU64::new(0),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A fresh name inside the directory, for one temporary file.
    pub fn temp_path(&self, tag: &str) -> PathBuf {
        self.dir
            .join(format!("{tag}-{}", self.counter.fetch_add(1, Ordering::Relaxed)))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Directory first, lock last: a crash in between leaves only a lock file, which the
        // next cleaner removes.
        if let Err(e) = remove_tree(&self.dir) {
            tracing::warn!("cannot remove staging directory {}: {e}", self.dir.display());
        }
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// Removes a directory tree, making directories writable first (a fetcher's output may hold
/// read-only directories).
fn remove_tree(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(dir);
            fs::remove_dir_all(dir)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&entry.path());
            }
        }
    }
}

/// How old an unlocked `.pending` file must be before it counts as left behind.
const PENDING_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes every staging directory in `tmp` whose owner is gone. Errors are logged, not
/// returned: clean-up must never stop real work.
pub fn clean_stale(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        let lock_path = entry.path();
        let Ok(lock) = File::open(&lock_path) else { continue };
        if try_lock(&lock).unwrap_or(false) {
            let dir = tmp.join(id);
            tracing::info!("removing staging left by a process that died: {}", dir.display());
            if let Err(e) = remove_tree(&dir) {
                tracing::warn!("cannot remove stale staging {}: {e}", dir.display());
                continue;
            }
            let _ = fs::remove_file(&lock_path);
        }
    }
    remove_abandoned_pending(tmp);
}

/// Removes the `.pending` files in `dir` left by processes that died while creating one (see
/// [`create_held`]). A `.pending` file is unlocked for a moment after its creator makes it
/// (between create and flock), so only an old one can be known to be left behind.
pub(super) fn remove_abandoned_pending(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > PENDING_GRACE));
        if old
            && entry.file_name().to_str().is_some_and(|n| n.ends_with(".pending"))
            && let Ok(lock) = File::open(entry.path())
            && try_lock(&lock).unwrap_or(false)
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}
