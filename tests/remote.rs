//! A remote store shared by two stores standing for two machines, over a directory remote
//! (`file://`): pushing, substituting pinned islands without the forge, the early stop on the
//! remote's index, and falling back to the forge when the remote is corrupt, incomplete or
//! down. The same protocol over a real S3 service (Garage) is tested in `tests/garage.rs`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::forge::{self, Forge};
use common::*;

const TIMEOUT: Duration = Duration::from_secs(120);

/// Two machines' stores, a forge and a remote directory.
struct Fleet {
    tmp: TempDir,
    forge_root: PathBuf,
    remote: PathBuf,
}

impl Fleet {
    fn new(label: &str) -> Fleet {
        let tmp = TempDir::new(label);
        let forge_root = tmp.join("forge");
        mkdir(&forge_root.join("files"));
        let remote = tmp.join("remote");
        Fleet {
            tmp,
            forge_root,
            remote,
        }
    }

    fn remote_url(&self) -> String {
        format!("file://{}", self.remote.display())
    }

    /// `cab --store MACHINE --remote … ARGS` against `github`.
    fn cab(&self, machine: &str, github: &str) -> Command {
        let mut cmd = cab();
        cmd.arg("--store")
            .arg(self.tmp.join(machine))
            .arg("--remote")
            .arg(self.remote_url())
            .env("CAB_GITHUB_URL", github);
        cmd
    }

    fn run(&self, machine: &str, github: &str, args: &[&str]) -> Output {
        let mut cmd = self.cab(machine, github);
        cmd.args(args);
        run_timeout(&mut cmd, TIMEOUT)
    }

    fn ok(&self, machine: &str, github: &str, args: &[&str]) -> String {
        let out = self.run(machine, github, args);
        assert!(out.status.success(), "{}", report(&args.join(" "), &out));
        text(&out.stdout)
    }

    /// Writes `tree` out of `machine`'s store into a fresh directory.
    fn export(&self, machine: &str, tree: &str) -> PathBuf {
        let dest = self.tmp.join(format!("export-{machine}-{}", &tree[7..19]));
        let mut cmd = cab();
        cmd.arg("--store")
            .arg(self.tmp.join(machine))
            .args(["store", "export", tree])
            .arg(&dest);
        run_ok(&mut cmd);
        dest
    }

    fn verify(&self, machine: &str) {
        let mut cmd = cab();
        cmd.arg("--store").arg(self.tmp.join(machine)).args(["store", "verify"]);
        run_ok(&mut cmd);
    }

    /// Every file of the remote, relative.
    fn remote_files(&self) -> Vec<String> {
        files_under(&self.remote)
            .into_iter()
            .map(|p| p.strip_prefix(&self.remote).unwrap().to_string_lossy().into_owned())
            .collect()
    }
}

/// The `hash = "…"` of a locked literal.
fn hash_of(locked: &str) -> String {
    let start = locked.find("blake3-").expect("a tree hash");
    locked[start..start + 71].to_owned()
}

/// A source tree with empty files and an empty directory (S3 servers have tripped on both).
fn project(dir: &Path, generation: u32) {
    write_file(
        &dir.join("README"),
        format!("generation {generation}\n").as_bytes(),
        0o644,
    );
    write_file(&dir.join("bin/run"), b"#!/bin/sh\necho run\n", 0o755);
    write_file(&dir.join("empty"), b"", 0o644);
    mkdir(&dir.join("empty-dir"));
    for i in 0..30 {
        write_file(
            &dir.join(format!("lib/m{i:02}.txt")),
            &pseudo_random(2000 + i * 37, u64::from(generation) * 100 + i as u64),
            0o644,
        );
    }
    make_symlink("lib/m00.txt", &dir.join("link"));
}

#[test]
fn a_pushed_island_reaches_another_machine_without_its_forge() {
    let fleet = Fleet::new("remote-two-machines");
    let src = fleet.tmp.join("src");
    project(&src, 1);
    let rev = forge::commit(&fleet.forge_root, "acme/lib", &src, "main", "one");
    let forge = Forge::start(&fleet.forge_root, &[]);
    let url = forge.url();

    // Machine A fetches from the forge and pushes what it realized.
    let locked = fleet.ok("a", &url, &["--push", "fetch", "<github:acme/lib>"]);
    let locked = locked.trim().to_owned();
    assert!(locked.contains(&rev), "{locked}");
    let tree = hash_of(&locked);
    let files = fleet.remote_files();
    for prefix in ["blobs/", "trees/", "bundles/", "published/", "index/", "nar/"] {
        assert!(
            files.iter().any(|f| f.starts_with(prefix)),
            "no {prefix} on the remote: {files:?}"
        );
    }
    assert!(files.iter().any(|f| f.ends_with(".narinfo")));

    // The forge is gone: machine B realizes the pinned island from the remote alone.
    drop(forge);
    let again = fleet.ok("b", "http://127.0.0.1:1", &["-v", "fetch", &locked]);
    assert_eq!(again.trim(), locked);
    assert_same_tree(&fleet.export("a", &tree), &fleet.export("b", &tree));
    fleet.verify("b");
}

#[test]
fn an_unpinned_island_stops_early_on_the_remote_index() {
    let fleet = Fleet::new("remote-early-stop");
    let src = fleet.tmp.join("src");
    project(&src, 1);
    forge::commit(&fleet.forge_root, "acme/lib", &src, "main", "one");
    let forge = Forge::start(&fleet.forge_root, &[]);
    let url = forge.url();
    fleet.ok("a", &url, &["--push", "fetch", "<github:acme/lib>"]);
    let served = forge
        .settled_requests(Duration::from_millis(300), Duration::from_secs(5))
        .len();

    // Machine B asks the forge for the commit (one round trip) and finds its tree on the
    // remote: no archive is downloaded.
    let out = fleet.run("b", &url, &["-v", "fetch", "<github:acme/lib>"]);
    assert!(out.status.success(), "{}", report("fetch", &out));
    assert!(text(&out.stderr).contains("from the remote"), "{}", text(&out.stderr));
    let requests = forge.settled_requests(Duration::from_millis(300), Duration::from_secs(5));
    let new: Vec<_> = requests[served..].iter().map(|r| r.path.clone()).collect();
    assert!(
        new.iter().all(|p| !p.contains("/archive/")),
        "an archive was downloaded: {new:?}"
    );
    assert_eq!(new.len(), 1, "one round trip: {new:?}");
    fleet.verify("b");
}

#[test]
fn a_corrupt_or_incomplete_remote_gives_way_to_the_forge() {
    let fleet = Fleet::new("remote-corrupt");
    let src = fleet.tmp.join("src");
    project(&src, 1);
    forge::commit(&fleet.forge_root, "acme/lib", &src, "main", "one");
    let forge = Forge::start(&fleet.forge_root, &[]);
    let url = forge.url();
    let locked = fleet.ok("a", &url, &["--push", "fetch", "<github:acme/lib>"]);
    let locked = locked.trim().to_owned();

    // A pack flipped: named in a warning, and its files come one by one from the remote (the
    // forge is down for this machine).
    let packs: Vec<String> = fleet
        .remote_files()
        .into_iter()
        .filter(|f| f.starts_with("packs/"))
        .collect();
    assert!(!packs.is_empty(), "the push wrote packs");
    for pack in &packs {
        let path = fleet.remote.join(pack);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
    }
    let out = fleet.run("p", "http://127.0.0.1:1", &["fetch", &locked]);
    assert!(out.status.success(), "{}", report("fetch", &out));
    let err = text(&out.stderr);
    assert!(
        err.contains(&packs[0]) && err.contains("corrupt"),
        "the warning names the pack: {err}"
    );
    fleet.verify("p");
    // Then without packs at all.
    for pack in &packs {
        fs::remove_file(fleet.remote.join(pack)).unwrap();
    }

    // One blob flipped on the remote: named in a warning, and the forge serves the island.
    let blob = fleet
        .remote_files()
        .into_iter()
        .find(|f| f.starts_with("blobs/") && fs::metadata(fleet.remote.join(f)).unwrap().len() > 100)
        .unwrap();
    let path = fleet.remote.join(&blob);
    let mut bytes = fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let out = fleet.run("b", &url, &["fetch", &locked]);
    assert!(out.status.success(), "{}", report("fetch", &out));
    let err = text(&out.stderr);
    assert!(
        err.contains(&blob) && err.contains("corrupt"),
        "the warning names the object: {err}"
    );
    assert!(err.contains(&fleet.remote_url()), "and the remote: {err}");
    fleet.verify("b");

    // A tree object missing: the same.
    let tree_object = fleet
        .remote_files()
        .into_iter()
        .find(|f| f.starts_with("trees/"))
        .unwrap();
    fs::remove_file(fleet.remote.join(&tree_object)).unwrap();
    for bundle in fleet.remote_files().into_iter().filter(|f| f.starts_with("bundles/")) {
        fs::remove_file(fleet.remote.join(bundle)).unwrap();
    }
    let out = fleet.run("c", &url, &["fetch", &locked]);
    assert!(out.status.success(), "{}", report("fetch", &out));
    let err = text(&out.stderr);
    assert!(err.contains("missing") || err.contains(&tree_object), "{err}");
    fleet.verify("c");
}

#[test]
fn with_the_remote_and_the_forge_both_down_there_is_one_clear_error() {
    let tmp = TempDir::new("remote-both-down");
    let mut cmd = cab();
    cmd.arg("--store")
        .arg(tmp.join("store"))
        .args(["--remote", "http://127.0.0.1:1/cache"])
        .env("CAB_GITHUB_URL", "http://127.0.0.1:1")
        .args([
            "fetch",
            &format!(
                "<github:acme/lib:{{ rev = \"{}\", hash = \"blake3-{}\" }}>",
                "a".repeat(40),
                "b".repeat(64)
            ),
        ]);
    let out = run_timeout(&mut cmd, Duration::from_secs(60));
    assert!(exited_nonzero(out.status));
    let err = text(&out.stderr);
    assert!(err.contains("http://127.0.0.1:1/cache"), "names the remote: {err}");
    assert!(err.contains("127.0.0.1:1"), "and the forge: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_three_file_change_uploads_only_what_changed() {
    let fleet = Fleet::new("remote-dedup");
    let src = fleet.tmp.join("src");
    project(&src, 1);
    forge::commit(&fleet.forge_root, "acme/lib", &src, "main", "one");
    let forge = Forge::start(&fleet.forge_root, &[]);
    let url = forge.url();
    let first = fleet.ok("a", &url, &["fetch", "<github:acme/lib>"]);
    let pushed = fleet.ok("a", &url, &["store", "push", &hash_of(first.trim())]);
    assert!(pushed.contains("pushed"), "{pushed}");

    for i in [3, 11, 27] {
        write_file(
            &src.join(format!("lib/m{i:02}.txt")),
            format!("changed {i}\n").as_bytes(),
            0o644,
        );
    }
    forge::commit(&fleet.forge_root, "acme/lib", &src, "main", "three files");
    let second = fleet.ok("a", &url, &["fetch", "<github:acme/lib>"]);
    let before = fleet.remote_files().len();
    let pushed = fleet.ok("a", &url, &["store", "push", &hash_of(second.trim())]);
    let objects: u64 = pushed
        .split('(')
        .nth(1)
        .and_then(|p| p.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{pushed}"));
    // 3 blobs, 2 tree objects (lib/ and the root), the bundle, the record, 3 index entries
    // (the commit, the tree hash, the narHash), the Nix cache's NAR and narinfo, and the one
    // pack of the changed subtree (the whole tree is one here: it is small).
    assert!(objects <= 13, "{objects} objects for a 3-file change: {pushed}");
    assert!(fleet.remote_files().len() - before <= 13);
    // Pushing again sends nothing new.
    let again = fleet.ok("a", &url, &["store", "push", &hash_of(second.trim())]);
    assert!(again.contains("already"), "{again}");
}

#[test]
fn nix_substitutes_what_cab_pushed() {
    require_nix();
    let fleet = Fleet::new("remote-nix");
    let src = fleet.tmp.join("src");
    project(&src, 7);
    forge::commit(&fleet.forge_root, "acme/lib", &src, "main", "one");
    let forge = Forge::start(&fleet.forge_root, &[]);
    let url = forge.url();
    let key = fleet.tmp.join("secret");
    let public = fleet.tmp.join("public");
    let status = Command::new("nix-store")
        .args(["--generate-binary-cache-key", "cab-test-1"])
        .arg(&key)
        .arg(&public)
        .status()
        .unwrap();
    assert!(status.success());
    let locked = fleet.ok(
        "a",
        &url,
        &[
            "--push",
            "--nix-secret-key",
            key.to_str().unwrap(),
            "fetch",
            "<github:acme/lib>",
        ],
    );
    drop(forge);
    let nar = {
        let start = locked.find("narHash = \"").unwrap() + 11;
        locked[start..start + 51].to_owned()
    };
    let narinfo = fleet
        .remote_files()
        .into_iter()
        .find(|f| f.ends_with(".narinfo"))
        .unwrap();
    let info = fs::read_to_string(fleet.remote.join(&narinfo)).unwrap();
    let store_path = info
        .lines()
        .find_map(|l| l.strip_prefix("StorePath: "))
        .unwrap()
        .to_owned();
    let _ = Command::new("nix-store").arg("--delete").arg(&store_path).output();
    // Nix 2.8's fetchTarball does not consult substituters (NixOS/nix#4313): the path is
    // realized from the cache first, signature checked, then fetchTarball finds it.
    let out = nix_realise_from(&store_path, &fleet.remote_url(), &public);
    assert!(out.status.success(), "{}", report("nix-store --realise", &out));
    let expr = format!("builtins.fetchTarball {{ url = \"http://127.0.0.1:1/gone.tar.gz\"; sha256 = \"{nar}\"; }}");
    let out = run_timeout(Command::new("nix-instantiate").args(["--eval", "-E", &expr]), TIMEOUT);
    assert!(out.status.success(), "{}", report("nix-instantiate", &out));
    assert_eq!(text(&out.stdout).trim().trim_matches('"'), store_path);
    assert_eq!(nix_hash(Path::new(&store_path), None), nar);
    let _ = Command::new("nix-store").arg("--delete").arg(&store_path).output();
}
