//! Progress of a fetch: a bar on a terminal, a log line now and then otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::sync::MutexExt;

/// A handle on one fetch's progress; clones share it.
#[derive(Clone)]
pub struct Progress(Arc<Inner>);

struct Inner {
    bar: Option<ProgressBar>,
    label: String,
    bytes: AtomicU64,
    files: AtomicU64,
    last_log: Mutex<Instant>,
    watcher: OnceLock<Watcher>,
    started: Instant,
    finished: std::sync::atomic::AtomicBool,
}

/// Every fetch of this process that has progress, for [`in_flight`] (`cab status`).
static LIVE: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

/// A fetch under way, as [`in_flight`] sees it.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// What is fetched (the island).
    pub label: String,
    /// Bytes downloaded so far.
    pub bytes: u64,
    /// Files unpacked so far.
    pub files: u64,
    /// Time since it started.
    pub elapsed: Duration,
}

/// The fetches of this process under way now.
pub fn in_flight() -> Vec<InFlight> {
    let mut live = LIVE.locked();
    live.retain(|weak| weak.strong_count() > 0);
    live.iter()
        .filter_map(Weak::upgrade)
        .filter(|inner| !inner.finished.load(Ordering::Relaxed))
        .map(|inner| InFlight {
            label: inner.label.clone(),
            bytes: inner.bytes.load(Ordering::Relaxed),
            files: inner.files.load(Ordering::Relaxed),
            elapsed: inner.started.elapsed(),
        })
        .collect()
}

/// Told the bytes downloaded so far, each time more arrive.
pub type Watcher = Box<dyn Fn(u64) + Send + Sync>;

const LOG_EVERY: Duration = Duration::from_secs(2);

impl Progress {
    /// Progress for the fetch of `label`; a bar when standard error is a terminal and `bar`.
    pub fn new(label: &str, bar: bool) -> Progress {
        let bar = (bar && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {bytes} ({bytes_per_sec}), {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(label.to_owned());
            bar.set_message("0 files");
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let inner = Arc::new(Inner {
            bar,
            label: label.to_owned(),
            bytes: AtomicU64::new(0),
            files: AtomicU64::new(0),
            last_log: Mutex::new(Instant::now()),
            watcher: OnceLock::new(),
            started: Instant::now(),
            finished: Default::default(),
        });
        {
            let mut live = LIVE.locked();
            live.retain(|weak| weak.strong_count() > 0);
            live.push(Arc::downgrade(&inner));
        }
        Progress(inner)
    }

    /// Bytes downloaded so far.
    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// `n` more bytes arrived.
    pub fn downloaded(&self, n: u64) {
        let total = self.0.bytes.fetch_add(n, Ordering::Relaxed) + n;
        self.show(total);
    }

    /// `total` bytes have arrived so far (where another machine counts them).
    pub fn downloaded_so_far(&self, total: u64) {
        self.0.bytes.store(total, Ordering::Relaxed);
        self.show(total);
    }

    /// Tells `watcher` the total each time more bytes arrive (a realizer working for another
    /// machine streams it there). One watcher per fetch.
    pub fn watch(&self, watcher: Watcher) {
        let _ = self.0.watcher.set(watcher);
    }

    fn show(&self, total: u64) {
        if let Some(bar) = &self.0.bar {
            bar.set_position(total);
        }
        if let Some(watcher) = self.0.watcher.get() {
            watcher(total);
        }
        self.maybe_log();
    }

    /// One more file of `size` bytes was ingested from a local tree.
    pub fn ingested(&self, size: u64) {
        self.file();
        self.downloaded(size);
    }

    /// One more file was unpacked.
    pub fn file(&self) {
        let files = self.0.files.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(bar) = &self.0.bar
            && files % 64 == 1
        {
            bar.set_message(format!("{files} files"));
        }
    }

    fn maybe_log(&self) {
        if self.0.bar.is_some() {
            return;
        }
        let Ok(mut last) = self.0.last_log.try_lock() else {
            return;
        };
        if last.elapsed() >= LOG_EVERY {
            *last = Instant::now();
            tracing::info!(
                "{}: {} bytes, {} files",
                self.0.label,
                self.bytes(),
                self.0.files.load(Ordering::Relaxed)
            );
        }
    }

    /// The fetch is over.
    pub fn finish(&self) {
        self.0.finished.store(true, Ordering::Relaxed);
        if let Some(bar) = &self.0.bar {
            bar.finish_and_clear();
        }
    }
}
