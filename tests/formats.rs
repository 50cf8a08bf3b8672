//! Every archive format cab reads, made by the real tools (GNU tar, gzip, bzip2, xz, zstd,
//! zip, `git archive`, Python's zipfile), fetched as tarball islands from the local forge and
//! compared with what the real Nix makes of the same file: `nix-prefetch-url --unpack`'s hash
//! must be the island's narHash (and for zip names Nix cannot read, the real `unzip`'s tree
//! must be the island). The files are served without extensions, since cab (like libarchive)
//! tells formats apart by their bytes.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::forge::{self, Forge};
use common::*;

/// What `nix-prefetch-url --unpack` says of `file`, in SRI form.
fn nix_prefetch_unpack(file: &Path) -> String {
    require_nix();
    let out = run_ok(
        Command::new("nix-prefetch-url")
            .args(["--unpack", "--type", "sha256"])
            .arg(format!("file://{}", file.display())),
    );
    let base32 = text(&out.stdout).trim().to_owned();
    let sri = run_ok(Command::new("nix").args([
        "--extra-experimental-features",
        "nix-command",
        "hash",
        "to-sri",
        "--type",
        "sha256",
        &base32,
    ]));
    text(&sri.stdout).trim().to_owned()
}

fn cab_fetch(store: &Path, island: &str) -> std::process::Output {
    let mut cmd = cab();
    cmd.arg("--store")
        .arg(store)
        .args(["fetch", "--json", island])
        .env("CAB_GITHUB_URL", "http://127.0.0.1:1");
    run_timeout(&mut cmd, Duration::from_secs(120))
}

/// Exports the tree `cab fetch --json` reported (`fetched`) from `store` to `dest`.
fn cab_export(store: &Path, fetched: &serde_json::Value, dest: &Path) {
    let hash = fetched["hash"].as_str().expect("a tree hash");
    run_ok(
        cab()
            .arg("--store")
            .arg(store)
            .args(["store", "export", hash])
            .arg(dest),
    );
}

/// A small real project: a Python package, executables, symlinks of every kind, an empty
/// file and directory, and a second name (hard link) for a file and for a symlink.
fn project(top: &Path) {
    mkdir(&top.join("json"));
    for entry in std::fs::read_dir(python_package("json")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), top.join("json").join(entry.file_name())).unwrap();
        }
    }
    write_file(&top.join("configure"), b"#!/bin/sh\necho configured\n", 0o755);
    write_file(&top.join("README"), b"read me\n", 0o644);
    write_file(&top.join("empty"), b"", 0o644);
    mkdir(&top.join("empty-dir"));
    make_symlink("README", &top.join("README.link"));
    make_symlink("json", &top.join("lib"));
    make_symlink("/nowhere/at/all", &top.join("dangling"));
    std::fs::hard_link(top.join("configure"), top.join("bin-configure")).unwrap();
    write_file(&top.join("data/big.bin"), &pseudo_random(3 << 20, 7), 0o644);
}

/// Runs a shell command in `dir`; it must succeed.
fn sh(dir: &Path, script: &str) {
    run_ok(Command::new("sh").arg("-c").arg(script).current_dir(dir));
}

#[test]
fn every_format_hashes_as_nix_unpacks_it() {
    let dir = TempDir::new("formats");
    let src = dir.join("src");
    project(&src.join("pkg-1.0"));
    write_file(&src.join("lone/NOTES"), b"a lone file\n", 0o755);
    make_symlink("elsewhere", &src.join("lonelink/link"));
    let root = dir.join("forge");
    let files = root.join("files");
    mkdir(&files);
    // Every format, from the same tree, by the tools that make them in the wild (zip to
    // standard output writes sizes after the data, as streaming zips do).
    let f = files.display();
    sh(
        &src,
        &format!(
            "tar cf {f}/plain pkg-1.0 && gzip -9 -c {f}/plain > {f}/gzip && bzip2 -c {f}/plain > {f}/bzip2 \
             && xz -c {f}/plain > {f}/xz && xz -9e --check=crc32 -c {f}/plain > {f}/xz-9e \
             && zstd -q -19 -c {f}/plain > {f}/zstd && zstd -q --long=27 -c {f}/plain > {f}/zstd-long \
             && tar --format=pax -cJf {f}/pax-xz pkg-1.0 \
             && zip -qry {f}/zip.zip pkg-1.0 && mv {f}/zip.zip {f}/zip \
             && zip -qry -Z bzip2 - pkg-1.0 > {f}/zip-bzip2 \
             && tar cJf {f}/lone -C lone NOTES && tar cf {f}/lone-link -C lonelink link \
             && (cd lone && zip -q - NOTES > {f}/lone-zip) && tar cf {f}/empty-tar -T /dev/null \
             && cd pkg-1.0 && tar cjf {f}/flat-bzip2 ."
        ),
    );
    // GitHub's .zip archives are `git archive --format=zip` with one top directory.
    forge::commit(&root, "acme/pkg", &src.join("pkg-1.0"), "main", "Import");
    run_ok(
        Command::new("git")
            .arg("--git-dir")
            .arg(root.join("acme/pkg.git"))
            .args(["archive", "--format=zip", "--prefix=pkg-main/", "-o"])
            .arg(files.join("github-zip"))
            .arg("main"),
    );
    let forge = Forge::start(&root, &[]);
    let store = dir.join("store");
    let mut distinct = std::collections::BTreeSet::new();
    for name in [
        "plain",
        "gzip",
        "bzip2",
        "xz",
        "xz-9e",
        "zstd",
        "zstd-long",
        "pax-xz",
        "zip",
        "zip-bzip2",
        "github-zip",
        "lone",
        "lone-link",
        "lone-zip",
        "empty-tar",
        "flat-bzip2",
    ] {
        let island = format!("<tarball:{}/files/{name}>", forge.url());
        let out = cab_fetch(&store, &island);
        assert!(out.status.success(), "{name}: {}", report("cab fetch", &out));
        let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        let nix = nix_prefetch_unpack(&files.join(name));
        assert_eq!(v["narHash"], nix, "{name}: cab's narHash is not Nix's");
        distinct.insert(v["hash"].as_str().unwrap().to_owned());
    }
    // The tar and zip formats of the tree are one tree (the hard link a copy); git's zip lacks
    // the empty directory (git keeps none); the lone file (tarred or zipped: one tree), the
    // lone symlink and the empty tree are trees of their own.
    assert_eq!(distinct.len(), 5, "{distinct:?}");
    let exported = dir.join("lone-export");
    let lone = cab_fetch(&store, &format!("<tarball:{}/files/lone>", forge.url()));
    let v: serde_json::Value = serde_json::from_str(text(&lone.stdout).trim()).unwrap();
    cab_export(&store, &v, &exported);
    assert_eq!(
        std::fs::read(&exported).unwrap(),
        b"a lone file\n",
        "a lone file is the tree itself"
    );
}

/// Data that is no archive: cab names the formats it reads and the bytes it saw; Nix refuses
/// it too.
#[test]
fn other_data_is_refused_by_name() {
    let dir = TempDir::new("formats-refused");
    let root = dir.join("forge");
    write_file(
        &root.join("files/page"),
        b"<!DOCTYPE html>\n<html>Not Found</html>\n",
        0o644,
    );
    write_file(&root.join("files/text.gz"), b"", 0o644);
    sh(&root.join("files"), "printf 'plain text, no tar' | gzip -c > text.gz");
    let forge = Forge::start(&root, &[]);
    for (name, says) in [
        ("page", "not an archive cab can unpack"),
        (
            "text.gz",
            "gzip-compressed data, but what it holds is not a tar archive",
        ),
    ] {
        let out = cab_fetch(&dir.join("store"), &format!("<tarball:{}/files/{name}>", forge.url()));
        assert!(exited_nonzero(out.status), "{}", report("cab fetch", &out));
        let e = text(&out.stderr);
        assert!(e.contains(says), "{e}");
        assert!(
            e.contains("cab reads tar (plain, or compressed with gzip, bzip2, xz or zstd) and zip"),
            "{e}"
        );
        assert!(!e.contains("corrupt"), "{e}");
        let nix = run(Command::new("nix-prefetch-url")
            .arg("--unpack")
            .arg(format!("file://{}", root.join("files").join(name).display())));
        assert!(!nix.status.success(), "Nix unpacked {name}");
    }
}

/// Writes zips whose member names are what real archives carry — bytes without the UTF-8 flag
/// (CP437 by the format's letter, from MS-DOS and Unix tools), names flagged UTF-8, and
/// Info-ZIP Unicode Path fields (0x7075, in both headers, as Info-ZIP's zip writes them) —
/// into `files/`. Python's zipfile flags any name that is not ASCII, so the names' bytes are
/// handed to it as they are.
fn crafted_zips(files: &Path) {
    let program = r#"
import struct, sys, zipfile, zlib
class Raw(zipfile.ZipInfo):
    def _encodeFilenameFlags(self):
        return self.raw, self.flag_bits
def member(raw, unicode=None, crc_of=None, system=3, flag=0):
    info = Raw(raw.decode('latin-1'), (2024, 1, 1, 0, 0, 0))
    info.raw, info.create_system, info.flag_bits = raw, system, info.flag_bits | flag
    info.external_attr = 0o100644 << 16 if system == 3 else 0x20
    if unicode is not None:
        body = b'\x01' + struct.pack('<I', zlib.crc32(raw if crc_of is None else crc_of)) + unicode.encode()
        info.extra = struct.pack('<HH', 0x7075, len(body)) + body
    return info
zips = {
    'zip-cp437': [member(b'pkg/caf\x82.txt', system=0), member(b'pkg/na\x8bve', system=0),
                  member(b'pkg/unix-\xe9t\xe9'), member(b'pkg/plain')],
    'zip-unicode-ascii': [member(b'pkg/caf\x82', 'pkg/cafe'), member(b'pkg/plain')],
    'zip-unicode': [member(b'pkg/caf\x82', 'pkg/caf\u00e9'), member(b'pkg/\x82', 'pkg/d\u00e9j\u00e0/vu'),
                    member('pkg/flag-caf\u00e9'.encode(), flag=0x800),
                    member(b'pkg/stale', 'pkg/renamed', crc_of=b'pkg/older')],
}
for name, members in zips.items():
    with zipfile.ZipFile(sys.argv[1] + '/' + name, 'w') as z:
        for m in members:
            z.writestr(m, m.raw)
"#;
    run_ok(Command::new("python3").args(["-c", program]).arg(files));
}

/// Zip member names as Nix reads them wherever it can, and as `unzip` reads the Unicode Path
/// field. A name's bytes stay its bytes, flagged UTF-8 or not: Nix (libarchive) keeps them, so
/// a pin Nix made of such an archive holds (this machine's `unzip` would rewrite names made on
/// MS-DOS from CP437 into Latin-1). A Unicode Path field made from its name gives the name:
/// `unzip`'s tree, which Nix matches where it can unpack the archive at all (libarchive reads
/// the field too, but in Nix's C locale it cannot give a name that is not ASCII).
#[test]
fn zip_names_as_nix_and_unzip_read_them() {
    let dir = TempDir::new("zip-names");
    let root = dir.join("forge");
    let files = root.join("files");
    mkdir(&files);
    crafted_zips(&files);
    let forge = Forge::start(&root, &[]);
    let store = dir.join("store");
    for name in ["zip-cp437", "zip-unicode-ascii", "zip-unicode"] {
        let out = cab_fetch(&store, &format!("<tarball:{}/files/{name}>", forge.url()));
        assert!(out.status.success(), "{name}: {}", report("cab fetch", &out));
        let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        let exported = dir.join(format!("{name}-export"));
        cab_export(&store, &v, &exported);
        let mut names: Vec<Vec<u8>> = std::fs::read_dir(&exported)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_encoded_bytes())
            .collect();
        names.sort();
        if name == "zip-cp437" {
            assert_eq!(
                names,
                [&b"caf\x82.txt"[..], b"na\x8bve", b"plain", b"unix-\xe9t\xe9"],
                "the names' own bytes"
            );
            assert_eq!(v["narHash"], nix_prefetch_unpack(&files.join(name)), "{name}");
            continue;
        }
        let unzipped = dir.join(format!("{name}-unzip"));
        // unzip warns (exit 1) of the stale field it leaves alone.
        let out = run(Command::new("unzip")
            .args(["-q", "-d"])
            .arg(&unzipped)
            .arg(files.join(name)));
        assert!(matches!(out.status.code(), Some(0 | 1)), "{}", report("unzip", &out));
        assert_same_tree(&unzipped.join("pkg"), &exported);
        assert_eq!(v["narHash"], nix_hash(&unzipped.join("pkg"), None), "{name}");
        if name == "zip-unicode-ascii" {
            // Both read the field: Nix agrees.
            assert_eq!(names, [&b"cafe"[..], b"plain"]);
            assert_eq!(v["narHash"], nix_prefetch_unpack(&files.join(name)), "{name}");
            continue;
        }
        assert_eq!(
            names,
            ["caf\u{e9}", "d\u{e9}j\u{e0}", "flag-caf\u{e9}", "stale"].map(|n| n.as_bytes().to_vec())
        );
        // Nix 2.8 cannot name these members; should a later one, it must agree.
        let nix = run(Command::new("nix-prefetch-url")
            .args(["--unpack", "--type", "sha256"])
            .arg(format!("file://{}", files.join(name).display())));
        if nix.status.success() {
            assert_eq!(v["narHash"], nix_prefetch_unpack(&files.join(name)), "{name}");
        }
    }
}
