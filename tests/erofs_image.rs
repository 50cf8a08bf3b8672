//! Images of trees with every kind of awkward input, checked by fsck.erofs (extracting and
//! comparing) and by kernel mounts (comparing names, kinds, modes, sizes, contents, targets,
//! xattrs, nlink, owners and times), in both data placements.

#[path = "erofs_support/mod.rs"]
mod common;

use std::fs::{self, File};
use std::path::PathBuf;

use cab::erofs::{Error, Options, Placement, Tree};
use common::*;

const REV: &str = "rev:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\
                   0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";

/// The xattrs cab puts on a node: a hash of its own, and values every node shares.
fn cab(i: u64) -> Xattrs {
    vec![
        x("user.cab.hash", format!("blake3:{:064x}", i)),
        x("user.cab.rev", REV),
        x("user.cab.complete", "yes"),
    ]
}

fn n(name: &[u8]) -> Vec<u8> {
    name.to_vec()
}

fn mixed_tree() -> Node {
    let mut i = 0;
    let mut id = || {
        i += 1;
        cab(i)
    };
    let wide = (0..600u32).map(|k| {
        (
            format!("entry-with-a-longish-name-{k:05}").into_bytes(),
            file(bytes(u64::from(k), 3), false, vec![]),
        )
    });
    let many: Xattrs = (0..300)
        .map(|k| x(&format!("user.many.{k:03}"), format!("value {k}")))
        .collect();
    let long_target: Vec<u8> = (0..4095)
        .map(|k| if k % 10 == 9 { b'/' } else { b'a' + (k % 26) as u8 })
        .collect();
    dir(
        [
            (n(b"!bang"), file(b"!".to_vec(), false, id())),
            (n(b"-dash"), dir([], id())),
            (n(b".hidden"), file(bytes(1, 4095), false, id())),
            (
                n(b"a"),
                dir(
                    [
                        (
                            n(b"b"),
                            dir(
                                [(n(b"c"), dir([(n(b"deep"), file(bytes(2, 4096), true, id()))], id()))],
                                id(),
                            ),
                        ),
                        (n(b"exec"), file(bytes(3, 4097), true, id())),
                    ],
                    id(),
                ),
            ),
            (n(b"empty"), file(Vec::new(), false, id())),
            (
                n(b"links"),
                dir(
                    [
                        (n(b"abs"), symlink(b"/etc/passwd".to_vec(), id())),
                        (n(b"dangling"), symlink(b"../nowhere/at/all".to_vec(), id())),
                        (n(b"long"), symlink(long_target.clone(), id())),
                        (n(b"long-bare"), symlink(long_target[..4000].to_vec(), vec![])),
                        (n(b"nonutf8"), symlink(b"\xff\xfe/target".to_vec(), id())),
                        (n(b"one"), symlink(b"x".to_vec(), id())),
                    ],
                    id(),
                ),
            ),
            (n(b"mib"), file(bytes(4, (1 << 20) + 3), false, id())),
            (n(b"multi"), file(bytes(5, 3 * 4096 + 5), false, id())),
            (vec![b'n'; 255], file(b"longest name".to_vec(), false, id())),
            (n(b"with space\nnewline"), file(b"ws".to_vec(), false, id())),
            (n(b"wide"), dir(wide, id())),
            (
                n(b"xattrs"),
                dir(
                    [
                        (
                            n(b"big"),
                            file(
                                b"big".to_vec(),
                                false,
                                vec![
                                    x("user.big", bytes(6, 10000)),
                                    x("trusted.t", "tv"),
                                    x("security.s", "sv"),
                                ],
                            ),
                        ),
                        (
                            n(b"huge"),
                            file(
                                b"huge".to_vec(),
                                false,
                                (0..3)
                                    .map(|k| x(&format!("user.huge{k}"), bytes(7 + k, 20000)))
                                    .collect(),
                            ),
                        ),
                        (n(b"many"), file(b"many".to_vec(), false, many.clone())),
                        (n(b"many2"), dir([], many)),
                        (n(b"none"), file(b"none".to_vec(), false, vec![])),
                        (
                            n(b"sym"),
                            symlink(
                                b"none".to_vec(),
                                vec![x("trusted.sym", "on a symlink"), x("user.sym", "u")],
                            ),
                        ),
                    ],
                    vec![],
                ),
            ),
            (n(b"\x01\x02\x7f"), file(b"control".to_vec(), false, id())),
            (n(b"\xff\xfe\x80"), file(b"not utf-8".to_vec(), false, id())),
        ],
        cab(0),
    )
}

#[test]
fn mixed_tree_in_one_image() {
    let stats = round_trip(
        &mixed_tree(),
        &Options {
            uid: 1000,
            gid: 100,
            ..Options::default()
        },
        "mixed",
    );
    assert_eq!(stats.files, 614, "every non-empty file written: {stats:?}");
}

#[test]
fn mixed_tree_with_a_separate_data_file() {
    let options = Options {
        uid: 0,
        gid: 0,
        placement: Placement::SeparateFile,
        device_tag: b"cab-data".to_vec(),
        ..Options::default()
    };
    round_trip(&mixed_tree(), &options, "mixed-split");
}

#[test]
fn ids_past_16_bits_use_extended_inodes() {
    let root = dir(
        [
            (n(b"d"), dir([(n(b"f"), file(bytes(8, 5000), true, cab(2)))], cab(1))),
            (n(b"l"), symlink(b"d/f".to_vec(), cab(3))),
        ],
        cab(0),
    );
    round_trip(
        &root,
        &Options {
            uid: 100_000,
            gid: 70_000,
            ..Options::default()
        },
        "extended",
    );
    let options = Options {
        uid: 65_536,
        gid: 5,
        placement: Placement::SeparateFile,
        ..Options::default()
    };
    round_trip(&root, &options, "extended-split");
}

/// Directory data inline after the inode, in a block of its own (the tail would not fit
/// where the inode is), and exactly one block long (nothing to inline).
#[test]
fn directory_tails_inline_or_in_blocks() {
    let names = |count: u8, len: usize| {
        (0..count).map(move |i| {
            let mut name = vec![b'x'; len];
            name[0] = b'a' + i;
            (name, file(vec![i], false, vec![]))
        })
    };
    let exact = names(15, 255).chain([(vec![b'z'; 52], file(b"z".to_vec(), false, vec![]))]);
    let root = dir(
        [
            (n(b"a"), dir(names(30, 120), vec![])),
            (n(b"b"), dir(exact, vec![])),
            (n(b"c"), dir(names(3, 10), vec![])),
        ],
        vec![],
    );
    round_trip(&root, &Options::default(), "dir-tails");
    round_trip(
        &root,
        &Options {
            placement: Placement::SeparateFile,
            ..Options::default()
        },
        "dir-tails-split",
    );
}

#[test]
fn empty_root() {
    round_trip(&dir([], vec![]), &Options::default(), "empty");
    round_trip(
        &dir([], cab(0)),
        &Options {
            placement: Placement::SeparateFile,
            ..Options::default()
        },
        "empty-split",
    );
}

/// 150k nodes: nids far past 16 bits (the root's stays small), many directory blocks.
#[test]
fn a_large_tree() {
    let mut k = 0u64;
    let dirs = (0..300u32).map(|d| {
        let files = (0..500u32).map(|f| {
            k += 1;
            let content = if f % 7 == 0 {
                bytes(k, (k % 5000) as usize)
            } else {
                Vec::new()
            };
            (
                format!("file-{f:04}.py").into_bytes(),
                file(content, f % 11 == 0, cab(k)),
            )
        });
        (
            format!("pkg{d:03}").into_bytes(),
            dir(files, cab(1_000_000 + u64::from(d))),
        )
    });
    let root = dir(dirs.collect::<Vec<_>>(), cab(0));
    round_trip(&root, &Options::default(), "large");
}

#[test]
fn same_input_same_bytes_and_one_data_file_for_any_xattrs() {
    let scratch = Scratch::new("determinism");
    let root = mixed_tree();
    let read = |p: &PathBuf| fs::read(p).expect("read");

    let t1 = build_tree(&root, &scratch.path("blobs1"));
    let t2 = build_tree(&root, &scratch.path("blobs2"));
    let (a, ..) = write(&t1, &Options::default(), &scratch.0, "a");
    let (b, ..) = write(&t2, &Options::default(), &scratch.0, "b");
    assert!(read(&a) == read(&b), "the same tree gives the same image");

    let split = Options {
        placement: Placement::SeparateFile,
        ..Options::default()
    };
    let (meta, data, ..) = write(&t1, &split, &scratch.0, "split");
    let data = read(&data.expect("data file"));
    let image = read(&a);
    assert!(image.ends_with(&data), "the data file is the image's data region");
    assert!(read(&meta).len() + data.len() >= image.len());

    // Another revision of the tree: other xattr values, other metadata, the same data file.
    let mut other = root.clone();
    other.xattrs = vec![x("user.cab.rev", "another revision, shorter")];
    let t3 = build_tree(&other, &scratch.path("blobs3"));
    let (meta3, data3, ..) = write(&t3, &split, &scratch.0, "other");
    assert!(read(&meta3) != read(&meta));
    assert!(read(&data3.expect("data file")) == data);
}

#[test]
fn the_sources_must_be_as_declared() {
    let scratch = Scratch::new("sources");
    let blob = scratch.path("blob");
    fs::write(&blob, b"12345").unwrap();
    let out = File::create(scratch.path("img")).unwrap();
    for declared in [4, 6] {
        let mut tree: Tree<PathBuf> = Tree::new(cab(0)).unwrap();
        let root = tree.root();
        tree.add_file(root, b"f", declared, false, blob.clone(), cab(1))
            .unwrap();
        let plan = tree.plan(&Options::default()).unwrap();
        match plan.write_image(&out, open_blob) {
            Err(Error::SizeMismatch {
                expected, actual: 5, ..
            }) if expected == declared => {}
            other => panic!("declared {declared}: {other:?}"),
        }
    }
    let mut tree: Tree<PathBuf> = Tree::new(cab(0)).unwrap();
    let root = tree.root();
    tree.add_file(root, b"f", 5, false, scratch.path("missing"), cab(1))
        .unwrap();
    let plan = tree.plan(&Options::default()).unwrap();
    assert!(matches!(plan.write_image(&out, open_blob), Err(Error::Source { .. })));
    assert!(matches!(plan.write_metadata(&out), Err(Error::WrongPlacement)));
    assert!(matches!(plan.write_data(&out, open_blob), Err(Error::WrongPlacement)));
    let bad = Options {
        volume_name: vec![b'v'; 16],
        ..Options::default()
    };
    assert!(matches!(tree.plan(&bad), Err(Error::InvalidOption(_))));
}

/// Mounting the metadata image without its data file must not serve wrong bytes.
#[test]
fn a_metadata_image_without_its_data_file_gives_errors_not_garbage() {
    let scratch = Scratch::new("no-device");
    let root = dir([(n(b"f"), file(bytes(9, 100), false, cab(1)))], cab(0));
    let tree = build_tree(&root, &scratch.path("blobs"));
    let split = Options {
        placement: Placement::SeparateFile,
        ..Options::default()
    };
    let (meta, ..) = write(&tree, &split, &scratch.0, "meta");
    let mount = Mount::new(&meta, &scratch.path("mnt"), None).expect("mount");
    let read = fs::read(mount.dir.join("f"));
    assert!(read.is_err(), "read {:?}", read.map(|r| r.len()));
}

/// The checks above are only worth something if they can fail: compare a mount with a model
/// that differs from the image in one place of each kind.
#[test]
fn the_comparison_notices_differences() {
    let scratch = Scratch::new("oracle");
    let root = mixed_tree();
    let tree = build_tree(&root, &scratch.path("blobs"));
    let (image, ..) = write(&tree, &Options::default(), &scratch.0, "img");
    let mount = Mount::new(&image, &scratch.path("mnt"), None).expect("mount");
    let expect = Expect {
        uid: 0,
        gid: 0,
        mount: true,
    };
    compare(&mount.dir, &root, expect).assert_none("unchanged model");

    let Kind::Dir(children) = &root.kind else {
        unreachable!()
    };
    let mut changed = children.clone();
    let mut edit = |name: &[u8], f: &dyn Fn(&mut Node)| f(changed.get_mut(name).expect("child"));
    edit(b"!bang", &|n| {
        n.kind = Kind::File {
            content: Content::Bytes(b"?".to_vec()),
            executable: false,
        }
    });
    edit(b"multi", &|n| {
        n.kind = Kind::File {
            content: Content::Bytes(bytes(5, 3 * 4096 + 5)),
            executable: true,
        }
    });
    edit(b"empty", &|n| n.xattrs[0].1.push(b'!'));
    edit(b"links", &|n| {
        if let Kind::Dir(c) = &mut n.kind {
            c.insert(b"abs".to_vec(), symlink(b"/etc/shadow".to_vec(), vec![]));
        }
    });
    changed.insert(b"\xff\xfe\x81".to_vec(), file(b"not utf-8".to_vec(), false, cab(99)));
    let findings = compare(&mount.dir, &dir(changed, root.xattrs.clone()), expect);
    let text = findings.0.join("\n");
    for what in [
        "!bang: contents",
        "multi: mode",
        "empty: xattr user.cab.hash",
        "abs: target",
        "abs: xattr names",
        "listed",
    ] {
        assert!(text.contains(what), "{what} not noticed in:\n{text}");
    }
    let other = compare(
        &mount.dir,
        &root,
        Expect {
            uid: 1,
            gid: 0,
            mount: true,
        },
    );
    assert!(other.0.iter().any(|l| l.contains("owner 0:0")));
}
