//! `cab store …`: add, export, verify and list trees in the local store.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::config::Settings;
use crate::hash::TreeHash;
use crate::store::{Ingest, Store};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Add a local tree (directory, file or symlink) and print its NAR hash and tree hash.
    Add {
        /// The tree to add.
        path: PathBuf,
        /// Print `{"narHash": …, "hash": …}` instead of two lines.
        #[arg(long)]
        json: bool,
    },
    /// Write a stored tree out as ordinary files; DIR must not exist yet.
    Export {
        /// The tree hash, `blake3-…`.
        hash: String,
        /// Where to write it.
        dir: PathBuf,
    },
    /// Re-hash every object in the store; exits non-zero and names each corrupt object.
    Verify,
    /// List every published tree by its hash.
    Ls {
        /// One JSON object per line: `{"hash": …, "narHash": …}`.
        #[arg(long)]
        json: bool,
    },
    /// Print the store's directory.
    Path,
    /// Upload trees the remote (--remote) lacks, with their index entries and a Nix binary
    /// cache entry each: by tree hash, or by island name (from the manifest's lock); every
    /// pin of the lock when none is named.
    Push {
        /// Tree hashes (`blake3-…`) or island names.
        #[arg(value_name = "HASH|NAME")]
        items: Vec<String>,
        /// The manifest whose lock names the islands [default: ./islands.toml].
        #[arg(long, value_name = "PATH")]
        manifest: Option<PathBuf>,
    },
}

fn parse_hash(text: &str) -> Result<TreeHash> {
    text.parse().with_context(|| format!("`{text}` is not a tree hash"))
}

pub fn run(command: Command, settings: &Settings) -> Result<ExitCode> {
    let store = super::open_store(settings)?;
    match command {
        Command::Push { items, manifest } => return push(&store, settings, items, manifest),
        Command::Add { path, json } => {
            let progress = crate::realizer::progress::Progress::new(&path.display().to_string(), true);
            let added = store.ingest(&path, Ingest::Copy, Some(&|size| progress.ingested(size)));
            progress.finish();
            let added = added?;
            store.publish(&added.tree, &added.nar)?;
            super::print_hashes(&added.nar, &added.tree, Default::default(), json);
        }
        Command::Export { hash, dir } => {
            let tree = parse_hash(&hash)?;
            store.export(&tree, &dir)?;
        }
        Command::Verify => return verify(&store),
        Command::Ls { json } => {
            for tree in store.roots()? {
                if !json {
                    println!("{tree}");
                    continue;
                }
                // A tree gc deleted since roots() listed it is simply no longer there.
                let Some(published) = store.published(&tree)? else {
                    continue;
                };
                let value = serde_json::json!({
                    "hash": tree.to_string(),
                    "narHash": published.nar.to_string(),
                });
                println!("{value}");
            }
        }
        Command::Path => println!("{}", display(store.root())),
    }
    Ok(ExitCode::SUCCESS)
}

/// The trees `items` name: hashes as they are, names through the manifest's lock.
fn trees_to_push(items: &[String], manifest: Option<PathBuf>) -> Result<Vec<(String, TreeHash)>> {
    let manifest_path = manifest.unwrap_or_else(|| PathBuf::from("islands.toml"));
    let lock = || -> Result<crate::lock::Lock> {
        let path = crate::lock::lock_path(&manifest_path);
        if !path.exists() {
            anyhow::bail!(
                "no {} to find island names in (pass tree hashes, or --manifest)",
                path.display()
            );
        }
        crate::lock::Lock::read(&path)
    };
    let hash_of = |name: &str, pin: &crate::lock::Pin| {
        pin.locked
            .config
            .hash
            .with_context(|| format!("`{name}` is not pinned to a tree in the lock"))
    };
    if items.is_empty() {
        let lock = lock()?;
        return lock
            .pins
            .iter()
            .map(|(name, pin)| Ok((name.clone(), hash_of(name, pin)?)))
            .collect();
    }
    let mut out = Vec::new();
    let mut pins = None;
    for item in items {
        if let Ok(tree) = item.parse::<TreeHash>() {
            out.push((item.clone(), tree));
            continue;
        }
        if pins.is_none() {
            pins = Some(lock()?);
        }
        let pin = pins
            .as_ref()
            .and_then(|lock| lock.pins.get(item))
            .with_context(|| format!("`{item}` is neither a tree hash nor an island in the lock"))?;
        out.push((item.clone(), hash_of(item, pin)?));
    }
    Ok(out)
}

fn push(store: &Store, settings: &Settings, items: Vec<String>, manifest: Option<PathBuf>) -> Result<ExitCode> {
    let remote = super::remote(settings, Default::default())?
        .context("no remote to push to: pass --remote URL, set CAB_REMOTE or `remote` in the config file")?;
    let cache = super::nix_cache(settings)?;
    let trees = trees_to_push(&items, manifest)?;
    let runtime = super::fetch::runtime()?;
    let mut failed = 0;
    for (what, tree) in trees {
        match runtime.block_on(remote.push(store, &tree, Some(&cache))) {
            Ok(pushed) if pushed.already => println!("{what}: {tree} is on {remote} already"),
            Ok(pushed) => println!(
                "{what}: pushed {tree} ({} objects, {} bytes, of which {} for the Nix binary cache)",
                pushed.objects, pushed.bytes, pushed.nix_bytes
            ),
            Err(e) => {
                failed += 1;
                eprintln!("error: {what}: cannot push {tree} to {remote}: {e:#}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} trees were not pushed");
    }
    Ok(ExitCode::SUCCESS)
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn verify(store: &Store) -> Result<ExitCode> {
    let report = store.verify()?;
    for c in &report.corrupt {
        println!("corrupt {} {}: {} ({})", c.kind, c.name, c.problem, c.path.display());
    }
    let summary = format!(
        "checked {} blobs, {} tree objects, {} published trees, {} index entries",
        report.blobs, report.objects, report.roots, report.index
    );
    if report.corrupt.is_empty() {
        println!("{summary}: all good");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{summary}: {} problems", report.corrupt.len());
        Ok(ExitCode::FAILURE)
    }
}
