//! How big the store is, cheaply, and when each published tree was last used.
//!
//! `STORE/usage` holds an estimate of the bytes in `blobs/` and `trees/`: every ingest adds
//! what it wrote, every collection sets it to what it counted. It lets a command decide
//! whether to collect (`--gc-auto-size`) with one small read instead of a walk of the store.
//! It errs low (objects written by other means, such as a file subpath's root node, are not
//! counted) until the next collection counts again.
//!
//! A published tree's last use is the modification time of its `roots/` record: set when a
//! process declares the tree live (once per process) and again when that process is done
//! with the store. Nothing is written on the FUSE read path.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result};

use super::super::Store;
use crate::hash::TreeHash;

/// What the store's size estimate says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of objects, as estimated.
    pub bytes: u64,
    /// What the last collection left, if one ran.
    pub after_gc: Option<u64>,
}

fn parse(text: &str) -> Usage {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
    };
    Usage {
        bytes: field("bytes ").unwrap_or(0),
        after_gc: field("after-gc "),
    }
}

/// The usage file, opened and locked for one read-modify-write.
struct Locked(File);

impl Locked {
    fn open(path: &Path) -> io::Result<Locked> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // SAFETY: a plain syscall on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Locked(file))
    }

    fn read(&mut self) -> io::Result<Option<Usage>> {
        let mut text = String::new();
        self.0.rewind()?;
        self.0.read_to_string(&mut text)?;
        Ok((!text.is_empty()).then(|| parse(&text)))
    }

    fn write(&mut self, usage: Usage) -> io::Result<()> {
        let mut text = format!("bytes {}\n", usage.bytes);
        if let Some(after) = usage.after_gc {
            text.push_str(&format!("after-gc {after}\n"));
        }
        self.0.set_len(0)?;
        self.0.rewind()?;
        self.0.write_all(text.as_bytes())
    }
}

impl Store {
    fn usage_path(&self) -> std::path::PathBuf {
        self.root.join("usage")
    }

    /// The size estimate; `None` for a store that has none yet (made before it existed).
    pub fn usage(&self) -> Result<Option<Usage>> {
        let path = self.usage_path();
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.is_empty() => Ok(Some(parse(&text))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Changes the estimate under its lock.
    fn update_usage(&self, change: impl FnOnce(Usage) -> Usage) -> Result<Usage> {
        let path = self.usage_path();
        let ctx = || format!("cannot update {}", path.display());
        let mut file = Locked::open(&path).with_context(ctx)?;
        let usage = change(file.read().with_context(ctx)?.unwrap_or_default());
        file.write(usage).with_context(ctx)?;
        Ok(usage)
    }

    /// Adds `bytes` just written to the estimate. Best effort: a failure is logged.
    pub(in crate::store) fn add_usage(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        if let Err(e) = self.update_usage(|u| Usage {
            bytes: u.bytes.saturating_add(bytes),
            ..u
        }) {
            tracing::debug!("{e:#}");
        }
    }

    /// Sets the estimate to `counted`, a count that began when the estimate said `before`:
    /// what writers added meanwhile is kept on top. `collected` also records it as what the
    /// last collection left.
    pub(in crate::store) fn set_usage(&self, before: u64, counted: u64, collected: bool) -> Result<Usage> {
        self.update_usage(|u| {
            let bytes = counted.saturating_add(u.bytes.saturating_sub(before));
            Usage {
                bytes,
                after_gc: if collected { Some(bytes) } else { u.after_gc },
            }
        })
    }

    /// When a published tree was last used (its record's modification time).
    pub fn last_used(&self, tree: &TreeHash) -> Option<SystemTime> {
        std::fs::metadata(self.root.join("roots").join(tree.to_hex()))
            .and_then(|m| m.modified())
            .ok()
    }
}
