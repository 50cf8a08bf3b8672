//! The store-wide gc lock, `locks/gc`: what keeps the collector from deleting an object that a
//! process is about to rely on.
//!
//! Every section of a process that relies on objects being present — an ingest from the first
//! "is this blob already here?" to the publish and the declaration of the new tree as live, or
//! the check "is this tree published?" together with declaring it live — holds the lock
//! *shared* (a [`Guard`]). The collector deletes only while it holds it *exclusive*, in short
//! windows, and at the start of each window it reads the roots and the published trees again.
//! So every such section lies wholly before or wholly after a window: one that ended before
//! has declared its trees (the window sees them), one that starts after sees the deletions
//! (and writes again what it finds missing).
//!
//! Within one process the shared lock is counted: one descriptor, taken on the first guard and
//! released with the last, so guards nest freely.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::sync::MutexExt;
use anyhow::{Context, Result};

/// The gc lock of one store handle (and its clones).
#[derive(Debug)]
pub(in crate::store) struct GcLock {
    path: PathBuf,
    state: Mutex<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    file: Option<File>,
    holders: usize,
}

/// The gc lock held shared: the collector cannot delete anything while this lives.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct Guard {
    lock: Arc<GcLock>,
}

/// The gc lock held exclusively: no guard exists in any process while this lives.
#[derive(Debug)]
pub(in crate::store) struct Exclusive {
    _file: File,
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: a plain syscall on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn open(path: &PathBuf) -> io::Result<File> {
    let open = || {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    };
    match open() {
        // A store made before locks/ existed.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            open()
        }
        other => other,
    }
}

impl GcLock {
    /// The lock at `path` (`STORE/locks/gc`), taken by nobody yet.
    pub(in crate::store) fn new(path: PathBuf) -> GcLock {
        GcLock {
            path,
            state: Mutex::default(),
        }
    }

    /// Takes the lock shared, waiting while a collector deletes (its windows are short).
    pub(in crate::store) fn shared(self: &Arc<Self>) -> Result<Guard> {
        let mut state = self.state.locked();
        if state.holders == 0 {
            let ctx = || format!("cannot take the gc lock {}", self.path.display());
            if state.file.is_none() {
                state.file = Some(open(&self.path).with_context(ctx)?);
            }
            if let Some(file) = &state.file {
                flock(file, libc::LOCK_SH).with_context(ctx)?;
            }
        }
        state.holders += 1;
        Ok(Guard { lock: self.clone() })
    }

    /// Whether some guard of this handle is held now.
    pub(in crate::store) fn held(&self) -> bool {
        self.state.locked().holders > 0
    }

    /// Takes the lock exclusively (through a descriptor of its own), waiting for every guard
    /// in every process to be dropped.
    pub(in crate::store) fn exclusive(&self) -> Result<Exclusive> {
        let ctx = || format!("cannot take the gc lock {}", self.path.display());
        let file = open(&self.path).with_context(ctx)?;
        flock(&file, libc::LOCK_EX).with_context(ctx)?;
        Ok(Exclusive { _file: file })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut state = self.lock.state.locked();
        state.holders -= 1;
        if state.holders == 0
            && let Some(file) = &state.file
            && let Err(e) = flock(file, libc::LOCK_UN)
        {
            // Closing the descriptor releases it for certain.
            tracing::warn!("cannot release the gc lock {}: {e}", self.lock.path.display());
            state.file = None;
        }
    }
}
