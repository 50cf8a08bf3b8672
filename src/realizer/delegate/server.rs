//! `cab realize --stdio`: what ssh runs on a realizer, as `nix-daemon --stdio` is for Nix. It
//! speaks [`protocol`] on its standard input and output (logs go to standard error, which ssh
//! carries back), and realizes one derivation at a time with its own store, limits and
//! credentials, then pushes the tree to the remote store it shares with its clients.
//!
//! Only what it ships runs here: a derivation of another fetcher module, or of a local path,
//! is refused. Nothing a client sends is run or written anywhere but through the realizer into
//! this store: the derivation's arguments go to the sandboxed fetcher, its hosts bound what the
//! fetcher may reach.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::protocol::{self, FromRealizer, ToRealizer};
use super::{HeldElsewhere, Requester};
use crate::derivation::{Builder, Derivation};
use crate::hash::TreeHash;
use crate::realizer::{Cause, Realized, Realizer};
use crate::store::remote::nix::CacheWriter;
use crate::sync::MutexExt;

/// How often the client hears how the download goes (and, when nothing moves, that the
/// realizer is still there).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
const ALIVE_EVERY: Duration = Duration::from_secs(5);

/// Serves one client on `input`/`output` until it closes the connection: `Ok` then, an error
/// when it broke the protocol (after telling it why, where it still listens).
pub async fn serve<R, W>(realizer: Realizer, input: R, output: W) -> Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, mut outgoing) = mpsc::unbounded_channel::<FromRealizer>();
    let writer = tokio::spawn(async move {
        let mut output = output;
        while let Some(message) = outgoing.recv().await {
            if protocol::send(&mut output, &message).await.is_err() {
                break;
            }
        }
    });
    let (requests, verdicts) = route(input);
    let downloaded = Arc::new(AtomicU64::new(0));
    let client = Arc::new(Client {
        out: out.clone(),
        verdicts: tokio::sync::Mutex::new(verdicts),
        downloaded: downloaded.clone(),
    });
    // The Nix binary cache entry (the tree's whole NAR) is written after the answer: the
    // client needs only cab's objects, and the NAR would double the upload before it.
    let (realizer, nix) = realizer.with_requester(client).without_nix_pushes();
    let behind = Arc::new(std::sync::Mutex::new(Vec::new()));
    let session = Session {
        realizer,
        nix,
        behind: behind.clone(),
        out,
        requests,
        downloaded,
    };
    let result = session.run().await;
    let pending: Vec<_> = std::mem::take(&mut *behind.locked());
    for task in pending {
        let _ = task.await;
    }
    // Everything said is written before the process ends.
    let _ = writer.await;
    result
}

/// What the client sent: a request, or why its stream cannot be read.
type Incoming = Result<ToRealizer, String>;

/// Reads the client's frames: verdicts go to whoever asked ([`Client::holds`]), the rest to
/// the session. The session's channel closes at the end of the stream.
fn route<R: AsyncRead + Unpin + Send + 'static>(
    mut input: R,
) -> (
    mpsc::UnboundedReceiver<Incoming>,
    mpsc::UnboundedReceiver<Option<String>>,
) {
    let (requests_tx, requests) = mpsc::unbounded_channel();
    let (verdicts_tx, verdicts) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match protocol::receive::<_, ToRealizer>(&mut input).await {
                Ok(Some(ToRealizer::Verdict { hit })) => {
                    let _ = verdicts_tx.send(hit);
                }
                Ok(Some(request)) => {
                    if requests_tx.send(Ok(request)).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = requests_tx.send(Err(format!("{e:#}")));
                    return;
                }
            }
        }
    });
    (requests, verdicts)
}

/// The client, as the realizer sees it while it works for it.
struct Client {
    out: mpsc::UnboundedSender<FromRealizer>,
    verdicts: tokio::sync::Mutex<mpsc::UnboundedReceiver<Option<String>>>,
    downloaded: Arc<AtomicU64>,
}

impl Requester for Client {
    fn holds<'a>(
        &'a self,
        format: &'a str,
        value: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<TreeHash>>> + Send + 'a>> {
        Box::pin(async move {
            let report = FromRealizer::Report {
                format: format.to_owned(),
                value: value.to_owned(),
            };
            self.out.send(report).map_err(|_| anyhow!("the client is gone"))?;
            let hit = self.verdicts.lock().await.recv().await.context("the client is gone")?;
            hit.map(|tree| {
                tree.parse()
                    .map_err(|_| anyhow!("the client's verdict `{tree}` is not a tree hash"))
            })
            .transpose()
        })
    }

    fn downloaded(&self, total: u64) {
        self.downloaded.store(total, Ordering::Relaxed);
    }
}

/// One client's session.
struct Session {
    realizer: Realizer,
    /// Where the Nix binary cache entries of pushed trees go, if anywhere.
    nix: Option<Arc<CacheWriter>>,
    /// Those entries being written, after the answers: awaited when the session ends.
    behind: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    out: mpsc::UnboundedSender<FromRealizer>,
    requests: mpsc::UnboundedReceiver<Incoming>,
    downloaded: Arc<AtomicU64>,
}

impl Session {
    async fn run(mut self) -> Result<()> {
        let remote = self.realizer.remote().map(|r| r.to_string());
        self.say(FromRealizer::Hello {
            protocol: protocol::VERSION,
            cab: env!("CARGO_PKG_VERSION").into(),
            features: self.realizer.features().to_vec(),
            remote,
            modules: vec![self.realizer.environment().fetcher.to_string()],
        });
        match self.requests.recv().await {
            None => return Ok(()),
            Some(Ok(ToRealizer::Hello { protocol: theirs, cab })) => {
                if let Err(e) = protocol::check_version(theirs, &cab) {
                    return Err(self.refuse(e.to_string()));
                }
            }
            Some(Ok(_)) => return Err(self.refuse("the client did not begin with its handshake".into())),
            Some(Err(e)) => return Err(self.refuse(e)),
        }
        loop {
            match self.requests.recv().await {
                None => return Ok(()),
                Some(Ok(ToRealizer::Realize { derivation, label })) => {
                    let label = clean_label(&label);
                    if let Some(answer) = self.realize(&derivation, &label).await {
                        let pushed = match &answer {
                            FromRealizer::Done { tree, whole, .. } => vec![whole.clone(), tree.clone()],
                            _ => Vec::new(),
                        };
                        self.say(answer);
                        self.push_nix_behind(pushed, &label);
                    } else {
                        // The client left or broke the protocol in the middle: the run is
                        // dropped (its guest with it), and so is the session.
                        bail!("{label}: the client left in the middle of the derivation");
                    }
                }
                Some(Ok(ToRealizer::Hello { .. })) => return Err(self.refuse("a second handshake".into())),
                Some(Ok(ToRealizer::Verdict { .. })) => unreachable!("verdicts are routed to the run"),
                Some(Err(e)) => return Err(self.refuse(e)),
            }
        }
    }

    /// Realizes one derivation and says how it went; `None` if the client went away meanwhile.
    async fn realize(&mut self, derivation: &serde_json::Value, label: &str) -> Option<FromRealizer> {
        let drv = match self.accept(derivation) {
            Ok(drv) => drv,
            Err(e) => {
                tracing::warn!("{label}: refused: {e:#}");
                return Some(failed("refused", format!("{e:#}")));
            }
        };
        tracing::info!("{label}: realizing {} for a client", drv.id());
        self.downloaded.store(0, Ordering::Relaxed);
        let (realizer, requests) = (&self.realizer, &mut self.requests);
        let run = async {
            let realized = realizer.realize(&drv, label).await?;
            push(realizer, &realized, label).await?;
            Ok::<_, anyhow::Error>(realized)
        };
        tokio::pin!(run);
        let mut ticks = tokio::time::interval(PROGRESS_EVERY);
        let (mut said, mut said_at) = (u64::MAX, Instant::now());
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                _ = ticks.tick() => {
                    let bytes = self.downloaded.load(Ordering::Relaxed);
                    if bytes != said || said_at.elapsed() >= ALIVE_EVERY {
                        (said, said_at) = (bytes, Instant::now());
                        let _ = self.out.send(FromRealizer::Progress { bytes });
                    }
                }
                // Nothing but verdicts may come during a run: anything else (or the end of
                // the stream) means the client is gone.
                _ = requests.recv() => return None,
            }
        };
        Some(match result {
            Ok(realized) => done(realized),
            Err(e) => match e.chain().find_map(|c| c.downcast_ref::<HeldElsewhere>()) {
                Some(held) => FromRealizer::Stopped {
                    whole: held.whole.to_string(),
                    rev: held.rev.clone(),
                    reported: held.reported.clone(),
                },
                None => {
                    tracing::warn!("{e:#}");
                    let cause = match Cause::of(&e) {
                        Cause::Local => "local",
                        Cause::NotFound => "not-found",
                        Cause::Unreachable => "unreachable",
                        Cause::Content => "content",
                    };
                    failed(cause, format!("{e:#}"))
                }
            },
        })
    }

    /// The derivation, if this realizer runs it: canonical, of the fetcher it ships, with
    /// every feature it requires offered here, and a remote store to put its tree on.
    fn accept(&self, derivation: &serde_json::Value) -> Result<Derivation> {
        let drv = Derivation::from_json(derivation).context("not a derivation this cab reads")?;
        let ours = self.realizer.environment().fetcher;
        match &drv.builder {
            Builder::Wasm { module } if *module == ours => {}
            Builder::Wasm { module } => {
                bail!("it names the fetcher module {module}; this realizer runs only the one it ships, {ours}")
            }
            Builder::Local { path } => {
                bail!(
                    "it copies the local path {}, which only its own machine can do",
                    path.display()
                )
            }
        }
        let offered = self.realizer.features();
        if let Some(missing) = drv.features.iter().find(|f| !offered.contains(f)) {
            bail!(
                "it requires the feature `{missing}`; this realizer offers {}",
                offered.join(", ")
            );
        }
        if self.realizer.remote().is_none() {
            bail!("this realizer has no remote store to put trees on (set `remote` in its configuration)");
        }
        Ok(drv)
    }

    /// Writes the Nix binary cache entries of `trees` in the background.
    fn push_nix_behind(&self, mut trees: Vec<String>, label: &str) {
        trees.dedup();
        let (Some(nix), Some(remote)) = (self.nix.clone(), self.realizer.remote().cloned()) else {
            return;
        };
        let (store, label) = (self.realizer.store().clone(), label.to_owned());
        let task = tokio::spawn(async move {
            for tree in trees.iter().filter_map(|t| t.parse::<TreeHash>().ok()) {
                if let Err(e) = remote.push(&store, &tree, Some(&nix)).await {
                    tracing::warn!("{label}: cannot write the Nix cache entry of {tree} on {remote}: {e:#}");
                }
            }
        });
        let mut behind = self.behind.locked();
        behind.retain(|t| !t.is_finished());
        behind.push(task);
    }

    fn say(&self, message: FromRealizer) {
        let _ = self.out.send(message);
    }

    /// Tells the client why the session ends, and returns that as the error.
    fn refuse(&self, why: String) -> anyhow::Error {
        self.say(failed("refused", why.clone()));
        anyhow!("realizer protocol: {why}")
    }
}

/// Puts a result on the remote (it may have been here before: the client needs it there):
/// the whole tree, and the part the subpath names.
async fn push(realizer: &Realizer, realized: &Realized, label: &str) -> Result<()> {
    let remote = realizer.remote.as_ref().context("no remote store")?;
    let mut trees = vec![realized.whole];
    if realized.tree != realized.whole {
        trees.push(realized.tree);
    }
    for tree in trees {
        let pushed = remote
            .push(&realizer.store, &tree, None)
            .await
            .with_context(|| format!("{label}: cannot push {tree} to {remote}"))?;
        if !pushed.already {
            tracing::info!("{label}: pushed {tree} to {remote} ({} bytes)", pushed.bytes);
        }
    }
    Ok(())
}

fn failed(cause: &str, message: String) -> FromRealizer {
    FromRealizer::Failed {
        message,
        cause: cause.into(),
    }
}

fn done(realized: Realized) -> FromRealizer {
    let reported = realized
        .rev
        .iter()
        .map(|rev| ("git-rev".to_owned(), rev.clone()))
        .collect();
    FromRealizer::Done {
        tree: realized.tree.to_string(),
        nar: realized.nar.to_string(),
        rev: realized.rev,
        whole: realized.whole.to_string(),
        downloaded: realized.downloaded,
        stopped_early: realized.stopped_early,
        reported,
    }
}

/// A label from the client, fit for this machine's logs: no control characters, not long.
fn clean_label(label: &str) -> String {
    let printable: String = label.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    crate::text::shorten(&printable).into_owned()
}
