//! `cab fetch` end to end, against the local forge (`scripts/forge`: real `git http-backend`,
//! real `git archive` tarballs) and against small misbehaving servers written for these tests.
//!
//! The references are independent of cab: `git rev-parse` for revisions, the extraction of
//! `git archive` (or the very tree that was tarred) for contents, real Nix (`nix hash path`)
//! for the narHash and `cab hash` of the reference tree for the tree hash. Each test has its
//! own store, its own forge root and its own forge process.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::forge::{self, Forge};
use common::*;

/// How long one `cab fetch` may take before the test fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(90);

/// Where github islands point when a test has no forge running: nothing listens on port 1, so
/// an accidental request fails at once instead of reaching github.com.
const NO_GITHUB: &str = "http://127.0.0.1:1";

// ---------------------------------------------------------------------------------------------
// Running cab
// ---------------------------------------------------------------------------------------------

/// `cab --store STORE` with `CAB_GITHUB_URL=GITHUB`.
fn cab_in(store: &Path, github: &str) -> Command {
    let mut cmd = cab();
    cmd.arg("--store").arg(store).env("CAB_GITHUB_URL", github);
    cmd
}

/// `cab fetch ARGS…` (bounded in time), whatever its outcome.
fn fetch(store: &Path, github: &str, args: &[&str]) -> Output {
    let mut cmd = cab_in(store, github);
    cmd.arg("fetch").args(args);
    run_timeout(&mut cmd, FETCH_TIMEOUT)
}

fn fetch_ok(store: &Path, github: &str, args: &[&str]) -> Output {
    let out = fetch(store, github, args);
    assert!(
        out.status.success(),
        "expected `cab fetch {}` to succeed: {}",
        args.join(" "),
        report("cab fetch", &out)
    );
    out
}

/// `cab fetch ARGS…` must fail with a plain error (no panic, no signal); returns its stderr.
fn fetch_err(store: &Path, github: &str, args: &[&str]) -> String {
    let out = fetch(store, github, args);
    assert!(
        exited_nonzero(out.status),
        "expected `cab fetch {}` to fail: {}",
        args.join(" "),
        report("cab fetch", &out)
    );
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains("panicked at"),
        "expected an error message, got a panic: {}",
        report("cab fetch", &out)
    );
    stderr
}

/// One island as `cab fetch --json` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fetched {
    island: String,
    locked: String,
    rev: Option<String>,
    hash: String,
    nar: String,
}

fn parse_fetched(line: &str) -> Fetched {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("`cab fetch --json` printed {line:?}: {e}"));
    let field = |key: &str| {
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("no string {key:?} in {line}"))
            .to_owned()
    };
    let fetched = Fetched {
        island: field("island"),
        locked: field("locked"),
        rev: v["rev"].as_str().map(str::to_owned),
        hash: field("hash"),
        nar: field("narHash"),
    };
    tree_hex(&fetched.hash);
    assert!(
        fetched.nar.starts_with("sha256-"),
        "narHash {:?} is not SRI",
        fetched.nar
    );
    fetched
}

/// `cab fetch --json ISLAND`, which must succeed.
fn fetch_json(store: &Path, github: &str, island: &str) -> Fetched {
    fetch_json_with(store, github, &[], island)
}

/// `cab fetch --json FLAGS… ISLAND`, which must succeed.
fn fetch_json_with(store: &Path, github: &str, flags: &[&str], island: &str) -> Fetched {
    let mut args = vec!["--json"];
    args.extend_from_slice(flags);
    args.push(island);
    let out = fetch_ok(store, github, &args);
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "expected one JSON line for {island}, got {stdout:?}");
    let fetched = parse_fetched(lines[0]);
    assert_eq!(fetched.island, island, "`island` must be the island as given");
    fetched
}

/// `cab store ls`: every published tree.
fn store_ls(store: &Path) -> Vec<String> {
    let out = run_ok(cab_in(store, NO_GITHUB).args(["store", "ls"]));
    let mut trees: Vec<String> = text(&out.stdout).lines().map(|l| l.trim().to_owned()).collect();
    trees.sort();
    trees
}

/// `cab store verify` must find nothing wrong.
fn store_verify(store: &Path) {
    run_ok(cab_in(store, NO_GITHUB).args(["store", "verify"]));
}

/// Nothing may be left in the store's staging area once every `cab` process has exited.
fn assert_no_staging_left(store: &Path) {
    let left: Vec<_> = fs::read_dir(store.join("tmp"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "staging left behind in {}/tmp: {left:?}",
        store.display()
    );
}

/// `cab store export HASH` into a fresh directory under `parent`; returns that directory.
fn export(store: &Path, hash: &str, parent: &Path) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dest = parent.join(format!("export-{}", N.fetch_add(1, Ordering::Relaxed)));
    run_ok(cab_in(store, NO_GITHUB).args(["store", "export", hash]).arg(&dest));
    dest
}

/// The fetched tree, exported from the store, must be `expected` exactly; its narHash must be
/// what real Nix says of `expected`, and its hash what `cab hash` says of it.
fn assert_fetched_tree(store: &Path, fetched: &Fetched, expected: &Path, scratch: &Path) {
    let exported = export(store, &fetched.hash, scratch);
    assert_same_root(expected, &exported);
    let nix = nix_hash(expected, None);
    assert_eq!(
        fetched.nar, nix,
        "narHash of {} differs from `nix hash path` of the reference tree",
        fetched.island
    );
    let ours = cab_hash(expected, None);
    assert_eq!(
        fetched.hash, ours.tree,
        "hash of {} differs from `cab hash` of the reference tree",
        fetched.island
    );
    assert_eq!(ours.nar, nix, "`cab hash` of the reference tree disagrees with Nix");
    assert_eq!(cab_hash(&exported, None), ours, "the exported tree hashes differently");
}

/// [`assert_same_tree`] for any root: a directory, or a single file or symlink (the root of a
/// subpath island may be either).
fn assert_same_root(expected: &Path, actual: &Path) {
    if fs::symlink_metadata(expected).unwrap().is_dir() {
        return assert_same_tree(expected, actual);
    }
    assert_eq!(
        snapshot(expected),
        snapshot(actual),
        "{} and {} differ",
        expected.display(),
        actual.display()
    );
    if fs::symlink_metadata(expected).unwrap().is_file() {
        assert!(
            fs::read(expected).unwrap() == fs::read(actual).unwrap(),
            "contents of {} and {} differ",
            expected.display(),
            actual.display()
        );
    }
}

/// A github island's fully locked literal, as DESIGN.md prints it.
fn github_locked(owner_repo: &str, reference: Option<&str>, rev: &str, hash: &str, nar: &str) -> String {
    let reference = reference.map(|r| format!("ref = \"{r}\", ")).unwrap_or_default();
    format!("<github:{owner_repo}:{{ {reference}rev = \"{rev}\", hash = \"{hash}\", narHash = \"{nar}\" }}>")
}

// ---------------------------------------------------------------------------------------------
// Trees, repositories and tarballs
// ---------------------------------------------------------------------------------------------

/// One test's directories: the store, the forge root (with `files/`) and scratch space.
struct World {
    tmp: TempDir,
    store: PathBuf,
    root: PathBuf,
}

impl World {
    fn new(label: &str) -> World {
        let tmp = TempDir::new(label);
        let store = tmp.join("store");
        let root = tmp.join("forge");
        mkdir(&root.join("files"));
        World { tmp, store, root }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn files(&self) -> PathBuf {
        self.root.join("files")
    }

    /// A directory for source trees.
    fn join_scratch(&self) -> PathBuf {
        let dir = self.tmp.join("src");
        mkdir(&dir);
        dir
    }
}

/// Copies a real tree (files with their permission bits, symlinks as they are), leaving out
/// `__pycache__` directories.
fn copy_tree(src: &Path, dst: &Path) {
    mkdir(dst);
    for entry in fs::read_dir(src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display())) {
        let entry = entry.unwrap();
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            if entry.file_name() != "__pycache__" {
                copy_tree(&from, &to);
            }
        } else if ft.is_symlink() {
            make_symlink(fs::read_link(&from).unwrap(), &to);
        } else if ft.is_file() {
            fs::copy(&from, &to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
        }
    }
}

/// A source tree like a small real project: a Python standard-library package, an executable
/// script, a README and symlinks (relative, absolute, dangling, to a directory). `generation`
/// changes a few files, so that commits differ.
fn project_tree(dir: &Path, package: &str, generation: u32) {
    copy_tree(&python_package(package), &dir.join(package));
    write_file(
        &dir.join("README.md"),
        format!("# widgets\n\ngeneration {generation}\n").as_bytes(),
        0o644,
    );
    write_file(
        &dir.join("bin/widget"),
        format!("#!/bin/sh\necho widget {generation}\n").as_bytes(),
        0o755,
    );
    write_file(&dir.join("bin/data.txt"), b"not executable\n", 0o644);
    make_symlink(format!("{package}/__init__.py"), &dir.join("init-link"));
    make_symlink("../README.md", &dir.join("bin/readme"));
    make_symlink("/usr/bin/env", &dir.join("abs-link"));
    make_symlink("no/such/file", &dir.join("dangling-link"));
    make_symlink(package, &dir.join("package-dir-link"));
}

/// The commits of the `acme/widgets` repository.
struct Widgets {
    /// On main, tagged `v0` (lightweight).
    c1: String,
    /// On main, tagged `v1` (annotated).
    c2: String,
    /// The tip of main.
    c3: String,
    /// The tip of `dev`, a branch of its own.
    dev: String,
}

/// Builds `acme/widgets` under `root` from real trees: three commits on `main`, a `dev`
/// branch, a lightweight tag `v0` and an annotated tag `v1`.
fn build_widgets(root: &Path, scratch: &Path) -> Widgets {
    let src1 = scratch.join("widgets-1");
    project_tree(&src1, "email", 1);
    let c1 = forge::commit(root, "acme/widgets", &src1, "main", "First import");

    let src2 = scratch.join("widgets-2");
    project_tree(&src2, "email", 2);
    copy_tree(&python_package("json"), &src2.join("json"));
    let c2 = forge::commit(root, "acme/widgets", &src2, "main", "Add json");

    // The third commit removes a directory, flips an executable bit and adds files.
    let src3 = scratch.join("widgets-3");
    project_tree(&src3, "json", 3);
    fs::set_permissions(src3.join("bin/widget"), fs::Permissions::from_mode(0o644)).unwrap();
    write_file(&src3.join("bin/tool"), b"#!/bin/sh\necho tool\n", 0o755);
    write_file(&src3.join("CHANGELOG"), b"3: email is gone\n", 0o644);
    let c3 = forge::commit(root, "acme/widgets", &src3, "main", "Drop email");

    let src_dev = scratch.join("widgets-dev");
    project_tree(&src_dev, "email", 99);
    write_file(&src_dev.join("DEV-ONLY"), b"work in progress\n", 0o644);
    let dev = forge::commit(root, "acme/widgets", &src_dev, "dev", "Work in progress");

    forge::tag(root, "acme/widgets", "v0", &c1, false);
    forge::tag(root, "acme/widgets", "v1", &c2, true);

    let distinct = [&c1, &c2, &c3, &dev];
    for (i, a) in distinct.iter().enumerate() {
        for b in &distinct[i + 1..] {
            assert_ne!(a, b, "the commits must differ");
        }
    }
    Widgets { c1, c2, c3, dev }
}

/// `git archive` extractions of commits, made once each.
struct Extractions<'a> {
    root: &'a Path,
    scratch: PathBuf,
    done: HashMap<String, PathBuf>,
}

impl<'a> Extractions<'a> {
    fn new(root: &'a Path, scratch: PathBuf) -> Extractions<'a> {
        mkdir(&scratch);
        Extractions {
            root,
            scratch,
            done: HashMap::new(),
        }
    }

    fn of(&mut self, owner_repo: &str, rev: &str) -> PathBuf {
        let key = format!("{owner_repo}@{rev}");
        if let Some(dir) = self.done.get(&key) {
            return dir.clone();
        }
        let dir = self.scratch.join(key.replace('/', "_"));
        forge::git_archive_extract(self.root, owner_repo, rev, &dir);
        self.done.insert(key, dir.clone());
        dir
    }
}

/// `tar czf ARCHIVE -C DIR MEMBERS…` with GNU tar.
fn tar_czf(archive: &Path, dir: &Path, members: &[&str]) {
    let mut cmd = Command::new("tar");
    cmd.arg("czf").arg(archive).arg("-C").arg(dir).args(members);
    run_ok(&mut cmd);
}

/// Runs a Python program (`python3 -c`) with arguments; it must succeed.
fn python(program: &str, args: &[&Path]) -> Output {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(program).args(args);
    run_ok(&mut cmd)
}

// ---------------------------------------------------------------------------------------------
// 1. github islands from real repositories
// ---------------------------------------------------------------------------------------------

/// Every way of naming a commit resolves to the right one, and the stored tree is exactly what
/// `git archive` makes of it, with Nix's narHash and cab's tree hash.
#[test]
fn github_islands_match_git_archive_and_nix() {
    let w = World::new("fetch-github");
    let widgets = build_widgets(&w.root, &w.join_scratch());
    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();

    let cases: Vec<(String, Option<&str>, &str)> = vec![
        ("<github:acme/widgets>".into(), None, "HEAD"),
        ("<github:acme/widgets:{ ref = \"main\" }>".into(), Some("main"), "main"),
        ("<github:acme/widgets:{ ref = \"dev\" }>".into(), Some("dev"), "dev"),
        ("<github:acme/widgets:{ ref = \"v0\" }>".into(), Some("v0"), "v0"),
        ("<github:acme/widgets:{ ref = \"v1\" }>".into(), Some("v1"), "v1"),
        (
            format!("<github:acme/widgets:{{ rev = \"{}\" }}>", widgets.c1),
            None,
            "c1",
        ),
    ];
    let mut extractions = Extractions::new(&w.root, w.path().join("archives"));
    let mut locked_lines = Vec::new();
    for (island, reference, name) in &cases {
        let expected_rev = match *name {
            "c1" => widgets.c1.clone(),
            other => forge::rev_parse(&w.root, "acme/widgets", other),
        };
        let fetched = fetch_json(&w.store, &url, island);
        assert_eq!(
            fetched.rev.as_deref(),
            Some(expected_rev.as_str()),
            "{island} resolved to the wrong commit"
        );
        assert_eq!(
            fetched.locked,
            github_locked("acme/widgets", *reference, &expected_rev, &fetched.hash, &fetched.nar),
            "the locked literal of {island}"
        );
        let reference_tree = extractions.of("acme/widgets", &expected_rev);
        assert_fetched_tree(&w.store, &fetched, &reference_tree, w.path());
        locked_lines.push(fetched.locked);
    }

    // The refs resolve as git says: main is c3, the lightweight tag is c1, the annotated tag is
    // the commit it tags (not the tag object), dev is dev.
    assert_eq!(forge::rev_parse(&w.root, "acme/widgets", "main"), widgets.c3);
    assert_eq!(forge::rev_parse(&w.root, "acme/widgets", "v0"), widgets.c1);
    assert_eq!(forge::rev_parse(&w.root, "acme/widgets", "v1"), widgets.c2);
    assert_eq!(forge::rev_parse(&w.root, "acme/widgets", "dev"), widgets.dev);
    let tag_object = text(
        &run_ok(
            Command::new("git")
                .arg("--git-dir")
                .arg(w.root.join("acme/widgets.git"))
                .args(["rev-parse", "refs/tags/v1"]),
        )
        .stdout,
    )
    .trim()
    .to_owned();
    assert!(
        !locked_lines[4].contains(&tag_object),
        "the annotated tag must be peeled to its commit, got {}",
        locked_lines[4]
    );

    // All at once, without --json: one locked literal per island, in the order given.
    let islands: Vec<&str> = cases.iter().map(|c| c.0.as_str()).collect();
    let out = fetch_ok(&w.store, &url, &islands);
    let printed: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(
        printed, locked_lines,
        "plain output must be the locked literals, in order"
    );

    // Each locked literal is itself an island that fetches to itself.
    for locked in &locked_lines {
        let again = fetch_json(&w.store, &url, locked);
        assert_eq!(&again.locked, locked, "a locked literal must lock to itself");
    }

    assert_eq!(store_ls(&w.store).len(), 4, "four distinct commits, four trees");
    store_verify(&w.store);
    assert_no_staging_left(&w.store);
}

/// With the forge answering archive URLs by a redirect to a codeload-like path on the same
/// host (as github.com does), the result is the same.
#[test]
fn github_islands_through_archive_redirect() {
    let w = World::new("fetch-redirect");
    let widgets = build_widgets(&w.root, &w.join_scratch());
    let forge = Forge::start(&w.root, &["--archive-redirect"]);
    let url = forge.url();
    let mut extractions = Extractions::new(&w.root, w.path().join("archives"));
    for (island, rev) in [
        ("<github:acme/widgets:{ ref = \"v1\" }>".to_owned(), &widgets.c2),
        ("<github:acme/widgets>".to_owned(), &widgets.c3),
        (
            format!("<github:acme/widgets:{{ rev = \"{}\" }}>", widgets.dev),
            &widgets.dev,
        ),
    ] {
        let fetched = fetch_json(&w.store, &url, &island);
        assert_eq!(fetched.rev.as_deref(), Some(rev.as_str()), "{island}");
        let reference_tree = extractions.of("acme/widgets", rev);
        assert_fetched_tree(&w.store, &fetched, &reference_tree, w.path());
    }
    let redirects: Vec<_> = forge
        .requests_matching("/archive/", 3)
        .into_iter()
        .filter(|r| r.status == 302)
        .collect();
    assert_eq!(
        redirects.len(),
        3,
        "each archive request must get the redirect: {:?}",
        forge.requests()
    );
    let followed: Vec<_> = forge
        .requests_matching("/codeload/", 3)
        .into_iter()
        .filter(|r| r.status == 200 && r.body_complete)
        .collect();
    assert_eq!(
        followed.len(),
        3,
        "each redirect must be followed: {:?}",
        forge.requests()
    );
    store_verify(&w.store);
}

/// The edge-case trees (symlinks of every kind, names that are not UTF-8, 255-byte names,
/// byte-order sorting, odd permission bits) survive `git archive` → fetcher → store.
#[test]
fn github_and_tarball_edge_case_trees() {
    let w = World::new("fetch-edge");
    let src = w.path().join("edge-src/edge-1");
    mkdir(&src);
    edge::symlinks(&src.join("symlinks"));
    edge::non_utf8(&src.join("non-utf8"));
    edge::long_names(&src.join("long-names"));
    edge::sort_order(&src.join("sort-order"));
    edge::exec_bits(&src.join("exec-bits"));
    edge::deep(&src.join("deep"), 40);
    let rev = forge::commit(&w.root, "acme/edge", &src, "main", "Edge cases");
    tar_czf(&w.files().join("edge.tar.gz"), &w.path().join("edge-src"), &["edge-1"]);
    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();

    let fetched = fetch_json(&w.store, &url, "<github:acme/edge>");
    assert_eq!(fetched.rev.as_deref(), Some(rev.as_str()));
    let mut extractions = Extractions::new(&w.root, w.path().join("archives"));
    let reference_tree = extractions.of("acme/edge", &rev);
    assert_fetched_tree(&w.store, &fetched, &reference_tree, w.path());

    let island = format!("<tarball:{url}/files/edge.tar.gz>");
    let fetched = fetch_json(&w.store, &url, &island);
    assert_eq!(fetched.rev, None, "a tarball has no rev");
    assert_fetched_tree(&w.store, &fetched, &src, w.path());
    store_verify(&w.store);
}

/// Less common ways to name a commit: a default branch that is not `main`, a branch with a
/// slash, a tag of a tag; and subpaths (a directory, a file, a symlink as the island's root).
#[test]
fn github_ref_forms_and_subpaths() {
    let w = World::new("fetch-refs");
    let scratch = w.join_scratch();
    let src = scratch.join("tools");
    project_tree(&src, "json", 1);
    // The first branch made becomes HEAD: the default branch is `trunk`.
    let trunk = forge::commit(&w.root, "acme/tools", &src, "trunk", "Import");
    write_file(&src.join("FEATURE"), b"x\n", 0o644);
    let feature = forge::commit(&w.root, "acme/tools", &src, "feature/x", "Feature");
    write_file(
        &src.join("MAIN"),
        b"a branch called main that is not the default\n",
        0o644,
    );
    forge::commit(&w.root, "acme/tools", &src, "main", "Main");
    forge::tag(&w.root, "acme/tools", "v1", &trunk, true);
    // v2 is an annotated tag of the annotated tag v1.
    let gitdir = w.root.join("acme/tools.git");
    run_ok(
        Command::new("git")
            .arg("--git-dir")
            .arg(&gitdir)
            .args([
                "-c",
                "advice.nestedTag=false",
                "-c",
                "user.name=T",
                "-c",
                "user.email=t@example.invalid",
            ])
            .args(["tag", "-a", "-m", "tag of a tag", "v2", "refs/tags/v1"]),
    );
    // A branch with the same name as a tag: a short name means the branch (the fetcher's
    // documented rule, as with `git clone --branch`; `git rev-parse` would prefer the tag);
    // the full names pick either.
    run_ok(
        Command::new("git")
            .arg("--git-dir")
            .arg(&gitdir)
            .args(["branch", "v1", "refs/heads/feature/x"]),
    );
    run_ok(
        Command::new("git")
            .arg("--git-dir")
            .arg(&gitdir)
            .arg("update-server-info"),
    );
    // An empty repository.
    run_ok(
        Command::new("git")
            .args(["init", "-q", "--bare"])
            .arg(w.root.join("acme/empty.git")),
    );

    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();
    let mut extractions = Extractions::new(&w.root, w.path().join("archives"));
    for (island, rev) in [
        ("<github:acme/tools>", &trunk),
        ("<github:acme/tools:{ ref = \"feature/x\" }>", &feature),
        ("<github:acme/tools:{ ref = \"v2\" }>", &trunk),
        ("<github:acme/tools:{ ref = \"v1\" }>", &feature),
        ("<github:acme/tools:{ ref = \"refs/heads/v1\" }>", &feature),
        ("<github:acme/tools:{ ref = \"refs/tags/v1\" }>", &trunk),
    ] {
        let fetched = fetch_json(&w.store, &url, island);
        assert_eq!(fetched.rev.as_deref(), Some(rev.as_str()), "{island}");
        let reference_tree = extractions.of("acme/tools", rev);
        assert_fetched_tree(&w.store, &fetched, &reference_tree, w.path());
    }

    // Subpaths: the island is that subtree, and its hashes cover only the subtree.
    let whole = extractions.of("acme/tools", &trunk);
    for sub in ["/json", "/bin", "/bin/widget", "/README.md", "/init-link", "/abs-link"] {
        let island = format!("<github:acme/tools::{sub}>");
        let fetched = fetch_json(&w.store, &url, &island);
        assert_eq!(fetched.rev.as_deref(), Some(trunk.as_str()), "{island}");
        assert_eq!(
            fetched.locked,
            format!(
                "<github:acme/tools:{{ rev = \"{trunk}\", hash = \"{}\", narHash = \"{}\" }}:{sub}>",
                fetched.hash, fetched.nar
            )
        );
        assert_fetched_tree(&w.store, &fetched, &whole.join(&sub[1..]), w.path());
        let again = fetch_json(&w.store, &url, &fetched.locked);
        assert_eq!(
            again.locked, fetched.locked,
            "a locked subpath literal must lock to itself"
        );
    }
    let island = "<github:acme/tools::/no/such/dir>";
    let stderr = fetch_err(&w.store, &url, &[island]);
    assert!(stderr.contains(island) && stderr.contains("/no/such/dir"), "{stderr}");

    let island = "<github:acme/empty>";
    let stderr = fetch_err(&w.store, &url, &[island]);
    assert!(stderr.contains(island), "{stderr}");
    assert!(
        stderr.contains("empty"),
        "an empty repository must be named as such: {stderr}"
    );
    store_verify(&w.store);
    assert_no_staging_left(&w.store);
}

/// `<git:URL>` islands (a git pack over smart HTTP) give the same trees as `git archive`.
#[test]
fn git_islands_match_git_archive() {
    let w = World::new("fetch-git");
    let widgets = build_widgets(&w.root, &w.join_scratch());
    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();
    let repo = format!("{url}/acme/widgets.git");
    let mut extractions = Extractions::new(&w.root, w.path().join("archives"));
    for (island, reference, rev) in [
        (format!("<git:{repo}>"), None, &widgets.c3),
        (format!("<git:{repo}:{{ ref = \"v1\" }}>"), Some("v1"), &widgets.c2),
        (format!("<git:{repo}:{{ ref = \"dev\" }}>"), Some("dev"), &widgets.dev),
        (
            format!("<git:{repo}:{{ rev = \"{}\" }}>", widgets.c1),
            None,
            &widgets.c1,
        ),
    ] {
        let fetched = fetch_json(&w.store, NO_GITHUB, &island);
        assert_eq!(fetched.rev.as_deref(), Some(rev.as_str()), "{island}");
        let reference = reference.map(|r| format!("ref = \"{r}\", ")).unwrap_or_default();
        assert_eq!(
            fetched.locked,
            format!(
                "<git:{repo}:{{ {reference}rev = \"{rev}\", hash = \"{}\", narHash = \"{}\" }}>",
                fetched.hash, fetched.nar
            )
        );
        let reference_tree = extractions.of("acme/widgets", rev);
        assert_fetched_tree(&w.store, &fetched, &reference_tree, w.path());
    }
    store_verify(&w.store);
    assert_no_staging_left(&w.store);
}

/// A submodule (a gitlink) is an empty directory in `git archive`'s output, and so in the
/// fetched tree, through github and git islands alike.
#[test]
fn submodules_are_empty_directories() {
    let w = World::new("fetch-submodule");
    let src = w.path().join("src");
    project_tree(&src, "json", 1);
    let inner = src.join("vendor/lib");
    write_file(&inner.join("lib.txt"), b"inside the submodule\n", 0o644);
    let git = |args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(&inner)
            .args(["-c", "user.name=T", "-c", "user.email=t@example.invalid"]);
        cmd.args(args).env("GIT_CONFIG_GLOBAL", "/dev/null");
        run_ok(&mut cmd);
    };
    git(&["init", "-q"]);
    git(&["add", "lib.txt"]);
    git(&["commit", "-q", "-m", "inner"]);
    let rev = forge::commit(&w.root, "acme/super", &src, "main", "With a submodule");
    let tree = text(
        &run_ok(
            Command::new("git")
                .arg("--git-dir")
                .arg(w.root.join("acme/super.git"))
                .args(["ls-tree", "-r", "main", "vendor"]),
        )
        .stdout,
    );
    assert!(tree.starts_with("160000 commit"), "expected a gitlink, got {tree:?}");

    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();
    let extracted = w.path().join("extracted");
    forge::git_archive_extract(&w.root, "acme/super", &rev, &extracted);
    assert!(fs::read_dir(extracted.join("vendor/lib")).unwrap().next().is_none());
    for island in ["<github:acme/super>".to_owned(), format!("<git:{url}/acme/super.git>")] {
        let fetched = fetch_json(&w.store, &url, &island);
        assert_eq!(fetched.rev.as_deref(), Some(rev.as_str()));
        assert_fetched_tree(&w.store, &fetched, &extracted, w.path());
    }
    store_verify(&w.store);
}

// ---------------------------------------------------------------------------------------------
// 2. tarball islands
// ---------------------------------------------------------------------------------------------

/// argv: TAR DIR. Writes DIR/multi-member.tar.gz (TAR's two halves as two gzip members) and
/// DIR/header-fields.tar.gz (one member whose header carries every optional field).
const GZIP_VARIANTS: &str = r##"
import gzip, os, struct, sys, zlib

raw = open(sys.argv[1], "rb").read()
out = sys.argv[2]
half = len(raw) // 2
with open(os.path.join(out, "multi-member.tar.gz"), "wb") as f:
    f.write(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))

deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
body = deflate.compress(raw) + deflate.flush()
FHCRC, FEXTRA, FNAME, FCOMMENT = 0x02, 0x04, 0x08, 0x10
head = b"\x1f\x8b\x08" + bytes([FHCRC | FEXTRA | FNAME | FCOMMENT]) + b"\x00\x00\x00\x00\x00\x03"
extra = b"Ap\x04\x00cab!"
head += struct.pack("<H", len(extra)) + extra + b"widgets-1.0.tar\x00" + b"a comment\x00"
head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
with open(os.path.join(out, "header-fields.tar.gz"), "wb") as f:
    f.write(head + body + struct.pack("<II", zlib.crc32(raw), len(raw) & 0xFFFFFFFF))
"##;

/// Tarballs made by GNU tar from a real tree: a single top-level entry becomes the root (a
/// directory, or a lone file); anything else is the root as it is.
#[test]
fn tarball_islands_match_the_tree_and_nix() {
    let w = World::new("fetch-tarball");
    let parent = w.path().join("tree");
    let top = parent.join("widgets-1.0");
    project_tree(&top, "email", 1);
    edge::exec_bits(&top.join("modes"));
    // A single top-level directory that itself holds a single directory: only one is stripped.
    let outer = w.path().join("nest/outer");
    copy_tree(&python_package("json"), &outer.join("inner"));
    let lone_file_dir = w.path().join("lone");
    write_file(&lone_file_dir.join("README"), b"just a file\n", 0o644);

    let files = w.files();
    tar_czf(&files.join("single.tar.gz"), &parent, &["widgets-1.0"]);
    let mut top_entries: Vec<String> = fs::read_dir(&top)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top_entries.sort();
    let top_refs: Vec<&str> = top_entries.iter().map(String::as_str).collect();
    tar_czf(&files.join("flat.tar.gz"), &top, &top_refs);
    tar_czf(&files.join("dot.tar.gz"), &top, &["."]);
    tar_czf(&files.join("nested.tar.gz"), &w.path().join("nest"), &["outer"]);
    tar_czf(&files.join("lone.tar.gz"), &lone_file_dir, &["README"]);
    // The same tar stream as single.tar.gz, gzipped differently: as two gzip members one
    // after the other (as `cat a.gz b.gz` or parallel compressors make), and with every
    // optional gzip header field (FEXTRA, FNAME, FCOMMENT, FHCRC).
    let plain_tar = w.path().join("single.tar");
    run_ok(
        Command::new("tar")
            .arg("cf")
            .arg(&plain_tar)
            .arg("-C")
            .arg(&parent)
            .arg("widgets-1.0"),
    );
    python(GZIP_VARIANTS, &[&plain_tar, &files]);
    // What `git archive` makes (with its pax_global_header), served as a plain file.
    forge::commit(&w.root, "acme/archived", &top, "main", "Import");
    run_ok(
        Command::new("git")
            .arg("--git-dir")
            .arg(w.root.join("acme/archived.git"))
            .args(["archive", "--format=tar.gz", "--prefix=archived-1.0/", "-o"])
            .arg(files.join("git-archive.tar.gz"))
            .arg("main"),
    );

    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();
    for (name, expected) in [
        ("single", top.clone()),
        ("flat", top.clone()),
        ("dot", top.clone()),
        ("nested", outer.clone()),
        // A lone file is the tree itself, as Nix has it.
        ("lone", lone_file_dir.join("README")),
        ("multi-member", top.clone()),
        ("header-fields", top.clone()),
        ("git-archive", top.clone()),
    ] {
        let island = format!("<tarball:{url}/files/{name}.tar.gz>");
        let fetched = fetch_json(&w.store, &url, &island);
        assert_eq!(fetched.rev, None, "a tarball has no rev");
        assert_eq!(
            fetched.locked,
            format!(
                "<tarball:{url}/files/{name}.tar.gz:{{ hash = \"{}\", narHash = \"{}\" }}>",
                fetched.hash, fetched.nar
            )
        );
        assert_fetched_tree(&w.store, &fetched, &expected, w.path());
    }
    // single, flat, dot, the gzip variants and git-archive hold the same tree.
    assert_eq!(store_ls(&w.store).len(), 3);
    store_verify(&w.store);
    assert_no_staging_left(&w.store);
}

/// argv: DIR. Valid tarballs that are unusual: directory members after their contents or
/// twice, PAX headers (long names, long link targets, a newline and a backslash in names),
/// empty directories, and a single empty top-level directory.
const UNUSUAL_TARBALLS: &str = r##"
import gzip, io, os, sys, tarfile

out = sys.argv[1]

def write(name, members, fmt=tarfile.GNU_FORMAT):
    with gzip.open(os.path.join(out, name + ".tar.gz"), "wb") as gz:
        with tarfile.open(fileobj=gz, mode="w", format=fmt) as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)

def f(name, data=b"x\n", mode=0o644):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1700000000
    return info, data

def d(name):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
    return info, None

def sym(name, target):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 1700000000
    return info, None

write("dir-after-contents", [f("top/a/file"), f("top/b", b"b\n", 0o755), d("top/a/"), d("top/")])
write("dir-twice", [d("top/"), d("top/a/"), f("top/a/file"), d("top/a/"), d("top/")])
long_name = "top/" + "/".join(["d" * 60] * 5) + "/file-" + "\u00e9" * 40
write("pax", [d("top/"), f(long_name, b"deep\n"), sym("top/long-link", "t" * 300), f("top/new\nline"),
              f("top/back\\slash", b"\\\n", 0o755), sym("top/to-long", long_name[4:])], fmt=tarfile.PAX_FORMAT)
write("empty-dirs", [d("top/"), d("top/e1/"), d("top/e2/"), d("top/e2/e3/"), f("top/x")])
write("empty-top", [d("top/")])
"##;

/// Valid tarballs of unusual shapes (made by Python's tarfile and by GNU tar) give exactly the
/// tree GNU tar extracts from them.
#[test]
fn unusual_but_valid_tarballs_match_gnu_tar() {
    let w = World::new("fetch-unusual");
    let files = w.files();
    python(UNUSUAL_TARBALLS, &[&files]);
    // GNU tar: owners and dates that need base-256 numbers, and empty directories.
    let tree = w.path().join("gnu/top");
    project_tree(&tree, "json", 1);
    edge::empties(&tree.join("empties"));
    run_ok(
        Command::new("touch")
            .args(["-h", "-d", "1850-01-01"])
            .arg(tree.join("README.md")),
    );
    run_ok(
        Command::new("tar")
            .args([
                "--format=gnu",
                "--owner=big:3000000000",
                "--group=big:3000000000",
                "-czf",
            ])
            .arg(files.join("base-256.tar.gz"))
            .arg("-C")
            .arg(w.path().join("gnu"))
            .arg("top"),
    );

    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();
    for name in [
        "dir-after-contents",
        "dir-twice",
        "pax",
        "empty-dirs",
        "empty-top",
        "base-256",
    ] {
        let extracted = w.path().join(format!("extracted-{name}"));
        mkdir(&extracted);
        run_ok(
            Command::new("tar")
                .arg("xzf")
                .arg(files.join(format!("{name}.tar.gz")))
                .arg("-C")
                .arg(&extracted),
        );
        let island = format!("<tarball:{url}/files/{name}.tar.gz>");
        let fetched = fetch_json(&w.store, &url, &island);
        assert_fetched_tree(&w.store, &fetched, &extracted.join("top"), w.path());
    }
    store_verify(&w.store);
    assert_no_staging_left(&w.store);
}

/// Sparse members (GNU tar -S): either unpacked exactly or refused with an error that says so;
/// never stored with the wrong contents.
#[test]
fn sparse_tar_members_are_exact_or_refused() {
    let w = World::new("fetch-sparse");
    let top = w.path().join("sparse/top");
    mkdir(&top);
    edge::sparse_file(&top.join("holes.bin"), 3 << 20);
    write_file(&top.join("small"), b"small\n", 0o644);
    let files = w.files();
    let mut variants = Vec::new();
    for (name, flags) in [
        ("gnu", &["--format=gnu"][..]),
        ("pax-1.0", &["--format=posix", "--sparse-version=1.0"][..]),
        ("pax-0.1", &["--format=posix", "--sparse-version=0.1"][..]),
    ] {
        let archive = files.join(format!("sparse-{name}.tar.gz"));
        run_ok(
            Command::new("tar")
                .arg("-S")
                .args(flags)
                .arg("-czf")
                .arg(&archive)
                .arg("-C")
                .arg(w.path().join("sparse"))
                .arg("top"),
        );
        variants.push(name);
    }
    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();
    let before = store_ls(&w.store);
    for name in variants {
        let island = format!("<tarball:{url}/files/sparse-{name}.tar.gz>");
        let out = fetch(&w.store, &url, &["--json", &island]);
        if out.status.success() {
            let fetched = parse_fetched(text(&out.stdout).trim());
            assert_fetched_tree(&w.store, &fetched, &top, w.path());
        } else {
            let stderr = text(&out.stderr);
            assert!(
                exited_nonzero(out.status) && !stderr.contains("panicked at"),
                "{stderr}"
            );
            assert!(stderr.contains(&island), "{stderr}");
            assert!(
                stderr.to_lowercase().contains("sparse") || stderr.contains("`S`"),
                "a refused sparse member must be named as such: {stderr}"
            );
            assert_eq!(store_ls(&w.store), before);
        }
    }
    store_verify(&w.store);
}

// ---------------------------------------------------------------------------------------------
// 3. early stop
// ---------------------------------------------------------------------------------------------

/// When ref discovery names a commit whose tree is already stored, the fetch stops before the
/// archive is downloaded: through a forge that would take ~30 s to send it, it takes moments
/// and the forge sees the archive never asked for, or abandoned early.
#[test]
fn early_stop_when_the_commit_is_stored() {
    let w = World::new("fetch-early-stop");
    let src = w.path().join("big-src");
    write_file(&src.join("blob.bin"), &pseudo_random(30 << 20, 7), 0o644);
    write_file(&src.join("README"), b"a big incompressible file\n", 0o644);
    copy_tree(&python_package("json"), &src.join("docs"));
    let rev1 = forge::commit(&w.root, "acme/big", &src, "main", "Big");

    let fast = Forge::start(&w.root, &[]);
    let pinned = format!("<github:acme/big:{{ rev = \"{rev1}\" }}>");
    let first = fetch_json(&w.store, &fast.url(), &pinned);
    assert_eq!(first.rev.as_deref(), Some(rev1.as_str()));
    let archives = fast.requests_matching("/archive/", 1);
    let archive_size = archives
        .iter()
        .find(|r| r.status == 200 && r.body_complete)
        .unwrap_or_else(|| panic!("the first fetch must download the archive: {archives:?}"))
        .bytes_sent;
    assert!(archive_size > 30 << 20, "the archive is {archive_size} bytes");
    let extracted = w.path().join("rev1");
    forge::git_archive_extract(&w.root, "acme/big", &rev1, &extracted);
    assert_eq!(cab_hash(&extracted, None).tree, first.hash);

    // The same root served at 1 MB/s for archives: a real download would take ~30 s.
    let slow = Forge::start(&w.root, &["--throttle", "1000000", "--throttle-path-regex", "archive"]);
    let started = Instant::now();
    let second = fetch_json(&w.store, &slow.url(), "<github:acme/big>");
    let took = started.elapsed();
    assert_eq!(second.rev.as_deref(), Some(rev1.as_str()));
    assert_eq!(second.hash, first.hash);
    assert_eq!(second.nar, first.nar);
    assert!(took < Duration::from_secs(10), "the early stop took {took:?}");
    let requests = slow.settled_requests(Duration::from_millis(700), Duration::from_secs(10));
    // One round trip: the branch resolved with `ls-refs`, and no archive request at all.
    let asked: Vec<(&str, &str)> = requests.iter().map(|r| (r.method.as_str(), r.path.as_str())).collect();
    assert_eq!(
        asked,
        [("POST", "/acme/big.git/git-upload-pack")],
        "an unchanged branch must cost exactly one request: {requests:?} (archive is {archive_size} bytes)"
    );

    // A subpath of the same commit stops early too (the index holds the whole tree).
    let started = Instant::now();
    let docs = fetch_json(&w.store, &slow.url(), "<github:acme/big::/docs>");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(docs.rev.as_deref(), Some(rev1.as_str()));
    assert_eq!(docs.hash, cab_hash(&extracted.join("docs"), None).tree);
    let requests = slow.settled_requests(Duration::from_millis(700), Duration::from_secs(10));
    for r in requests.iter().filter(|r| r.path.contains("/archive/")) {
        assert!(!r.body_complete && r.bytes_sent * 100 < archive_size, "{r:?}");
    }

    // A new commit on the branch: a new rev, a new tree, downloaded for real.
    write_file(&src.join("NEWS"), b"second commit\n", 0o644);
    let rev2 = forge::commit(&w.root, "acme/big", &src, "main", "News");
    let third = fetch_json(&w.store, &fast.url(), "<github:acme/big>");
    assert_eq!(third.rev.as_deref(), Some(rev2.as_str()));
    assert_ne!(third.hash, first.hash);
    let extracted2 = w.path().join("rev2");
    forge::git_archive_extract(&w.root, "acme/big", &rev2, &extracted2);
    assert_eq!(cab_hash(&extracted2, None).tree, third.hash);
    let before = store_ls(&w.store);
    assert_eq!(before.len(), 3, "two commits and a subtree");

    // A fetch killed in the middle of its download publishes nothing, and what it leaves in
    // the staging area is cleaned up by the next run.
    write_file(&src.join("NEWS"), b"third commit\n", 0o644);
    let rev3 = forge::commit(&w.root, "acme/big", &src, "main", "More news");
    let mut child = cab_in(&w.store, &slow.url())
        .args(["fetch", "<github:acme/big>"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cab fetch");
    thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the throttled fetch ended too soon"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let left = fs::read_dir(w.store.join("tmp")).unwrap().count();
    assert!(
        left > 0,
        "the killed fetch was expected to leave its staging directory behind"
    );
    assert_eq!(store_ls(&w.store), before, "a killed fetch must publish nothing");
    store_verify(&w.store);
    let fourth = fetch_json(&w.store, &fast.url(), "<github:acme/big>");
    assert_eq!(fourth.rev.as_deref(), Some(rev3.as_str()));
    assert_eq!(store_ls(&w.store).len(), 4);
    store_verify(&w.store);
    assert_no_staging_left(&w.store);
}

// ---------------------------------------------------------------------------------------------
// 4. no network for stored pins
// ---------------------------------------------------------------------------------------------

#[test]
fn stored_pins_need_no_network() {
    let w = World::new("fetch-offline");
    let src = w.path().join("src/pkg-2.0");
    project_tree(&src, "json", 1);
    forge::commit(&w.root, "acme/widgets", &src, "main", "Import");
    tar_czf(&w.files().join("pkg.tar.gz"), &w.path().join("src"), &["pkg-2.0"]);

    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();
    let tarball = format!("<tarball:{url}/files/pkg.tar.gz>");
    let locked: Vec<String> = [
        "<github:acme/widgets>",
        "<github:acme/widgets:{ ref = \"main\" }>",
        tarball.as_str(),
    ]
    .iter()
    .map(|island| fetch_json(&w.store, &url, island).locked)
    .collect();

    // While the forge still runs: the locked literals cost it no request at all.
    let served = forge
        .settled_requests(Duration::from_millis(300), Duration::from_secs(5))
        .len();
    let out = fetch_ok(&w.store, &url, &locked.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(text(&out.stdout).lines().collect::<Vec<_>>(), locked);
    let now_served = forge.settled_requests(Duration::from_millis(300), Duration::from_secs(5));
    assert_eq!(
        now_served.len(),
        served,
        "stored pins must not touch the network: {:?}",
        &now_served[served..]
    );

    // And with the forge gone.
    drop(forge);

    for literal in &locked {
        let out = fetch_ok(&w.store, &url, &[literal]);
        assert_eq!(
            text(&out.stdout).trim_end(),
            literal,
            "a stored pin must fetch to itself without the network"
        );
    }
    store_verify(&w.store);
}

/// An island pinned by its hash alone still locks to its commit, however often it is fetched:
/// a lock entry without the `rev` would be refused the next time the lock is read.
#[test]
fn hash_only_pins_still_lock_their_commit() {
    let w = World::new("fetch-hash-only");
    let src = w.path().join("src");
    project_tree(&src, "json", 1);
    let rev = forge::commit(&w.root, "acme/pinned", &src, "main", "Import");
    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();
    let git_url = format!("{url}/acme/pinned.git");
    for island in ["<github:acme/pinned>".to_owned(), format!("<git:{git_url}>")] {
        let first = fetch_json(&w.store, &url, &island);
        let by_hash = island.replace('>', &format!(":{{ hash = \"{}\" }}>", first.hash));
        for round in 0..2 {
            let again = fetch_json(&w.store, &url, &by_hash);
            assert_eq!(again.rev.as_deref(), Some(rev.as_str()), "{by_hash}, round {round}");
            assert!(again.locked.contains(&rev), "{}", again.locked);
        }
    }
}

/// A lock must reproduce its tree on a machine that has never seen it, whatever happened to
/// the ref since: a locked literal whose branch moved on, or was deleted, fetches its `rev`.
#[test]
fn locked_literals_survive_moved_and_deleted_refs() {
    let w = World::new("fetch-moved-ref");
    let src = w.path().join("src");
    project_tree(&src, "json", 1);
    let first = forge::commit(&w.root, "acme/moving", &src, "main", "First");
    write_file(&src.join("TOPIC"), b"on a branch that will be deleted\n", 0o644);
    let topic = forge::commit(&w.root, "acme/moving", &src, "topic", "Topic");
    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();
    let git_url = format!("{url}/acme/moving.git");

    let islands = [
        ("<github:acme/moving:{ ref = \"main\" }>".to_owned(), &first),
        (format!("<git:{git_url}:{{ ref = \"main\" }}>"), &first),
        ("<github:acme/moving:{ ref = \"topic\" }>".to_owned(), &topic),
        (format!("<git:{git_url}:{{ ref = \"topic\" }}>"), &topic),
    ];
    let locked: Vec<Fetched> = islands
        .iter()
        .map(|(island, rev)| {
            let fetched = fetch_json(&w.store, &url, island);
            assert_eq!(fetched.rev.as_deref(), Some(rev.as_str()), "{island}");
            fetched
        })
        .collect();

    // main moves on; topic is deleted.
    write_file(&src.join("TOPIC"), b"now on main\n", 0o644);
    fs::remove_file(src.join("README.md")).unwrap();
    let moved = forge::commit(&w.root, "acme/moving", &src, "main", "Moved on");
    let gitdir = w.root.join("acme/moving.git");
    run_ok(
        Command::new("git")
            .arg("--git-dir")
            .arg(&gitdir)
            .args(["update-ref", "-d", "refs/heads/topic"]),
    );
    run_ok(
        Command::new("git")
            .arg("--git-dir")
            .arg(&gitdir)
            .arg("update-server-info"),
    );
    assert_ne!(moved, first);

    let mut extractions = Extractions::new(&w.root, w.path().join("archives"));
    for (i, (fetched, (_, rev))) in locked.iter().zip(&islands).enumerate() {
        let fresh = w.path().join(format!("fresh-store-{i}"));
        let again = fetch_json(&fresh, &url, &fetched.locked);
        assert_eq!(again.locked, fetched.locked, "a locked literal must fetch to itself");
        assert_fetched_tree(&fresh, &again, &extractions.of("acme/moving", rev), w.path());
    }
    // The unlocked islands follow the refs: main to the new commit, topic nowhere.
    let now = fetch_json(&w.store, &url, &islands[0].0);
    assert_eq!(now.rev.as_deref(), Some(moved.as_str()));
    let stderr = fetch_err(&w.store, &url, &[&islands[2].0]);
    assert!(stderr.contains("topic"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// 5. expected hash mismatch
// ---------------------------------------------------------------------------------------------

/// A well-formed hash that is not `hash`'s: its last hex digit changed.
fn other_hash(hash: &str) -> String {
    let last = hash.chars().last().unwrap();
    let replacement = if last == '0' { '1' } else { '0' };
    format!("{}{replacement}", &hash[..hash.len() - 1])
}

/// A well-formed SRI SHA-256 that is not `nar`'s: its first base64 digit changed.
fn other_nar(nar: &str) -> String {
    let body = nar.strip_prefix("sha256-").unwrap();
    let first = body.chars().next().unwrap();
    let replacement = if first == 'A' { 'B' } else { 'A' };
    format!("sha256-{replacement}{}", &body[1..])
}

#[test]
fn expected_hash_mismatch_fails_and_publishes_nothing() {
    let w = World::new("fetch-mismatch");
    let src = w.path().join("src/pkg");
    project_tree(&src, "json", 1);
    forge::commit(&w.root, "acme/widgets", &src, "main", "Import");
    tar_czf(&w.files().join("pkg.tar.gz"), &w.path().join("src"), &["pkg"]);
    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();

    let github = fetch_json(&w.store, &url, "<github:acme/widgets>");
    let tarball = fetch_json(&w.store, &url, &format!("<tarball:{url}/files/pkg.tar.gz>"));
    let before = store_ls(&w.store);
    assert_eq!(before.len(), 1, "the repository and the tarball hold the same tree");

    let fresh = w.path().join("fresh-store");
    for (fetched, key, good, bad) in [
        (&github, "hash", github.hash.clone(), other_hash(&github.hash)),
        (&github, "narHash", github.nar.clone(), other_nar(&github.nar)),
        (&tarball, "hash", tarball.hash.clone(), other_hash(&tarball.hash)),
    ] {
        let wrong = fetched.locked.replace(&good, &bad);
        assert_ne!(wrong, fetched.locked);
        // Against the store that holds the tree, and against an empty one (a real download).
        for store in [&w.store, &fresh] {
            let stderr = fetch_err(store, &url, &[&wrong]);
            assert!(stderr.contains(&wrong), "the error must name the island: {stderr}");
            assert!(
                stderr.contains(&format!("{key} = \"{bad}\"")),
                "the error must show the wanted {key} {bad}: {stderr}"
            );
            assert!(
                stderr.contains(&format!("{key} = \"{good}\"")),
                "the error must show the got {key} {good}: {stderr}"
            );
            assert!(stderr.contains("wanted") && stderr.contains("got"), "{stderr}");
        }
        assert_eq!(store_ls(&w.store), before, "a mismatch must publish nothing");
        assert!(store_ls(&fresh).is_empty(), "a mismatch must publish nothing");
    }
    store_verify(&w.store);
    store_verify(&fresh);
    assert_no_staging_left(&w.store);
    assert_no_staging_left(&fresh);
}

// ---------------------------------------------------------------------------------------------
// 6. unknown refs, repositories and hosts
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_refs_repos_and_hosts_are_clear_errors() {
    let w = World::new("fetch-unknown");
    let widgets = build_widgets(&w.root, &w.join_scratch());
    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();

    let island = "<github:acme/widgets:{ ref = \"no-such-branch\" }>";
    let stderr = fetch_err(&w.store, &url, &[island]);
    assert!(stderr.contains(island), "the error must name the island: {stderr}");
    assert!(
        stderr.contains("no-such-branch"),
        "the error must name the ref: {stderr}"
    );
    for existing in ["main", "dev", "v0", "v1"] {
        assert!(
            stderr.contains(existing),
            "the error must list the refs the server has ({existing} missing): {stderr}"
        );
    }

    let island = "<github:acme/missing>";
    let stderr = fetch_err(&w.store, &url, &[island]);
    assert!(stderr.contains(island), "{stderr}");
    assert!(
        stderr.contains("404") || stderr.to_lowercase().contains("not found"),
        "an unknown repository must say not found: {stderr}"
    );

    let absent_rev = "0123456789abcdef0123456789abcdef01234567";
    assert!(!widgets.c1.starts_with("0123456789"));
    let island = format!("<github:acme/widgets:{{ rev = \"{absent_rev}\" }}>");
    let stderr = fetch_err(&w.store, &url, &[&island]);
    assert!(stderr.contains(&island), "{stderr}");

    let island = format!("<tarball:{url}/files/missing.tar.gz>");
    let stderr = fetch_err(&w.store, &url, &[&island]);
    assert!(stderr.contains(&island), "{stderr}");
    assert!(stderr.contains("404"), "a missing file must say 404: {stderr}");

    let island = "<tarball:http://127.0.0.1:1/x.tar.gz>";
    let started = Instant::now();
    let stderr = fetch_err(&w.store, &url, &[island]);
    assert!(stderr.contains(island), "{stderr}");
    assert!(
        stderr.matches("http://127.0.0.1:1/x.tar.gz").count() >= 2,
        "the error must name the URL it could not reach, not only the island: {stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // One bad island among good ones: the good ones are still printed, the exit is non-zero.
    let out = fetch(&w.store, &url, &["<github:acme/widgets>", "<github:acme/missing>"]);
    assert!(exited_nonzero(out.status), "{}", report("cab fetch", &out));
    assert!(
        text(&out.stdout).contains(&widgets.c3),
        "the island that worked must still be printed: {}",
        report("cab fetch", &out)
    );

    assert_eq!(store_ls(&w.store).len(), 1);
    store_verify(&w.store);
    assert_no_staging_left(&w.store);
}

// ---------------------------------------------------------------------------------------------
// 7. hostile tarballs
// ---------------------------------------------------------------------------------------------

/// Writes hostile .tar.gz files into argv[1]; argv[2] is a path outside everything cab may
/// write to. Real archives, made by Python's tarfile and gzip modules.
const HOSTILE_TARBALLS: &str = r##"
import gzip, io, os, struct, sys, tarfile, zlib

files, outside = sys.argv[1], sys.argv[2]

def entry(name, kind=tarfile.REGTYPE, data=None, mode=0o644, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, mode, link, 1700000000
    if data is not None:
        info.size = len(data)
    return info, data

def f(name, data=b"x\n", mode=0o644):
    return entry(name, data=data, mode=mode)

def d(name):
    return entry(name, tarfile.DIRTYPE, mode=0o755)

def sym(name, target):
    return entry(name, tarfile.SYMTYPE, mode=0o777, link=target)

def write(name, members):
    with gzip.open(os.path.join(files, name + ".tar.gz"), "wb") as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)

script = b"#!/bin/sh\necho hi\n"
write("dotdot", [d("top/"), f("top/ok"), f("top/../../evil")])
write("absolute", [d("top/"), f("top/ok"), f(outside + "/abs-evil")])
write("symlink-abs", [d("top/"), sym("top/link", outside), f("top/link/file", b"written through\n")])
write("symlink-rel", [d("top/"), sym("top/up", "../" * 40 + outside.lstrip("/")), f("top/up/file")])
write("hardlink", [d("top/"), f("top/a"), entry("top/b", tarfile.LNKTYPE, link="top/a")])
write("hardlink-out", [d("top/"), f("top/a"), entry("top/c", tarfile.LNKTYPE, link=outside + "/target")])
chardev = entry("top/null", tarfile.CHRTYPE, mode=0o666)
chardev[0].devmajor, chardev[0].devminor = 1, 3
write("chardev", [d("top/"), f("top/a"), chardev])
write("setuid", [d("top/"), f("top/plain"), f("top/suid", script, 0o4755), f("top/sgid", script, 0o2755),
                 f("top/sticky", b"", 0o1644), f("top/all", script, 0o7777)])
write("duplicate", [d("top/"), f("top/a", b"one\n"), f("top/a", b"two\n")])

# 2 GiB of zeros as ~2 MB: one 4 MiB block of zeros compressed with a full flush (which resets
# the compressor, so its bytes can be repeated), written 512 times, inside a valid gzip member.
header = tarfile.TarInfo("top/zeros")
header.size = 2 << 30
head = header.tobuf(format=tarfile.GNU_FORMAT)
block = bytes(4 << 20)
deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
with open(os.path.join(files, "bomb.tar.gz"), "wb") as out:
    out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")
    out.write(deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH))
    compressed = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(head)
    for _ in range(512):
        out.write(compressed)
        crc = zlib.crc32(block, crc)
    tail = bytes(1024)
    out.write(deflate.compress(tail) + deflate.flush())
    crc = zlib.crc32(tail, crc)
    out.write(struct.pack("<II", crc, (len(head) + (2 << 30) + len(tail)) & 0xFFFFFFFF))
"##;

/// Every regular file under `dir` with a setuid, setgid or sticky bit.
fn special_mode_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for file in files_under(dir) {
        let mode = fs::symlink_metadata(&file).unwrap().permissions().mode();
        if mode & 0o7000 != 0 {
            found.push(file);
        }
    }
    found
}

/// Every path under `dir` (not following symlinks) whose name contains `needle`.
fn names_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().contains(needle) {
            found.push(entry.path());
        }
        if entry.file_type().unwrap().is_dir() {
            found.extend(names_containing(&entry.path(), needle));
        }
    }
    found
}

#[test]
fn hostile_tarballs_are_refused() {
    let w = World::new("fetch-hostile");
    let outside = w.path().join("outside");
    python(HOSTILE_TARBALLS, &[&w.files(), &outside]);
    // A real archive, then cut in the middle and corrupted in the middle of the deflate stream.
    let good_parent = w.path().join("good");
    copy_tree(&python_package("email"), &good_parent.join("email"));
    let good = w.files().join("good.tar.gz");
    tar_czf(&good, &good_parent, &["email"]);
    let bytes = fs::read(&good).unwrap();
    fs::write(w.files().join("truncated.tar.gz"), &bytes[..bytes.len() / 2]).unwrap();
    let mut corrupt = bytes.clone();
    let middle = corrupt.len() / 2;
    for b in &mut corrupt[middle..middle + 64] {
        *b ^= 0x5a;
    }
    fs::write(w.files().join("corrupt.tar.gz"), &corrupt).unwrap();

    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();
    // Something stored already, so "unchanged" is not just "empty".
    let good_fetched = fetch_json(&w.store, &url, &format!("<tarball:{url}/files/good.tar.gz>"));
    assert_fetched_tree(&w.store, &good_fetched, &good_parent.join("email"), w.path());
    let before = store_ls(&w.store);

    // (A hard link to an earlier member, `hardlink`, is a copy of it: see below.)
    let cases: [(&str, Option<&str>, &[&str]); 10] = [
        ("dotdot", Some("../evil"), &[]),
        ("absolute", Some("abs-evil"), &[]),
        ("symlink-abs", Some("top/link"), &[]),
        ("symlink-rel", Some("top/up"), &[]),
        ("hardlink-out", Some("top/c"), &[]),
        ("chardev", Some("top/null"), &[]),
        ("duplicate", Some("top/a"), &[]),
        ("truncated", None, &[]),
        ("corrupt", None, &[]),
        ("bomb", Some("top/zeros"), &["--max-unpacked", "64M"]),
    ];
    for (name, member, flags) in cases {
        let island = format!("<tarball:{url}/files/{name}.tar.gz>");
        let mut args = flags.to_vec();
        args.push(&island);
        let started = Instant::now();
        let stderr = fetch_err(&w.store, &url, &args);
        let took = started.elapsed();
        assert!(
            stderr.contains(&island),
            "{name}: the error must name the island: {stderr}"
        );
        if let Some(member) = member {
            assert!(
                stderr.contains(member),
                "{name}: the error must name the member {member}: {stderr}"
            );
        }
        assert!(took < Duration::from_secs(30), "{name}: took {took:?}");
        assert_eq!(store_ls(&w.store), before, "{name}: nothing may be published");
        assert!(
            !outside.exists(),
            "{name}: something was written outside: {}",
            outside.display()
        );
        let found = names_containing(w.path(), "evil");
        assert!(found.is_empty(), "{name}: something was written outside: {found:?}");
        assert_no_staging_left(&w.store);
        store_verify(&w.store);
    }

    // A hard link to an earlier member of the archive is a second copy of it, as Nix unpacks it.
    let island = format!("<tarball:{url}/files/hardlink.tar.gz>");
    let fetched = fetch_json(&w.store, &url, &island);
    let exported = export(&w.store, &fetched.hash, w.path());
    assert_eq!(
        fs::read(exported.join("b")).unwrap(),
        fs::read(exported.join("a")).unwrap()
    );

    // Setuid, setgid and sticky bits are dropped; only "executable" is kept.
    let island = format!("<tarball:{url}/files/setuid.tar.gz>");
    let fetched = fetch_json(&w.store, &url, &island);
    let exported = export(&w.store, &fetched.hash, w.path());
    for (file, executable) in [
        ("suid", true),
        ("sgid", true),
        ("all", true),
        ("sticky", false),
        ("plain", false),
    ] {
        let mode = fs::symlink_metadata(exported.join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o7000, 0, "{file}: special bits survived: {mode:o}");
        assert_eq!(mode & 0o100 != 0, executable, "{file}: executable bit, mode {mode:o}");
    }
    let special = special_mode_files(&w.store);
    assert!(
        special.is_empty(),
        "the store holds files with special bits: {special:?}"
    );
    let reference = w.path().join("setuid-reference");
    write_file(&reference.join("plain"), b"x\n", 0o644);
    write_file(&reference.join("suid"), b"#!/bin/sh\necho hi\n", 0o755);
    write_file(&reference.join("sgid"), b"#!/bin/sh\necho hi\n", 0o755);
    write_file(&reference.join("all"), b"#!/bin/sh\necho hi\n", 0o755);
    write_file(&reference.join("sticky"), b"", 0o644);
    assert_fetched_tree(&w.store, &fetched, &reference, w.path());
    store_verify(&w.store);
}

// ---------------------------------------------------------------------------------------------
// 8. servers that stall or break off
// ---------------------------------------------------------------------------------------------

/// A one-file HTTP server for misbehaving on purpose. argv: MODE FILE LOCATION. It prints its
/// port, then answers every request (one per connection) with a 200 promising FILE's length and
/// sending its first 4 KiB, then: `stall` sleeps forever; `reset` resets the connection;
/// `short` closes it cleanly. `silent` reads the request and never answers; `redirect` answers
/// with a 302 to LOCATION.
const BAD_SERVER: &str = r##"
import socket, struct, sys, threading, time

mode, body, location = sys.argv[1], open(sys.argv[2], "rb").read(), sys.argv[3]
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(16)
print(server.getsockname()[1], flush=True)

def serve(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(4096)
        if not data:
            return
        head += data
    if mode == "silent":
        time.sleep(3600)
    if mode == "redirect":
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                     % location.encode())
        time.sleep(0.2)
        conn.close()
        return
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/gzip\r\nContent-Length: %d\r\n\r\n" % len(body))
    conn.sendall(body[:4096])
    if mode == "stall":
        time.sleep(3600)
    time.sleep(0.2)
    if mode == "reset":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()

while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"##;

/// A running [`BAD_SERVER`], killed when dropped.
struct BadServer {
    child: Child,
    port: u16,
}

impl BadServer {
    fn start(mode: &str, body: &Path, location: &str) -> BadServer {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(BAD_SERVER)
            .arg(mode)
            .arg(body)
            .arg(location)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the test server printed {line:?}"));
        BadServer { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/x.tar.gz", self.port)
    }
}

impl Drop for BadServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn stalled_and_broken_downloads_fail_clearly() {
    let w = World::new("fetch-stall");
    let parent = w.path().join("tree");
    copy_tree(&python_package("json"), &parent.join("json"));
    let body = w.path().join("json.tar.gz");
    tar_czf(&body, &parent, &["json"]);
    assert!(fs::metadata(&body).unwrap().len() > 8192);

    // Headers and a few bytes, then nothing; or no answer at all.
    for (mode, says) in [("stall", "sent nothing"), ("silent", "no response")] {
        let server = BadServer::start(mode, &body, "");
        let island = format!("<tarball:{}>", server.url());
        let started = Instant::now();
        let stderr = fetch_err(&w.store, NO_GITHUB, &["--stall-timeout", "2", &island]);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "{mode}: the stall was noticed after {took:?}"
        );
        assert!(
            took >= Duration::from_secs(2),
            "{mode}: gave up after {took:?}, before the stall timeout"
        );
        assert!(stderr.contains(&island), "{mode}: {stderr}");
        assert!(stderr.contains(says), "{mode}: the error must say {says:?}: {stderr}");
        assert!(
            stderr.contains("2s"),
            "{mode}: the error must say how long it waited: {stderr}"
        );
    }

    // The connection reset, or closed before the promised length.
    for mode in ["reset", "short"] {
        let server = BadServer::start(mode, &body, "");
        let island = format!("<tarball:{}>", server.url());
        let started = Instant::now();
        let stderr = fetch_err(&w.store, NO_GITHUB, &[&island]);
        assert!(started.elapsed() < Duration::from_secs(10), "{mode}");
        assert!(stderr.contains(&island), "{mode}: {stderr}");
        let lower = stderr.to_lowercase();
        assert!(
            ["reset", "broke off", "closed", "truncated", "incomplete", "early"]
                .iter()
                .any(|w| lower.contains(w)),
            "{mode}: the error must say the download broke off: {stderr}"
        );
    }
    assert!(store_ls(&w.store).is_empty());
    store_verify(&w.store);
    assert_no_staging_left(&w.store);
}

/// A redirect may lead to another host (`localhost` is the forge's address under another
/// name): it is followed, as curl -L and Nix follow it, and the tree is the same.
#[test]
fn redirects_to_other_hosts_are_followed() {
    let w = World::new("fetch-foreign-redirect");
    let parent = w.path().join("tree");
    copy_tree(&python_package("json"), &parent.join("json"));
    tar_czf(&w.files().join("json.tar.gz"), &parent, &["json"]);
    let forge = Forge::start(&w.root, &[]);
    let body = w.files().join("json.tar.gz");

    for target in [
        format!("{}/files/json.tar.gz", forge.url()),
        format!("http://localhost:{}/files/json.tar.gz", forge.port),
    ] {
        let server = BadServer::start("redirect", &body, &target);
        let fetched = fetch_json(&w.store, NO_GITHUB, &format!("<tarball:{}>", server.url()));
        assert_fetched_tree(&w.store, &fetched, &parent.join("json"), w.path());
    }
    let served: Vec<_> = forge
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("json.tar.gz"))
        .map(|r| r.host)
        .collect();
    assert_eq!(served.len(), 2, "{served:?}");
    assert!(served[1].starts_with("localhost:"), "{served:?}");
    store_verify(&w.store);
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// Each limit flag stops a fetch that exceeds it, with an error that names the flag.
#[test]
fn limits_stop_fetches_with_clear_errors() {
    let w = World::new("fetch-limits");
    let parent = w.path().join("tree");
    copy_tree(&python_package("email"), &parent.join("email"));
    write_file(&parent.join("email/noise.bin"), &pseudo_random(400 << 10, 3), 0o644);
    tar_czf(&w.files().join("email.tar.gz"), &parent, &["email"]);
    let size = fs::metadata(w.files().join("email.tar.gz")).unwrap().len();
    assert!(size > 200 << 10, "the tarball is {size} bytes");
    // Files at 100 kB/s: the tarball takes several seconds.
    let forge = Forge::start(&w.root, &["--throttle", "100000", "--throttle-path-regex", "files"]);
    let island = format!("<tarball:{}/files/email.tar.gz>", forge.url());

    for (flags, says) in [
        (["--max-download", "100K"], "--max-download"),
        (["--max-unpacked", "200K"], "--max-unpacked"),
        (["--max-memory", "1M"], "--max-memory"),
        (["--max-time", "1"], "--max-time"),
    ] {
        let mut args = flags.to_vec();
        args.push(&island);
        let started = Instant::now();
        let stderr = fetch_err(&w.store, NO_GITHUB, &args);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "{flags:?} took {took:?}");
        assert!(stderr.contains(&island), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: the error must name {says}: {stderr}");
    }
    assert!(store_ls(&w.store).is_empty());

    // The limits are exact: the archive's size may be downloaded, its files' total size unpacked.
    let fast = Forge::start(&w.root, &[]);
    let island = format!("<tarball:{}/files/email.tar.gz>", fast.url());
    let unpacked: u64 = files_under(&parent)
        .iter()
        .map(|f| fs::metadata(f).unwrap().len())
        .sum();
    for (flag, limit) in [("--max-download", size), ("--max-unpacked", unpacked)] {
        // A store of its own for each: one that holds the tree stops the fetch at the
        // archive's headers, before any limit could matter.
        let store = w.path().join(format!("store{flag}"));
        let at = limit.to_string();
        let below = (limit - 1).to_string();
        let stderr = fetch_err(&store, NO_GITHUB, &[flag, &below, &island]);
        assert!(stderr.contains(flag), "{stderr}");
        assert!(store_ls(&store).is_empty());
        let fetched = fetch_json_with(&store, NO_GITHUB, &[flag, &at], &island);
        assert_fetched_tree(&store, &fetched, &parent.join("email"), w.path());
        store_verify(&store);
        assert_no_staging_left(&store);
    }
    store_verify(&w.store);
    assert_no_staging_left(&w.store);
}

// ---------------------------------------------------------------------------------------------
// 9. concurrency
// ---------------------------------------------------------------------------------------------

#[test]
fn concurrent_fetches_share_one_store() {
    let w = World::new("fetch-concurrent");
    let src = w.path().join("src");
    project_tree(&src, "email", 1);
    copy_tree(&python_package("json"), &src.join("json"));
    let rev = forge::commit(&w.root, "acme/widgets", &src, "main", "Import");
    let forge = Forge::start(&w.root, &[]);
    let url = forge.url();

    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let barrier = barrier.clone();
            let store = w.store.clone();
            let url = url.clone();
            thread::spawn(move || {
                barrier.wait();
                fetch(&store, &url, &["--json", "<github:acme/widgets>"])
            })
        })
        .collect();
    let outputs: Vec<Output> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut results = Vec::new();
    for out in &outputs {
        assert!(out.status.success(), "{}", report("cab fetch (concurrent)", out));
        results.push(parse_fetched(text(&out.stdout).trim()));
    }
    for r in &results {
        assert_eq!(r.rev.as_deref(), Some(rev.as_str()));
        assert_eq!(r, &results[0], "all four must agree");
    }
    assert_eq!(store_ls(&w.store), vec![results[0].hash.clone()]);
    store_verify(&w.store);
    assert_no_staging_left(&w.store);
    let extracted = w.path().join("extracted");
    forge::git_archive_extract(&w.root, "acme/widgets", &rev, &extracted);
    assert_fetched_tree(&w.store, &results[0], &extracted, w.path());
}

#[test]
fn an_unchanged_tarball_costs_its_headers() {
    let w = World::new("fetch-tarball-identity");
    let src = w.path().join("pkg-src");
    write_file(&src.join("pkg/blob.bin"), &pseudo_random(8 << 20, 11), 0o644);
    write_file(&src.join("pkg/README"), b"version 1\n", 0o644);
    let archive = w.files().join("latest.tar.gz");
    make_tar_gz(&src, &archive);
    let size = fs::metadata(&archive).unwrap().len();
    // Slow enough that a whole download would show; and deaf to conditional requests (the
    // request asks with the validator remembered, and gets 200 all the same).
    let forge = Forge::start(
        &w.root,
        &[
            "--validators",
            "ignored",
            "--throttle",
            "2000000",
            "--throttle-path-regex",
            "/files/",
        ],
    );
    let island = format!("<tarball:{}/files/latest.tar.gz>", forge.url());
    let first = fetch_json(&w.store, &forge.url(), &island);
    let whole = |r: &forge::Request| r.path.ends_with("latest.tar.gz") && r.body_complete;
    assert_eq!(forge.requests().iter().filter(|r| whole(r)).count(), 1);

    // Unchanged at the same URL: stopped once its headers named the stored tree.
    let started = Instant::now();
    let out = fetch_ok(&w.store, &forge.url(), &["--json", &island]);
    let took = started.elapsed();
    let second = parse_fetched(text(&out.stdout).trim());
    assert_eq!(
        (second.hash.as_str(), second.nar.as_str()),
        (first.hash.as_str(), first.nar.as_str())
    );
    let requests = forge.settled_requests(Duration::from_millis(500), Duration::from_secs(10));
    let last = requests
        .iter()
        .rev()
        .find(|r| r.path.ends_with("latest.tar.gz"))
        .unwrap();
    assert!(
        !last.body_complete && last.bytes_sent < size / 4 && last.conditional,
        "{last:?} of {size} bytes"
    );
    assert!(took < Duration::from_secs(3), "the unchanged tarball took {took:?}");

    // Changed at the same URL: a new identity, the whole download, the pin moves.
    write_file(&src.join("pkg/README"), b"version 2\n", 0o644);
    make_tar_gz(&src, &w.path().join("next.tar.gz"));
    fs::rename(w.path().join("next.tar.gz"), &archive).unwrap();
    let third = fetch_json(&w.store, &forge.url(), &island);
    assert_ne!(third.hash, first.hash);
    assert_eq!(forge.requests().iter().filter(|r| whole(r)).count(), 2);
}

/// A tarball whose validator the store remembers is asked for conditionally: unchanged, the
/// server answers 304 Not Modified and sends no body; changed, it answers 200 with the new
/// archive and the pin moves. A 304 for a download whose tree the store no longer holds falls
/// back to a whole download; a server that sends no validators still gives the right tree (one
/// that ignores the condition: `an_unchanged_tarball_costs_its_headers`).
#[test]
fn an_unchanged_tarball_is_answered_not_modified() {
    let w = World::new("fetch-tarball-304");
    let src = w.path().join("pkg-src");
    write_file(&src.join("pkg/blob.bin"), &pseudo_random(4 << 20, 12), 0o644);
    write_file(&src.join("pkg/README"), b"version 1\n", 0o644);
    let archive = w.files().join("latest.tar.gz");
    make_tar_gz(&src, &archive);
    let forge = Forge::start(&w.root, &[]);
    let island = format!("<tarball:{}/files/latest.tar.gz>", forge.url());
    let asked = |forge: &Forge, n: usize| {
        let requests = forge.requests_matching("latest.tar.gz", n);
        assert_eq!(requests.len(), n, "{requests:?}");
        requests
    };
    let first = fetch_json(&w.store, &forge.url(), &island);
    let r = asked(&forge, 1);
    assert!(
        !r[0].conditional && r[0].status == 200 && r[0].body_complete,
        "{:?}",
        r[0]
    );

    // Unchanged: one conditional request, answered 304, no body.
    let second = fetch_json(&w.store, &forge.url(), &island);
    assert_eq!((&second.hash, &second.nar), (&first.hash, &first.nar));
    let r = asked(&forge, 2);
    assert!(
        r[1].conditional && r[1].status == 304 && r[1].bytes_sent == 0,
        "{:?}",
        r[1]
    );

    // The store lost the tree since (as a collection racing the update would; here its record
    // is deleted): the 304 names nothing held, so the archive is asked for again, without the
    // condition, and gives the same tree.
    let hex = first.hash.strip_prefix("blake3-").unwrap();
    fs::remove_file(w.store.join("roots").join(hex)).unwrap();
    let third = fetch_json(&w.store, &forge.url(), &island);
    assert_eq!(third.hash, first.hash);
    let r = asked(&forge, 4);
    assert!(r[2].conditional && r[2].status == 304, "{:?}", r[2]);
    assert!(
        !r[3].conditional && r[3].status == 200 && r[3].body_complete,
        "{:?}",
        r[3]
    );
    store_verify(&w.store);

    // Changed at the same URL: the conditional request gets all of it, and the pin moves; then
    // unchanged again, against the new validator.
    write_file(&src.join("pkg/README"), b"version 2\n", 0o644);
    make_tar_gz(&src, &w.path().join("next.tar.gz"));
    fs::rename(w.path().join("next.tar.gz"), &archive).unwrap();
    let fourth = fetch_json(&w.store, &forge.url(), &island);
    assert_ne!(fourth.hash, first.hash);
    let r = asked(&forge, 5);
    assert!(
        r[4].conditional && r[4].status == 200 && r[4].body_complete,
        "{:?}",
        r[4]
    );
    assert_eq!(fetch_json(&w.store, &forge.url(), &island).hash, fourth.hash);
    let r = asked(&forge, 6);
    assert!(r[5].conditional && r[5].status == 304, "{:?}", r[5]);

    // A server with Last-Modified alone: asked with If-Modified-Since, and answered 304.
    let dated = Forge::start(&w.root, &["--validators", "last-modified"]);
    let island = format!("<tarball:{}/files/latest.tar.gz>", dated.url());
    for _ in 0..2 {
        assert_eq!(fetch_json(&w.store, &dated.url(), &island).hash, fourth.hash);
    }
    let r = asked(&dated, 2);
    assert!(
        !r[0].conditional && r[0].status == 200 && r[0].body_complete,
        "{:?}",
        r[0]
    );
    assert!(
        r[1].conditional && r[1].status == 304 && r[1].bytes_sent == 0,
        "{:?}",
        r[1]
    );

    // A server without validators: nothing to ask with, every update downloads all of it.
    let bare = Forge::start(&w.root, &["--validators", "none"]);
    let island = format!("<tarball:{}/files/latest.tar.gz>", bare.url());
    for _ in 0..2 {
        assert_eq!(fetch_json(&w.store, &bare.url(), &island).hash, fourth.hash);
    }
    for r in asked(&bare, 2) {
        assert!(!r.conditional && r.status == 200 && r.body_complete, "{r:?}");
    }
}

/// `tar czf` of `src`'s contents into `out`.
fn make_tar_gz(src: &Path, out: &Path) {
    run_ok(Command::new("tar").arg("-C").arg(src).arg("-czf").arg(out).arg("."));
}
