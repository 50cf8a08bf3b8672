//! Running mounts, as the store knows them: one file each in `STORE/mounts/`, flock-held by
//! its daemon for as long as it lives (a file whose lock can be taken belongs to a daemon that
//! is gone, however it ended), saying its pid, its mount point and its manifest. So whoever
//! changes a lock can tell the mounts that serve it (`cab update`, `cab mount --update MNT`),
//! and whoever asks can find them.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{Store, staging};

/// A running mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountRecord {
    /// Its daemon.
    pub pid: u32,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The manifest it serves, if any.
    pub manifest: Option<PathBuf>,
}

/// This process's record, removed when dropped (or found stale when it dies).
#[derive(Debug)]
pub struct Registered {
    path: PathBuf,
    _file: File,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Store {
    fn mounts_dir(&self) -> PathBuf {
        self.root.join("mounts")
    }

    /// Records this process as the daemon of the mount at `mountpoint` serving `manifest`.
    pub fn register_mount(&self, mountpoint: &Path, manifest: Option<&Path>) -> Result<Registered> {
        let dir = self.mounts_dir();
        let ctx = || format!("cannot record the mount in {}", dir.display());
        fs::create_dir_all(&dir).with_context(ctx)?;
        let pid = std::process::id();
        // One mount per process: the pid names it (a stale file of an earlier process with the
        // same pid is unlocked, and taken over).
        let path = dir.join(pid.to_string());
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(ctx)?;
        if !staging::try_lock(&file).with_context(ctx)? {
            anyhow::bail!("{} is locked by another process", path.display());
        }
        let manifest = manifest.map(|m| m.display().to_string()).unwrap_or_default();
        writeln!(file, "{pid}\n{}\n{manifest}", mountpoint.display()).with_context(ctx)?;
        Ok(Registered { path, _file: file })
    }

    /// The mounts running now (stale records of daemons that died are removed).
    pub fn mounts(&self) -> Result<Vec<MountRecord>> {
        let mut out = Vec::new();
        for (_, text) in staging::held_records(&self.mounts_dir(), true, |_| false)? {
            let mut lines = text.lines();
            let Some(pid) = lines.next().and_then(|l| l.parse().ok()) else {
                continue;
            };
            let Some(mountpoint) = lines.next().map(PathBuf::from) else {
                continue;
            };
            let manifest = lines.next().filter(|l| !l.is_empty()).map(PathBuf::from);
            out.push(MountRecord {
                pid,
                mountpoint,
                manifest,
            });
        }
        out.sort_by_key(|m| m.pid);
        Ok(out)
    }
}
