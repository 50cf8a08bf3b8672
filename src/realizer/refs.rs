//! Which refs a repository has, asked of its server by the fetcher's `refs` format: what HEAD
//! points to, or the branch and tag names under a prefix. Not a tree: nothing is stored or
//! indexed, and the answer is only as fresh as the question (its caller decides how long to
//! keep it, as it does for a branch's commit). Run here, never on another machine: it is one
//! round trip to the forge, and a remote realizer would only add one of its own.

use std::sync::Arc;

use anyhow::{Result, bail};

use super::Realizer;
use super::run::Watched;
use crate::derivation::{Builder, Derivation};

/// A repository's refs, as far as one question asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefList {
    /// What HEAD points to (`main`), when HEAD was asked about.
    pub head: Option<String>,
    /// Short names (`release/1.2`: no `refs/heads/` or `refs/tags/`) under the prefix asked
    /// about, sorted, each once.
    pub names: Vec<String>,
    /// How many names the fetcher left out (it lists a bounded number).
    pub more: u64,
}

impl RefList {
    /// The list the fetcher's reported lines (`ref-head`, `ref-name`, `ref-more`) make.
    fn from_reported(reported: &[(String, String)]) -> RefList {
        let mut list = RefList::default();
        for (format, value) in reported {
            match format.as_str() {
                "ref-head" => list.head = Some(value.clone()),
                "ref-name" => list.names.push(value.clone()),
                "ref-more" => list.more = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        list.names.sort();
        list.names.dedup();
        list
    }
}

impl Realizer {
    /// Runs a refs derivation ([`crate::derivation::to_refs_derivation`]) and answers what the
    /// fetcher listed. A repository that does not exist fails as `NotFound`.
    pub async fn refs(&self, drv: &Derivation, label: &str) -> Result<RefList> {
        let Builder::Wasm { module } = &drv.builder else {
            bail!("{label}: only the fetcher lists refs");
        };
        self.check_features(drv, label)?;
        let run = self.start(drv, module, label, Arc::default(), Default::default())?;
        let staging = run.staging;
        let watched = self
            .watch(drv, label, run.events, run.progress, run.guest, &|_| {})
            .await?;
        drop(run._running);
        let Watched::Exited(exited) = watched else {
            bail!("{label}: a ref listing named a stored tree (a bug in the fetcher)");
        };
        let mut exited = *exited;
        self.exited_well(label, exited.result, &mut exited.state, true)?;
        drop(staging);
        Ok(RefList::from_reported(&exited.reported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_lines_make_a_sorted_list() {
        let reported: Vec<(String, String)> = [
            ("ref-head", "main"),
            ("ref-name", "release/2.0"),
            ("ref-name", "release/1.2"),
            ("ref-name", "release/1.2"),
            ("ref-more", "7"),
            ("git-rev", "x"),
        ]
        .iter()
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            RefList::from_reported(&reported),
            RefList {
                head: Some("main".into()),
                names: vec!["release/1.2".into(), "release/2.0".into()],
                more: 7,
            }
        );
    }
}
