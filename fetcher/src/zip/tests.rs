use std::process::Command;

use super::*;
use crate::testing::{Node, RecordingSink, TempDir, check_tree, git, git_repo, make_tree, run};

fn unzip(data: &[u8]) -> Result<RecordingSink> {
    let mut sink = RecordingSink::default();
    extract(&mut &data[..], &mut sink)?;
    Ok(sink)
}

/// `zip` in a directory with `args`; returns the archive.
fn zip(dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let out = dir.join(format!("out-{}.zip", args.join("").replace(['-', ' ', '/'], "")));
    let _ = std::fs::remove_file(&out);
    run(Command::new("zip").current_dir(dir).args(args).arg(&out).arg("top"));
    std::fs::read(&out).unwrap()
}

/// Writes a zip with Python's `zipfile`: `members` is Python code building a list of
/// (ZipInfo, data) pairs; `stream` writes through an unseekable stream (data descriptors).
fn python_zip(members: &str, stream: bool) -> Vec<u8> {
    let program = format!(
        "import io, struct, sys, zipfile, zlib\nZ = zipfile.ZipInfo\ndef info(name, attr, system=3, method=zipfile.ZIP_DEFLATED):\n    \
         i = Z(name, (2024, 1, 1, 0, 0, 0)); i.external_attr = attr; i.create_system = system; \
         i.compress_type = method; return i\n\
         class Raw(Z):\n    def _encodeFilenameFlags(s): return s.raw, s.flag_bits\n\
         def raw(name, unicode=None, crc_of=None, version=1, system=3, flag=0, more=b''):\n    \
         i = Raw(name.decode('latin-1'), (2024, 1, 1, 0, 0, 0)); i.external_attr = 0o100644 << 16\n    \
         i.create_system = system; i.compress_type = zipfile.ZIP_DEFLATED; i.raw = name; i.flag_bits |= flag\n    \
         if unicode is not None:\n        \
         body = bytes([version]) + struct.pack('<I', zlib.crc32(name if crc_of is None else crc_of)) + unicode\n        \
         i.extra = struct.pack('<HH', 0x7075, len(body)) + body + more\n    \
         return i\n\
         class Unseekable(io.RawIOBase):\n    def __init__(s): s.b = bytearray()\n    def writable(s): return True\n    \
         def write(s, d): s.b += d; return len(d)\n\
         out = Unseekable() if {stream} else io.BytesIO()\n\
         with zipfile.ZipFile(out, 'w') as z:\n    for i, d in [{members}]: z.writestr(i, d)\n\
         sys.stdout.buffer.write(bytes(out.b) if {stream} else out.getvalue())\n",
        stream = if stream { "True" } else { "False" }
    );
    run(Command::new("python3").args(["-c", &program]))
}

#[test]
fn real_zips_stored_deflated_bzip2_and_zip64() {
    let dir = TempDir::new("zips");
    make_tree(dir.path(), true);
    for args in [
        &["-qry"][..],
        &["-qry0"],
        &["-qryZ", "bzip2"],
        &["-qry", "-fz"],
        &["-qry9"],
    ] {
        let sink = unzip(&zip(dir.path(), args)).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        check_tree(&sink, "top/", true);
        assert_eq!(sink.root.as_deref(), Some("top"), "{args:?}");
    }
    // Without -y, zip stores what a symlink points at.
    let sink = unzip(&zip(dir.path(), &["-qr"])).unwrap();
    assert_eq!(sink.tree.get("top/link"), Some(&Node::Dir));
}

/// What GitHub serves as `archive/<sha>.zip`: `git archive --format=zip`, one top directory.
#[test]
fn git_archive_zips() {
    let dir = TempDir::new("git-zip");
    let repo = dir.path().join("repo");
    let commits = git_repo(&repo);
    let rev = commits.last().unwrap();
    let data = git(&repo, &["archive", "--format=zip", "--prefix=repo-1/", rev]);
    let sink = unzip(&data).unwrap();
    assert_eq!(sink.root.as_deref(), Some("repo-1"));
    let expected = crate::testing::git_archive_tree(&repo, rev);
    let got: std::collections::BTreeMap<String, Node> = sink
        .tree
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("repo-1/")?.to_owned(), v.clone())))
        .collect();
    assert_eq!(got, expected);
}

/// Modes as libarchive reads them: Unix modes from Unix zips, none from MS-DOS ones.
#[test]
fn modes_by_the_system_that_made_the_member() {
    let data = python_zip(
        "(info('t/unix-exec', 0o100755 << 16), b'x'), (info('t/unix-plain', 0o100644 << 16), b'y'), \
         (info('t/no-type-exec', 0o755 << 16), b'z'), (info('t/dos', 0x20, 0), b'd'), \
         (info('t/dos-dir/', 0x10, 0), b''), (info('t/dosdir-no-slash', 0x10, 0), b''), \
         (info('t/other', 0o100755 << 16, 11), b'o'), (info('t/link', 0o120777 << 16), b'unix-exec'), \
         (info('t/slash/', 0o100644 << 16), b'')",
        false,
    );
    let sink = unzip(&data).unwrap();
    assert_eq!(sink.file("t/unix-exec"), (&b"x"[..], true));
    assert_eq!(sink.file("t/unix-plain"), (&b"y"[..], false));
    assert_eq!(sink.file("t/no-type-exec"), (&b"z"[..], true));
    assert_eq!(sink.file("t/dos"), (&b"d"[..], false));
    assert_eq!(sink.tree.get("t/dos-dir"), Some(&Node::Dir));
    assert_eq!(sink.tree.get("t/dosdir-no-slash"), Some(&Node::Dir));
    assert_eq!(sink.file("t/other"), (&b"o"[..], false));
    assert_eq!(sink.tree.get("t/link"), Some(&Node::Symlink(b"unix-exec".to_vec())));
    assert_eq!(sink.tree.get("t/slash"), Some(&Node::Dir));
    assert_eq!(sink.root.as_deref(), Some("t"));
}

#[test]
fn data_descriptors_prefixes_and_lone_files() {
    // Written to an unseekable stream: sizes and CRCs come after the data.
    let data = python_zip(
        "(info('a/f', 0o100644 << 16), b'hello' * 1000), (info('b', 0o100755 << 16), b'')",
        true,
    );
    let sink = unzip(&data).unwrap();
    assert_eq!(sink.file("a/f").0, b"hello".repeat(1000));
    assert_eq!(sink.file("b"), (&b""[..], true));
    assert_eq!(sink.root, None);
    // Data before the archive (a self-extractor's stub): every offset moves.
    let mut sfx = b"#!/bin/sh\nexit 0\n".to_vec();
    sfx.extend_from_slice(&data);
    assert_eq!(unzip(&sfx).unwrap().tree, sink.tree);
    // A lone file is the tree.
    let lone = python_zip("(info('README', 0o100644 << 16), b'read me')", false);
    let sink = unzip(&lone).unwrap();
    assert_eq!(sink.root.as_deref(), Some("README"));
    // An empty archive: `PK\x05\x06` and nothing else.
    assert!(unzip(&python_zip("", false)).unwrap().calls.is_empty());
}

#[test]
fn bad_zips_are_refused_with_the_member_named() {
    let good = python_zip(
        "(info('d/f', 0o100644 << 16, method=zipfile.ZIP_STORED), b'payload')",
        false,
    );
    for cut in [10, good.len() / 2, good.len() - 1] {
        let e = unzip(&good[..cut]).unwrap_err();
        assert!(e.message().starts_with("corrupt zip archive"), "cut at {cut}: {e}");
    }
    let mut bad = good.clone();
    let at = bad.windows(7).position(|w| w == b"payload").unwrap();
    bad[at] ^= 1;
    let e = unzip(&bad).unwrap_err();
    assert!(
        e.message().contains("`d/f`") && e.message().contains("CRC-32 mismatch"),
        "{e}"
    );

    let lzma = python_zip(
        "(info('d/x', 0o100644 << 16, method=zipfile.ZIP_LZMA), b'x' * 100)",
        false,
    );
    let e = unzip(&lzma).unwrap_err();
    assert!(
        e.message().contains("`d/x`") && e.message().contains("LZMA (method 14)"),
        "{e}"
    );

    let fifo = python_zip("(info('d/p', 0o010644 << 16), b'')", false);
    assert!(unzip(&fifo).unwrap_err().message().contains("`d/p`"));
    let evil = python_zip("(info('../evil', 0o100644 << 16), b'')", false);
    assert!(unzip(&evil).unwrap_err().message().contains("`..`"));

    let dir = TempDir::new("zip-encrypted");
    make_tree(dir.path(), false);
    let e = unzip(&zip(dir.path(), &["-qr", "-P", "secret"])).unwrap_err();
    assert!(e.message().contains("encrypted"), "{e}");
}

/// Names as the real `unzip` makes them of members made on Unix: a name's bytes, flagged UTF-8
/// or not, or the UTF-8 name of an Info-ZIP Unicode Path field (0x7075) when the field is
/// version 1, not empty, the first of its kind, and made from this name (its CRC-32). (Names
/// that stay other than UTF-8 are checked through `cab`, on a real filesystem, in
/// tests/formats.rs: the recording sink keeps UTF-8 paths only.)
#[test]
fn names_as_unzip_reads_them() {
    let data = python_zip(
        r#"(raw(b't/plain'), b'1'), (raw(b't/flag-caf\xc3\xa9', flag=0x800), b'2'),
           (raw(b't/up\x82', 't/up-\u00e9'.encode()), b'3'), (raw(b't/stale', b't/renamed', crc_of=b'x'), b'4'),
           (raw(b't/v2', b't/version-2', version=2), b'5'), (raw(b't/empty', b''), b'6'),
           (raw(b't/first', b't/one', crc_of=b'x', more=b'\x75\x70\x0a\x00\x01' + struct.pack('<I', zlib.crc32(b't/first')) + b't/two'), b'7'),
           (raw(b't/\x82', 't/d\u00e9j\u00e0/vu'.encode()), b'8')"#,
        false,
    );
    let sink = unzip(&data).unwrap();
    let dir = TempDir::new("zip-names");
    std::fs::write(dir.path().join("names.zip"), &data).unwrap();
    // unzip warns (exit 1) of the fields it does not take; it extracts all the same.
    let out = Command::new("unzip")
        .args(["-q", "names.zip", "-d", "out"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "unzip: {out:?}");
    let mut names = Vec::new();
    let mut stack = vec![dir.path().join("out")];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir.path().join("out")).unwrap();
                names.push(rel.to_str().expect("UTF-8 names").to_owned());
            }
        }
    }
    names.sort();
    let ours: Vec<&String> = sink
        .tree
        .keys()
        .filter(|k| !matches!(sink.tree[*k], Node::Dir))
        .collect();
    assert_eq!(ours, names.iter().collect::<Vec<_>>());
    for name in [
        "t/up-\u{e9}",
        "t/d\u{e9}j\u{e0}/vu",
        "t/flag-caf\u{e9}",
        "t/stale",
        "t/v2",
        "t/empty",
        "t/first",
    ] {
        assert!(sink.tree.contains_key(name), "{name}: {:?}", sink.tree.keys());
    }
    assert_eq!(sink.file("t/d\u{e9}j\u{e0}/vu").0, b"8");
}
