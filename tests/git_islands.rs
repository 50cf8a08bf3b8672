//! `git` islands end to end: the real `cab` binary fetching from the real local forge
//! (`scripts/forge`: `git http-backend` smart HTTP) over the pack protocol, inside the WASM
//! fetcher.
//!
//! The references are independent of cab: `git rev-parse` for revisions, a `git worktree add`
//! checkout of the same commit for contents (compared entry by entry and with `diff -r`), and
//! real Nix (`nix hash path` of that checkout) for the narHash. Each test has its own store,
//! forge root and forge process.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::forge::{Forge, Request};
use common::*;

/// How long one `cab fetch` may take before the test fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Where github islands would point: nothing listens on port 1.
const NO_GITHUB: &str = "http://127.0.0.1:1";

// ---------------------------------------------------------------------------------------------
// git, as the references come from it
// ---------------------------------------------------------------------------------------------

/// Runs git in `dir` with no user or system configuration and a fixed identity and date; it
/// must succeed. Returns its standard output, trimmed.
fn git(dir: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .args(args);
    text(&run_ok(&mut cmd).stdout).trim().to_owned()
}

fn write(root: &Path, rel: &str, data: &[u8], mode: u32) {
    write_file(&root.join(rel), data, mode);
}

/// Copies a directory tree (files, directories, symlinks) with `cp -a`.
fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    run_ok(Command::new("cp").arg("-a").arg(src).arg(dst));
}

/// Stages everything in the work tree `work`, adds the submodule entry `sub` (a gitlink: a
/// commit of another repository, which git does not fetch), and commits. Returns the commit.
fn commit_all(work: &Path, message: &str) -> String {
    git(work, &["add", "-A"]);
    let sub = "0123456789abcdef0123456789abcdef01234567";
    git(
        work,
        &["update-index", "--add", "--cacheinfo", &format!("160000,{sub},sub")],
    );
    git(work, &["commit", "-q", "-m", message]);
    git(work, &["rev-parse", "HEAD"])
}

/// Serves the repository at `work` as `root/OWNER/REPO.git` (a bare clone with every branch
/// and tag), configured as `scripts/forge make-repo` configures its repositories.
fn publish(work: &Path, root: &Path, owner_repo: &str) -> PathBuf {
    let bare = root.join(format!("{owner_repo}.git"));
    fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(
        work,
        &["clone", "-q", "--bare", work.to_str().unwrap(), bare.to_str().unwrap()],
    );
    git(&bare, &["config", "uploadpack.allowFilter", "true"]);
    git(&bare, &["config", "uploadpack.allowAnySHA1InWant", "true"]);
    // One pack, as a forge keeps them: serving then reuses its deltas instead of computing them.
    git(&bare, &["repack", "-adq"]);
    bare
}

/// A checkout of `rev` made by git itself (`git worktree add`), made to look like an exported
/// tree: no `.git` file. Submodules stay the empty directories git leaves.
fn checkout(bare: &Path, rev: &str, dest: &Path) -> PathBuf {
    git(
        bare,
        &["worktree", "add", "-q", "--detach", dest.to_str().unwrap(), rev],
    );
    fs::remove_file(dest.join(".git")).unwrap();
    git(bare, &["worktree", "prune"]);
    dest.to_owned()
}

// ---------------------------------------------------------------------------------------------
// cab
// ---------------------------------------------------------------------------------------------

fn cab_in(store: &Path) -> Command {
    let mut cmd = cab();
    cmd.arg("--store").arg(store).env("CAB_GITHUB_URL", NO_GITHUB);
    cmd
}

fn fetch(store: &Path, island: &str) -> Output {
    run_timeout(cab_in(store).args(["fetch", "--json", island]), FETCH_TIMEOUT)
}

/// One island as `cab fetch --json` reports it.
#[derive(Debug)]
struct Fetched {
    locked: String,
    rev: String,
    hash: String,
    nar: String,
}

fn fetch_ok(store: &Path, island: &str) -> Fetched {
    let out = fetch(store, island);
    assert!(out.status.success(), "{}", report(&format!("cab fetch {island}"), &out));
    let line = text(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    let field = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("no {k} in {line}")).to_owned();
    Fetched {
        locked: field("locked"),
        rev: field("rev"),
        hash: field("hash"),
        nar: field("narHash"),
    }
}

fn fetch_err(store: &Path, island: &str) -> String {
    let out = fetch(store, island);
    assert!(
        exited_nonzero(out.status),
        "{}",
        report(&format!("cab fetch {island}"), &out)
    );
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked at"), "{stderr}");
    stderr
}

fn island(forge: &Forge, repo: &str, config: &str) -> String {
    format!("<git:{}/{repo}.git:{{ {config} }}>", forge.url())
}

/// The fetched tree, exported, must be git's own checkout of `rev` exactly, and its narHash
/// what real Nix says of that checkout.
fn assert_matches_checkout(store: &Path, fetched: &Fetched, bare: &Path, rev: &str, scratch: &Path) {
    assert_eq!(fetched.rev, rev, "the commit fetched");
    let name = &rev[..12];
    let expected = checkout(bare, rev, &scratch.join(format!("checkout-{name}")));
    let exported = scratch.join(format!("export-{name}"));
    run_ok(cab_in(store).args(["store", "export", &fetched.hash]).arg(&exported));
    assert_same_tree(&expected, &exported);
    assert_eq!(
        fetched.nar,
        nix_hash(&expected, None),
        "narHash differs from `nix hash path` of git's checkout"
    );
    assert_eq!(fetched.hash, cab_hash(&expected, None).tree);
}

/// `git-upload-pack` requests logged since `since`, waiting for at least `at_least` of them
/// (the forge logs a request when it ends).
fn upload_packs(forge: &Forge, since: usize, at_least: usize) -> Vec<Request> {
    let started = Instant::now();
    loop {
        let all = forge.requests();
        let found: Vec<Request> = all
            .into_iter()
            .skip(since)
            .filter(|r| r.path.ends_with("/git-upload-pack"))
            .collect();
        if found.len() >= at_least || started.elapsed() > Duration::from_secs(10) {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// The repository
// ---------------------------------------------------------------------------------------------

struct Widgets {
    bare: PathBuf,
    /// The first commit (tagged `v1`, annotated), the second (no ref points at it), the
    /// third (`main`), `dev` (on the second), and `same` (on `main`, with `main`'s tree).
    c1: String,
    c2: String,
    c3: String,
    dev: String,
    same: String,
}

/// `acme/widgets`: history, branches, an annotated tag, executables, symlinks (to a file, to a
/// directory, dangling, absolute), a submodule, similar files (so the pack holds deltas), and
/// a real tree (Python's `email` package).
fn widgets(root: &Path, work: &Path) -> Widgets {
    fs::create_dir_all(work).unwrap();
    git(work, &["init", "-q", "-b", "main"]);
    let text = |version: usize| -> Vec<u8> {
        (0..1500)
            .map(|i| match i % 100 == version {
                true => format!("line {i}: changed in version {version}\n"),
                false => format!("line {i}: the same in every version of this file\n"),
            })
            .collect::<String>()
            .into_bytes()
    };
    write(work, "README.md", b"# widgets\n", 0o644);
    write(work, "bin/build.sh", b"#!/bin/sh\necho building\n", 0o755);
    write(work, "src/lib.rs", b"pub fn widget() {}\n", 0o644);
    write(work, "src/text.txt", &text(1), 0o644);
    write(work, "src/copy.txt", &text(2), 0o644);
    write(work, "empty", b"", 0o644);
    write(work, "big.bin", &pseudo_random(300_000, 7), 0o644);
    symlink("README.md", work.join("readme-link")).unwrap();
    symlink("src", work.join("src-link")).unwrap();
    symlink("does/not/exist", work.join("dangling")).unwrap();
    symlink("/etc/hostname", work.join("absolute")).unwrap();
    copy_tree(&python_package("email"), &work.join("vendor/email"));
    let c1 = commit_all(work, "first");
    git(work, &["tag", "-a", "-m", "release 1", "v1"]);

    write(work, "src/text.txt", &text(3), 0o644);
    write(work, "bin/tool", b"#!/bin/sh\necho tool\n", 0o755);
    fs::set_permissions(work.join("src/lib.rs"), fs::Permissions::from_mode(0o755)).unwrap();
    let c2 = commit_all(work, "second");

    git(work, &["checkout", "-q", "-b", "dev"]);
    write(work, "dev.txt", b"in development\n", 0o644);
    let dev = commit_all(work, "dev work");
    git(work, &["checkout", "-q", "main"]);

    write(work, "src/copy.txt", &text(4), 0o644);
    fs::remove_file(work.join("empty")).unwrap();
    write(work, "docs/guide/intro.md", b"# Intro\n", 0o644);
    let c3 = commit_all(work, "third");

    // Another commit with exactly `main`'s tree.
    git(work, &["checkout", "-q", "-b", "same"]);
    git(work, &["commit", "-q", "--allow-empty", "-m", "nothing changed"]);
    let same = git(work, &["rev-parse", "HEAD"]);
    git(work, &["checkout", "-q", "main"]);
    assert_eq!(
        git(work, &["rev-parse", "same^{tree}"]),
        git(work, &["rev-parse", "main^{tree}"])
    );

    let bare = publish(work, root, "acme/widgets");
    Widgets {
        bare,
        c1,
        c2,
        c3,
        dev,
        same,
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn branches_tags_and_revs_match_git_checkouts() {
    let tmp = TempDir::new("git-islands");
    let root = tmp.join("forge");
    let w = widgets(&root, &tmp.join("work"));
    let forge = Forge::start(&root, &[]);
    let store = tmp.join("store");
    let scratch = tmp.join("scratch");
    fs::create_dir_all(&scratch).unwrap();

    let main = fetch_ok(&store, &island(&forge, "acme/widgets", r#"ref = "main""#));
    assert_matches_checkout(&store, &main, &w.bare, &w.c3, &scratch);
    assert!(
        main.locked.starts_with(&format!(
            "<git:{}/acme/widgets.git:{{ ref = \"main\", rev = \"{}\", hash = \"{}\", narHash = \"{}\" }}>",
            forge.url(),
            w.c3,
            main.hash,
            main.nar
        )),
        "{}",
        main.locked
    );
    // The submodule is an empty directory, the executable bit and symlinks are kept.
    let exported = scratch.join(format!("export-{}", &w.c3[..12]));
    assert!(fs::read_dir(exported.join("sub")).unwrap().next().is_none());
    let mode = |p: &str| fs::symlink_metadata(exported.join(p)).unwrap().permissions().mode();
    assert_ne!(mode("bin/build.sh") & 0o111, 0);
    assert_eq!(mode("README.md") & 0o111, 0);
    assert_eq!(
        fs::read_link(exported.join("absolute")).unwrap(),
        Path::new("/etc/hostname")
    );

    let dev = fetch_ok(&store, &island(&forge, "acme/widgets", r#"ref = "dev""#));
    assert_matches_checkout(&store, &dev, &w.bare, &w.dev, &scratch);

    // An annotated tag: the commit it peels to.
    let v1 = fetch_ok(&store, &island(&forge, "acme/widgets", r#"ref = "v1""#));
    assert_matches_checkout(&store, &v1, &w.bare, &w.c1, &scratch);
    let full = fetch_ok(&store, &island(&forge, "acme/widgets", r#"ref = "refs/tags/v1""#));
    assert_eq!((full.rev, full.hash), (v1.rev, v1.hash));

    // A commit no ref points at, by id.
    let c2 = fetch_ok(&store, &island(&forge, "acme/widgets", &format!(r#"rev = "{}""#, w.c2)));
    assert_matches_checkout(&store, &c2, &w.bare, &w.c2, &scratch);
    // The default branch.
    let head = fetch_ok(&store, &format!("<git:{}/acme/widgets.git>", forge.url()));
    assert_eq!((head.rev, head.hash), (w.c3.clone(), main.hash.clone()));

    // The locked literal fetches the same tree again.
    let again = fetch_ok(&store, &main.locked);
    assert_eq!((again.rev, again.hash), (w.c3.clone(), main.hash));
}

#[test]
fn a_known_tree_stops_the_fetch_before_the_pack() {
    let tmp = TempDir::new("git-islands-tree");
    let root = tmp.join("forge");
    let w = widgets(&root, &tmp.join("work"));
    let forge = Forge::start(&root, &[]);
    let store = tmp.join("store");

    let main = fetch_ok(&store, &island(&forge, "acme/widgets", r#"ref = "main""#));
    assert_eq!(main.rev, w.c3);
    let first = upload_packs(&forge, 0, 3);
    let pack = first.iter().map(|r| r.bytes_sent).max().unwrap();
    assert!(pack > 300_000, "the whole pack: {first:?}");

    // `same` is another commit with the same tree: its own rev is new to the store, its tree
    // is not. The fetcher asks for the commit alone first (the forge allows `filter`), says
    // `git-tree`, and the host stops it there: no pack beyond that one commit is sent. (Should
    // the host let the guest's next request out before it has looked the line up, that
    // request is cut off before anything comes back.)
    let since = forge.requests().len();
    let same = fetch_ok(&store, &island(&forge, "acme/widgets", r#"ref = "same""#));
    assert_eq!(same.rev, w.same);
    assert_eq!((&same.hash, &same.nar), (&main.hash, &main.nar));
    std::thread::sleep(Duration::from_millis(500));
    let second = upload_packs(&forge, since, 2);
    assert!(second.len() >= 2, "ls-refs, then the commit alone: {second:?}");
    let sizes: Vec<u64> = second.iter().map(|r| r.bytes_sent).collect();
    assert!(sizes[0] < 200, "ls-refs: {second:?}");
    assert!(sizes[1] < 1_000, "the commit alone: {second:?}");
    assert!(
        second[2..].iter().all(|r| !r.body_complete && r.bytes_sent < 1_000),
        "no pack but the commit's was sent: {second:?}"
    );
}

#[test]
fn without_filter_a_known_tree_stops_the_pack_midway() {
    let tmp = TempDir::new("git-islands-nofilter");
    let root = tmp.join("forge");
    let work = tmp.join("work");
    fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    // Larger than what the sockets between the forge and cab can hold, so that a stopped fetch
    // shows in the forge's log as a response cut short.
    write(&work, "noise.bin", &pseudo_random(48 << 20, 3), 0o644);
    write(&work, "README", b"heavy\n", 0o644);
    let main = commit_all(&work, "heavy");
    git(&work, &["commit", "-q", "--allow-empty", "-m", "again"]);
    let same = git(&work, &["rev-parse", "HEAD"]);
    let bare = publish(&work, &root, "acme/heavy");
    git(&bare, &["config", "uploadpack.allowFilter", "false"]);
    let forge = Forge::start(&root, &[]);
    let store = tmp.join("store");

    let first = fetch_ok(&store, &island(&forge, "acme/heavy", &format!(r#"rev = "{main}""#)));
    let whole = upload_packs(&forge, 0, 1).iter().map(|r| r.bytes_sent).max().unwrap();
    assert!(whole > 48 << 20);

    let since = forge.requests().len();
    let second = fetch_ok(&store, &island(&forge, "acme/heavy", &format!(r#"rev = "{same}""#)));
    assert_eq!(second.rev, same);
    assert_eq!(second.hash, first.hash);
    let requests = upload_packs(&forge, since, 1);
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        !requests[0].body_complete && requests[0].bytes_sent < whole / 2,
        "the pack should have been cut short: {requests:?} (whole: {whole})"
    );
}

#[test]
fn a_missing_ref_lists_the_nearest() {
    let tmp = TempDir::new("git-islands-missing");
    let root = tmp.join("forge");
    widgets(&root, &tmp.join("work"));
    let forge = Forge::start(&root, &[]);
    let store = tmp.join("store");
    let stderr = fetch_err(&store, &island(&forge, "acme/widgets", r#"ref = "mian""#));
    assert!(
        stderr.contains(&format!(
            "no branch or tag `mian` in {}/acme/widgets.git; the closest it has: refs/heads/main",
            forge.url()
        )),
        "{stderr}"
    );
    let stderr = fetch_err(&store, &island(&forge, "acme/nothing", r#"ref = "main""#));
    assert!(stderr.contains("HTTP 404"), "{stderr}");
}

/// A large real tree: the whole Python standard library of this machine, as one commit.
/// Prints how long cab takes against `git clone --depth 1` from the same forge, and cab's
/// peak memory. Opt-in (`--ignored`): it takes a while.
#[test]
#[ignore]
fn python_stdlib_against_git_clone() {
    let tmp = TempDir::new("git-islands-stdlib");
    let root = tmp.join("forge");
    let work = tmp.join("work");
    let lib = python_lib_dirs().into_iter().next().expect("a Python standard library");
    copy_tree(&lib, &work);
    for junk in ["site-packages", "dist-packages"] {
        let _ = fs::remove_dir_all(work.join(junk));
    }
    run_ok(
        Command::new("find")
            .arg(&work)
            .args(["-name", "__pycache__", "-prune", "-exec", "rm", "-rf", "{}", "+"]),
    );
    let files = files_under(&work).len();
    git(&work, &["init", "-q", "-b", "main"]);
    let rev = commit_all(&work, "stdlib");
    let bare = publish(&work, &root, "python/stdlib");
    let forge = Forge::start(&root, &[]);
    let store = tmp.join("store");
    // Compile the module into the store's cache first, so that it is not timed.
    fetch_err(&store, &island(&forge, "python/none", r#"ref = "main""#));

    let url = format!("{}/python/stdlib.git", forge.url());
    let started = Instant::now();
    run_ok(
        Command::new("git")
            .args(["clone", "-q", "--depth", "1", &url])
            .arg(tmp.join("clone")),
    );
    let git_time = started.elapsed();

    let started = Instant::now();
    let out = run_timeout(
        Command::new("/usr/bin/time")
            .arg("-f")
            .arg("peak RSS %M KiB")
            .arg(env!("CARGO_BIN_EXE_cab"))
            .arg("--store")
            .arg(&store)
            .args(["fetch", "--json", &island(&forge, "python/stdlib", r#"ref = "main""#)]),
        FETCH_TIMEOUT,
    );
    let cab_time = started.elapsed();
    assert!(out.status.success(), "{}", report("cab fetch", &out));
    let rss = text(&out.stderr)
        .lines()
        .rfind(|l| l.starts_with("peak RSS"))
        .unwrap_or_default()
        .to_owned();
    eprintln!("python stdlib ({files} files): git clone --depth 1 {git_time:?}, cab fetch {cab_time:?}, cab {rss}");
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let fetched = Fetched {
        locked: v["locked"].as_str().unwrap().to_owned(),
        rev: v["rev"].as_str().unwrap().to_owned(),
        hash: v["hash"].as_str().unwrap().to_owned(),
        nar: v["narHash"].as_str().unwrap().to_owned(),
    };
    let scratch = tmp.join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    assert_matches_checkout(&store, &fetched, &bare, &rev, &scratch);
}

/// What Nix 2.8's `builtins.fetchGit` makes of `rev` in the repository at `bare`: its narHash.
fn nix_fetch_git(bare: &Path, rev: &str) -> String {
    require_nix();
    let expr = format!(
        "(builtins.fetchGit {{ url = \"file://{}\"; ref = \"main\"; rev = \"{rev}\"; }}).narHash",
        bare.display()
    );
    let out = run_ok(Command::new("nix-instantiate").args(["--eval", "-E", &expr]));
    text(&out.stdout).trim().trim_matches('"').to_owned()
}

/// A repository whose `.gitattributes` files leave paths out (`export-ignore`: files, whole
/// directories, through a macro, in a subdirectory's own file) and expand `$Format:…$`
/// (`export-subst`): the git island, the github island of the same commit, `git archive` and
/// Nix's `builtins.fetchGit` all give one tree. (Placeholders that depend on the exporting
/// repository rather than the commit, such as `%d`, differ between hosts by nature; cab
/// leaves them empty, as the fetcher's unit tests check.)
#[test]
fn gitattributes_make_git_and_github_islands_agree_with_git_archive_and_nix() {
    let tmp = TempDir::new("git-attributes");
    let work = tmp.join("work");
    git(tmp.path(), &["init", "-q", "-b", "main", work.to_str().unwrap()]);
    write(
        &work,
        ".gitattributes",
        b"[attr]maintainer export-ignore\n\
          .gitattributes export-ignore\n\
          /.github/ export-ignore\n\
          tests/** export-ignore\n\
          *.orig maintainer\n\
          VERSION export-subst\n\
          src/**/version.h export-subst\n",
        0o644,
    );
    write(
        &work,
        "VERSION",
        b"commit $Format:%H$ (short $Format:%h$), tree $Format:%T$\n\
          by $Format:%an <%ae>$ on $Format:%cI$: $Format:%s$, $Format:%f$\n\
          left alone: $Format without a colon$\n",
        0o644,
    );
    write(&work, ".github/workflows/ci.yml", b"on: push\n", 0o644);
    write(&work, "tests/unit/test_a.py", b"assert True\n", 0o644);
    write(&work, "src/lib.c", b"int f(void) { return 1; }\n", 0o644);
    write(&work, "src/gen/version.h", b"#define REV \"$Format:%h$\"\n", 0o644);
    write(&work, "src/patch.orig", b"leftover\n", 0o644);
    write(
        &work,
        "src/.gitattributes",
        b"scratch/ export-ignore\nnotes.txt export-subst\n",
        0o644,
    );
    write(&work, "src/scratch/tmp.txt", b"scratch\n", 0o644);
    write(&work, "src/notes.txt", b"built from $Format:%h$\n", 0o644);
    write(&work, "bin/tool", b"#!/bin/sh\necho $Format:%H$\n", 0o755);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "Release 1.0\n\nWith notes."]);
    let rev = git(&work, &["rev-parse", "HEAD"]);
    let root = tmp.join("forge");
    publish(&work, &root, "acme/attrs");

    // The reference: what `git archive` exports of the commit.
    let archived = tmp.join("archived");
    common::forge::git_archive_extract(&root, "acme/attrs", &rev, &archived);
    assert!(!archived.join("tests").exists() && !archived.join("src/scratch").exists());
    let version = fs::read_to_string(archived.join("VERSION")).unwrap();
    assert!(
        version.starts_with(&format!("commit {rev} (short {})", &rev[..7])),
        "{version}"
    );

    agrees_with_git_archive_and_nix(&tmp, &root, "acme/attrs", &rev, &archived);
}

/// The git island of `rev` (on `main`) in `root/OWNER_REPO.git` and the github island of the
/// same repository give one tree: `archived` (what `git archive` exports), whose narHash is
/// what Nix says of it and what Nix's `builtins.fetchGit` says of the commit.
fn agrees_with_git_archive_and_nix(tmp: &TempDir, root: &Path, owner_repo: &str, rev: &str, archived: &Path) {
    let forge = Forge::start(root, &[]);
    let store = tmp.join("store");
    let git_island = fetch_ok(&store, &island(&forge, owner_repo, "ref = \"main\""));
    let mut cmd = cab();
    cmd.arg("--store")
        .arg(&store)
        .args(["fetch", "--json", &format!("<github:{owner_repo}>")])
        .env("CAB_GITHUB_URL", forge.url());
    let out = run_timeout(&mut cmd, FETCH_TIMEOUT);
    assert!(out.status.success(), "{}", report("cab fetch <github:…>", &out));
    let github: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();

    assert_eq!(git_island.rev, rev);
    assert_eq!(github["hash"], git_island.hash, "<github:…> and <git:…> differ");
    assert_eq!(github["narHash"], git_island.nar);
    let exported = tmp.join("exported");
    run_ok(
        cab_in(&store)
            .args(["store", "export", &git_island.hash])
            .arg(&exported),
    );
    assert_same_tree(archived, &exported);
    assert_eq!(
        git_island.nar,
        nix_hash(archived, None),
        "narHash is not Nix's for git archive's tree"
    );
    assert_eq!(
        git_island.nar,
        nix_fetch_git(&root.join(format!("{owner_repo}.git")), rev),
        "narHash is not builtins.fetchGit's"
    );
}

/// A repository that uses every attribute `git archive` applies to a file's bytes: `eol=crlf`
/// (alone, with `text`, with `text=auto`), `text=auto` and `text` alone (no change on a
/// server), `-text` and `binary` (never converted), `ident`, and `export-subst` after them;
/// through a macro and a subdirectory's own `.gitattributes`, both attribute files
/// export-ignored, some blobs with CRLFs already (committed before normalization), a file past
/// the fetcher's early path, a symlink its patterns match. The git island is `git archive`'s
/// tree byte for byte, the github island's, and Nix's.
#[test]
fn line_endings_and_ident_make_git_islands_agree_with_git_archive_and_nix() {
    let tmp = TempDir::new("git-eol");
    let work = tmp.join("work");
    git(tmp.path(), &["init", "-q", "-b", "main", work.to_str().unwrap()]);
    // The blobs are the bytes written (a CRLF stays a CRLF), as in a repository whose
    // attributes came after its files.
    write(&work, ".git/info/attributes", b"* -text -ident\n", 0o644);
    write(
        &work,
        ".gitattributes",
        b"[attr]windows text=auto eol=crlf\n\
          .gitattributes export-ignore\n\
          * text=auto\n\
          *.bat eol=crlf\n\
          *.ps1 text eol=crlf\n\
          *.png binary\n\
          *.dat -text eol=crlf\n\
          *.c ident\n\
          win/** windows\n\
          VERSION export-subst ident eol=crlf\n\
          tools/ export-ignore\n",
        0o644,
    );
    let files: &[(&str, &[u8])] = &[
        ("README", b"plain\ntext\n"),
        ("build.bat", b"@echo off\necho built\n"),
        ("setup.ps1", b"Write-Host hi\r\nexit 0\n"),
        ("logo.png", b"\x89PNG\r\n\x1a\n\0\0\nIHDR\n"),
        ("table.dat", b"1\n2\n"),
        ("src/main.c", b"/* $Id$ */\nint main(void) { return 0; }\n"),
        ("src/old.c", b"/* $Id: from another VCS, kept $ */\n"),
        ("win/notes.txt", b"converted\n"),
        ("win/mixed.txt", b"left\r\nalone\n"),
        ("win/data.bin", b"binary\0\nleft alone\n"),
        ("VERSION", b"$Id$\n$Format:%H%n%s$\n"),
        ("tools/release.bat", b"left out\n"),
        (
            "docs/.gitattributes",
            b".gitattributes export-ignore\n*.txt eol=crlf\nlegacy.txt -text\n",
        ),
        ("docs/guide.txt", b"guide\n"),
        ("docs/legacy.txt", b"legacy\n"),
    ];
    for (path, data) in files {
        write(&work, path, data, 0o644);
    }
    let big: Vec<u8> = (0..60_000).flat_map(|i| format!("row {i}\n").into_bytes()).collect();
    write(&work, "win/big.txt", &big, 0o644);
    symlink("notes.txt", work.join("win/link.txt")).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "Line endings"]);
    fs::remove_file(work.join(".git/info/attributes")).unwrap();
    let rev = git(&work, &["rev-parse", "HEAD"]);
    let root = tmp.join("forge");
    publish(&work, &root, "acme/eol");

    let archived = tmp.join("archived");
    common::forge::git_archive_extract(&root, "acme/eol", &rev, &archived);
    // git archive converted what the attributes say, and nothing else.
    let read = |p: &str| fs::read(archived.join(p)).unwrap();
    assert_eq!(read("build.bat"), b"@echo off\r\necho built\r\n");
    assert_eq!(read("setup.ps1"), b"Write-Host hi\r\nexit 0\r\n");
    assert_eq!(read("README"), b"plain\ntext\n");
    assert_eq!(read("table.dat"), b"1\n2\n");
    assert_eq!(read("win/mixed.txt"), b"left\r\nalone\n");
    assert_eq!(read("docs/guide.txt"), b"guide\r\n");
    assert_eq!(read("docs/legacy.txt"), b"legacy\n");
    assert!(read("win/big.txt").ends_with(b"row 59999\r\n"));
    let blob = git(&work, &["rev-parse", &format!("{rev}:src/main.c")]);
    assert_eq!(
        String::from_utf8(read("src/main.c")).unwrap(),
        format!("/* $Id: {blob} $ */\nint main(void) {{ return 0; }}\n")
    );
    assert_eq!(read("src/old.c"), b"/* $Id: from another VCS, kept $ */\n");
    let version = String::from_utf8(read("VERSION")).unwrap();
    assert!(
        version.starts_with("$Id: ") && version.ends_with(&format!(" $\r\n{rev}\nLine endings\r\n")),
        "{version:?}"
    );
    assert!(!archived.join(".gitattributes").exists() && !archived.join("tools").exists());

    agrees_with_git_archive_and_nix(&tmp, &root, "acme/eol", &rev, &archived);
}
