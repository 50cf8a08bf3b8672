//! `cab import FILE` and `cab export nix`: pins from Nix's tools, and pins for Nix.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::fetch::{LimitArgs, runtime};
use super::mount::find_manifest;
use crate::config::Settings;
use crate::interop::{NixIsland, read_lock_file, render_nix_file};
use crate::island::{Config, Format, Island};
use crate::lock::{Lock, lock_path};

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// A flake.lock, an npins sources.json (npins/sources.json) or a niv sources.json
    /// (nix/sources.json).
    file: PathBuf,
    /// The manifest to add the islands to; the lock is written beside it [default:
    /// ./islands.toml].
    #[arg(long, value_name = "PATH")]
    manifest: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum ExportCommand {
    /// Write a Nix file whose attributes fetch every island with Nix's own fetchers, from the
    /// URLs cab fetches it from, checked against the pinned narHash.
    Nix(ExportNixArgs),
}

#[derive(clap::Args, Debug)]
pub struct ExportNixArgs {
    /// The manifest whose pinned islands to export [default: ./islands.toml].
    #[arg(long, value_name = "PATH")]
    manifest: Option<PathBuf>,
    /// Write the file here instead of to standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn import(args: ImportArgs, settings: &Settings) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let absolute = std::path::absolute(&args.file).with_context(|| format!("bad path {}", args.file.display()))?;
    let base = absolute.parent().unwrap_or(Path::new("/"));
    let plan = read_lock_file(&text, base).with_context(|| format!("{}", args.file.display()))?;
    for skipped in &plan.skipped {
        eprintln!("not imported: {}: {}", skipped.name, skipped.why);
    }
    if plan.imported.is_empty() {
        bail!("{}: nothing to import", args.file.display());
    }
    let manifest = match args.manifest {
        Some(path) => path,
        None => PathBuf::from("islands.toml"),
    };
    let manifest = std::path::absolute(&manifest).with_context(|| format!("bad path {}", manifest.display()))?;
    let realizer = super::realizer(settings)?;
    let pins = runtime()?.block_on(crate::pin::import(&realizer, &manifest, &plan.imported))?;
    for (pin, entry) in pins.iter().zip(&plan.imported) {
        println!("{}: {}", pin.name, pin.pin.locked);
        if let Some(note) = &entry.note {
            eprintln!("note: {}: {note}", pin.name);
        }
    }
    let skipped = match plan.skipped.len() {
        0 => String::new(),
        n => format!(" ({n} not imported: see above)"),
    };
    eprintln!(
        "imported {} islands from {} ({}) into {} and {}{skipped}",
        pins.len(),
        args.file.display(),
        plan.tool,
        manifest.display(),
        lock_path(&manifest).display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn export(command: ExportCommand, settings: &Settings) -> Result<ExitCode> {
    let ExportCommand::Nix(args) = command;
    let manifest = find_manifest(args.manifest, true)?.context("no manifest")?;
    let lock = Lock::read(&lock_path(&manifest.path))?;
    let mut islands = Vec::new();
    let mut unpinned = Vec::new();
    for (name, island) in &manifest.islands {
        match lock.current(name, island) {
            Some(pin) => islands.push(NixIsland {
                name: name.clone(),
                locked: pin.locked.clone(),
                whole_nar: None,
            }),
            None => unpinned.push(name.as_str()),
        }
    }
    if !unpinned.is_empty() {
        bail!(
            "not pinned in {}: {} (run `cab update` first: the export writes only pinned trees)",
            lock_path(&manifest.path).display(),
            unpinned.join(", ")
        );
    }
    whole_hashes(&mut islands, settings)?;
    let text = render_nix_file(&islands, &settings.forges())?;
    match args.output {
        Some(path) => {
            write_file(&path, &text)?;
            eprintln!("wrote {} ({} islands)", path.display(), islands.len());
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// For islands with a subpath, the narHash of the whole tree Nix fetches: realized from the
/// store (a pinned commit's tree is found there without the network; a tarball is fetched).
fn whole_hashes(islands: &mut [NixIsland], settings: &Settings) -> Result<()> {
    let wanted: Vec<usize> = (0..islands.len())
        .filter(|&i| islands[i].locked.subpath.is_some() && islands[i].locked.format != Format::Fs)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let realizer = super::realizer(settings)?;
    runtime()?.block_on(async {
        for i in wanted {
            let locked = &islands[i].locked;
            let whole = Island {
                config: Config {
                    host: locked.config.host.clone(),
                    r#ref: locked.config.r#ref.clone(),
                    rev: locked.config.rev.clone(),
                    ..Config::default()
                },
                subpath: None,
                ..locked.clone()
            };
            let (realized, _) = crate::pin::realize(&realizer, &whole)
                .await
                .with_context(|| format!("island `{}`: cannot find its whole tree", islands[i].name))?;
            islands[i].whole_nar = Some(realized.nar);
        }
        Ok(())
    })
}

/// Writes `text` to `path` through a temporary file beside it, so a reader never sees half.
fn write_file(path: &Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}
