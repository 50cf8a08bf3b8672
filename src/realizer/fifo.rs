//! The hash FIFO (DESIGN.md, "The hash FIFO protocol"): the guest's standard output is a
//! named pipe in its staging directory, on which the fetcher reports what it learns — its
//! commit first, before any download. A reader task checks each line, looks its value up in
//! the store's index (and the remote's), and passes the finding to the run, which stops the
//! guest on a hit; only then does it count the line as processed, so the host's HTTP door
//! (waiting on the [`FifoBarrier`]) cannot send the guest's next request before a hit is seen.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::host::FifoBarrier;
use crate::derivation::Derivation;
use crate::hash::{NarHash, TreeHash};
use crate::store::remote::Remote;
use crate::store::{IndexKey, Store};

/// One line from the hash FIFO, checked.
pub(super) enum FifoEvent {
    /// A well-formed line, and the stored tree it names, if any.
    Value {
        format: String,
        value: String,
        hit: Option<TreeHash>,
    },
    /// A malformed line: the run fails.
    Malformed(String),
}

/// The FIFO at `path`, made and opened at both ends: the reading end for [`read`], the writing
/// end for the guest's standard output. The reading end is opened first (non-blocking), so
/// that opening the writing end cannot block.
pub(super) fn open(path: &Path) -> Result<(tokio::net::unix::pipe::Receiver, std::fs::File)> {
    let c = CString::new(path.as_os_str().as_bytes()).context("path contains NUL")?;
    // SAFETY: a plain syscall with a valid C string.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot make FIFO {}", path.display()));
    }
    let receiver = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok((receiver, writer))
}

/// Reads the FIFO until the guest closes it: each line checked and looked up in `store`'s
/// index under `how` (the derivation's method) — and, for a commit this store lacks, in
/// `remote`'s — then sent on, and only then counted on `barrier`.
pub(super) fn read(
    receiver: tokio::net::unix::pipe::Receiver,
    store: Store,
    how: &'static str,
    barrier: Arc<FifoBarrier>,
    remote: Option<Remote>,
    label: String,
) -> mpsc::UnboundedReceiver<FifoEvent> {
    let (events_tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(receiver).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut event = classify(&store, how, &line);
            // Not stored here: perhaps a neighbour stored it on the remote.
            if let (
                Some(remote),
                FifoEvent::Value {
                    format,
                    value,
                    hit: hit @ None,
                },
            ) = (&remote, &mut event)
                && format.starts_with("git-")
            {
                *hit = super::remote::tree_by_index(remote, &store, &IndexKey::new(how, format, value), &label).await;
            }
            // Pass the finding on first, then release the guest's waiting request: the run's
            // select is biased to see a hit before the guest runs on.
            let sent = events_tx.send(event);
            barrier.processed_one();
            if sent.is_err() {
                break;
            }
        }
    });
    events
}

/// Takes one FIFO event: checks it against the derivation, remembers it, and returns the
/// stored tree it names, if any.
pub(super) fn note(
    event: FifoEvent,
    drv: &Derivation,
    label: &str,
    reported: &mut Vec<(String, String)>,
    rev: &mut Option<String>,
) -> Result<Option<TreeHash>> {
    match event {
        FifoEvent::Malformed(line) => bail!("{label}: the fetcher wrote a malformed line to the hash FIFO: {line:?}"),
        FifoEvent::Value { format, value, hit } => {
            tracing::debug!("{label}: fetcher reports {format} {value}");
            if format == "git-rev" {
                if let Some(want) = &drv.rev
                    && *want != value
                {
                    bail!("{label}: the fetcher reports commit {value}, but the island pins {want}");
                }
                *rev = Some(value.clone());
            }
            reported.push((format, value));
            Ok(hit)
        }
    }
}

/// Checks one FIFO line and looks its value up in the index.
fn classify(store: &Store, how: &str, line: &str) -> FifoEvent {
    let Some((format, value)) = line.split_once(' ') else {
        return FifoEvent::Malformed(line.to_owned());
    };
    let hex40 = |v: &str| v.len() == 40 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let (well_formed, how) = match format {
        "git-rev" | "git-tree" => (hex40(value), how),
        "blake3" => (value.parse::<TreeHash>().is_ok(), IndexKey::ANY),
        "nar-sha256" => (value.parse::<NarHash>().is_ok(), IndexKey::ANY),
        _ => {
            // Forward compatible: a format we do not know is logged and otherwise ignored.
            tracing::info!("hash FIFO: ignoring a line in an unknown format: {line:?}");
            return FifoEvent::Value {
                format: format!("unknown:{format}"),
                value: value.to_owned(),
                hit: None,
            };
        }
    };
    if !well_formed {
        return FifoEvent::Malformed(line.to_owned());
    }
    // A tree the index names is declared live at once: the run may stop and use it.
    let lookup = || -> Result<Option<TreeHash>> {
        let _guard = store.guard()?;
        let hit = store.lookup(&IndexKey::new(how, format, value))?;
        if let Some(tree) = &hit {
            store.declare_live(&[*tree])?;
        }
        Ok(hit)
    };
    let hit = match lookup() {
        Ok(hit) => hit,
        Err(e) => {
            tracing::warn!("index lookup failed: {e:#}");
            None
        }
    };
    FifoEvent::Value {
        format: format.to_owned(),
        value: value.to_owned(),
        hit,
    }
}
