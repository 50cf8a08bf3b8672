//! One realization per derivation per store, in this process or any other: a store-wide lock
//! per derivation id, and a note the holder leaves in it for whoever waited — four processes
//! fetching one tarball download it once.

use std::time::Duration;

use anyhow::Result;

use super::{Realized, Realizer, Source};
use crate::derivation::Derivation;
use crate::hash::TreeHash;
use crate::store::StoreLock;

/// What the last realization of a derivation gave, as its holder notes it in the
/// derivation's lock: `<unix nanoseconds> <tree> <whole> <rev or ->`.
pub(super) struct LastRealized {
    at: std::time::SystemTime,
    tree: TreeHash,
    whole: TreeHash,
    rev: Option<String>,
}

impl From<&Realized> for LastRealized {
    fn from(r: &Realized) -> Self {
        LastRealized {
            at: std::time::SystemTime::now(),
            tree: r.tree,
            whole: r.whole,
            rev: r.rev.clone(),
        }
    }
}

impl std::fmt::Display for LastRealized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nanos = self
            .at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let rev = self.rev.as_deref().unwrap_or("-");
        writeln!(f, "{nanos} {} {} {rev}", self.tree, self.whole)
    }
}

impl std::str::FromStr for LastRealized {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.split_whitespace();
        let nanos: u64 = parts.next().and_then(|p| p.parse().ok()).ok_or(())?;
        let tree = parts.next().and_then(|p| p.parse().ok()).ok_or(())?;
        let whole = parts.next().and_then(|p| p.parse().ok()).ok_or(())?;
        let rev = match parts.next().ok_or(())? {
            "-" => None,
            rev => Some(rev.to_owned()),
        };
        Ok(LastRealized {
            at: std::time::UNIX_EPOCH + Duration::from_nanos(nanos),
            tree,
            whole,
            rev,
        })
    }
}

impl Realizer {
    /// Waits until no other realization of `drv` runs on this store; says whether it waited.
    pub(super) async fn lock_derivation(&self, drv: &Derivation, label: &str) -> Result<(StoreLock, bool)> {
        let name = format!("drv-{}", drv.id().to_hex());
        let mut waited = false;
        loop {
            if let Some(lock) = self.store.try_lock(&name)? {
                return Ok((lock, waited));
            }
            if !waited {
                tracing::info!("{label}: another realization of it is running; waiting for it");
                waited = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The result of a realization of `drv` that ended after `asked`, noted in its lock by
    /// the process that held it.
    pub(super) fn realized_meanwhile(
        &self,
        lock: &StoreLock,
        drv: &Derivation,
        label: &str,
        asked: std::time::SystemTime,
    ) -> Result<Option<Realized>> {
        let Some(last) = lock.read().ok().and_then(|text| text.parse::<LastRealized>().ok()) else {
            return Ok(None);
        };
        let _guard = self.store.guard()?;
        if last.at < asked || self.store.published(&last.whole)?.is_none() {
            return Ok(None);
        }
        let published = self.store.published(&last.tree)?;
        let Some(published) = published else { return Ok(None) };
        self.check_expected(drv, label, &last.tree, &published.nar)?;
        self.store.declare_live(&[last.tree, last.whole])?;
        tracing::info!("{label}: realized by another process meanwhile: {}", last.tree);
        let realized = self.in_store(last.tree, published.nar, last.rev, last.whole, Source::Meanwhile)?;
        Ok(Some(Realized {
            stopped_early: true,
            ..realized
        }))
    }
}
