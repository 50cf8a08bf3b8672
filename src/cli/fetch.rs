//! `cab fetch ISLAND…` and `cab derivation ISLAND`: realize islands and print them locked;
//! show the derivation an island becomes.

use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};

use crate::config::{Layer, Settings, Size, parse_size};
use crate::derivation::to_derivation;
use crate::island::Island;

/// The limits on one fetch, as flags (each also a setting: see [`crate::config`]).
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Memory the fetcher may use, e.g. 512M [default: 256M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Wall-clock time one fetch may take, in seconds [default: 1800].
    #[arg(long, value_name = "SECONDS")]
    max_time: Option<u64>,
    /// Bytes one fetch may download, e.g. 16G [default: 8G].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_download: Option<u64>,
    /// Bytes one fetch may unpack, e.g. 64G [default: 32G].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_unpacked: Option<u64>,
    /// Seconds a server may send nothing before the download counts as stalled [default: 60].
    #[arg(long, value_name = "SECONDS")]
    stall_timeout: Option<u64>,
    /// Entries (files, directories, symlinks) one fetch may make [default: 4000000].
    #[arg(long, value_name = "COUNT")]
    max_entries: Option<usize>,
}

impl LimitArgs {
    /// The settings these flags give.
    pub fn config(&self) -> Layer {
        Layer {
            max_memory: self.max_memory.map(Size),
            max_time: self.max_time,
            max_download: self.max_download.map(Size),
            max_unpacked: self.max_unpacked.map(Size),
            stall_timeout: self.stall_timeout,
            max_entries: self.max_entries,
            ..Layer::default()
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// Islands to fetch, e.g. '<github:cull-os/cab>' (quote them for the shell).
    #[arg(required = true, value_name = "ISLAND")]
    islands: Vec<String>,
    /// One JSON object per island per line: island, locked, rev, hash, narHash.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub gc: super::store::AutoGcArgs,
}

#[derive(clap::Args, Debug)]
pub struct DerivationArgs {
    /// The island, e.g. '<github:cull-os/cab:{ ref = "main" }>'.
    island: String,
}

/// Parses an island from the command line, with a caret under the error.
pub fn parse_island(text: &str) -> Result<Island> {
    text.parse::<Island>()
        .map_err(|e| anyhow!("invalid island\n{}", e.render(text)))
}

/// A tokio runtime for commands that fetch.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start tokio")
}

pub fn fetch(args: FetchArgs, settings: &Settings) -> Result<ExitCode> {
    let islands = args
        .islands
        .iter()
        .map(|t| parse_island(t))
        .collect::<Result<Vec<_>>>()?;
    let realizer = super::realizer(settings)?;
    let results = runtime()?.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, island) in islands.into_iter().enumerate() {
            let realizer = realizer.clone();
            tasks.spawn(async move {
                let label = island.to_string();
                let result = async {
                    let drv = to_derivation(&island, realizer.environment())?;
                    realizer.realize(&drv, &label).await
                }
                .await;
                (i, island, result)
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            results.push(joined.context("a fetch task panicked")?);
        }
        results.sort_by_key(|r| r.0);
        Ok::<_, anyhow::Error>(results)
    })?;
    let mut failed = 0;
    for (_, island, result) in results {
        match result {
            Ok(r) => {
                let locked = island.locked(r.rev.clone(), r.tree, r.nar);
                if args.json {
                    let value = serde_json::json!({
                        "island": island.to_string(),
                        "locked": locked.to_string(),
                        "rev": r.rev,
                        "hash": r.tree.to_string(),
                        "narHash": r.nar.to_string(),
                    });
                    println!("{value}");
                } else {
                    println!("{locked}");
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e:#}");
            }
        }
    }
    // While this process still holds what it fetched.
    super::store::auto_gc(settings, realizer.store());
    if failed > 0 {
        bail!("{failed} of {} islands failed", args.islands.len());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn derivation(args: DerivationArgs, settings: &Settings) -> Result<ExitCode> {
    let island = parse_island(&args.island)?;
    let env = crate::derivation::Environment {
        forges: settings.forges(),
        fetcher: crate::realizer::module_hash(crate::realizer::FETCHER_WASM),
    };
    let drv = to_derivation(&island, &env)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&drv.to_json()).context("cannot print JSON")?
    );
    Ok(ExitCode::SUCCESS)
}
