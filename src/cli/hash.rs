//! `cab hash PATH`: both hashes of a tree on disk, without storing it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::hash::{NarHashStyle, hash_path};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The tree to hash: a directory, file or symlink (symlinks are hashed, not followed).
    path: PathBuf,

    /// Print `{"narHash": …, "hash": …}` instead of two lines.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    style: StyleArgs,
}

/// How to print the NAR hash; the flags are Nix's own.
#[derive(clap::Args, Debug)]
#[group(multiple = false)]
pub struct StyleArgs {
    /// Print the NAR hash as SRI `sha256-<base64>` (the default).
    #[arg(long)]
    sri: bool,
    /// Print the NAR hash in Nix's base-32.
    #[arg(long)]
    base32: bool,
    /// Print the NAR hash in base-16.
    #[arg(long)]
    base16: bool,
    /// Print the NAR hash in base-64.
    #[arg(long)]
    base64: bool,
}

impl StyleArgs {
    pub fn style(&self) -> NarHashStyle {
        match (self.base32, self.base16, self.base64) {
            (true, _, _) => NarHashStyle::Base32,
            (_, true, _) => NarHashStyle::Base16,
            (_, _, true) => NarHashStyle::Base64,
            _ => NarHashStyle::Sri,
        }
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let hashed = hash_path(&args.path)?;
    super::print_hashes(&hashed.nar, &hashed.tree, args.style.style(), args.json);
    Ok(ExitCode::SUCCESS)
}
