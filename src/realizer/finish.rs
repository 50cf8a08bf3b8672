//! The end of every realization: the subpath applied, the expected hashes checked, and only
//! then the trees published, indexed and declared live.

use anyhow::{Context, Result, bail};

use super::{Cause, Failed, Realized, Realizer, Source};
use crate::derivation::Derivation;
use crate::hash::{NarHash, TreeHash};
use crate::store::IndexKey;

/// What a realization found, for [`Realizer::finish`] to check and publish.
pub(super) struct Found {
    /// The whole fetched (or found) tree, before the subpath.
    pub whole: TreeHash,
    /// Its narHash when it was just ingested (it is then published here); `None` when it was
    /// found published.
    pub ingested: Option<NarHash>,
    /// The commit, where known.
    pub rev: Option<String>,
    /// Bytes downloaded.
    pub downloaded: u64,
    /// Whether the run stopped early on a tree already stored.
    pub stopped_early: bool,
    /// What the fetcher reported on the FIFO (its `git-*` values are indexed).
    pub reported: Vec<(String, String)>,
}

impl Realizer {
    /// Applies the subpath, checks the expected hashes, then publishes, indexes and declares
    /// both trees live. The caller holds the store's guard (from before its ingest, or from
    /// before it found `found.whole` published).
    pub(super) fn finish(&self, drv: &Derivation, label: &str, found: Found) -> Result<Realized> {
        let Found {
            whole,
            ingested: whole_nar,
            rev,
            downloaded,
            stopped_early,
            reported,
        } = found;
        let tree = if drv.subpath.is_empty() {
            whole
        } else {
            self.store
                .subtree(&whole, &drv.subpath)
                .with_context(|| format!("{label}: bad subpath"))?
        };
        let nar = match (&whole_nar, tree == whole) {
            (Some(nar), true) => *nar,
            _ => match self.store.published(&tree)? {
                Some(p) => p.nar,
                None => self.store.nar_hash_of(&tree)?,
            },
        };
        self.check_expected(drv, label, &tree, &nar)?;
        if let Some(nar) = whole_nar {
            self.store.publish(&whole, &nar)?;
        }
        if tree != whole && self.store.published(&tree)?.is_none() {
            self.store.publish(&tree, &nar)?;
        }
        for (format, value) in &reported {
            if format.starts_with("git-") || format == "http-identity" {
                self.store
                    .record(&IndexKey::new(drv.method.as_str(), format, value), &whole)?;
            }
        }
        if drv.is_pinned() {
            self.store
                .record(&IndexKey::new("derivation", "id", &drv.id().to_string()), &whole)?;
        }
        self.store.declare_live(&[tree, whole])?;
        tracing::info!(
            "{label}: {tree}{}",
            rev.as_ref().map(|r| format!(" (commit {r})")).unwrap_or_default()
        );
        let source = if whole_nar.is_some() {
            Source::Fetched
        } else {
            Source::Stored
        };
        let realized = self.in_store(tree, nar, rev, whole, source)?;
        Ok(Realized {
            downloaded,
            stopped_early,
            ..realized
        })
    }

    /// The tree at `subpath` in the published tree `whole`, published in turn: a part of a
    /// tree already checked needs no fetch. Returns it with its narHash.
    pub fn subtree(&self, whole: &TreeHash, subpath: &[String]) -> Result<(TreeHash, NarHash)> {
        // One guarded section: no collection runs while the part is cut from the whole, and
        // the part is live before the guard goes.
        let _guard = self.store.guard()?;
        let tree = self.store.subtree(whole, subpath)?;
        let nar = match self.store.published(&tree)? {
            Some(published) => published.nar,
            None => {
                let nar = self.store.nar_hash_of(&tree)?;
                self.store.publish(&tree, &nar)?;
                nar
            }
        };
        self.store.declare_live(&[tree])?;
        Ok((tree, nar))
    }

    pub(super) fn check_expected(&self, drv: &Derivation, label: &str, tree: &TreeHash, nar: &NarHash) -> Result<()> {
        if let Some(want) = &drv.hash
            && want != tree
        {
            return Err(Failed::error(
                Cause::Content,
                format!("{label}: hash mismatch\n  wanted: hash = \"{want}\"\n     got: hash = \"{tree}\""),
            ));
        }
        if let Some(want) = &drv.nar_hash
            && want != nar
        {
            return Err(Failed::error(
                Cause::Content,
                format!("{label}: narHash mismatch\n  wanted: narHash = \"{want}\"\n     got: narHash = \"{nar}\""),
            ));
        }
        Ok(())
    }

    /// A lock pinning both a commit and a hash must agree with what this store recorded for
    /// that commit: a hand-edited lock naming another stored tree is refused, not served.
    pub(super) fn check_rev(&self, drv: &Derivation, label: &str, hash: &TreeHash) -> Result<()> {
        let Some(rev) = &drv.rev else { return Ok(()) };
        let Some(whole) = self.store.lookup(&IndexKey::new(drv.method.as_str(), "git-rev", rev))? else {
            return Ok(());
        };
        let got = if drv.subpath.is_empty() {
            whole
        } else {
            match self.store.subtree(&whole, &drv.subpath) {
                Ok(tree) => tree,
                Err(_) => return Ok(()),
            }
        };
        if got != *hash {
            bail!(
                "{label}: hash mismatch: commit {rev} is stored here as another tree than the one pinned\n  \
                 wanted: hash = \"{hash}\"\n     got: hash = \"{got}\""
            );
        }
        Ok(())
    }
}
