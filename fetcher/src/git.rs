//! The `git` format: any smart-HTTP git server, over the pack protocol. The ref is resolved as
//! for `forge` (`ls-refs`, or the v0 ref list) and the commit announced (`git-rev`); then a
//! shallow fetch (`deepen 1`) asks for the commit, its tree and their blobs. The pack streams
//! through side-band demultiplexing into [`Pack`], which spools it to the scratch file and
//! checks it, and the commit's tree is written out.
//!
//! The tree is announced (`git-tree`) as soon as the commit is read, before any file is
//! written: the host may hold that tree already and stop the run. Git sends the commit first,
//! so that is early in the pack; and when the server can filter, the commit is fetched alone
//! before the pack, so that a stored tree costs no pack at all.

use core::cell::{Cell, RefCell, RefMut};

use crate::args::Git;
use crate::checkout::{Early, checkout};
use crate::error::{Error, Result, show};
use crate::fetch::{UPLOAD_PACK_HEADERS, discover, resolve};
use crate::io::{Body, Buffered, Console, Net, Sink, Source, read_full};
use crate::pack::{COMMIT, Pack};
use crate::pktline::{self, Packet, PktReader};
use crate::prelude::*;
use crate::refs::{Protocol, Resolver, Want, server_error};
use crate::sha1::{hex, parse_hex};
use crate::subst::Commit;

/// Fetches `g` into `sink`.
pub fn fetch<N: Net, K: Sink, C: Console>(g: &Git, net: &mut N, sink: &mut K, console: &mut C) -> Result<()> {
    let (sha, protocol) = match &g.rev {
        Some(rev) => (rev.clone(), None),
        None => resolve(net, console, &g.url, &g.url, g.reference.as_deref())?,
    };
    // Before any download: the host may hold this commit's tree already and stop us here.
    console.announce(&format!("git-rev {sha}\n"))?;
    // A server that answered `ls-refs` straight away speaks v2; whether it can `filter` is
    // found by trying, as a refusal costs the round trip that asking would. Given only a
    // commit, nothing is known of the server yet: ask.
    let protocol = match protocol {
        Some(p) => p,
        None if g.rev.is_none() => Protocol::V2 { filter: true },
        None => discover(net, &g.url, &mut Resolver::new(&Want::Head))?,
    };
    let want = parse_hex(sha.as_bytes()).ok_or_else(|| Error::new("bad commit id"))?;
    let fetch = Fetch {
        url: format!("{}/git-upload-pack", g.url),
        sha,
        want,
        tree: Cell::new(None),
        console: RefCell::new(console),
        early: RefCell::default(),
    };
    if protocol == (Protocol::V2 { filter: true }) {
        // The commit alone first (`filter tree:0`): a few hundred bytes that tell its tree,
        // which the host may hold already. Only an optimisation, so a server that fails it
        // still gets asked for the whole pack.
        if let Err(e) = fetch.pack(net, sink, &request(&fetch.sha, protocol, true)?) {
            fetch.note(&format!("fetching the commit alone failed ({e}); fetching it whole"));
        }
    }
    fetch.note(&format!("fetching {} from {}", fetch.sha, g.url));
    let mut pack = fetch.pack(net, sink, &request(&fetch.sha, protocol, false)?)?;
    let commit = match pack.lookup(&want) {
        Some((i, COMMIT)) => pack.load(sink, i)?,
        _ => return Err(Error::new(format!("the pack holds no commit {}", fetch.sha))),
    };
    // Normally announced as the commit arrived; a deltified commit is only known now.
    fetch.tree(sink, &commit)?;
    let tree = fetch.tree.get().ok_or_else(|| Error::new("no tree"))?;
    checkout(&mut pack, sink, &tree, &mut *fetch.early()?)
}

/// One commit's fetch: where from, what, and what has been learnt of it.
struct Fetch<'c, C> {
    url: String,
    sha: String,
    want: [u8; 20],
    /// The commit's tree, once known (and announced).
    tree: Cell<Option<[u8; 20]>>,
    /// Shared by the side-band reader (progress) and the commit hook (`git-tree`), which
    /// never run at the same time.
    console: RefCell<&'c mut C>,
    /// The part of the tree written while the pack arrives.
    early: RefCell<Early>,
}

impl<C: Console> Fetch<'_, C> {
    fn note(&self, message: &str) {
        if let Ok(mut c) = self.console.try_borrow_mut() {
            c.note(message);
        }
    }

    /// Takes the start of the wanted commit: announces its tree, the first time, and starts
    /// writing it out as it arrives.
    fn tree<K: Sink>(&self, sink: &mut K, commit: &[u8]) -> Result<()> {
        if self.tree.get().is_some() {
            return Ok(());
        }
        let tree = commit
            .strip_prefix(b"tree ")
            .and_then(|rest| parse_hex(rest.get(..40)?))
            .ok_or_else(|| Error::new(format!("commit {} has no tree line", self.sha)))?;
        self.tree.set(Some(tree));
        self.early()?.commit = Commit::parse(&self.want, commit);
        let mut console = self.console.try_borrow_mut().map_err(|_| Error::new("console busy"))?;
        console.announce(&format!("git-tree {}\n", hex(&tree)))?;
        // After the announcement: the host may stop us here, before anything is written.
        self.early()?.root(sink, &tree)
    }

    fn early(&self) -> Result<RefMut<'_, Early>> {
        self.early
            .try_borrow_mut()
            .map_err(|_| Error::new("early checkout busy"))
    }

    /// POSTs a fetch request and reads the pack that answers it. The response is closed
    /// either way, as a failed attempt (the commit alone) is followed by another request.
    fn pack<N: Net, K: Sink>(&self, net: &mut N, sink: &mut K, body: &[u8]) -> Result<Pack> {
        let url = &self.url;
        let body = Body::open(net, "POST", url, UPLOAD_PACK_HEADERS, body)?;
        let mut reader = PktReader::new(Buffered::new(body, 32 * 1024));
        let ready = skip_to_pack(&mut reader, url);
        let mut demux = Demux {
            src: reader.into_inner(),
            left: 0,
            done: false,
            fetch: self,
        };
        let pack = ready.and_then(|()| {
            Pack::read(&mut demux, sink, &mut |sink, kind, id, data| match kind {
                COMMIT if *id == self.want => self.tree(sink, data),
                COMMIT => Ok(()),
                _ => self.early()?.arrived(sink, kind, id, data),
            })
            .map_err(|e| e.context(url))
        });
        let closed = demux.src.into_inner().close();
        let pack = pack?;
        closed?;
        Ok(pack)
    }
}

/// Reads what comes before the pack: v2's `shallow-info` section up to the `packfile` line,
/// or v0's shallow lines and its NAK.
fn skip_to_pack<S: Source>(reader: &mut PktReader<S>, url: &str) -> Result<()> {
    loop {
        match reader.next_packet().map_err(|e| e.context(url))? {
            Some(Packet::Data(d)) => {
                let line = pktline::line(d);
                if line == b"packfile" || line == b"NAK" || line.starts_with(b"ACK ") {
                    return Ok(());
                }
                if let Some(e) = server_error(d) {
                    return Err(e);
                }
            }
            Some(_) => {}
            None => return Err(Error::new(format!("{url}: the answer ended before the pack"))),
        }
    }
}

/// The body of a fetch request for one commit, shallow, deltas by offset, no progress; with
/// `alone`, without its tree and blobs.
fn request(sha: &str, protocol: Protocol, alone: bool) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    if let Protocol::V2 { .. } = protocol {
        pktline::encode(&mut body, b"command=fetch\n")?;
        body.extend_from_slice(pktline::DELIM);
        pktline::encode(&mut body, format!("want {sha}\n").as_bytes())?;
        let filter: &[&str] = if alone { &["filter tree:0\n"] } else { &[] };
        for arg in ["deepen 1\n", "ofs-delta\n", "no-progress\n"]
            .iter()
            .chain(filter)
            .chain(&["done\n"])
        {
            pktline::encode(&mut body, arg.as_bytes())?;
        }
        body.extend_from_slice(pktline::FLUSH);
    } else {
        // v0 (gitprotocol-pack): capabilities ride on the first want.
        let want = format!("want {sha} side-band-64k ofs-delta shallow no-progress\n");
        pktline::encode(&mut body, want.as_bytes())?;
        pktline::encode(&mut body, b"deepen 1\n")?;
        body.extend_from_slice(pktline::FLUSH);
        pktline::encode(&mut body, b"done\n")?;
    }
    Ok(body)
}

/// The pack data of a side-band-64k stream: band 1 is the pack, band 2 progress (to the
/// log), band 3 a fatal error from the server; a flush ends it.
struct Demux<'f, 'c, S, C> {
    src: S,
    /// Pack bytes left in the current packet.
    left: usize,
    done: bool,
    fetch: &'f Fetch<'c, C>,
}

impl<S: Source, C: Console> Source for Demux<'_, '_, S, C> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        while self.left == 0 {
            if self.done {
                return Ok(0);
            }
            let len = pktline::read_len(&mut self.src)?.ok_or_else(|| Error::new("the pack stream ended early"))?;
            if len == 0 {
                self.done = true;
                continue;
            }
            let mut band = [0u8];
            if len < 5 || read_full(&mut self.src, &mut band)? != 1 {
                return Err(Error::new("malformed side-band packet"));
            }
            if band == [1] {
                self.left = len - 5;
                continue;
            }
            let mut message = vec![0; len - 5];
            if read_full(&mut self.src, &mut message)? != message.len() {
                return Err(Error::new("truncated pkt-line stream"));
            }
            let text = show(pktline::line(&message));
            match band {
                [2] => self.fetch.note(text.trim_end_matches(['\r', '\n'])),
                [3] => return Err(Error::new(format!("the git server said: {text}"))),
                _ => return Err(Error::new("malformed side-band packet")),
            }
        }
        let want = self.left.min(buf.len());
        let n = self.src.read(buf.get_mut(..want).unwrap_or_default())?;
        if n == 0 && want > 0 {
            return Err(Error::new("the pack stream ended early"));
        }
        self.left -= n.min(want);
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
