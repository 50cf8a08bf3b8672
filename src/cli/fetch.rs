//! `cab fetch ISLAND…` and `cab derivation ISLAND`: realize islands and print them locked;
//! show the derivation an island becomes.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::derivation::to_derivation;
use crate::island::Island;
use crate::realizer::Limits;

/// The limits on one fetch, as flags.
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Memory the fetcher may use (e.g. 256M).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    max_memory: u64,
    /// Wall-clock time one fetch may take, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 1800)]
    max_time: u64,
    /// Bytes one fetch may download (e.g. 8G).
    #[arg(long, value_name = "SIZE", default_value = "8G", value_parser = parse_size)]
    max_download: u64,
    /// Bytes one fetch may unpack (e.g. 32G).
    #[arg(long, value_name = "SIZE", default_value = "32G", value_parser = parse_size)]
    max_unpacked: u64,
    /// Seconds a server may send nothing before the download counts as stalled.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    stall_timeout: u64,
    /// Entries (files, directories, symlinks) one fetch may make.
    #[arg(long, value_name = "COUNT", default_value_t = 4_000_000)]
    max_entries: usize,
}

impl LimitArgs {
    /// The limits these flags give.
    pub fn limits(&self) -> Limits {
        Limits {
            memory: self.max_memory as usize,
            time: Duration::from_secs(self.max_time),
            download: self.max_download,
            unpacked: self.max_unpacked,
            stall: Duration::from_secs(self.stall_timeout),
            entries: self.max_entries,
        }
    }
}

/// Parses `123`, `64K`, `256M`, `8G` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 512M or 8G"))?;
    let shift = match unit.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
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
    limits: LimitArgs,
    #[command(flatten)]
    gc: super::store::AutoGcArgs,
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

/// Where github islands come from: `CAB_GITHUB_URL`, default https://github.com.
pub fn github_url() -> String {
    std::env::var("CAB_GITHUB_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "https://github.com".into())
}

/// A tokio runtime for commands that fetch.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start tokio")
}

pub fn fetch(args: FetchArgs, globals: &super::Globals) -> Result<ExitCode> {
    let islands = args
        .islands
        .iter()
        .map(|t| parse_island(t))
        .collect::<Result<Vec<_>>>()?;
    let realizer = Arc::new(globals.realizer(args.limits.limits())?);
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
        realizer.finish_pushes().await;
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
    args.gc.run(realizer.store());
    if failed > 0 {
        bail!("{failed} of {} islands failed", args.islands.len());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn derivation(args: DerivationArgs) -> Result<ExitCode> {
    let island = parse_island(&args.island)?;
    let env = crate::derivation::Environment {
        github_url: github_url(),
        fetcher: crate::realizer::module_hash(crate::realizer::FETCHER_WASM),
    };
    let drv = to_derivation(&island, &env)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&drv.to_json()).context("cannot print JSON")?
    );
    Ok(ExitCode::SUCCESS)
}
