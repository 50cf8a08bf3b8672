use std::os::unix::fs::{PermissionsExt, symlink};
use std::process::Command;

use super::*;
use crate::gzip::GzDecoder;
use crate::testing::{Node, RecordingSink, TempDir, Trickle, archive, header, header_with, noise, run, seal};

/// A path over 300 bytes, which ustar cannot hold: GNU writes an `L` record, pax a `path`.
fn long_file() -> String {
    format!("long/{}/{}/{}.txt", "d".repeat(100), "e".repeat(100), "f".repeat(90))
}

/// A tree with everything a source tree may hold, under `dir/top`.
fn make_tree(dir: &std::path::Path, with_long: bool) {
    let top = dir.join("top");
    let write = |p: &str, data: &[u8], mode: u32| {
        let path = top.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("a/b/c/deep.txt", b"deep\n", 0o644);
    write("run.sh", b"#!/bin/sh\necho hi\n", 0o755);
    write("setuid", b"s", 0o4755);
    write("plain.txt", b"plain", 0o600);
    write("empty", b"", 0o644);
    write("big.bin", &noise(200_000, 7), 0o644);
    write("zeros.bin", &vec![0; 1_000_000], 0o644);
    std::fs::create_dir_all(top.join("emptydir")).unwrap();
    symlink("a/b", top.join("link")).unwrap();
    symlink("/etc/hostname", top.join("abs")).unwrap();
    if with_long {
        write(&long_file(), b"long\n", 0o644);
        symlink("x".repeat(150), top.join("longlink")).unwrap();
    }
}

fn tar_gz(dir: &std::path::Path, format: &str, member: &str) -> Vec<u8> {
    run(Command::new("tar")
        .arg(format!("--format={format}"))
        .arg("-C")
        .arg(dir)
        .args(["-czf", "-", member]))
}

fn unpack(gz: &[u8]) -> Result<RecordingSink> {
    let mut sink = RecordingSink::default();
    extract(&mut GzDecoder::new(Trickle::new(gz)), &mut sink)?;
    Ok(sink)
}

fn unpack_tar(tar: &[u8]) -> Result<RecordingSink> {
    let mut sink = RecordingSink::default();
    extract(&mut Trickle::new(tar), &mut sink)?;
    Ok(sink)
}

fn check_tree(sink: &RecordingSink, prefix: &str, with_long: bool) {
    let p = |s: &str| format!("{prefix}{s}");
    assert_eq!(sink.file(&p("a/b/c/deep.txt")), (&b"deep\n"[..], false));
    assert_eq!(sink.file(&p("run.sh")), (&b"#!/bin/sh\necho hi\n"[..], true));
    assert_eq!(sink.file(&p("setuid")), (&b"s"[..], true));
    assert_eq!(sink.file(&p("plain.txt")), (&b"plain"[..], false));
    assert_eq!(sink.file(&p("empty")), (&b""[..], false));
    assert_eq!(sink.file(&p("big.bin")).0, noise(200_000, 7));
    assert_eq!(sink.file(&p("zeros.bin")).0, vec![0; 1_000_000]);
    assert_eq!(sink.tree.get(&p("emptydir")), Some(&Node::Dir));
    assert_eq!(sink.tree.get(&p("link")), Some(&Node::Symlink(b"a/b".to_vec())));
    assert_eq!(
        sink.tree.get(&p("abs")),
        Some(&Node::Symlink(b"/etc/hostname".to_vec()))
    );
    if with_long {
        assert!(p(&long_file()).len() > 300);
        assert_eq!(sink.file(&p(&long_file())), (&b"long\n"[..], false));
        assert_eq!(
            sink.tree.get(&p("longlink")),
            Some(&Node::Symlink("x".repeat(150).into_bytes()))
        );
    }
}

#[test]
fn real_archives_in_every_format() {
    let dir = TempDir::new("formats");
    make_tree(dir.path(), true);
    for format in ["gnu", "pax", "posix", "oldgnu"] {
        let sink = unpack(&tar_gz(dir.path(), format, "top")).unwrap_or_else(|e| panic!("{format}: {e}"));
        check_tree(&sink, "top/", true);
        assert_eq!(sink.root.as_deref(), Some("top"), "{format}");
        assert_eq!(sink.calls.last().map(String::as_str), Some("root top"), "{format}");
    }
}

#[test]
fn real_ustar_uses_the_prefix_field() {
    let dir = TempDir::new("ustar");
    make_tree(dir.path(), false);
    let deep = format!("{}/{}/r.txt", "p".repeat(90), "q".repeat(90));
    std::fs::create_dir_all(dir.path().join("top").join(&deep).parent().unwrap()).unwrap();
    std::fs::write(dir.path().join("top").join(&deep), b"r").unwrap();
    let sink = unpack(&tar_gz(dir.path(), "ustar", "top")).unwrap();
    check_tree(&sink, "top/", false);
    assert_eq!(sink.file(&format!("top/{deep}")).0, b"r");
    assert_eq!(sink.root.as_deref(), Some("top"));
}

#[test]
fn dot_slash_members_and_no_single_root() {
    let dir = TempDir::new("dot");
    make_tree(dir.path(), false);
    let gz = run(Command::new("tar")
        .arg("-C")
        .arg(dir.path().join("top"))
        .args(["-czf", "-", "."]));
    let sink = unpack(&gz).unwrap();
    check_tree(&sink, "", false);
    assert_eq!(sink.root, None);
    assert!(!sink.calls.iter().any(|c| c.contains("./")));
}

#[test]
fn implicit_parents_and_repeated_directories() {
    let tar = archive(&[
        (header(b"r/x/y/f", b'0', 1, b""), b"1"),
        (header(b"r/x/", b'5', 0, b""), b""),
        (header(b"r/x/y", b'5', 0, b""), b""),
        (header(b"./r/z/", b'5', 0, b""), b""),
        (header(b"./", b'5', 0, b""), b""),
        (header(b"r//w/./g", b'0', 1, b""), b"2"),
    ]);
    let sink = unpack_tar(&tar).unwrap();
    assert_eq!(
        sink.calls,
        [
            "mkdir r",
            "mkdir r/x",
            "mkdir r/x/y",
            "create r/x/y/f",
            "mkdir r/z",
            "mkdir r/w",
            "create r/w/g",
            "root r"
        ]
    );
}

#[test]
fn hand_built_extensions() {
    let long = "n".repeat(200);
    let target = "t".repeat(300);
    let pax = |records: &[(&str, &str)]| {
        let mut out = Vec::new();
        for (k, v) in records {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            out.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        out
    };
    let px = pax(&[
        ("path", &format!("d/{long}")),
        ("mtime", "1.5"),
        ("linkpath", "ignored-for-files"),
    ]);
    let psize = pax(&[("size", "5")]);
    let pempty = pax(&[("path", "")]);
    let mut base256 = header(b"d/b256", b'0', 0, b"");
    base256[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    seal(&mut base256);
    let tar = archive(&[
        (header(b"pax_global_header", b'g', 20, b""), b"20 comment=abcdefgh\n"),
        (header(b"ignored", b'x', px.len() as u64, b""), &px),
        (header(b"short", b'0', 3, b""), b"pax"),
        (
            header(b"././@LongLink", b'L', (long.len() + 4) as u64, b""),
            format!("d/{long}g\0").as_bytes(),
        ),
        (header(b"truncated-name", b'0', 1, b""), b"L"),
        (
            header(b"././@LongLink", b'K', target.len() as u64, b""),
            target.as_bytes(),
        ),
        (header(b"d/sym", b'2', 0, b"short"), b""),
        (header(b"ignored", b'x', psize.len() as u64, b""), &psize),
        (header(b"d/sized", b'0', 0, b""), b"12345"),
        (header(b"ignored", b'x', pempty.len() as u64, b""), &pempty),
        (header(b"d/fromheader", b'0', 0, b""), b""),
        (base256, b"abc"),
        (header(b"d/old/", 0, 0, b""), b""),
        (header(b"d/contig", b'7', 1, b""), b"7"),
        (
            header_with(b"d/exec", b'0', 0, b"", |h| {
                h[100..108].copy_from_slice(b"0100\0\0\0\0")
            }),
            b"",
        ),
    ]);
    let sink = unpack_tar(&tar).unwrap();
    assert_eq!(sink.file(&format!("d/{long}")).0, b"pax");
    assert_eq!(sink.file(&format!("d/{long}g")).0, b"L");
    assert_eq!(sink.tree.get("d/sym"), Some(&Node::Symlink(target.into_bytes())));
    assert_eq!(sink.file("d/sized").0, b"12345");
    assert_eq!(sink.file("d/fromheader").0, b"");
    assert_eq!(sink.file("d/b256").0, b"abc");
    assert_eq!(sink.tree.get("d/old"), Some(&Node::Dir));
    assert_eq!(sink.file("d/contig").0, b"7");
    assert_eq!(sink.file("d/exec"), (&b""[..], true));
    assert_eq!(sink.root.as_deref(), Some("d"));
}

#[test]
fn no_root_for_a_top_level_file() {
    let tar = archive(&[
        (header(b"d/a", b'0', 0, b""), b""),
        (header(b"README", b'0', 0, b""), b""),
    ]);
    assert_eq!(unpack_tar(&tar).unwrap().root, None);
    let tar = archive(&[(header(b"d/a", b'0', 0, b""), b""), (header(b"e/a", b'0', 0, b""), b"")]);
    assert_eq!(unpack_tar(&tar).unwrap().root, None);
    assert_eq!(unpack_tar(&archive(&[])).unwrap().calls, Vec::<String>::new());
}

fn refused(entries: &[([u8; 512], &[u8])], expected: &[&str]) {
    let e = unpack_tar(&archive(entries)).unwrap_err();
    for want in expected {
        assert!(e.message().contains(want), "`{e}` should say `{want}`");
    }
}

#[test]
fn hostile_members_are_refused_by_name() {
    refused(&[(header(b"../x", b'0', 0, b""), b"")], &["`../x`", "`..`"]);
    refused(&[(header(b"a/../../x", b'5', 0, b""), b"")], &["`a/../../x`", "`..`"]);
    refused(
        &[(header(b"/etc/passwd", b'0', 0, b""), b"")],
        &["`/etc/passwd`", "absolute"],
    );
    refused(&[(header(b"a/hard", b'1', 0, b"a/f"), b"")], &["`a/hard`", "hard link"]);
    refused(
        &[(header(b"a/tty", b'3', 0, b""), b"")],
        &["`a/tty`", "character device"],
    );
    refused(&[(header(b"a/sda", b'4', 0, b""), b"")], &["`a/sda`", "block device"]);
    refused(&[(header(b"a/fifo", b'6', 0, b""), b"")], &["`a/fifo`", "FIFO"]);
    refused(
        &[(header(b"a/what", b'Z', 0, b""), b"")],
        &["`a/what`", "unsupported entry type `Z`"],
    );
    refused(&[(header(b"", b'0', 0, b""), b"")], &["empty name"]);
    refused(&[(header(b"a/sym", b'2', 0, b""), b"")], &["`a/sym`", "empty target"]);
    let evil = b"16 path=../evil\n";
    refused(
        &[
            (header(b"x", b'x', evil.len() as u64, b""), evil),
            (header(b"fine", b'0', 0, b""), b""),
        ],
        &["`../evil`"],
    );
    let sparse = b"22 GNU.sparse.major=1\n";
    refused(
        &[(header(b"x", b'x', 22, b""), sparse), (header(b"f", b'0', 0, b""), b"")],
        &["sparse"],
    );
    refused(&[(header(b"x", b'x', 8, b""), b"9 a=b\nzz")], &["malformed pax header"]);
}

#[test]
fn corrupt_and_truncated_archives() {
    let mut bad = header(b"a/f", b'0', 0, b"");
    bad[0] = b'b';
    let e = unpack_tar(&archive(&[(bad, b"")])).unwrap_err();
    assert!(e.message().contains("checksum"), "{e}");

    let whole = archive(&[(header(b"a/f", b'0', 1000, b""), &noise(1000, 1))]);
    for cut in [100, 512, 700, 1500] {
        let e = unpack_tar(&whole[..cut]).unwrap_err();
        assert_eq!(e.message(), "truncated tar archive", "cut at {cut}");
    }
    // Ending exactly after a member (no end blocks), or after one zero block, is an end.
    assert!(unpack_tar(&whole[..1536]).is_ok());
    assert!(unpack_tar(&whole[..2048]).is_ok());
}

#[test]
fn sink_refusal_names_the_operation_and_path() {
    let tar = archive(&[(header(b"a/f", b'0', 1, b""), b"x")]);
    let mut sink = RecordingSink::default();
    sink.refuse = Some("a/f".into());
    let e = extract(&mut tar.as_slice(), &mut sink).unwrap_err();
    assert_eq!(e.message(), "out_create failed for `a/f`");
}

#[test]
fn numbers() {
    assert_eq!(number(b"0000644\0"), Some(0o644));
    assert_eq!(number(b"   644 "), Some(0o644));
    assert_eq!(number(b"\0\0\0\0"), Some(0));
    assert_eq!(number(b"0009"), None);
    assert_eq!(number(&[0x80, 0, 1, 0]), Some(256));
    assert_eq!(number(&[0xff, 0xff]), None);
    assert_eq!(number(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
    assert_eq!(normalize(b"./a//b/./c/"), Ok(b"a/b/c".to_vec()));
    assert_eq!(normalize(b"./"), Ok(Vec::new()));
}
