//! One derivation realized on another machine, from the client's side: sent in its canonical
//! form; each line the fetcher reports there answered from this store (a tree held here stops
//! the run there, and is the answer); and the result verified against the remote store before
//! it is used — brought whole, or served lazily from its listing, as the caller wants. A
//! realizer whose result the remote does not bear out is refused, by name.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use super::protocol::{FromRealizer, ToRealizer};
use super::ssh::{Connection, SshTarget};
use crate::derivation::Derivation;
use crate::hash::tree::{Object, root_hash};
use crate::hash::{NarHash, TreeHash};
use crate::realizer::fifo::{self, note_value};
use crate::realizer::finish::Found;
use crate::realizer::progress::Progress;
use crate::realizer::{Cause, Failed, NotFound, Realized, Realizer, Source, Want};
use crate::store::remote::Remote;

/// How long a realizer may stay silent in the middle of a derivation (it says how the
/// download goes every few seconds) before it counts as gone.
const SILENCE: Duration = Duration::from_secs(60);

/// Why a realization on another machine did not give a tree.
pub(super) enum Failure {
    /// The connection failed before the realizer answered anything: a kept connection may
    /// have closed meanwhile, so another may be opened.
    Stale(anyhow::Error),
    /// The realizer failed on its side (gone, out of space, cut off from the forge): another
    /// realizer, or this machine, may do better.
    Next(anyhow::Error),
    /// The derivation's own failure (what it names does not exist, its tree is not the one
    /// pinned), or an answer that cannot be verified: no other realizer is asked.
    Final(anyhow::Error),
}

/// A realizer's claimed result.
struct Claim {
    tree: TreeHash,
    nar: NarHash,
    whole: TreeHash,
    rev: Option<String>,
    downloaded: u64,
    stopped_early: bool,
    reported: Vec<(String, String)>,
}

impl Realizer {
    /// Realizes `drv` over `connection` (module doc).
    pub(super) async fn realize_on(
        &self,
        connection: &mut Connection,
        target: &SshTarget,
        drv: &Derivation,
        label: &str,
        want: Want,
        on_rev: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Realized, Failure> {
        let realize = ToRealizer::Realize {
            derivation: drv.to_json(),
            label: crate::text::shorten(label).into_owned(),
        };
        connection.send(&realize).await.map_err(Failure::Stale)?;
        let progress = Progress::new(&format!("{label} (on {target})"), self.progress_bars);
        let result = self
            .follow(connection, target, drv, label, want, on_rev, &progress)
            .await;
        progress.finish();
        result
    }

    /// Answers the realizer's reports until its result, then verifies and takes the result.
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        connection: &mut Connection,
        target: &SshTarget,
        drv: &Derivation,
        label: &str,
        want: Want,
        on_rev: &(dyn Fn(&str) + Send + Sync),
        progress: &Progress,
    ) -> Result<Realized, Failure> {
        let lie = |what: String| Failure::Final(anyhow!("{label}: refused the answer of realizer {target}: {what}"));
        let mut rev = drv.rev.clone();
        if let Some(rev) = &rev {
            on_rev(rev);
        }
        let mut answered = false;
        loop {
            let message = match connection.receive(SILENCE).await {
                Ok(message) => message,
                Err(e) if !answered => return Err(Failure::Stale(e)),
                Err(e) => return Err(Failure::Next(e)),
            };
            answered = true;
            match message {
                FromRealizer::Report { format, value } => {
                    let known = rev.is_some();
                    note_value(drv, label, &format, &value, &mut rev).map_err(|e| lie(format!("{e:#}")))?;
                    if !known && let Some(rev) = &rev {
                        on_rev(rev);
                    }
                    let held = fifo::held(&self.store, drv.method.as_str(), &format, &value).unwrap_or(None);
                    let verdict = ToRealizer::Verdict {
                        hit: held.map(|t| t.to_string()),
                    };
                    connection.send(&verdict).await.map_err(Failure::Next)?;
                }
                FromRealizer::Progress { bytes } => progress.downloaded_so_far(bytes),
                FromRealizer::Stopped {
                    whole,
                    rev: said,
                    reported,
                } => {
                    let whole: TreeHash = whole.parse().map_err(|_| lie(format!("a bad tree hash `{whole}`")))?;
                    if said.is_some() && said != rev {
                        return Err(lie(format!("it stopped at commit {said:?}, but reported {rev:?}")));
                    }
                    return self.held_here(drv, label, whole, rev, reported, &lie);
                }
                FromRealizer::Done {
                    tree,
                    nar,
                    rev: said,
                    whole,
                    downloaded,
                    stopped_early,
                    reported,
                } => {
                    let parse = |text: &str| {
                        text.parse::<TreeHash>()
                            .map_err(|_| lie(format!("a bad tree hash `{text}`")))
                    };
                    let claim = Claim {
                        tree: parse(&tree)?,
                        whole: parse(&whole)?,
                        nar: nar.parse().map_err(|_| lie(format!("a bad narHash `{nar}`")))?,
                        rev: said,
                        downloaded,
                        stopped_early,
                        reported,
                    };
                    if let Some(want) = &rev
                        && claim.rev.as_ref() != Some(want)
                    {
                        return Err(lie(format!("its result is of commit {:?}, not {want}", claim.rev)));
                    }
                    tracing::info!(
                        "{label}: realized on {target} as {} ({} bytes downloaded there)",
                        claim.tree,
                        claim.downloaded
                    );
                    return self.take(drv, label, want, claim, &lie).await;
                }
                FromRealizer::Failed { message, cause } => {
                    let message = format!("{label}: on realizer {target}: {message}");
                    return Err(match cause.as_str() {
                        "not-found" => Failure::Final(anyhow::Error::new(NotFound(message))),
                        "content" => Failure::Final(Failed::error(Cause::Content, message)),
                        _ => Failure::Next(anyhow!(message)),
                    });
                }
                FromRealizer::Hello { .. } => return Err(Failure::Next(anyhow!("a second handshake"))),
            }
        }
    }

    /// The realizer stopped on a line naming `whole`, which this store said it holds: finished
    /// here, as a local run that stops early is.
    fn held_here(
        &self,
        drv: &Derivation,
        label: &str,
        whole: TreeHash,
        rev: Option<String>,
        reported: Vec<(String, String)>,
        lie: &(dyn Fn(String) -> Failure + Sync),
    ) -> Result<Realized, Failure> {
        let finish = || -> Result<Option<Realized>> {
            let _guard = self.store.guard()?;
            if self.store.published(&whole)?.is_none() {
                return Ok(None);
            }
            let found = Found {
                whole,
                ingested: None,
                rev,
                downloaded: 0,
                stopped_early: true,
                reported,
            };
            self.finish(drv, label, found).map(Some)
        };
        match finish() {
            Ok(Some(realized)) => {
                tracing::info!("{label}: this machine holds {whole}; the realizer stopped after its first report");
                Ok(realized)
            }
            Ok(None) => Err(lie(format!("it stopped at {whole}, which this machine does not hold"))),
            Err(e) => Err(Failure::Final(e)),
        }
    }

    /// The realizer's result, verified against the remote store and the derivation: brought
    /// whole (its narHash computed here), or served lazily from its listing.
    async fn take(
        &self,
        drv: &Derivation,
        label: &str,
        want: Want,
        claim: Claim,
        lie: &(dyn Fn(String) -> Failure + Sync),
    ) -> Result<Realized, Failure> {
        let remote = self
            .remote
            .as_ref()
            .ok_or_else(|| Failure::Final(anyhow!("{label}: no remote store to take the tree from")))?;
        let realized = match want {
            Want::Whole => self.take_whole(drv, label, remote, &claim, lie).await?,
            Want::Pin => self.take_lazily(drv, label, remote, &claim, false, lie).await?,
            Want::Serve { complete } => self.take_lazily(drv, label, remote, &claim, complete, lie).await?,
        };
        if realized.tree != claim.tree || realized.nar != claim.nar {
            return Err(lie(format!(
                "it says tree {} with narHash {}, but the remote {remote} gives tree {} with narHash {}",
                claim.tree, claim.nar, realized.tree, realized.nar
            )));
        }
        Ok(Realized {
            downloaded: claim.downloaded,
            stopped_early: claim.stopped_early,
            source: Source::Elsewhere,
            ..realized
        })
    }

    async fn take_whole(
        &self,
        drv: &Derivation,
        label: &str,
        remote: &Remote,
        claim: &Claim,
        lie: &(dyn Fn(String) -> Failure + Sync),
    ) -> Result<Realized, Failure> {
        let whole = claim.whole;
        match remote.fetch(&self.store, &whole).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(lie(format!("its tree {whole} is not on the remote {remote}"))),
            Err(e) => return Err(lie(format!("its tree {whole} cannot be taken from the remote: {e:#}"))),
        }
        let finish = || -> Result<Realized> {
            let _guard = self.store.guard()?;
            let found = Found {
                whole,
                ingested: None,
                rev: claim.rev.clone(),
                downloaded: 0,
                stopped_early: claim.stopped_early,
                reported: claim.reported.clone(),
            };
            self.finish(drv, label, found)
        };
        finish().map_err(Failure::Final)
    }

    async fn take_lazily(
        &self,
        drv: &Derivation,
        label: &str,
        remote: &Remote,
        claim: &Claim,
        complete: bool,
        lie: &(dyn Fn(String) -> Failure + Sync),
    ) -> Result<Realized, Failure> {
        let tree = claim.tree;
        // Cut from the whole tree: the part must be where the subpath says.
        if tree != claim.whole {
            let at = self.subpath_on_remote(remote, &claim.whole, &drv.subpath).await;
            match at {
                Ok(Some(at)) if at == tree => {}
                Ok(Some(at)) => {
                    return Err(lie(format!(
                        "it says {tree} is at /{} of {}, but there the remote has {at}",
                        drv.subpath.join("/"),
                        claim.whole
                    )));
                }
                Ok(None) => return Err(lie(format!("its tree {} is not on the remote {remote}", claim.whole))),
                Err(e) => return Err(lie(format!("{e:#}"))),
            }
        }
        // The part may be here already (another island's, or realized before).
        if let Some(held) = self.published(&tree).map_err(Failure::Final)? {
            return Ok(Realized {
                rev: claim.rev.clone(),
                whole: claim.whole,
                ..held
            });
        }
        let (nar, fetched, listing) = match remote.fetch_listing(&self.store, &tree).await {
            Ok(Some(found)) => found,
            Ok(None) => return Err(lie(format!("its tree {tree} is not on the remote {remote}"))),
            Err(e) => return Err(lie(format!("its tree {tree} cannot be listed from the remote: {e:#}"))),
        };
        if nar != claim.nar {
            return Err(lie(format!(
                "it says tree {tree} has narHash {}, but the remote {remote} records {nar}",
                claim.nar
            )));
        }
        self.check_expected(drv, label, &tree, &nar).map_err(Failure::Final)?;
        let realized = self
            .lazily(tree, nar, claim.rev.clone(), label, complete, fetched, listing)
            .await
            .map_err(Failure::Final)?;
        Ok(Realized {
            whole: claim.whole,
            ..realized
        })
    }

    /// The tree at `subpath` in the remote's `whole`, read from its listing; `None` if the
    /// remote lacks `whole`.
    async fn subpath_on_remote(
        &self,
        remote: &Remote,
        whole: &TreeHash,
        subpath: &[String],
    ) -> Result<Option<TreeHash>> {
        let Some((_, _, listing)) = remote.fetch_listing(&self.store, whole).await? else {
            return Ok(None);
        };
        let mut at = *whole;
        for name in subpath {
            let Some(Object::Directory(entries)) = listing.object(&at) else {
                anyhow::bail!("/{} is not a directory in {whole}", subpath.join("/"));
            };
            let entry = entries
                .iter()
                .find(|e| e.name == name.as_bytes())
                .with_context(|| format!("{whole} has no /{}", subpath.join("/")))?;
            at = root_hash(&entry.node);
        }
        Ok(Some(at))
    }
}
