//! The `refs` format: which refs a repository has, without fetching anything of them — what
//! its HEAD points to, or the branch and tag names under a prefix (`release` for
//! `release/1.2`), as git's ref namespace nests them. The host browses a repository with it
//! (`github/OWNER/REPO/release/`). One `ls-refs` round trip (or the v0 ref list), bounded
//! output: at most [`MAX_NAMES`] names, however many refs the server sends.
//!
//! Lines on standard output (the host's FIFO): `ref-head <short name>` (what HEAD points to),
//! `ref-name <short name>` for each ref under the prefix (`refs/heads/` or `refs/tags/`
//! taken off; a name that is both is given once), and `ref-more <count>` when names were left
//! out.

use crate::error::Result;
use crate::fetch::{discover, ls_refs_answered};
use crate::io::{Console, Net};
use crate::prelude::*;
use crate::refs::{Advertised, Protocol};

/// At most this many names are listed: a repository with thousands of tags must not make a
/// directory listing huge.
pub const MAX_NAMES: usize = 1000;

/// The namespaces a short name lives in, in git's order (a branch wins over a tag).
const NAMESPACES: [&[u8]; 2] = [b"refs/heads/", b"refs/tags/"];

/// What a server's advertisement says about HEAD and the refs under a prefix.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listing {
    /// `Some("release/")`: names under it; `None`: HEAD alone.
    under: Option<String>,
    /// HEAD's target, short (`main`), or full when it is outside branches.
    pub head: Option<String>,
    /// Short names under the prefix, sorted, each once.
    pub names: Vec<String>,
    /// Names left out past [`MAX_NAMES`].
    pub more: u64,
}

impl Listing {
    /// A listing of the refs under `prefix` (`None`: only what HEAD points to).
    pub fn new(prefix: Option<&str>) -> Listing {
        Listing {
            under: prefix.map(|p| format!("{p}/")),
            ..Listing::default()
        }
    }

    /// The `ref-prefix` arguments that ask a v2 server for just these refs.
    pub fn prefixes(&self) -> Vec<String> {
        match &self.under {
            None => vec!["HEAD".to_owned()],
            Some(under) => NAMESPACES
                .iter()
                .map(|ns| format!("{}{under}", String::from_utf8_lossy(ns)))
                .collect(),
        }
    }

    /// The lines the host reads, in order.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(head) = &self.head {
            out.push(format!("ref-head {head}\n"));
        }
        for name in &self.names {
            out.push(format!("ref-name {name}\n"));
        }
        if self.more > 0 {
            out.push(format!("ref-more {}\n", self.more));
        }
        out
    }
}

/// A name fit for one FIFO line: UTF-8, no spaces or control characters (git forbids those in
/// ref names anyway; a server that sends them gets them left out).
fn printable(name: &[u8]) -> Option<String> {
    let text = core::str::from_utf8(name).ok()?;
    (!text.is_empty() && !text.bytes().any(|b| b <= b' ' || b == 0x7f)).then(|| text.to_owned())
}

impl Advertised for Listing {
    fn offer(&mut self, name: &[u8], _oid: &str, _peeled: Option<&str>) {
        let Some(under) = &self.under else { return };
        if name.ends_with(b"^{}") {
            return;
        }
        let Some(short) = NAMESPACES.iter().find_map(|ns| name.strip_prefix(*ns)) else {
            return;
        };
        if !short.starts_with(under.as_bytes()) || short.len() == under.len() {
            return;
        }
        let Some(short) = printable(short) else { return };
        match self.names.binary_search(&short) {
            Ok(_) => {}
            Err(_) if self.names.len() >= MAX_NAMES => self.more += 1,
            Err(at) => self.names.insert(at, short),
        }
    }

    fn symref(&mut self, name: &[u8], target: &[u8]) {
        if name == b"HEAD" {
            let short = target.strip_prefix(b"refs/heads/").unwrap_or(target);
            self.head = printable(short);
        }
    }
}

/// Lists the refs `prefix` names (or HEAD) in the repository at `repo_url`, and reports them.
pub fn list<N: Net, C: Console>(net: &mut N, console: &mut C, repo_url: &str, prefix: Option<&str>) -> Result<()> {
    console.note(&format!(
        "listing {} of {repo_url}",
        prefix.map_or_else(|| "HEAD".to_owned(), |p| format!("the refs under {p}/"))
    ));
    let url = format!("{repo_url}/git-upload-pack");
    let mut listing = Listing::new(prefix);
    if let Err(why) = ls_refs_answered(net, &url, &listing.prefixes(), &mut listing)? {
        console.note(&format!(
            "no ls-refs answer straight away ({why}); asking for the refs first"
        ));
        listing = Listing::new(prefix);
        if let Protocol::V2 { .. } = discover(net, repo_url, &mut listing)? {
            ls_refs_answered(net, &url, &listing.prefixes(), &mut listing)??;
        }
    }
    for line in listing.lines() {
        console.announce(&line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";

    fn offer_all(listing: &mut Listing, names: &[&str]) {
        for n in names {
            listing.offer(n.as_bytes(), A, None);
        }
    }

    #[test]
    fn names_under_a_prefix_once_each_bounded() {
        let mut l = Listing::new(Some("release"));
        assert_eq!(l.prefixes(), ["refs/heads/release/", "refs/tags/release/"]);
        offer_all(
            &mut l,
            &[
                "refs/heads/release/2.0",
                "refs/heads/release/1.2",
                "refs/tags/release/1.2",
                "refs/tags/release/1.2^{}",
                "refs/heads/release",
                "refs/heads/releases/x",
                "refs/pull/1/head",
                "refs/heads/release/a b",
            ],
        );
        assert_eq!(l.names, ["release/1.2", "release/2.0"]);
        assert_eq!(l.lines(), ["ref-name release/1.2\n", "ref-name release/2.0\n"]);
        let mut l = Listing::new(Some("v"));
        for i in 0..MAX_NAMES + 5 {
            l.offer(format!("refs/tags/v/{i:05}").as_bytes(), A, None);
        }
        assert_eq!((l.names.len(), l.more), (MAX_NAMES, 5));
        assert_eq!(l.lines().last().map(String::as_str), Some("ref-more 5\n"));
    }

    #[test]
    fn head_alone() {
        let mut l = Listing::new(None);
        assert_eq!(l.prefixes(), ["HEAD"]);
        offer_all(&mut l, &["refs/heads/main", "HEAD"]);
        l.symref(b"HEAD", b"refs/heads/feature/a");
        assert_eq!(l.lines(), ["ref-head feature/a\n"]);
    }
}
