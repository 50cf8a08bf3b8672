use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;

use super::*;
use crate::io::Refused;
use crate::testing::{RecordingSink, TempDir, git, git_archive_tree, git_repo, git_with_input};

const URL: &str = "http://127.0.0.1:9/o/r.git";

/// A git server: the real `git upload-pack --stateless-rpc`, as `git http-backend` runs it, on
/// a repository made by the test. `v0` makes it ignore `Git-Protocol`, as an old server
/// would; `answer` replaces the fetch answer.
struct GitNet {
    repo: PathBuf,
    v0: bool,
    answer: Option<Vec<u8>>,
    /// Responses not yet read to their end (shared with the console, which tells how much
    /// was unread when a line was announced).
    open: Rc<RefCell<BTreeMap<i32, Vec<u8>>>>,
    next: i32,
    /// Requests and announced lines, in order.
    log: Rc<RefCell<Vec<String>>>,
}

impl GitNet {
    fn new(repo: &Path) -> GitNet {
        GitNet {
            repo: repo.to_owned(),
            v0: false,
            answer: None,
            open: Rc::default(),
            next: 0,
            log: Rc::default(),
        }
    }

    fn upload_pack(&self, headers: &str, advertise: bool, body: &[u8]) -> Vec<u8> {
        let mut cmd = Command::new("git");
        cmd.env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null");
        if !self.v0 && headers.contains("Git-Protocol: version=2") {
            cmd.env("GIT_PROTOCOL", "version=2");
        }
        cmd.args(["upload-pack", "--stateless-rpc"]);
        if advertise {
            cmd.arg("--http-backend-info-refs");
        }
        let mut child = cmd
            .arg(&self.repo)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = body.to_vec();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        let mut answer = Vec::new();
        if advertise && self.v0 {
            // What git http-backend puts before a v0 advertisement.
            answer.extend_from_slice(b"001e# service=git-upload-pack\n0000");
        }
        answer.extend(out.stdout);
        answer
    }
}

impl Net for GitNet {
    fn open(&mut self, method: &str, url: &str, headers: &str, body: &[u8]) -> Result<i32, Refused> {
        let what = if body.starts_with(b"0012command=fetch") || body.windows(5).any(|w| w == b"want ") {
            "fetch"
        } else if body.starts_with(b"0014command=ls-refs") {
            "ls-refs"
        } else {
            ""
        };
        self.log
            .borrow_mut()
            .push(format!("{method} {url} {what}").trim_end().to_owned());
        let answer = match (method, url.strip_prefix(URL)) {
            ("GET", Some("/info/refs?service=git-upload-pack")) => self.upload_pack(headers, true, b""),
            ("POST", Some("/git-upload-pack")) => {
                assert_eq!(headers, crate::fetch::UPLOAD_PACK_HEADERS);
                match (&self.answer, what) {
                    (Some(a), "fetch") => a.clone(),
                    _ => self.upload_pack(headers, false, body),
                }
            }
            _ => return Err(Refused),
        };
        self.next += 1;
        self.open.borrow_mut().insert(self.next, answer);
        Ok(self.next)
    }

    fn status(&mut self, _: i32) -> Result<u16, Refused> {
        Ok(200)
    }

    fn read(&mut self, response: i32, buf: &mut [u8]) -> Result<usize, Refused> {
        let mut open = self.open.borrow_mut();
        let data = open.get_mut(&response).ok_or(Refused)?;
        let n = buf.len().min(data.len()).min(7000);
        buf[..n].copy_from_slice(&data[..n]);
        data.drain(..n);
        Ok(n)
    }

    fn close(&mut self, response: i32) -> Result<(), Refused> {
        self.open.borrow_mut().remove(&response).map(drop).ok_or(Refused)
    }
}

#[derive(Default)]
struct Console {
    lines: Vec<String>,
    notes: Vec<String>,
    log: Rc<RefCell<Vec<String>>>,
    open: Rc<RefCell<BTreeMap<i32, Vec<u8>>>>,
}

impl crate::io::Console for Console {
    fn announce(&mut self, line: &str) -> Result<()> {
        self.lines.push(line.to_owned());
        let unread: usize = self.open.borrow().values().map(Vec::len).sum();
        let what = line.split(' ').next().unwrap();
        self.log.borrow_mut().push(format!("{what}, {unread} bytes unread"));
        Ok(())
    }

    fn note(&mut self, message: &str) {
        assert!(!message.contains('\n'));
        self.notes.push(message.to_owned());
    }
}

struct Run {
    result: Result<()>,
    sink: RecordingSink,
    console: Console,
    log: Vec<String>,
}

impl Run {
    /// The requests made, in order.
    fn requests(&self) -> Vec<&str> {
        self.log
            .iter()
            .filter(|l| l.starts_with("GET") || l.starts_with("POST"))
            .map(String::as_str)
            .collect()
    }
}

fn run(net: &mut GitNet, extra: &[&str]) -> Run {
    let mut argv = vec!["fetcher".to_owned(), "git".to_owned(), format!("url={URL}/")];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let mut sink = RecordingSink::default();
    let mut console = Console {
        log: net.log.clone(),
        open: net.open.clone(),
        ..Console::default()
    };
    net.log.borrow_mut().clear();
    let result = crate::run(&argv, net, &mut sink, &mut console);
    assert!(net.open.borrow().is_empty() || result.is_err(), "responses left open");
    let log = net.log.borrow().clone();
    Run {
        result,
        sink,
        console,
        log,
    }
}

fn rev_parse(dir: &Path, what: &str) -> String {
    String::from_utf8(git(dir, &["rev-parse", what]))
        .unwrap()
        .trim()
        .to_owned()
}

/// Checks a run that fetched `rev`: the lines announced, and the tree against `git archive`.
fn check(repo: &Path, r: &Run, rev: &str) {
    if let Err(e) = &r.result {
        panic!("{e}");
    }
    let tree = rev_parse(repo, &format!("{rev}^{{tree}}"));
    assert_eq!(
        r.console.lines,
        [format!("git-rev {rev}\n"), format!("git-tree {tree}\n")]
    );
    let want = git_archive_tree(repo, rev);
    assert_eq!(r.sink.tree.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    assert!(r.sink.tree == want, "the trees differ");
    assert_eq!(r.sink.root, None);
}

#[test]
fn v2_by_branch_tag_and_rev() {
    let tmp = TempDir::new("git-v2");
    let repo = tmp.path().join("repo");
    let commits = git_repo(&repo);
    git(&repo, &["tag", "-a", "-m", "release", "v1.0", &commits[3]]);
    git(&repo, &["branch", "old", &commits[1]]);
    let mut net = GitNet::new(&repo);

    let r = run(&mut net, &[]);
    check(&repo, &r, &commits[11]);
    assert_eq!(
        r.requests(),
        [
            // ls-refs straight away; the commit alone (refused: this server cannot filter),
            // then the pack.
            format!("POST {URL}/git-upload-pack ls-refs"),
            format!("POST {URL}/git-upload-pack fetch"),
            format!("POST {URL}/git-upload-pack fetch"),
        ]
    );
    // What is written: the submodule as an empty directory, the executable bit, symlinks.
    assert_eq!(r.sink.tree.get("sub"), Some(&crate::testing::Node::Dir));
    assert!(r.sink.file("run.sh").1);
    assert_eq!(r.sink.file("empty"), (&b""[..], false));
    assert!(r.sink.calls.contains(&"symlink link -> a/b".to_owned()));
    assert!(r.sink.calls.contains(&"symlink a/up -> ../../etc/passwd".to_owned()));

    check(&repo, &run(&mut net, &["ref=old"]), &commits[1]);
    check(&repo, &run(&mut net, &["ref=v1.0"]), &commits[3]);
    check(&repo, &run(&mut net, &["ref=refs/tags/v1.0"]), &commits[3]);
    // A commit that no ref points at, by id: announced before any request.
    let r = run(&mut net, &[&format!("rev={}", commits[5].to_uppercase())]);
    check(&repo, &r, &commits[5]);
    assert_eq!(
        r.requests(),
        [
            format!("GET {URL}/info/refs?service=git-upload-pack"),
            format!("POST {URL}/git-upload-pack fetch"),
        ]
    );
}

#[test]
fn v0_server() {
    let tmp = TempDir::new("git-v0");
    let repo = tmp.path().join("repo");
    let commits = git_repo(&repo);
    git(&repo, &["tag", "-a", "-m", "release", "v1.0", &commits[2]]);
    let mut net = GitNet::new(&repo);
    net.v0 = true;
    let r = run(&mut net, &[]);
    check(&repo, &r, &commits[11]);
    assert_eq!(
        r.requests(),
        [
            // A v0 server cannot answer ls-refs (git's upload-pack dies on it): asked again
            // the classic way.
            format!("POST {URL}/git-upload-pack ls-refs"),
            format!("GET {URL}/info/refs?service=git-upload-pack"),
            format!("POST {URL}/git-upload-pack fetch"),
        ]
    );
    check(&repo, &run(&mut net, &["ref=v1.0"]), &commits[2]);
    check(&repo, &run(&mut net, &[&format!("rev={}", commits[4])]), &commits[4]);
    let e = run(&mut net, &["ref=v1.1"]).result.unwrap_err();
    assert!(
        e.message().starts_with(&format!(
            "no branch or tag `v1.1` in {URL}; the closest it has: refs/tags/v1.0"
        )),
        "{e}"
    );
}

#[test]
fn missing_ref_lists_the_nearest() {
    let tmp = TempDir::new("git-missing");
    let repo = tmp.path().join("repo");
    git_repo(&repo);
    git(&repo, &["branch", "maint"]);
    let mut net = GitNet::new(&repo);
    let r = run(&mut net, &["ref=mian"]);
    let e = r.result.unwrap_err();
    assert_eq!(e.code(), 3, "a missing ref is its own exit code");
    assert!(
        e.message().starts_with(&format!(
            "no branch or tag `mian` in {URL}; the closest it has: refs/heads/main, refs/heads/maint"
        )),
        "{e}"
    );
    assert!(r.console.lines.is_empty());
    assert!(r.sink.calls.is_empty());
}

/// A v2 fetch answer carrying `pack` (and `extra` packets first).
fn answer(pack: &[u8], extra: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    pktline::encode(&mut out, b"shallow-info\n").unwrap();
    pktline::encode(&mut out, b"shallow 0123456789abcdef0123456789abcdef01234567\n").unwrap();
    out.extend_from_slice(pktline::DELIM);
    pktline::encode(&mut out, b"packfile\n").unwrap();
    for e in extra {
        pktline::encode(&mut out, e).unwrap();
    }
    for piece in pack.chunks(1000) {
        pktline::encode(&mut out, &[&[1u8][..], piece].concat()).unwrap();
    }
    out.extend_from_slice(pktline::FLUSH);
    out
}

/// A pack of `objects` (ids, one a line) from the repository.
fn pack_of(repo: &Path, objects: &str) -> Vec<u8> {
    git_with_input(repo, &["pack-objects", "--stdout", "-q"], objects.as_bytes())
}

fn objects_of(repo: &Path, rev: &str) -> Vec<String> {
    let list = git(repo, &["rev-list", "--objects", "--no-object-names", "-n1", rev]);
    String::from_utf8(list).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn answers_that_are_not_the_commit() {
    let tmp = TempDir::new("git-answers");
    let repo = tmp.path().join("repo");
    let commits = git_repo(&repo);
    let head = &commits[11];
    let rev = format!("rev={head}");
    let mut net = GitNet::new(&repo);
    let objects = objects_of(&repo, head);

    // A pack without one blob: the tree names an object the pack does not hold.
    let blob = rev_parse(&repo, &format!("{head}:a/b/c/deep.txt"));
    let without: Vec<&str> = objects.iter().map(String::as_str).filter(|o| **o != blob).collect();
    net.answer = Some(answer(&pack_of(&repo, &without.join("\n")), &[]));
    let r = run(&mut net, &[&rev]);
    assert_eq!(
        r.result.unwrap_err().message(),
        format!("the pack holds no blob {blob} (for `a/b/c/deep.txt`)")
    );
    assert_eq!(r.console.lines.len(), 2, "git-rev and git-tree were announced");

    // A pack of another commit.
    let other = objects_of(&repo, &commits[10]).join("\n");
    net.answer = Some(answer(&pack_of(&repo, &other), &[]));
    let r = run(&mut net, &[&rev]);
    assert_eq!(
        r.result.unwrap_err().message(),
        format!("the pack holds no commit {head}")
    );
    assert_eq!(r.console.lines, [format!("git-rev {head}\n")]);
    assert!(r.sink.calls.is_empty());

    // Progress on band 2 goes to the log; an error on band 3 ends the fetch.
    let all = objects.join("\n");
    net.answer = Some(answer(
        &pack_of(&repo, &all),
        &[b"\x02Counting objects: 5\r", b"\x02done.\n"],
    ));
    let r = run(&mut net, &[&rev]);
    r.result.unwrap();
    assert!(
        r.console.notes.iter().any(|n| n == "Counting objects: 5"),
        "{:?}",
        r.console.notes
    );
    net.answer = Some(answer(b"PACK", &[b"\x03upload-pack: out of memory\n"]));
    let e = run(&mut net, &[&rev]).result.unwrap_err();
    assert_eq!(
        e.message(),
        format!("{URL}/git-upload-pack: the git server said: upload-pack: out of memory")
    );

    // An ERR before the pack, a pack cut short, an answer without a pack.
    let mut err = Vec::new();
    pktline::encode(&mut err, b"ERR upload-pack: not our ref\n").unwrap();
    net.answer = Some(err);
    let e = run(&mut net, &[&rev]).result.unwrap_err();
    assert_eq!(e.message(), "the git server said: upload-pack: not our ref");
    let mut cut = answer(&pack_of(&repo, &all), &[]);
    cut.truncate(cut.len() - 3000);
    net.answer = Some(cut);
    let e = run(&mut net, &[&rev]).result.unwrap_err();
    assert!(e.message().starts_with(&format!("{URL}/git-upload-pack: ")), "{e}");
    net.answer = Some(b"0011shallow-info\n0000".to_vec());
    let e = run(&mut net, &[&rev]).result.unwrap_err();
    assert_eq!(
        e.message(),
        format!("{URL}/git-upload-pack: the answer ended before the pack")
    );
}

fn tree_entry(mode: &str, name: &[u8], id: &[u8; 20]) -> Vec<u8> {
    [mode.as_bytes(), b" ", name, b"\0", id].concat()
}

#[test]
fn refuses_bad_tree_entries() {
    let blob = crate::sha1::sha1(b"blob 2\0hi");
    let b = hex(&blob);
    for (entry, message) in [
        (
            tree_entry("100644", b"..", &blob),
            "a tree holds the bad name `..`".to_owned(),
        ),
        (
            tree_entry("100644", b".", &blob),
            "a tree holds the bad name `.`".to_owned(),
        ),
        (
            tree_entry("100644", b"", &blob),
            "a tree holds the bad name ``".to_owned(),
        ),
        (
            tree_entry("100644", b"a/b", &blob),
            "a tree holds the bad name `a/b`".to_owned(),
        ),
        (
            tree_entry("100644", b"x", &[9; 20]),
            format!("the pack holds no blob {} (for `x`)", "09".repeat(20)),
        ),
        (
            tree_entry("40000", b"d", &blob),
            format!("the pack holds no tree {b} (for `d`)"),
        ),
        (
            tree_entry("100644", b"x", &blob)[..10].to_vec(),
            "malformed tree at ``".to_owned(),
        ),
        (tree_entry("10064x", b"x", &blob), "malformed tree at ``".to_owned()),
        (
            tree_entry("170000", b"x", &blob),
            "`x` has the unknown mode 170000".to_owned(),
        ),
    ] {
        let tree = [tree_entry("100644", b"ok", &blob), entry].concat();
        let tree_id = crate::sha1::sha1(&[format!("tree {}\0", tree.len()).as_bytes(), &tree].concat());
        let bytes = crate::testing::pack(&[(3, b"hi"), (2, &tree)]);
        let mut sink = RecordingSink::default();
        let mut pack = Pack::read(&mut &bytes[..], &mut sink, &mut |_, _, _, _| Ok(())).unwrap();
        let e = checkout(&mut pack, &mut sink, &tree_id, &mut Early::default()).unwrap_err();
        assert_eq!(e.message(), message);
        assert_eq!(sink.file("ok"), (&b"hi"[..], false));
    }
}

#[test]
fn announces_the_tree_before_the_pack_has_arrived() {
    let tmp = TempDir::new("git-early");
    let repo = tmp.path().join("repo");
    let commits = git_repo(&repo);
    let mut net = GitNet::new(&repo);
    let r = run(&mut net, &[]);
    check(&repo, &r, &commits[11]);
    // git sends the commit first: its tree is known when most of the pack is still to come.
    let announced = r.log.iter().position(|l| l.starts_with("git-tree")).unwrap();
    assert_eq!(r.log[announced - 1], format!("POST {URL}/git-upload-pack fetch"));
    let unread: usize = r.log[announced]
        .strip_prefix("git-tree, ")
        .and_then(|l| l.strip_suffix(" bytes unread"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(unread > 100_000, "{}", r.log[announced]);
    assert!(r.log[..announced].iter().any(|l| l.starts_with("git-rev, ")));
}

#[test]
fn with_filter_the_commit_comes_alone_first() {
    let tmp = TempDir::new("git-filter");
    let repo = tmp.path().join("repo");
    let commits = git_repo(&repo);
    git(&repo, &["config", "uploadpack.allowFilter", "true"]);
    let mut net = GitNet::new(&repo);
    let r = run(&mut net, &[]);
    check(&repo, &r, &commits[11]);
    let steps: Vec<&str> = r.log.iter().map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(
        steps,
        [
            &format!("POST {URL}/git-upload-pack ls-refs") as &str,
            "git-rev",
            &format!("POST {URL}/git-upload-pack fetch"),
            "git-tree",
            &format!("POST {URL}/git-upload-pack fetch"),
        ]
    );
    // A server that advertises `filter` but fails it: the whole pack still comes.
    let mut bad = Vec::new();
    pktline::encode(&mut bad, b"ERR filter not allowed\n").unwrap();
    let head = &commits[11];
    net.answer = Some(bad);
    let r = run(&mut net, &[&format!("rev={head}")]);
    assert!(r.result.is_err(), "the canned answer fails both fetches");
    assert!(
        r.console
            .notes
            .iter()
            .any(|n| n.starts_with("fetching the commit alone failed")),
        "{:?}",
        r.console.notes
    );
}

/// Writes `files` (path, contents, mode) into the work tree at `dir` and commits them.
fn commit_files(dir: &Path, files: &[(&str, &str, u32)]) -> String {
    use std::os::unix::fs::PermissionsExt;
    for (path, data, mode) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "Attributes\n\nWith a body."]);
    rev_parse(dir, "HEAD")
}

/// A repository whose `.gitattributes` (at the top, in a subdirectory, with a macro) leave
/// files and whole directories out and expand `$Format:…$`: the fetched tree is what `git
/// archive` exports, whichever of the early and late paths writes each file.
#[test]
fn gitattributes_are_applied_as_git_archive_applies_them() {
    let tmp = TempDir::new("git-attributes");
    let repo = tmp.path().join("repo");
    git_repo(&repo);
    let version = "version $Format:%H$ of $Format:%cI$\nby $Format:%an <%ae>$, %s: $Format:%s$\n";
    let rev = commit_files(
        &repo,
        &[
            (
                ".gitattributes",
                "[attr]dev-only export-ignore\n.gitattributes export-ignore\n/tests/ export-ignore\n\
                 *.md dev-only\nVERSION export-subst\nsrc/**/*.in export-subst\nbig/ export-ignore\n",
                0o644,
            ),
            ("VERSION", version, 0o644),
            ("tests/t1.rs", "test\n", 0o644),
            ("tests/data/t2.txt", "data\n", 0o644),
            ("notes/0.md", "ignored by macro\n", 0o644),
            ("src/gen/config.h.in", "#define REV \"$Format:%h$\"\n", 0o644),
            (
                "src/.gitattributes",
                "text.txt export-ignore\ncopy.txt export-subst\n",
                0o644,
            ),
            (
                "src/keep.sh",
                "#!/bin/sh\n# $Format:%H$ stays: no export-subst\n",
                0o755,
            ),
        ],
    );
    let want = git_archive_tree(&repo, &rev);
    assert!(!want.contains_key("tests") && !want.contains_key("big") && want.contains_key("VERSION"));
    assert!(!want.contains_key("src/text.txt") && !want.contains_key(".gitattributes"));
    let mut net = GitNet::new(&repo);
    let r = run(&mut net, &[]);
    r.result.as_ref().unwrap();
    assert_eq!(r.sink.tree.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (k, v) in &want {
        assert_eq!(r.sink.tree.get(k), Some(v), "{k}");
    }
    let expanded = r.sink.file("VERSION").0;
    assert!(
        expanded.starts_with(format!("version {rev} of ").as_bytes()),
        "{}",
        String::from_utf8_lossy(expanded)
    );

    // The same commit from a pack whose blobs come before its trees (nothing can be placed
    // early): the late path applies the same attributes.
    let mut net = GitNet::new(&repo);
    let objects = objects_of(&repo, &rev);
    let (blobs, rest): (Vec<&String>, Vec<&String>) = objects.iter().partition(|o| {
        String::from_utf8(git(&repo, &["cat-file", "-t", o.as_str()]))
            .unwrap()
            .trim()
            == "blob"
    });
    let order: String = blobs.iter().chain(rest.iter()).map(|o| format!("{o}\n")).collect();
    let pack = git_with_input(
        &repo,
        &["pack-objects", "--stdout", "-q", "--no-reuse-delta", "--window=0"],
        order.as_bytes(),
    );
    net.answer = Some(answer(&pack, &[]));
    let r = run(&mut net, &[&format!("rev={rev}")]);
    r.result.as_ref().unwrap();
    assert!(r.sink.tree == want, "the trees differ when blobs come first");
}

/// The same commit fetched twice: as the server packs it (trees first, deltas), and from a
/// pack of whole objects whose blobs come before its trees (nothing placed early). Both must
/// be what `git archive` exports, byte for byte.
fn check_both_ways(repo: &Path, rev: &str) {
    let want = git_archive_tree(repo, rev);
    let mut net = GitNet::new(repo);
    let r = run(&mut net, &[]);
    r.result.as_ref().unwrap();
    assert_same(&r.sink, &want, "as the server packs it");
    let objects = objects_of(repo, rev);
    let (blobs, rest): (Vec<&String>, Vec<&String>) = objects.iter().partition(|o| {
        String::from_utf8(git(repo, &["cat-file", "-t", o.as_str()]))
            .unwrap()
            .trim()
            == "blob"
    });
    let order: String = blobs.iter().chain(rest.iter()).map(|o| format!("{o}\n")).collect();
    let pack = git_with_input(
        repo,
        &["pack-objects", "--stdout", "-q", "--no-reuse-delta", "--window=0"],
        order.as_bytes(),
    );
    let mut net = GitNet::new(repo);
    net.answer = Some(answer(&pack, &[]));
    let r = run(&mut net, &[&format!("rev={rev}")]);
    r.result.as_ref().unwrap();
    assert_same(&r.sink, &want, "blobs first");
}

fn assert_same(sink: &RecordingSink, want: &BTreeMap<String, crate::testing::Node>, how: &str) {
    assert_eq!(
        sink.tree.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{how}"
    );
    for (path, node) in want {
        assert!(sink.tree.get(path) == Some(node), "{how}: {path} differs");
    }
}

/// Contents for one file: pieces drawn from `pieces` by the seed, `count` of them.
fn contents(pieces: &[&[u8]], count: usize, seed: u64) -> Vec<u8> {
    crate::testing::noise(count, seed)
        .iter()
        .map(|b| pieces[usize::from(*b) % pieces.len()])
        .collect::<Vec<_>>()
        .concat()
}

/// Every attribute `git archive` applies to a file's bytes — `eol=crlf`, `text` in each form,
/// `text=auto`, `-text`, `binary`, the old `crlf`, `ident`, `export-subst`, through macros and
/// a subdirectory's own `.gitattributes` (both files export-ignored, as projects have them) —
/// over files of every kind (LF text, CRLFs already, lone CRs, NULs, controls, Ctrl-Z, `$Id$`
/// keywords), small and past the early path's 1 MiB, stored as they are written (not
/// normalized by `git add`): the fetched tree is what `git archive` exports.
#[test]
fn line_endings_and_ident_are_what_git_archive_writes() {
    use std::os::unix::fs::symlink;
    let tmp = TempDir::new("git-eol");
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join("nested/deeper")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    // While adding, nothing is converted: the blobs are the bytes written.
    std::fs::write(repo.join(".git/info/attributes"), "* -text -ident\n").unwrap();
    let top = "[attr]windows text eol=crlf\n\
               .gitattributes export-ignore\n\
               *.auto text=auto eol=crlf\n\
               *.crlf eol=crlf\n\
               *.text text\n\
               *.textauto text=auto\n\
               *.bin binary eol=crlf\n\
               *.binary binary\n\
               *.minus -text eol=crlf\n\
               *.id ident\n\
               *.idauto ident text=auto eol=crlf\n\
               *.old crlf eol=crlf\n\
               *.oldinput crlf=input eol=crlf\n\
               *.win windows\n\
               *.subst eol=crlf export-subst ident\n\
               *.lf eol=lf\n\
               *.link eol=crlf\n\
               ignored.* export-ignore eol=crlf\n";
    std::fs::write(repo.join(".gitattributes"), top).unwrap();
    std::fs::write(
        repo.join("nested/.gitattributes"),
        "*.auto -text\n*.text eol=crlf\n*.textauto eol=crlf\n*.binary -binary eol=crlf\n\
         *.id -ident\ndeeper/*.lf !eol text=auto eol=crlf\n",
    )
    .unwrap();
    let kinds: [&[&[u8]]; 6] = [
        &[b"word ", b"a", b"\n", b"$Id$", b"$Format:%h%n$"],
        &[b"word ", b"\n", b"\r\n"],
        &[b"word ", b"\n", b"\r"],
        &[b"word ", b"\n", b"\0"],
        &[b"word ", b"\n", b"\x7f", b"\x01", b"\x1a", b"\t", b"\x1b"],
        &[
            b"a",
            b"\n",
            b"\r\n",
            b"\r",
            b"\0",
            b"\x1a",
            b"$Id: x $",
            b"$",
            b"Id",
            b":",
            b" ",
        ],
    ];
    let exts = [
        "auto", "crlf", "text", "textauto", "bin", "binary", "minus", "id", "idauto", "old", "oldinput", "win",
        "subst", "lf", "plain",
    ];
    let mut seed = 1;
    for dir in ["", "nested/", "nested/deeper/"] {
        for ext in exts {
            for (k, pieces) in kinds.iter().enumerate() {
                seed += 1;
                let data = contents(pieces, (seed as usize * 7) % 60, seed);
                std::fs::write(repo.join(format!("{dir}{k}.{ext}")), data).unwrap();
            }
            // A file ending in Ctrl-Z, one ending in CR, one with no newline, an empty one.
            std::fs::write(repo.join(format!("{dir}eof.{ext}")), b"one\ntwo\x1a").unwrap();
            std::fs::write(repo.join(format!("{dir}cr.{ext}")), b"one\ntwo\r").unwrap();
            std::fs::write(repo.join(format!("{dir}flat.{ext}")), b"no newline").unwrap();
            std::fs::write(repo.join(format!("{dir}empty.{ext}")), b"").unwrap();
        }
    }
    std::fs::write(repo.join("ignored.crlf"), b"left out\n").unwrap();
    symlink("target\nwith a newline", repo.join("odd.link")).unwrap();
    // Past the early path: text, the same text changed a little (a delta of it), text with a
    // CRLF near its end (text=auto leaves it), and binary data.
    let text: Vec<u8> = (0..40_000)
        .flat_map(|i| format!("line {i} of a long file\n").into_bytes())
        .collect();
    let mut changed = text.clone();
    changed.extend_from_slice(b"one more line\n");
    let mut late_crlf = text.clone();
    late_crlf.extend_from_slice(b"windows line\r\n");
    std::fs::write(repo.join("big.auto"), &text).unwrap();
    std::fs::write(repo.join("nested/big.crlf"), &changed).unwrap();
    std::fs::write(repo.join("big2.auto"), &late_crlf).unwrap();
    std::fs::write(repo.join("big.id"), [&text[..], b"$Id$\n"].concat()).unwrap();
    std::fs::write(repo.join("noise.auto"), crate::testing::noise(1_500_000, 5)).unwrap();
    std::fs::write(repo.join("noise.crlf"), crate::testing::noise(1_500_000, 6)).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "Line endings\n\nAnd a body."]);
    std::fs::remove_file(repo.join(".git/info/attributes")).unwrap();
    let rev = rev_parse(&repo, "HEAD");

    let want = git_archive_tree(&repo, &rev);
    // The test means something: git converted files, and left others alone.
    let file = |p: &str| match &want[p] {
        crate::testing::Node::File { data, .. } => data.clone(),
        other => panic!("{p}: {other:?}"),
    };
    assert!(file("big.auto").ends_with(b"file\r\n"));
    assert_eq!(file("big2.auto"), late_crlf);
    assert_eq!(file("noise.auto"), crate::testing::noise(1_500_000, 5));
    assert_ne!(file("noise.crlf"), crate::testing::noise(1_500_000, 6));
    assert!(!want.contains_key(".gitattributes") && !want.contains_key("ignored.crlf"));
    check_both_ways(&repo, &rev);
}
