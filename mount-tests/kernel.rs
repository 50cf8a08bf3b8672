//! Trees served by the kernel: once a tree the mount serves is whole in the store, its EROFS
//! image is mounted on its directory of the FUSE mount. Every test runs the real `cab mount`
//! as root (file-backed EROFS, Linux 6.12+) against the real forge, and compares what the
//! kernel serves with what FUSE serves, byte for byte, mode for mode, xattr for xattr.
//!
//! The tests here run one at a time: they read /proc/self/mountinfo, which every mount changes.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use support::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A tree with everything an image must carry: executables, empty files, a file of several
/// blocks, symlinks of every kind, an empty directory, names of every length up to 255 bytes
/// and names that are not UTF-8, a deep chain and a wide directory.
fn awkward_tree(root: &Path, generation: u32) {
    write_file(
        &root.join("README"),
        format!("generation {generation}\n").as_bytes(),
        0o644,
    );
    write_file(&root.join("bin/run.sh"), b"#!/bin/sh\necho run\n", 0o755);
    write_file(&root.join("empty"), b"", 0o644);
    write_file(
        &root.join("big.bin"),
        &pseudo_random(70_000, u64::from(generation)),
        0o644,
    );
    mkdir(&root.join("empty-dir"));
    write_file(&root.join("empty-dir/.keep"), b"", 0o644);
    make_symlink("README", &root.join("link-relative"));
    make_symlink("/etc/hostname", &root.join("link-absolute"));
    make_symlink("no/such/target", &root.join("link-dangling"));
    make_symlink("bin", &root.join("link-to-dir"));
    write_file(&root.join("n".repeat(255)), b"longest name\n", 0o644);
    write_file(&root.join("deep/a/b/c/d/e/f/g/leaf.txt"), b"at the bottom\n", 0o644);
    for i in 0..300 {
        write_file(
            &root.join(format!("wide/entry-with-a-longish-name-{i:04}.txt")),
            format!("{i}\n").as_bytes(),
            0o644,
        );
    }
}

/// A JSON description of the tree at `root`: every path with its kind, mode, size, content
/// hash or target, and xattrs (each value, or the errno its read gave).
fn describe(root: &Path) -> String {
    let script = r#"
import hashlib, json, os, stat, sys
root = sys.argv[1]
out = []
for d, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(dirs + files):
        p = os.path.join(d, name)
        st = os.lstat(p)
        e = {"path": os.path.relpath(p, root), "mode": oct(stat.S_IMODE(st.st_mode)), "fmt": stat.S_IFMT(st.st_mode),
             "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime}
        if stat.S_ISREG(st.st_mode):
            e["size"] = st.st_size
            with open(p, "rb") as f:
                e["sha256"] = hashlib.sha256(f.read()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            e["size"] = st.st_size
            e["target"] = os.readlink(p)
        x = {}
        for n in sorted(os.listxattr(p, follow_symlinks=False)):
            try:
                x[n] = os.getxattr(p, n, follow_symlinks=False).decode()
            except OSError as err:
                x[n] = "errno %d" % err.errno
        e["xattrs"] = x
        out.append(e)
print(json.dumps(out, indent=1, sort_keys=True))
"#;
    python(script, &[root.as_os_str()])
}

/// The file system type mounted at `path`, from /proc/self/mountinfo.
fn fs_type_at(path: &Path) -> Option<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_string_lossy();
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (left.split(' ').nth(4)? == want).then(|| right.split(' ').next().unwrap_or("").to_owned())
    })
}

/// Every mount point strictly below `path`.
fn mounts_below(path: &Path) -> Vec<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = format!("{}/", path.to_string_lossy());
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Waits until the daemon says the kernel serves `at` (below the mount point), and checks
/// that an EROFS mount is there.
fn wait_kernel_served(mount: &Mount, at: &Path) {
    let line = format!("{} is served by the kernel", at.display());
    assert!(
        mount.wait_log(&line, Duration::from_secs(60)),
        "expected `{line}`\n{}",
        mount.log()
    );
    assert_eq!(fs_type_at(at).as_deref(), Some("erofs"), "{}", mount.log());
}

/// A second mount of the same store, served through FUSE only, for comparison.
fn fuse_mount(world: &World, name: &str) -> (Mount, PathBuf) {
    let mnt = world.dir(name);
    let mut cmd = world.cab();
    cmd.arg("mount").arg(&mnt).arg("--no-kernel-serve");
    (Mount::start(cmd, &mnt), mnt)
}

fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap()
}

#[test]
fn the_kernel_serves_exactly_what_fuse_serves() {
    let _serial = serial();
    let world = World::new("kernel-same", &[]);
    let src = world.dir("src");
    awkward_tree(&src, 1);
    world.push("acme/awkward", &src, "awkward");
    world.manifest("awkward = '<github:acme/awkward>'\n");
    let mount = world.mount(&[]);
    let island = canonical(&world.mnt).join("awkward");
    assert!(fs::metadata(&island).unwrap().is_dir());
    wait_kernel_served(&mount, &island);
    let kernel = describe(&island);

    let (fuse, fuse_mnt) = fuse_mount(&world, "mnt-fuse");
    let through_fuse = describe(&fuse_mnt.join("awkward"));
    assert!(fuse.log().contains("--no-kernel-serve"), "{}", fuse.log());
    assert_eq!(fs_type_at(&canonical(&fuse_mnt).join("awkward")), None, "FUSE only");
    assert_eq!(kernel, through_fuse, "the kernel and FUSE serve the same tree");
    assert!(
        kernel.contains("user.cab.island") && kernel.contains("user.cab.rev"),
        "{kernel}"
    );
    assert!(kernel.contains("\"user.cab.complete\": \"yes\""), "{kernel}");
    // The root's xattrs, as a user reads them.
    let hash = ok_text(
        tool("getfattr")
            .args(["--only-values", "-n", "user.cab.hash"])
            .arg(&island),
    );
    assert!(hash.starts_with("blake3-"), "{hash}");
    // Writes are refused as by any read-only filesystem.
    let err = fs::write(island.join("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    // Every image written is one fsck.erofs accepts, its files extracted as they are.
    let images = world.store.join("images");
    let metas: Vec<PathBuf> = fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "meta"))
        .collect();
    assert_eq!(metas.len(), 1, "{metas:?}");
    for meta in metas {
        let name = meta.file_name().unwrap().to_string_lossy().into_owned();
        let data = images.join(format!("{}.data", &name[..64]));
        let out = world.dir("extracted");
        ok(Command::new("fsck.erofs")
            .arg(format!("--device={}", data.display()))
            .arg(format!("--extract={}", out.join("tree").display()))
            .arg(&meta));
        assert_eq!(
            ok_text(
                tool("diff")
                    .arg("-r")
                    .arg("--no-dereference")
                    .arg(out.join("tree"))
                    .arg(&src)
            ),
            ""
        );
    }
    fuse.stop();
    mount.stop();
}

#[test]
fn browsed_refs_and_stored_trees_are_served_by_the_kernel_too() {
    let _serial = serial();
    let world = World::new("kernel-views", &[]);
    let src = world.dir("src");
    awkward_tree(&src, 2);
    world.push("acme/views", &src, "views");
    common::forge::commit(&world.forge_root, "acme/views", &src, "release/1.2", "nested");
    let mount = world.mount(&[]);
    let mnt = canonical(&world.mnt);
    let browsed = mnt.join("github/acme/views/main");
    assert!(fs::metadata(&browsed).unwrap().is_dir());
    assert!(fs::metadata(browsed.join("README")).unwrap().is_file());
    wait_kernel_served(&mount, &browsed);
    // A ref with `/` in its name, below a directory of refs, is handed over at its place.
    let nested = mnt.join("github/acme/views/release/1.2");
    assert!(fs::metadata(nested.join("README")).unwrap().is_file());
    wait_kernel_served(&mount, &nested);
    let hash = ok_text(
        tool("getfattr")
            .args(["--only-values", "-n", "user.cab.hash"])
            .arg(&browsed),
    );
    let stored = mnt.join("by-hash").join(hash.trim());
    assert!(fs::metadata(stored.join("README")).unwrap().is_file());
    wait_kernel_served(&mount, &stored);
    assert_eq!(read_text(&stored.join("README")), "generation 2\n");
    // `find -xdev` stops at each kernel-served tree, as under autofs.
    let xdev = ok_text(tool("find").arg(&mnt).args(["-xdev", "-name", "README"]));
    assert_eq!(xdev.trim(), "", "{xdev}");
    mount.stop();
    assert!(mounts_below(&mnt).is_empty(), "{:?}", mounts_below(&mnt));
}

#[test]
fn unmount_and_kill_9_leave_no_mount_behind() {
    let _serial = serial();
    let world = World::new("kernel-unmount", &[]);
    let src = world.dir("src");
    awkward_tree(&src, 3);
    world.push("acme/gone", &src, "gone");
    world.manifest("gone = '<github:acme/gone>'\n");
    let mnt = canonical(&world.mnt);
    // Ctrl-C (SIGTERM) with a tree handed over.
    let mount = world.mount(&[]);
    assert!(fs::metadata(world.at("gone/README")).is_ok());
    wait_kernel_served(&mount, &mnt.join("gone"));
    mount.stop();
    assert!(mounts_below(&mnt).is_empty() && !is_mounted(&mnt));
    // `cab unmount` from another process.
    let mount = world.mount(&[]);
    assert!(fs::metadata(world.at("gone/README")).is_ok());
    wait_kernel_served(&mount, &mnt.join("gone"));
    ok(world.cab().arg("unmount").arg(&world.mnt));
    let deadline = Instant::now() + STOP_TIMEOUT;
    while is_mounted(&mnt) || !mounts_below(&mnt).is_empty() {
        assert!(Instant::now() < deadline, "still mounted after `cab unmount`");
        thread::sleep(Duration::from_millis(50));
    }
    drop(mount);
    // kill -9, then the next `cab unmount` clears everything the daemon left.
    let mount = world.mount(&[]);
    assert!(fs::metadata(world.at("gone/README")).is_ok());
    wait_kernel_served(&mount, &mnt.join("gone"));
    mount.kill9();
    assert!(
        !mounts_below(&mnt).is_empty(),
        "the image is still attached after kill -9"
    );
    ok(world.cab().arg("unmount").arg(&world.mnt));
    assert!(
        mounts_below(&mnt).is_empty() && !is_mounted(&mnt),
        "{:?}",
        mounts_below(&mnt)
    );
}

#[test]
fn collections_keep_what_mounted_images_need_and_damaged_images_are_written_again() {
    let _serial = serial();
    let world = World::new("kernel-gc", &[]);
    let src = world.dir("src");
    awkward_tree(&src, 4);
    world.push("acme/kept", &src, "kept");
    world.manifest("kept = '<github:acme/kept>'\n");
    let mnt = canonical(&world.mnt);
    let mount = world.mount(&[]);
    assert!(fs::metadata(world.at("kept/README")).is_ok());
    wait_kernel_served(&mount, &mnt.join("kept"));
    let before = describe(&mnt.join("kept"));
    ok(world.cab().args(["store", "gc"]));
    ok(world.cab().args(["store", "verify"]));
    drop_caches();
    assert_eq!(
        describe(&mnt.join("kept")),
        before,
        "nothing a mounted image needs is gone"
    );
    mount.stop();

    let images = world.store.join("images");
    let find = |ext: &str| {
        fs::read_dir(&images)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == ext))
            .unwrap()
    };
    // A damaged superblock: the kernel refuses it, and it is written again.
    let meta = find("meta");
    let mut bytes = fs::read(&meta).unwrap();
    bytes[1024..1100].fill(0xa5);
    fs::write(&meta, &bytes).unwrap();
    let mount = world.mount(&[]);
    assert!(fs::metadata(world.at("kept/README")).is_ok());
    wait_kernel_served(&mount, &mnt.join("kept"));
    assert!(mount.log().contains("(written in"), "{}", mount.log());
    assert_eq!(describe(&mnt.join("kept")), before);
    mount.stop();
    // A deleted data file: written again.
    fs::remove_file(find("data")).unwrap();
    let mount = world.mount(&[]);
    assert!(fs::metadata(world.at("kept/README")).is_ok());
    wait_kernel_served(&mount, &mnt.join("kept"));
    assert_eq!(describe(&mnt.join("kept")), before);
    mount.stop();
    // Damaged file data: `cab store verify` finds it and deletes the image.
    let data = find("data");
    let mut bytes = fs::read(&data).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&data, &bytes).unwrap();
    let out = run(world.cab().args(["store", "verify"]));
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("corrupt image"), "{}", text(&out.stdout));
    assert!(!data.exists(), "a damaged image is deleted, to be written again");
    ok(world.cab().args(["store", "verify"]));
}

#[test]
fn the_image_cache_stays_within_its_bound() {
    let _serial = serial();
    let world = World::new("kernel-bound", &[]);
    for (i, repo) in ["acme/one", "acme/two"].iter().enumerate() {
        let src = world.dir(&format!("src-{i}"));
        write_file(&src.join("payload.bin"), &pseudo_random(600_000, i as u64), 0o644);
        write_file(&src.join("README"), format!("{repo}\n").as_bytes(), 0o644);
        world.push(repo, &src, repo);
    }
    world.manifest("one = '<github:acme/one>'\ntwo = '<github:acme/two>'\n");
    let mnt = canonical(&world.mnt);
    // Room for one image, not two.
    let mount = world.mount(&["--image-cache-size", "1M"]);
    assert!(fs::metadata(world.at("one/README")).is_ok());
    wait_kernel_served(&mount, &mnt.join("one"));
    assert_eq!(read_text(&world.at("two/README")), "acme/two\n");
    assert!(
        mount.wait_log("two stays on FUSE: the image cache is full", Duration::from_secs(30)),
        "{}",
        mount.log()
    );
    assert_eq!(fs_type_at(&mnt.join("two")), None);
    let held: u64 = fs::read_dir(world.store.join("images"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(held <= 1 << 20, "the cache holds {held} bytes");
    mount.stop();
}

#[test]
fn a_running_mount_moves_to_new_trees_under_its_readers() {
    let _serial = serial();
    let world = World::new("kernel-update", &[]);
    let src = world.dir("src");
    awkward_tree(&src, 5);
    world.push("acme/moving", &src, "first");
    world.manifest("moving = '<github:acme/moving>'\n");
    let mnt = canonical(&world.mnt);
    let island = mnt.join("moving");
    let mount = world.mount(&[]);
    assert_eq!(read_text(&island.join("README")), "generation 5\n");
    wait_kernel_served(&mount, &island);
    // A reader holding a file open, and a shell inside the tree.
    let mut held = fs::File::open(island.join("big.bin")).unwrap();
    let mut shell = Children(vec![
        Command::new("sh")
            .args(["-c", "read line; cat README; ls wide | wc -l"])
            .current_dir(&island)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ]);
    // The branch moves; `cab mount --update` moves the running mount.
    fs::remove_dir_all(&src).unwrap();
    awkward_tree(&src, 6);
    world.push("acme/moving", &src, "second");
    let out = run(world.cab().arg("mount").arg("--update").arg(&world.mnt));
    assert!(out.status.success(), "{}", report("cab mount --update MNT", &out));
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_text(&island.join("README")) != "generation 6\n" {
        assert!(Instant::now() < deadline, "the mount did not move\n{}", mount.log());
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        mount.wait_log("moving: moved to", Duration::from_secs(30)),
        "{}",
        mount.log()
    );
    wait_kernel_served(&mount, &island);
    // The open file and the shell's directory are the first tree's, whole.
    let mut bytes = Vec::new();
    held.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes, pseudo_random(70_000, 5));
    use std::io::Write;
    let child = &mut shell.0[0];
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut said = String::new();
    child.stdout.take().unwrap().read_to_string(&mut said).unwrap();
    assert_eq!(said, "generation 5\n300\n");
    // One image mounted there now (the old one detached).
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let at_island = mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(&*island.to_string_lossy()))
        .count();
    assert_eq!(at_island, 1, "{mountinfo}");
    mount.stop();
}

/// Makes the kernel drop clean page cache, dentries and inodes.
fn drop_caches() {
    fs::write("/proc/sys/vm/drop_caches", "3").expect("cannot write /proc/sys/vm/drop_caches (root)");
}
