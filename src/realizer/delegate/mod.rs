//! Realizers elsewhere: the derivation travels, not the tree. A client with a slow link hands
//! a derivation to `cab realize --stdio` on another machine, reached with the system's `ssh`
//! (its config, keys and agent), as Nix reaches its remote builders; that machine runs the
//! fetcher at its own speed, pushes the tree to the remote store both share, and the client
//! takes the tree from there — lazily, for a mount. Which machine: the first in the list of
//! [`Realizers`] that offers every feature the derivation requires and has a free slot, this
//! machine (`local`) last unless listed elsewhere.
//!
//! Both sides check: the realizer realizes as any realizer does (its own limits, credentials
//! and checks); the client answers each line the fetcher reports from its own store, so that
//! an unchanged island stops there after one round trip ([`Requester`]), and verifies the
//! result against the remote store before using it ([`client`]).

mod client;
pub mod protocol;
pub mod server;
mod ssh;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::sync::Semaphore;

use self::ssh::{Connection, SshTarget};
use super::{Realized, Realizer, Want};
use crate::derivation::Derivation;
use crate::hash::TreeHash;
use crate::sync::MutexExt;

/// How long a realizer that could not be reached is passed over before it is tried again.
const DOWN_FOR: Duration = Duration::from_secs(60);

/// How many realizations a remote realizer runs at once when its URI does not say.
const DEFAULT_JOBS: usize = 4;

/// The machine a realization runs for, when it is not this one (`cab realize --stdio`): asked
/// whether it holds the tree a reported line names (then the run stops: the early stop crosses
/// the wire), and told how the download goes.
pub trait Requester: Send + Sync {
    /// The tree the requester holds for the reported `format value`, if any.
    fn holds<'a>(
        &'a self,
        format: &'a str,
        value: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<TreeHash>>> + Send + 'a>>;

    /// Bytes downloaded so far.
    fn downloaded(&self, total: u64);
}

/// A run stopped because the machine it runs for holds the tree a reported line names: that
/// machine finishes with its own tree. Carried as an error, so that nothing is published here.
#[derive(Debug)]
pub struct HeldElsewhere {
    /// That tree (the whole fetched tree, before any subpath).
    pub whole: TreeHash,
    /// The commit, where the fetcher reported it.
    pub rev: Option<String>,
    /// What the fetcher reported before it stopped.
    pub reported: Vec<(String, String)>,
}

impl fmt::Display for HeldElsewhere {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the requester holds {} already: stopped", self.whole)
    }
}

impl std::error::Error for HeldElsewhere {}

/// Where a derivation may be realized: this machine, or one reached over ssh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// This machine, which offers [`features`].
    Local,
    /// `ssh://[USER@]HOST[:PORT][?program=PATH&jobs=N]`.
    Ssh(SshTarget),
}

impl std::str::FromStr for Place {
    type Err = anyhow::Error;

    fn from_str(uri: &str) -> Result<Place> {
        if uri == "local" {
            return Ok(Place::Local);
        }
        match uri.strip_prefix("ssh://") {
            Some(rest) => Ok(Place::Ssh(SshTarget::parse(rest, DEFAULT_JOBS).map_err(|e| {
                anyhow::anyhow!("realizer `{uri}`: {e} (expected ssh://[USER@]HOST[:PORT][?program=PATH&jobs=N])")
            })?)),
            None => bail!("realizer `{uri}`: expected `local` or ssh://[USER@]HOST[:PORT][?program=PATH&jobs=N]"),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Local => f.write_str("local"),
            Place::Ssh(target) => target.fmt(f),
        }
    }
}

/// One realizer of the list, and what this process knows of it.
struct Entry {
    place: Place,
    /// Its free slots (`jobs`); `local` is never out of them.
    slots: Arc<Semaphore>,
    /// Connections that finished a realization, ready for the next.
    idle: Mutex<Vec<Connection>>,
    /// The features it offered in its last handshake.
    offers: Mutex<Option<Vec<String>>>,
    /// Passed over until then, and why.
    down: Mutex<Option<(Instant, String)>>,
}

/// The realizers a derivation may go to, in the order they are tried.
pub struct Realizers {
    entries: Vec<Entry>,
}

impl Realizers {
    /// The list the settings give (URIs as [`Place`] parses them), `local` appended unless it
    /// is listed. An empty list is `local` alone.
    pub fn parse(uris: &[String]) -> Result<Realizers> {
        let mut places = Vec::new();
        for uri in uris.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
            let place: Place = uri.parse()?;
            if !places.contains(&place) {
                places.push(place);
            }
        }
        if !places.contains(&Place::Local) {
            places.push(Place::Local);
        }
        let entries = places
            .into_iter()
            .map(|place| {
                let jobs = match &place {
                    Place::Local => Semaphore::MAX_PERMITS,
                    Place::Ssh(target) => target.jobs,
                };
                Entry {
                    place,
                    slots: Arc::new(Semaphore::new(jobs)),
                    idle: Mutex::default(),
                    offers: Mutex::default(),
                    down: Mutex::default(),
                }
            })
            .collect();
        Ok(Realizers { entries })
    }

    /// Whether every derivation is realized here (the list is `local` alone).
    pub fn only_local(&self) -> bool {
        self.entries.iter().all(|e| e.place == Place::Local)
    }
}

/// How trying one realizer went.
enum Tried {
    /// It realized the derivation.
    Realized(Realized),
    /// It was passed over or failed in a way another may not: why, for the error if none can.
    Passed(String),
}

impl Realizer {
    /// Realizes `drv` on the first realizer that fits (module doc); `None` when that is this
    /// machine. An error when none fits (naming the derivation's features and each
    /// realizer's), or when a realizer's answer is a failure of the derivation itself (it does
    /// not exist, it is not what is pinned) or cannot be verified.
    pub(super) async fn delegate(
        &self,
        drv: &Derivation,
        label: &str,
        want: Want,
        on_rev: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Option<Realized>> {
        let Some(realizers) = self.realizers.as_ref().filter(|r| !r.only_local()) else {
            return Ok(None);
        };
        let mut passed = Vec::new();
        for entry in &realizers.entries {
            let place = &entry.place;
            let target = match place {
                Place::Local => {
                    let offered = self.features();
                    if fits(drv, offered) {
                        tracing::info!("{label}: realizing on this machine");
                        return Ok(None);
                    }
                    passed.push(format!("local offers {}", offered.join(", ")));
                    continue;
                }
                Place::Ssh(target) => target,
            };
            match self.try_on(entry, target, drv, label, want, on_rev).await? {
                Tried::Realized(realized) => {
                    tracing::info!("{label}: realized on {place}");
                    return Ok(Some(realized));
                }
                Tried::Passed(why) => passed.push(format!("{place} {why}")),
            }
        }
        let required = if drv.features.is_empty() {
            "none".to_owned()
        } else {
            drv.features.join(", ")
        };
        bail!(
            "{label}: no realizer can realize it (it requires the features: {required}):\n  {}",
            passed.join("\n  ")
        )
    }

    /// One remote realizer: passed over (down, busy, lacking a feature, unreachable now, or
    /// failing on its side) or realizing the derivation.
    async fn try_on(
        &self,
        entry: &Entry,
        target: &SshTarget,
        drv: &Derivation,
        label: &str,
        want: Want,
        on_rev: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Tried> {
        if let Some((until, why)) = &*entry.down.locked()
            && Instant::now() < *until
        {
            return Ok(Tried::Passed(format!("is unreachable ({why})")));
        }
        if let Some(offers) = &*entry.offers.locked()
            && !fits(drv, offers)
        {
            return Ok(Tried::Passed(format!("offers {}", offers.join(", "))));
        }
        if self.remote.is_none() {
            return Ok(Tried::Passed(
                "is not used: this machine has no remote store to take trees from (set `remote`)".into(),
            ));
        }
        let Ok(_slot) = entry.slots.clone().try_acquire_owned() else {
            return Ok(Tried::Passed(format!("has no free slot (jobs={})", target.jobs)));
        };
        // A pooled connection may have been closed meanwhile: one that fails before it
        // answers anything is replaced by a new one, once.
        let mut pooled = entry.idle.locked().pop();
        loop {
            let reused = pooled.is_some();
            let mut connection = match pooled.take() {
                Some(connection) => connection,
                None => match Connection::open(target).await {
                    Ok(connection) => connection,
                    Err(e) => {
                        tracing::warn!("{label}: realizer {target} is unreachable, trying the next: {e:#}");
                        let why = crate::text::shorten(&format!("{e:#}")).into_owned();
                        *entry.down.locked() = Some((Instant::now() + DOWN_FOR, why.clone()));
                        return Ok(Tried::Passed(format!("is unreachable ({why})")));
                    }
                },
            };
            *entry.down.locked() = None;
            let offers = connection.hello.features.clone();
            *entry.offers.locked() = Some(offers.clone());
            if !fits(drv, &offers) {
                entry.idle.locked().push(connection);
                return Ok(Tried::Passed(format!("offers {}", offers.join(", "))));
            }
            if connection.hello.remote.is_none() {
                return Ok(Tried::Passed("has no remote store to put trees on".into()));
            }
            match self.realize_on(&mut connection, target, drv, label, want, on_rev).await {
                Ok(realized) => {
                    entry.idle.locked().push(connection);
                    return Ok(Tried::Realized(realized));
                }
                Err(client::Failure::Stale(e)) if reused => {
                    tracing::debug!("{label}: a kept connection to {target} is gone ({e:#}); opening another");
                }
                Err(client::Failure::Stale(e) | client::Failure::Next(e)) => {
                    tracing::warn!("{label}: realizer {target} failed, trying the next: {e:#}");
                    return Ok(Tried::Passed(format!(
                        "failed ({})",
                        crate::text::shorten(&format!("{e:#}"))
                    )));
                }
                Err(client::Failure::Final(e)) => return Err(e),
            }
        }
    }
}

/// Whether `offered` has every feature `drv` requires.
fn fits(drv: &Derivation, offered: &[String]) -> bool {
    drv.features.iter().all(|f| offered.contains(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realizer_uris() {
        let list = Realizers::parse(&[
            "ssh://builder@fast.example:2222?program=/opt/cab/bin/cab&jobs=8".into(),
            "ssh://[::1]".into(),
        ])
        .unwrap();
        let places: Vec<String> = list.entries.iter().map(|e| e.place.to_string()).collect();
        assert_eq!(
            places,
            [
                "ssh://builder@fast.example:2222?program=/opt/cab/bin/cab",
                "ssh://[::1]",
                "local"
            ]
        );
        let Place::Ssh(first) = &list.entries[0].place else {
            panic!()
        };
        assert_eq!((first.jobs, first.program.as_str()), (8, "/opt/cab/bin/cab"));
        let Place::Ssh(second) = &list.entries[1].place else {
            panic!()
        };
        assert_eq!((second.jobs, second.program.as_str()), (DEFAULT_JOBS, "cab"));
        // `local` where it is listed, not appended again.
        let list = Realizers::parse(&["local".into(), "ssh://a".into()]).unwrap();
        let places: Vec<String> = list.entries.iter().map(|e| e.place.to_string()).collect();
        assert_eq!(places, ["local", "ssh://a"]);
        assert!(Realizers::parse(&["local".into()]).unwrap().only_local());
        assert!(Realizers::parse(&[]).unwrap().only_local());
        for bad in [
            "http://a",
            "ssh://",
            "ssh://a:port",
            "ssh://a?jobs=0",
            "ssh://a?color=red",
            "ssh://a b",
            "ssh://a?program=",
            "ssh://-oProxyCommand=x",
        ] {
            let e = Realizers::parse(&[bad.into()])
                .err()
                .unwrap_or_else(|| panic!("{bad} parsed"));
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
    }
}
