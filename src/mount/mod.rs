//! `cab mount`: the islands of a manifest, GitHub browsing and every stored tree under one
//! read-only FUSE mount. See [`fs`] for the filesystem and [`islands`] for realization on
//! lookup.

mod fs;
mod islands;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use fuser::{Config, MountOption, SessionACL};

pub use self::fs::CabFs;
pub use self::islands::Islands;

/// How to mount.
#[derive(Clone, Debug)]
pub struct Options {
    /// Ask the kernel for FUSE passthrough (falls back by itself when refused).
    pub passthrough: bool,
    /// Let other users see the mount (`allow_other`).
    pub allow_other: bool,
    /// FUSE worker threads.
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            passthrough: true,
            allow_other: false,
            threads: 4,
        }
    }
}

fn errno_of(path: &Path) -> Option<i32> {
    std::fs::metadata(path).err().and_then(|e| e.raw_os_error())
}

/// Whether `path` is a mount point (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Unmounts `mountpoint`; `lazy` detaches a mount whose daemon is gone.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let mut args = vec!["-u"];
    if lazy {
        args.push("-z");
    }
    let status = Command::new("fusermount3")
        .args(&args)
        .arg(mountpoint)
        .status()
        .context("cannot run fusermount3 (install the fuse3 package)")?;
    if !status.success() {
        bail!("fusermount3 could not unmount {}", mountpoint.display());
    }
    Ok(())
}

/// Clears a mount left behind by a daemon that was killed ("Transport endpoint is not
/// connected"), so the mount point can be used again.
pub fn clear_stale(mountpoint: &Path) -> Result<bool> {
    if errno_of(mountpoint) == Some(libc::ENOTCONN) {
        tracing::warn!(
            "{} is a stale mount left by a cab that died; clearing it",
            mountpoint.display()
        );
        unmount(mountpoint, true)?;
        return Ok(true);
    }
    Ok(false)
}

/// The FUSE connection number (the mount's minor device number) of the mount at `path`, read
/// from /proc/self/mountinfo — never by `stat`, which would ask the daemon itself.
fn fuse_connection(path: &Path) -> Option<u32> {
    let path = std::fs::canonicalize(path.parent()?).ok()?.join(path.file_name()?);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let (device, point) = (fields.get(2)?, fields.get(4)?);
        (Path::new(point) == path).then(|| device.split(':').nth(1)?.parse().ok())?
    })
}

/// Mounts `islands` at `mountpoint` and serves until unmounted (Ctrl-C, SIGTERM or
/// `cab unmount`). `ready` is called once the mount is live.
pub fn serve(
    islands: Arc<Islands>,
    mountpoint: &Path,
    options: &Options,
    runtime: &tokio::runtime::Runtime,
    ready: impl FnOnce(),
) -> Result<()> {
    clear_stale(mountpoint)?;
    let meta = std::fs::metadata(mountpoint)
        .with_context(|| format!("cannot use {} as a mount point", mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", mountpoint.display());
    }
    if is_mount_point(mountpoint) {
        bail!(
            "{} is already a mount point; `cab unmount {}` first",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
        MountOption::FSName("cab".into()),
        MountOption::Subtype("cab".into()),
    ];
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let fs = CabFs::new(islands, options.passthrough);
    let mut session = fuser::Session::new(fs, mountpoint, &config).with_context(|| {
        format!(
            "cannot mount at {} (is fuse3 installed and /dev/fuse usable?)",
            mountpoint.display()
        )
    })?;
    let mut unmounter = session.unmount_callable();
    let shown = mountpoint.display().to_string();
    let path = mountpoint.to_owned();
    runtime.spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("unmounting {shown}");
        if let Err(e) = unmounter.unmount() {
            // Busy (a file or directory in it is open): detach it now, and end the connection
            // so that the daemon can exit; whoever still holds files gets errors, as with any
            // filesystem that goes away.
            tracing::warn!("{shown} is busy ({e}); detaching it");
            let connection = fuse_connection(&path);
            if let Err(e) = unmount(&path, true) {
                tracing::error!("cannot detach {shown}: {e:#}");
            }
            let aborted = connection
                .map(|c| std::fs::write(format!("/sys/fs/fuse/connections/{c}/abort"), "1").is_ok())
                .unwrap_or(false);
            if !aborted {
                eprintln!("unmounted {shown} (detached while busy)");
                std::process::exit(0);
            }
        }
    });
    ready();
    session
        .run()
        .with_context(|| format!("the mount at {} failed", mountpoint.display()))
}
