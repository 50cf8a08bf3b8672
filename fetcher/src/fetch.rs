//! The fetches, from request to output tree: `forge` (resolve the ref over git smart HTTP,
//! announce the commit, unpack the forge's archive of it), `git` (the same ref resolution, then
//! the pack protocol: see [`crate::git`]), `refs` (no tree: which refs there are, see
//! [`crate::listing`]) and `tarball` (unpack the archive at a URL, whichever of the formats [`crate::archive`] reads). Everything outside
//! the guest comes through the [`Net`], [`Sink`] and [`Console`] it is given, so this runs
//! unchanged under the unit tests.

use crate::archive;
use crate::args::{Forge, Known, Request};
use crate::error::{Error, Result};
use crate::io::{Body, Buffered, Console, Net, Sink};
use crate::pktline::PktReader;
use crate::prelude::*;
use crate::refs::{self, Advertised, Protocol, Resolver, Want};

/// Headers of a protocol v2 command request (gitprotocol-http).
pub const UPLOAD_PACK_HEADERS: &str = "Content-Type: application/x-git-upload-pack-request\n\
                                   Accept: application/x-git-upload-pack-result\n\
                                   Git-Protocol: version=2";

/// Fetches what `request` names into `sink`.
pub fn fetch<N: Net, K: Sink, C: Console>(request: &Request, net: &mut N, sink: &mut K, console: &mut C) -> Result<()> {
    match request {
        Request::Forge(g) => forge(g, net, sink, console),
        Request::Git(g) => crate::git::fetch(g, net, sink, console),
        Request::Tarball { url, known } => tarball(net, sink, console, url, known.as_ref()),
        Request::Refs(r) => crate::listing::list(net, console, &r.git, r.prefix.as_deref()),
    }
}

fn forge<N: Net, K: Sink, C: Console>(g: &Forge, net: &mut N, sink: &mut K, console: &mut C) -> Result<()> {
    let sha = match &g.rev {
        Some(rev) => rev.clone(),
        None => resolve(net, console, &g.git, &g.git, g.reference.as_deref())?.0,
    };
    // The host may already hold this commit's tree and stop us right after this line, so it
    // goes out before anything else is downloaded.
    console.announce(&format!("git-rev {sha}\n"))?;
    // `{` never appears in a URL unescaped (RFC 3986), so each one starts a `{rev}`.
    let mut pieces = g.archive.split('{');
    let mut url = pieces.next().unwrap_or_default().to_owned();
    for piece in pieces {
        url.push_str(&sha);
        url.push_str(piece.strip_prefix("rev}").unwrap_or(piece));
    }
    unpack(net, sink, console, &url, false)
}

/// Asks the git server at `repo_url` which protocol it speaks (`info/refs`); a v0 server's
/// ref list is fed to `resolver` on the way.
pub fn discover<N: Net>(net: &mut N, repo_url: &str, resolver: &mut dyn Advertised) -> Result<Protocol> {
    let refs_url = format!("{repo_url}/info/refs?service=git-upload-pack");
    let body = Body::open(net, "GET", &refs_url, "Git-Protocol: version=2", b"")?;
    let mut reader = PktReader::new(Buffered::new(body, 16 * 1024));
    let protocol = refs::read_advertisement(&mut reader, resolver).map_err(|e| e.context(&refs_url))?;
    reader.into_inner().into_inner().close()?;
    Ok(protocol)
}

/// The commit `reference` (or the default branch) names in the repository at `repo_url`,
/// and which protocol the server speaks when that had to be asked (`None` when a v2 `ls-refs`
/// answered straight away). `name` names the repository in messages.
///
/// git asks `info/refs` first and only then `ls-refs`: two round trips. A v2 server answers
/// `ls-refs` without the first (the exchange is stateless), and an unchanged island is
/// meant to cost one round trip, so that is tried first; a server that does not answer it
/// as v2 does (a v0-only server, a proxy that wants the discovery) is then asked the
/// classic way. Only a failure to reach the server at all ends the attempt.
pub fn resolve<N: Net, C: Console>(
    net: &mut N,
    console: &mut C,
    repo_url: &str,
    name: &str,
    reference: Option<&str>,
) -> Result<(String, Option<Protocol>)> {
    let want = Want::new(reference);
    console.note(&format!("resolving {} of {name}", reference.unwrap_or("HEAD")));
    let url = format!("{repo_url}/git-upload-pack");
    let mut resolver = Resolver::new(&want);
    let protocol = match ls_refs_answered(net, &url, &want.prefixes(), &mut resolver)? {
        Ok(()) => None,
        Err(why) => {
            console.note(&format!(
                "no ls-refs answer straight away ({why}); asking for the refs first"
            ));
            resolver = Resolver::new(&want);
            let protocol = discover(net, repo_url, &mut resolver)?;
            if matches!(protocol, Protocol::V2 { .. }) {
                ls_refs(net, &url, &want.prefixes(), &mut resolver)?;
            }
            Some(protocol)
        }
    };
    if resolver.resolved().is_none() && want != Want::Head && protocol != Some(Protocol::V0) && !resolver.saw_nested() {
        // The first answer held only names starting like the wanted one; ask for all
        // branches and tags, to say which ones come close (unless refs nest under the name:
        // those are the closest, and a repository's thousands of tags need not be listed).
        resolver = Resolver::new(&want);
        ls_refs(net, &url, &want.suggestion_prefixes(), &mut resolver)?;
    }
    match resolver.resolved() {
        Some(sha) => Ok((sha, protocol)),
        None => Err(not_found(&want, name, &resolver.suggestions())),
    }
}

fn ls_refs<N: Net>(net: &mut N, url: &str, prefixes: &[String], resolver: &mut Resolver) -> Result<()> {
    ls_refs_answered(net, url, prefixes, resolver)?
}

/// An `ls-refs` exchange. The outer error: the server could not be reached; the inner one: it
/// answered, but not as a v2 server answers `ls-refs` (a failure status, or another answer).
pub fn ls_refs_answered<N: Net>(
    net: &mut N,
    url: &str,
    prefixes: &[String],
    resolver: &mut dyn Advertised,
) -> Result<Result<()>> {
    let request = refs::ls_refs_request(prefixes)?;
    let body = match Body::answer(net, "POST", url, UPLOAD_PACK_HEADERS, &request)? {
        Ok(body) => body,
        Err(status) => return Ok(Err(Error::new(format!("HTTP {status} for {url}")))),
    };
    let mut reader = PktReader::new(Buffered::new(body, 16 * 1024));
    if let Err(e) = refs::read_ls_refs(&mut reader, resolver) {
        // Best effort: the answer is refused either way.
        let _ = reader.into_inner().into_inner().close();
        return Ok(Err(e.context(url)));
    }
    reader.into_inner().into_inner().close()?;
    Ok(Ok(()))
}

fn not_found(want: &Want, repo: &str, suggestions: &[String]) -> Error {
    if *want == Want::Head {
        return Error::missing(format!("{repo} has no default branch (HEAD); is the repository empty?"));
    }
    let what = want.describe();
    if suggestions.is_empty() {
        Error::missing(format!("{what} in {repo}, which has no branches or tags"))
    } else {
        Error::missing(format!(
            "{what} in {repo}; the closest it has: {}",
            suggestions.join(", ")
        ))
    }
}

/// A tarball island: the archive at `url`. With a download the host already holds from there
/// (`known`), the request is conditional: a server that answers 304 Not Modified sent no body,
/// and the held download's identity is announced — the host stops the run on it. Should the
/// host lack that tree after all (the store was collected since), the run goes on: the archive
/// is asked for again, unconditionally. A server that ignores the condition answers 200, and
/// that answer is the download.
fn tarball<N: Net, K: Sink, C: Console>(
    net: &mut N,
    sink: &mut K,
    console: &mut C,
    url: &str,
    known: Option<&Known>,
) -> Result<()> {
    if let Some(known) = known {
        console.note(&format!("downloading {url} ({})", known.condition));
        match Body::answer(net, "GET", url, &known.condition, b"")? {
            Ok(body) => return unpack_body(body, sink, console, url, true),
            Err(304) => {
                console.announce(&format!("http-identity {}\n", known.identity))?;
                console.note(&format!(
                    "{url}: not modified, but not held either; asking for all of it"
                ));
            }
            Err(status) => return Err(Error::new(format!("HTTP {status} for {url}"))),
        }
    }
    unpack(net, sink, console, url, true)
}

/// Downloads and unpacks the archive at `url`, whatever its format; with `identify` (a tarball
/// island, which has no commit to announce), first announces the server's identity of the
/// download, so that the host can stop an unchanged one before its body.
fn unpack<N: Net, K: Sink, C: Console>(
    net: &mut N,
    sink: &mut K,
    console: &mut C,
    url: &str,
    identify: bool,
) -> Result<()> {
    console.note(&format!("downloading {url}"));
    let body = Body::open(net, "GET", url, "", b"")?;
    unpack_body(body, sink, console, url, identify)
}

/// Unpacks the archive `body` is the answer of (see [`unpack`]).
fn unpack_body<N: Net, K: Sink, C: Console>(
    mut body: Body<'_, N>,
    sink: &mut K,
    console: &mut C,
    url: &str,
    identify: bool,
) -> Result<()> {
    if identify && let Some(identity) = body.identity() {
        console.announce(&format!("http-identity {identity}\n"))?;
    }
    let format = archive::unpack(&mut body, sink).map_err(|e| if e.mentions(url) { e } else { e.context(url) })?;
    console.note(&format!("unpacked {url} ({format:?})"));
    body.close()
}

#[cfg(test)]
mod tests;
