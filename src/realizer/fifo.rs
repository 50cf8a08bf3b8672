//! The hash FIFO (DESIGN.md, "The hash FIFO protocol"): the guest's standard output is a
//! named pipe in its staging directory, on which the fetcher reports what it learns — its
//! commit first, before any download. A reader task checks each line, looks its value up in
//! the store's index (and the remote's), and passes the finding to the run, which stops the
//! guest on a hit; only then does it count the line as processed, so the host's HTTP door
//! (waiting on the [`FifoBarrier`]) cannot send the guest's next request before a hit is seen.
//! A realizer working for another machine asks that machine too ([`Requester`]): then the
//! early stop crosses the wire, and still before the guest's next request.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::delegate::Requester;
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
        hit: Option<Hit>,
    },
    /// A malformed line: the run fails.
    Malformed(String),
}

/// Where the tree a reported line names is held.
#[derive(Clone, Copy, Debug)]
pub(super) enum Hit {
    /// In this store (published, declared live).
    Here(TreeHash),
    /// By the machine this realization runs for, not here: the run stops, and that machine
    /// uses its own tree.
    Elsewhere(TreeHash),
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
/// `remote`'s; failing those, the `requester`'s — then sent on, and only then counted on
/// `barrier`.
pub(super) fn read(
    receiver: tokio::net::unix::pipe::Receiver,
    store: Store,
    how: &'static str,
    barrier: Arc<FifoBarrier>,
    remote: Option<Remote>,
    requester: Option<Arc<dyn Requester>>,
    label: String,
) -> mpsc::UnboundedReceiver<FifoEvent> {
    let (events_tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(receiver).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut event = classify(&store, how, &line);
            // Not stored here: perhaps the machine this run is for holds it (one round trip,
            // where the remote would cost a download).
            if let (
                Some(requester),
                FifoEvent::Value {
                    format,
                    value,
                    hit: hit @ None,
                },
            ) = (&requester, &mut event)
                && !format.starts_with("unknown:")
                && !format.starts_with("ref-")
            {
                match requester.holds(format, value).await {
                    Ok(held) => *hit = held.map(Hit::Elsewhere),
                    Err(e) => tracing::warn!("{label}: cannot ask the requester about {format} {value}: {e:#}"),
                }
            }
            // Nor there: perhaps a neighbour stored it on the remote.
            if let (
                Some(remote),
                FifoEvent::Value {
                    format,
                    value,
                    hit: hit @ None,
                },
            ) = (&remote, &mut event)
                && (format.starts_with("git-") || format == "http-identity")
            {
                let key = IndexKey::new(how, format, value);
                *hit = super::remote::tree_by_index(remote, &store, &key, &label)
                    .await
                    .map(Hit::Here);
            }
            // A hit ends the run: the guest's waiting request is never released, so it cannot
            // reach the server however late the run gets to drop the guest (on a busy machine
            // the HTTP door could otherwise win that race and start a download). Anything else
            // is passed on first and then releases the request.
            let stops = matches!(event, FifoEvent::Value { hit: Some(_), .. });
            if events_tx.send(event).is_err() {
                break;
            }
            if stops {
                // Drain what the guest still writes (so that it gets no broken pipe), unread.
                while let Ok(Some(_)) = lines.next_line().await {}
                break;
            }
            barrier.processed_one();
        }
    });
    events
}

/// Takes one FIFO event: checks it against the derivation, remembers it, and returns where
/// the tree it names is held, if anywhere.
pub(super) fn note(
    event: FifoEvent,
    drv: &Derivation,
    label: &str,
    reported: &mut Vec<(String, String)>,
    rev: &mut Option<String>,
) -> Result<Option<Hit>> {
    match event {
        FifoEvent::Malformed(line) => bail!("{label}: the fetcher wrote a malformed line to the hash FIFO: {line:?}"),
        FifoEvent::Value { format, value, hit } => {
            note_value(drv, label, &format, &value, rev)?;
            reported.push((format, value));
            Ok(hit)
        }
    }
}

/// Checks one reported value against the derivation (a commit must be the one pinned) and
/// keeps the commit.
pub(super) fn note_value(
    drv: &Derivation,
    label: &str,
    format: &str,
    value: &str,
    rev: &mut Option<String>,
) -> Result<()> {
    // A ref listing's names (up to 1,000 of them) are its answer, not news.
    if format != "ref-name" {
        tracing::debug!("{label}: fetcher reports {format} {value}");
    }
    if format == "git-rev" {
        if let Some(want) = &drv.rev
            && want != value
        {
            bail!("{label}: the fetcher reports commit {value}, but the island pins {want}");
        }
        *rev = Some(value.to_owned());
    }
    Ok(())
}

/// Checks one FIFO line and looks its value up in the index.
fn classify(store: &Store, how: &str, line: &str) -> FifoEvent {
    let Some((format, value)) = line.split_once(' ') else {
        return FifoEvent::Malformed(line.to_owned());
    };
    match held(store, how, format, value) {
        Ok(hit) => FifoEvent::Value {
            format: format.to_owned(),
            value: value.to_owned(),
            hit: hit.map(Hit::Here),
        },
        Err(Unheld::Malformed) => FifoEvent::Malformed(line.to_owned()),
        // Forward compatible: a format we do not know is logged and otherwise ignored.
        Err(Unheld::Unknown) => {
            tracing::info!("hash FIFO: ignoring a line in an unknown format: {line:?}");
            FifoEvent::Value {
                format: format!("unknown:{format}"),
                value: value.to_owned(),
                hit: None,
            }
        }
    }
}

/// Why a reported value names no tree at all.
pub(super) enum Unheld {
    /// A format this cab does not know.
    Unknown,
    /// A value that is not of its format.
    Malformed,
}

/// The published tree that a reported `format value` names in `store`'s index (under `how`,
/// the derivation's method, for a git value), declared live at once: the run may stop and use
/// it. A failing lookup is warned about and counts as none.
pub(super) fn held(store: &Store, how: &str, format: &str, value: &str) -> Result<Option<TreeHash>, Unheld> {
    let hex =
        |v: &str, len: usize| v.len() == len && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let (well_formed, how) = match format {
        // A ref listing's lines (the fetcher's `refs` format) name no tree.
        "ref-head" | "ref-name" | "ref-more" if !value.is_empty() && !value.contains(' ') => return Ok(None),
        "ref-head" | "ref-name" | "ref-more" => return Err(Unheld::Malformed),
        "git-rev" | "git-tree" => (hex(value, 40), how),
        // The server's identity of a download (see the fetcher's `http_identity`), a BLAKE3.
        "http-identity" => (hex(value, 64), how),
        "blake3" => (value.parse::<TreeHash>().is_ok(), IndexKey::ANY),
        "nar-sha256" => (value.parse::<NarHash>().is_ok(), IndexKey::ANY),
        _ => return Err(Unheld::Unknown),
    };
    if !well_formed {
        return Err(Unheld::Malformed);
    }
    let lookup = || -> Result<Option<TreeHash>> {
        let _guard = store.guard()?;
        let hit = store.lookup(&IndexKey::new(how, format, value))?;
        if let Some(tree) = &hit {
            store.declare_live(&[*tree])?;
        }
        Ok(hit)
    };
    Ok(lookup().unwrap_or_else(|e| {
        tracing::warn!("index lookup failed: {e:#}");
        None
    }))
}
