//! Garbage collection through the real binary: roots (hand-made, registered locks, live
//! processes), what `cab store gc` deletes and keeps, `du`, the compiled-module cache, and the
//! point of it all — collecting while a mount serves (trees served lazily from a remote too)
//! and fetches publish, and being killed at any moment, loses nothing anyone needs.

mod common;
#[path = "../mount-tests/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::forge::{self, Forge};
use common::*;
use support::*;

/// `cab --store STORE ARGS…`.
fn cab_on(store: &Path) -> Command {
    let mut cmd = cab();
    cmd.arg("--store").arg(store);
    cmd
}

/// `cab --store STORE store ARGS…`, which must succeed; its stdout.
fn store_ok<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(store: &Path, args: I) -> String {
    text(&run_ok(cab_on(store).arg("store").args(args)).stdout)
}

fn add(store: &Path, tree: &Path) -> String {
    parse_hashes(&run_ok(cab_on(store).args(["store", "add"]).arg(tree)).stdout).tree
}

fn published(store: &Path) -> Vec<String> {
    store_ok(store, ["ls"]).lines().map(str::to_owned).collect()
}

fn verify_clean(store: &Path) {
    let out = store_ok(store, ["verify"]);
    assert!(out.contains("all good"), "{out}");
}

/// Every object file: `blobs/…` and `trees/…`.
fn objects(store: &Path) -> Vec<PathBuf> {
    let mut all = files_under(&store.join("blobs"));
    all.extend(files_under(&store.join("trees")));
    all
}

/// Every file of the store but the gc's own bookkeeping, for "nothing changed".
fn store_files(store: &Path) -> Vec<PathBuf> {
    let mut all = objects(store);
    all.extend(files_under(&store.join("roots")));
    all.extend(files_under(&store.join("index")));
    all.extend(files_under(&store.join("gcroots")));
    all.extend(files_under(&store.join("cache")));
    all
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Exports a stored tree and compares it with its source.
fn assert_exports_as(store: &Path, tree: &str, source: &Path, scratch: &Path) {
    let dest = scratch.join(format!("export-{}", &tree[7..19]));
    let _ = fs::remove_dir_all(&dest);
    run_ok(cab_on(store).args(["store", "export", tree]).arg(&dest));
    assert_same_tree(source, &dest);
    fs::remove_dir_all(&dest).unwrap();
}

/// A tree of `files` incompressible files, distinct for each `seed`.
fn random_tree(dir: &Path, files: usize, seed: u64) {
    for i in 0..files {
        let len = 200 + (i * 131) % 3000;
        write_file(
            &dir.join(format!("d{}/f{i}", i % 16)),
            &pseudo_random(len, seed * 1_000_003 + i as u64),
            0o644,
        );
    }
}

/// A small xorshift generator, seeded from the clock (the seed is printed).
struct Rng(u64);

impl Rng {
    fn from_clock(label: &str) -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("{label}: random seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// Roots and what gc deletes
// ---------------------------------------------------------------------------------------------

#[test]
fn hand_made_roots_keep_trees_and_gc_deletes_the_rest() {
    let tmp = TempDir::new("gc-manual");
    let store = tmp.join("store");
    // Two trees sharing a large file: what gc frees is only what the dropped one holds alone.
    let shared = pseudo_random(300_000, 1);
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    write_file(&a.join("shared.bin"), &shared, 0o644);
    write_file(&b.join("shared.bin"), &shared, 0o644);
    write_file(&a.join("only-a.txt"), &pseudo_random(5_000, 2), 0o644);
    write_file(&b.join("only-b/inner.txt"), &pseudo_random(7_000, 3), 0o755);
    let ta = add(&store, &a);
    let tb = add(&store, &b);
    let out = run_ok(cab_on(&store).args(["store", "root", "add", &ta, "--name", "keep-a"]));
    assert!(text(&out.stderr).contains("root keep-a keeps"), "{}", text(&out.stderr));
    let roots = store_ok(&store, ["root", "ls"]);
    assert_eq!(roots.trim(), format!("{ta}  manual keep-a"));

    // A dry run says what would go and how much, and changes nothing.
    let before = store_files(&store);
    let dry = json(&store_ok(&store, ["gc", "--dry-run", "--json"]));
    assert_eq!(store_files(&store), before, "a dry run must change nothing");
    assert_eq!(dry["trees"].as_array().unwrap().len(), 1);
    assert_eq!(dry["trees"][0]["hash"], tb.as_str());
    // b alone holds its own file, its directory and its root directory object.
    let b_alone = dry["trees"][0]["alone"].as_u64().unwrap();
    assert!(b_alone > 7_000 && b_alone < 8_000, "{dry}");
    assert_eq!(dry["bytes"].as_u64().unwrap(), b_alone);
    assert_eq!(dry["objects"], 3);
    let du = json(&store_ok(&store, ["du", "--json"]));
    assert_eq!(du["unrooted"][0]["alone"].as_u64().unwrap(), b_alone);

    let done = json(&store_ok(&store, ["gc", "--json"]));
    assert_eq!(done["bytes"], dry["bytes"]);
    assert_eq!(done["objects"], dry["objects"]);
    assert_eq!(done["trees"][0]["hash"], tb.as_str());
    assert_eq!(published(&store), [ta.as_str()]);
    verify_clean(&store);
    assert_exports_as(&store, &ta, &a, tmp.path());
    // The shared blob stayed; b's own file did not.
    let blob_of = |contents: &[u8]| {
        let hex = blake3::hash(contents).to_hex().to_string();
        store.join("blobs").join(&hex[..2]).join(&hex[2..])
    };
    assert!(blob_of(&shared).exists());
    assert!(!blob_of(&pseudo_random(7_000, 3)).exists());
    // Nothing left to do.
    let again = json(&store_ok(&store, ["gc", "--json"]));
    assert_eq!(
        (again["objects"].as_u64(), again["trees"].as_array().unwrap().len()),
        (Some(0), 0)
    );

    // Removing the root releases the tree.
    let out = run_ok(cab_on(&store).args(["store", "root", "rm", "keep-a"]));
    assert!(text(&out.stderr).contains("removed root keep-a"));
    store_ok(&store, ["gc"]);
    assert!(published(&store).is_empty());
    assert!(objects(&store).is_empty(), "{:?}", objects(&store));
    verify_clean(&store);
}

#[test]
fn root_commands_refuse_what_they_cannot_do() {
    let tmp = TempDir::new("gc-root-errors");
    let store = tmp.join("store");
    let tree = tmp.join("t");
    write_file(&tree.join("f"), b"x\n", 0o644);
    let hash = add(&store, &tree);
    let missing = format!("blake3-{}", "1".repeat(64));
    for (args, says) in [
        (vec!["root", "add", missing.as_str()], "is not in the store"),
        (vec!["root", "add", "blake3-nope"], "is not a tree hash"),
        (
            vec!["root", "add", hash.as_str(), "--name", "../x"],
            "cannot name a root",
        ),
        (
            vec!["root", "add", hash.as_str(), "--name", ".hidden"],
            "cannot name a root",
        ),
        (vec!["root", "rm", "nothing-here"], "no root named `nothing-here`"),
        (vec!["gc", "--older-than", "3x"], "unknown unit `x`"),
        (vec!["gc", "--keep-size", "lots"], "is not a size"),
    ] {
        let out = run_fail(cab_on(&store).arg("store").args(&args));
        assert!(text(&out.stderr).contains(says), "{args:?}: {}", text(&out.stderr));
    }
    // The default name is the tree's hex digits; adding again under a name re-points it.
    run_ok(cab_on(&store).args(["store", "root", "add", &hash]));
    assert_eq!(
        store_ok(&store, ["root", "ls"]).trim(),
        format!("{hash}  manual {}", &hash[7..])
    );
}

#[test]
fn keep_size_evicts_the_least_recently_used_first_and_older_than_keeps_the_recent() {
    let tmp = TempDir::new("gc-lru");
    let store = tmp.join("store");
    let trees: Vec<(PathBuf, String)> = (0..4)
        .map(|i| {
            let dir = tmp.join(format!("t{i}"));
            write_file(&dir.join("data.bin"), &pseudo_random(100_000, 10 + i), 0o644);
            let hash = add(&store, &dir);
            (dir, hash)
        })
        .collect();
    // Used in the order 1, 3, 0 after being added (an export is a use): least recent is 2.
    for i in [1, 3, 0] {
        assert_exports_as(&store, &trees[i].1, &trees[i].0, tmp.path());
        thread::sleep(Duration::from_millis(20));
    }
    // Room for about two of them: 0 and 3 stay (most recent), 1 and 2 go.
    let done = json(&store_ok(&store, ["gc", "--keep-size", "230K", "--json"]));
    let gone: Vec<&str> = done["trees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["hash"].as_str().unwrap())
        .collect();
    assert_eq!(gone, [trees[1].1.as_str(), trees[2].1.as_str()], "{done}");
    let mut left = published(&store);
    left.sort();
    let mut want = vec![trees[0].1.clone(), trees[3].1.clone()];
    want.sort();
    assert_eq!(left, want);
    verify_clean(&store);

    // --older-than: 3 was used a while ago, 0 just now.
    thread::sleep(Duration::from_millis(2100));
    assert_exports_as(&store, &trees[0].1, &trees[0].0, tmp.path());
    let done = json(&store_ok(&store, ["gc", "--older-than", "2s", "--json"]));
    assert_eq!(done["trees"][0]["hash"], trees[3].1.as_str(), "{done}");
    assert_eq!(published(&store), [trees[0].1.clone()]);
    // A size that fits nothing but the roots: everything unrooted goes.
    store_ok(&store, ["gc", "--keep-size", "0"]);
    assert!(published(&store).is_empty());
    verify_clean(&store);
}

#[test]
fn du_counts_shared_bytes_once() {
    let tmp = TempDir::new("gc-du");
    let store = tmp.join("store");
    let shared = pseudo_random(200_000, 7);
    let mut hashes = Vec::new();
    for i in 0..3u64 {
        let dir = tmp.join(format!("rev{i}"));
        write_file(&dir.join("lib/shared.bin"), &shared, 0o644);
        write_file(
            &dir.join("own.txt"),
            &pseudo_random(1_000 * (i as usize + 1), 20 + i),
            0o644,
        );
        hashes.push(add(&store, &dir));
    }
    let project = tmp.join("project");
    write_file(
        &project.join("islands.toml"),
        format!("r0 = '<fs::{}>'\n", tmp.join("rev0").display()).as_bytes(),
        0o644,
    );
    run_ok(cab_on(&store).current_dir(&project).arg("update"));
    // Something no tree reaches: a blob left by a fetch that died.
    let stray = pseudo_random(4_096, 99);
    let hex = blake3::hash(&stray).to_hex().to_string();
    write_file(&store.join("blobs").join(&hex[..2]).join(&hex[2..]), &stray, 0o444);

    let du = json(&store_ok(&store, ["du", "--json"]));
    let rooted = du["rooted"].as_array().unwrap();
    assert_eq!(rooted.len(), 1, "{du}");
    assert_eq!(rooted[0]["hash"], hashes[0].as_str());
    assert_eq!(rooted[0]["roots"][0]["kind"], "lock");
    assert_eq!(rooted[0]["roots"][0]["island"], "r0");
    let size0 = rooted[0]["size"].as_u64().unwrap();
    assert!(size0 > 201_000 && size0 < 202_000, "{du}");
    // The shared file is in every tree: none holds it alone.
    assert!(rooted[0]["alone"].as_u64().unwrap() < 2_000, "{du}");
    let unrooted = du["unrooted"].as_array().unwrap();
    assert_eq!(unrooted.len(), 2);
    let totals = &du["totals"];
    // Counted once: the rooted tree, then only what the others add.
    assert_eq!(totals["rooted"].as_u64().unwrap(), size0);
    let extra = totals["unrooted"].as_u64().unwrap();
    assert!(extra > 5_000 && extra < 6_500, "{du}");
    assert_eq!(totals["unreferenced"], 4_096);
    assert_eq!(totals["unreferencedObjects"], 1);
    let on_disk: u64 = objects(&store).iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert_eq!(
        totals["rooted"].as_u64().unwrap() + extra + 4_096,
        on_disk,
        "every object counted once: {du}"
    );
    let table = store_ok(&store, ["du"]);
    assert!(
        table.contains(&format!("lock {}", project.join("islands.lock").display())),
        "{table}"
    );
    assert!(table.contains("unrooted, last used"), "{table}");
    // gc takes the stray blob too.
    let done = json(&store_ok(&store, ["gc", "--json"]));
    assert_eq!(done["objects"].as_u64().unwrap(), 5, "{done}");
    assert_eq!(json(&store_ok(&store, ["du", "--json"]))["totals"]["unreferenced"], 0);
}

// ---------------------------------------------------------------------------------------------
// Locks as roots
// ---------------------------------------------------------------------------------------------

#[test]
fn a_deleted_or_moved_lock_releases_its_trees() {
    let tmp = TempDir::new("gc-locks");
    let store = tmp.join("store");
    let (one, two) = (tmp.join("one"), tmp.join("two"));
    random_tree(&one, 50, 1);
    random_tree(&two, 50, 2);
    let project = tmp.join("project");
    let manifest = format!("one = '<fs::{}>'\ntwo = '<fs::{}>'\n", one.display(), two.display());
    write_file(&project.join("islands.toml"), manifest.as_bytes(), 0o644);
    run_ok(cab_on(&store).current_dir(&project).arg("update"));
    let lock_path = project.join("islands.lock");
    let roots = store_ok(&store, ["root", "ls", "--json"]);
    let roots: Vec<serde_json::Value> = roots.lines().map(json).collect();
    assert_eq!(roots.len(), 2, "{roots:?}");
    assert!(
        roots
            .iter()
            .all(|r| r["kind"] == "lock" && r["lock"] == lock_path.to_str().unwrap())
    );
    store_ok(&store, ["gc"]);
    assert_eq!(published(&store).len(), 2, "the lock keeps both");

    // A lock that cannot be parsed (a merge conflict, say) keeps what cab last saw in it.
    let good = fs::read_to_string(&lock_path).unwrap();
    fs::write(&lock_path, format!("<<<<<<< ours\n{good}")).unwrap();
    let out = run_ok(cab_on(&store).args(["store", "gc"]));
    assert!(
        text(&out.stderr).contains("keeping the pins cab last saw in it"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(published(&store).len(), 2);
    fs::write(&lock_path, &good).unwrap();

    // Moved: nothing is at the registered path any more; the trees go and the registration
    // with them. Used again at its new place, it registers again.
    let moved = tmp.join("moved");
    fs::rename(&project, &moved).unwrap();
    store_ok(&store, ["gc"]);
    assert!(published(&store).is_empty());
    assert!(store_ok(&store, ["root", "ls"]).is_empty());
    assert!(files_under(&store.join("gcroots/locks")).is_empty());
    run_ok(cab_on(&store).current_dir(&moved).arg("update"));
    store_ok(&store, ["gc"]);
    assert_eq!(published(&store).len(), 2);

    // Deleted.
    fs::remove_file(moved.join("islands.lock")).unwrap();
    store_ok(&store, ["gc"]);
    assert!(published(&store).is_empty());
    assert!(objects(&store).is_empty());
    verify_clean(&store);
}

#[test]
fn a_subpath_pin_keeps_its_whole_tree_so_an_unchanged_update_stays_one_round_trip() {
    let tmp = TempDir::new("gc-subpath");
    let forge_root = tmp.join("forge");
    let forge = Forge::start(&forge_root, &[]);
    let src = tmp.join("src");
    random_tree(&src.join("lib"), 30, 3);
    write_file(&src.join("README"), b"whole\n", 0o644);
    forge::commit(&forge_root, "acme/sub", &src, "main", "one");
    let store = tmp.join("store");
    let project = tmp.join("project");
    write_file(
        &project.join("islands.toml"),
        b"lib = '<github:acme/sub::/lib>'\n",
        0o644,
    );
    let update = || {
        let mut cmd = cab_on(&store);
        cmd.current_dir(&project)
            .env("CAB_GITHUB_URL", forge.url())
            .arg("update");
        run_ok(&mut cmd)
    };
    update();
    let roots = store_ok(&store, ["root", "ls"]);
    assert!(roots.contains(" lib (whole tree of its subpath)"), "{roots}");
    store_ok(&store, ["gc"]);
    assert_eq!(published(&store).len(), 2, "the subtree and its whole tree");
    let archives = |forge: &Forge| forge.requests().iter().filter(|r| r.path.contains("/archive/")).count();
    let before = archives(&forge);
    update();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        archives(&forge),
        before,
        "an unchanged update downloads no archive after gc"
    );
    verify_clean(&store);
}

// ---------------------------------------------------------------------------------------------
// The compiled-module cache, and collecting automatically
// ---------------------------------------------------------------------------------------------

#[test]
fn the_module_cache_drops_modules_of_other_wasmtime_versions() {
    let tmp = TempDir::new("gc-modules");
    let forge_root = tmp.join("forge");
    let forge = Forge::start(&forge_root, &[]);
    let src = tmp.join("src");
    for (archive, text) in [("one.tar.gz", "one\n"), ("two.tar.gz", "two\n")] {
        write_file(&src.join("pkg/a.txt"), text.as_bytes(), 0o644);
        let status = Command::new("tar")
            .arg("-czf")
            .arg(forge_root.join("files").join(archive))
            .arg("-C")
            .arg(&src)
            .arg("pkg")
            .status()
            .unwrap();
        assert!(status.success());
    }
    let store = tmp.join("store");
    let fetch = |archive: &str| {
        // Compiled, not taken precompiled from cab: the store's cache is what is tested.
        run_ok(
            cab_on(&store)
                .env("CAB_NO_PRECOMPILED", "1")
                .arg("fetch")
                .arg(format!("<tarball:{}/files/{archive}>", forge.url())),
        )
    };
    fetch("one.tar.gz");
    let cache = store.join("cache");
    let ours = files_under(&cache);
    assert_eq!(ours.len(), 1, "one compiled module: {ours:?}");
    let ours = ours[0].clone();
    let name = ours.file_name().unwrap().to_str().unwrap().to_owned();
    let (module, _) = name.trim_end_matches(".cwasm").rsplit_once('-').unwrap();
    // As another wasmtime would have left them: another tag; and a compilation that died.
    let other = cache.join(format!("{module}-0123456789abcdef.cwasm"));
    fs::write(&other, vec![0u8; 50_000]).unwrap();
    let dead = cache.join(format!(".{module}.999999"));
    fs::write(&dead, b"half").unwrap();
    run_ok(Command::new("touch").args(["-d", "3 hours ago"]).arg(&dead));
    let young = cache.join(format!(".{module}.999998"));
    fs::write(&young, b"being written").unwrap();

    let done = json(&store_ok(&store, ["gc", "--json"]));
    assert_eq!(done["modules"], 2, "{done}");
    assert!(!other.exists() && !dead.exists());
    assert!(young.exists(), "a temporary file being written is left alone");
    assert!(ours.exists(), "this cab's own module stays");
    let ino = fs::metadata(&ours).unwrap().ino();
    fetch("two.tar.gz");
    assert_eq!(
        fs::metadata(&ours).unwrap().ino(),
        ino,
        "the module is not compiled again"
    );
}

#[test]
fn automatic_collection_keeps_the_store_within_its_size() {
    let tmp = TempDir::new("gc-auto");
    let store = tmp.join("store");
    // Three unrooted trees of ~300 KB each.
    for i in 0..3 {
        let dir = tmp.join(format!("old{i}"));
        write_file(&dir.join("data.bin"), &pseudo_random(300_000, 30 + i), 0o644);
        add(&store, &dir);
    }
    let new = tmp.join("new");
    write_file(&new.join("data.bin"), &pseudo_random(300_000, 40), 0o644);
    // Under the size: nothing happens.
    let mut cmd = cab_on(&store);
    cmd.env("CAB_GC_AUTO_SIZE", "10M")
        .arg("fetch")
        .arg(format!("<fs::{}>", new.display()));
    run_ok(&mut cmd);
    assert_eq!(published(&store).len(), 4);
    // Over it: down to 80% of 800K (640K), most recently used kept; the tree this very
    // command fetched is in use, and kept.
    let newer = tmp.join("newer");
    write_file(&newer.join("data.bin"), &pseudo_random(300_000, 41), 0o644);
    let mut cmd = cab_on(&store);
    cmd.args(["-v", "fetch", "--gc-auto-size", "800K"])
        .arg(format!("<fs::{}>", newer.display()));
    let out = run_ok(&mut cmd);
    assert!(
        text(&out.stderr).contains("automatic collection"),
        "{}",
        text(&out.stderr)
    );
    let newer_hash = cab_hash(&newer, None).tree;
    let new_hash = cab_hash(&new, None).tree;
    let mut left = published(&store);
    left.sort();
    let mut want = vec![newer_hash, new_hash];
    want.sort();
    assert_eq!(left, want, "the two most recent fit in 640K");
    let usage: u64 = fs::read_to_string(store.join("usage"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("bytes ")?.parse().ok())
        .unwrap();
    let on_disk: u64 = objects(&store).iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert_eq!(usage, on_disk, "the size estimate is exact after a collection");
    verify_clean(&store);
}

// ---------------------------------------------------------------------------------------------
// Safety: kill -9, and collecting under a live mount and concurrent fetches
// ---------------------------------------------------------------------------------------------

#[test]
fn gc_killed_at_random_points_leaves_a_store_every_command_uses() {
    let tmp = TempDir::new("gc-kill9");
    let store = tmp.join("store");
    let keep = tmp.join("keep");
    random_tree(&keep, 400, 1);
    let manual = tmp.join("manual");
    random_tree(&manual, 200, 2);
    let project = tmp.join("project");
    write_file(
        &project.join("islands.toml"),
        format!("keep = '<fs::{}>'\n", keep.display()).as_bytes(),
        0o644,
    );
    run_ok(cab_on(&store).current_dir(&project).arg("update"));
    let keep_hash = cab_hash(&keep, None).tree;
    let manual_hash = add(&store, &manual);
    run_ok(cab_on(&store).args(["store", "root", "add", &manual_hash, "--name", "manual"]));

    // Small: each file deleted costs milliseconds on a disk mounted with online discard.
    let garbage = |round: u64| {
        for t in 0..3 {
            let dir = tmp.join(format!("garbage-{round}-{t}"));
            random_tree(&dir, 150, 100 + round * 10 + t);
            if t % 2 == 0 {
                add(&store, &dir);
            } else {
                run_ok(cab_on(&store).arg("fetch").arg(format!("<fs::{}>", dir.display())));
            }
            fs::remove_dir_all(&dir).unwrap();
        }
    };
    // How long a whole collection of one round's garbage takes here.
    garbage(0);
    let started = Instant::now();
    store_ok(&store, ["gc"]);
    let full = started.elapsed();
    eprintln!("a whole collection takes {full:?}");

    let mut rng = Rng::from_clock("kill -9");
    let mut killed_early = 0;
    for round in 1..=20u64 {
        garbage(round);
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 5 / 4 + 1));
        let mut child = cab_on(&store)
            .args(["store", "gc"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        thread::sleep(delay);
        // SAFETY: a plain syscall on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        let status = child.wait().unwrap();
        if status.code().is_none() {
            killed_early += 1;
        }
        // The store is whole, and every command uses it.
        verify_clean(&store);
        let listed = published(&store);
        assert!(
            listed.contains(&keep_hash) && listed.contains(&manual_hash),
            "round {round}"
        );
        let out = run_ok(cab_on(&store).current_dir(&project).arg("update"));
        assert!(text(&out.stderr).contains("up to date"), "{}", text(&out.stderr));
        if round % 5 == 0 {
            assert_exports_as(&store, &keep_hash, &keep, tmp.path());
            assert_exports_as(&store, &manual_hash, &manual, tmp.path());
        }
    }
    assert!(
        killed_early >= 10,
        "most kills should land while gc runs ({killed_early} of 20)"
    );
    // A collection after all that finishes the job: only the roots' objects are left.
    store_ok(&store, ["gc"]);
    verify_clean(&store);
    let mut left = published(&store);
    left.sort();
    let mut want = vec![keep_hash.clone(), manual_hash.clone()];
    want.sort();
    assert_eq!(left, want);
    let du = json(&store_ok(&store, ["du", "--json"]));
    assert_eq!(du["totals"]["unreferenced"], 0, "{du}");
    assert_eq!(du["totals"]["unrooted"], 0, "{du}");
    assert!(files_under(&store.join("tmp")).is_empty());
    assert_exports_as(&store, &keep_hash, &keep, tmp.path());
    assert_exports_as(&store, &manual_hash, &manual, tmp.path());
}

/// Every file under `root` with its contents, by path relative to it.
fn contents(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_under(root)
        .into_iter()
        .map(|p| (p.strip_prefix(root).unwrap().to_owned(), fs::read(&p).unwrap()))
        .collect()
}

/// Runs `cab store gc` on `store` back to back, at least once, until `stop`; failures go to
/// `problems`. Joins to the number of collections run.
fn collect_until(
    stop: &Arc<AtomicBool>,
    problems: &Arc<Mutex<Vec<String>>>,
    store: &Path,
) -> thread::JoinHandle<usize> {
    let (stop, problems, store) = (stop.clone(), problems.clone(), store.to_owned());
    thread::spawn(move || {
        let mut runs = 0;
        while !stop.load(Ordering::Relaxed) || runs == 0 {
            let out = run(cab_on(&store).args(["store", "gc"]));
            if !out.status.success() {
                problems.lock().unwrap().push(report("cab store gc", &out));
            }
            runs += 1;
        }
        runs
    })
}

fn assert_no_problems(problems: &Mutex<Vec<String>>) {
    let problems = problems.lock().unwrap();
    assert!(
        problems.is_empty(),
        "{} problems, first: {}",
        problems.len(),
        problems[0]
    );
}

#[test]
fn gc_while_a_mount_reads_and_fetches_publish_loses_nothing() {
    let world = World::new("gc-live", &[]);
    let store = world.store.clone();
    // Three trees the mount serves: a named island, a browsed one and a stored one.
    let widgets = world.dir("src-widgets");
    copy_tree(&python_package("json"), &widgets.join("json"));
    random_tree(&widgets.join("data"), 100, 1);
    let widgets_rev = world.push("acme/widgets", &widgets, "widgets");
    let tools = world.dir("src-tools");
    random_tree(&tools, 100, 2);
    let tools_rev = world.push("acme/tools", &tools, "tools");
    let local = world.dir("local");
    random_tree(&local, 100, 3);
    let local_hash = parse_hashes(&ok(world.cab().args(["store", "add"]).arg(&local)).stdout).tree;
    world.manifest("widgets = '<github:acme/widgets>'\n");
    let mount = world.mount(&[]);
    let views = [
        (world.at("widgets"), world.reference("acme/widgets", &widgets_rev)),
        (
            world.at("github/acme/tools/main"),
            world.reference("acme/tools", &tools_rev),
        ),
        (world.at(&format!("by-hash/{local_hash}")), local.clone()),
    ];
    let mut expected = Vec::new();
    for (view, reference) in &views {
        assert_same_tree(reference, view);
        for (rel, bytes) in contents(reference) {
            expected.push((view.join(rel), bytes));
        }
    }

    // Collections back to back, a reader re-reading every served file (dropping the kernel's
    // caches so that the daemon reads the store), and verify runs, all at once.
    let stop = Arc::new(AtomicBool::new(false));
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let collector = collect_until(&stop, &problems, &store);
    let mut threads = Vec::new();
    {
        let (stop, problems) = (stop.clone(), problems.clone());
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = fs::write("/proc/sys/vm/drop_caches", "3");
                for (path, bytes) in &expected {
                    match fs::read(path) {
                        Ok(read) if &read == bytes => {}
                        Ok(_) => problems
                            .lock()
                            .unwrap()
                            .push(format!("{} read other bytes", path.display())),
                        Err(e) => problems.lock().unwrap().push(format!("{}: {e}", path.display())),
                    }
                }
            }
        }));
    }
    {
        let (stop, problems, store) = (stop.clone(), problems.clone(), store.clone());
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = run(cab_on(&store).args(["store", "verify"]));
                if !out.status.success() {
                    problems.lock().unwrap().push(report("cab store verify", &out));
                }
            }
        }));
    }

    // Meanwhile, fetches that find most of their objects present — in trees nobody keeps,
    // which the collections are busy deleting — and publish.
    let base = world.dir("base");
    random_tree(&base, 300, 4);
    let gadgets = world.dir("src-gadgets");
    random_tree(&gadgets, 300, 5);
    let project = world.dir("project2");
    for round in 0..8u64 {
        // Garbage: a copy of base, added and left unrooted.
        let garbage = world.dir(&format!("garbage{round}"));
        copy_tree(&base, &garbage);
        write_file(&garbage.join("round"), format!("garbage {round}\n").as_bytes(), 0o644);
        ok(world.cab().args(["store", "add"]).arg(&garbage));
        // The fs island shares all of base with it; the github island shares all but one
        // file with the previous round's, which its lock no longer keeps.
        let island = world.dir(&format!("island{round}"));
        copy_tree(&garbage, &island);
        write_file(&island.join("island"), format!("island {round}\n").as_bytes(), 0o644);
        write_file(&gadgets.join("round"), format!("gadgets {round}\n").as_bytes(), 0o644);
        let gadgets_rev = world.push("acme/gadgets", &gadgets, &format!("round {round}"));
        fs::write(
            project.join("islands.toml"),
            format!("f = '<fs::{}>'\ng = '<github:acme/gadgets>'\n", island.display()),
        )
        .unwrap();
        let mut update = world.cab();
        update.current_dir(&project).arg("update");
        let mut fetch = world.cab();
        fetch.args(["fetch", "<github:acme/gadgets:{ ref = \"main\" }>"]);
        let fetching = thread::spawn(move || run(&mut fetch));
        let updated = run(&mut update);
        let fetched = fetching.join().unwrap();
        assert!(updated.status.success(), "{}", report("cab update", &updated));
        assert!(fetched.status.success(), "{}", report("cab fetch", &fetched));
        // What the lock now pins is whole.
        let lock = fs::read_to_string(project.join("islands.lock")).unwrap();
        let pinned = |name: &str| config_value(&lock_entry(&lock, name).unwrap().1, "hash").unwrap();
        assert_exports_as(&store, &pinned("f"), &island, world.tmp.path());
        assert_exports_as(
            &store,
            &pinned("g"),
            &world.reference("acme/gadgets", &gadgets_rev),
            world.tmp.path(),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let collections = collector.join().unwrap();
    assert_no_problems(&problems);
    assert!(collections >= 8, "only {collections} collections ran");
    eprintln!("{collections} collections ran during the fetches");

    // Everything served is still whole; the store is clean.
    store_ok(&store, ["gc"]);
    verify_clean(&store);
    for (view, reference) in &views {
        assert_same_tree(reference, view);
    }
    mount.stop();
}

#[test]
fn a_mount_keeps_what_it_serves_and_browsed_trees_stay_a_while_after() {
    let world = World::new("gc-mount-roots", &[]);
    let tools = world.dir("src-tools");
    random_tree(&tools, 40, 6);
    let rev = world.push("acme/tools", &tools, "tools");
    let local = world.dir("local");
    random_tree(&local, 40, 7);
    let local_hash = parse_hashes(&ok(world.cab().args(["store", "add"]).arg(&local)).stdout).tree;
    let mount = world.mount(&[]);
    let browsed = world.at("github/acme/tools/main");
    let reference = world.reference("acme/tools", &rev);
    assert_same_tree(&reference, &browsed);
    assert_same_tree(&local, &world.at(&format!("by-hash/{local_hash}")));
    let browsed_hash = cab_hash(&reference, None).tree;
    let roots = store_ok(&world.store, ["root", "ls"]);
    for tree in [&browsed_hash, &local_hash] {
        assert!(
            roots.contains(&format!("{tree}  live pid {}", mount.child.id())),
            "{roots}"
        );
    }
    // Served, so kept, though nothing else roots them.
    store_ok(&world.store, ["gc"]);
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
    assert_same_tree(&reference, &browsed);
    assert_eq!(published(&world.store).len(), 2);
    mount.stop();
    // Gone with the mount: unrooted now, kept a while by a size budget, then collected.
    assert!(store_ok(&world.store, ["root", "ls"]).is_empty());
    store_ok(&world.store, ["gc", "--keep-size", "10M"]);
    assert!(files_under(&world.store.join("gcroots/live")).is_empty());
    assert_eq!(published(&world.store).len(), 2);
    store_ok(&world.store, ["gc"]);
    assert!(published(&world.store).is_empty());
    verify_clean(&world.store);
}

/// Where a file's contents sit in a store: `blobs/ab/cdef…`.
fn blob_path(store: &Path, bytes: &[u8]) -> PathBuf {
    let hex = blake3::hash(bytes).to_hex();
    store.join("blobs").join(&hex[..2]).join(&hex[2..])
}

#[test]
fn a_tree_served_lazily_from_a_remote_keeps_every_file_fetched_through_collections() {
    let world = World::new("gc-lazy", &[]);
    let remote = world.tmp.join("remote");
    let remote_off = world.tmp.join("remote-unplugged");
    let remote_url = format!("file://{}", remote.display());
    // Machine A fetches the island from the forge and pushes it to the remote.
    let src = world.dir("src-lib");
    random_tree(&src, 320, 8);
    let rev = world.push("acme/lib", &src, "lib");
    let reference = world.reference("acme/lib", &rev);
    world.manifest("lib = '<github:acme/lib>'\n");
    ok(world.cab().args(["--remote", &remote_url, "--push", "update"]));
    let tree = config_value(&world.locked("lib").unwrap(), "hash").unwrap();

    // Machine B: its store holds an unrooted tree sharing the files of d0-d3 and d8-d11 with
    // the island (a collection's candidates, found present by the lazy reads), and nothing
    // else of it; the forge is out of reach, so every other file must come from the remote.
    let b = world.dir("machine-b");
    fs::copy(world.project.join("islands.toml"), b.join("islands.toml")).unwrap();
    fs::copy(world.project.join("islands.lock"), b.join("islands.lock")).unwrap();
    let b_store = world.tmp.join("b-store");
    let garbage = world.dir("garbage");
    for d in [0, 1, 2, 3, 8, 9, 10, 11] {
        copy_tree(&reference.join(format!("d{d}")), &garbage.join(format!("d{d}")));
    }
    write_file(&garbage.join("only-here"), b"garbage\n", 0o644);
    let garbage_hash = add(&b_store, &garbage);
    let b_mnt = world.dir("b-mnt");
    let mut cmd = cab_on(&b_store);
    cmd.current_dir(&b)
        .env("CAB_GITHUB_URL", "http://127.0.0.1:1")
        .args(["--remote", &remote_url, "-v", "mount"])
        .arg(&b_mnt);
    let mount = Mount::start(cmd, &b_mnt);
    let island = b_mnt.join("lib");
    let expected: Vec<(PathBuf, Vec<u8>)> = contents(&reference).into_iter().collect();
    let in_dirs = |dirs: &[usize]| -> Vec<&(PathBuf, Vec<u8>)> {
        expected
            .iter()
            .filter(|(rel, _)| dirs.iter().any(|d| rel.starts_with(format!("d{d}"))))
            .collect()
    };
    let read_all = |files: &[&(PathBuf, Vec<u8>)]| -> Vec<String> {
        let _ = fs::write("/proc/sys/vm/drop_caches", "3");
        let mut problems = Vec::new();
        for (rel, bytes) in files {
            match fs::read(island.join(rel)) {
                Ok(read) if &read == bytes => {}
                Ok(_) => problems.push(format!("{} read other bytes", rel.display())),
                Err(e) => problems.push(format!("{}: {e}", rel.display())),
            }
        }
        problems
    };

    // Half the directories read: their files fetched, or found here in the garbage tree.
    let first: Vec<_> = in_dirs(&[0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(read_all(&first), Vec::<String>::new());
    let complete = python(
        "import os,sys; print(os.getxattr(sys.argv[1], 'user.cab.complete').decode())",
        &[os(&island)],
    );
    assert_eq!(complete.trim(), "no", "the tree is served lazily");
    assert!(
        !published(&b_store).contains(&tree),
        "not published while files are missing"
    );

    // Only the mount keeps it: forget the lock the mount registered.
    let lock = b.join("islands.lock");
    store_ok(&b_store, [OsStr::new("root"), OsStr::new("rm"), lock.as_os_str()]);
    let roots = store_ok(&b_store, ["root", "ls"]);
    assert!(
        roots.contains(&format!("{tree}  live pid {}", mount.child.id())),
        "the mount declares the lazy tree live:\n{roots}"
    );
    assert!(!roots.contains(&lock.display().to_string()), "{roots}");

    // A collection: the garbage tree goes, every file of the island here so far stays.
    let here: Vec<PathBuf> = expected
        .iter()
        .map(|(_, bytes)| blob_path(&b_store, bytes))
        .filter(|p| p.exists())
        .collect();
    let collected = json(&store_ok(&b_store, ["gc", "--json"]));
    assert!(
        !published(&b_store).contains(&garbage_hash),
        "the garbage tree was collected: {collected}"
    );
    let lost: Vec<_> = here.iter().filter(|p| !p.exists()).collect();
    assert!(
        lost.is_empty(),
        "{} blobs of the served tree lost: {lost:?}",
        lost.len()
    );
    // With the remote unplugged, what was read reads the same from the store alone.
    fs::rename(&remote, &remote_off).unwrap();
    assert_eq!(read_all(&first), Vec::<String>::new());
    fs::rename(&remote_off, &remote).unwrap();

    // Collections back to back while the rest is read (fetched, or found in the store).
    let stop = Arc::new(AtomicBool::new(false));
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let collector = collect_until(&stop, &problems, &b_store);
    let everything: Vec<_> = expected.iter().collect();
    for _ in 0..3 {
        let found = read_all(&everything);
        problems.lock().unwrap().extend(found);
    }
    stop.store(true, Ordering::Relaxed);
    let runs = collector.join().unwrap();
    assert_no_problems(&problems);
    eprintln!("{runs} collections ran while the tree was read");

    // One more collection, then the remote unplugged: every file reads from the store alone.
    store_ok(&b_store, ["gc"]);
    fs::rename(&remote, &remote_off).unwrap();
    assert_eq!(read_all(&everything), Vec::<String>::new());
    fs::rename(&remote_off, &remote).unwrap();
    verify_clean(&b_store);
    mount.stop();
}
