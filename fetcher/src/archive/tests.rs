use std::process::Command;

use super::*;
use crate::testing::{RecordingSink, TempDir, Trickle, check_tree, compress, make_tree, run};

fn unpack_bytes(data: &[u8]) -> Result<(Format, RecordingSink)> {
    let mut sink = RecordingSink::default();
    let format = unpack(&mut Trickle::new(data), &mut sink)?;
    Ok((format, sink))
}

/// One tree, archived by the real tools in every format cab reads, unpacks to the same tree.
#[test]
fn every_format_made_by_the_real_tools() {
    let dir = TempDir::new("archive-formats");
    make_tree(dir.path(), true);
    let tar = run(Command::new("tar").arg("-C").arg(dir.path()).args(["-cf", "-", "top"]));
    let v7 =
        run(Command::new("tar")
            .arg("-C")
            .arg(dir.path())
            .args(["--format=v7", "-cf", "-", "top/a", "top/run.sh"]));
    let zip = {
        let out = dir.path().join("top.zip");
        run(Command::new("zip")
            .current_dir(dir.path())
            .args(["-qry"])
            .arg(&out)
            .arg("top"));
        std::fs::read(out).unwrap()
    };
    let cases = [
        (Format::Tar, tar.clone()),
        (Format::Gzip, compress("gzip", &tar)),
        (Format::Bzip2, compress("bzip2", &tar)),
        (Format::Xz, compress("xz", &tar)),
        (Format::Zstd, compress("zstd", &tar)),
        (Format::Zip, zip),
    ];
    for (want, data) in cases {
        let (format, sink) = unpack_bytes(&data).unwrap_or_else(|e| panic!("{want:?}: {e}"));
        assert_eq!(format, want);
        check_tree(&sink, "top/", true);
        assert_eq!(sink.root.as_deref(), Some("top"), "{want:?}");
    }
    let (format, sink) = unpack_bytes(&v7).unwrap();
    assert_eq!(format, Format::Tar);
    assert_eq!(sink.file("top/run.sh"), (&b"#!/bin/sh\necho hi\n"[..], true));
}

#[test]
fn empty_downloads_and_empty_archives_are_empty_trees() {
    for data in [vec![], vec![0; 10240], compress("gzip", b""), compress("xz", b"")] {
        let (_, sink) = unpack_bytes(&data).unwrap();
        assert!(sink.calls.is_empty(), "{:?}", sink.calls);
    }
}

/// Anything else says what cab reads and what the bytes were, not that it is corrupt.
#[test]
fn other_data_is_named_not_called_corrupt() {
    let e = unpack_bytes(b"<!DOCTYPE html>\n<html>").unwrap_err();
    let m = e.message();
    assert!(m.starts_with("not an archive cab can unpack: cab reads tar"), "{m}");
    assert!(m.contains("gzip, bzip2, xz or zstd") && m.contains("zip"), "{m}");
    assert!(
        m.contains("3c 21 44 4f 43 54 59 50") && m.contains("\"<!DOCTYPE html>.\""),
        "{m}"
    );
    assert!(m.contains("an HTML or XML page"), "{m}");
    let e = unpack_bytes(b"7z\xbc\xaf\x27\x1c\x00\x04").unwrap_err();
    assert!(e.message().contains("a 7-Zip archive"), "{e}");
    let e = unpack_bytes(&[0xaa; 1000]).unwrap_err();
    assert!(e.message().contains("aa aa aa"), "{e}");
    // Compressed, but not a tar archive inside.
    for tool in ["gzip", "bzip2", "xz", "zstd"] {
        let e = unpack_bytes(&compress(tool, b"just some text, not a tar archive")).unwrap_err();
        assert!(
            e.message().starts_with(&format!(
                "{tool}-compressed data, but what it holds is not a tar archive"
            )),
            "{e}"
        );
        assert!(e.message().contains("\"just some text, \""), "{e}");
    }
}
