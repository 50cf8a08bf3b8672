//! Every archive format cab reads, made by the real tools (GNU tar, gzip, bzip2, xz, zstd,
//! zip, `git archive`, Python's zipfile), fetched as tarball islands from the local forge and
//! compared with what the real Nix makes of the same file: `nix-prefetch-url --unpack`'s hash
//! must be the island's narHash. The files are served without extensions, since cab (like
//! libarchive) tells formats apart by their bytes.

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
    run_ok(
        cab()
            .arg("--store")
            .arg(&store)
            .args(["store", "export", v["hash"].as_str().unwrap()])
            .arg(&exported),
    );
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
