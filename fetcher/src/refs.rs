//! Which commit a ref names, from what a git server advertises: protocol v2's `ls-refs`
//! answer, or the protocol v0 ref list that older servers send in `info/refs`. Both feed the
//! same [`Resolver`], so the matching rules (exact names only, a branch before a tag, a tag's
//! peeled commit) are written once.

use crate::error::{Error, Result, show};
use crate::io::Source;
use crate::pktline::{self, Packet, PktReader};
use crate::prelude::*;
use crate::suggest::Nearest;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// The default branch.
    Head,
    /// A short name: `refs/heads/<name>`, else `refs/tags/<name>`.
    Short(String),
    /// A full name starting with `refs/`.
    Full(String),
}

impl Want {
    /// The `ref=` argument, if any.
    pub fn new(reference: Option<&str>) -> Want {
        match reference {
            None => Want::Head,
            Some(r) if r.starts_with("refs/") => Want::Full(r.to_owned()),
            Some(r) => Want::Short(r.to_owned()),
        }
    }

    /// The exact names that answer, best first.
    fn candidates(&self) -> Vec<Vec<u8>> {
        match self {
            Want::Head => vec![b"HEAD".to_vec()],
            Want::Short(r) => vec![
                format!("refs/heads/{r}").into_bytes(),
                format!("refs/tags/{r}").into_bytes(),
            ],
            Want::Full(r) => vec![r.as_bytes().to_vec()],
        }
    }

    /// The `ref-prefix` arguments that ask a v2 server for just the candidates.
    pub fn prefixes(&self) -> Vec<String> {
        self.candidates()
            .into_iter()
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .collect()
    }

    /// The namespaces searched for suggestions when the ref is missing: branches and tags,
    /// and for a full name its own namespace (`refs/pull/` for `refs/pull/1/head`).
    pub fn suggestion_prefixes(&self) -> Vec<String> {
        let mut out = vec!["refs/heads/".to_owned(), "refs/tags/".to_owned()];
        if let Want::Full(r) = self {
            let mut parts = r.splitn(3, '/');
            if let (Some(a), Some(b), Some(_)) = (parts.next(), parts.next(), parts.next()) {
                let ns = format!("{a}/{b}/");
                if !out.contains(&ns) {
                    out.push(ns);
                }
            }
        }
        out
    }

    /// How the ref is named in messages.
    pub fn describe(&self) -> String {
        match self {
            Want::Head => "the default branch (HEAD)".to_owned(),
            Want::Short(r) => format!("no branch or tag `{r}`"),
            Want::Full(r) => format!("no ref `{r}`"),
        }
    }
}

/// The body of a protocol v2 `ls-refs` request asking for refs under `prefixes`.
pub fn ls_refs_request(prefixes: &[String]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    pktline::encode(&mut body, b"command=ls-refs\n")?;
    body.extend_from_slice(pktline::DELIM);
    pktline::encode(&mut body, b"peel\n")?;
    pktline::encode(&mut body, b"symrefs\n")?;
    for p in prefixes {
        pktline::encode(&mut body, format!("ref-prefix {p}\n").as_bytes())?;
    }
    body.extend_from_slice(pktline::FLUSH);
    Ok(body)
}

/// A commit id as the protocol lines carry it: 40 lowercase hex digits.
pub fn object_id(bytes: &[u8]) -> Option<String> {
    if bytes.len() == 40 && bytes.iter().all(u8::is_ascii_hexdigit) {
        Some(String::from_utf8_lossy(bytes).to_ascii_lowercase())
    } else {
        None
    }
}

#[derive(Debug, Clone)]
struct Found {
    oid: String,
    peeled: Option<String>,
}

/// Whoever reads a server's ref advertisement: a [`Resolver`] looking for one ref, or a
/// listing of the refs under a prefix ([`crate::listing`]). Both protocols' parsers feed it.
pub trait Advertised {
    /// Takes one advertised ref. A v0 `name^{}` line carries the peeled commit of the tag
    /// before it; v2 gives it as `peeled`.
    fn offer(&mut self, name: &[u8], oid: &str, peeled: Option<&str>);

    /// A symbolic ref and its target (`HEAD` → `refs/heads/main`).
    fn symref(&mut self, _name: &[u8], _target: &[u8]) {}
}

/// Collects what a server says about the wanted ref, and the nearest other names.
pub struct Resolver {
    candidates: Vec<Vec<u8>>,
    found: Vec<Option<Found>>,
    /// Whether suggestions compare short names (the question was one).
    short: bool,
    namespaces: Vec<String>,
    nearest: Nearest,
    /// `refs/heads/<name>/` or `refs/tags/<name>/` for a short name: refs nested under it.
    nested: Vec<Vec<u8>>,
    /// Whether a ref nested under the wanted short name was seen (`release/1.2` for
    /// `release`): the wanted name is then a prefix of refs, not a typo.
    saw_nested: bool,
}

impl Resolver {
    /// Looks for `want`.
    pub fn new(want: &Want) -> Resolver {
        let candidates = want.candidates();
        let (short, key) = match want {
            Want::Head => (true, "HEAD"),
            Want::Short(r) => (true, r.as_str()),
            Want::Full(r) => (false, r.as_str()),
        };
        Resolver {
            found: vec![None; candidates.len()],
            candidates,
            short,
            // Nothing is suggested instead of HEAD, so nothing is compared.
            namespaces: if *want == Want::Head {
                Vec::new()
            } else {
                want.suggestion_prefixes()
            },
            nearest: Nearest::new(key.as_bytes()),
            nested: match want {
                Want::Short(r) => ["refs/heads/", "refs/tags/"]
                    .iter()
                    .map(|ns| format!("{ns}{r}/").into_bytes())
                    .collect(),
                _ => Vec::new(),
            },
            saw_nested: false,
        }
    }

    /// Whether refs nested under the wanted short name were seen: it is a prefix of refs (the
    /// closest names are those, and asking for every branch and tag would add nothing).
    pub fn saw_nested(&self) -> bool {
        self.saw_nested
    }

    /// The commit, if the wanted ref was seen: the first candidate found, peeled if it is an
    /// annotated tag.
    pub fn resolved(&self) -> Option<String> {
        let f = self.found.iter().flatten().next()?;
        Some(f.peeled.clone().unwrap_or_else(|| f.oid.clone()))
    }

    /// The closest names seen, best first.
    pub fn suggestions(&self) -> Vec<String> {
        self.nearest.names()
    }
}

impl Advertised for Resolver {
    fn offer(&mut self, name: &[u8], oid: &str, peeled: Option<&str>) {
        if let Some(tag) = name.strip_suffix(b"^{}") {
            for (c, f) in self.candidates.iter().zip(self.found.iter_mut()) {
                if let Some(f) = f
                    && c == tag
                {
                    f.peeled = Some(oid.to_owned());
                }
            }
            return;
        }
        for (c, f) in self.candidates.iter().zip(self.found.iter_mut()) {
            if c == name {
                *f = Some(Found {
                    oid: oid.to_owned(),
                    peeled: peeled.map(str::to_owned),
                });
            }
        }
        if self.nested.iter().any(|n| name.starts_with(n)) {
            self.saw_nested = true;
        }
        if !self.namespaces.iter().any(|ns| name.starts_with(ns.as_bytes())) {
            return;
        }
        let key = match self.short {
            true => name
                .strip_prefix(b"refs/heads/")
                .or_else(|| name.strip_prefix(b"refs/tags/"))
                .unwrap_or(name),
            false => name,
        };
        self.nearest.consider(key, name);
    }
}

/// One line of an `ls-refs` answer: `<oid> <name>[ symref-target:<t>][ peeled:<oid>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsRefsLine<'a> {
    /// The object the ref points at.
    pub oid: String,
    /// The ref's full name.
    pub name: &'a [u8],
    /// For an annotated tag, the commit it peels to.
    pub peeled: Option<String>,
    /// For a symbolic ref (HEAD), what it points to.
    pub symref_target: Option<&'a [u8]>,
}

/// Parses one `ls-refs` line; `None` for an unborn ref (no commit yet).
pub fn parse_ls_refs_line(line: &[u8]) -> Result<Option<LsRefsLine<'_>>> {
    let bad = || Error::new(format!("malformed ls-refs line `{}`", show(line)));
    let mut fields = line.split(|&b| b == b' ');
    let oid = fields.next().ok_or_else(bad)?;
    let name = fields.next().filter(|n| !n.is_empty()).ok_or_else(bad)?;
    if oid == b"unborn" {
        return Ok(None);
    }
    let oid = object_id(oid).ok_or_else(bad)?;
    let mut out = LsRefsLine {
        oid,
        name,
        peeled: None,
        symref_target: None,
    };
    for attr in fields {
        if let Some(p) = attr.strip_prefix(b"peeled:") {
            out.peeled = Some(object_id(p).ok_or_else(bad)?);
        } else if let Some(t) = attr.strip_prefix(b"symref-target:") {
            out.symref_target = Some(t);
        }
        // Other attributes are for features we did not ask for; a later git may add some.
    }
    Ok(Some(out))
}

/// Parses one v0 ref line, `<oid> <name>` with the first line's `\0<capabilities>` cut off.
pub fn parse_v0_line(line: &[u8]) -> Result<(String, &[u8])> {
    let bad = || Error::new(format!("malformed ref advertisement line `{}`", show(line)));
    let line = line.split(|&b| b == 0).next().unwrap_or(line);
    let at = line.iter().position(|&b| b == b' ').ok_or_else(bad)?;
    let (oid, name) = (line.get(..at).ok_or_else(bad)?, line.get(at + 1..).ok_or_else(bad)?);
    let oid = object_id(oid).ok_or_else(bad)?;
    if name.is_empty() {
        return Err(bad());
    }
    Ok((oid, name))
}

/// The error an `ERR <message>` packet carries, if `payload` is one.
pub fn server_error(payload: &[u8]) -> Option<Error> {
    let msg = pktline::line(payload).strip_prefix(b"ERR ")?;
    Some(Error::new(format!("the git server said: {}", show(msg))))
}

/// Which protocol the server speaks, from its `info/refs` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// It sent a v2 capability advertisement: ask with `ls-refs`. `filter`: its `fetch`
    /// takes `filter` (partial clone), so a commit can be fetched without its tree.
    V2 {
        /// Whether `fetch=` lists `filter`.
        filter: bool,
    },
    /// It listed its refs (v0 or v1); they have been fed to the resolver.
    V0,
}

/// Reads an `info/refs?service=git-upload-pack` answer. For a v0 server the ref list is fed
/// to `resolver` as it streams past; for v2 reading stops at the `version 2` line.
pub fn read_advertisement<S: Source>(reader: &mut PktReader<S>, resolver: &mut dyn Advertised) -> Result<Protocol> {
    let not_smart = || Error::new("not a git smart HTTP answer (no `# service=git-upload-pack` line)");
    match reader.next_packet()? {
        Some(Packet::Data(d)) => match pktline::line(d) {
            b"# service=git-upload-pack" => {}
            // git's own http-backend leaves the service line out when it answers with v2
            // (GitHub keeps it); git's client accepts both, and so do we.
            b"version 2" => return v2_capabilities(reader),
            _ => return Err(server_error(d).unwrap_or_else(not_smart)),
        },
        _ => return Err(not_smart()),
    }
    // The service line is followed by a flush; some servers send it more than once.
    let mut first = true;
    loop {
        match reader.next_packet()? {
            None => return Err(Error::new("the ref advertisement ended early")),
            Some(Packet::Flush) if first => continue,
            Some(Packet::Flush) => return Ok(Protocol::V0),
            Some(Packet::Data(d)) => {
                if let Some(e) = server_error(d) {
                    return Err(e);
                }
                let l = pktline::line(d);
                if first && l == b"version 2" {
                    return v2_capabilities(reader);
                }
                if first && l == b"version 1" {
                    first = false;
                    continue;
                }
                if let Some(target) = v0_head_symref(l) {
                    resolver.symref(b"HEAD", target);
                }
                first = false;
                let (oid, name) = parse_v0_line(l)?;
                // An empty repository advertises only its capabilities under this name.
                if name != b"capabilities^{}" {
                    resolver.offer(name, &oid, None);
                }
            }
            Some(_) => return Err(Error::new("unexpected packet in the ref advertisement")),
        }
    }
}

/// What HEAD points to, from the `symref=HEAD:<target>` capability of a v0 advertisement's
/// first line (after its NUL).
fn v0_head_symref(line: &[u8]) -> Option<&[u8]> {
    let at = line.iter().position(|&b| b == 0)?;
    let capabilities = line.get(at + 1..)?;
    capabilities
        .split(|&b| b == b' ')
        .find_map(|c| c.strip_prefix(b"symref=HEAD:"))
}

/// Reads the rest of a v2 capability advertisement (after `version 2`), up to its flush.
fn v2_capabilities<S: Source>(reader: &mut PktReader<S>) -> Result<Protocol> {
    let mut filter = false;
    while let Some(Packet::Data(d)) = reader.next_packet()? {
        if let Some(features) = pktline::line(d).strip_prefix(b"fetch=") {
            filter = features.split(|&b| b == b' ').any(|f| f == b"filter");
        }
    }
    Ok(Protocol::V2 { filter })
}

/// Reads an `ls-refs` answer into `resolver`, up to its flush.
pub fn read_ls_refs<S: Source>(reader: &mut PktReader<S>, resolver: &mut dyn Advertised) -> Result<()> {
    loop {
        match reader.next_packet()? {
            None => return Err(Error::new("the ls-refs answer ended early")),
            Some(Packet::Flush) => return Ok(()),
            Some(Packet::Data(d)) => {
                if let Some(e) = server_error(d) {
                    return Err(e);
                }
                if let Some(r) = parse_ls_refs_line(pktline::line(d))? {
                    if let Some(target) = r.symref_target {
                        resolver.symref(r.name, target);
                    }
                    resolver.offer(r.name, &r.oid, r.peeled.as_deref());
                }
            }
            Some(_) => return Err(Error::new("unexpected packet in the ls-refs answer")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const C: &str = "3333333333333333333333333333333333333333";
    const D: &str = "4444444444444444444444444444444444444444";

    fn pkts(lines: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            match *l {
                "0000" | "0001" => out.extend_from_slice(l.as_bytes()),
                _ => pktline::encode(&mut out, l.as_bytes()).unwrap(),
            }
        }
        out
    }

    fn ls_refs(want: &Want, lines: &[&str]) -> Resolver {
        let data = pkts(lines);
        let mut r = Resolver::new(want);
        read_ls_refs(&mut PktReader::new(data.as_slice()), &mut r).unwrap();
        r
    }

    #[test]
    fn request_body() {
        let body = ls_refs_request(&Want::Short("main".into()).prefixes()).unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "0014command=ls-refs\n00010009peel\n000csymrefs\n\
             001fref-prefix refs/heads/main\n001eref-prefix refs/tags/main\n0000"
        );
        assert_eq!(Want::Head.prefixes(), ["HEAD"]);
        assert_eq!(Want::new(Some("refs/pull/1/head")).prefixes(), ["refs/pull/1/head"]);
        assert_eq!(
            Want::new(Some("refs/pull/1/head")).suggestion_prefixes(),
            ["refs/heads/", "refs/tags/", "refs/pull/"]
        );
    }

    #[test]
    fn parses_lines_with_attributes() {
        let l = format!("{A} HEAD symref-target:refs/heads/main");
        let r = parse_ls_refs_line(l.as_bytes()).unwrap().unwrap();
        assert_eq!(
            (r.oid.as_str(), r.name, r.symref_target),
            (A, &b"HEAD"[..], Some(&b"refs/heads/main"[..]))
        );
        let l = format!("{} refs/tags/v1 peeled:{B}", A.to_uppercase());
        let r = parse_ls_refs_line(l.as_bytes()).unwrap().unwrap();
        assert_eq!((r.oid.as_str(), r.peeled.as_deref()), (A, Some(B)));
        assert_eq!(
            parse_ls_refs_line(b"unborn HEAD symref-target:refs/heads/main").unwrap(),
            None
        );
        for bad in ["", "xyz refs/heads/a", A, &format!("{A} refs/tags/v1 peeled:zz")] {
            assert!(parse_ls_refs_line(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn head_branch_and_peeled_tag() {
        let lines = [
            &format!("{A} HEAD symref-target:refs/heads/main\n") as &str,
            &format!("{A} refs/heads/main\n"),
            &format!("{B} refs/heads/main2\n"),
            &format!("{C} refs/tags/v1 peeled:{D}\n"),
            &format!("{B} refs/tags/light\n"),
            "0000",
        ];
        assert_eq!(ls_refs(&Want::Head, &lines).resolved().as_deref(), Some(A));
        assert_eq!(ls_refs(&Want::new(Some("v1")), &lines).resolved().as_deref(), Some(D));
        assert_eq!(
            ls_refs(&Want::new(Some("light")), &lines).resolved().as_deref(),
            Some(B)
        );
        assert_eq!(
            ls_refs(&Want::new(Some("refs/tags/v1")), &lines).resolved().as_deref(),
            Some(D)
        );
        assert_eq!(ls_refs(&Want::new(Some("main")), &lines).resolved().as_deref(), Some(A));
        // ref-prefix is only a prefix filter: `main` must not match `main2`, nor `v` match `v1`.
        assert_eq!(ls_refs(&Want::new(Some("mai")), &lines).resolved(), None);
        assert_eq!(ls_refs(&Want::new(Some("v")), &lines).resolved(), None);
    }

    #[test]
    fn branch_wins_over_tag_in_any_order() {
        let lines = [
            &format!("{C} refs/tags/x peeled:{D}") as &str,
            &format!("{B} refs/heads/x"),
            "0000",
        ];
        assert_eq!(ls_refs(&Want::new(Some("x")), &lines).resolved().as_deref(), Some(B));
    }

    #[test]
    fn suggestions_for_missing_ref() {
        let lines = [
            &format!("{A} refs/heads/main") as &str,
            &format!("{A} refs/heads/master"),
            &format!("{A} refs/heads/develop"),
            &format!("{A} refs/tags/v1.0"),
            &format!("{A} refs/pull/1/head"),
            "0000",
        ];
        let r = ls_refs(&Want::new(Some("mian")), &lines);
        assert_eq!(r.resolved(), None);
        let s = r.suggestions();
        assert_eq!(s[0], "refs/heads/main");
        assert!(s.contains(&"refs/heads/master".to_string()));
        assert!(!s.iter().any(|n| n.starts_with("refs/pull/")));
        let r = ls_refs(&Want::new(Some("refs/pull/2/head")), &lines);
        assert_eq!(r.suggestions()[0], "refs/pull/1/head");
    }

    #[test]
    fn server_error_packet() {
        let data = pkts(&["ERR access denied\n"]);
        let e = read_ls_refs(&mut PktReader::new(data.as_slice()), &mut Resolver::new(&Want::Head)).unwrap_err();
        assert!(e.message().contains("access denied"), "{e}");
    }

    #[test]
    fn advertisement_v2() {
        let data = pkts(&[
            "# service=git-upload-pack\n",
            "0000",
            "version 2\n",
            "agent=git/2.45\n",
            "ls-refs=unborn\n",
            "0000",
        ]);
        let mut r = Resolver::new(&Want::Head);
        assert_eq!(
            read_advertisement(&mut PktReader::new(data.as_slice()), &mut r).unwrap(),
            Protocol::V2 { filter: false }
        );
    }

    #[test]
    fn advertisement_v2_without_service_line() {
        // As git http-backend sends it.
        let data = pkts(&[
            "version 2\n",
            "agent=git/2.47.3\n",
            "ls-refs=unborn\n",
            "fetch=shallow wait-for-done filter\n",
            "server-option\n",
            "0000",
        ]);
        let mut r = Resolver::new(&Want::Head);
        assert_eq!(
            read_advertisement(&mut PktReader::new(data.as_slice()), &mut r).unwrap(),
            Protocol::V2 { filter: true }
        );
    }

    #[test]
    fn advertisement_v0() {
        let first = format!("{A} HEAD\0multi_ack symref=HEAD:refs/heads/main agent=git/2\n");
        let lines = [
            "# service=git-upload-pack\n",
            "0000",
            &first,
            &format!("{A} refs/heads/main\n"),
            &format!("{C} refs/tags/v1\n"),
            &format!("{D} refs/tags/v1^{{}}\n"),
            &format!("{B} refs/tags/v2\n"),
            "0000",
        ];
        let data = pkts(&lines);
        let run = |want: Want| {
            let mut r = Resolver::new(&want);
            assert_eq!(
                read_advertisement(&mut PktReader::new(data.as_slice()), &mut r).unwrap(),
                Protocol::V0
            );
            r.resolved()
        };
        assert_eq!(run(Want::Head).as_deref(), Some(A));
        assert_eq!(run(Want::new(Some("v1"))).as_deref(), Some(D));
        assert_eq!(run(Want::new(Some("v2"))).as_deref(), Some(B));
        assert_eq!(run(Want::new(Some("main"))).as_deref(), Some(A));
        assert_eq!(run(Want::new(Some("v"))), None);
    }

    #[test]
    fn advertisement_v0_empty_repository_and_version_1() {
        let caps = format!("{}  capabilities^{{}}\0multi_ack\n", "0".repeat(40));
        let data = pkts(&[
            "# service=git-upload-pack\n",
            "0000",
            "version 1\n",
            &caps.replacen("  ", " ", 1),
            "0000",
        ]);
        let mut r = Resolver::new(&Want::Head);
        assert_eq!(
            read_advertisement(&mut PktReader::new(data.as_slice()), &mut r).unwrap(),
            Protocol::V0
        );
        assert_eq!(r.resolved(), None);
    }

    #[test]
    fn advertisement_not_smart() {
        let dumb = format!("{A}\trefs/heads/main\n");
        let mut r = Resolver::new(&Want::Head);
        assert!(read_advertisement(&mut PktReader::new(dumb.as_bytes()), &mut r).is_err());
        let truncated = pkts(&["# service=git-upload-pack\n", "0000", &format!("{A} HEAD\0caps\n")]);
        assert!(read_advertisement(&mut PktReader::new(truncated.as_slice()), &mut r).is_err());
    }
}
