//! Ref listings as the browsing levels see them: what a repository's HEAD points to (the
//! listing of `github/OWNER/REPO/`) and the branch and tag names under a prefix (the
//! directory `github/OWNER/REPO/release/`), asked of the forge by the fetcher's `refs` format
//! through the realizer. A listing is a question to the forge, like a branch's commit, and is
//! kept [`LISTING_KEPT`]; a request that needs one still on its way waits on it as on a
//! realization (parked, no thread held); a failure is remembered by its cause, as an island's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::failures::{Failure, Failures};
use super::realization::Realization;
use crate::derivation::to_refs_derivation;
use crate::island::Island;
use crate::realizer::{Cause, Realizer, RefList};
use crate::sync::MutexExt;

/// How long a listing answers before the forge is asked again: the looks of one user action
/// and the next few (`cd`, `ls`, a shell's completion), not the mount's life — a new branch
/// shows up within this long.
pub const LISTING_KEPT: Duration = Duration::from_secs(30);
/// At most this many listings are kept (distinct repositories and prefixes must not grow
/// memory): with at most 1,000 names each, a few MiB at worst.
const LISTINGS_KEPT: usize = 256;

/// Which listing: a repository (an island without ref, rev or hashes) and the prefix whose
/// refs are listed (`None`: what HEAD points to).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ListingKey {
    /// The repository.
    pub repo: Island,
    /// `release` for the refs under `release/`.
    pub prefix: Option<String>,
}

/// A listing, as far as is known now.
pub enum Listing {
    /// Asked and answered within [`LISTING_KEPT`].
    Ready(Arc<RefList>),
    /// On its way.
    Pending(Arc<Realization>),
    /// Failed recently.
    Failed(Failure),
}

enum Kept {
    /// An answer, when it came, and its serial number (see [`RefListings::generation`]).
    Ready(Arc<RefList>, Instant, u64),
    Pending(Arc<Realization>),
}

/// The ref listings of one mount.
pub struct RefListings {
    realizer: Arc<Realizer>,
    runtime: tokio::runtime::Handle,
    kept: Mutex<HashMap<ListingKey, Kept>>,
    failures: Failures<ListingKey>,
    /// The last serial number given to an answer.
    serial: AtomicU64,
}

impl RefListings {
    /// Listings asked through `realizer`, on `runtime`.
    pub fn new(realizer: Arc<Realizer>, runtime: tokio::runtime::Handle) -> RefListings {
        RefListings {
            realizer,
            runtime,
            kept: Mutex::default(),
            failures: Failures::default(),
            serial: AtomicU64::new(0),
        }
    }

    /// The listing `key` names if one is kept (never asks).
    pub fn kept(&self, key: &ListingKey) -> Option<Arc<RefList>> {
        match self.kept.locked().get(key) {
            Some(Kept::Ready(list, at, _)) if at.elapsed() < LISTING_KEPT => Some(list.clone()),
            _ => None,
        }
    }

    /// A number that changes whenever what the listing `key` shows may have: a new answer,
    /// or the last one grown too old to answer (the next look asks again). The browsing
    /// levels' mtime carries it, so the kernel drops its copy of their listing with it.
    pub fn generation(&self, key: &ListingKey) -> u64 {
        match self.kept.locked().get(key) {
            Some(Kept::Ready(_, at, serial)) if at.elapsed() < LISTING_KEPT => serial * 2,
            Some(Kept::Ready(_, _, serial)) => serial * 2 + 1,
            _ => 1,
        }
    }

    /// The listing `key` names, asking the forge if none is kept (never waits).
    pub fn get(self: &Arc<Self>, key: &ListingKey) -> Listing {
        let now = Instant::now();
        let mut kept = self.kept.locked();
        match kept.get(key) {
            Some(Kept::Ready(list, at, _)) if now.duration_since(*at) < LISTING_KEPT => {
                return Listing::Ready(list.clone());
            }
            Some(Kept::Pending(asked)) if !asked.is_done() => return Listing::Pending(asked.clone()),
            _ => {}
        }
        if let Some(failure) = self.failures.remembered(key) {
            return Listing::Failed(failure);
        }
        let label = format!(
            "{} (refs{})",
            crate::text::shorten(&key.repo.to_string()),
            key.prefix
                .as_deref()
                .map(|p| format!(" under {p}/"))
                .unwrap_or_default()
        );
        let drv = match to_refs_derivation(&key.repo, key.prefix.as_deref(), self.realizer.environment()) {
            Ok(drv) => drv,
            Err(e) => {
                let failure = Failure::of(e);
                self.failures.remember(key, &failure);
                return Listing::Failed(failure);
            }
        };
        if kept.len() >= LISTINGS_KEPT {
            kept.retain(|_, k| match k {
                Kept::Ready(_, at, _) => now.duration_since(*at) < LISTING_KEPT,
                Kept::Pending(asked) => !asked.is_done(),
            });
            // All fresh: the oldest answer goes (it is asked again if looked at again).
            let oldest = kept
                .iter()
                .filter_map(|(key, k)| match k {
                    Kept::Ready(_, at, _) => Some((*at, key)),
                    Kept::Pending(_) => None,
                })
                .min_by_key(|(at, _)| *at)
                .map(|(_, key)| key.clone());
            if kept.len() >= LISTINGS_KEPT
                && let Some(oldest) = oldest
            {
                kept.remove(&oldest);
            }
        }
        let asked = Arc::new(Realization::default());
        kept.insert(key.clone(), Kept::Pending(asked.clone()));
        drop(kept);
        tracing::debug!("{label}: asking the forge");
        let listings = self.clone();
        let (key, task_asked) = (key.clone(), asked.clone());
        self.runtime.spawn(async move {
            let realizer = listings.realizer.clone();
            let outcome = tokio::spawn(async move { realizer.refs(&drv, &label).await.map_err(Failure::of) })
                .await
                .unwrap_or_else(|e| {
                    Err(Failure {
                        message: format!("a ref listing panicked (a bug in cab): {e}"),
                        cause: Cause::Unreachable,
                    })
                });
            let failed = match outcome {
                Ok(list) => {
                    listings.failures.forget(&key);
                    let serial = listings.serial.fetch_add(1, Ordering::Relaxed) + 1;
                    let ready = Kept::Ready(Arc::new(list), Instant::now(), serial);
                    listings.kept.locked().insert(key, ready);
                    None
                }
                Err(failure) => {
                    listings.failures.remember(&key, &failure);
                    listings.kept.locked().remove(&key);
                    Some(failure)
                }
            };
            task_asked.finish(failed);
        });
        Listing::Pending(asked)
    }
}

/// The names one level below `prefix` (`None`: the repository's top) in `list`, each with
/// whether it is a ref (else a prefix of refs: a directory of them). A name that is both —
/// a branch `a` beside a tag `a/b` — is a ref, as a lookup reads it.
pub fn children(list: &RefList, prefix: Option<&str>) -> Vec<(String, bool)> {
    let under = prefix.map(|p| format!("{p}/")).unwrap_or_default();
    let names = list.head.iter().filter(|_| prefix.is_none()).chain(&list.names);
    let mut out: Vec<(String, bool)> = Vec::new();
    for name in names {
        let Some(rest) = name.strip_prefix(&under) else {
            continue;
        };
        let (first, is_ref) = match rest.split_once('/') {
            Some((first, _)) => (first, false),
            None => (rest, true),
        };
        if first.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(n, _)| n == first) {
            Some(seen) => seen.1 |= is_ref,
            None => out.push((first.to_owned(), is_ref)),
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_level_of_the_ref_namespace() {
        let list = RefList {
            head: Some("main".into()),
            names: ["feature/a/b", "feature/c", "release/1.2", "x", "x/y"]
                .map(String::from)
                .to_vec(),
            more: 0,
        };
        assert_eq!(children(&list, None).len(), 4);
        assert_eq!(children(&list, None)[1], ("main".into(), true));
        assert_eq!(
            children(&list, Some("feature")),
            [("a".into(), false), ("c".into(), true)]
        );
        assert_eq!(children(&list, Some("x")), [("y".into(), true)]);
        assert_eq!(children(&list, Some("feature/a")), [("b".into(), true)]);
        assert!(children(&list, Some("nope")).is_empty());
    }
}
