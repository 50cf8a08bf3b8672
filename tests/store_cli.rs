//! `cab store add / export / verify / ls` through the real binary, each test with its own store.
//!
//! The contract: what goes in comes out bit-identical (contents, executable bits, symlinks),
//! hashes agree with `cab hash` and with real Nix, identical contents are stored once, damage
//! on disk is detected, a crash before publishing publishes nothing, and concurrent writers
//! do not step on each other.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;

use common::*;

/// SIGABRT on Linux, as raised by `std::process::abort`.
const SIGABRT: i32 = 6;

/// A store in its own temp dir, driven through `cab --store DIR store …`.
struct Store {
    _tmp: TempDir,
    dir: PathBuf,
}

impl Store {
    fn new(label: &str) -> Store {
        let tmp = TempDir::new(label);
        let dir = tmp.join("store");
        Store { _tmp: tmp, dir }
    }

    /// `cab --store DIR store ARGS…`
    fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = cab();
        cmd.arg("--store").arg(&self.dir).arg("store").args(args);
        cmd
    }

    fn add(&self, path: &Path) -> Hashes {
        parse_hashes(&run_ok(&mut self.cmd([OsStr::new("add"), path.as_os_str()])).stdout)
    }

    fn export(&self, tree: &str, dest: &Path) -> Output {
        run(&mut self.cmd([OsStr::new("export"), OsStr::new(tree), dest.as_os_str()]))
    }

    fn export_ok(&self, tree: &str, dest: &Path) {
        let mut cmd = self.cmd([OsStr::new("export"), OsStr::new(tree), dest.as_os_str()]);
        run_ok(&mut cmd);
    }

    fn ls(&self) -> Vec<String> {
        let out = run_ok(&mut self.cmd(["ls"]));
        let listed: Vec<String> = text(&out.stdout).lines().map(|l| l.trim().to_string()).collect();
        for line in &listed {
            tree_hex(line);
        }
        listed
    }

    fn verify_ok(&self) {
        run_ok(&mut self.cmd(["verify"]));
    }

    /// Every blob file: `blobs/<2 hex>/<62 hex>`.
    fn blobs(&self) -> Vec<PathBuf> {
        files_under(&self.dir.join("blobs"))
    }

    /// The hex name of a blob file (its two path components joined).
    fn blob_hex(blob: &Path) -> String {
        let dir = blob.parent().unwrap().file_name().unwrap().to_string_lossy();
        let file = blob.file_name().unwrap().to_string_lossy();
        let hex = format!("{dir}{file}");
        assert!(
            dir.len() == 2 && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "blob {} is not at blobs/<2 hex>/<62 hex>",
            blob.display()
        );
        hex
    }

    /// Staging directories left in `STORE/tmp/`.
    fn staging_dirs(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(self.dir.join("tmp")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| !p.is_symlink() && p.is_dir())
            .collect()
    }
}

/// `cab hash PATH`, for comparing with what `cab store add` prints.
fn hash_of(path: &Path) -> Hashes {
    cab_hash(path, None)
}

/// The full round trip on one tree: add, check hashes (cab hash, Nix), verify, ls, export,
/// compare the export with the source three ways (walk, diff, re-hash).
fn round_trip(store: &Store, src: &Path, out_dir: &Path) -> Hashes {
    let added = store.add(src);
    assert_eq!(added, hash_of(src), "`cab store add` must print what `cab hash` prints");
    assert_eq!(
        added.nar,
        nix_hash(src, None),
        "`cab store add` NAR hash differs from Nix"
    );
    store.verify_ok();
    assert!(
        store.ls().contains(&added.tree),
        "`cab store ls` does not list {}",
        added.tree
    );

    let dest = out_dir.join("exported");
    store.export_ok(&added.tree, &dest);
    assert_same_tree(src, &dest);
    assert_eq!(hash_of(&dest), added, "the exported tree hashes differently");
    assert_eq!(
        nix_hash(&dest, None),
        added.nar,
        "Nix hashes the exported tree differently"
    );
    added
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

/// Every edge case a store can hold, plus a few-MiB file, in one tree.
#[test]
fn round_trip_edge_cases() {
    let store = Store::new("store-edge");
    let work = TempDir::new("store-edge-work");
    let src = work.join("src");
    edge::everything(&src);
    round_trip(&store, &src, work.path());
}

/// A real tree: a Python standard-library package.
#[test]
fn round_trip_real_python_package() {
    let store = Store::new("store-python");
    let work = TempDir::new("store-python-work");
    round_trip(&store, &python_package("email"), work.path());
}

/// `--json` prints the same two values as `cab hash --json`.
#[test]
fn add_json_matches_hash_json() {
    let store = Store::new("store-json");
    let work = TempDir::new("store-json-work");
    let src = work.join("src");
    edge::symlinks(&src);
    let out = run_ok(&mut store.cmd([OsStr::new("add"), OsStr::new("--json"), src.as_os_str()]));
    assert_eq!(parse_json_hashes(&out.stdout), cab_hash_json(&src));
}

/// `CAB_STORE` selects the store like `--store` does.
#[test]
fn cab_store_env_selects_the_store() {
    let store = Store::new("store-env");
    let work = TempDir::new("store-env-work");
    let src = work.join("src");
    edge::exec_bits(&src);
    let mut cmd = cab();
    cmd.env("CAB_STORE", &store.dir).args(["store", "add"]).arg(&src);
    let added = parse_hashes(&run_ok(&mut cmd).stdout);
    assert!(
        store.ls().contains(&added.tree),
        "a tree added via CAB_STORE is not in --store's listing"
    );
}

/// `ls` lists every published tree, one per line.
#[test]
fn ls_lists_every_tree() {
    let store = Store::new("store-ls");
    let work = TempDir::new("store-ls-work");
    let (a, b, c) = (work.join("a"), work.join("b"), work.join("c"));
    edge::symlinks(&a);
    edge::sort_order(&b);
    edge::empties(&c);
    let mut expected: Vec<String> = [&a, &b, &c].iter().map(|p| store.add(p).tree).collect();
    expected.sort();
    let mut listed = store.ls();
    listed.sort();
    assert_eq!(listed, expected);
}

// ---------------------------------------------------------------------------------------------
// Content addressing: the same content is stored once.
// ---------------------------------------------------------------------------------------------

/// Adding the same tree twice gives the same hash and no new blobs.
#[test]
fn adding_twice_is_idempotent() {
    let store = Store::new("store-twice");
    let work = TempDir::new("store-twice-work");
    let src = work.join("src");
    edge::many_small(&src, 300);
    edge::symlinks(&src.join("links"));
    let first = store.add(&src);
    let blobs = store.blobs();
    assert!(
        !blobs.is_empty(),
        "no blobs under {}/blobs after an add",
        store.dir.display()
    );
    let second = store.add(&src);
    assert_eq!(first, second);
    assert_eq!(store.blobs(), blobs, "adding the same tree again changed the blobs");
    assert_eq!(store.ls(), vec![first.tree], "the tree must be listed exactly once");
    store.verify_ok();
}

/// Two identical files (different names, directories and modes) are one blob.
#[test]
fn identical_files_share_one_blob() {
    let work = TempDir::new("store-dedup-work");
    let content = pseudo_random(100_000, 42);
    let single = work.join("single");
    write_file(&single.join("x.bin"), &content, 0o644);
    let double = work.join("double");
    write_file(&double.join("x.bin"), &content, 0o644);
    write_file(&double.join("sub/copy-of-x.bin"), &content, 0o755);

    let store1 = Store::new("store-dedup-1");
    store1.add(&single);
    let store2 = Store::new("store-dedup-2");
    store2.add(&double);
    // Directory listings (if they are blobs) add one per directory; file contents must not.
    let dirs_in_double = 2;
    let dirs_in_single = 1;
    let n1 = store1.blobs().len();
    let n2 = store2.blobs().len();
    assert!(
        n2 == n1 || n2 == n1 + (dirs_in_double - dirs_in_single),
        "a tree with one file stored {n1} blobs, the same plus an identical copy stored {n2}"
    );
    let holding: Vec<PathBuf> = store2
        .blobs()
        .into_iter()
        .filter(|b| fs::read(b).is_ok_and(|bytes| bytes == content))
        .collect();
    assert_eq!(
        holding.len(),
        1,
        "the shared contents must be exactly one blob, found {holding:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

/// A byte flipped in a blob on disk is caught by `verify`, which names the blob's hash.
#[test]
fn verify_detects_a_corrupt_blob() {
    let store = Store::new("store-corrupt");
    let work = TempDir::new("store-corrupt-work");
    let src = work.join("src");
    let victim = pseudo_random(64 * 1024 + 3, 7);
    write_file(&src.join("victim.bin"), &victim, 0o644);
    write_file(&src.join("bystander.txt"), b"left alone\n", 0o644);
    store.add(&src);
    store.verify_ok();

    let blob = store
        .blobs()
        .into_iter()
        .find(|b| fs::read(b).is_ok_and(|bytes| bytes == victim))
        .expect("no blob holds the file's contents (expected raw blobs at blobs/<2 hex>/<62 hex>)");
    let hex = Store::blob_hex(&blob);
    let mode = fs::metadata(&blob).unwrap().permissions().mode();
    fs::set_permissions(&blob, fs::Permissions::from_mode(mode | 0o200)).unwrap();
    let mut bytes = fs::read(&blob).unwrap();
    bytes[1000] ^= 0x01;
    fs::write(&blob, &bytes).unwrap();
    fs::set_permissions(&blob, fs::Permissions::from_mode(mode)).unwrap();

    let mut cmd = store.cmd(["verify"]);
    let what = describe(&cmd);
    let out = run_fail(&mut cmd);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(
        all.contains(&hex),
        "verify should name the corrupt blob {hex}: {}",
        report(&what, &out)
    );
}

// ---------------------------------------------------------------------------------------------
// Crash safety
// ---------------------------------------------------------------------------------------------

/// Killed after writing every object but before publishing: nothing is published, the next
/// add succeeds, and the crashed run's staging is cleaned up.
#[test]
fn crash_before_publish_publishes_nothing() {
    let store = Store::new("store-crash");
    let work = TempDir::new("store-crash-work");
    let src = work.join("src");
    edge::many_small(&src, 200);
    edge::symlinks(&src.join("links"));
    let expected = hash_of(&src);

    let mut cmd = store.cmd([OsStr::new("add"), src.as_os_str()]);
    // Run from the work dir so a core dump, if enabled, does not land in the repository.
    cmd.env("CAB_FAILPOINT", "store-before-publish")
        .current_dir(work.path());
    let what = describe(&cmd);
    let out = run(&mut cmd);
    assert_eq!(
        out.status.signal(),
        Some(SIGABRT),
        "expected an abort (SIGABRT): {}",
        report(&what, &out)
    );
    let left_by_crash = store.staging_dirs();

    assert!(
        !store.ls().contains(&expected.tree),
        "a tree was published although the add crashed"
    );
    let dest = work.join("should-not-exist");
    let out = store.export(&expected.tree, &dest);
    assert!(
        exited_nonzero(out.status),
        "export of an unpublished tree succeeded: {}",
        report("export", &out)
    );
    assert!(
        text(&out.stderr).contains("not in the store"),
        "{}",
        report("export", &out)
    );

    let added = store.add(&src);
    assert_eq!(added, expected);
    let remaining = store.staging_dirs();
    assert!(
        remaining.is_empty(),
        "staging left in {}/tmp after the next add: {remaining:?} (the crash left {left_by_crash:?})",
        store.dir.display()
    );
    assert_eq!(store.ls(), vec![expected.tree.clone()]);
    store.verify_ok();
    let dest = work.join("exported");
    store.export_ok(&expected.tree, &dest);
    assert_same_tree(&src, &dest);
}

// ---------------------------------------------------------------------------------------------
// Export errors
// ---------------------------------------------------------------------------------------------

/// Exporting a hash the store does not hold fails, says so, and creates nothing.
#[test]
fn export_unknown_hash_fails() {
    let store = Store::new("store-unknown");
    let work = TempDir::new("store-unknown-work");
    let (present, absent) = (work.join("present"), work.join("absent"));
    edge::symlinks(&present);
    edge::sort_order(&absent);
    store.add(&present);
    let missing = hash_of(&absent).tree;

    let dest = work.join("dest");
    let out = store.export(&missing, &dest);
    assert!(
        exited_nonzero(out.status),
        "{}",
        report("export of an unknown hash", &out)
    );
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(
        all.contains("not in the store"),
        "{}",
        report("export of an unknown hash", &out)
    );
    assert!(
        !dest.exists() && !dest.is_symlink(),
        "a failed export left {}",
        dest.display()
    );
}

/// Export refuses to write into a directory that already exists, and leaves it alone.
#[test]
fn export_into_existing_dir_fails() {
    let store = Store::new("store-existing");
    let work = TempDir::new("store-existing-work");
    let src = work.join("src");
    edge::exec_bits(&src);
    let added = store.add(&src);

    let dest = work.join("already-here");
    write_file(&dest.join("keep-me"), b"precious\n", 0o644);
    let out = store.export(&added.tree, &dest);
    assert!(
        exited_nonzero(out.status),
        "{}",
        report("export into an existing dir", &out)
    );
    let names: Vec<_> = fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["keep-me"], "export touched the existing directory");
    assert_eq!(fs::read(dest.join("keep-me")).unwrap(), b"precious\n");

    let empty = work.join("empty-but-existing");
    mkdir(&empty);
    let out = store.export(&added.tree, &empty);
    assert!(
        exited_nonzero(out.status),
        "{}",
        report("export into an existing empty dir", &out)
    );
}

/// A tree the store cannot hold (a FIFO inside) is refused, named, and not published.
#[test]
fn add_rejects_a_fifo() {
    let store = Store::new("store-fifo");
    let work = TempDir::new("store-fifo-work");
    let src = work.join("src");
    write_file(&src.join("ok.txt"), b"fine\n", 0o644);
    mkdir(&src.join("sub"));
    mkfifo(&src.join("sub/a-fifo"));
    let mut cmd = store.cmd([OsStr::new("add"), src.as_os_str()]);
    let what = describe(&cmd);
    let out = run_fail(&mut cmd);
    assert!(
        text(&out.stderr).contains("sub/a-fifo"),
        "stderr should name the FIFO: {}",
        report(&what, &out)
    );
    if store.dir.exists() {
        assert!(store.ls().is_empty(), "a tree with a FIFO was published");
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

/// Four `cab store add` processes of the same tree into one store at once.
#[test]
fn concurrent_adds_of_the_same_tree() {
    let store = Store::new("store-concurrent");
    let work = TempDir::new("store-concurrent-work");
    let src = work.join("src");
    edge::many_small(&src, 1500);
    edge::symlinks(&src.join("links"));
    edge::big_file(&src.join("big.bin"), 3 * 1024 * 1024);
    let expected = hash_of(&src);

    let results: Vec<Hashes> = thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| store.add(&src))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a concurrent add failed"))
            .collect()
    });
    for r in &results {
        assert_eq!(r, &expected, "a concurrent add printed different hashes");
    }
    store.verify_ok();
    assert_eq!(
        store.ls(),
        vec![expected.tree.clone()],
        "the tree must be listed exactly once"
    );
    assert!(
        store.staging_dirs().is_empty(),
        "staging left behind: {:?}",
        store.staging_dirs()
    );
    let dest = work.join("exported");
    store.export_ok(&expected.tree, &dest);
    assert_same_tree(&src, &dest);
}
