use std::process::Command;

use super::*;
use crate::gzip::GzDecoder;
use crate::testing::{
    Node, RecordingSink, TempDir, Trickle, archive, check_tree, header, header_with, make_tree, noise, run, seal,
};

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
fn one_top_level_entry_is_the_tree_whatever_it_is() {
    // Two top-level entries: no root.
    let tar = archive(&[
        (header(b"d/a", b'0', 0, b""), b""),
        (header(b"README", b'0', 0, b""), b""),
    ]);
    assert_eq!(unpack_tar(&tar).unwrap().root, None);
    let tar = archive(&[(header(b"d/a", b'0', 0, b""), b""), (header(b"e/a", b'0', 0, b""), b"")]);
    assert_eq!(unpack_tar(&tar).unwrap().root, None);
    assert_eq!(unpack_tar(&archive(&[])).unwrap().calls, Vec::<String>::new());
    // One: a lone file or symlink is the tree, as Nix has it.
    let tar = archive(&[(header(b"./README", b'0', 5, b""), b"hello")]);
    let sink = unpack_tar(&tar).unwrap();
    assert_eq!(sink.root.as_deref(), Some("README"));
    assert_eq!(sink.file("README").0, b"hello");
    let tar = archive(&[(header(b"link", b'2', 0, b"elsewhere"), b"")]);
    assert_eq!(unpack_tar(&tar).unwrap().root.as_deref(), Some("link"));
    // `./` and a lone file: still one entry.
    let tar = archive(&[(header(b"./", b'5', 0, b""), b""), (header(b"./f", b'0', 0, b""), b"")]);
    assert_eq!(unpack_tar(&tar).unwrap().root.as_deref(), Some("f"));
}

/// GNU tar stores a second name of a file as a hard link to the first; both come out as files
/// with the same contents and mode.
#[test]
fn hard_links_to_earlier_members_are_copies() {
    let dir = TempDir::new("hardlinks");
    make_tree(dir.path(), false);
    let top = dir.path().join("top");
    std::fs::hard_link(top.join("run.sh"), top.join("a/run-again.sh")).unwrap();
    std::fs::hard_link(top.join("big.bin"), top.join("big-too.bin")).unwrap();
    for format in ["gnu", "pax", "ustar"] {
        let sink = unpack(&tar_gz(dir.path(), format, "top")).unwrap_or_else(|e| panic!("{format}: {e}"));
        check_tree(&sink, "top/", false);
        assert_eq!(sink.file("top/a/run-again.sh"), sink.file("top/run.sh"), "{format}");
        assert_eq!(sink.file("top/big-too.bin"), sink.file("top/big.bin"), "{format}");
        assert!(
            sink.calls.iter().any(|c| c.starts_with("copy top/")),
            "{format}: {:?}",
            sink.calls
        );
    }
    // A hard link to a symlink is another symlink.
    let tar = archive(&[
        (header(b"d/s", b'2', 0, b"target"), b""),
        (header(b"d/t", b'1', 0, b"./d/s"), b""),
    ]);
    assert_eq!(
        unpack_tar(&tar).unwrap().tree.get("d/t"),
        Some(&Node::Symlink(b"target".to_vec()))
    );
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
    // Hard links to anything but an earlier file or symlink of the archive.
    refused(
        &[(header(b"a/hard", b'1', 0, b"a/f"), b"")],
        &["`a/hard`", "hard link", "`a/f`"],
    );
    refused(
        &[
            (header(b"a/hard", b'1', 0, b"a/f"), b""),
            (header(b"a/f", b'0', 0, b""), b""),
        ],
        &["`a/hard`", "earlier"],
    );
    refused(
        &[
            (header(b"a/d/", b'5', 0, b""), b""),
            (header(b"a/hard", b'1', 0, b"a/d"), b""),
        ],
        &["`a/hard`", "hard link"],
    );
    refused(&[(header(b"a/hard", b'1', 0, b"../etc/passwd"), b"")], &["`..`"]);
    refused(&[(header(b"a/hard", b'1', 0, b"a/hard"), b"")], &["itself"]);
    refused(&[(header(b"a/hard", b'1', 3, b"a/f"), b"abc")], &["carries data"]);
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
