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
    Ls,
    /// Print the store's directory.
    Path,
}

fn parse_hash(text: &str) -> Result<TreeHash> {
    text.parse().with_context(|| format!("`{text}` is not a tree hash"))
}

pub fn run(command: Command, settings: &Settings) -> Result<ExitCode> {
    let store = super::open_store(settings)?;
    match command {
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
        Command::Ls => {
            for tree in store.roots()? {
                println!("{tree}");
            }
        }
        Command::Path => println!("{}", display(store.root())),
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
