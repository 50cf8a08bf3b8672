use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::*;
use crate::io::Refused;
use crate::pktline;
use crate::testing::{RecordingSink, archive, gzip, header};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const TAG: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const BASE: &str = "http://127.0.0.1:9";

type Log = Rc<RefCell<Vec<String>>>;

struct Route {
    method: &'static str,
    url: String,
    headers: Option<&'static str>,
    body: Option<Vec<u8>>,
    status: u16,
    response: Vec<u8>,
}

/// Serves canned responses, checks requests against them, and logs them in order.
struct FakeNet {
    routes: Vec<Route>,
    open: BTreeMap<i32, (u16, Vec<u8>)>,
    next: i32,
    log: Log,
}

impl Net for FakeNet {
    fn open(&mut self, method: &str, url: &str, headers: &str, body: &[u8]) -> Result<i32, Refused> {
        self.log.borrow_mut().push(format!("{method} {url}"));
        let route = self
            .routes
            .iter()
            .find(|r| {
                r.method == method
                    && r.url == url
                    && r.body.as_deref().is_none_or(|b| b == body)
                    && r.headers.is_none_or(|h| h == headers)
            })
            .ok_or(Refused)?;
        self.next += 1;
        self.open.insert(self.next, (route.status, route.response.clone()));
        Ok(self.next)
    }

    fn status(&mut self, response: i32) -> Result<u16, Refused> {
        self.open.get(&response).map(|(status, _)| *status).ok_or(Refused)
    }

    fn read(&mut self, response: i32, buf: &mut [u8]) -> Result<usize, Refused> {
        let (_, data) = self.open.get_mut(&response).ok_or(Refused)?;
        // Small reads, as a network gives them.
        let n = buf.len().min(data.len()).min(1000);
        buf[..n].copy_from_slice(&data[..n]);
        data.drain(..n);
        Ok(n)
    }

    fn close(&mut self, response: i32) -> Result<(), Refused> {
        self.open.remove(&response).map(|_| ()).ok_or(Refused)
    }
}

struct FakeConsole {
    log: Log,
}

impl Console for FakeConsole {
    fn announce(&mut self, line: &str) -> Result<()> {
        self.log.borrow_mut().push(format!("announce {line}"));
        Ok(())
    }

    fn note(&mut self, message: &str) {
        assert!(!message.contains('\n'));
    }
}

fn pkts(lines: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        match *l {
            "0000" => out.extend_from_slice(b"0000"),
            _ => pktline::encode(&mut out, l.as_bytes()).unwrap(),
        }
    }
    out
}

fn get(url: String, status: u16, response: Vec<u8>) -> Route {
    Route {
        method: "GET",
        url,
        headers: None,
        body: None,
        status,
        response,
    }
}

fn v2_advertisement() -> Route {
    let adv = pkts(&[
        "# service=git-upload-pack\n",
        "0000",
        "version 2\n",
        "ls-refs=unborn\n",
        "fetch=shallow\n",
        "0000",
    ]);
    Route {
        headers: Some("Git-Protocol: version=2"),
        ..get(format!("{BASE}/o/r.git/info/refs?service=git-upload-pack"), 200, adv)
    }
}

fn ls_refs(prefixes: &[&str], answer: &[&str]) -> Route {
    let mut body = b"0014command=ls-refs\n00010009peel\n000csymrefs\n".to_vec();
    for p in prefixes {
        pktline::encode(&mut body, format!("ref-prefix {p}\n").as_bytes()).unwrap();
    }
    body.extend_from_slice(b"0000");
    Route {
        method: "POST",
        url: format!("{BASE}/o/r.git/git-upload-pack"),
        headers: Some(UPLOAD_PACK_HEADERS),
        body: Some(body),
        status: 200,
        response: pkts(answer),
    }
}

/// A GitHub-like archive: a pax global header with the commit, then `r-<sha>/…`.
fn github_archive(sha: &str) -> Vec<u8> {
    let top = format!("r-{sha}/");
    let comment = format!("52 comment={sha}\n");
    gzip(&archive(&[
        (
            header(b"pax_global_header", b'g', comment.len() as u64, b""),
            comment.as_bytes(),
        ),
        (header(top.as_bytes(), b'5', 0, b""), b""),
        (header(format!("{top}README").as_bytes(), b'0', 5, b""), b"hello"),
    ]))
}

fn archive_route(sha: &str) -> Route {
    get(format!("{BASE}/o/r/archive/{sha}.tar.gz"), 200, github_archive(sha))
}

fn go(args: &[&str], routes: Vec<Route>) -> (Result<()>, Vec<String>, RecordingSink) {
    let log: Log = Rc::default();
    let mut net = FakeNet {
        routes,
        open: BTreeMap::new(),
        next: 0,
        log: log.clone(),
    };
    let mut console = FakeConsole { log: log.clone() };
    let mut sink = RecordingSink::default();
    let argv: Vec<String> = std::iter::once("fetcher")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let result = crate::run(&argv, &mut net, &mut sink, &mut console);
    assert!(net.open.is_empty() || result.is_err(), "responses left open");
    let events = log.borrow().clone();
    (result, events, sink)
}

fn github(extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "forge".to_owned(),
        format!("git={BASE}/o/r.git"),
        format!("archive={BASE}/o/r/archive/{{rev}}.tar.gz"),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run_github(extra: &[&str], routes: Vec<Route>) -> (Result<()>, Vec<String>, RecordingSink) {
    let args = github(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    go(&args, routes)
}

#[test]
fn rev_skips_discovery() {
    let (r, events, sink) = run_github(
        &[&format!("rev={}", SHA.to_uppercase()), "ref=main"],
        vec![archive_route(SHA)],
    );
    r.unwrap();
    assert_eq!(
        events,
        [
            format!("announce git-rev {SHA}\n"),
            format!("GET {BASE}/o/r/archive/{SHA}.tar.gz")
        ]
    );
    assert_eq!(sink.file(&format!("r-{SHA}/README")).0, b"hello");
    assert_eq!(sink.root, Some(format!("r-{SHA}")));
}

#[test]
fn v2_default_branch() {
    let routes = vec![
        v2_advertisement(),
        ls_refs(
            &["HEAD"],
            &[&format!("{SHA} HEAD symref-target:refs/heads/main\n"), "0000"],
        ),
        archive_route(SHA),
    ];
    let (r, events, sink) = run_github(&[], routes);
    r.unwrap();
    assert_eq!(
        events,
        [
            // One round trip: ls-refs without the discovery git makes first.
            format!("POST {BASE}/o/r.git/git-upload-pack"),
            format!("announce git-rev {SHA}\n"),
            format!("GET {BASE}/o/r/archive/{SHA}.tar.gz"),
        ]
    );
    assert_eq!(sink.root, Some(format!("r-{SHA}")));
}

#[test]
fn v2_annotated_tag_and_exact_names() {
    let answer = [
        &format!("{TAG} refs/heads/v1.0-fix\n") as &str,
        &format!("{TAG} refs/tags/v1.0 peeled:{SHA}\n"),
        &format!("{TAG} refs/tags/v1.0.1\n"),
        "0000",
    ];
    let routes = vec![
        v2_advertisement(),
        ls_refs(&["refs/heads/v1.0", "refs/tags/v1.0"], &answer),
        archive_route(SHA),
    ];
    let (r, events, _) = run_github(&["ref=v1.0"], routes);
    r.unwrap();
    assert!(events.contains(&format!("announce git-rev {SHA}\n")));
}

#[test]
fn v2_full_ref_name() {
    let routes = vec![
        v2_advertisement(),
        ls_refs(&["refs/pull/7/head"], &[&format!("{SHA} refs/pull/7/head\n"), "0000"]),
        archive_route(SHA),
    ];
    run_github(&["ref=refs/pull/7/head"], routes).0.unwrap();
}

#[test]
fn v2_missing_ref_suggests_close_names() {
    let all = [
        &format!("{SHA} refs/heads/main\n") as &str,
        &format!("{SHA} refs/heads/master\n"),
        &format!("{SHA} refs/heads/zzz-unrelated-branch\n"),
        &format!("{SHA} refs/tags/v1\n"),
        "0000",
    ];
    let routes = vec![
        v2_advertisement(),
        ls_refs(&["refs/heads/mian", "refs/tags/mian"], &["0000"]),
        ls_refs(&["refs/heads/", "refs/tags/"], &all),
    ];
    let (r, events, sink) = run_github(&["ref=mian"], routes);
    let e = r.unwrap_err();
    assert_eq!(e.code(), 3, "a missing ref is its own exit code");
    assert!(
        e.message().starts_with(
            "no branch or tag `mian` in http://127.0.0.1:9/o/r.git; the closest it has: refs/heads/main, "
        ),
        "{e}"
    );
    assert!(e.message().contains("refs/heads/master"));
    assert!(!events.iter().any(|e| e.starts_with("announce")));
    assert!(sink.calls.is_empty());
}

#[test]
fn v0_server() {
    let first = format!("{TAG} HEAD\0multi_ack symref=HEAD:refs/heads/main\n");
    let adv = pkts(&[
        "# service=git-upload-pack\n",
        "0000",
        &first,
        &format!("{TAG} refs/heads/main\n"),
        &format!("{TAG} refs/tags/v2\n"),
        &format!("{SHA} refs/tags/v2^{{}}\n"),
        "0000",
    ]);
    let info = || {
        get(
            format!("{BASE}/o/r.git/info/refs?service=git-upload-pack"),
            200,
            adv.clone(),
        )
    };
    // What git's http-backend sends a v2 request when it speaks only v0: an empty answer
    // (upload-pack dies on `command=ls-refs`); other servers refuse the POST.
    let refused = |status: u16, response: &[u8]| Route {
        method: "POST",
        url: format!("{BASE}/o/r.git/git-upload-pack"),
        headers: Some(UPLOAD_PACK_HEADERS),
        body: None,
        status,
        response: response.to_vec(),
    };
    let (r, events, _) = run_github(&["ref=v2"], vec![refused(200, b""), info(), archive_route(SHA)]);
    r.unwrap();
    assert_eq!(
        events,
        [
            format!("POST {BASE}/o/r.git/git-upload-pack"),
            format!("GET {BASE}/o/r.git/info/refs?service=git-upload-pack"),
            format!("announce git-rev {SHA}\n"),
            format!("GET {BASE}/o/r/archive/{SHA}.tar.gz"),
        ]
    );
    let (r, _, _) = run_github(&[], vec![refused(405, b""), info(), archive_route(TAG)]);
    r.unwrap();
    let garbage = pkts(&["ERR upload-pack: not our ref\n"]);
    let e = run_github(&["ref=v3"], vec![refused(200, &garbage), info()])
        .0
        .unwrap_err();
    assert!(
        e.message().contains("closest it has: refs/tags/v2, refs/heads/main"),
        "{e}"
    );
}

#[test]
fn http_errors() {
    let e = run_github(
        &[&format!("rev={SHA}")],
        vec![get(format!("{BASE}/o/r/archive/{SHA}.tar.gz"), 404, vec![])],
    )
    .0
    .unwrap_err();
    assert_eq!(e.message(), format!("HTTP 404 for {BASE}/o/r/archive/{SHA}.tar.gz"));
    let e = run_github(&[], vec![]).0.unwrap_err();
    // No answer at all is not a reason to ask again the classic way.
    assert_eq!(
        e.message(),
        format!("http_open failed for {BASE}/o/r.git/git-upload-pack")
    );
}

#[test]
fn tarball() {
    let url = "https://example.org/x.tar.gz";
    let tgz = gzip(&archive(&[
        (header(b"a", b'0', 1, b""), b"1"),
        (header(b"b/c", b'0', 1, b""), b"2"),
    ]));
    let (r, events, sink) = go(
        &["tarball", &format!("url={url}")],
        vec![get(url.into(), 200, tgz.clone())],
    );
    r.unwrap();
    assert_eq!(events, [format!("GET {url}")]);
    assert_eq!(sink.file("b/c").0, b"2");
    assert_eq!(sink.root, None);

    let mut broken = tgz;
    let n = broken.len();
    broken.truncate(n - 3);
    let e = go(&["tarball", &format!("url={url}")], vec![get(url.into(), 200, broken)])
        .0
        .unwrap_err();
    assert_eq!(e.message(), format!("{url}: truncated gzip stream"));
}

/// A tarball whose download the host holds is asked for conditionally: a 304 announces the held
/// identity (the host stops the run there, or lets it go on when it lacks the tree after all:
/// then it asks again without the condition); a server that ignores the condition answers 200,
/// and that answer is unpacked.
#[test]
fn tarball_asked_conditionally() {
    let url = "https://example.org/latest.tar.gz";
    let tgz = gzip(&archive(&[(header(b"a", b'0', 1, b""), b"1")]));
    let identity = "ab".repeat(32);
    let args = [
        "tarball",
        &format!("url={url}"),
        "if-none-match=\"v1\"",
        &format!("unchanged={identity}"),
    ];
    let route = |headers: &'static str, status: u16, response: Vec<u8>| Route {
        headers: Some(headers),
        ..get(url.into(), status, response)
    };
    let (r, events, sink) = go(
        &args,
        vec![route("If-None-Match: \"v1\"", 304, vec![]), route("", 200, tgz.clone())],
    );
    r.unwrap();
    assert_eq!(
        events,
        [
            format!("GET {url}"),
            format!("announce http-identity {identity}\n"),
            format!("GET {url}")
        ]
    );
    assert_eq!(sink.file("a").0, b"1");

    let (r, events, sink) = go(&args, vec![route("If-None-Match: \"v1\"", 200, tgz)]);
    r.unwrap();
    assert_eq!(events, [format!("GET {url}")]);
    assert_eq!(sink.file("a").0, b"1");

    let e = go(&args, vec![route("If-None-Match: \"v1\"", 404, vec![])])
        .0
        .unwrap_err();
    assert_eq!(e.message(), format!("HTTP 404 for {url}"));
}

/// `forge`: the ref is resolved at the git URL as given (SourceHut's has no `.git`), and the
/// archive URL is the template with every `{rev}` replaced (GitLab's names the commit twice).
#[test]
fn forge_resolves_at_its_git_url_and_fills_the_archive_template() {
    let git = format!("{BASE}/~o/r");
    let mut ls = ls_refs(
        &["refs/heads/main", "refs/tags/main"],
        &[&format!("{SHA} refs/heads/main\n"), "0000"],
    );
    ls.url = format!("{git}/git-upload-pack");
    let archive = format!("{BASE}/g/s/r/-/archive/{SHA}/r-{SHA}.tar.gz");
    let routes = vec![ls, get(archive.clone(), 200, github_archive(SHA))];
    let (r, events, sink) = go(
        &[
            "forge",
            &format!("git={git}"),
            &format!("archive={BASE}/g/s/r/-/archive/{{rev}}/r-{{rev}}.tar.gz"),
            "ref=main",
        ],
        routes,
    );
    r.unwrap();
    assert_eq!(
        events,
        [
            format!("POST {git}/git-upload-pack"),
            format!("announce git-rev {SHA}\n"),
            format!("GET {archive}"),
        ]
    );
    assert_eq!(sink.file(&format!("r-{SHA}/README")).0, b"hello");
}

#[test]
fn refs_mode_lists_head_or_a_prefix_in_one_round_trip_and_writes_no_tree() {
    let head = vec![ls_refs(
        &["HEAD"],
        &[&format!("{SHA} HEAD symref-target:refs/heads/main\n"), "0000"],
    )];
    let (r, events, sink) = go(&["refs", &format!("git={BASE}/o/r.git")], head);
    r.unwrap();
    assert_eq!(
        events,
        [
            format!("POST {BASE}/o/r.git/git-upload-pack"),
            "announce ref-head main\n".into()
        ]
    );
    assert!(sink.calls.is_empty());
    let answer = [
        &format!("{SHA} refs/heads/release/2.0\n") as &str,
        &format!("{SHA} refs/heads/release/1.2\n"),
        &format!("{TAG} refs/tags/release/1.2 peeled:{SHA}\n"),
        "0000",
    ];
    let routes = vec![ls_refs(&["refs/heads/release/", "refs/tags/release/"], &answer)];
    let (r, events, _) = go(&["refs", &format!("git={BASE}/o/r.git"), "prefix=release"], routes);
    r.unwrap();
    assert_eq!(
        events[1..],
        ["announce ref-name release/1.2\n", "announce ref-name release/2.0\n"]
    );
}

#[test]
fn refs_mode_on_a_v0_server_reads_head_from_the_capabilities() {
    let first = format!("{TAG} HEAD\0multi_ack symref=HEAD:refs/heads/trunk\n");
    let adv = pkts(&[
        "# service=git-upload-pack\n",
        "0000",
        &first,
        &format!("{TAG} refs/heads/trunk\n"),
        &format!("{TAG} refs/tags/v/1\n"),
        &format!("{SHA} refs/tags/v/1^{{}}\n"),
        "0000",
    ]);
    let routes = || {
        vec![
            Route {
                method: "POST",
                url: format!("{BASE}/o/r.git/git-upload-pack"),
                headers: None,
                body: None,
                status: 405,
                response: Vec::new(),
            },
            get(
                format!("{BASE}/o/r.git/info/refs?service=git-upload-pack"),
                200,
                adv.clone(),
            ),
        ]
    };
    let (r, events, _) = go(&["refs", &format!("git={BASE}/o/r.git")], routes());
    r.unwrap();
    assert_eq!(events.last().map(String::as_str), Some("announce ref-head trunk\n"));
    let (r, events, _) = go(&["refs", &format!("git={BASE}/o/r.git"), "prefix=v"], routes());
    r.unwrap();
    assert_eq!(events.last().map(String::as_str), Some("announce ref-name v/1\n"));
}

#[test]
fn a_missing_ref_with_refs_nested_under_it_is_not_listed_again_for_suggestions() {
    let nested = [
        &format!("{SHA} refs/heads/release/1.2\n") as &str,
        &format!("{SHA} refs/tags/release/2.0\n"),
        "0000",
    ];
    let routes = vec![ls_refs(&["refs/heads/release", "refs/tags/release"], &nested)];
    let (r, events, _) = run_github(&["ref=release"], routes);
    let e = r.unwrap_err();
    assert_eq!(e.code(), 3);
    assert!(
        e.message()
            .contains("the closest it has: refs/heads/release/1.2, refs/tags/release/2.0"),
        "{e}"
    );
    assert_eq!(
        events,
        [format!("POST {BASE}/o/r.git/git-upload-pack")],
        "one round trip"
    );
}
