//! On filesystems with shared extents (btrfs, XFS) the writer clones each file's blocks
//! from its source instead of copying them: checked with FIEMAP (`filefrag -v` marks the
//! image's data extents "shared"), then the image is fscked and mounted like any other.
//! Also the home of the ≥ 4 GiB file test: a sparse source clones in no time and no space.
//!
//! Each filesystem is made on a sparse file in /dev/shm, attached to a loop device and
//! mounted; a guard unmounts and detaches it whatever happens. Skipped (with a message) where
//! mkfs.btrfs / mkfs.xfs are not installed.

#[path = "erofs_support/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cab::erofs::{Options, Placement};
use common::*;

/// A filesystem on a loop device over a file in /dev/shm, gone on drop.
struct LoopFs {
    backing: Scratch,
    device: String,
    dir: PathBuf,
}

impl LoopFs {
    fn new(kind: &str) -> Option<LoopFs> {
        if !have(&format!("mkfs.{kind}")) || !have("losetup") {
            eprintln!("skipped: mkfs.{kind} or losetup not installed");
            return None;
        }
        let backing = Scratch::new_in(Path::new("/dev/shm"), kind);
        let file = backing.path("fs.img");
        fs::File::create(&file)
            .expect("backing file")
            .set_len(2 << 30)
            .expect("size backing file");
        let device = run(Command::new("losetup").args(["--find", "--show"]).arg(&file))
            .trim()
            .to_string();
        let mut fs = LoopFs {
            backing,
            device,
            dir: PathBuf::new(),
        };
        let mut mkfs = Command::new(format!("mkfs.{kind}"));
        if kind == "xfs" {
            mkfs.args(["-q", "-m", "reflink=1"]);
        } else {
            mkfs.arg("-q");
        }
        run(mkfs.arg(&fs.device));
        let dir = fs.backing.path("mnt");
        fs::create_dir_all(&dir).expect("mount point");
        run(Command::new("mount").arg(&fs.device).arg(&dir));
        fs.dir = dir;
        Some(fs)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// How many blocks of the file `filefrag -v` (FIEMAP) shows in extents marked shared.
fn shared_blocks(path: &Path) -> u64 {
    let out = run(Command::new("filefrag").arg("-v").arg("-b4096").arg(path));
    out.lines()
        .filter(|l| l.contains("shared"))
        .filter_map(|l| l.split(':').nth(3)?.trim().parse::<u64>().ok())
        .sum()
}

fn tree() -> Node {
    let sizes = [1usize, 4095, 4096, 4097, (1 << 20) + 3, 10 << 20];
    let files = sizes.iter().enumerate().map(|(i, &len)| {
        (
            format!("f{i}").into_bytes(),
            file(
                bytes(i as u64, len),
                i % 2 == 0,
                vec![x("user.cab.hash", format!("{i}"))],
            ),
        )
    });
    dir(files.collect::<Vec<_>>(), vec![x("user.cab.rev", "r")])
}

fn clones_on(kind: &str) {
    let Some(lfs) = LoopFs::new(kind) else { return };
    let work = Scratch::new_in(&lfs.dir, "work");
    let root = tree();
    let t = build_tree(&root, &work.path("blobs"));
    let expect = Expect {
        uid: 0,
        gid: 0,
        mount: true,
    };

    for (placement, name) in [(Placement::InImage, "single"), (Placement::SeparateFile, "split")] {
        let options = Options {
            placement,
            ..Options::default()
        };
        let (image, data, stats, _) = write(&t, &options, &work.0, name);
        // Whole blocks are cloned (4 files have some), partial last blocks copied.
        let cloned = (stats.files, stats.cloned, stats.cloned_bytes, stats.clone_error);
        assert_eq!(
            cloned,
            (6, 4, (1 + 1 + 256 + 2560) * 4096, None),
            "{kind} {name}: {stats:?}"
        );
        assert_eq!(stats.copy_range, 4, "{kind} {name}: {stats:?}");
        run(&mut Command::new("sync"));
        let data_file = data.clone().unwrap_or_else(|| image.clone());
        let shared = shared_blocks(&data_file);
        assert!(shared >= 1 + 1 + 256 + 2560, "{kind} {name}: {shared} blocks shared");
        fsck(&image, data.as_deref(), Some(&work.path(&format!("x-{name}"))));
        compare(
            &work.path(&format!("x-{name}")),
            &root,
            Expect { mount: false, ..expect },
        )
        .assert_none("extracted");
        let mount = Mount::new(&image, &work.path(&format!("mnt-{name}")), data.as_deref()).expect("mount");
        compare(&mount.dir, &root, expect).assert_none(&format!("{kind} {name} mount"));
    }

    // A file past 4 GiB (an extended inode) whose source is sparse: marks at the start, across
    // the 4 GiB line and at the end, holes elsewhere.
    let len = (4u64 << 30) + 4097;
    let marks = vec![
        (0, b"start".to_vec()),
        ((4 << 30) - 2, b"across".to_vec()),
        (len - 3, b"end".to_vec()),
    ];
    let big = dir(
        [(
            b"big".to_vec(),
            Node {
                kind: Kind::File {
                    content: Content::Sparse { len, marks },
                    executable: false,
                },
                xattrs: vec![],
            },
        )],
        vec![],
    );
    let t = build_tree(&big, &work.path("big-blobs"));
    let (image, _, stats, _) = write(&t, &Options::default(), &work.0, "big");
    assert_eq!(stats.cloned, 1, "{stats:?}");
    fsck(&image, None, None);
    let mount = Mount::new(&image, &work.path("mnt-big"), None).expect("mount");
    compare(&mount.dir, &big, expect).assert_none("4 GiB file");
}

#[test]
fn clones_on_btrfs() {
    clones_on("btrfs");
}

#[test]
fn clones_on_xfs() {
    clones_on("xfs");
}

/// Where cloning is impossible the writer says why once and copies: with copy_file_range
/// within a filesystem (ext4 here), through its buffer across filesystems (tmpfs to ext4,
/// where copy_file_range says EXDEV).
#[test]
fn falls_back_to_copying_once() {
    let work = Scratch::new("fallback");
    let tmpfs = Scratch::new_in(Path::new("/dev/shm"), "blobs");
    let root = tree();
    for (blobs, expected) in [(work.path("blobs"), (0, 6, 0)), (tmpfs.path("blobs"), (0, 0, 6))] {
        let t = build_tree(&root, &blobs);
        let (image, _, stats, _) = write(&t, &Options::default(), &work.0, "img");
        assert_eq!((stats.cloned, stats.copy_range, stats.buffered), expected, "{stats:?}");
        assert!(stats.clone_error.is_some());
        let mount = Mount::new(&image, &work.path("mnt"), None).expect("mount");
        compare(
            &mount.dir,
            &root,
            Expect {
                uid: 0,
                gid: 0,
                mount: true,
            },
        )
        .assert_none("mount");
    }
}
