//! The `cab` command line: argument parsing, logging set-up and one module per subcommand.
//! Each subcommand is thin: it parses, calls the library, and prints.

mod fetch;
mod hash;
mod mount;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Cab islands: pinned source trees, fetched lazily, stored by content, served read-only.
#[derive(Parser, Debug)]
#[command(name = "cab", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More log output (repeat for more: -v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// The store directory [default: $XDG_CACHE_HOME/cab/store, or ~/.cache/cab/store].
    #[arg(long, global = true, env = "CAB_STORE", value_name = "DIR")]
    store: Option<PathBuf>,

    /// A remote store shared with other machines, asked before any forge:
    /// s3://BUCKET?endpoint=URL&region=REGION, file:///DIR, or http(s)://URL (read-only).
    /// S3 credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials.
    #[arg(long, global = true, env = "CAB_REMOTE", value_name = "URL")]
    remote: Option<String>,

    /// Push every tree realized to the remote, in the background.
    #[arg(long, global = true, env = "CAB_PUSH")]
    push: bool,

    /// Sign the Nix binary cache entries pushed to the remote with this secret key (as
    /// `nix-store --generate-binary-cache-key` writes it).
    #[arg(long, global = true, env = "CAB_NIX_SECRET_KEY", value_name = "FILE")]
    nix_secret_key: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a tree's NAR hash (as `nix hash path` prints it) and its Cab tree hash.
    Hash(hash::Args),
    /// Fetch islands into the store and print each one fully locked.
    Fetch(fetch::FetchArgs),
    /// Print the derivation an island becomes (toDerivation), as JSON.
    Derivation(fetch::DerivationArgs),
    /// Mount the islands of ./islands.toml (and GitHub browsing, and every stored tree)
    /// read-only at MOUNTPOINT; islands are fetched when first looked at.
    Mount(mount::MountArgs),
    /// Unmount a cab mount (also clears one left stale by a daemon that died).
    Unmount(mount::UnmountArgs),
    /// Re-resolve the islands of ./islands.toml (all, or those named) and rewrite the lock.
    Update(mount::UpdateArgs),
    /// Work with the local store: add, export, verify and list trees; collect garbage, show
    /// where the bytes are, keep trees by hand.
    #[command(subcommand)]
    Store(store::Command),
}

/// What every command may need: where the store is, and the remote.
pub struct Globals {
    store: Option<PathBuf>,
    remote: Option<String>,
    push: bool,
    nix_secret_key: Option<PathBuf>,
}

impl Globals {
    /// The store.
    fn store(&self) -> anyhow::Result<crate::store::Store> {
        store::open(self.store.clone())
    }

    /// The remote, if one is configured.
    fn remote(&self) -> anyhow::Result<Option<crate::store::remote::Remote>> {
        self.remote_within(crate::store::remote::Timeouts::default())
    }

    /// The remote, giving up on it after `timeouts` (then the forge is asked).
    fn remote_within(
        &self,
        timeouts: crate::store::remote::Timeouts,
    ) -> anyhow::Result<Option<crate::store::remote::Remote>> {
        use anyhow::Context;
        self.remote
            .as_deref()
            .map(|url| {
                crate::store::remote::Remote::open(url, timeouts)
                    .with_context(|| format!("cannot use the remote `{url}`"))
            })
            .transpose()
    }

    /// The Nix binary cache settings pushes write with.
    fn nix_cache(&self) -> anyhow::Result<crate::store::remote::nix::CacheWriter> {
        let key = self
            .nix_secret_key
            .as_deref()
            .map(crate::store::remote::nix::SecretKey::read)
            .transpose()?;
        Ok(crate::store::remote::nix::CacheWriter::new(key))
    }

    /// A realizer over the store, with the remote (and pushing) when configured.
    fn realizer(&self, limits: crate::realizer::Limits) -> anyhow::Result<crate::realizer::Realizer> {
        // A remote that sends nothing gives way to the forge within the stall timeout (at most
        // half a minute: it is a shortcut, not the source).
        let timeouts = crate::store::remote::Timeouts {
            stall: limits.stall.min(std::time::Duration::from_secs(30)),
            ..Default::default()
        };
        let remote = self.remote_within(timeouts)?;
        let realizer = crate::realizer::Realizer::new(self.store()?, &fetch::github_url(), limits)?;
        Ok(match remote {
            Some(remote) => {
                let push = if self.push { Some(self.nix_cache()?) } else { None };
                realizer.with_remote(remote, push)
            }
            None => realizer,
        })
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let globals = Globals {
        store: cli.store,
        remote: cli.remote.filter(|r| !r.is_empty()),
        push: cli.push,
        nix_secret_key: cli.nix_secret_key,
    };
    let result = match cli.command {
        Command::Hash(args) => hash::run(args),
        Command::Store(command) => store::run(command, &globals),
        Command::Fetch(args) => fetch::fetch(args, &globals),
        Command::Mount(args) => mount::mount(args, &globals),
        Command::Unmount(args) => mount::unmount(args),
        Command::Update(args) => mount::update(args, &globals),
        Command::Derivation(args) => fetch::derivation(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    // `RUST_LOG` still wins, for targeted debugging.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("cab={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Prints a tree's two hashes the way `cab hash` and `cab store add` do.
fn print_hashes(
    nar: &crate::hash::NarHash,
    tree: &crate::hash::TreeHash,
    style: crate::hash::NarHashStyle,
    json: bool,
) {
    if json {
        let value = serde_json::json!({ "narHash": nar.to_string(), "hash": tree.to_string() });
        println!("{value}");
    } else {
        println!("{}", nar.display(style));
        println!("{tree}");
    }
}
