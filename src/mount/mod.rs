//! `cab mount`: the islands of a manifest, GitHub browsing and every stored tree under one
//! read-only FUSE mount. [`fuse`] speaks the kernel protocol, [`fs`] is the filesystem,
//! [`table`] its inodes, [`islands`] realization off the request path, and [`timeout`] the
//! kernel's request timeout.

pub mod control;
mod failures;
mod fs;
pub mod fuse;
mod handover;
mod islands;
mod kernel;
mod read_ahead;
mod realization;
mod refs;
mod table;
mod timeout;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

pub use self::fs::{CabFs, ReadPath};
pub use self::handover::HandoverOptions;
pub use self::islands::Islands;
pub use self::kernel::unavailable as kernel_serve_unavailable;
pub use self::timeout::RequestTimeout;

/// The image cache's bound unless `image-cache-size` says otherwise.
pub const DEFAULT_IMAGE_CACHE: u64 = 16 << 30;

/// How to mount.
#[derive(Clone, Debug)]
pub struct Options {
    /// How file reads are served.
    pub read_path: ReadPath,
    /// Push a directory's small files into the page cache when one of them is first read
    /// (the plain read path only).
    pub read_ahead: bool,
    /// Let other users see the mount (`allow_other`).
    pub allow_other: bool,
    /// FUSE worker threads.
    pub threads: usize,
    /// The request timeout cab declares (None: the kernel's default, if one is set).
    pub request_timeout: Option<u16>,
    /// Whether (and within what cache) whole trees are handed to the kernel.
    pub handover: HandoverOptions,
    /// Serve FUSE requests over io_uring when the kernel offers it (Linux 6.14+ with
    /// `/sys/module/fuse/parameters/enable_uring` on); false: always through /dev/fuse.
    pub uring: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            read_path: ReadPath::Plain,
            read_ahead: true,
            allow_other: false,
            threads: 4,
            request_timeout: None,
            handover: HandoverOptions {
                enabled: true,
                cache_size: DEFAULT_IMAGE_CACHE,
            },
            uring: true,
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

/// `mountpoint` as an absolute path with its parent's symlinks resolved, without looking at
/// the mount point itself (which may be a FUSE mount, live or stale).
pub fn absolute_mountpoint(mountpoint: &Path) -> PathBuf {
    let absolute = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_owned());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(absolute.clone()),
        _ => absolute,
    }
}

/// Unmounts `mountpoint`, and the images the kernel serves below it first; `lazy` detaches a
/// mount whose daemon is gone.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let absolute = absolute_mountpoint(mountpoint);
    // The daemon may attach an image between the two steps: a few tries.
    for _ in 0..4 {
        kernel::detach_below(&absolute);
        match fuse::unmount(mountpoint, lazy) {
            Err(_) if !kernel::mounts_below(&absolute).is_empty() => continue,
            done => return done,
        }
    }
    fuse::unmount(mountpoint, lazy)
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

/// Lets the kernel read ahead up to 1 MiB of a file in one request (the largest FUSE request,
/// 256 pages), where it would stop at its default 128 KiB: a large file is then read in a
/// quarter of the round trips. Only root may; others keep the default.
fn raise_read_ahead(mountpoint: &Path) {
    let Some(connection) = fuse_connection(mountpoint) else {
        return;
    };
    let knob = format!("/sys/class/bdi/0:{connection}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, "1024") {
        tracing::debug!("read-ahead stays at the kernel's default ({knob}: {e})");
    }
}

/// Whether `path` is listed in /proc/self/mountinfo (live or stale; never asks the daemon).
fn listed_as_mounted(path: &Path) -> bool {
    fuse_connection(path).is_some()
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
    // Images are mounted on absolute paths, and found below it in mountinfo.
    let mountpoint = &absolute_mountpoint(mountpoint);
    let fs = Arc::new(CabFs::new(islands.clone(), options));
    let mount_options = fuse::MountOptions {
        name: "cab".into(),
        allow_other: options.allow_other,
    };
    let channel = fuse::Channel::mount(mountpoint, &mount_options).with_context(|| {
        format!(
            "cannot mount at {} (is fuse3 installed and /dev/fuse usable?)",
            mountpoint.display()
        )
    })?;
    let session_options = fuse::SessionOptions {
        uring: options.uring,
        // Test hook: the kernel refuses the rings' first REGISTER and falls back to /dev/fuse.
        bad_register: std::env::var_os("CAB_FAILPOINT").is_some_and(|v| v == "uring-register"),
        ..fuse::SessionOptions::default()
    };
    let session = match fuse::Session::handshake(fs.as_ref(), channel, &session_options) {
        Ok(session) => session,
        Err(e) => {
            let _ = unmount(mountpoint, true);
            return Err(e).with_context(|| format!("the kernel and cab could not agree on {}", mountpoint.display()));
        }
    };
    raise_read_ahead(mountpoint);
    fs.connected(session.channel().clone());
    let handover = handover::Handover::start(mountpoint, islands.realizer().store(), &options.handover);
    if let Some(handover) = &handover {
        islands.hand_over_to(handover.clone());
    }
    // SIGHUP: the lock changed (`cab update`, `cab mount --update MNT`); move to its pins.
    {
        let (islands, fs) = (islands.clone(), fs.clone());
        runtime.spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                tracing::error!("cannot listen for SIGHUP: a changed lock needs a new mount");
                return;
            };
            while hup.recv().await.is_some() {
                let (islands, fs) = (islands.clone(), fs.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    for (name, old) in islands.reload() {
                        fs.island_moved(&name, old);
                    }
                })
                .await;
            }
        });
    }
    let shown = mountpoint.display().to_string();
    let path = mountpoint.to_owned();
    let signal_handover = handover.clone();
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
        let result = tokio::task::spawn_blocking(move || {
            // The images the kernel serves below it first: the FUSE mount cannot go before.
            if let Some(handover) = signal_handover {
                handover.detach_all();
            }
            if let Err(e) = unmount(&path, false) {
                // Busy (a file or directory in it is open): detach it now, and end the
                // connection so that the daemon can exit; whoever still holds files gets
                // errors, as with any filesystem that goes away.
                tracing::warn!("{} is busy ({e:#}); detaching it", path.display());
                let connection = fuse_connection(&path);
                if let Err(e) = unmount(&path, true) {
                    tracing::error!("cannot detach {}: {e:#}", path.display());
                }
                let aborted = connection
                    .is_some_and(|c| std::fs::write(format!("/sys/fs/fuse/connections/{c}/abort"), "1").is_ok());
                if !aborted {
                    // The connection cannot be ended from here; the mount is detached, so
                    // this process has nothing left to serve.
                    eprintln!("unmounted {} (detached while busy)", path.display());
                    std::process::exit(0);
                }
            }
        })
        .await;
        if result.is_err() {
            tracing::error!("unmounting panicked");
        }
    });
    let served = session.run(fs, options.threads, ready);
    // However the mount ended (unmounted from elsewhere, aborted), nothing is attached below
    // it any more.
    if let Some(handover) = &handover {
        handover.detach_all();
    }
    served.with_context(|| format!("the mount at {} failed", mountpoint.display()))?;
    // The connection is over. Unmounted: the point is gone from the mount table. Still
    // listed: the kernel aborted the connection under a live mount (its request timeout, or
    // someone wrote to its `abort`), which leaves it stale; clear it and say so.
    if listed_as_mounted(mountpoint) {
        let _ = unmount(mountpoint, true);
        bail!(
            "the kernel ended the FUSE connection of {} while it was mounted (aborted; a request \
             outlived /proc/sys/fs/fuse/default_request_timeout or max_request_timeout?); the stale \
             mount was cleared",
            mountpoint.display()
        );
    }
    Ok(())
}
