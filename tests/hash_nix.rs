//! `cab hash` against real Nix (`nix hash path`), through the real binary.
//!
//! Line 1 of `cab hash` must be byte-for-byte what `nix hash path` prints with the same style
//! flag; line 2 is the Cab tree hash, which Nix cannot check, so its form and its
//! (in)sensitivity to changes are checked instead. Error cases (FIFOs, sockets, missing paths)
//! must fail and name the offending path.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

// ---------------------------------------------------------------------------------------------
// Real trees on this machine: lots of ordinary files, written by someone else.
// ---------------------------------------------------------------------------------------------

/// /usr/include: thousands of headers, nested dirs and some symlinks. Every style flag.
#[test]
fn real_usr_include() {
    let include = Path::new("/usr/include");
    assert!(
        include.is_dir(),
        "/usr/include is missing; install libc6-dev (it is the reference corpus)"
    );
    assert_matches_nix_all_styles(include);
}

/// Python standard-library packages: .py files, __pycache__ dirs, nested subpackages.
#[test]
fn real_python_packages() {
    let email = python_package("email");
    assert_matches_nix_all_styles(&email);
    for pkg in ["asyncio", "json", "xml"] {
        assert_matches_nix(&python_package(pkg));
    }
}

/// A single real regular file as the root (a NAR of just one file).
#[test]
fn real_single_files() {
    let candidates = ["/usr/bin/env", "/bin/sh", "/etc/passwd", "/usr/include/stdio.h"];
    let files: Vec<&Path> = candidates
        .iter()
        .map(Path::new)
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .collect();
    assert!(
        !files.is_empty(),
        "none of {candidates:?} is a regular file on this machine"
    );
    assert_matches_nix_all_styles(files[0]);
    for file in &files[1..] {
        assert_matches_nix(file);
    }
}

/// A real symlink as the root: Nix hashes the link itself, not what it points to.
#[test]
fn real_symlinks() {
    let mut links: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = fs::read_dir("/etc/alternatives") {
        let mut alts: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_symlink()).collect();
        alts.sort();
        links.extend(alts.into_iter().take(3));
    }
    for p in [
        "/bin",
        "/lib",
        "/etc/os-release",
        "/etc/localtime",
        "/usr/lib/os-release",
    ] {
        if Path::new(p).is_symlink() {
            links.push(PathBuf::from(p));
        }
    }
    assert!(
        !links.is_empty(),
        "found no real symlink in /etc/alternatives, /bin, /lib, /etc"
    );
    assert_matches_nix_all_styles(&links[0]);
    for link in &links[1..] {
        let ours = assert_matches_nix(link);
        // Hashing the link must differ from hashing what it points to (when that exists).
        if link.exists() {
            let target = fs::canonicalize(link).unwrap();
            assert_ne!(
                ours.nar,
                nix_hash(&target, None),
                "{} hashed like its target",
                link.display()
            );
        }
    }
}

/// A tree that is not in the page cache is read ahead of the walk (a helper thread asks the
/// kernel for each directory's files): the hashes are those of the warm walk and of Nix, and
/// the read-ahead did run.
#[test]
fn a_cold_tree_is_read_ahead_and_hashes_the_same() {
    // On the target directory's filesystem, a disk: tmpfs cannot drop its pages.
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cold-tree-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let mut files = Vec::new();
    for d in 0..30 {
        let dir = root.join(format!("pkg{d:02}/sub"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..40 {
            let path = dir.join(format!("f{f:02}.txt"));
            let line = format!("package {d} file {f}\n");
            fs::write(&path, line.repeat((d * 40 + f) % 700)).unwrap();
            files.push(path);
        }
    }
    let warm = assert_matches_nix(&root);
    // Every file written back, then dropped from the page cache.
    for path in &files {
        let file = fs::File::open(path).unwrap();
        file.sync_all().unwrap();
        let dropped =
            unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(dropped, 0, "posix_fadvise(DONTNEED) of {}", path.display());
    }
    let out = run_ok(cab().env("RUST_LOG", "cab=debug").arg("hash").arg(&root));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("reading the tree ahead"),
        "the cold tree was not read ahead:\n{log}"
    );
    assert_eq!(parse_hashes(&out.stdout), warm);
    fs::remove_dir_all(&root).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Built edge cases, one per test.
// ---------------------------------------------------------------------------------------------

/// The smallest NARs: an empty regular file (plain and executable) as the root.
#[test]
fn empty_file() {
    let tmp = TempDir::new("empty-file");
    let plain = tmp.join("empty");
    write_file(&plain, b"", 0o644);
    let plain_hashes = assert_matches_nix_all_styles(&plain);
    let exec = tmp.join("empty-exec");
    write_file(&exec, b"", 0o755);
    let exec_hashes = assert_matches_nix(&exec);
    assert_ne!(plain_hashes, exec_hashes, "the executable bit must change both hashes");
}

/// An empty directory as the root.
#[test]
fn empty_dir() {
    let tmp = TempDir::new("empty-dir");
    let dir = tmp.join("empty");
    mkdir(&dir);
    assert_matches_nix_all_styles(&dir);
}

/// Nested empty directories must each appear in the NAR (nothing is pruned).
#[test]
fn nested_empty_dirs() {
    let tmp = TempDir::new("nested-empty");
    let root = tmp.join("root");
    edge::empties(&root);
    let with = assert_matches_nix(&root);
    fs::remove_dir(root.join("nested/empty/sibling")).unwrap();
    let without = assert_matches_nix(&root);
    assert_ne!(with, without, "removing an empty directory must change both hashes");
}

/// Executable bits: 0755, 0700, 0500 and 0744 are executable (owner x); 0644, 0600, 0444 and
/// group/other-x-only modes are not; directory modes are ignored.
#[test]
fn executable_bits() {
    let tmp = TempDir::new("exec-bits");
    let root = tmp.join("root");
    edge::exec_bits(&root);
    assert_matches_nix_all_styles(&root);
}

/// Each mode again with the file itself as the root, where the NAR is one file node.
#[test]
fn executable_bits_single_file_roots() {
    let tmp = TempDir::new("exec-roots");
    let root = tmp.join("root");
    edge::exec_bits(&root);
    let mut seen = Vec::new();
    for entry in fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            let hashes = assert_matches_nix(&path);
            seen.push((mode & 0o100 != 0, path.file_name().unwrap().to_owned(), hashes));
        }
    }
    // Same contents, so exactly two distinct hashes: executable and not.
    let body_files: Vec<_> = seen.iter().filter(|(_, n, _)| n != "empty-exec").collect();
    for (exec, name, hashes) in &body_files {
        for (exec2, name2, hashes2) in &body_files {
            assert_eq!(
                exec == exec2,
                hashes == hashes2,
                "{name:?} vs {name2:?}: hashes must follow only the owner x bit"
            );
        }
    }
}

/// Symlinks of every sort inside a tree: relative, absolute, dangling, to dirs, loops, ".".
/// A tool that follows links would loop, fail on dangling ones or hash the wrong thing.
#[test]
fn symlinks_in_tree() {
    let tmp = TempDir::new("symlinks");
    let root = tmp.join("root");
    edge::symlinks(&root);
    assert_matches_nix_all_styles(&root);
}

/// A symlink as the root: hashed as a symlink node (to a dir, to a file, dangling).
#[test]
fn symlink_as_root() {
    let tmp = TempDir::new("symlink-root");
    let to_dir = edge::symlink_root_target(tmp.path());
    let link_hashes = assert_matches_nix_all_styles(&to_dir);
    let dir_hashes = assert_matches_nix(&tmp.join("real-dir"));
    assert_ne!(link_hashes, dir_hashes, "a root symlink must not be followed");

    write_file(&tmp.join("file"), b"a file\n", 0o644);
    make_symlink("file", &tmp.join("link-to-file"));
    assert_matches_nix(&tmp.join("link-to-file"));

    make_symlink("/nonexistent/cab/test", &tmp.join("dangling"));
    assert_matches_nix_all_styles(&tmp.join("dangling"));
}

/// 300 nested directories: deep recursion and long paths (about 600 bytes).
#[test]
fn deep_nesting() {
    let tmp = TempDir::new("deep");
    let root = tmp.join("root");
    edge::deep(&root, 300);
    assert_matches_nix(&root);
}

/// Names of 255 bytes (the usual NAME_MAX), ASCII and multi-byte UTF-8, and long link targets.
#[test]
fn long_names() {
    let tmp = TempDir::new("long-names");
    let root = tmp.join("root");
    edge::long_names(&root);
    assert_matches_nix(&root);
}

/// Names and link targets that are not UTF-8 are raw bytes in a NAR, never lossily converted.
#[test]
fn non_utf8_names() {
    let tmp = TempDir::new("non-utf8");
    let root = tmp.join("root");
    edge::non_utf8(&root);
    assert_matches_nix_all_styles(&root);
}

/// Entries sorted by raw bytes, not by locale or by full path string.
#[test]
fn byte_order_names() {
    let tmp = TempDir::new("sort-order");
    let root = tmp.join("root");
    edge::sort_order(&root);
    assert_matches_nix_all_styles(&root);
}

/// File sizes around NAR's 8-byte padding and BLAKE3's 1 KiB chunks / larger buffers.
#[test]
fn file_sizes_at_boundaries() {
    let tmp = TempDir::new("sizes");
    let root = tmp.join("root");
    let sizes = [
        0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1023, 1024, 1025, 2048, 4095, 4096, 4097, 8191, 8192, 8193, 65535,
        65536, 65537, 131072, 1048575, 1048576, 1048577,
    ];
    for (i, size) in sizes.iter().enumerate() {
        write_file(
            &root.join(format!("size-{size:08}")),
            &pseudo_random(*size, i as u64),
            0o644,
        );
    }
    assert_matches_nix(&root);
    // One size on its own as the root, too.
    assert_matches_nix(&root.join("size-00000009"));
}

/// A file larger than 1 GiB (sparse, so cheap on disk): 64-bit lengths, streaming reads.
#[test]
fn sparse_file_over_1gib() {
    let tmp = TempDir::new("sparse");
    let root = tmp.join("root");
    mkdir(&root);
    edge::sparse_file(&root.join("big.img"), 1100 * 1024 * 1024);
    write_file(&root.join("small"), b"next to a big one\n", 0o644);
    assert_matches_nix(&root);
}

/// Thousands of small files over many directories.
#[test]
fn many_small_files() {
    let tmp = TempDir::new("many-small");
    let root = tmp.join("root");
    edge::many_small(&root, 5000);
    assert_matches_nix(&root);
}

/// All built edge cases side by side in one tree, with every style flag.
#[test]
fn all_edge_cases_together() {
    let tmp = TempDir::new("everything");
    let root = tmp.join("root");
    edge::everything(&root);
    assert_matches_nix_all_styles(&root);
}

// ---------------------------------------------------------------------------------------------
// The tree hash: what it must and must not depend on (Nix cannot check it directly).
// ---------------------------------------------------------------------------------------------

/// The same tree built twice, in different places and at different times, hashes the same;
/// timestamps and location are not content.
#[test]
fn hashes_ignore_location_and_timestamps() {
    let tmp = TempDir::new("location");
    let a = tmp.join("first/copy");
    let b = tmp.join("second/elsewhere/copy");
    edge::symlinks(&a);
    edge::exec_bits(&a.join("bits"));
    std::thread::sleep(Duration::from_millis(1100));
    edge::symlinks(&b);
    edge::exec_bits(&b.join("bits"));
    run_ok(
        Command::new("touch")
            .args(["-h", "-d", "2001-02-03 04:05:06"])
            .arg(b.join("file"))
            .arg(b.join("rel")),
    );
    let ha = assert_matches_nix(&a);
    let hb = assert_matches_nix(&b);
    assert_eq!(
        ha, hb,
        "the same contents in another place / with other timestamps must hash the same"
    );
}

/// Any change NAR can see changes both hashes: contents, executable bit, a name, a link target.
#[test]
fn hashes_follow_content() {
    let tmp = TempDir::new("sensitivity");
    let root = tmp.join("root");
    write_file(&root.join("a.txt"), b"hello\n", 0o644);
    write_file(&root.join("sub/b.txt"), b"world\n", 0o644);
    make_symlink("a.txt", &root.join("link"));
    let mut seen = vec![assert_matches_nix(&root)];
    let mut check = |what: &str| {
        let h = assert_matches_nix(&root);
        for earlier in &seen {
            assert_ne!(earlier.nar, h.nar, "NAR hash unchanged after {what}");
            assert_ne!(earlier.tree, h.tree, "tree hash unchanged after {what}");
        }
        seen.push(h);
    };
    write_file(&root.join("a.txt"), b"hellO\n", 0o644);
    check("changing one byte");
    fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o755)).unwrap();
    check("setting the executable bit");
    fs::rename(root.join("sub/b.txt"), root.join("sub/c.txt")).unwrap();
    check("renaming a file");
    fs::remove_file(root.join("link")).unwrap();
    make_symlink("sub/c.txt", &root.join("link"));
    check("changing a symlink target");
    mkdir(&root.join("new-empty-dir"));
    check("adding an empty directory");
}

// ---------------------------------------------------------------------------------------------
// Errors: what a NAR cannot hold, and paths that do not exist.
// ---------------------------------------------------------------------------------------------

/// Asserts `cab hash ROOT` fails without printing hashes and names `offender` on stderr.
fn assert_hash_error_names(root: &Path, offender: &str) {
    let mut cmd = cab();
    cmd.arg("hash").arg(root);
    let what = describe(&cmd);
    let out = run_fail(&mut cmd);
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains("sha256-") && !stdout.contains("blake3-"),
        "printed hashes on error: {}",
        report(&what, &out)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(offender),
        "stderr should name {offender:?}: {}",
        report(&what, &out)
    );
}

/// A FIFO deep in a tree: Nix rejects it, and so must cab, naming the path (and not hang).
#[test]
fn fifo_in_tree_is_an_error() {
    let tmp = TempDir::new("fifo");
    let root = tmp.join("root");
    write_file(&root.join("ok.txt"), b"fine\n", 0o644);
    mkdir(&root.join("sub/deeper"));
    mkfifo(&root.join("sub/deeper/the-fifo"));
    assert_nix_rejects(&root);
    assert_hash_error_names(&root, "sub/deeper/the-fifo");
}

/// A FIFO as the root must be rejected from its metadata, never opened (opening would block).
#[test]
fn fifo_as_root_is_an_error() {
    let tmp = TempDir::new("fifo-root");
    let fifo = tmp.join("lonely-fifo");
    mkfifo(&fifo);
    assert_nix_rejects(&fifo);
    let out = run_timeout(cab().arg("hash").arg(&fifo), Duration::from_secs(60));
    assert!(exited_nonzero(out.status), "{}", report("cab hash FIFO", &out));
    assert!(
        text(&out.stderr).contains("lonely-fifo"),
        "{}",
        report("cab hash FIFO", &out)
    );
}

/// A Unix socket inside a tree is rejected the same way.
#[test]
fn socket_in_tree_is_an_error() {
    let tmp = TempDir::new("socket");
    let root = tmp.join("root");
    write_file(&root.join("a/ok.txt"), b"fine\n", 0o644);
    // Keep the listener alive while hashing, like a running daemon's socket.
    let _listener = UnixListener::bind(root.join("a/the-socket")).unwrap();
    assert_nix_rejects(&root);
    assert_hash_error_names(&root, "a/the-socket");
}

/// A path that does not exist: an error naming it.
#[test]
fn nonexistent_path_is_an_error() {
    let tmp = TempDir::new("missing");
    let missing = tmp.join("no-such-tree-here");
    assert_nix_rejects(&missing);
    assert_hash_error_names(&missing, &missing.to_string_lossy());
}
