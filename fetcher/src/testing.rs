//! Test doubles shared by the unit tests: a sink that records what it is asked to make and
//! checks it as the host does, a source that hands out bytes in awkward pieces, temporary
//! directories, and hand-built tar headers for the archives `tar` itself refuses to write.

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Result;
use crate::io::{Refused, Sink, Source};

/// What a recorded output tree holds at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File { executable: bool, data: Vec<u8> },
    Symlink(Vec<u8>),
}

/// Records sink calls and enforces the host's rules: a parent must be a directory made
/// before, and nothing is made twice.
#[derive(Debug, Default)]
pub struct RecordingSink {
    pub tree: BTreeMap<String, Node>,
    pub calls: Vec<String>,
    pub root: Option<String>,
    open: BTreeMap<i32, String>,
    next: i32,
    /// Refuse any call naming this path.
    pub refuse: Option<String>,
    /// The scratch file.
    pub scratch: Vec<u8>,
}

impl RecordingSink {
    fn place(&mut self, path: &[u8]) -> Result<String, Refused> {
        let p = String::from_utf8(path.to_vec()).map_err(|_| Refused)?;
        if self.refuse.as_deref() == Some(p.as_str()) {
            return Err(Refused);
        }
        assert!(
            !p.is_empty() && !p.starts_with('/') && !p.ends_with('/'),
            "bad path {p:?}"
        );
        assert!(
            p.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
            "bad path {p:?}"
        );
        assert!(!self.tree.contains_key(&p), "made twice: {p:?}");
        if let Some((parent, _)) = p.rsplit_once('/') {
            assert_eq!(
                self.tree.get(parent),
                Some(&Node::Dir),
                "parent of {p:?} is not a directory made before"
            );
        }
        Ok(p)
    }

    pub fn file(&self, path: &str) -> (&[u8], bool) {
        match self.tree.get(path) {
            Some(Node::File { executable, data }) => (data, *executable),
            other => panic!("{path}: {other:?}"),
        }
    }
}

impl Sink for RecordingSink {
    fn mkdir(&mut self, path: &[u8]) -> Result<(), Refused> {
        let p = self.place(path)?;
        self.calls.push(format!("mkdir {p}"));
        self.tree.insert(p, Node::Dir);
        Ok(())
    }

    fn create(&mut self, path: &[u8], executable: bool) -> Result<i32, Refused> {
        let p = self.place(path)?;
        self.calls
            .push(format!("create {p}{}", if executable { " +x" } else { "" }));
        self.tree.insert(
            p.clone(),
            Node::File {
                executable,
                data: Vec::new(),
            },
        );
        self.next += 1;
        self.open.insert(self.next, p);
        Ok(self.next)
    }

    fn write(&mut self, file: i32, data: &[u8]) -> Result<(), Refused> {
        let p = self.open.get(&file).expect("write to a file not open").clone();
        assert!(data.len() <= 64 * 1024, "chunk too large");
        match self.tree.get_mut(&p) {
            Some(Node::File { data: d, .. }) => d.extend_from_slice(data),
            _ => unreachable!(),
        }
        Ok(())
    }

    fn close(&mut self, file: i32) -> Result<(), Refused> {
        self.open.remove(&file).expect("close of a file not open");
        Ok(())
    }

    fn symlink(&mut self, path: &[u8], target: &[u8]) -> Result<(), Refused> {
        let p = self.place(path)?;
        self.calls
            .push(format!("symlink {p} -> {}", String::from_utf8_lossy(target)));
        self.tree.insert(p, Node::Symlink(target.to_vec()));
        Ok(())
    }

    fn copy(&mut self, from: &[u8], path: &[u8]) -> Result<(), Refused> {
        let from = String::from_utf8(from.to_vec()).map_err(|_| Refused)?;
        // As the host: only a closed file or a symlink made earlier.
        let node = match self.tree.get(&from) {
            Some(node @ (Node::File { .. } | Node::Symlink(_))) if !self.open.values().any(|p| *p == from) => {
                node.clone()
            }
            _ => return Err(Refused),
        };
        let p = self.place(path)?;
        self.calls.push(format!("copy {from} -> {p}"));
        self.tree.insert(p, node);
        Ok(())
    }

    fn set_root(&mut self, path: &[u8]) -> Result<(), Refused> {
        let p = String::from_utf8(path.to_vec()).unwrap();
        assert!(self.tree.contains_key(&p), "root {p:?} was not made");
        assert!(self.root.is_none(), "root set twice");
        assert!(self.open.is_empty(), "files left open");
        self.calls.push(format!("root {p}"));
        self.root = Some(p);
        Ok(())
    }

    fn scratch_append(&mut self, data: &[u8]) -> Result<u64, Refused> {
        self.scratch.extend_from_slice(data);
        Ok((self.scratch.len() - data.len()) as u64)
    }

    fn scratch_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Refused> {
        let rest = self.scratch.get(offset as usize..).ok_or(Refused)?;
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

/// Hands out its bytes in small, varying pieces, so that every parser meets a boundary at
/// every possible place.
pub struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl<'a> Trickle<'a> {
    pub fn new(data: &'a [u8]) -> Trickle<'a> {
        Trickle { data, step: 0 }
    }
}

impl Source for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.step = (self.step * 7 + 3) % 1031;
        let n = (self.step + 1).min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Everything `src` gives, read in odd-sized pieces.
pub fn drain(mut src: impl Source) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0; 777];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// A fresh, empty directory for one test, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        // Tests run in parallel and may use the same label (two tests reading the same commit
        // of identical repositories): a counter keeps their directories apart.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cab-fetcher-test-{}-{n}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command, which must succeed, and returns its standard output.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Compresses `data` with the real `gzip`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    compress_with("gzip", &["-n"], data)
}

/// Compresses `data` with the real `tool` (`gzip`, `bzip2`, `xz`, `zstd`), at its defaults.
pub fn compress(tool: &str, data: &[u8]) -> Vec<u8> {
    compress_with(tool, &[], data)
}

/// Compresses `data` with the real `tool` given `flags`, through a pipe (`-c`, stdin).
pub fn compress_with(tool: &str, flags: &[&str], data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(tool)
        .arg("-c")
        .args(flags)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{tool} {flags:?} failed");
    out.stdout
}

/// Deterministic bytes that do not compress.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A ustar header block, checksum included; `edit` may change it before the checksum.
pub fn header(name: &[u8], typeflag: u8, size: u64, link: &[u8]) -> [u8; 512] {
    header_with(name, typeflag, size, link, |_| {})
}

pub fn header_with(name: &[u8], typeflag: u8, size: u64, link: &[u8], edit: impl FnOnce(&mut [u8; 512])) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    edit(&mut h);
    seal(&mut h);
    h
}

/// Writes the checksum of a header block.
pub fn seal(h: &mut [u8; 512]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// An archive from entries given as (header, contents): contents padded, two zero blocks.
pub fn archive(entries: &[([u8; 512], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (h, data) in entries {
        out.extend_from_slice(h);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

/// A path over 300 bytes, which ustar cannot hold: GNU writes an `L` record, pax a `path`.
pub fn long_file() -> String {
    format!("long/{}/{}/{}.txt", "d".repeat(100), "e".repeat(100), "f".repeat(90))
}

/// A tree with everything a source tree may hold, under `dir/top`.
pub fn make_tree(dir: &std::path::Path, with_long: bool) {
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

/// Checks that `sink` holds what [`make_tree`] made, under `prefix`.
pub fn check_tree(sink: &RecordingSink, prefix: &str, with_long: bool) {
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

/// Runs git with no user or system configuration and a fixed identity and date, in `dir`.
pub fn git(dir: &Path, args: &[&str]) -> Vec<u8> {
    run(Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .args(args))
}

/// `git` with `input` on standard input.
pub fn git_with_input(dir: &Path, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("git");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "git {args:?}");
    out.stdout
}

/// A work tree at `dir` with history: text files edited over several commits (so that packs
/// hold deltas and delta chains), an executable, symlinks, nested directories, files larger
/// than the inflate window, an empty file, and a submodule entry. Returns the commit ids,
/// oldest first.
pub fn git_repo(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::{PermissionsExt, symlink};
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    let write = |p: &str, data: &[u8], mode: u32| {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let text = |version: usize| -> Vec<u8> {
        (0..2000)
            .map(|i| {
                if i % 97 == version % 97 {
                    format!("line {i} changed in version {version}\n")
                } else {
                    format!("line {i} of a long text file that stays mostly the same\n")
                }
            })
            .collect::<String>()
            .into_bytes()
    };
    let mut commits = Vec::new();
    for version in 0..12 {
        write("src/text.txt", &text(version), 0o644);
        write("src/copy.txt", &text(version + 1000), 0o644);
        write(
            &format!("notes/{version}.md"),
            format!("note {version}\n").as_bytes(),
            0o644,
        );
        if version == 0 {
            write("run.sh", b"#!/bin/sh\necho hi\n", 0o755);
            write("empty", b"", 0o644);
            write("a/b/c/deep.txt", b"deep\n", 0o644);
            write("big/noise.bin", &noise(300_000, 11), 0o644);
            write("big/zeros.bin", &vec![0; 1_000_000], 0o644);
            symlink("a/b", dir.join("link")).unwrap();
            symlink("../../etc/passwd", dir.join("a/up")).unwrap();
        }
        git(dir, &["add", "-A"]);
        // (`add -A` drops the submodule, which has no work tree here; put it back each time.)
        let sub = "0123456789abcdef0123456789abcdef01234567";
        git(
            dir,
            &["update-index", "--add", "--cacheinfo", &format!("160000,{sub},sub")],
        );
        git(dir, &["commit", "-q", "-m", &format!("version {version}")]);
        commits.push(
            String::from_utf8(git(dir, &["rev-parse", "HEAD"]))
                .unwrap()
                .trim()
                .to_owned(),
        );
    }
    commits
}

/// What `git archive` makes of `rev` in the repository at `repo`, as a recorded tree.
pub fn git_archive_tree(repo: &Path, rev: &str) -> BTreeMap<String, Node> {
    git_archive_tree_with(repo, rev, &[])
}

/// [`git_archive_tree`] with git options before `archive` (`-c name=value`).
pub fn git_archive_tree_with(repo: &Path, rev: &str, options: &[&str]) -> BTreeMap<String, Node> {
    use std::os::unix::fs::PermissionsExt;
    let tar = git(repo, &[options, &["archive", "--format=tar", rev]].concat());
    let out = TempDir::new(&format!("archive-{rev}"));
    let mut child = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(out.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&tar).unwrap();
    }
    assert!(child.wait().unwrap().success());
    let mut tree = BTreeMap::new();
    fn walk(dir: &Path, prefix: &str, tree: &mut BTreeMap<String, Node>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(entry.path()).unwrap();
                tree.insert(path, Node::Symlink(target.into_os_string().into_encoded_bytes()));
            } else if meta.is_dir() {
                tree.insert(path.clone(), Node::Dir);
                walk(&entry.path(), &path, tree);
            } else {
                let data = std::fs::read(entry.path()).unwrap();
                let executable = meta.permissions().mode() & 0o100 != 0;
                tree.insert(path, Node::File { executable, data });
            }
        }
    }
    walk(out.path(), "", &mut tree);
    tree
}

/// A pack of whole objects, given as (type number, contents).
pub fn pack(objects: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = b"PACK\0\0\0\x02".to_vec();
    out.extend_from_slice(&(objects.len() as u32).to_be_bytes());
    for (kind, data) in objects {
        let mut size = data.len();
        out.push((kind << 4) | (size & 15) as u8);
        size >>= 4;
        while size > 0 {
            *out.last_mut().unwrap() |= 0x80;
            out.push((size & 0x7f) as u8);
            size >>= 7;
        }
        out.extend(miniz_oxide::deflate::compress_to_vec_zlib(data, 6));
    }
    let sum = crate::sha1::sha1(&out);
    out.extend_from_slice(&sum);
    out
}
