//! Where the remote store comes into a realization: a pinned tree it holds is substituted
//! whole, or — for a tree about to be served — made ready from its listing alone, its files
//! fetched as they are read ([`LazyTree`]); a commit the fetcher reports may be on the
//! remote's index; and trees new to this store are pushed to it.

use anyhow::{Context, Result};

use super::{Realized, Realizer, Source};
use crate::derivation::Derivation;
use crate::hash::tree::Node;
use crate::hash::{NarHash, TreeHash};
use crate::store::remote::lazy::LazyTree;
use crate::store::remote::{Fetched, Listing, Remote};
use crate::store::{IndexKey, Store};
use crate::sync::MutexExt;

impl Realizer {
    /// A pinned tree the remote holds, fetched from it whole instead of from its source. A
    /// remote that fails (down, slow, corrupt) is warned about, and the source is asked
    /// instead.
    pub(super) async fn substitute(&self, drv: &Derivation, label: &str) -> Result<Option<Realized>> {
        let (Some(remote), Some(hash)) = (&self.remote, drv.known_tree()) else {
            return Ok(None);
        };
        let fetched = match remote.fetch(&self.store, &hash).await {
            Ok(Some(fetched)) => fetched,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(
                    "{label}: the remote {remote} could not give {hash} ({e:#}); fetching it from its source instead"
                );
                return Ok(None);
            }
        };
        let published = self
            .store
            .published(&hash)?
            .with_context(|| format!("{label}: {hash} came from {remote} but is not published here"))?;
        self.check_expected(drv, label, &hash, &published.nar)?;
        tracing::info!(
            "{label}: {hash} from the remote {remote} ({} objects, {} bytes)",
            fetched.objects,
            fetched.bytes
        );
        let realized = self.in_store(hash, published.nar, drv.rev.clone(), hash, Source::Substituted)?;
        Ok(Some(Realized {
            downloaded: fetched.bytes,
            ..realized
        }))
    }

    /// A pinned tree the remote holds, ready from its listing alone — one request for its
    /// bundle — with its files fetched as they are read (and all of them in the background
    /// with `complete`). `None` when there is no remote or it lacks the tree; a failing remote
    /// is warned about, and the tree realized as usual.
    pub(super) async fn serve_lazily(&self, drv: &Derivation, label: &str, complete: bool) -> Result<Option<Realized>> {
        let (Some(remote), Some(tree)) = (&self.remote, drv.known_tree()) else {
            return Ok(None);
        };
        let (nar, fetched, listing) = match remote.fetch_listing(&self.store, &tree).await {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!("{label}: the remote {remote} could not list {tree} ({e:#}); realizing it as usual");
                return Ok(None);
            }
        };
        // The narHash comes from the lock (or the remote's record), never guessed.
        if let Some(want) = &drv.nar_hash
            && *want != nar
        {
            anyhow::bail!(
                "{label}: narHash mismatch: the remote {remote} records another narHash for {tree}\n  \
                 wanted: narHash = \"{want}\"\n     got: narHash = \"{nar}\""
            );
        }
        self.lazily(tree, nar, drv.rev.clone(), label, complete, fetched, listing)
            .await
            .map(Some)
    }

    /// `tree` ready from its `listing` (`fetched` from the remote, whose record gives `nar`),
    /// its files fetched as they are read (all of them in the background with `complete`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn lazily(
        &self,
        tree: TreeHash,
        nar: NarHash,
        rev: Option<String>,
        label: &str,
        complete: bool,
        fetched: Fetched,
        listing: Listing,
    ) -> Result<Realized> {
        let remote = self.remote.as_ref().context("no remote store")?;
        // Live from before the first answer; the guard stays with the listing until it is
        // written (see `LazyTree::new`).
        let guard = {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || -> Result<_> {
                let guard = store.guard()?;
                store.declare_live(&[tree])?;
                Ok(guard)
            })
            .await
            .context("a storing task panicked")??
        };
        tracing::info!(
            "{label}: {tree} served from the remote {remote} as its files are read (listing: {} objects, {} bytes)",
            fetched.objects,
            fetched.bytes
        );
        let lazy = LazyTree::new(remote.clone(), self.store.clone(), listing, guard, nar, label)?;
        if complete {
            lazy.complete_in_background();
        }
        let root: Node = lazy.root().clone();
        Ok(Realized {
            tree,
            nar,
            rev,
            whole: tree,
            downloaded: fetched.bytes,
            stopped_early: false,
            source: Source::Lazily,
            root,
            contents: lazy,
        })
    }

    /// Waits for the pushes started in the background (by trees realized to be served); a
    /// mount does before it exits.
    pub async fn finish_pushes(&self) {
        let pushes = std::mem::take(&mut *self.pushes.locked());
        for push in pushes {
            let _ = push.await;
        }
    }

    /// Pushes `trees` (new to this store) to the remote, if pushing is on: before returning
    /// (`wait`), or in the background, awaited by [`Realizer::finish_pushes`].
    /// Pushes started in the background and not finished yet.
    pub fn pushes_pending(&self) -> usize {
        self.pushes.locked().iter().filter(|p| !p.is_finished()).count()
    }

    pub(super) async fn push(&self, label: &str, trees: Vec<TreeHash>, wait: bool) {
        let (Some(remote), Some(cache)) = (self.remote.clone(), self.push.clone()) else {
            return;
        };
        let (store, label) = (self.store.clone(), crate::text::shorten(label).into_owned());
        let task = tokio::spawn(async move {
            for tree in trees {
                match remote.push(&store, &tree, Some(&cache)).await {
                    Ok(pushed) if pushed.already => tracing::debug!("{label}: {tree} is on {remote} already"),
                    Ok(pushed) => tracing::info!(
                        "{label}: pushed {tree} to {remote} ({} objects, {} bytes)",
                        pushed.objects,
                        pushed.bytes
                    ),
                    Err(e) => tracing::warn!("{label}: cannot push {tree} to {remote}: {e:#}"),
                }
            }
        });
        if wait {
            let _ = task.await;
            return;
        }
        let mut pushes = self.pushes.locked();
        pushes.retain(|p| !p.is_finished());
        pushes.push(task);
    }
}

/// The tree a remote's index names for `key`, brought into `store`; `None` (with a warning
/// where the remote failed) when it has none to give.
pub(super) async fn tree_by_index(remote: &Remote, store: &Store, key: &IndexKey, label: &str) -> Option<TreeHash> {
    let tree = match remote.lookup(key).await {
        Ok(tree) => tree?,
        Err(e) => {
            tracing::warn!("{label}: cannot ask the remote {remote} ({e:#}); fetching from the source");
            return None;
        }
    };
    match remote.fetch(store, &tree).await {
        Ok(Some(fetched)) => {
            tracing::info!(
                "{label}: {tree} ({} {}) from the remote {remote} ({} objects, {} bytes)",
                key.format,
                key.value,
                fetched.objects,
                fetched.bytes
            );
            Some(tree)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("{label}: the remote {remote} could not give {tree} ({e:#}); fetching from the source");
            None
        }
    }
}
