//! A fleet sharing one store on a real Garage (S3): machine A fetches from the forge and
//! pushes; the forge goes down; machine B, with an empty store, mounts the same islands and
//! reads them from the bucket; with the forge back, B's update stops at the remote's index.
//! Then what goes wrong with a remote: bad credentials, a missing bucket, a corrupted object,
//! a remote that stalls, a node of a three-node cluster killed — each a clear message and,
//! where the forge is up, the forge instead. And Nix substituting from the bucket's website.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::forge::{self, Forge};
use common::garage::{BUCKET, Garage};
use common::*;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(180);

/// A source tree with an empty file and an empty directory (S3 servers have tripped on both),
/// and two identical directories.
fn project(dir: &Path, generation: u32) {
    write_file(
        &dir.join("README"),
        format!("generation {generation}\n").as_bytes(),
        0o644,
    );
    write_file(&dir.join("bin/run"), b"#!/bin/sh\necho run\n", 0o755);
    write_file(&dir.join("empty"), b"", 0o644);
    mkdir(&dir.join("empty-dir"));
    // Two identical directories: one tree object seen twice in a level of the listing.
    for twin in ["a", "b"] {
        write_file(&dir.join(format!("twins/{twin}/same.txt")), b"the same\n", 0o644);
    }
    for i in 0..40 {
        write_file(
            &dir.join(format!("lib/m{i:02}.txt")),
            &pseudo_random(1500 + i * 41, u64::from(generation) * 1000 + i as u64),
            0o644,
        );
    }
    make_symlink("lib/m00.txt", &dir.join("link"));
}

/// `cab --store DIR [--remote URL] ARGS` with the key, against `github`.
fn cab_on(store: &Path, remote: Option<&str>, garage: &Garage, github: &str) -> Command {
    let mut cmd = cab();
    cmd.arg("--store").arg(store).env("CAB_GITHUB_URL", github);
    if let Some(remote) = remote {
        cmd.arg("--remote").arg(remote);
    }
    garage.credentials(&mut cmd);
    cmd
}

/// Machine A pins the manifest's island `name` from the forge and pushes it to `garage`
/// (`update` waits for its pushes before it exits); returns its tree hash, and a directory
/// holding the tree as `t` to compare with.
fn pin_and_push(world: &World, garage: &Garage, name: &str) -> (String, PathBuf) {
    let mut update = world.cab();
    garage.credentials(&mut update);
    update.args(["--remote", &garage.remote_url(), "--push", "update"]);
    run_ok(&mut update);
    let tree = hash_of(&world.locked(name).expect("pinned"));
    let reference = world.dir("reference");
    export(&world.store, &tree, &reference.join("t"));
    (tree, reference)
}

/// Machine B's project: machine A's manifest and lock.
fn machine_b(world: &World) -> PathBuf {
    let b = world.dir("machine-b");
    for file in ["islands.toml", "islands.lock"] {
        fs::copy(world.project.join(file), b.join(file)).unwrap();
    }
    b
}

fn hash_of(locked: &str) -> String {
    let start = locked.find("blake3-").expect("a tree hash");
    locked[start..start + 71].to_owned()
}

fn export(store: &Path, tree: &str, dest: &Path) {
    run_ok(
        cab()
            .arg("--store")
            .arg(store)
            .args(["store", "export", tree])
            .arg(dest),
    );
}

/// `curl --aws-sigv4` against the bucket: the test's own hands on objects.
fn curl_s3(garage: &Garage, method: &str, key: &str, body: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new("curl");
    // curl signs what it is given; Garage wants the payload's hash header present.
    cmd.args(["-sS", "-f", "-X", method, "--aws-sigv4", "aws:amz:garage:s3"])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .arg("--user")
        .arg(format!("{}:{}", garage.key_id, garage.secret));
    if let Some(body) = body {
        cmd.arg("--data-binary").arg(format!("@{}", body.display()));
    }
    cmd.arg(format!("http://127.0.0.1:{}/{BUCKET}/{key}", garage.s3_port));
    run_timeout(&mut cmd, Duration::from_secs(30))
}

#[test]
fn machine_b_mounts_what_machine_a_pushed_without_the_forge() {
    let world = World::new("fleet-two-machines", &[]);
    let garage = Garage::start(&world.dir("garage"), 1);
    let remote = garage.remote_url();
    let src = world.dir("src");
    project(&src, 1);
    world.push("acme/lib", &src, "one");
    world.manifest("lib = '<github:acme/lib>'\n");

    // Machine A: pins and pushes.
    let (_, reference) = pin_and_push(&world, &garage, "lib");

    // Machine B: an empty store, the same manifest and lock, the forge down.
    let b = machine_b(&world);
    let b_store = world.dir("machine-b-store");
    let b_mnt = world.dir("machine-b-mnt");
    // Nothing listens on port 1: the forge is down for machine B.
    let forge_down = "http://127.0.0.1:1".to_owned();
    let mut cmd = cab_on(&b_store, Some(&remote), &garage, &forge_down);
    cmd.current_dir(&b).arg("-v").arg("mount").arg(&b_mnt);
    let mount = Mount::start(cmd, &b_mnt);
    assert_same_tree(&reference.join("t"), &b_mnt.join("lib"));
    assert!(mount.log().contains("from the remote"), "{}", mount.log());
    mount.stop();

    // The forge back (a new port): B's update asks it for the commit, finds its tree on the
    // remote's index, and downloads no archive.
    let forge_root = world.forge_root.clone();
    let forge = Forge::start(&forge_root, &[]);
    let mut cmd = cab_on(&b_store, Some(&remote), &garage, &forge.url());
    cmd.current_dir(&b).args(["-v", "update"]);
    let out = run_timeout(&mut cmd, TIMEOUT);
    assert!(out.status.success(), "{}", report("update on B", &out));
    assert!(text(&out.stderr).contains("up to date"), "{}", text(&out.stderr));
    let requests = forge.settled_requests(Duration::from_millis(300), Duration::from_secs(5));
    assert!(requests.iter().all(|r| !r.path.contains("/archive/")), "{requests:?}");
    run_ok(cab().arg("--store").arg(&b_store).args(["store", "verify"]));
}

#[test]
fn what_goes_wrong_with_a_remote_is_said_clearly() {
    let tmp = TempDir::new("fleet-errors");
    let garage = Garage::start(&tmp.join("garage"), 1);
    let forge_root = tmp.join("forge");
    let src = tmp.join("src");
    project(&src, 2);
    forge::commit(&forge_root, "acme/lib", &src, "main", "one");
    let forge = Forge::start(&forge_root, &[]);
    let a = tmp.join("a");
    let out = run_ok(cab_on(&a, None, &garage, &forge.url()).args(["fetch", "<github:acme/lib>"]));
    let locked = text(&out.stdout).trim().to_owned();
    let tree = hash_of(&locked);

    // Bad credentials: refused, with what to check.
    let mut cmd = cab_on(&a, Some(&garage.remote_url()), &garage, &forge.url());
    cmd.env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["store", "push", &tree]);
    let out = run_timeout(&mut cmd, TIMEOUT);
    assert!(exited_nonzero(out.status));
    let err = text(&out.stderr);
    assert!(err.contains("403") && err.contains("AWS_ACCESS_KEY_ID"), "{err}");

    // A bucket that does not exist.
    let missing = garage.remote_url().replace(BUCKET, "no-such-bucket");
    let out = run_timeout(
        cab_on(&a, Some(&missing), &garage, &forge.url()).args(["store", "push", &tree]),
        TIMEOUT,
    );
    assert!(exited_nonzero(out.status));
    let err = text(&out.stderr);
    assert!(err.contains("no-such-bucket"), "{err}");

    // Pushed, then one blob corrupted in the bucket: a fresh store is warned (object and
    // remote named) and gets the island from the forge.
    run_ok(cab_on(&a, Some(&garage.remote_url()), &garage, &forge.url()).args(["store", "push", &tree]));
    let listing = curl_s3(&garage, "GET", "?list-type=2&prefix=blobs%2F", None);
    assert!(listing.status.success(), "{}", report("list the bucket", &listing));
    let listing = text(&listing.stdout);
    let blob = listing
        .split("<Key>")
        .skip(1)
        .map(|k| k.split("</Key>").next().unwrap().to_owned())
        .find(|k| k.starts_with("blobs/"))
        .expect("blobs on the remote");
    let garbage = tmp.join("garbage");
    fs::write(&garbage, b"not what the hash says").unwrap();
    assert!(curl_s3(&garage, "PUT", &blob, Some(&garbage)).status.success());
    // Its pack too (else the file comes from the pack, checked, and the blob is not needed).
    let packs = curl_s3(&garage, "GET", "?list-type=2&prefix=packs%2F", None);
    for pack in text(&packs.stdout)
        .split("<Key>")
        .skip(1)
        .map(|k| k.split("</Key>").next().unwrap().to_owned())
    {
        assert!(curl_s3(&garage, "DELETE", &pack, None).status.success());
    }
    let b = tmp.join("b");
    let out = run_timeout(
        cab_on(&b, Some(&garage.remote_url()), &garage, &forge.url()).args(["fetch", &locked]),
        TIMEOUT,
    );
    assert!(out.status.success(), "{}", report("fetch", &out));
    let err = text(&out.stderr);
    assert!(
        err.contains(&blob) && err.contains("corrupt") && err.contains(BUCKET),
        "{err}"
    );

    // A remote that accepts connections and never answers: given up within the stall
    // timeout, and the forge serves.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let stalling = format!("s3://{BUCKET}?endpoint=http://127.0.0.1:{port}&region=garage");
    let started = Instant::now();
    let c = tmp.join("c");
    let out = run_timeout(
        cab_on(&c, Some(&stalling), &garage, &forge.url()).args(["fetch", "--stall-timeout", "3", &locked]),
        TIMEOUT,
    );
    assert!(out.status.success(), "{}", report("fetch past a stalled remote", &out));
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    // Both down: one clear error, no hang.
    drop(forge);
    let d = tmp.join("d");
    let out = run_timeout(
        cab_on(&d, Some(&stalling), &garage, "http://127.0.0.1:1").args(["fetch", "--stall-timeout", "3", &locked]),
        TIMEOUT,
    );
    assert!(exited_nonzero(out.status));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("127.0.0.1:1"),
        "{err}"
    );
    drop(silent);
}

#[test]
fn a_three_node_cluster_serves_with_a_node_killed() {
    let tmp = TempDir::new("fleet-cluster");
    let mut garage = Garage::start(&tmp.join("garage"), 3);
    let forge_root = tmp.join("forge");
    let src = tmp.join("src");
    project(&src, 3);
    forge::commit(&forge_root, "acme/lib", &src, "main", "one");
    let mut forge = Forge::start(&forge_root, &[]);
    let a = tmp.join("a");
    let out = run_ok(cab_on(&a, Some(&garage.remote_url()), &garage, &forge.url()).args([
        "--push",
        "fetch",
        "<github:acme/lib>",
    ]));
    let locked = text(&out.stdout).trim().to_owned();
    let tree = hash_of(&locked);
    forge.stop();
    // A node dies (not the one cab talks to): the other two hold every object.
    garage.kill_node(2);
    let b = tmp.join("b");
    let out = run_timeout(
        cab_on(&b, Some(&garage.remote_url()), &garage, "http://127.0.0.1:1").args(["-v", "fetch", &locked]),
        TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{}",
        report("fetch from a degraded cluster", &out)
    );
    assert!(text(&out.stderr).contains("from the remote"));
    let (ea, eb) = (tmp.join("ea"), tmp.join("eb"));
    export(&a, &tree, &ea);
    export(&b, &tree, &eb);
    assert_same_tree(&ea, &eb);
}

#[test]
fn nix_and_cab_read_the_bucket_over_its_website() {
    require_nix();
    let tmp = TempDir::new("fleet-nix");
    let garage = Garage::start(&tmp.join("garage"), 1);
    let forge_root = tmp.join("forge");
    let src = tmp.join("src");
    project(&src, 4);
    forge::commit(&forge_root, "acme/lib", &src, "main", "one");
    let mut forge = Forge::start(&forge_root, &[]);
    let (key, public) = (tmp.join("secret"), tmp.join("public"));
    run_ok(
        Command::new("nix-store")
            .args(["--generate-binary-cache-key", "cab-fleet-1"])
            .arg(&key)
            .arg(&public),
    );
    let a = tmp.join("a");
    let out = run_ok(
        cab_on(&a, Some(&garage.remote_url()), &garage, &forge.url())
            .args(["--push", "--nix-secret-key"])
            .arg(&key)
            .args(["fetch", "<github:acme/lib>"]),
    );
    let locked = text(&out.stdout).trim().to_owned();
    forge.stop();
    let nar = {
        let start = locked.find("narHash = \"").unwrap() + 11;
        locked[start..start + 51].to_owned()
    };

    // cab reads the website as a read-only HTTP remote.
    let b = tmp.join("b");
    let out = run_timeout(
        cab_on(&b, Some(&garage.web_url()), &garage, "http://127.0.0.1:1").args(["-v", "fetch", &locked]),
        TIMEOUT,
    );
    assert!(out.status.success(), "{}", report("fetch over the website", &out));

    // Nix substitutes the fixed-output path, signature checked, with the URL unreachable.
    let expr = format!("builtins.fetchTarball {{ url = \"http://127.0.0.1:1/gone.tar.gz\"; sha256 = \"{nar}\"; }}");
    let narinfo_path = nix_store_path(&nar);
    let _ = Command::new("nix-store").arg("--delete").arg(&narinfo_path).output();
    let out = nix_realise_from(&narinfo_path, &garage.web_url(), &public);
    assert!(out.status.success(), "{}", report("nix-store --realise", &out));
    let out = run_timeout(Command::new("nix-instantiate").args(["--eval", "-E", &expr]), TIMEOUT);
    assert!(out.status.success(), "{}", report("nix-instantiate", &out));
    assert_eq!(text(&out.stdout).trim().trim_matches('"'), narinfo_path);
    let _ = Command::new("nix-store").arg("--delete").arg(&narinfo_path).output();
}

/// The store path Nix gives a `source` with this narHash: asked of Nix itself.
fn nix_store_path(nar: &str) -> String {
    let expr = format!(
        "builtins.toString (derivation {{ name = \"source\"; builder = \"x\"; system = \"x\"; outputHashMode = \"recursive\"; outputHashAlgo = \"sha256\"; outputHash = \"{nar}\"; }}).outPath"
    );
    let out = run_ok(Command::new("nix-instantiate").args(["--eval", "-E", &expr]));
    text(&out.stdout).trim().trim_matches('"').to_owned()
}

/// Machine A's island `lib`: [`project`] of `generation` with a 3 MiB file no test reads
/// first, pinned and pushed; returns the directory holding it as `t`.
fn lib_with_a_big_file(world: &World, garage: &Garage, generation: u32) -> PathBuf {
    let src = world.dir("src");
    project(&src, generation);
    let big = pseudo_random(3 << 20, u64::from(generation) * 11);
    write_file(&src.join("big/never-read.bin"), &big, 0o644);
    world.push("acme/lib", &src, "one");
    world.manifest("lib = '<github:acme/lib>'\n");
    pin_and_push(world, garage, "lib").1
}

/// How many GetObject requests Garage has answered (its Prometheus metrics).
fn garage_gets(garage: &Garage) -> u64 {
    let out = Command::new("curl")
        .args(["-sS", &format!("http://127.0.0.1:{}/metrics", garage.admin_port)])
        .output()
        .unwrap();
    text(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("api_s3_request_counter") && l.contains("api_endpoint=\"GetObject\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn a_tree_on_the_remote_is_served_at_once_and_its_files_arrive_when_read() {
    let world = World::new("fleet-lazy", &[]);
    let garage = Garage::start(&world.dir("garage"), 1);
    let remote = garage.remote_url();
    let reference = lib_with_a_big_file(&world, &garage, 5);
    let b = machine_b(&world);
    let (b_store, b_mnt) = (world.dir("b-store"), world.dir("b-mnt"));
    let mount_b = |extra: &[&str]| {
        let mut cmd = cab_on(&b_store, Some(&remote), &garage, "http://127.0.0.1:1");
        cmd.current_dir(&b).arg("-v").arg("mount").arg(&b_mnt).args(extra);
        Mount::start(cmd, &b_mnt)
    };
    let mount = mount_b(&[]);
    let island = b_mnt.join("lib");

    // The listing is here before any file: names, kinds, sizes, modes.
    let ls = ok_text(tool("ls").arg("-lR").arg(&island));
    let ls_ref = ok_text(tool("ls").arg("-lR").arg(reference.join("t")));
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.ends_with(':') && !l.starts_with("total"))
            .map(|l| {
                l.split_whitespace()
                    .filter(|w| !w.contains(':'))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    assert_eq!(strip(&ls).len(), strip(&ls_ref).len(), "{ls}\n---\n{ls_ref}");
    let xattr = |p: &Path| {
        let out = run_ok(
            tool("python3")
                .args([
                    "-c",
                    "import os,sys; print(os.getxattr(sys.argv[1], 'user.cab.complete').decode())",
                ])
                .arg(p),
        );
        text(&out.stdout).trim().to_owned()
    };
    assert_eq!(xattr(&island), "no");
    assert!(
        mount.log().contains("(listing: 1 objects"),
        "the listing is one bundle: {}",
        mount.log()
    );
    assert!(
        fs::read_dir(b_store.join("roots")).map(|d| d.count()).unwrap_or(0) == 0,
        "nothing is published while files are missing"
    );

    // 32 readers of one never-read file: one GET.
    let before = garage_gets(&garage);
    let big = island.join("big/never-read.bin");
    let readers: Vec<_> = (0..32)
        .map(|_| {
            tool("sha256sum")
                .arg(&big)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let want = text(&run_ok(tool("sha256sum").arg(reference.join("t/big/never-read.bin"))).stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    for reader in readers {
        let out = reader.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(text(&out.stdout).split(' ').next().unwrap(), want);
    }
    assert_eq!(garage_gets(&garage) - before, 1, "one GET for 32 readers");

    // A corrupted object in the bucket: EIO for that file only, the rest reads fine.
    let victim = "lib/m07.txt";
    let blob = {
        let bytes = fs::read(reference.join("t").join(victim)).unwrap();
        format!("blobs/{}", blake3::hash(&bytes).to_hex())
    };
    let garbage = world.dir("g").join("garbage");
    fs::write(&garbage, b"corrupt").unwrap();
    assert!(curl_s3(&garage, "PUT", &blob, Some(&garbage)).status.success());
    let mount_log_before = mount.log().len();
    let read = fs::read(island.join(victim));
    assert_eq!(read.err().and_then(|e| e.raw_os_error()), Some(libc::EIO));
    assert!(mount.log()[mount_log_before..].contains("corrupt"), "{}", mount.log());
    assert_same_tree_except(&reference.join("t"), &island, victim);
    mount.stop();

    // With --prefetch the tree completes in the background (the corrupt object put right
    // first) and is published.
    let good = world.dir("good").join("blob");
    fs::copy(reference.join("t").join(victim), &good).unwrap();
    assert!(curl_s3(&garage, "PUT", &blob, Some(&good)).status.success());
    let mount = mount_b(&["--prefetch"]);
    assert!(
        mount.wait_log("published", Duration::from_secs(60)),
        "--prefetch completes the tree\n{}",
        mount.log()
    );
    assert_eq!(xattr(&island), "yes");
    assert_same_tree(&reference.join("t"), &island);
    mount.stop();
    run_ok(cab().arg("--store").arg(&b_store).args(["store", "verify"]));
}

/// A reader going through many directories of a lazily served tree is reading the tree, not
/// a few files: the rest comes in the background, each blob fetched once whether the reader or
/// the completion asks first, and the tree is published when whole.
#[test]
fn a_reader_going_through_the_tree_brings_the_rest_in_the_background() {
    let world = World::new("fleet-bulk", &[]);
    let garage = Garage::start(&world.dir("garage"), 1);
    let remote = garage.remote_url();
    let src = world.dir("src");
    for d in 0..48 {
        for f in 0..6 {
            let body = pseudo_random(700 + d * 13 + f, (d * 100 + f) as u64);
            write_file(&src.join(format!("d{d:02}/f{f}.txt")), &body, 0o644);
        }
    }
    world.push("acme/wide", &src, "one");
    world.manifest("wide = '<github:acme/wide>'\n");
    let (_, reference) = pin_and_push(&world, &garage, "wide");
    let b = machine_b(&world);
    let (b_store, b_mnt) = (world.dir("b-store"), world.dir("b-mnt"));
    let mut cmd = cab_on(&b_store, Some(&remote), &garage, "http://127.0.0.1:1");
    cmd.current_dir(&b).arg("-v").arg("mount").arg(&b_mnt);
    let mount = Mount::start(cmd, &b_mnt);
    let island = b_mnt.join("wide");
    assert_eq!(fs::read_dir(&island).unwrap().count(), 48);
    let before = garage_gets(&garage);
    // One file in each of the first 40 directories, as a walk would start.
    for d in 0..40 {
        let name = format!("d{d:02}/f0.txt");
        assert_eq!(
            fs::read(island.join(&name)).unwrap(),
            fs::read(reference.join("t").join(&name)).unwrap()
        );
    }
    assert!(
        mount.wait_log("published", TIMEOUT),
        "reading across directories completes the tree\n{}",
        mount.log()
    );
    // No file fetched twice: at most one GET for each of the 288 files (all different), or
    // fewer where the completion took the rest in a pack; the listing came before `before`.
    let gets = garage_gets(&garage) - before;
    assert!((40..=48 * 6 + 1).contains(&gets), "{gets} GETs for 288 files");
    assert_same_tree(&reference.join("t"), &island);
    // `cab status` counts it whole.
    let out = run_ok(cab().arg("--store").arg(&b_store).args(["status", "--json"]));
    let snapshot: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let local = &snapshot["served"][0]["local"];
    assert_eq!(
        (&local["files_local"], &local["files"]),
        (&288.into(), &288.into()),
        "{snapshot}"
    );
    mount.stop();
    run_ok(cab().arg("--store").arg(&b_store).args(["store", "verify"]));
}

/// `cab status` of a tree served lazily: how much of it is here, out of how much, and the
/// remote's health from the mount's own requests — answered, then failing once the remote is
/// gone, with the error and its time — without asking the remote anything itself.
#[test]
fn cab_status_says_how_much_of_a_lazy_tree_is_here_and_how_the_remote_is() {
    let world = World::new("fleet-status", &[]);
    let mut garage = Garage::start(&world.dir("garage"), 1);
    let remote = garage.remote_url();
    let reference = lib_with_a_big_file(&world, &garage, 7);
    // The tree's files, each distinct content once, and their bytes.
    let mut contents = std::collections::HashMap::new();
    for file in files_under(&reference.join("t")) {
        let bytes = fs::read(&file).unwrap();
        contents.insert(blake3::hash(&bytes), bytes.len() as u64);
    }
    let (files, bytes) = (contents.len() as u64, contents.values().sum::<u64>());
    let b = machine_b(&world);
    let (b_store, b_mnt) = (world.dir("b-store"), world.dir("b-mnt"));
    let mut cmd = cab_on(&b_store, Some(&remote), &garage, "http://127.0.0.1:1");
    cmd.current_dir(&b).arg("-v").arg("mount").arg(&b_mnt);
    let mount = Mount::start(cmd, &b_mnt);
    let island = b_mnt.join("lib");
    let status = |json: bool| {
        let mut cmd = cab();
        cmd.arg("--store").arg(&b_store).arg("status");
        if json {
            cmd.arg("--json");
        }
        let out = run_timeout(&mut cmd, Duration::from_secs(30));
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let json = || serde_json::from_str::<serde_json::Value>(status(true).trim()).unwrap();

    // One file read (and its directory's small files fetched ahead): some of the tree is here.
    assert_eq!(fs::read(island.join("README")).unwrap(), b"generation 7\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    let snapshot = loop {
        let snapshot = json();
        let local = &snapshot["served"][0]["local"];
        if local["files_local"].as_u64().unwrap_or(0) >= 1 || Instant::now() > deadline {
            break snapshot;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let local = &snapshot["served"][0]["local"];
    assert_eq!(snapshot["served"][0]["served_by"], "fuse, lazily", "{snapshot}");
    assert_eq!(local["files"], files, "{snapshot}");
    assert_eq!(local["bytes"], bytes, "{snapshot}");
    let here = local["files_local"].as_u64().unwrap();
    assert!((1..files).contains(&here), "{snapshot}");
    assert!(
        local["bytes_local"].as_u64().unwrap() < 3 << 20,
        "the big file is not here: {snapshot}"
    );
    let health = &snapshot["remote"];
    assert_eq!(health["last_ok"], true, "{snapshot}");
    assert!(health["answered"].as_u64().unwrap() >= 2, "{snapshot}");
    assert_eq!(health["failed"], 0, "{snapshot}");
    assert!(health["url"].as_str().unwrap().contains("127.0.0.1"), "{snapshot}");
    let said = status(false);
    for needle in [
        "lib: blake3-".to_owned(),
        format!("served by fuse, lazily; {here} of {files} files"),
        "MB here".to_owned(),
        "last request answered".to_owned(),
        "0 failed".to_owned(),
    ] {
        assert!(said.contains(&needle), "{needle:?} in\n{said}");
    }

    // The remote goes away: a read of a file not here fails, and the status says why.
    garage.kill_node(0);
    let read = fs::read(island.join("big/never-read.bin"));
    assert_eq!(read.err().and_then(|e| e.raw_os_error()), Some(libc::EIO));
    let snapshot = json();
    let health = &snapshot["remote"];
    assert_eq!(health["last_ok"], false, "{snapshot}");
    assert!(health["failed"].as_u64().unwrap() >= 1, "{snapshot}");
    assert!(health["last_error_at"].as_u64().is_some(), "{snapshot}");
    assert!(!health["last_error"].as_str().unwrap_or("").is_empty(), "{snapshot}");
    let said = status(false);
    assert!(!said.contains("X-Amz-Signature"), "no presigned URL is shown: {said}");
    assert!(said.contains("last request FAILED"), "{said}");
    let error_at = said.split("; last error ").nth(1).unwrap_or_default();
    assert!(
        error_at
            .split(" s ago: ")
            .next()
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s < 30)),
        "{said}"
    );
    // Asking is answered from the mount's memory: as quickly with the remote gone.
    let started = Instant::now();
    status(true);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    mount.stop();
}

/// Every file of `expected` reads the same through `actual`, but `except`.
fn assert_same_tree_except(expected: &Path, actual: &Path, except: &str) {
    for file in files_under(expected) {
        let rel = file.strip_prefix(expected).unwrap();
        if rel == Path::new(except) {
            continue;
        }
        assert_eq!(
            fs::read(&file).unwrap(),
            fs::read(actual.join(rel)).unwrap(),
            "{}",
            rel.display()
        );
    }
}

#[test]
fn cab_doctor_checks_what_cab_depends_on_and_says_how_to_fix_it() {
    let tmp = TempDir::new("fleet-doctor");
    let garage = Garage::start(&tmp.join("garage"), 1);
    let store = tmp.join("store");
    // On this machine (root, a recent kernel, a store on disk, a Garage that answers): all
    // is well, and a token is reported without its value.
    let mut cmd = cab_on(&store, Some(&garage.remote_url()), &garage, "http://127.0.0.1:9");
    cmd.env("CAB_TOKENS", "git.example.org=very-secret-token").arg("doctor");
    let out = run_timeout(&mut cmd, TIMEOUT);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", text(&out.stderr));
    for needle in [
        "ok    /dev/fuse: opens",
        "ok    store: ",
        "ok    remote store: s3://cab-islands/",
        "a probe written and read back",
        "ok    token for git.example.org: present",
        "all is well",
    ] {
        assert!(said.contains(needle), "{needle:?} in\n{said}");
    }
    assert!(!said.contains("very-secret-token"), "{said}");

    // A wrong secret, and a store that cannot be one: each named, with what to do; exit 1.
    let not_a_dir = tmp.join("a-file");
    fs::write(&not_a_dir, b"").unwrap();
    let mut cmd = cab_on(&not_a_dir, Some(&garage.remote_url()), &garage, "http://127.0.0.1:9");
    cmd.env("AWS_SECRET_ACCESS_KEY", "not-the-secret").arg("doctor");
    let out = run_timeout(&mut cmd, TIMEOUT);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}\n{}", text(&out.stderr));
    assert!(said.contains("FAIL  store: "), "{said}");
    assert!(said.contains("point `store` elsewhere"), "{said}");
    assert!(said.contains("FAIL  remote store: "), "{said}");
    assert!(said.contains("403") && said.contains("AWS_SECRET_ACCESS_KEY"), "{said}");
    assert!(said.contains("2 check(s) failed"), "{said}");
}
