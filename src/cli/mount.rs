//! `cab mount`, `cab unmount` and `cab update`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::fetch::{LimitArgs, runtime};
use crate::config::{Layer, Settings, Size, parse_size};
use crate::lock::{Lock, Manifest, lock_path};
use crate::mount::{Islands, Options, ReadPath};
use crate::store::mounts::MountRecord;

#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// Where to mount (an empty directory).
    mountpoint: PathBuf,
    /// The manifest naming the islands [default: ./islands.toml, if there is one].
    #[arg(long, value_name = "PATH")]
    manifest: Option<PathBuf>,
    /// Re-resolve every named island first, rewrite the lock, print what moved, then serve.
    #[arg(long)]
    update: bool,
    /// Return once the mount is up, leaving it running in the background (its log in
    /// `--log`), as sshfs and rclone do.
    #[arg(long)]
    daemon: bool,
    /// Where `--daemon` appends the mount's log [default:
    /// $XDG_STATE_HOME/cab/mount-<MOUNTPOINT>.log].
    #[arg(long, value_name = "FILE", requires = "daemon")]
    log: Option<PathBuf>,
    /// Have the kernel read files straight from the store (FUSE passthrough; root on Linux
    /// 6.9+). Faster for large files and mmap, slower for source trees: every open and close
    /// of a file then costs a round trip to cab, which the default read path avoids.
    #[arg(long, overrides_with = "no_passthrough")]
    passthrough: bool,
    /// Serve file reads through cab (the default read path; overrides a `passthrough = true`
    /// setting).
    #[arg(long, overrides_with = "passthrough")]
    no_passthrough: bool,
    /// Push a directory's small files into the page cache when one of them is first read
    /// (read-ahead by directory, the default with the default read path).
    #[arg(long, overrides_with = "no_read_ahead")]
    read_ahead: bool,
    /// Do not read ahead by directory.
    #[arg(long, overrides_with = "read_ahead")]
    no_read_ahead: bool,
    /// Complete every tree served from the remote store in the background (files are
    /// otherwise fetched when first read), publishing it in the store once whole.
    #[arg(long, overrides_with = "no_prefetch")]
    prefetch: bool,
    /// Fetch files from the remote only when read (the default; overrides `prefetch = true`).
    #[arg(long, overrides_with = "prefetch")]
    no_prefetch: bool,
    /// The FUSE request timeout to declare to the kernel, in seconds (Linux 6.14+; capped by
    /// /proc/sys/fs/fuse/max_request_timeout) [default: where the kernel sets a timeout, one
    /// long enough for the slowest fetch (--max-time)]. Requests waiting for a fetch longer
    /// than the timeout allows are answered EAGAIN before it runs out.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u16).range(1..))]
    request_timeout: Option<u16>,
    /// Have the kernel serve every tree that is whole in the store from an EROFS image (the
    /// default, as root on Linux 6.12+): FUSE then only serves what is still arriving.
    #[arg(long, overrides_with = "no_kernel_serve")]
    kernel_serve: bool,
    /// Serve every tree through FUSE.
    #[arg(long, overrides_with = "kernel_serve")]
    no_kernel_serve: bool,
    /// Take FUSE requests over io_uring, on the caller's CPU, where the kernel offers it (the
    /// default; Linux 6.14+ while /sys/module/fuse/parameters/enable_uring is on).
    #[arg(long, overrides_with = "no_io_uring")]
    io_uring: bool,
    /// Take every FUSE request through /dev/fuse.
    #[arg(long, overrides_with = "io_uring")]
    no_io_uring: bool,
    /// The most the image cache may hold (K/M/G/T suffixes) [default: 16G].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    image_cache_size: Option<u64>,
    /// Let other users see the mount (needs user_allow_other in /etc/fuse.conf).
    #[arg(long, overrides_with = "no_allow_other")]
    allow_other: bool,
    /// Only this user sees the mount (the default; overrides an `allow-other = true` setting).
    #[arg(long, overrides_with = "allow_other")]
    no_allow_other: bool,
    /// FUSE worker threads [default: 4].
    #[arg(long, value_name = "COUNT", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    gc: super::store::AutoGcArgs,
}

/// `Some(true)` for `--x`, `Some(false)` for `--no-x`, `None` for neither.
fn switch(on: bool, off: bool) -> Option<bool> {
    (on || off).then_some(on)
}

impl MountArgs {
    /// The settings these flags give.
    pub fn config(&self) -> Layer {
        Layer {
            passthrough: switch(self.passthrough, self.no_passthrough),
            read_ahead: switch(self.read_ahead, self.no_read_ahead),
            prefetch: switch(self.prefetch, self.no_prefetch),
            allow_other: switch(self.allow_other, self.no_allow_other),
            request_timeout: self.request_timeout,
            kernel_serve: switch(self.kernel_serve, self.no_kernel_serve),
            io_uring: switch(self.io_uring, self.no_io_uring),
            image_cache_size: self.image_cache_size.map(Size),
            threads: self.threads.map(usize::from),
            gc_auto_size: self.gc.size(),
            ..self.limits.config()
        }
    }
}

/// The mount options the settings give.
fn options(settings: &Settings) -> Options {
    let c = &settings.values;
    let d = Options::default();
    Options {
        read_path: if c.passthrough.unwrap_or(false) {
            ReadPath::Passthrough
        } else {
            ReadPath::Plain
        },
        read_ahead: c.read_ahead.unwrap_or(d.read_ahead),
        allow_other: c.allow_other.unwrap_or(d.allow_other),
        threads: c.threads.unwrap_or(d.threads),
        request_timeout: c.request_timeout.or(d.request_timeout),
        handover: crate::mount::HandoverOptions {
            enabled: c.kernel_serve.unwrap_or(d.handover.enabled),
            cache_size: c.image_cache_size.map(|s| s.0).unwrap_or(d.handover.cache_size),
        },
        uring: c.io_uring.unwrap_or(d.uring),
    }
}

#[derive(clap::Args, Debug)]
pub struct UnmountArgs {
    /// The mount point.
    mountpoint: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    /// Islands to update [default: all].
    names: Vec<String>,
    /// The manifest [default: ./islands.toml].
    #[arg(long, value_name = "PATH")]
    manifest: Option<PathBuf>,
    /// One JSON object per island and line: `name`, `moved`, the `old` and `new` pins (locked
    /// literals; `old` is null for a new island), and the new `rev`, `hash` and `narHash`.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub gc: super::store::AutoGcArgs,
}

/// The manifest to use: the one given, else ./islands.toml if it exists (required: whether
/// the default must exist).
pub fn find_manifest(given: Option<PathBuf>, required: bool) -> Result<Option<Manifest>> {
    let path = match given {
        Some(path) => path,
        None => {
            let default = PathBuf::from("islands.toml");
            if !default.exists() {
                if required {
                    anyhow::bail!("no islands.toml here: create one (name = '<github:owner/repo>') or pass --manifest");
                }
                return Ok(None);
            }
            default
        }
    };
    let path = std::path::absolute(&path).with_context(|| format!("bad path {}", path.display()))?;
    Manifest::read(&path).map(Some)
}

fn print_changes_json(changes: &[crate::pin::Change]) {
    for change in changes {
        let config = &change.new.config;
        let value = serde_json::json!({
            "name": change.name,
            "moved": change.moved(),
            "old": change.old.as_ref().map(|old| old.to_string()),
            "new": change.new.to_string(),
            "rev": config.rev,
            "hash": config.hash.as_ref().map(|h| h.to_string()),
            "narHash": config.nar_hash.as_ref().map(|h| h.to_string()),
        });
        println!("{value}");
    }
}

fn print_changes(changes: &[crate::pin::Change]) {
    let moved: Vec<_> = changes.iter().filter(|c| c.moved()).collect();
    for change in &moved {
        println!("{}", change.describe());
    }
    if moved.is_empty() {
        eprintln!("all {} islands are up to date", changes.len());
    }
}

/// The cab mount running at `mountpoint`, if one is.
fn running_at(store: &crate::store::Store, mountpoint: &Path) -> Result<Option<MountRecord>> {
    let wanted = crate::mount::absolute_mountpoint(mountpoint);
    Ok(store.mounts()?.into_iter().find(|m| m.mountpoint == wanted))
}

/// Tells the running mounts that serve `manifest` that its lock changed (SIGHUP): each
/// moves to the new pins. Returns the pids told.
fn tell_mounts(store: &crate::store::Store, manifest: &Path) -> Vec<u32> {
    let mounts = match store.mounts() {
        Ok(mounts) => mounts,
        Err(e) => {
            tracing::warn!("cannot list the running mounts: {e:#}");
            return Vec::new();
        }
    };
    let mut told = Vec::new();
    for mount in mounts.into_iter().filter(|m| m.manifest.as_deref() == Some(manifest)) {
        // SAFETY: a plain syscall; the pid is a live cab daemon's (its record is locked).
        if unsafe { libc::kill(mount.pid as libc::pid_t, libc::SIGHUP) } == 0 {
            eprintln!(
                "told the mount at {} (pid {}) to move to the new pins",
                mount.mountpoint.display(),
                mount.pid
            );
            told.push(mount.pid);
        }
    }
    told
}

/// `cab mount --update MNT` where a cab mount runs: the pins move, and the mount with them.
fn update_running(args: &MountArgs, running: &MountRecord, settings: &Settings) -> Result<ExitCode> {
    let given = args.manifest.clone().or_else(|| running.manifest.clone());
    let manifest = find_manifest(given, true)?.context("no manifest")?;
    let realizer = super::realizer(settings)?;
    let changes = runtime()?.block_on(crate::pin::update(&realizer, &manifest, &[]))?;
    print_changes(&changes);
    tell_mounts(realizer.store(), &manifest.path);
    Ok(ExitCode::SUCCESS)
}

pub fn mount(args: MountArgs, settings: &Settings) -> Result<ExitCode> {
    if args.daemon {
        let log = args
            .log
            .clone()
            .unwrap_or_else(|| super::service::default_log(&args.mountpoint));
        return super::service::daemonize(&log);
    }
    let store = super::open_store(settings)?;
    if let Some(running) = running_at(&store, &args.mountpoint)? {
        if !args.update {
            anyhow::bail!(
                "{} is mounted by cab already (pid {}): `cab mount --update {}` moves it to new pins, \
                 `cab unmount {}` ends it",
                args.mountpoint.display(),
                running.pid,
                args.mountpoint.display(),
                args.mountpoint.display()
            );
        }
        return update_running(&args, &running, settings);
    }
    let manifest = find_manifest(args.manifest, false)?;
    let realizer = super::realizer(settings)?;
    let store = realizer.store().clone();
    let runtime = runtime()?;
    if args.update {
        let Some(manifest) = &manifest else {
            anyhow::bail!("--update needs a manifest: no islands.toml here, and no --manifest");
        };
        let changes = runtime.block_on(crate::pin::update(&realizer, manifest, &[]))?;
        print_changes(&changes);
    }
    let lock = match &manifest {
        Some(m) => {
            let path = lock_path(&m.path);
            let lock = Lock::read(&path)?;
            if path.exists() {
                crate::collection::register_lock(&store, &path, &lock);
            }
            lock
        }
        None => Lock::default(),
    };
    let count = manifest.as_ref().map(|m| m.islands.len()).unwrap_or(0);
    let manifest_path = manifest.as_ref().map(|m| m.path.clone());
    let islands = Arc::new(
        Islands::new(realizer.clone(), runtime.handle().clone(), manifest, lock)
            .completing_lazy_trees(settings.values.prefetch.unwrap_or(false))
            .with_auto_gc(super::store::auto_gc_limit(settings)),
    );
    let options = options(settings);
    // Recorded in the store, so that `cab update` and `cab mount --update` can reach it.
    let _registered = store.register_mount(
        &crate::mount::absolute_mountpoint(&args.mountpoint),
        manifest_path.as_deref(),
    )?;
    islands.start_completing();
    let absolute = crate::mount::absolute_mountpoint(&args.mountpoint);
    let _control = match crate::mount::control::listen(islands.clone(), &absolute, manifest_path.as_deref()) {
        Ok(control) => Some(control),
        Err(e) => {
            tracing::warn!("`cab status` cannot reach this mount: {e:#}");
            None
        }
    };
    let shown = args.mountpoint.display().to_string();
    let served = crate::mount::serve(islands, &args.mountpoint, &options, &runtime, || {
        eprintln!("mounted {count} islands at {shown} (Ctrl-C or `cab unmount {shown}` to stop)");
        super::service::notify(&format!("READY=1\nSTATUS=serving {count} islands at {shown}"));
    });
    super::service::notify("STOPPING=1");
    served?;
    eprintln!("unmounted {shown}");
    // Trees pushed in the background get a minute to reach the remote.
    let pushed = runtime
        .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(60), realizer.finish_pushes()).await });
    if pushed.is_err() {
        tracing::warn!("some trees were not pushed to the remote before the mount ended");
    }
    // Realizations still running belong to a mount that is gone.
    runtime.shutdown_background();
    Ok(ExitCode::SUCCESS)
}

pub fn unmount(args: UnmountArgs) -> Result<ExitCode> {
    if crate::mount::clear_stale(&args.mountpoint)? {
        eprintln!("cleared the stale mount at {}", args.mountpoint.display());
        return Ok(ExitCode::SUCCESS);
    }
    crate::mount::unmount(&args.mountpoint, false)?;
    Ok(ExitCode::SUCCESS)
}

pub fn update(args: UpdateArgs, settings: &Settings) -> Result<ExitCode> {
    let manifest = find_manifest(args.manifest, true)?.context("no manifest")?;
    let realizer = super::realizer(settings)?;
    let changes = runtime()?.block_on(crate::pin::update(&realizer, &manifest, &args.names))?;
    tell_mounts(realizer.store(), &manifest.path);
    if args.json {
        print_changes_json(&changes);
    } else {
        print_changes(&changes);
    }
    eprintln!("wrote {}", display(&lock_path(&manifest.path)));
    super::store::auto_gc(settings, realizer.store());
    Ok(ExitCode::SUCCESS)
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
