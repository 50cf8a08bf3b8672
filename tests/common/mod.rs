//! Shared helpers for the black-box tests: temp dirs, running `cab` and real Nix, parsing their
//! output, building edge-case trees and comparing trees on disk.
//!
//! Everything here goes through real processes and the real file system; nothing is mocked.
//! Each test crate uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

/// A fresh directory under `std::env::temp_dir()`, removed (with everything in it) on drop.
/// Set `CAB_TEST_KEEP=1` to keep it for post-mortem debugging.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("cab-test-{label}-{}-{n}-{nanos}", std::process::id());
        let path = std::env::temp_dir().join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("CAB_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        // Stores and exports may hold read-only directories; make them writable so that
        // removal also works when the tests do not run as root.
        make_dirs_writable(&self.path);
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}

fn make_dirs_writable(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else { return };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_dirs_writable(&entry.path());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running processes
// ---------------------------------------------------------------------------------------------

/// How long any single command may run before the test fails (instead of hanging forever, e.g.
/// if a FIFO is opened for reading). Override with `CAB_TEST_TIMEOUT` (seconds).
fn default_timeout() -> Duration {
    let secs = std::env::var("CAB_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(900);
    Duration::from_secs(secs)
}

/// The `cab` binary built by Cargo for this test run.
pub fn cab() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cab"));
    // Keep the user's environment from picking a store or changing log output, or sending the
    // tests' loopback requests to a proxy (the tests that test proxies set their own).
    cmd.env_remove("CAB_STORE")
        .env_remove("CAB_FAILPOINT")
        .env_remove("RUST_LOG");
    // Nor from setting anything else: no configuration file, no setting from the environment,
    // no netrc (the tests that test these set their own).
    for key in cab::config::Layer::KEYS {
        cmd.env_remove(cab::config::env_name(key));
    }
    cmd.env_remove("CAB_CONFIG")
        .env_remove("GITHUB_TOKEN")
        .env("XDG_CONFIG_HOME", "/nonexistent/cab-tests")
        .env("CAB_NETRC", "/dev/null");
    for proxy in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
        cmd.env_remove(proxy).env_remove(proxy.to_lowercase());
    }
    cmd
}

/// A printable form of a command line, for failure messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s = format!("{}={} {s}", k.to_string_lossy(), v.to_string_lossy());
        }
    }
    s
}

/// Runs a command to completion (stdin closed), capturing its output, with a timeout.
pub fn run(cmd: &mut Command) -> Output {
    run_timeout(cmd, default_timeout())
}

pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start `{what}`: {e}"));
    // Drain both pipes on their own threads so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().expect("stdout piped");
    let mut err_pipe = child.stderr.take().expect("stderr piped");
    let out_thread = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_thread = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("waiting for child") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{what}` did not finish within {timeout:?} (killed)");
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    Output {
        status,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
    }
}

/// Text of a command's output, for messages and matching.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn report(what: &str, out: &Output) -> String {
    format!(
        "`{what}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Runs a command that must succeed; returns its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let what = describe(cmd);
    let out = run(cmd);
    assert!(out.status.success(), "expected success: {}", report(&what, &out));
    out
}

/// Runs a command that must fail with a plain non-zero exit code (not a crash by signal).
pub fn run_fail(cmd: &mut Command) -> Output {
    let what = describe(cmd);
    let out = run(cmd);
    assert!(
        exited_nonzero(out.status),
        "expected a non-zero exit: {}",
        report(&what, &out)
    );
    // An error must be reported, not crash the program.
    assert!(
        !text(&out.stderr).contains("panicked at"),
        "expected an error message, got a panic: {}",
        report(&what, &out)
    );
    out
}

pub fn exited_nonzero(status: ExitStatus) -> bool {
    matches!(status.code(), Some(code) if code != 0)
}

// ---------------------------------------------------------------------------------------------
// Hashes: `cab hash` and real Nix
// ---------------------------------------------------------------------------------------------

/// The NAR-hash output styles, as flags shared by `cab hash` and `nix hash path`.
pub const STYLE_FLAGS: [&str; 4] = ["--sri", "--base32", "--base16", "--base64"];

/// The two hashes `cab hash` and `cab store add` print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashes {
    /// The NAR SHA-256, in whichever style was asked for.
    pub nar: String,
    /// The Cab tree hash, `blake3-<64 lowercase hex>`.
    pub tree: String,
}

/// Checks the form of a Cab tree hash and returns its hex part.
pub fn tree_hex(tree: &str) -> &str {
    let hex = tree
        .strip_prefix("blake3-")
        .unwrap_or_else(|| panic!("tree hash {tree:?} lacks `blake3-`"));
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "tree hash {tree:?} is not `blake3-` followed by 64 lowercase hex digits"
    );
    hex
}

/// Parses the two-line output of `cab hash` / `cab store add`.
pub fn parse_hashes(stdout: &[u8]) -> Hashes {
    let s = text(stdout);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "expected exactly two lines (NAR hash, tree hash), got {s:?}"
    );
    let hashes = Hashes {
        nar: lines[0].to_string(),
        tree: lines[1].to_string(),
    };
    tree_hex(&hashes.tree);
    hashes
}

/// Extracts a string field from a flat JSON object without a JSON library.
pub fn json_string_field(json: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\"");
    let rest = &json[json.find(&needle)? + needle.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

/// Parses the one-line `--json` output of `cab hash` / `cab store add`.
pub fn parse_json_hashes(stdout: &[u8]) -> Hashes {
    let s = text(stdout);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 1, "expected one JSON line, got {s:?}");
    let line = lines[0].trim();
    assert!(
        line.starts_with('{') && line.ends_with('}'),
        "not a JSON object: {line:?}"
    );
    let nar = json_string_field(line, "narHash").unwrap_or_else(|| panic!("no narHash in {line:?}"));
    let tree = json_string_field(line, "hash").unwrap_or_else(|| panic!("no hash in {line:?}"));
    tree_hex(&tree);
    Hashes { nar, tree }
}

/// `cab hash [FLAG] PATH`, which must succeed.
pub fn cab_hash(path: &Path, flag: Option<&str>) -> Hashes {
    let mut cmd = cab();
    cmd.arg("hash");
    cmd.args(flag);
    cmd.arg(path);
    parse_hashes(&run_ok(&mut cmd).stdout)
}

/// `cab hash --json PATH`, which must succeed.
pub fn cab_hash_json(path: &Path) -> Hashes {
    parse_json_hashes(&run_ok(cab().arg("hash").arg("--json").arg(path)).stdout)
}

/// `nix hash path [FLAG] PATH` with real Nix. A missing `nix` fails the test: these tests are
/// only meaningful against the real thing.
pub fn nix_hash(path: &Path, flag: Option<&str>) -> String {
    let mut cmd = Command::new("nix");
    cmd.args(["--extra-experimental-features", "nix-command", "hash", "path"]);
    cmd.args(flag);
    cmd.arg(path);
    let what = describe(&cmd);
    require_nix();
    let out = run(&mut cmd);
    assert!(out.status.success(), "real Nix failed: {}", report(&what, &out));
    text(&out.stdout).trim().to_string()
}

/// `nix-store --realise PATH` from the binary cache `substituter` only, trusting the public
/// key in `public_key` (as `nix key convert-secret-to-public` writes it).
pub fn nix_realise_from(path: &str, substituter: &str, public_key: &Path) -> Output {
    let key = fs::read_to_string(public_key).unwrap();
    run_timeout(
        Command::new("nix-store")
            .arg("--realise")
            .arg(path)
            .args(["--option", "substituters", substituter])
            .args(["--option", "trusted-public-keys", key.trim()]),
        Duration::from_secs(180),
    )
}

/// Fails the test, with a clear message, unless `nix` can be run.
pub fn require_nix() {
    static NIX: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = NIX.get_or_init(
        || match Command::new("nix").arg("--version").stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "`nix --version` failed; these tests need a working Nix: {}",
                report("nix --version", &o)
            )),
            Err(e) => Err(format!(
                "`nix` could not be run ({e}): these tests compare against real Nix (>= 2.8); \
             install it (Debian/Ubuntu: `apt-get install nix-bin`) and put it on PATH"
            )),
        },
    );
    if let Err(msg) = checked {
        panic!("{msg}");
    }
}

/// Asserts `nix hash path` also rejects PATH (used to confirm error cases are errors for Nix too).
pub fn assert_nix_rejects(path: &Path) {
    require_nix();
    let mut cmd = Command::new("nix");
    cmd.args(["--extra-experimental-features", "nix-command", "hash", "path"])
        .arg(path);
    let what = describe(&cmd);
    let out = run(&mut cmd);
    assert!(
        !out.status.success(),
        "expected real Nix to reject this: {}",
        report(&what, &out)
    );
}

/// `cab hash PATH` (default style) must print exactly Nix's NAR hash; returns cab's hashes.
pub fn assert_matches_nix(path: &Path) -> Hashes {
    let ours = cab_hash(path, None);
    let nix = nix_hash(path, None);
    assert!(
        ours.nar.starts_with("sha256-"),
        "default style must be SRI, got {:?}",
        ours.nar
    );
    assert_eq!(
        ours.nar,
        nix,
        "NAR hash of {} differs from `nix hash path`",
        path.display()
    );
    ours
}

/// Like [`assert_matches_nix`], and also every style flag and `--json`.
pub fn assert_matches_nix_all_styles(path: &Path) -> Hashes {
    let default = assert_matches_nix(path);
    for flag in STYLE_FLAGS {
        let ours = cab_hash(path, Some(flag));
        let nix = nix_hash(path, Some(flag));
        assert_eq!(
            ours.nar,
            nix,
            "`cab hash {flag}` of {} differs from `nix hash path {flag}`",
            path.display()
        );
        assert_eq!(ours.tree, default.tree, "the tree hash must not depend on {flag}");
    }
    let json = cab_hash_json(path);
    assert_eq!(
        json, default,
        "`cab hash --json` must carry the same two hashes as the default output"
    );
    default
}

// ---------------------------------------------------------------------------------------------
// Building trees
// ---------------------------------------------------------------------------------------------

/// Writes a file with the given contents and permission bits (creating parent directories).
pub fn write_file(path: &Path, contents: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

/// Creates a symlink at `link` whose target is exactly `target` (bytes, not resolved).
pub fn make_symlink(target: impl AsRef<OsStr>, link: &Path) {
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    symlink(target.as_ref(), link).unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
}

/// A path component from raw bytes (for non-UTF-8 names).
pub fn name(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// Deterministic pseudo-random bytes (xorshift64*), so large files do not compress or dedup.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Creates a FIFO with the `mkfifo` command (libc is not a dev-dependency).
pub fn mkfifo(path: &Path) {
    run_ok(Command::new("mkfifo").arg(path));
}

pub mod forge;
pub mod garage;
pub mod sshd;

/// The edge-case trees, each built into a fresh directory. `hash_nix` hashes each on its own;
/// `store_cli` builds all of them side by side into one tree for a round trip.
pub mod edge {
    use super::*;

    /// An empty file, an empty directory and a chain of nested empty directories.
    pub fn empties(root: &Path) {
        mkdir(root);
        write_file(&root.join("empty-file"), b"", 0o644);
        mkdir(&root.join("empty-dir"));
        mkdir(&root.join("nested/empty/dirs/all/the/way"));
        mkdir(&root.join("nested/empty/sibling"));
    }

    /// Permission bits: NAR records only "executable", which Nix takes from the owner's x bit.
    /// Group/other x without owner x is not executable; read/write bits are not recorded.
    pub fn exec_bits(root: &Path) {
        mkdir(root);
        let body = b"#!/bin/sh\necho hello\n";
        write_file(&root.join("exec-0755"), body, 0o755);
        write_file(&root.join("exec-0700"), body, 0o700);
        write_file(&root.join("exec-0500"), body, 0o500);
        write_file(&root.join("exec-0744"), body, 0o744);
        write_file(&root.join("plain-0644"), body, 0o644);
        write_file(&root.join("plain-0600"), body, 0o600);
        write_file(&root.join("plain-0444"), body, 0o444);
        write_file(&root.join("plain-0654-group-x"), body, 0o654);
        write_file(&root.join("plain-0645-other-x"), body, 0o645);
        write_file(&root.join("empty-exec"), b"", 0o755);
        // Directory permissions are not part of a NAR either.
        write_file(&root.join("readonly-dir/inside"), b"x\n", 0o644);
        fs::set_permissions(root.join("readonly-dir"), fs::Permissions::from_mode(0o555)).unwrap();
    }

    /// Symlinks are stored as their target text and never followed: relative, absolute,
    /// dangling, to directories, chains, loops, "." and "..".
    pub fn symlinks(root: &Path) {
        mkdir(root);
        write_file(&root.join("file"), b"target contents\n", 0o644);
        write_file(&root.join("sub/inner"), b"inner\n", 0o644);
        make_symlink("file", &root.join("rel"));
        make_symlink("../file", &root.join("sub/rel-up"));
        make_symlink("/etc/passwd", &root.join("abs"));
        make_symlink("/nonexistent/cab/test/target", &root.join("abs-dangling"));
        make_symlink("no/such/target", &root.join("dangling"));
        make_symlink("sub", &root.join("to-dir"));
        make_symlink("sub/", &root.join("to-dir-slash"));
        make_symlink("rel", &root.join("chain"));
        make_symlink("loop", &root.join("loop"));
        make_symlink(".", &root.join("dot"));
        make_symlink("..", &root.join("sub/dotdot"));
        make_symlink("/", &root.join("to-root"));
        let long_target = "../".repeat(300) + "far/away";
        make_symlink(long_target, &root.join("long-target"));
    }

    /// A symlink used as the root of what is hashed: Nix hashes the link, not its target.
    pub fn symlink_root_target(root: &Path) -> PathBuf {
        write_file(&root.join("real-dir/file"), b"behind the link\n", 0o644);
        let link = root.join("link-to-dir");
        make_symlink("real-dir", &link);
        link
    }

    /// `levels` nested directories with one-letter names, a file and a symlink at the bottom.
    pub fn deep(root: &Path, levels: usize) -> PathBuf {
        let mut dir = root.to_path_buf();
        for _ in 0..levels {
            dir.push("d");
        }
        mkdir(&dir);
        write_file(&dir.join("leaf"), b"at the bottom\n", 0o644);
        make_symlink("leaf", &dir.join("leaf-link"));
        dir
    }

    /// Names of the maximum length (255 bytes), ASCII and multi-byte UTF-8.
    pub fn long_names(root: &Path) {
        mkdir(root);
        let ascii = "f".repeat(255);
        write_file(&root.join(&ascii), b"long name\n", 0o644);
        let dir = "D".repeat(255);
        write_file(&root.join(&dir).join("x"), b"in a long dir\n", 0o644);
        let link = "L".repeat(255);
        make_symlink(&ascii, &root.join(&link));
        let utf8 = "é".repeat(127) + "x"; // 127 * 2 + 1 = 255 bytes
        assert_eq!(utf8.len(), 255);
        write_file(&root.join(&utf8), b"long utf-8 name\n", 0o755);
    }

    /// Names that are not valid UTF-8 must be hashed as raw bytes, and sort as bytes.
    pub fn non_utf8(root: &Path) {
        mkdir(root);
        write_file(&root.join(name(b"\xff\xfe")), b"ff fe\n", 0o644);
        write_file(
            &root.join(name(b"caf\xe9")).join(name(b"\x80\x81")),
            b"latin-1 dir\n",
            0o644,
        );
        write_file(&root.join(name(b"a\xffz")), b"invalid in the middle\n", 0o755);
        make_symlink(name(b"\xff\xfe"), &root.join(name(b"link-\xc3\x28")));
        write_file(&root.join("plain"), b"ascii neighbour\n", 0o644);
    }

    /// Entries whose byte order differs from locale order or from "path string" order: NAR
    /// sorts each directory's names by raw bytes ("B" < "a" < "a b" < "a-b" < "a.b" < "a0").
    /// A directory "a" next to "a.b" catches sorting full paths ("a.b" < "a/x") by mistake.
    pub fn sort_order(root: &Path) {
        mkdir(root);
        for n in ["B", "Z", "a.b", "a-b", "a0", "a b", "_", "é", "z", "A", "0", "~"] {
            write_file(&root.join(n), n.as_bytes(), 0o644);
        }
        write_file(&root.join("a/x"), b"inside a\n", 0o644);
        write_file(&root.join("ab/y"), b"inside ab\n", 0o644);
    }

    /// Many small files over a few directories, with varied sizes and modes.
    pub fn many_small(root: &Path, count: usize) {
        mkdir(root);
        for i in 0..count {
            let dir = root.join(format!("dir{:02}", i % 40));
            let len = (i * 37) % 300;
            let mode = if i % 7 == 0 { 0o755 } else { 0o644 };
            write_file(
                &dir.join(format!("file{i:05}.txt")),
                &pseudo_random(len, i as u64),
                mode,
            );
        }
    }

    /// A regular file of `len` bytes with pseudo-random contents.
    pub fn big_file(path: &Path, len: usize) {
        write_file(path, &pseudo_random(len, 0xC0FFEE), 0o644);
    }

    /// A sparse file of `len` bytes (almost all zeros, little disk) with a few bytes in the middle.
    pub fn sparse_file(path: &Path, len: u64) {
        let mut f = fs::File::create(path).unwrap();
        f.set_len(len).unwrap();
        f.seek(SeekFrom::Start(len / 2 + 12345)).unwrap();
        f.write_all(b"a few bytes in the middle of nowhere").unwrap();
        f.sync_all().unwrap();
    }

    /// Everything above that a store can hold (sockets, FIFOs and the 1 GiB file aside),
    /// side by side in one tree.
    pub fn everything(root: &Path) {
        mkdir(root);
        empties(&root.join("empties"));
        exec_bits(&root.join("exec-bits"));
        symlinks(&root.join("symlinks"));
        symlink_root_target(&root.join("symlink-root"));
        deep(&root.join("deep"), 300);
        long_names(&root.join("long-names"));
        non_utf8(&root.join("non-utf8"));
        sort_order(&root.join("sort-order"));
        many_small(&root.join("many-small"), 1000);
        big_file(&root.join("big/few-mib.bin"), 5 * 1024 * 1024 + 17);
    }
}

// ---------------------------------------------------------------------------------------------
// Real trees on this machine
// ---------------------------------------------------------------------------------------------

/// Version key of a "python3.N" directory name, for picking the newest.
fn python_minor(name: &OsStr) -> Option<u32> {
    name.to_str()?.strip_prefix("python3.")?.parse().ok()
}

/// Python standard-library directories found on this machine (pyenv installs first, then the
/// system's), newest version first within each group. Only real stdlib dirs (with `os.py`).
pub fn python_lib_dirs() -> Vec<PathBuf> {
    let mut version_roots = Vec::new();
    if let Some(root) = std::env::var_os("PYENV_ROOT") {
        version_roots.push(PathBuf::from(root).join("versions"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        version_roots.push(PathBuf::from(home).join(".pyenv/versions"));
    }
    version_roots.push(PathBuf::from("/root/.pyenv/versions"));

    let mut lib_parents = Vec::new();
    for versions in version_roots {
        let Ok(entries) = fs::read_dir(&versions) else { continue };
        let mut found: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("lib")).collect();
        found.sort();
        lib_parents.extend(found);
    }
    lib_parents.push(PathBuf::from("/usr/lib"));
    lib_parents.push(PathBuf::from("/usr/local/lib"));

    let mut out: Vec<PathBuf> = Vec::new();
    for parent in lib_parents {
        let Ok(entries) = fs::read_dir(&parent) else { continue };
        let mut found: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|e| Some((python_minor(&e.file_name())?, e.path())))
            .filter(|(_, p)| p.join("os.py").is_file())
            .collect();
        found.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        for (_, p) in found {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// A package directory `name` (e.g. "email") of some Python standard library on this machine.
/// Fails the test when there is none: the real-tree checks are part of the contract.
pub fn python_package(name: &str) -> PathBuf {
    let libs = python_lib_dirs();
    libs.iter()
        .map(|lib| lib.join(name))
        .find(|p| p.join("__init__.py").is_file())
        .unwrap_or_else(|| panic!("no Python library package {name:?} found (looked in {libs:?}); install python3"))
}

// ---------------------------------------------------------------------------------------------
// Comparing trees
// ---------------------------------------------------------------------------------------------

/// What a NAR (and the store) records about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File { executable: bool, len: u64 },
    Symlink(OsString),
    Other(String),
}

/// Every node under `root` (root itself under the empty key), by relative path bytes.
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    snapshot_into(root, Vec::new(), &mut out);
    out
}

fn snapshot_into(path: &Path, rel: Vec<u8>, out: &mut BTreeMap<Vec<u8>, Node>) {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = meta.file_type();
    let node = if ft.is_dir() {
        Node::Dir
    } else if ft.is_file() {
        Node::File {
            executable: meta.permissions().mode() & 0o100 != 0,
            len: meta.len(),
        }
    } else if ft.is_symlink() {
        Node::Symlink(fs::read_link(path).unwrap().into_os_string())
    } else {
        Node::Other(format!("{ft:?}"))
    };
    let is_dir = node == Node::Dir;
    out.insert(rel.clone(), node);
    if is_dir {
        for entry in fs::read_dir(path).unwrap() {
            let entry = entry.unwrap();
            let mut child = rel.clone();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(entry.file_name().as_bytes());
            snapshot_into(&entry.path(), child, out);
        }
    }
}

/// Asserts two trees hold the same names, node kinds, executable bits, symlink targets and
/// file contents (by walking both), and that `diff -r --no-dereference` agrees.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = snapshot(expected);
    let b = snapshot(actual);
    let only_a: Vec<String> = a
        .keys()
        .filter(|k| !b.contains_key(*k))
        .map(|k| text(k))
        .take(10)
        .collect();
    let only_b: Vec<String> = b
        .keys()
        .filter(|k| !a.contains_key(*k))
        .map(|k| text(k))
        .take(10)
        .collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "trees differ: only in {}: {only_a:?}; only in {}: {only_b:?}",
        expected.display(),
        actual.display()
    );
    for (rel, node) in &a {
        assert_eq!(Some(node), b.get(rel), "node {:?} differs between the trees", text(rel));
        if let Node::File { .. } = node {
            let rel_path = Path::new(OsStr::from_bytes(rel));
            let x = fs::read(expected.join(rel_path)).unwrap();
            let y = fs::read(actual.join(rel_path)).unwrap();
            assert!(x == y, "contents of {:?} differ", text(rel));
        }
    }
    let mut diff = Command::new("diff");
    diff.args(["-r", "--no-dereference"]).arg(expected).arg(actual);
    let what = describe(&diff);
    let out = run(&mut diff);
    assert_eq!(out.status.code(), Some(0), "trees differ: {}", report(&what, &out));
}

/// Regular files under `dir` (recursively, not following symlinks); empty if it does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            out.extend(files_under(&entry.path()));
        } else if ft.is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    out
}
