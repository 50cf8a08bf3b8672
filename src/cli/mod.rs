//! The `cab` command line: argument parsing, logging set-up and one module per subcommand.
//! Each subcommand is thin: it parses, calls the library, and prints.

mod doctor;
mod fetch;
mod hash;
mod interop;
mod mount;
mod realize;
mod service;
mod shell;
mod status;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::{Layer, Settings};
use crate::realizer::Realizer;
use crate::store::remote::nix::{CacheWriter, SecretKey};
use crate::store::remote::{Remote, Timeouts};

/// Cab islands: pinned source trees, fetched lazily, stored by content, served read-only.
#[derive(Parser, Debug)]
#[command(name = "cab", version, about, long_about = None, propagate_version = true, after_help = EXIT_CODES)]
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

    /// The configuration file [default: $XDG_CONFIG_HOME/cab/config.toml, or
    /// ~/.config/cab/config.toml, if it exists].
    #[arg(long, global = true, env = "CAB_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// A remote store shared with other machines, asked before any forge (CAB_REMOTE):
    /// s3://BUCKET?endpoint=URL&region=REGION, file:///DIR, or http(s)://URL (read-only).
    /// S3 credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials.
    #[arg(long, global = true, value_name = "URL")]
    remote: Option<String>,

    /// Push every tree realized to the remote, in the background (CAB_PUSH=1).
    #[arg(long, global = true)]
    push: bool,

    /// Sign the Nix binary cache entries pushed to the remote with this secret key (as
    /// `nix-store --generate-binary-cache-key` writes it) (CAB_NIX_SECRET_KEY).
    #[arg(long, global = true, value_name = "FILE")]
    nix_secret_key: Option<PathBuf>,

    /// Realize derivations here (`local`) or on another machine over ssh
    /// (ssh://[USER@]HOST[:PORT][?program=PATH&jobs=N]); repeat for a list, tried in order,
    /// `local` last unless listed (CAB_REALIZERS).
    #[arg(long = "realizer", global = true, value_name = "URI")]
    realizers: Vec<String>,

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
    /// Add the pins of a flake.lock, an npins or a niv sources.json to ./islands.toml and its
    /// lock, each realized and checked (same commit, same narHash) first.
    Import(interop::ImportArgs),
    /// Write the pinned islands out for another tool.
    #[command(subcommand)]
    Export(interop::ExportCommand),
    /// Serve as a realizer for other machines: what `--realizer ssh://…` runs over ssh.
    Realize(realize::RealizeArgs),
    /// Check what cab depends on (FUSE, the kernel, the store, the remote, tokens) and say how
    /// to fix what is wrong; exit code 0 when all is well.
    Doctor(doctor::DoctorArgs),
    /// What each running mount serves and is doing: islands and how they are served, fetches
    /// in flight, failures and when they are tried again, pushes pending.
    Status(status::StatusArgs),
    /// Print the shell completion script for bash, zsh or fish.
    Completions(shell::CompletionsArgs),
    /// Print the manual page, cab(1) (or write one per command with --dir).
    Man(shell::ManArgs),
}

impl Command {
    /// The settings this command's flags give (the command line's layer of the settings).
    fn flags(&self) -> Layer {
        match self {
            Command::Fetch(args) => Layer {
                gc_auto_size: args.gc.size(),
                ..args.limits.config()
            },
            Command::Mount(args) => args.config(),
            Command::Update(args) => Layer {
                gc_auto_size: args.gc.size(),
                ..args.limits.config()
            },
            Command::Import(args) => args.limits.config(),
            Command::Realize(args) => args.limits.config(),
            _ => Layer::default(),
        }
    }
}

/// A usage error: the command line or the configuration is wrong, and nothing was done (clap
/// exits with the same code for the command line's own errors).
const USAGE: u8 = 2;

/// What `cab --help` says of the exit codes (README.md says the same).
const EXIT_CODES: &str = "Exit codes:
  0  success
  1  failure: the message says what failed and where (island, path, URL)
  2  usage error: a bad flag, configuration file or environment variable; nothing was done";

/// The command line as cab reads it (a `mount.fuse3` helper line already translated), for
/// `--daemon` to run again.
static COMMAND_LINE: std::sync::OnceLock<Vec<std::ffi::OsString>> = std::sync::OnceLock::new();

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let subcommands: Vec<String> = <Cli as clap::CommandFactory>::command()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    let line = service::from_mount_helper(&args, &subcommands).unwrap_or(args);
    let cli = Cli::parse_from(&line);
    let _ = COMMAND_LINE.set(line);
    init_logging(cli.verbose, cli.quiet);
    // These need no settings: a broken configuration file must not keep a shell from starting.
    let command = match cli.command {
        Command::Completions(args) => return finish(shell::completions(args)),
        Command::Man(args) => return finish(shell::man(args)),
        command => command,
    };
    let flags = Layer {
        store: cli.store.clone(),
        remote: cli.remote.clone(),
        push: cli.push.then_some(true),
        nix_secret_key: cli.nix_secret_key.clone(),
        realizers: (!cli.realizers.is_empty()).then(|| cli.realizers.clone()),
        ..command.flags()
    };
    let settings = match Settings::load(cli.config.clone(), flags).and_then(|s| s.check().map(|()| s)) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(USAGE);
        }
    };
    let result = match command {
        Command::Hash(args) => hash::run(args),
        Command::Store(command) => store::run(command, &settings),
        Command::Fetch(args) => fetch::fetch(args, &settings),
        Command::Mount(args) => mount::mount(args, &settings),
        Command::Unmount(args) => mount::unmount(args),
        Command::Update(args) => mount::update(args, &settings),
        Command::Derivation(args) => fetch::derivation(args, &settings),
        Command::Import(args) => interop::import(args, &settings),
        Command::Export(command) => interop::export(command, &settings),
        Command::Realize(args) => realize::realize(args, &settings),
        Command::Doctor(args) => doctor::doctor(args, &settings),
        Command::Status(args) => status::status(args, &settings),
        Command::Completions(_) | Command::Man(_) => unreachable!("answered above"),
    };
    finish(result)
}

/// The exit code of a command's result, its error printed.
fn finish(result: Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the store the settings name.
fn open_store(settings: &Settings) -> Result<crate::store::Store> {
    crate::store::Store::open(&settings.store()?)
}

/// The remote store the settings name, if any (an empty `remote` is none), giving up on it
/// after `timeouts` (then the forge is asked).
fn remote(settings: &Settings, timeouts: Timeouts) -> Result<Option<Remote>> {
    settings
        .values
        .remote
        .as_deref()
        .filter(|url| !url.is_empty())
        .map(|url| Remote::open(url, timeouts).with_context(|| format!("cannot use the remote `{url}`")))
        .transpose()
}

/// The Nix binary cache entries pushes write, signed with `nix-secret-key` if it is set.
fn nix_cache(settings: &Settings) -> Result<CacheWriter> {
    let key = settings
        .values
        .nix_secret_key
        .as_deref()
        .map(SecretKey::read)
        .transpose()?;
    Ok(CacheWriter::new(key))
}

/// A realizer over the settings' store, with their forges, limits and credentials, the
/// remote (pushing to it too with `push`) when one is set, and the realizers to hand
/// derivations to.
fn realizer(settings: &Settings) -> Result<Arc<Realizer>> {
    let realizer = local_realizer(settings, settings.values.push.unwrap_or(false))?;
    Ok(Arc::new(realizer.with_realizers(settings.realizers()?)))
}

/// A realizer that realizes everything on this machine, pushing to the remote with `push`.
fn local_realizer(settings: &Settings, push: bool) -> Result<Realizer> {
    let limits = settings.limits();
    // A remote that sends nothing gives way to the forge within the stall timeout (at most
    // half a minute: it is a shortcut, not the source).
    let timeouts = Timeouts {
        stall: limits.stall.min(std::time::Duration::from_secs(30)),
        ..Default::default()
    };
    let remote = remote(settings, timeouts)?;
    let mut realizer = Realizer::new(open_store(settings)?, settings.forges(), limits)?
        .with_credentials(settings.credentials()?)
        .with_features(settings.values.features.as_deref().unwrap_or_default());
    if let Some(remote) = remote {
        let push = if push { Some(nix_cache(settings)?) } else { None };
        realizer = realizer.with_remote(remote, push);
    }
    Ok(realizer)
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
    // Colours only for a person at a terminal: logs that go to a file, a journal or (from
    // `cab realize --stdio`) back over ssh into another machine's log stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
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
