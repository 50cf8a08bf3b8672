//! Conditional requests for tarballs. A tarball island has no commit to announce before its
//! body, so the fetcher announces the server's identity of the download (`http-identity`: the
//! final URL with its strong `ETag`, else `Last-Modified` and length) as soon as the headers
//! arrive, and the run stops on a stored one. One step further: the validator behind that
//! identity is remembered for the island's URL, in the store's index, and the next run asks
//! with it (`If-None-Match`, else `If-Modified-Since`), so that a server can answer 304 Not
//! Modified without any body; the fetcher then announces the remembered identity, and the run
//! stops on it as on any other. The validator travels in the run's arguments, not in the
//! derivation: it does not change what is fetched, so it must not change the derivation's id.

use std::sync::{Arc, Mutex};

use anyhow::Result;

use crate::derivation::{Derivation, Method};
use crate::store::{IndexKey, Store};
use crate::sync::MutexExt;

/// What a server gave to ask about the same download again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Validator {
    /// A strong `ETag`, asked with `If-None-Match`.
    ETag(String),
    /// A `Last-Modified` date, asked with `If-Modified-Since`.
    LastModified(String),
}

impl Validator {
    /// The fetcher's argument that asks with it.
    fn argument(&self) -> String {
        match self {
            Validator::ETag(etag) => format!("if-none-match={etag}"),
            Validator::LastModified(date) => format!("if-modified-since={date}"),
        }
    }

    /// Its line in an index entry's notes.
    fn line(&self) -> String {
        match self {
            Validator::ETag(etag) => format!("etag {etag}\n"),
            Validator::LastModified(date) => format!("last-modified {date}\n"),
        }
    }

    fn parse(line: &str) -> Option<Validator> {
        let (kind, value) = line.split_once(' ')?;
        match kind {
            "etag" => Some(Validator::ETag(value.to_owned())),
            "last-modified" => Some(Validator::LastModified(value.to_owned())),
            _ => None,
        }
    }
}

/// The server's identity of a response, as a BLAKE3 in hex, with the validator it rests on:
/// its final URL with its strong `ETag`, else with its `Last-Modified` and length; `None` when
/// it has neither (then nothing tells an unchanged download from a changed one before its
/// body). Weak ETags promise only equivalent content, not the same bytes, so they do not count.
pub(super) fn identity(response: &reqwest::Response) -> Option<(String, Validator)> {
    let header = |name: reqwest::header::HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (described, validator) = match header(reqwest::header::ETAG) {
        Some(etag) if !etag.starts_with("W/") => (format!("etag {etag}"), Validator::ETag(etag)),
        _ => {
            let modified = header(reqwest::header::LAST_MODIFIED)?;
            let length = header(reqwest::header::CONTENT_LENGTH)?;
            (
                format!("last-modified {modified} length {length}"),
                Validator::LastModified(modified),
            )
        }
    };
    let identity = blake3::hash(format!("{}\n{described}", response.url()).as_bytes());
    Some((identity.to_hex().to_string(), validator))
}

/// The identities one run's HTTP door computed, with their validators, in order: shared by the
/// door and the realizer, which outlives a guest stopped early.
#[derive(Clone, Default)]
pub(super) struct Seen(Arc<Mutex<Vec<(String, Validator)>>>);

impl Seen {
    pub(super) fn push(&self, identity: String, validator: Validator) {
        self.0.locked().push((identity, validator));
    }

    fn last(&self) -> Option<(String, Validator)> {
        self.0.locked().last().cloned()
    }
}

/// The tarball's URL, for a tarball derivation.
fn url(drv: &Derivation) -> Option<&str> {
    if drv.method != Method::Tarball {
        return None;
    }
    drv.args.iter().find_map(|a| a.strip_prefix("url="))
}

/// The index key under which the validator of `url`'s last download is kept.
fn key(url: &str) -> IndexKey {
    IndexKey::new(Method::Tarball.as_str(), "http-validator", url)
}

/// The fetcher's arguments that ask `drv`'s server whether its download changed since the last
/// one this store took: the validator, and the identity to announce on a 304. None for a
/// derivation that is not a tarball, or whose URL this store has no validator for. Whether the
/// tree is still here is not asked: the run's lookup of the announced identity decides, and the
/// fetcher asks again without the condition when it finds nothing.
pub(super) fn arguments(store: &Store, drv: &Derivation) -> Vec<String> {
    let Some(url) = url(drv) else { return Vec::new() };
    let notes = match store.index_notes(&key(url)) {
        Ok(Some(notes)) => notes,
        Ok(None) => return Vec::new(),
        Err(e) => {
            tracing::warn!("{url}: cannot read its validator from the store ({e:#}); asking without it");
            return Vec::new();
        }
    };
    let mut lines = notes.lines();
    let validator = lines.next().and_then(Validator::parse);
    let identity = lines.next().and_then(|l| l.strip_prefix("http-identity "));
    match (validator, identity) {
        (Some(validator), Some(identity)) => vec![validator.argument(), format!("unchanged={identity}")],
        _ => Vec::new(),
    }
}

/// Remembers the validator of the download that gave `whole` (the last identity the run's
/// door computed), for `drv`'s URL.
pub(super) fn remember(store: &Store, drv: &Derivation, seen: &Seen, whole: &crate::hash::TreeHash) -> Result<()> {
    let (Some(url), Some((identity, validator))) = (url(drv), seen.last()) else {
        return Ok(());
    };
    let notes = format!("{}http-identity {identity}\n", validator.line());
    store.record_noted(&key(url), whole, &notes)
}
