//! End-to-end tests of `cab mount` with real tools on real mounts: see mount-tests/README.md.
//!
//! Every test builds its own world — a local forge (`scripts/forge`) holding the repositories it
//! pushes, a store, a project directory with `islands.toml`, and a mount point — all under one
//! temporary directory, so tests run in parallel without seeing each other. The daemon runs as
//! a child process held by a [`Mount`] guard, which always unmounts (SIGTERM, then SIGKILL and
//! `fusermount3 -u -z`) even when the test panics. Every wait is bounded.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::forge;
use common::*;
use support::*;

// ---------------------------------------------------------------------------------------------
// Source trees
// ---------------------------------------------------------------------------------------------

const MARKER: &str = "cab-island-marker-7f3e9a";
const SCRIPT_OUTPUT: &str = "hello from an island";

/// A real repository: copies of two Python packages, an executable script, symlinks of every
/// kind and a nested directory chain.
fn real_tree(root: &Path) {
    copy_tree(&python_package("email"), &root.join("email"));
    copy_tree(&python_package("json"), &root.join("lib/json"));
    write_file(
        &root.join("bin/hello.sh"),
        format!("#!/bin/sh\necho '{SCRIPT_OUTPUT}'\n").as_bytes(),
        0o755,
    );
    write_file(
        &root.join("docs/notes.txt"),
        format!("see {MARKER} here\n").as_bytes(),
        0o644,
    );
    write_file(
        &root.join("nested/a/b/c/d/e/leaf.txt"),
        b"at the bottom of the chain\n",
        0o644,
    );
    write_file(&root.join("README"), b"widgets: a test repository\n", 0o644);
    make_symlink("email/__init__.py", &root.join("link-relative"));
    make_symlink("/etc/hostname", &root.join("link-absolute"));
    make_symlink("no/such/target", &root.join("link-dangling"));
    make_symlink("nested/a/b", &root.join("link-to-dir"));
    make_symlink("../../../../README", &root.join("nested/a/b/c/up-link"));
}

/// A small pure-Python package of our own, plus `json` copied beside it.
fn python_tree(root: &Path) {
    write_file(
        &root.join("lib/widgetlib/__init__.py"),
        b"from .geometry import area\n\ndef greet(name):\n    return 'hello, ' + name\n",
        0o644,
    );
    write_file(
        &root.join("lib/widgetlib/geometry.py"),
        b"def area(w, h):\n    \"\"\"The area of a w x h rectangle.\"\"\"\n    return w * h\n",
        0o644,
    );
    copy_tree(&python_package("json"), &root.join("lib/json"));
}

/// A small Rust crate without dependencies, with its Cargo.lock (the mount is read-only, so
/// cargo must not need to write one).
fn rust_crate(root: &Path) {
    write_file(
        &root.join("Cargo.toml"),
        b"[package]\nname = \"island-hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n",
        0o644,
    );
    write_file(
        &root.join("src/main.rs"),
        b"mod geometry;\n\nconst GREETING: &str = include_str!(\"../data/greeting.txt\");\n\n\
fn main() {\n    println!(\"{} area={}\", GREETING.trim(), geometry::area(6, 7));\n}\n",
        0o644,
    );
    write_file(
        &root.join("src/geometry.rs"),
        b"/// The area of a w x h rectangle.\npub fn area(w: u64, h: u64) -> u64 {\n    w * h\n}\n",
        0o644,
    );
    write_file(&root.join("data/greeting.txt"), b"built from an island\n", 0o644);
    ok(cargo().arg("generate-lockfile").arg("--offline").current_dir(root));
    assert!(root.join("Cargo.lock").is_file());
}

/// `cargo`, without the variables `cargo test` set for this package.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME") || key.starts_with("RUSTC") || key == "RUSTFLAGS" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

// ---------------------------------------------------------------------------------------------
// 1. A real repository through the mount, compared with `git archive`
// ---------------------------------------------------------------------------------------------

fn real_repository(mode: Mode) {
    let world = World::new("mount-real", &[]);
    let src = world.dir("src");
    real_tree(&src);
    let rev = world.push("acme/widgets", &src, "widgets, first");
    world.manifest("widgets = '<github:acme/widgets>'\n");
    let reference = world.reference("acme/widgets", &rev);

    let mount = world.mount(mode.args());
    // Listing the root shows the island without fetching it.
    let top = ok_text(tool("ls").arg(world.at("")));
    assert_eq!(
        top.lines().collect::<Vec<_>>(),
        ["by-hash", "github", "gitlab", "sourcehut", "widgets"]
    );
    assert!(world.archives().is_empty(), "listing the root must not fetch");
    assert!(
        !world.project.join("islands.lock").exists(),
        "nothing is pinned before a lookup"
    );

    let island = world.at("widgets");
    mount.settle(mode, &island);
    // ls -R and find agree with the reference extraction.
    let ls_ref = ok_text(tool("ls").arg("-R").current_dir(&reference));
    let ls_mnt = ok_text(tool("ls").arg("-R").current_dir(&island));
    assert_eq!(ls_mnt, ls_ref, "`ls -R` differs");
    assert!(
        mount.wait_log("<github:acme/widgets>: fetching", Duration::from_secs(5)),
        "{}",
        mount.log()
    );
    let find = |dir: &Path| {
        let out = ok_text(tool("find").args([".", "-printf", "%y %p %l\n"]).current_dir(dir));
        let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    let found = find(&island);
    assert_eq!(found, find(&reference), "`find` differs");
    assert!(found.len() > 50, "a real tree: {} entries", found.len());

    // Modes, sizes, symlink targets.
    let mut checked = 0;
    for line in &found {
        let rel = line.split(' ').nth(1).unwrap();
        let (ours, theirs) = (island.join(rel), reference.join(rel));
        let m = fs::symlink_metadata(&ours).unwrap();
        let r = fs::symlink_metadata(&theirs).unwrap();
        let perm = m.permissions().mode() & 0o7777;
        if m.is_dir() {
            assert_eq!(perm, 0o555, "directory {rel}");
        } else if m.is_file() {
            let want = if r.permissions().mode() & 0o100 != 0 {
                0o555
            } else {
                0o444
            };
            assert_eq!(perm, want, "file {rel}");
            assert_eq!(m.len(), r.len(), "size of {rel}");
        } else {
            assert!(m.file_type().is_symlink(), "{rel} is neither dir, file nor symlink");
            assert_eq!(
                fs::read_link(&ours).unwrap(),
                fs::read_link(&theirs).unwrap(),
                "target of {rel}"
            );
            assert_eq!(m.len(), r.len(), "size of symlink {rel}");
        }
        checked += 1;
    }
    assert_eq!(checked, found.len());
    let stat = ok_text(
        tool("stat")
            .args(["-c", "%a %F %s"])
            .arg(island.join("bin/hello.sh"))
            .arg(island.join("README"))
            .arg(island.join("nested/a/b")),
    );
    let size = |rel: &str| fs::metadata(reference.join(rel)).unwrap().len();
    assert_eq!(
        stat.lines().collect::<Vec<_>>(),
        [
            format!("555 regular file {}", size("bin/hello.sh")),
            format!("444 regular file {}", size("README")),
            format!(
                "555 directory {}",
                fs::metadata(island.join("nested/a/b")).unwrap().len()
            ),
        ]
    );
    for (link, target) in [
        ("link-relative", "email/__init__.py"),
        ("link-absolute", "/etc/hostname"),
        ("link-dangling", "no/such/target"),
        ("link-to-dir", "nested/a/b"),
        ("nested/a/b/c/up-link", "../../../../README"),
    ] {
        assert_eq!(ok_text(tool("readlink").arg(island.join(link))).trim_end(), target);
    }

    // Contents: cat, through symlinks, a script run from the mount, grep, diff.
    let init = ok(tool("cat").arg(island.join("email/__init__.py"))).stdout;
    assert_eq!(init, fs::read(src.join("email/__init__.py")).unwrap());
    mount.assert_read_path(mode);
    assert_eq!(ok(tool("cat").arg(island.join("link-relative"))).stdout, init);
    assert_eq!(
        ok_text(tool("cat").arg(island.join("link-to-dir/c/d/e/leaf.txt"))),
        "at the bottom of the chain\n"
    );
    assert_eq!(
        ok_text(tool("cat").arg(island.join("nested/a/b/c/up-link"))),
        "widgets: a test repository\n"
    );
    fails_with(
        tool("cat").arg(island.join("link-dangling")),
        "No such file or directory",
    );
    assert_eq!(
        ok_text(&mut Command::new(island.join("bin/hello.sh"))).trim_end(),
        SCRIPT_OUTPUT
    );
    let grep = ok_text(tool("grep").args(["-r", "-l", MARKER]).arg(&island));
    assert_eq!(grep.trim_end(), island.join("docs/notes.txt").to_string_lossy());
    let grep = ok_text(tool("grep").args(["-r", "-l", "def message_from_string"]).arg(&island));
    assert!(grep.contains("email/__init__.py"), "{grep}");
    let sums = |dir: &Path| {
        ok_text(&mut sh(
            "cd \"$1\" && find . -type f -print0 | sort -z | xargs -0 sha256sum",
            &[os(dir)],
        ))
    };
    assert_eq!(sums(&island), sums(&reference), "file contents differ");
    let diff = run_timeout(
        tool("diff")
            .args(["-r", "--no-dereference"])
            .arg(&reference)
            .arg(&island),
        TOOL_TIMEOUT,
    );
    assert_eq!(diff.status.code(), Some(0), "{}", report("diff -r", &diff));
    assert_same_tree(&reference, &island);

    // The lock: written on the first lookup, with this rev and the tree's two hashes.
    let (original, locked) = lock_entry(&world.lock_text(), "widgets").expect("a pin for widgets");
    assert_eq!(original, "<github:acme/widgets>");
    assert_eq!(config_value(&locked, "rev").as_deref(), Some(rev.as_str()), "{locked}");
    let hashes = cab_hash(&reference, None);
    assert_eq!(
        config_value(&locked, "hash").as_deref(),
        Some(hashes.tree.as_str()),
        "{locked}"
    );
    assert_eq!(
        config_value(&locked, "narHash").as_deref(),
        Some(hashes.nar.as_str()),
        "{locked}"
    );

    // xattrs: the island root carries the lock's hash, rev and literal; nodes carry their own hash.
    let xattrs = python(
        "import os, sys\n\
for p in sys.argv[1:]:\n    names = sorted(os.listxattr(p))\n    \
print(p, ' '.join(n + '=' + os.getxattr(p, n).decode() for n in names))\n",
        &[os(&island), os(&island.join("email")), os(&island.join("README"))],
    );
    let lines: Vec<&str> = xattrs.lines().collect();
    assert_eq!(lines.len(), 3, "{xattrs}");
    // A tree in the store is complete; one served from a remote while its files arrive is not.
    let expect_root = format!(
        "{} user.cab.complete=yes user.cab.hash={} user.cab.island={locked} user.cab.rev={rev}",
        island.display(),
        hashes.tree
    );
    assert_eq!(lines[0], expect_root);
    let email_hash = cab_hash(&reference.join("email"), None).tree;
    assert!(
        lines[1].starts_with(&format!(
            "{} user.cab.complete=yes user.cab.hash={email_hash} ",
            island.join("email").display()
        )),
        "a directory's user.cab.hash is its own tree hash ({email_hash}): {}",
        lines[1]
    );
    assert!(lines[1].contains(&format!("user.cab.rev={rev}")), "{}", lines[1]);
    assert!(lines[2].contains("user.cab.hash=blake3-"), "{}", lines[2]);
    if Path::new("/usr/bin/getfattr").exists() {
        let out = ok_text(
            tool("getfattr")
                .args(["--only-values", "-n", "user.cab.hash"])
                .arg(&island),
        );
        assert_eq!(out, hashes.tree);
    }

    // One fetch for the whole walk.
    assert_eq!(
        archives_at_least(&world, "acme/widgets", 1),
        1,
        "{:?}",
        world.forge.requests()
    );
    let log = mount.stop();
    assert_eq!(log.matches(": fetching").count(), 1, "{log}");
}

#[test]
fn real_repository_passthrough() {
    real_repository(Mode::Passthrough);
}

#[test]
fn real_repository_plain() {
    real_repository(Mode::Plain);
}

#[test]
fn real_repository_kernel() {
    real_repository(Mode::Kernel);
}

// ---------------------------------------------------------------------------------------------
// 2. Python imports a package from the mount
// ---------------------------------------------------------------------------------------------

fn python_import(mode: Mode) {
    let world = World::new("mount-python", &[]);
    let src = world.dir("src");
    python_tree(&src);
    world.push("acme/pylib", &src, "python packages");
    world.manifest("pylib = '<github:acme/pylib>'\n");
    let mount = world.mount(mode.args());
    mount.settle(mode, &world.at("pylib"));
    let lib = world.at("pylib/lib");
    let out = python(
        "import sys\n\
root = sys.argv[1]\n\
assert 'json' not in sys.modules\n\
sys.path.insert(0, root)\n\
import widgetlib, json, json.decoder\n\
for m in (widgetlib, widgetlib.geometry, json, json.decoder):\n    \
assert m.__file__.startswith(root + '/'), m.__file__\n\
print(widgetlib.area(6, 7), widgetlib.greet('mount'), json.dumps(json.loads('{\"b\": [1, 2.5, null], \"a\": true}'), sort_keys=True))\n",
        &[os(&lib)],
    );
    assert_eq!(out, "42 hello, mount {\"a\": true, \"b\": [1, 2.5, null]}\n");
    mount.assert_read_path(mode);
    // Python's attempt to write __pycache__ must have failed quietly, leaving the tree as pushed.
    assert!(!lib.join("widgetlib/__pycache__").exists());
    mount.stop();
}

#[test]
fn python_import_passthrough() {
    python_import(Mode::Passthrough);
}

#[test]
fn python_import_plain() {
    python_import(Mode::Plain);
}

#[test]
fn python_import_kernel() {
    python_import(Mode::Kernel);
}

// ---------------------------------------------------------------------------------------------
// 3. cargo builds a crate read from the mount
// ---------------------------------------------------------------------------------------------

fn cargo_build(mode: Mode) {
    let world = World::new("mount-cargo", &[]);
    let src = world.dir("src");
    rust_crate(&src);
    world.push("acme/hello", &src, "a crate");
    world.manifest("hello = '<github:acme/hello>'\n");
    let mount = world.mount(mode.args());
    let target = world.tmp.join("target");
    let krate = world.at("hello");
    ok(cargo()
        .args(["build", "--offline", "--locked", "--quiet", "--manifest-path"])
        .arg(krate.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&krate));
    mount.assert_read_path(mode);
    let out = ok_text(&mut Command::new(target.join("debug/island-hello")));
    assert_eq!(out, "built from an island area=42\n");
    // Nothing was written into the island (no Cargo.lock rewrite, no target/).
    assert!(!krate.join("target").exists());
    assert_same_tree(&src, &krate);
    mount.stop();
}

#[test]
fn cargo_build_passthrough() {
    cargo_build(Mode::Passthrough);
}

#[test]
fn cargo_build_plain() {
    cargo_build(Mode::Plain);
}

#[test]
fn cargo_build_kernel() {
    cargo_build(Mode::Kernel);
}

// ---------------------------------------------------------------------------------------------
// 4. Writes of any kind get EROFS
// ---------------------------------------------------------------------------------------------

fn writes_fail(mode: Mode) {
    let world = World::new("mount-erofs", &[]);
    let src = world.dir("src");
    write_file(&src.join("file.txt"), b"original\n", 0o644);
    write_file(&src.join("dir/inner"), b"inner\n", 0o644);
    world.push("acme/widgets", &src, "small");
    world.manifest("widgets = '<github:acme/widgets>'\n");
    let mount = world.mount(mode.args());
    let island = world.at("widgets");
    let file = island.join("file.txt");
    assert_eq!(read_text(&file), "original\n");

    for dir in [world.at(""), island.clone(), island.join("dir")] {
        fails_with(tool("touch").arg(dir.join("new-file")), READ_ONLY);
        fails_with(tool("mkdir").arg(dir.join("new-dir")), READ_ONLY);
        fails_with(tool("ln").arg("-s").arg("x").arg(dir.join("new-link")), READ_ONLY);
    }
    fails_with(tool("touch").arg(&file), READ_ONLY);
    fails_with(&mut sh("echo changed > \"$1\"", &[os(&file)]), READ_ONLY);
    fails_with(&mut sh("echo more >> \"$1\"", &[os(&file)]), READ_ONLY);
    fails_with(tool("rm").arg("-f").arg(&file), READ_ONLY);
    fails_with(tool("rm").arg("-rf").arg(island.join("dir")), READ_ONLY);
    fails_with(tool("rmdir").arg(island.join("dir")), READ_ONLY);
    fails_with(tool("mv").arg(&file).arg(island.join("moved.txt")), READ_ONLY);
    fails_with(tool("chmod").arg("0777").arg(&file), READ_ONLY);
    fails_with(tool("chmod").arg("0777").arg(&island), READ_ONLY);
    fails_with(tool("truncate").args(["-s", "0"]).arg(&file), READ_ONLY);
    fails_with(tool("ln").arg(&file).arg(island.join("hard")), READ_ONLY);
    fails_with(tool("rm").arg("-rf").arg(world.at("widgets")), READ_ONLY);

    // The same, as errno values.
    let erofs = Some(libc::EROFS);
    assert_eq!(errno_of(fs::OpenOptions::new().write(true).open(&file)), erofs);
    assert_eq!(
        errno_of(fs::OpenOptions::new().read(true).write(true).open(&file)),
        erofs
    );
    assert_eq!(errno_of(fs::File::create(island.join("created"))), erofs);
    assert_eq!(errno_of(fs::create_dir(island.join("made"))), erofs);
    assert_eq!(errno_of(fs::remove_file(&file)), erofs);
    assert_eq!(errno_of(fs::rename(&file, island.join("renamed"))), erofs);
    assert_eq!(
        errno_of(fs::set_permissions(&file, fs::Permissions::from_mode(0o644))),
        erofs
    );
    let setxattr = run_timeout(
        tool("python3")
            .arg("-c")
            .arg(
                "import os, sys\ntry:\n    os.setxattr(sys.argv[1], 'user.cab.hash', b'x')\n\
except OSError as e:\n    print(e.errno)\n",
            )
            .arg(&island),
        TOOL_TIMEOUT,
    );
    assert_eq!(text(&setxattr.stdout).trim(), libc::EROFS.to_string(), "setxattr");

    // Nothing changed.
    assert_eq!(read_text(&file), "original\n");
    assert_same_tree(&src, &island);
    mount.assert_read_path(mode);
    mount.stop();
}

#[test]
fn writes_fail_with_erofs_passthrough() {
    writes_fail(Mode::Passthrough);
}

#[test]
fn writes_fail_with_erofs_plain() {
    writes_fail(Mode::Plain);
}

#[test]
fn writes_fail_with_erofs_kernel() {
    writes_fail(Mode::Kernel);
}

// ---------------------------------------------------------------------------------------------
// 5. 32 processes read while the island is first fetched: one download, same bytes for all
// ---------------------------------------------------------------------------------------------

fn many_readers_one_fetch(mode: Mode) {
    const READERS: usize = 32;
    const SIZE: usize = 20 * 1024 * 1024 + 4321;
    // 4 MB/s: the fetch takes about five seconds, long enough for every reader to be waiting.
    let world = World::new(
        "mount-readers",
        &["--throttle", "4000000", "--throttle-path-regex", "archive"],
    );
    let src = world.dir("src");
    write_file(&src.join("bigfile"), &pseudo_random(SIZE, 20), 0o644);
    write_file(&src.join("small.txt"), b"small\n", 0o644);
    world.push("acme/big", &src, "big");
    world.manifest("big = '<github:acme/big>'\n");
    let want = ok_text(tool("sha256sum").arg(src.join("bigfile")));
    let want = want.split(' ').next().unwrap().to_owned();

    let mount = world.mount(mode.args());
    let big = world.at("big/bigfile");
    let started = Instant::now();
    let mut readers = Children(
        (0..READERS)
            .map(|i| {
                // Half hash the file directly, half read it with cat through a pipe.
                let mut cmd = if i % 2 == 0 {
                    tool("sha256sum")
                } else {
                    sh("cat \"$1\" | sha256sum", &[])
                };
                cmd.arg(&big)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    assert!(
        world.archives().is_empty(),
        "the download finished before all readers started; throttle harder"
    );
    for (i, child) in readers.0.iter_mut().enumerate() {
        let left = Duration::from_secs(90).saturating_sub(started.elapsed());
        let status = wait_child(child, left);
        assert!(
            status.is_some(),
            "reader {i} did not finish within 90 s\n{}",
            mount.log()
        );
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(status.unwrap().success(), "reader {i} failed: {err}");
        assert_eq!(
            out.split(' ').next(),
            Some(want.as_str()),
            "reader {i} read other bytes"
        );
    }
    mount.assert_read_path(mode);
    let archives = world.forge.requests_matching("/archive/", 1);
    assert_eq!(archives.len(), 1, "exactly one archive download: {archives:?}");
    assert!(archives[0].body_complete, "{archives:?}");
    assert!(archives[0].bytes_sent as usize > SIZE, "{archives:?}");
    let log = mount.stop();
    assert_eq!(log.matches(": fetching").count(), 1, "one realization:\n{log}");
}

#[test]
fn many_readers_one_fetch_passthrough() {
    many_readers_one_fetch(Mode::Passthrough);
}

#[test]
fn many_readers_one_fetch_plain() {
    many_readers_one_fetch(Mode::Plain);
}

#[test]
fn many_readers_one_fetch_kernel() {
    many_readers_one_fetch(Mode::Kernel);
}

// ---------------------------------------------------------------------------------------------
// 5b. A file held open while others open it (every build tool does this)
// ---------------------------------------------------------------------------------------------

fn concurrent_opens(mode: Mode) {
    let world = World::new("mount-opens", &[]);
    let src = world.dir("src");
    write_file(&src.join("a.txt"), b"first file\n", 0o644);
    write_file(&src.join("b.bin"), &pseudo_random(300_000, 3), 0o755);
    world.push("acme/widgets", &src, "two files");
    world.manifest("widgets = '<github:acme/widgets>'\n");
    let mount = world.mount(mode.args());
    for name in ["a.txt", "b.bin"] {
        let path = world.at(&format!("widgets/{name}"));
        let want = fs::read(src.join(name)).unwrap();
        // One after another, each closed before the next.
        for _ in 0..3 {
            assert_eq!(fs::read(&path).unwrap(), want);
        }
        // Several open at once, read in turn.
        let mut held = Vec::new();
        for i in 0..4 {
            let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open #{i} of {name} while {i} are open: {e}"));
            held.push(file);
        }
        for file in &mut held {
            let mut got = Vec::new();
            file.read_to_end(&mut got).unwrap();
            assert!(got == want, "{name} read back different bytes");
        }
    }
    mount.assert_read_path(mode);
    mount.stop();
}

#[test]
fn concurrent_opens_passthrough() {
    concurrent_opens(Mode::Passthrough);
}

#[test]
fn concurrent_opens_plain() {
    concurrent_opens(Mode::Plain);
}

#[test]
fn concurrent_opens_kernel() {
    concurrent_opens(Mode::Kernel);
}

// ---------------------------------------------------------------------------------------------
// 6. Updates: `cab mount --update`, `cab update`, unchanged islands cost no download
// ---------------------------------------------------------------------------------------------

fn archives_of(world: &World, repo: &str) -> usize {
    world
        .archives()
        .iter()
        .filter(|r| r.path.starts_with(&format!("/{repo}/")))
        .count()
}

/// Every request the forge has logged, once its log has been quiet for a moment (it logs a
/// request when it ends, e.g. when it notices the client went away); bounded.
fn settled_requests(world: &World) -> Vec<forge::Request> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = world.forge.requests().len();
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_millis(300) {
        thread::sleep(Duration::from_millis(50));
        let now = world.forge.requests().len();
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        }
    }
    world.forge.requests()
}

/// The number of archive requests for `repo`, once the forge has logged at least `n` (it logs
/// a request when it ends, which may be just after the client has its bytes).
fn archives_at_least(world: &World, repo: &str, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    while archives_of(world, repo) < n && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(100));
    archives_of(world, repo)
}

#[test]
fn update_moves_branches() {
    let world = World::new("mount-update", &[]);
    let src = world.dir("src");
    let gadgets = world.dir("gadgets");
    write_file(&src.join("version.txt"), b"1\n", 0o644);
    write_file(&gadgets.join("gadget.txt"), b"gadget\n", 0o644);
    let rev1 = world.push("acme/widgets", &src, "v1");
    let g1 = world.push("acme/gadgets", &gadgets, "g1");
    world.manifest("widgets = '<github:acme/widgets>'\ngadgets = '<github:acme/gadgets>'\n");

    // First mount pins both.
    let mount = world.mount(&[]);
    assert_eq!(read_text(&world.at("widgets/version.txt")), "1\n");
    assert_eq!(read_text(&world.at("gadgets/gadget.txt")), "gadget\n");
    mount.stop();
    let rev_of = |name: &str| world.locked(name).and_then(|l| config_value(&l, "rev"));
    assert_eq!(rev_of("widgets").as_deref(), Some(rev1.as_str()));
    assert_eq!(rev_of("gadgets").as_deref(), Some(g1.as_str()));
    assert_eq!(archives_at_least(&world, "acme/widgets", 1), 1);

    // A new commit on main: `cab mount --update` moves widgets only, then serves it.
    write_file(&src.join("version.txt"), b"2\n", 0o644);
    let rev2 = world.push("acme/widgets", &src, "v2");
    let mount = world.mount(&["--update"]);
    // Printed before mounting, on stdout, which is read on its own thread.
    mount.stdout.wait_for("→", Duration::from_secs(5));
    let moved = mount.stdout();
    assert_eq!(moved, format!("widgets: {rev1} → {rev2}\n"), "{}", mount.log());
    assert_eq!(rev_of("widgets").as_deref(), Some(rev2.as_str()));
    assert_eq!(rev_of("gadgets").as_deref(), Some(g1.as_str()));
    assert_eq!(read_text(&world.at("widgets/version.txt")), "2\n");
    assert_eq!(read_text(&world.at("gadgets/gadget.txt")), "gadget\n");
    let xattr = python(
        "import os, sys; print(os.getxattr(sys.argv[1], 'user.cab.rev').decode())",
        &[os(&world.at("widgets"))],
    );
    assert_eq!(xattr.trim(), rev2);
    mount.stop();
    assert_eq!(archives_at_least(&world, "acme/widgets", 2), 2);

    // `cab update` without a mount.
    write_file(&src.join("version.txt"), b"3\n", 0o644);
    let rev3 = world.push("acme/widgets", &src, "v3");
    let out = ok(world.cab().arg("update"));
    assert_eq!(
        text(&out.stdout),
        format!("widgets: {rev2} → {rev3}\n"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(rev_of("widgets").as_deref(), Some(rev3.as_str()));
    assert_eq!(rev_of("gadgets").as_deref(), Some(g1.as_str()));
    assert_eq!(archives_at_least(&world, "acme/widgets", 3), 3);

    // Nothing moved: nothing printed as moved, the lock unchanged. (That no archive is even
    // requested is `unchanged_islands_download_no_archive`.)
    let lock_before = world.lock_text();
    let out = ok(world.cab().arg("update"));
    assert_eq!(text(&out.stdout), "", "nothing moved: {}", text(&out.stderr));
    assert!(!text(&out.stderr).contains('→'), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("up to date"), "{}", text(&out.stderr));
    assert_eq!(world.lock_text(), lock_before);
    // `cab update NAME` touches only that island; an unknown name is an error.
    let out = ok(world.cab().args(["update", "gadgets"]));
    assert_eq!(text(&out.stdout), "");
    let out = run_timeout(world.cab().args(["update", "nope"]), TOOL_TIMEOUT);
    assert!(exited_nonzero(out.status), "{}", text(&out.stderr));
    assert_eq!(world.lock_text(), lock_before);

    // The new pin is what a plain mount serves, from the store: no request at all.
    let requests = settled_requests(&world);
    let mount = world.mount(&[]);
    assert_eq!(read_text(&world.at("widgets/version.txt")), "3\n");
    assert_eq!(read_text(&world.at("gadgets/gadget.txt")), "gadget\n");
    mount.stop();
    let after = settled_requests(&world);
    assert_eq!(
        after.len(),
        requests.len(),
        "a pinned, stored island needs no network: {after:#?}"
    );

    // An entry whose original no longer matches the manifest is repinned on its first lookup.
    let literal = "<github:acme/gadgets:{ ref = \"main\" }>";
    world.manifest(&format!("widgets = '<github:acme/widgets>'\ngadgets = '{literal}'\n"));
    let mount = world.mount(&[]);
    assert_eq!(read_text(&world.at("gadgets/gadget.txt")), "gadget\n");
    let (original, locked) = lock_entry(&world.lock_text(), "gadgets").unwrap();
    assert_eq!(original, literal);
    assert_eq!(config_value(&locked, "ref").as_deref(), Some("main"), "{locked}");
    assert_eq!(config_value(&locked, "rev").as_deref(), Some(g1.as_str()), "{locked}");
    assert_eq!(rev_of("widgets").as_deref(), Some(rev3.as_str()));
    mount.stop();
}

/// DESIGN.md: "This is what makes `cab mount --update` cost one round trip per unchanged
/// island" — the `git-rev` line comes before any download, so an island whose commit is
/// already stored must not even request its archive.
#[test]
fn unchanged_islands_download_no_archive() {
    let world = World::new("mount-unchanged", &[]);
    let src = world.dir("src");
    write_file(&src.join("data.bin"), &pseudo_random(2 << 20, 6), 0o644);
    world.push("acme/gadgets", &src, "g1");
    world.manifest("gadgets = '<github:acme/gadgets>'\n");
    let mount = world.mount(&[]);
    assert!(world.at("gadgets/data.bin").is_file());
    mount.stop();
    assert_eq!(archives_at_least(&world, "acme/gadgets", 1), 1);

    let mount = world.mount(&["--update"]);
    assert_eq!(mount.stdout(), "");
    assert!(world.at("gadgets/data.bin").is_file());
    mount.stop();
    let out = ok(world.cab().arg("update"));
    assert_eq!(text(&out.stdout), "");
    thread::sleep(Duration::from_millis(500));
    let archives = world.archives();
    assert_eq!(
        archives.len(),
        1,
        "an up-to-date island must cost one round trip, not an archive request: {archives:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Browsing: github/OWNER/REPO/REF without a manifest, by-hash, unknown names
// ---------------------------------------------------------------------------------------------

#[test]
fn browsing_github_and_by_hash() {
    let world = World::new("mount-browse", &[]);
    let src = world.dir("src");
    write_file(&src.join("hello.txt"), b"tagged\n", 0o644);
    write_file(&src.join("sub/deeper.txt"), b"deeper\n", 0o755);
    let tagged_rev = world.push("acme/widgets", &src, "release");
    forge::tag(&world.forge_root, "acme/widgets", "v1.0", &tagged_rev, true);
    write_file(&src.join("hello.txt"), b"browsed\n", 0o644);
    let rev = world.push("acme/widgets", &src, "browse me");
    // A local tree put in the store before mounting: by-hash serves it too.
    let local = world.dir("local");
    write_file(&local.join("local.txt"), b"from the store\n", 0o644);
    let stored = parse_hashes(&ok(world.cab().args(["store", "add"]).arg(&local)).stdout).tree;

    // No islands.toml at all.
    let mount = world.mount(&[]);
    assert!(mount.log().contains("mounted 0 islands"), "{}", mount.log());
    assert_eq!(
        ok_text(tool("ls").arg(world.at(""))).lines().collect::<Vec<_>>(),
        ["by-hash", "github", "gitlab", "sourcehut"]
    );
    // Listed before anything is fetched: these listings must change while mounted.
    assert_eq!(ok_text(tool("ls").arg(world.at("github"))), "");
    assert_eq!(ok_text(tool("ls").arg(world.at("by-hash"))).trim(), stored);
    let main = world.at("github/acme/widgets/main");
    assert_eq!(
        ok_text(tool("ls").arg(&main)).lines().collect::<Vec<_>>(),
        ["hello.txt", "sub"]
    );
    assert_eq!(read_text(&main.join("hello.txt")), "browsed\n");
    assert_same_tree(&world.reference("acme/widgets", &rev), &main);
    assert!(!world.project.join("islands.lock").exists(), "browsing pins nothing");
    let tagged = world.at("github/acme/widgets/v1.0");
    assert_eq!(read_text(&tagged.join("hello.txt")), "tagged\n");
    assert_same_tree(&world.reference("acme/widgets", &tagged_rev), &tagged);
    // A commit id is that commit: stored already (v1.0 is it), so no request at all.
    let requests = world.forge.requests().len();
    let by_commit = world.at(&format!("github/acme/widgets/{tagged_rev}"));
    assert_eq!(read_text(&by_commit.join("hello.txt")), "tagged\n");
    assert_same_tree(&tagged, &by_commit);
    assert_eq!(
        world.forge.requests().len(),
        requests,
        "a stored commit asked the forge"
    );
    // The browsing levels list what has been looked up (at the latest once the kernel's
    // short-lived copy of an earlier listing expires).
    eventually_lists(&world.at("github"), &["acme"]);
    assert_eq!(ok_text(tool("ls").arg(world.at("github/acme"))).trim(), "widgets");
    eventually_lists(&world.at("github/acme/widgets"), &["main", "v1.0"]);
    let xattr = |p: &Path, n: &str| {
        python(
            "import os, sys; print(os.getxattr(sys.argv[1], sys.argv[2]).decode())",
            &[os(p), OsStr::new(n)],
        )
        .trim()
        .to_owned()
    };
    assert_eq!(xattr(&main, "user.cab.rev"), rev);
    let tree = xattr(&main, "user.cab.hash");
    assert_eq!(tree, cab_hash(&src, None).tree);

    // by-hash lists every stored tree: the local one and the fetched ones.
    eventually_lists(&world.at("by-hash"), &[stored.as_str(), tree.as_str()]);
    let by_hash = world.at(&format!("by-hash/{tree}"));
    assert_eq!(
        ok_text(tool("ls").arg(&by_hash)).lines().collect::<Vec<_>>(),
        ["hello.txt", "sub"]
    );
    assert_same_tree(&main, &by_hash);
    assert_same_tree(&local, &world.at(&format!("by-hash/{stored}")));
    assert_eq!(xattr(&by_hash, "user.cab.hash"), tree);

    // Unknown names.
    for missing in [
        "nope".to_string(),
        "by-hash/not-a-hash".into(),
        format!("by-hash/blake3-{}", "0".repeat(64)),
        "github/acme/widgets/main/no-such-file".into(),
        "github/acme/widgets/main/sub/no-such-file".into(),
        format!("by-hash/{tree}/nope"),
    ] {
        let path = world.at(&missing);
        assert_eq!(errno_of(fs::symlink_metadata(&path)), Some(libc::ENOENT), "{missing}");
        fails_with(tool("ls").arg(&path), "No such file or directory");
    }
    // A ref or a commit that does not exist is a failed realization, not a hang.
    assert!(fs::metadata(world.at("github/acme/widgets/no-such-branch")).is_err());
    assert!(fs::metadata(world.at("github/acme/no-such-repo/main")).is_err());
    // main and v1.0, each fetched once however often looked at.
    assert_eq!(archives_at_least(&world, "acme/widgets", 2), 2);
    // (A commit id is asked for its archive straight away: one that does not exist fails.)
    let no_commit = format!("github/acme/widgets/{}", "0123456789".repeat(4));
    assert!(list(&world.at(&no_commit)).is_err());
    mount.stop();
}

/// Refs with `/` in their names are reached as git's ref namespace nests them: a prefix of
/// refs is a directory listing the refs under it; a repository's own level lists its default
/// branch; a name that is neither a ref nor a prefix is ENOENT. On every forge.
#[test]
fn browsing_refs_with_slashes() {
    let world = World::new("mount-refs", &[]);
    let src = world.dir("src");
    let mut revs = std::collections::BTreeMap::new();
    for repo in ["acme/refs", "group/sub/proj", "~me/refs"] {
        for branch in ["main", "release/1.2", "release/2.0", "feature/a/b"] {
            write_file(&src.join("which.txt"), format!("{branch}\n").as_bytes(), 0o644);
            let rev = forge::commit(&world.forge_root, repo, &src, branch, branch);
            revs.insert((repo, branch), rev);
        }
        forge::tag(&world.forge_root, repo, "v1", &revs[&(repo, "main")], false);
        // Tags count as branches do: one under a prefix of branches, annotated.
        forge::tag(&world.forge_root, repo, "release/3.0", &revs[&(repo, "main")], true);
    }
    let mount = world.mount(&[]);
    for (repo, at) in [
        ("acme/refs", "github/acme/refs"),
        ("group/sub/proj", "gitlab/group/sub/proj/-"),
        ("~me/refs", "sourcehut/~me/refs"),
    ] {
        let top = world.at(at);
        let ls = |dir: &Path| {
            ok_text(tool("ls").arg(dir))
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(ls(&top), ["main"], "{at}: the default branch");
        assert_eq!(ls(&top.join("release")), ["1.2", "2.0", "3.0"], "{at}/release");
        assert_eq!(ls(&top.join("feature")), ["a"], "{at}/feature");
        assert_eq!(ls(&top.join("feature/a")), ["b"], "{at}/feature/a");
        let b = top.join("feature/a/b");
        assert_eq!(read_text(&b.join("which.txt")), "feature/a/b\n");
        assert_same_tree(&world.reference(repo, &revs[&(repo, "feature/a/b")]), &b);
        assert_eq!(read_text(&top.join("release/1.2/which.txt")), "release/1.2\n");
        assert_eq!(read_text(&top.join("v1/which.txt")), "main\n");
        assert_eq!(read_text(&top.join("release/3.0/which.txt")), "main\n");
        assert_eq!(read_text(&top.join("main/which.txt")), "main\n");
        for missing in ["nope", "release/9.9", "feature/a/c", "feature/b", "release/1.2x"] {
            let path = top.join(missing);
            assert_eq!(
                errno_of(fs::symlink_metadata(&path)),
                Some(libc::ENOENT),
                "{at}/{missing}"
            );
        }
    }
    // A directory of refs is no failing island; the names that do not exist are.
    let out = run_timeout(
        world.cab().args(["status", "--json"]).arg(&world.mnt),
        Duration::from_secs(30),
    );
    let status: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let failed: Vec<&str> = status["failed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["place"].as_str())
        .collect();
    assert!(
        !failed
            .iter()
            .any(|p| p.ends_with("/release") || p.ends_with("/feature")),
        "{failed:?}"
    );
    assert!(failed.iter().any(|p| p.ends_with("/nope")), "{failed:?}");
    // A branch pushed while mounted shows up once the listing is asked again (it is kept
    // 30 s; the kernel's copy goes with it).
    let release = world.at("github/acme/refs/release");
    forge::commit(&world.forge_root, "acme/refs", &src, "release/3.1", "later");
    let pushed = Instant::now();
    let deadline = pushed + Duration::from_secs(45);
    while !ok_text(tool("ls").arg(&release)).lines().any(|n| n == "3.1") {
        assert!(Instant::now() < deadline, "release/3.1 never listed");
        thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "a new branch was listed {:.1} s after its push",
        pushed.elapsed().as_secs_f64()
    );
    mount.stop();
}

/// A repository with thousands of tags: its own level still lists only the default branch, in
/// one small round trip, and a prefix lists a bounded number of names.
#[test]
fn browsing_a_repository_with_thousands_of_tags() {
    let world = World::new("mount-many-tags", &[]);
    let src = world.dir("src");
    write_file(&src.join("a.txt"), b"a\n", 0o644);
    let rev = world.push("acme/many", &src, "main");
    let gitdir = world.forge_root.join("acme/many.git");
    let mut refs = String::new();
    for i in 0..5000 {
        refs.push_str(&format!(
            "create refs/tags/v{i}.0 {rev}\ncreate refs/tags/t/{i:04} {rev}\n"
        ));
    }
    let mut git = Command::new("git");
    git.arg("-C")
        .arg(&gitdir)
        .args(["update-ref", "--stdin"])
        .stdin(Stdio::piped());
    let mut child = git.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), refs.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        Command::new("git")
            .arg("-C")
            .arg(&gitdir)
            .arg("update-server-info")
            .status()
            .unwrap()
            .success()
    );
    let mount = world.mount(&[]);
    let repo = world.at("github/acme/many");
    let before = settled_requests(&world).len();
    let started = Instant::now();
    assert_eq!(ok_text(tool("ls").arg(&repo)).trim(), "main");
    let top = started.elapsed();
    let asked = &settled_requests(&world)[before..];
    assert_eq!(asked.len(), 1, "one ls-refs of HEAD: {asked:#?}");
    let started = Instant::now();
    assert!(repo.join("t").is_dir());
    let lookup = started.elapsed();
    let listed = ok_text(tool("ls").arg(repo.join("t")));
    let prefix = started.elapsed();
    thread::sleep(Duration::from_millis(1100));
    let started = Instant::now();
    assert!(repo.join("t").is_dir());
    let again = started.elapsed();
    assert_eq!(listed.lines().count(), 1000, "a prefix lists at most 1,000 names");
    assert_eq!(listed.lines().next(), Some("0000"));
    assert_eq!(
        read_text(&repo.join("t/4999/a.txt")),
        "a\n",
        "names past the listing's bound still resolve"
    );
    eprintln!(
        "ls REPO/ {:.1} ms; REPO/t (5,000 refs under it): lookup {:.1} ms, with ls {:.1} ms, looked up again {:.1} ms",
        top.as_secs_f64() * 1e3,
        lookup.as_secs_f64() * 1e3,
        prefix.as_secs_f64() * 1e3,
        again.as_secs_f64() * 1e3
    );
    mount.stop();
}

/// The mount's defaults come from the configuration file, and a flag overrides them.
#[test]
fn mount_defaults_from_the_config_file() {
    let world = World::new("mount-config", &[]);
    let src = world.dir("src");
    write_file(&src.join("a.txt"), b"configured\n", 0o644);
    world.push("acme/conf", &src, "x");
    world.manifest("conf = '<github:acme/conf>'\n");
    let config = world.tmp.join("config.toml");
    fs::write(&config, "passthrough = true\nthreads = 2\nkernel-serve = false\n").unwrap();
    for (flags, mode) in [(&[][..], Mode::Passthrough), (&["--no-passthrough"][..], Mode::Plain)] {
        let mut cmd = world.cab();
        cmd.env("CAB_CONFIG", &config).arg("mount").arg(&world.mnt).args(flags);
        let mount = Mount::start(cmd, &world.mnt);
        assert_eq!(read_text(&world.at("conf/a.txt")), "configured\n");
        mount.assert_read_path(mode);
        mount.stop();
    }
}

/// GitLab projects (nested groups; the ref after `-`, where GitLab's own URLs end a project's
/// path) and SourceHut repositories are browsed as GitHub's are.
#[test]
fn browsing_gitlab_and_sourcehut() {
    let world = World::new("mount-forges", &[]);
    let src = world.dir("src");
    write_file(&src.join("hello.txt"), b"from a forge\n", 0o644);
    write_file(&src.join("sub/run.sh"), b"#!/bin/sh\n", 0o755);
    let gitlab_rev = world.push("group/sub/proj", &src, "on gitlab");
    let sourcehut_rev = world.push("~me/thing", &src, "on sourcehut");
    let mount = world.mount(&[]);

    let gitlab = world.at("gitlab/group/sub/proj/-/main");
    assert_same_tree(&world.reference("group/sub/proj", &gitlab_rev), &gitlab);
    let sourcehut = world.at("sourcehut/~me/thing/main");
    assert_same_tree(&world.reference("~me/thing", &sourcehut_rev), &sourcehut);
    let rev_of = |p: &Path| {
        python(
            "import os, sys; print(os.getxattr(sys.argv[1], 'user.cab.rev').decode())",
            &[os(p)],
        )
        .trim()
        .to_owned()
    };
    assert_eq!(rev_of(&gitlab), gitlab_rev);
    assert_eq!(rev_of(&sourcehut), sourcehut_rev);
    eventually_lists(&world.at("gitlab/group/sub/proj"), &["-"]);
    eventually_lists(&world.at("gitlab/group/sub/proj/-"), &["main"]);
    eventually_lists(&world.at("sourcehut"), &["~me"]);
    // Names these forges cannot have, and refs that do not exist.
    for missing in [
        "gitlab/group/-",
        "gitlab/group/sub/proj/-/no-such-branch",
        "gitlab/group/sub/nothing/-/main",
        "sourcehut/me",
        "sourcehut/~me/thing/no-such-branch",
    ] {
        let path = world.at(missing);
        assert_eq!(errno_of(fs::symlink_metadata(&path)), Some(libc::ENOENT), "{missing}");
    }
    let archives: Vec<String> = world.archives().into_iter().map(|r| r.path).collect();
    assert!(
        archives.contains(&format!(
            "/group/sub/proj/-/archive/{gitlab_rev}/proj-{gitlab_rev}.tar.gz"
        )),
        "{archives:?}"
    );
    assert!(
        archives.contains(&format!("/~me/thing/archive/{sourcehut_rev}.tar.gz")),
        "{archives:?}"
    );
    mount.stop();
}

/// Waits (bounded: a few top-level TTLs) until `ls DIR` shows every name in `names`.
fn eventually_lists(dir: &Path, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listed = ok_text(tool("ls").arg(dir));
        let listed: Vec<&str> = listed.lines().collect();
        if names.iter().all(|n| listed.contains(n)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`ls {}` still shows {listed:?}, not {names:?}",
            dir.display()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// 8. A failing island fails alone, and is retried on the next lookup
// ---------------------------------------------------------------------------------------------

#[test]
fn failure_is_isolated_and_retried() {
    let world = World::new("mount-failure", &[]);
    let good = world.dir("good");
    write_file(&good.join("ok.txt"), b"good\n", 0o644);
    world.push("acme/good", &good, "good");
    world.manifest("good = '<github:acme/good>'\nbad = '<github:acme/missing>'\n");
    let mount = world.mount(&[]);

    let out = fails_with(tool("ls").arg(world.at("bad")), "Input/output error");
    // The island's directory exists (it is named); listing it is what fails.
    assert!(fs::metadata(world.at("bad")).unwrap().is_dir());
    assert_eq!(
        errno_of(list(&world.at("bad"))),
        Some(libc::EIO),
        "{}",
        text(&out.stderr)
    );
    assert!(
        mount.wait_log("<github:acme/missing>", Duration::from_secs(5)),
        "the log names the failed island\n{}",
        mount.log()
    );
    assert_eq!(ok_text(tool("cat").arg(world.at("good/ok.txt"))), "good\n");
    assert_eq!(
        ok_text(tool("ls").arg(world.at(""))),
        "bad\nby-hash\ngithub\ngitlab\ngood\nsourcehut\n"
    );
    assert!(world.locked("good").is_some());
    assert!(world.locked("bad").is_none(), "a failure pins nothing");

    // The failure is remembered for a moment: asking again and again costs the forge nothing.
    let asked = world
        .forge
        .settled_requests(Duration::from_millis(200), Duration::from_secs(5))
        .len();
    for _ in 0..50 {
        assert_eq!(errno_of(list(&world.at("bad"))), Some(libc::EIO));
    }
    assert_eq!(
        world.forge.requests().len(),
        asked,
        "a remembered failure asks the forge nothing"
    );

    // The repository appears: once the memory of the failure expires (seconds), the next look
    // tries again and succeeds.
    let fixed = world.dir("fixed");
    write_file(&fixed.join("now.txt"), b"fixed\n", 0o644);
    let rev = world.push("acme/missing", &fixed, "now it exists");
    let deadline = Instant::now() + Duration::from_secs(15);
    while list(&world.at("bad")).is_err() {
        assert!(Instant::now() < deadline, "not retried within 15 s\n{}", mount.log());
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        mount.log().contains("not tried again for"),
        "the log says how long it waits\n{}",
        mount.log()
    );
    assert_eq!(ok_text(tool("ls").arg(world.at("bad"))), "now.txt\n");
    assert_eq!(read_text(&world.at("bad/now.txt")), "fixed\n");
    let locked = world.locked("bad").expect("pinned after the retry");
    assert_eq!(config_value(&locked, "rev").as_deref(), Some(rev.as_str()));
    mount.stop();
}

// ---------------------------------------------------------------------------------------------
// 9. Lifecycle: signals, `cab unmount`, stale mounts
// ---------------------------------------------------------------------------------------------

#[test]
fn lifecycle_signals_unmount_and_stale_mounts() {
    let world = World::new("mount-lifecycle", &[]);
    let src = world.dir("src");
    write_file(&src.join("f.txt"), b"lifecycle\n", 0o644);
    world.push("acme/widgets", &src, "one");
    world.manifest("widgets = '<github:acme/widgets>'\n");
    let read = |w: &World| read_text(&w.at("widgets/f.txt"));

    // SIGTERM: unmounted, exit 0.
    let mount = world.mount(&[]);
    assert_eq!(read(&world), "lifecycle\n");
    mount.stop();
    assert!(
        !run_timeout(tool("mountpoint").arg("-q").arg(&world.mnt), TOOL_TIMEOUT)
            .status
            .success()
    );

    // SIGINT (Ctrl-C) too.
    let mut mount = world.mount(&[]);
    let (status, log) = mount.stop_with(libc::SIGINT);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("unmounted "), "{log}");
    assert!(!is_mounted(&world.mnt));

    // `cab unmount` of a live mount: the daemon sees it and exits 0.
    let mut mount = world.mount(&[]);
    assert_eq!(read(&world), "lifecycle\n");
    ok(world.cab().arg("unmount").arg(&world.mnt));
    let status = wait_child(&mut mount.child, STOP_TIMEOUT).expect("the daemon exits after `cab unmount`");
    assert_eq!(status.code(), Some(0), "{}", mount.log());
    assert!(!is_mounted(&world.mnt));
    drop(mount);

    // SIGKILL leaves a stale mount; `cab unmount` clears it.
    let mount = world.mount(&[]);
    assert_eq!(read(&world), "lifecycle\n");
    mount.kill9();
    assert!(is_mounted(&world.mnt), "a killed daemon leaves its mount behind");
    wait_stale(&world.mnt);
    fails_with(tool("stat").arg(&world.mnt), "Transport endpoint is not connected");
    let out = ok(world.cab().arg("unmount").arg(&world.mnt));
    assert!(text(&out.stderr).contains("stale"), "{}", text(&out.stderr));
    assert!(!is_mounted(&world.mnt));
    assert!(fs::metadata(&world.mnt).unwrap().is_dir());

    // The same point mounts again, served from the store (pinned, nothing downloaded).
    let mount = world.mount(&[]);
    assert_eq!(read(&world), "lifecycle\n");
    mount.kill9();
    wait_stale(&world.mnt);

    // `cab mount` directly on a stale point clears it and mounts.
    let mount = world.mount(&[]);
    assert_eq!(read(&world), "lifecycle\n");
    assert!(mount.log().contains("stale"), "{}", mount.log());
    mount.stop();
    assert_eq!(
        archives_at_least(&world, "acme/widgets", 1),
        1,
        "one download for all five mounts"
    );
    assert!(!is_mounted(&world.mnt));
}

/// Waits (bounded) until stat on `mnt` fails with ENOTCONN. The kernel may answer from the
/// root's cached attributes for up to their TTL after the daemon died.
fn wait_stale(mnt: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let errno = errno_of(fs::metadata(mnt));
        if errno == Some(libc::ENOTCONN) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stat {} gives {errno:?}, not ENOTCONN",
            mnt.display()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM while something in the mount is busy (a file held open) must still end in a clean
/// unmount and exit 0 — at the latest once the holder lets go — not a daemon that stays up.
#[test]
fn sigterm_while_a_file_is_open() {
    let world = World::new("mount-busy", &[]);
    let src = world.dir("src");
    write_file(&src.join("f.txt"), b"held open\n", 0o644);
    world.push("acme/widgets", &src, "one");
    world.manifest("widgets = '<github:acme/widgets>'\n");
    let mut mount = world.mount(&[]);
    let file = world.at("widgets/f.txt");
    assert_eq!(read_text(&file), "held open\n");
    // Holds the file open for two seconds.
    let mut holder = sh("exec sleep 2 < \"$1\"", &[os(&file)]).spawn().unwrap();
    thread::sleep(Duration::from_millis(300));
    signal(&mount.child, libc::SIGTERM);
    assert!(wait_child(&mut holder, Duration::from_secs(10)).is_some());
    // A second request to stop, as a user would send on seeing the daemon still up.
    thread::sleep(Duration::from_millis(500));
    let (status, log) = mount.stop_with(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("unmounted "), "{log}");
    assert!(!is_mounted(&world.mnt));
}

#[test]
fn mount_refuses_a_live_mount_point() {
    let world = World::new("mount-twice", &[]);
    let mount = world.mount(&[]);
    let mut second = world.cab();
    second.arg("mount").arg(&world.mnt);
    let what = describe(&second);
    let out = run_timeout(&mut second, Duration::from_secs(30));
    assert!(exited_nonzero(out.status), "{}", report(&what, &out));
    assert!(
        text(&out.stderr).contains("is mounted by cab already"),
        "{}",
        report(&what, &out)
    );
    // The first mount is unharmed.
    assert_eq!(
        ok_text(tool("ls").arg(world.at(""))).lines().collect::<Vec<_>>(),
        ["by-hash", "github", "gitlab", "sourcehut"]
    );
    mount.stop();
}

// ---------------------------------------------------------------------------------------------
// 10. Names the mount needs for itself are refused before mounting
// ---------------------------------------------------------------------------------------------

#[test]
fn reserved_and_bad_names_are_refused() {
    let world = World::new("mount-names", &[]);
    for (manifest, words) in [
        ("github = '<github:a/b>'\n", &["github", "reserved"][..]),
        ("by-hash = '<github:a/b>'\n", &["by-hash", "reserved"][..]),
        ("sourcehut = '<github:a/b>'\n", &["sourcehut", "reserved"][..]),
        (
            "ok = '<github:a/b>'\n\"a/b\" = '<github:a/b>'\n",
            &["a/b", "path component"][..],
        ),
    ] {
        world.manifest(manifest);
        let mut cmd = world.cab();
        cmd.arg("mount").arg(&world.mnt);
        let what = describe(&cmd);
        let out = run_timeout(&mut cmd, Duration::from_secs(30));
        let all = report(&what, &out);
        assert!(exited_nonzero(out.status), "must be refused: {all}");
        let err = text(&out.stderr);
        assert!(err.contains("error:"), "{all}");
        for word in words {
            assert!(err.contains(word), "the error must say {word:?}: {all}");
        }
        assert!(!err.contains("mounted"), "refused before mounting: {all}");
        assert!(!err.contains("panicked"), "{all}");
        assert!(!is_mounted(&world.mnt));
        // `cab update` refuses the same manifest.
        let out = run_timeout(world.cab().arg("update"), Duration::from_secs(30));
        assert!(exited_nonzero(out.status), "update must refuse {manifest:?} too");
    }
    assert!(world.forge.requests().is_empty(), "nothing fetched");
}

/// The log names the plain read path, the default (docs/DESIGN.md, "Read paths").
#[test]
fn plain_read_path_is_logged() {
    let world = World::new("mount-plain-log", &[]);
    let src = world.dir("src");
    write_file(&src.join("f.txt"), b"plain\n", 0o644);
    world.push("acme/widgets", &src, "one");
    world.manifest("widgets = '<github:acme/widgets>'\n");
    let mount = world.mount(Mode::Plain.args());
    assert_eq!(read_text(&world.at("widgets/f.txt")), "plain\n");
    assert!(
        mount.wait_log(PLAIN_LINE, Duration::from_secs(10)),
        "expected `{PLAIN_LINE}` in the log\n{}",
        mount.log()
    );
    assert!(!mount.log().contains(PASSTHROUGH_LINE));
    mount.stop();
}

/// Read-ahead by directory: a walk that reads nothing pushes nothing; the first read in a
/// directory pushes the small files beside it into the page cache, and what is read after
/// that is byte for byte the files' contents. `--no-read-ahead` turns it off.
#[test]
fn read_ahead_pushes_for_readers_not_for_walks() {
    let world = World::new("mount-read-ahead", &[]);
    let src = world.dir("src");
    for i in 0..20 {
        write_file(
            &src.join(format!("pkg/m{i:02}.py")),
            &pseudo_random(3000 + i * 100, i as u64),
            0o644,
        );
    }
    write_file(&src.join("pkg/big.bin"), &pseudo_random(600 * 1024, 99), 0o644);
    write_file(&src.join("other/x.txt"), b"other\n", 0o644);
    world.push("acme/widgets", &src, "one");
    world.manifest("widgets = '<github:acme/widgets>'\n");
    let pushed = |log: &str| log.lines().filter(|l| l.contains("read-ahead: pushed")).count();

    let mount = world.mount(&["-vv", "--no-kernel-serve"]);
    let found = ok_text(tool("find").arg(world.at("widgets")));
    assert_eq!(found.lines().count(), 25, "{found}");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(pushed(&mount.log()), 0, "a walk pushes nothing\n{}", mount.log());
    assert_eq!(
        fs::read(world.at("widgets/pkg/m00.py")).unwrap(),
        fs::read(src.join("pkg/m00.py")).unwrap()
    );
    assert!(
        mount.wait_log("read-ahead: pushed 19 files", Duration::from_secs(10)),
        "the first read pushes the 19 small files beside it (not the 600 KiB one)\n{}",
        mount.log()
    );
    for entry in fs::read_dir(src.join("pkg")).unwrap() {
        let name = entry.unwrap().file_name();
        assert_eq!(
            fs::read(world.at("widgets/pkg").join(&name)).unwrap(),
            fs::read(src.join("pkg").join(&name)).unwrap(),
            "{name:?}"
        );
    }
    mount.stop();

    let mount = world.mount(&["-vv", "--no-read-ahead", "--no-kernel-serve"]);
    assert_eq!(read_text(&world.at("widgets/other/x.txt")), "other\n");
    let _ = ok_text(
        tool("cat")
            .args(["-"])
            .stdin(fs::File::open(world.at("widgets/pkg/m01.py")).unwrap()),
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        pushed(&mount.log()),
        0,
        "--no-read-ahead pushes nothing\n{}",
        mount.log()
    );
    mount.stop();
}

// ---------------------------------------------------------------------------------------------
// Started like other mounts: systemd's notifications, --daemon, mount -t fuse
// ---------------------------------------------------------------------------------------------

/// The pid the daemon's `--daemon` line names ("cab mount runs as pid N, …").
fn daemon_pid(stderr: &str) -> i32 {
    let at = stderr.find("runs as pid ").expect("the daemon's pid") + "runs as pid ".len();
    stderr[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn gone_within(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    // SAFETY: signal 0 only asks whether the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn a_mount_starts_as_service_managers_and_fstab_start_mounts() {
    let world = World::new("service", &[]);
    let src = world.dir("src");
    write_file(&src.join("hello.txt"), b"hello\n", 0o644);
    world.push("acme/svc", &src, "one");
    world.manifest("svc = '<github:acme/svc>'\n");

    // Type=notify: READY=1 once the mount answers, STOPPING=1 on the way down.
    let socket_path = world.tmp.join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut cmd = world.cab();
    cmd.env("NOTIFY_SOCKET", &socket_path).arg("mount").arg(&world.mnt);
    let mut mount = Mount::start(cmd, &world.mnt);
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("READY=1");
    let said = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        said.starts_with("READY=1\n") && said.contains("STATUS=serving 1 islands"),
        "{said:?}"
    );
    assert!(is_mounted(&world.mnt));
    assert_eq!(read_text(&world.at("svc/hello.txt")), "hello\n");
    let (status, log) = mount.stop_with(libc::SIGTERM);
    assert!(status.success(), "{log}");
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");

    // --daemon: back once the mount answers, the daemon left running; `cab unmount` ends it.
    let log = world.tmp.join("daemon.log");
    let mut cmd = world.cab();
    cmd.args(["mount", "--daemon", "--log"]).arg(&log).arg(&world.mnt);
    let out = run_timeout(&mut cmd, Duration::from_secs(120));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("mounted 1 islands at"), "{stderr}");
    let pid = daemon_pid(&stderr);
    assert_eq!(read_text(&world.at("svc/hello.txt")), "hello\n");
    run_ok(world.cab().arg("unmount").arg(&world.mnt));
    assert!(
        gone_within(pid, Duration::from_secs(30)),
        "the daemon outlived its mount"
    );
    assert!(!is_mounted(&world.mnt));
    assert!(read_text(&log).contains("unmounted"), "{}", read_text(&log));

    // A daemon that cannot mount says why, and fails.
    let mut cmd = world.cab();
    cmd.args(["mount", "--daemon", "--log"])
        .arg(&log)
        .arg(world.tmp.join("no-such-dir"));
    let out = run_timeout(&mut cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the mount ended before it was up"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("no-such-dir"), "{}", text(&out.stderr));

    // mount(8) through mount.fuse3, as an fstab line would: `PROGRAM#SOURCE` (a `fuse.cab`
    // type finds `cab` on mount's own PATH instead), options mapped to settings.
    let source = format!(
        "{}#{}",
        env!("CARGO_BIN_EXE_cab"),
        world.project.join("islands.toml").display()
    );
    let options = format!(
        "ro,nosuid,nodev,store={},threads=2,no_read_ahead,log={}",
        world.store.display(),
        world.tmp.join("fstab.log").display()
    );
    let mut cmd = tool("mount");
    cmd.args(["-t", "fuse", &source])
        .arg(&world.mnt)
        .args(["-o", &options])
        .env("CAB_GITHUB_URL", world.forge.url());
    let out = run_timeout(&mut cmd, Duration::from_secs(120));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let pid = daemon_pid(&stderr);
    assert_eq!(read_text(&world.at("svc/hello.txt")), "hello\n");
    let fstype = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(world.mnt.to_str().unwrap()))
        .map(|l| l.split(" - ").nth(1).unwrap_or("").to_owned())
        .unwrap_or_default();
    assert!(fstype.starts_with("fuse.cab "), "{fstype}");
    // Recursively: the islands the kernel serves are mounts below it.
    ok(tool("umount").arg("-R").arg(&world.mnt));
    assert!(gone_within(pid, Duration::from_secs(30)), "the daemon outlived umount");

    // An option cab does not have is refused by name.
    let mut cmd = tool("mount");
    cmd.args(["-t", "fuse", &source])
        .arg(&world.mnt)
        .args(["-o", "colour=blue"]);
    let out = run_timeout(&mut cmd, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--colour"), "{}", text(&out.stderr));
    assert!(!is_mounted(&world.mnt));
}

#[test]
fn cab_status_says_what_each_mount_serves_and_does() {
    let world = World::new(
        "status",
        &["--throttle", "20000", "--throttle-path-regex", "acme/slow/archive"],
    );
    let src = world.dir("src");
    write_file(&src.join("hello.txt"), b"hello\n", 0o644);
    world.push("acme/good", &src, "one");
    write_file(&src.join("big.bin"), &pseudo_random(2 << 20, 5), 0o644);
    let slow_rev = world.push("acme/slow", &src, "slow");
    world.manifest("good = '<github:acme/good>'\nslow = '<github:acme/slow>'\nbad = '<github:acme/missing>'\n");
    let status = |args: &[&str]| {
        let out = run_timeout(world.cab().arg("status").args(args), Duration::from_secs(30));
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert!(status(&[]).contains("no cab mount is running"), "{}", status(&[]));

    let mount = world.mount(&[]);
    assert_eq!(read_text(&world.at("good/hello.txt")), "hello\n");
    assert!(list(&world.at("bad")).is_err());
    // A reader waiting for the slow island's archive (it trickles out).
    let slow = world.at("slow");
    let reader = thread::spawn(move || list(&slow).map(|l| l.len()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let said = loop {
        let said = status(&[]);
        let both = said.contains("slow: fetching (commit") && said.contains("downloading <github:acme/slow>: ");
        if both || Instant::now() > deadline {
            break said;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let mnt = world.mnt.display().to_string();
    for needle in [
        format!("{mnt} (pid "),
        "good: blake3-".to_owned(),
        format!("slow: fetching (commit {slow_rev})"),
        "bad: FAILED (".to_owned(),
        "downloading <github:acme/slow>: ".to_owned(),
        "acme/missing".to_owned(),
        "3 named islands".to_owned(),
    ] {
        assert!(said.contains(&needle), "{needle:?} in\n{said}");
    }
    // As JSON, for one mount point.
    let json: serde_json::Value = serde_json::from_str(status(&["--json", &mnt]).trim()).unwrap();
    assert_eq!(json["mountpoint"], mnt.as_str());
    assert_eq!(json["served"][0]["place"], "good");
    assert!(
        json["served"][0]["served_by"]
            .as_str()
            .is_some_and(|s| s == "kernel" || s == "fuse")
    );
    assert_eq!(json["failed"][0]["place"], "bad");
    // The socket is the owner's alone.
    let socket = world.store.join(format!("control/{}.sock", json["pid"]));
    assert_eq!(fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    // A mount point without a cab mount is an error.
    let out = run_timeout(
        world.cab().args(["status"]).arg(world.tmp.join("elsewhere")),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no cab mount at"), "{}", text(&out.stderr));
    mount.stop();
    let _ = reader.join();
    assert!(status(&[]).contains("no cab mount is running"), "{}", status(&[]));
}
