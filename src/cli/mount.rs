//! `cab mount`, `cab unmount` and `cab update`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::fetch::{LimitArgs, runtime};
use crate::lock::{Lock, Manifest, lock_path};
use crate::mount::{Islands, Options, ReadPath};

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
    /// Have the kernel read files straight from the store (FUSE passthrough; root on Linux
    /// 6.9+). Faster for large files and mmap, slower for source trees: every open and close
    /// of a file then costs a round trip to cab, which the default read path avoids.
    #[arg(long)]
    passthrough: bool,
    /// Complete every tree served from the remote store in the background (files are
    /// otherwise fetched when first read), publishing it in the store once whole.
    #[arg(long)]
    prefetch: bool,
    /// Do not push a directory's small files into the page cache when one of them is first
    /// read (read-ahead by directory, on by default with the default read path).
    #[arg(long)]
    no_read_ahead: bool,
    /// The default read path (kept for scripts written when passthrough was the default).
    #[arg(long, hide = true, conflicts_with = "passthrough")]
    no_passthrough: bool,
    /// The FUSE request timeout to declare to the kernel, in seconds (Linux 6.14+; capped by
    /// /proc/sys/fs/fuse/max_request_timeout) [default: the kernel's default_request_timeout].
    /// Requests waiting for a fetch are answered EAGAIN before it runs out.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u16).range(1..))]
    request_timeout: Option<u16>,
    /// Let other users see the mount (needs user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    allow_other: bool,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    gc: super::store::AutoGcArgs,
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
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    gc: super::store::AutoGcArgs,
}

/// The manifest to use: the one given, else ./islands.toml if it exists (required: whether
/// the default must exist).
fn find_manifest(given: Option<PathBuf>, required: bool) -> Result<Option<Manifest>> {
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

fn print_changes(changes: &[crate::pin::Change]) {
    let moved: Vec<_> = changes.iter().filter(|c| c.moved()).collect();
    for change in &moved {
        println!("{}", change.describe());
    }
    if moved.is_empty() {
        eprintln!("all {} islands are up to date", changes.len());
    }
}

pub fn mount(args: MountArgs, globals: &super::Globals) -> Result<ExitCode> {
    let manifest = find_manifest(args.manifest, false)?;
    let realizer = Arc::new(globals.realizer(args.limits.limits())?);
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
                crate::gc::register_lock(&store, &path, &lock);
            }
            lock
        }
        None => Lock::default(),
    };
    let count = manifest.as_ref().map(|m| m.islands.len()).unwrap_or(0);
    let islands = Arc::new(
        Islands::new(realizer.clone(), runtime.handle().clone(), manifest, lock)
            .with_prefetch(args.prefetch)
            .with_auto_gc(args.gc.limit()),
    );
    let options = Options {
        read_path: if args.passthrough {
            ReadPath::Passthrough
        } else {
            ReadPath::Plain
        },
        read_ahead: !args.no_read_ahead,
        allow_other: args.allow_other,
        threads: args.threads,
        request_timeout: args.request_timeout,
    };
    islands.start_prefetching();
    let shown = args.mountpoint.display().to_string();
    crate::mount::serve(islands, &args.mountpoint, &options, &runtime, || {
        eprintln!("mounted {count} islands at {shown} (Ctrl-C or `cab unmount {shown}` to stop)");
    })?;
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

pub fn update(args: UpdateArgs, globals: &super::Globals) -> Result<ExitCode> {
    let manifest = find_manifest(args.manifest, true)?.context("no manifest")?;
    let realizer = Arc::new(globals.realizer(args.limits.limits())?);
    let changes = runtime()?.block_on(async {
        let changes = crate::pin::update(&realizer, &manifest, &args.names).await;
        realizer.finish_pushes().await;
        changes
    })?;
    print_changes(&changes);
    eprintln!("wrote {}", display(&lock_path(&manifest.path)));
    args.gc.run(realizer.store());
    Ok(ExitCode::SUCCESS)
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
