//! `cab store …`: add, export, verify and list trees in the local store; collect its garbage,
//! show where its bytes are, and manage the roots that keep trees.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use crate::config::Settings;
use crate::hash::TreeHash;
use crate::store::{Ingest, Policy, RootKind, Store};

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
    /// Delete every tree, blob and index entry no root reaches (roots: the pins of every
    /// islands.lock cab has used here, trees running mounts and fetches use, and roots added
    /// with `cab store root add`). Safe while mounts serve and fetches run.
    Gc(GcArgs),
    /// Show where the store's bytes are: per root and per unrooted tree, shared bytes counted
    /// once in every total.
    Du {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Keep trees by hand, and list what keeps trees.
    #[command(subcommand)]
    Root(RootCommand),
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

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// Only say what would be deleted, and how many bytes that frees.
    #[arg(long)]
    dry_run: bool,
    /// Also keep unrooted trees, most recently used first, while the store fits in SIZE
    /// (e.g. 20G); the least recently used go first.
    #[arg(long, value_name = "SIZE", value_parser = crate::config::parse_size)]
    keep_size: Option<u64>,
    /// Only delete unrooted trees unused for this long (e.g. 30d, 12h, 90m).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    older_than: Option<Duration>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum RootCommand {
    /// Keep a stored tree until the root is removed.
    Add {
        /// The tree hash, `blake3-…`.
        hash: String,
        /// The root's name [default: the tree's hex digits].
        #[arg(long)]
        name: Option<String>,
    },
    /// List every root: registered locks' pins, hand-made roots, trees of running processes.
    Ls {
        /// One JSON object per root per line.
        #[arg(long)]
        json: bool,
    },
    /// Remove a hand-made root by name, or forget a registered islands.lock by its path.
    Rm {
        /// The root's name, or the lock's path.
        name: String,
    },
}

/// Collecting automatically when the store grows past a size (for the commands that fetch):
/// the flag of the setting `gc-auto-size`.
#[derive(clap::Args, Debug, Clone)]
pub struct AutoGcArgs {
    /// After fetching, collect garbage if the store holds more than SIZE (e.g. 20G): down to
    /// 80% of it, the least recently used unrooted trees first.
    #[arg(long, value_name = "SIZE", value_parser = crate::config::parse_size)]
    gc_auto_size: Option<u64>,
}

impl AutoGcArgs {
    /// The setting this flag gives.
    pub fn size(&self) -> Option<crate::config::Size> {
        self.gc_auto_size.map(crate::config::Size)
    }
}

/// Collects if the store has outgrown the `gc-auto-size` setting (a no-op without one).
pub fn auto_gc(settings: &Settings, store: &Store) {
    if let Some(limit) = auto_gc_limit(settings) {
        crate::collection::auto(store, limit);
    }
}

/// The `gc-auto-size` setting, in bytes.
pub fn auto_gc_limit(settings: &Settings) -> Option<u64> {
    settings.values.gc_auto_size.map(|size| size.0)
}

/// Parses `30d`, `12h`, `90m`, `45s`, `2w`.
fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not an age like 30d, 12h or 90m"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use s, m, h, d or w)")),
    };
    Ok(Duration::from_secs(n.saturating_mul(seconds)))
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
            let added = store.add_path(&path, Ingest::Copy, Some(&|size| progress.ingested(size)));
            progress.finish();
            let added = added?;
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
        Command::Gc(args) => gc(&store, args)?,
        Command::Du { json } => du(&store, json)?,
        Command::Root(command) => root(&store, command)?,
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
        "checked {} blobs, {} tree objects, {} published trees, {} index entries, {} image files",
        report.blobs, report.objects, report.roots, report.index, report.images
    );
    if report.corrupt.is_empty() {
        println!("{summary}: all good");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{summary}: {} problems", report.corrupt.len());
        Ok(ExitCode::FAILURE)
    }
}

/// Bytes for people: powers of 1024, as sizes are given on the command line.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `1 tree`, `2 trees`.
fn count(n: impl Into<u64>, what: &str) -> String {
    let n = n.into();
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// How long ago, roughly: `3 d ago`.
fn ago(at: Option<SystemTime>) -> String {
    let Some(age) = at.and_then(|t| SystemTime::now().duration_since(t).ok()) else {
        return "never".into();
    };
    let s = age.as_secs();
    match s {
        0..120 => format!("{s} s ago"),
        120..7200 => format!("{} min ago", s / 60),
        7200..172_800 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

fn unix_seconds(at: Option<SystemTime>) -> Option<u64> {
    at.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

fn gc(store: &Store, args: GcArgs) -> Result<()> {
    let policy = Policy {
        dry_run: args.dry_run,
        keep_size: args.keep_size,
        older_than: args.older_than,
        module_tag: None,
    };
    let done = crate::collection::collect(store, policy)?;
    if args.json {
        let trees: Vec<_> = done
            .trees
            .iter()
            .map(|t| {
                serde_json::json!({
                    "hash": t.tree.to_string(),
                    "lastUsed": unix_seconds(t.last_used),
                    "alone": t.alone,
                })
            })
            .collect();
        let value = serde_json::json!({
            "dryRun": done.dry_run,
            "trees": trees,
            "objects": done.objects,
            "bytes": done.bytes,
            "keptTrees": done.kept_trees,
            "rootedTrees": done.rooted_trees,
            "keptBytes": done.kept_bytes,
            "indexEntries": done.index_entries,
            "modules": done.modules,
            "moduleBytes": done.module_bytes,
            "lockFiles": done.lock_files,
            "windows": done.windows,
            "longestWindowMs": done.longest_window.as_secs_f64() * 1e3,
        });
        println!("{value}");
        return Ok(());
    }
    let verb = if done.dry_run { "would delete" } else { "deleted" };
    for tree in &done.trees {
        println!(
            "{verb} {} (last used {}; {} only it holds)",
            tree.tree,
            ago(tree.last_used),
            human(tree.alone)
        );
    }
    println!(
        "{verb} {} and {}: {} ({} bytes){}; kept {} ({} rooted), {}",
        count(done.trees.len() as u64, "tree"),
        count(done.objects, "object"),
        human(done.bytes),
        done.bytes,
        if done.modules > 0 {
            format!(
                ", and {} of other wasmtime versions ({})",
                count(done.modules, "compiled module"),
                human(done.module_bytes)
            )
        } else {
            String::new()
        },
        count(done.kept_trees as u64, "tree"),
        done.rooted_trees,
        human(done.kept_bytes)
    );
    if done.missing_objects > 0 {
        eprintln!(
            "note: {} tree objects that roots name are not in this store (pins not fetched here yet, \
             or damage: `cab store verify` tells)",
            done.missing_objects
        );
    }
    Ok(())
}

/// How a root is written for people: `lock /p/islands.lock cab`, `manual NAME`, `live pid 42 (…)`.
fn describe(kind: &RootKind) -> String {
    match kind {
        RootKind::Lock { lock, island, whole } => format!(
            "lock {} {island}{}",
            lock.display(),
            if *whole { " (whole tree of its subpath)" } else { "" }
        ),
        RootKind::Manual { name } => format!("manual {name}"),
        RootKind::Live { pid, command } => format!("live pid {pid} ({command})"),
    }
}

fn kind_json(kind: &RootKind) -> serde_json::Value {
    match kind {
        RootKind::Lock { lock, island, whole } => serde_json::json!({
            "kind": "lock", "lock": lock.to_string_lossy(), "island": island, "whole": whole,
        }),
        RootKind::Manual { name } => serde_json::json!({ "kind": "manual", "name": name }),
        RootKind::Live { pid, command } => serde_json::json!({ "kind": "live", "pid": pid, "command": command }),
    }
}

fn du(store: &Store, json: bool) -> Result<()> {
    let report = store.du(crate::collection::roots(store)?)?;
    if json {
        let rooted: Vec<_> = report
            .rooted
            .iter()
            .map(|r| {
                serde_json::json!({
                    "hash": r.tree.to_string(),
                    "roots": r.roots.iter().map(kind_json).collect::<Vec<_>>(),
                    "published": r.published,
                    "size": r.size,
                    "alone": r.alone,
                })
            })
            .collect();
        let unrooted: Vec<_> = report
            .unrooted
            .iter()
            .map(|r| {
                serde_json::json!({
                    "hash": r.tree.to_string(),
                    "lastUsed": unix_seconds(r.last_used),
                    "size": r.size,
                    "alone": r.alone,
                })
            })
            .collect();
        let value = serde_json::json!({
            "rooted": rooted,
            "unrooted": unrooted,
            "totals": {
                "rooted": report.rooted_bytes,
                "unrooted": report.unrooted_bytes,
                "unreferenced": report.unreferenced_bytes,
                "unreferencedObjects": report.unreferenced_objects,
                "modules": report.module_bytes,
                "total": report.total(),
            },
        });
        println!("{value}");
        return Ok(());
    }
    println!("{:>10}  {:>10}  {:<20}  ROOT", "SIZE", "ALONE", "TREE");
    let short = |t: &TreeHash| format!("{}…", &t.to_string()[..19]);
    for row in &report.rooted {
        for kind in &row.roots {
            let absent = if row.published { "" } else { " [not in this store]" };
            println!(
                "{:>10}  {:>10}  {:<20}  {}{absent}",
                human(row.size),
                human(row.alone),
                short(&row.tree),
                describe(kind)
            );
        }
    }
    for row in &report.unrooted {
        println!(
            "{:>10}  {:>10}  {:<20}  unrooted, last used {}",
            human(row.size),
            human(row.alone),
            short(&row.tree),
            ago(row.last_used)
        );
    }
    println!("SIZE: all a tree needs; ALONE: what no other tree shares (what dropping just it frees)");
    println!("totals, bytes shared between trees counted once:");
    println!("{:>10}  rooted trees", human(report.rooted_bytes));
    println!(
        "{:>10}  unrooted trees, beyond what the rooted share",
        human(report.unrooted_bytes)
    );
    println!(
        "{:>10}  {} objects no tree reaches (a failed fetch's, or one in flight)",
        human(report.unreferenced_bytes),
        report.unreferenced_objects
    );
    println!("{:>10}  compiled fetcher modules", human(report.module_bytes));
    println!("{:>10}  in all", human(report.total()));
    Ok(())
}

fn root(store: &Store, command: RootCommand) -> Result<()> {
    match command {
        RootCommand::Add { hash, name } => {
            let tree = parse_hash(&hash)?;
            let name = name.unwrap_or_else(|| tree.to_hex());
            match store.add_root(&name, &tree)? {
                Some(before) if before != tree => eprintln!("root {name} now keeps {tree} (it kept {before})"),
                _ => eprintln!("root {name} keeps {tree}"),
            }
        }
        RootCommand::Ls { json } => {
            for root in crate::collection::roots(store)? {
                if json {
                    let mut value = kind_json(&root.kind);
                    value["hash"] = root.tree.to_string().into();
                    println!("{value}");
                } else {
                    println!("{}  {}", root.tree, describe(&root.kind));
                }
            }
        }
        RootCommand::Rm { name } => {
            if crate::store::gc::check_root_name(&name).is_ok()
                && let Some(tree) = store.remove_root(&name)?
            {
                eprintln!("removed root {name} (it kept {tree})");
                return Ok(());
            }
            let path = crate::collection::absolute_lock_path(Path::new(&name))?;
            if store.unregister_indirect(&path)? {
                eprintln!("{} no longer keeps anything (until cab uses it again)", path.display());
                return Ok(());
            }
            bail!(
                "no root named `{name}`, and no registered lock at {} (see `cab store root ls`)",
                path.display()
            );
        }
    }
    Ok(())
}
