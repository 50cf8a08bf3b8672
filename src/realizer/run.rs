//! One run of the fetcher, from its staging directory to its exit: started with only the doors
//! [`super::host`] and [`super::wasi`] open, watched while the FIFO reports (a report that
//! names a stored tree stops it: dropping the guest's future drops its connections), and
//! concluded — the exit code read, `out/` ingested by rename, every reported hash checked.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;

use super::conditional::{self, Seen};
use super::delegate::HeldElsewhere;
use super::epoch::RunningGuard;
use super::fifo::{self, FifoEvent, Hit};
use super::finish::Found;
use super::host::{Access, Exit, FifoBarrier, HostState, Http, MemoryLimit};
use super::output::Output;
use super::progress::Progress;
use super::{Cause, Failed, NotFound, OverLimit, Realized, Realizer, network_summary};
use crate::derivation::{Derivation, Method};
use crate::hash::TreeHash;
use crate::store::{Ingest, Staging};

/// The fetcher's exit code for "what the island names does not exist" (a ref the repository
/// lacks, no default branch): fetcher/src/error.rs.
const EXIT_MISSING: i32 = 3;

/// A run's staging directory, removed on a blocking thread when the run ends (~0.2 ms of
/// unlinking that need not delay the answer; a one-shot `cab` still waits for it on exit,
/// as the runtime does for blocking work). Without a runtime it is removed at once.
pub(super) struct CleanUpLater(Option<Staging>);

impl std::ops::Deref for CleanUpLater {
    type Target = Staging;

    fn deref(&self) -> &Staging {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for CleanUpLater {
    fn drop(&mut self) {
        let Some(staging) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(staging))),
            Err(_) => drop(staging),
        }
    }
}

/// The guest, running: its future ends with how `_start` returned and the host's state.
pub(super) type Guest = Pin<Box<dyn Future<Output = (wasmtime::Result<()>, HostState)> + Send>>;

/// A run that has started.
pub(super) struct Started {
    pub(super) staging: CleanUpLater,
    pub(super) events: mpsc::UnboundedReceiver<FifoEvent>,
    pub(super) progress: Progress,
    pub(super) guest: Guest,
    pub(super) _running: RunningGuard,
}

/// How watching a run ended: stopped on a stored tree, or the guest returned.
pub(super) enum Watched {
    Stopped(Realized),
    Exited(Box<Exited>),
}

/// A guest that returned, and what it reported on the way.
pub(super) struct Exited {
    pub(super) result: wasmtime::Result<()>,
    pub(super) state: HostState,
    pub(super) reported: Vec<(String, String)>,
    pub(super) rev: Option<String>,
}

impl Realizer {
    /// Runs the fetcher, and logs what the run cost besides the network (`-vv` shows it):
    /// the realizer's own overhead per run, which the benchmarks read.
    pub(super) async fn run_wasm(
        &self,
        drv: &Derivation,
        module: &TreeHash,
        label: &str,
        on_rev: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Realized> {
        let started = Instant::now();
        let waited = Arc::new(AtomicU64::new(0));
        let seen = Seen::default();
        let result = async {
            let run = self.start(drv, module, label, waited.clone(), seen.clone())?;
            let staging = run.staging;
            let watched = self
                .watch(drv, label, run.events, run.progress, run.guest, on_rev)
                .await?;
            drop(run._running);
            let realized = match watched {
                Watched::Stopped(realized) => realized,
                Watched::Exited(exited) => self.conclude(drv, label, *exited)?,
            };
            drop(staging);
            if let Err(e) = conditional::remember(&self.store, drv, &seen, &realized.whole) {
                tracing::warn!("{label}: cannot remember the download's validator: {e:#}");
            }
            Ok(realized)
        }
        .await;
        let took = started.elapsed();
        let waited = Duration::from_nanos(waited.load(Ordering::Relaxed));
        tracing::debug!(
            "{label}: the fetcher's run took {:.3} ms, {:.3} ms of it waiting for the network, so {:.3} ms of overhead",
            took.as_secs_f64() * 1e3,
            waited.as_secs_f64() * 1e3,
            took.saturating_sub(waited).as_secs_f64() * 1e3
        );
        result
    }

    /// Makes the run's staging directory and FIFO, starts the FIFO's reader, and instantiates
    /// the guest with its doors.
    pub(super) fn start(
        &self,
        drv: &Derivation,
        module: &TreeHash,
        label: &str,
        waited: Arc<AtomicU64>,
        seen: Seen,
    ) -> Result<Started> {
        let loaded = self.load(module)?;
        let staging = CleanUpLater(Some(self.store.staging()?));
        let work = staging.path();
        let (receiver, writer) = fifo::open(&work.join("hashes"))?;
        let barrier = FifoBarrier::new();
        let events = fifo::read(
            receiver,
            self.store.clone(),
            drv.method.as_str(),
            barrier.clone(),
            self.remote.clone(),
            self.requester.clone(),
            crate::text::shorten(label).into_owned(),
        );
        let progress = Progress::new(label, self.progress_bars);
        if let Some(requester) = &self.requester {
            let requester = requester.clone();
            progress.watch(Box::new(move |bytes| requester.downloaded(bytes)));
        }
        let output = Output::new(&work.join("out"), self.limits.unpacked, self.limits.entries)?;
        let http = Http::new(
            self.clients.clone(),
            Access {
                hosts: drv.hosts.clone(),
                credentials: self.credentials.clone(),
                gitlab: drv.method == Method::GitlabArchive,
            },
            self.limits.download,
            self.limits.stall,
            barrier,
            waited,
            seen,
        );
        let limits = MemoryLimit::new(self.limits.memory);
        let mut args = vec![b"fetcher".to_vec()];
        args.extend(drv.args.iter().map(|a| a.as_bytes().to_vec()));
        // What this store knows of the download already: the run's, not the derivation's.
        args.extend(
            conditional::arguments(&self.store, drv)
                .into_iter()
                .map(String::into_bytes),
        );
        let state = HostState::new(args, writer, output, http, limits, progress.clone(), label);
        let running = RunningGuard::new(&self.running);
        let mut store = wasmtime::Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_async_yield_and_update(1);
        let guest: Guest = Box::pin(async move {
            let result = async {
                let instance = loaded.linker.instantiate_async(&mut store, &loaded.module).await?;
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await
            }
            .await;
            let mut state = store.into_data();
            state.fifo = None; // end of the FIFO: the reader sees EOF
            (result, state)
        });
        Ok(Started {
            staging,
            events,
            progress,
            guest,
            _running: running,
        })
    }

    /// Runs the guest to its end, or until a line it reports names a stored tree (then it is
    /// stopped, and that tree is the answer), or past the time limit.
    pub(super) async fn watch(
        &self,
        drv: &Derivation,
        label: &str,
        mut events: mpsc::UnboundedReceiver<FifoEvent>,
        progress: Progress,
        mut guest: Guest,
        on_rev: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Watched> {
        let deadline = tokio::time::sleep(self.limits.time);
        tokio::pin!(deadline);
        let mut reported: Vec<(String, String)> = Vec::new();
        let mut rev = drv.rev.clone();
        if let Some(rev) = &rev {
            on_rev(rev);
        }
        let stop = |hit: Hit, rev: Option<String>, downloaded: u64, reported| -> Result<Watched> {
            let tree = match hit {
                Hit::Here(tree) => tree,
                Hit::Elsewhere(whole) => {
                    tracing::info!("{label}: the requester holds {whole}; stopped the fetch after {downloaded} bytes");
                    return Err(anyhow::Error::new(HeldElsewhere { whole, rev, reported }));
                }
            };
            tracing::info!("{label}: already stored as {tree}; stopped the fetch after {downloaded} bytes");
            let _guard = self.store.guard()?;
            let found = Found {
                whole: tree,
                ingested: None,
                rev,
                downloaded,
                stopped_early: true,
                reported,
            };
            Ok(Watched::Stopped(self.finish(drv, label, found)?))
        };
        let (result, state) = loop {
            tokio::select! {
                // Events first: a hit must win over the guest's next step.
                biased;
                Some(event) = events.recv() => {
                    let known = rev.is_some();
                    let hit = fifo::note(event, drv, label, &mut reported, &mut rev)?;
                    if !known && let Some(rev) = &rev {
                        on_rev(rev);
                    }
                    if let Some(hit) = hit {
                        // Stop the guest: dropping its future drops its store and connections.
                        progress.finish();
                        return stop(hit, rev, progress.bytes(), reported);
                    }
                }
                finished = &mut guest => break finished,
                _ = &mut deadline => {
                    progress.finish();
                    return Err(OverLimit::error(format!(
                        "{label}: the fetch took longer than {:?}: over the time limit (raise --max-time)",
                        self.limits.time
                    )));
                }
            }
        };
        progress.finish();
        // Lines written just before the guest exited.
        while let Some(event) = events.recv().await {
            if let Some(hit) = fifo::note(event, drv, label, &mut reported, &mut rev)? {
                return stop(hit, rev, state.http.downloaded, reported);
            }
        }
        Ok(Watched::Exited(Box::new(Exited {
            result,
            state,
            reported,
            rev,
        })))
    }

    /// A guest that returned: its exit code read (a failure's message from the first host-side
    /// failure, or the guest's last words), then `out/` ingested and checked against what the
    /// guest reported, then finished.
    fn conclude(&self, drv: &Derivation, label: &str, exited: Exited) -> Result<Realized> {
        let Exited {
            result,
            state,
            reported,
            rev,
        } = exited;
        let mut state = state;
        self.exited_well(label, result, &mut state, rev.is_none())?;
        let downloaded = state.http.downloaded;
        tracing::debug!("{label}: the fetcher finished; ingesting what it wrote");
        let tree_path = state.output.tree_path();
        drop(state);
        // From the first object found present to the tree declared live.
        let _guard = self.store.guard()?;
        let added = self
            .store
            .ingest(&tree_path, Ingest::Move, None)
            .with_context(|| format!("{label}: cannot ingest the fetched tree"))?;
        for (format, value) in &reported {
            let got = match format.as_str() {
                "blake3" => added.tree.to_string(),
                "nar-sha256" => added.nar.to_string(),
                _ => continue,
            };
            if *value != got {
                bail!("{label}: the fetcher reported {format} {value}, but the tree it wrote has {got}");
            }
        }
        let found = Found {
            whole: added.tree,
            ingested: Some(added.nar),
            rev,
            downloaded,
            stopped_early: false,
            reported,
        };
        self.finish(drv, label, found)
    }

    /// How a guest's run ended, as an error unless it exited 0: the first host-side failure if
    /// there was one, else the guest's last words; before any commit was known (`no_commit`), a
    /// 404 or exit code 3 is `NotFound` (the repository or the ref does not exist).
    pub(super) fn exited_well(
        &self,
        label: &str,
        result: wasmtime::Result<()>,
        state: &mut HostState,
        no_commit: bool,
    ) -> Result<()> {
        let code = match result {
            Ok(()) => 0,
            Err(e) => match e.downcast_ref::<Exit>() {
                Some(Exit(code)) => *code,
                None => {
                    if state.limits.hit {
                        return Err(OverLimit::error(format!(
                            "{label}: the fetcher needed more than {} bytes of memory (raise --max-memory)",
                            self.limits.memory
                        )));
                    }
                    let reason = format!("the fetcher crashed: {e}");
                    return Err(failure(label, state.error.take(), reason, &state.stderr_tail));
                }
            },
        };
        if code != 0 {
            let error = failure(
                label,
                state.error.take(),
                format!("the fetcher exited with code {code}"),
                &state.stderr_tail,
            );
            // Before any commit was known: the repository or the ref may not exist at all.
            if no_commit && (state.http.not_found || code == EXIT_MISSING) {
                return Err(anyhow::Error::new(NotFound(format!("{error:#}"))));
            }
            return Err(error);
        }
        Ok(())
    }
}

/// A failed run's error: the first failure on the host's side if there was one (else
/// `reason`), what the network failure was in a few words, and the guest's last words. Its
/// [`Cause`] is read off the host's error before that is flattened into the message.
fn failure(label: &str, host_error: Option<anyhow::Error>, reason: String, stderr: &[String]) -> anyhow::Error {
    let mut message = format!("{label}: ");
    let cause = match &host_error {
        Some(e) => {
            if let Some(summary) = network_summary(e) {
                message.push_str(&format!("{summary}: "));
            }
            message.push_str(&format!("{e:#}"));
            Cause::of(e)
        }
        None => {
            message.push_str(&reason);
            Cause::Unreachable
        }
    };
    if !stderr.is_empty() {
        message.push_str(&format!("\n  the fetcher said: {}", stderr.join("\n    ")));
    }
    Failed::error(cause, message)
}
