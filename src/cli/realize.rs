//! `cab realize --stdio`: this machine as a realizer for others, reached over ssh (see
//! `realizer::delegate`). Its own store, limits, credentials and remote apply; what it
//! realizes always goes to the remote, where its clients take it from.

use std::process::ExitCode;

use anyhow::{Result, bail};

use super::fetch::{LimitArgs, runtime};
use crate::config::Settings;
use crate::realizer::delegate::server;

#[derive(clap::Args, Debug)]
pub struct RealizeArgs {
    /// Speak the realizer protocol on standard input and output (what ssh runs).
    #[arg(long)]
    stdio: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Serves one client on standard input and output until it closes them.
pub fn realize(args: RealizeArgs, settings: &Settings) -> Result<ExitCode> {
    if !args.stdio {
        bail!("`cab realize` serves another machine's `--realizer ssh://…` over ssh: run it as `cab realize --stdio`");
    }
    // Never handed on again: a realizer realizes here.
    let realizer = super::local_realizer(settings, true)?.without_progress_bars();
    let runtime = runtime()?;
    let served = runtime.block_on(server::serve(realizer, tokio::io::stdin(), tokio::io::stdout()));
    // Standard input is read on a blocking thread, which a client that broke the protocol
    // may leave waiting: do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    served?;
    Ok(ExitCode::SUCCESS)
}
