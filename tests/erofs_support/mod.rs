//! Shared by the integration tests: a tree model to build images from, scratch directories
//! and mounts that clean up after themselves (also when a test fails), and the oracles —
//! fsck.erofs (with extraction) and real kernel mounts, compared field by field with the model.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use cab::erofs::{NodeId, Options, Placement, Plan, Tree, WriteStats};

pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// A file's contents: literal bytes, or a sparse file with a few marks (for sizes ≥ 4 GiB).
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Vec<u8>),
    Sparse { len: u64, marks: Vec<(u64, Vec<u8>)> },
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Sparse { len, .. } => *len,
        }
    }
}

/// The model of a tree.
#[derive(Debug, Clone)]
pub enum Kind {
    Dir(BTreeMap<Vec<u8>, Node>),
    File { content: Content, executable: bool },
    Symlink(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    pub xattrs: Xattrs,
}

pub fn dir(children: impl IntoIterator<Item = (Vec<u8>, Node)>, xattrs: Xattrs) -> Node {
    Node {
        kind: Kind::Dir(children.into_iter().collect()),
        xattrs,
    }
}

pub fn file(content: impl Into<Vec<u8>>, executable: bool, xattrs: Xattrs) -> Node {
    Node {
        kind: Kind::File {
            content: Content::Bytes(content.into()),
            executable,
        },
        xattrs,
    }
}

pub fn symlink(target: impl Into<Vec<u8>>, xattrs: Xattrs) -> Node {
    Node {
        kind: Kind::Symlink(target.into()),
        xattrs,
    }
}

pub fn x(name: &str, value: impl Into<Vec<u8>>) -> (Vec<u8>, Vec<u8>) {
    (name.as_bytes().to_vec(), value.into())
}

/// Deterministic pseudo-random bytes (xorshift), so contents differ across files.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory under `base`.
    pub fn new_in(base: &Path, name: &str) -> Scratch {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("erofs-test-{}-{n}-{name}", std::process::id()));
        fs::create_dir_all(&path).expect("create scratch dir");
        Scratch(path)
    }

    /// Under /tmp: a file-backed mount needs an image on a filesystem that reads through the
    /// page cache (`read_folio`); tmpfs has none, and mount(2) then says ENOTBLK.
    pub fn new(name: &str) -> Scratch {
        Scratch::new_in(Path::new("/tmp"), name)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Extracted trees have read-only directories; make them writable to remove them.
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(&self.0).status();
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// A file-backed EROFS mount (mount(2) on the image file itself: no loop device), unmounted
/// on drop.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    pub fn new(image: &Path, dir: &Path, device: Option<&Path>) -> std::io::Result<Mount> {
        fs::create_dir_all(dir)?;
        let options = match device {
            Some(d) => format!("device={}", d.display()),
            None => String::new(),
        };
        let (src, target) = (cstr(image), cstr(dir));
        let (fstype, opts) = (CString::new("erofs").unwrap(), CString::new(options).unwrap());
        // SAFETY: NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_RDONLY,
                opts.as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mount { dir: dir.to_path_buf() })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = cstr(&self.dir);
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            // Busy (a failed test may hold a file open until it unwinds): detach instead.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Writes each file's contents as its own blob file (as cab's store has them) and builds
/// the writer's tree over them.
pub fn build_tree(root: &Node, blobs: &Path) -> Tree<PathBuf> {
    fs::create_dir_all(blobs).expect("blob dir");
    let mut tree = Tree::new(root.xattrs.clone()).expect("root");
    let id = tree.root();
    let mut n = 0;
    add_children(&mut tree, id, root, blobs, &mut n);
    tree
}

fn add_children(tree: &mut Tree<PathBuf>, id: NodeId, node: &Node, blobs: &Path, n: &mut u64) {
    let Kind::Dir(children) = &node.kind else { return };
    for (name, child) in children {
        let xattrs = child.xattrs.clone();
        match &child.kind {
            Kind::Dir(_) => {
                let c = tree.add_dir(id, name, xattrs).expect("add_dir");
                add_children(tree, c, child, blobs, n);
            }
            Kind::File { content, executable } => {
                *n += 1;
                let blob = blobs.join(format!("blob{n}"));
                write_content(&blob, content);
                tree.add_file(id, name, content.len(), *executable, blob, xattrs)
                    .expect("add_file");
            }
            Kind::Symlink(target) => {
                tree.add_symlink(id, name, target, xattrs).expect("add_symlink");
            }
        }
    }
}

pub fn write_content(path: &Path, content: &Content) {
    match content {
        Content::Bytes(b) => fs::write(path, b).expect("write blob"),
        Content::Sparse { len, marks } => {
            let f = File::create(path).expect("create blob");
            f.set_len(*len).expect("set_len");
            for (at, b) in marks {
                f.write_all_at(b, *at).expect("write mark");
            }
        }
    }
}

pub fn open_blob(p: &PathBuf) -> std::io::Result<File> {
    File::open(p)
}

/// Writes the tree's image (and data file, when split) into `dir`; returns their paths.
pub fn write(
    tree: &Tree<PathBuf>,
    options: &Options,
    dir: &Path,
    name: &str,
) -> (PathBuf, Option<PathBuf>, WriteStats, u64) {
    let plan: Plan<'_, PathBuf> = tree.plan(options).expect("plan");
    let image = dir.join(format!("{name}.erofs"));
    let out = File::create(&image).expect("create image");
    match options.placement {
        Placement::InImage => {
            let stats = plan.write_image(&out, open_blob).expect("write image");
            assert_eq!(fs::metadata(&image).unwrap().len(), plan.image_len());
            (image, None, stats, plan.root_nid())
        }
        Placement::SeparateFile => {
            plan.write_metadata(&out).expect("write metadata");
            assert_eq!(fs::metadata(&image).unwrap().len(), plan.image_len());
            let data = dir.join(format!("{name}.data"));
            let stats = plan
                .write_data(&File::create(&data).expect("create data"), open_blob)
                .expect("write data");
            assert_eq!(fs::metadata(&data).unwrap().len(), plan.data_len());
            (image, Some(data), stats, plan.root_nid())
        }
    }
}

/// Runs fsck.erofs; with `extract`, extracts into it as well.
pub fn fsck(image: &Path, device: Option<&Path>, extract: Option<&Path>) {
    let mut cmd = Command::new("fsck.erofs");
    if let Some(d) = device {
        cmd.arg(format!("--device={}", d.display()));
    }
    if let Some(x) = extract {
        cmd.arg(format!("--extract={}", x.display()));
    }
    let out = cmd
        .arg(image)
        .output()
        .expect("run fsck.erofs (apt-get install erofs-utils)");
    assert!(
        out.status.success(),
        "fsck.erofs failed on {}:\n{}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a checker found wrong, one line per problem.
#[derive(Default)]
pub struct Findings(pub Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok && self.0.len() < 50 {
            self.0.push(what());
        }
    }

    pub fn assert_none(&self, what: &str) {
        assert!(self.0.is_empty(), "{what}:\n{}", self.0.join("\n"));
    }
}

/// Which metadata a tree on disk is expected to show.
#[derive(Clone, Copy)]
pub struct Expect {
    pub uid: u32,
    pub gid: u32,
    /// A kernel mount: nlink 2 on directories, times of 1 s, readdir order, xattrs.
    pub mount: bool,
}

/// Compares the tree at `path` with the model, recursively.
pub fn compare(path: &Path, node: &Node, expect: Expect) -> Findings {
    let mut f = Findings::default();
    compare_node(path, node, expect, &mut f);
    f
}

fn compare_node(path: &Path, node: &Node, e: Expect, f: &mut Findings) {
    let show = || path.display().to_string();
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(err) => return f.check(false, || format!("{}: {err}", show())),
    };
    f.check(meta.uid() == e.uid && meta.gid() == e.gid, || {
        format!("{}: owner {}:{}", show(), meta.uid(), meta.gid())
    });
    if e.mount {
        for (what, secs, nsecs) in [
            ("mtime", meta.mtime(), meta.mtime_nsec()),
            ("atime", meta.atime(), meta.atime_nsec()),
            ("ctime", meta.ctime(), meta.ctime_nsec()),
        ] {
            f.check(secs == 1 && nsecs == 0, || format!("{}: {what} {secs}.{nsecs}", show()));
        }
    } else {
        f.check(meta.mtime() == 1, || format!("{}: mtime {}", show(), meta.mtime()));
    }
    let mode = meta.mode();
    match &node.kind {
        Kind::Dir(children) => {
            f.check(mode == libc::S_IFDIR | 0o555, || format!("{}: mode {mode:o}", show()));
            if e.mount {
                f.check(meta.nlink() == 2, || format!("{}: nlink {}", show(), meta.nlink()));
            }
            let listed: Vec<Vec<u8>> = match fs::read_dir(path) {
                Ok(rd) => rd
                    .map(|d| d.map(|d| d.file_name().as_bytes().to_vec()))
                    .collect::<Result<_, _>>()
                    .unwrap_or_default(),
                Err(err) => return f.check(false, || format!("{}: readdir {err}", show())),
            };
            let expected: Vec<Vec<u8>> = children.keys().cloned().collect();
            if e.mount {
                f.check(listed == expected, || {
                    format!(
                        "{}: listed {} names, not in byte order or not the model's",
                        show(),
                        listed.len()
                    )
                });
            } else {
                let mut sorted = listed.clone();
                sorted.sort();
                f.check(sorted == expected, || format!("{}: extracted names differ", show()));
            }
            for (name, child) in children {
                compare_node(&path.join(OsStr::from_bytes(name)), child, e, f);
            }
        }
        Kind::File { content, executable } => {
            let perm = if *executable { 0o555 } else { 0o444 };
            f.check(mode == libc::S_IFREG | perm, || format!("{}: mode {mode:o}", show()));
            f.check(meta.nlink() == 1, || format!("{}: nlink {}", show(), meta.nlink()));
            f.check(meta.len() == content.len(), || {
                format!("{}: size {} not {}", show(), meta.len(), content.len())
            });
            compare_content(path, content, f);
        }
        Kind::Symlink(target) => {
            f.check(mode == libc::S_IFLNK | 0o777, || format!("{}: mode {mode:o}", show()));
            f.check(meta.len() == target.len() as u64, || {
                format!("{}: size {}", show(), meta.len())
            });
            let got = fs::read_link(path).map(|t| t.as_os_str().as_bytes().to_vec());
            f.check(got.as_deref().ok() == Some(&target[..]), || {
                format!("{}: target {got:?}", show())
            });
        }
    }
    if e.mount {
        compare_xattrs(path, node, f);
    }
}

fn compare_content(path: &Path, content: &Content, f: &mut Findings) {
    let show = || path.display().to_string();
    match content {
        Content::Bytes(b) => {
            let got = fs::read(path);
            f.check(got.as_deref().ok() == Some(&b[..]), || {
                format!("{}: contents differ", show())
            });
        }
        Content::Sparse { len, marks } => {
            let Ok(file) = File::open(path) else {
                return f.check(false, || format!("{}: open", show()));
            };
            for (at, b) in marks {
                let mut got = vec![0; b.len()];
                let ok = file.read_exact_at(&mut got, *at).is_ok() && &got == b;
                f.check(ok, || format!("{}: mark at {at} differs", show()));
            }
            // A hole reads as zeros, and the file ends where it should.
            let mut got = vec![1u8; 4096];
            let ok = file.read_exact_at(&mut got, len / 2).is_ok() && got.iter().all(|&b| b == 0);
            f.check(ok, || format!("{}: hole at {} is not zeros", show(), len / 2));
            let ok = file.read_at(&mut [0u8; 1], *len).ok() == Some(0);
            f.check(ok, || format!("{}: does not end at {len}", show()));
        }
    }
}

/// The names `llistxattr` gives and, except for `user.` on symlinks (the VFS refuses to
/// read those: `xattr_permission`), the values.
fn compare_xattrs(path: &Path, node: &Node, f: &mut Findings) {
    let show = || path.display().to_string();
    let c = cstr(path);
    let mut buf = vec![0u8; 1 << 20];
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return f.check(false, || {
            format!("{}: llistxattr {}", show(), std::io::Error::last_os_error())
        });
    }
    let mut listed: Vec<Vec<u8>> = buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    listed.sort();
    let mut expected: Vec<Vec<u8>> = node.xattrs.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    f.check(listed == expected, || format!("{}: xattr names {listed:?}", show()));
    let is_symlink = matches!(node.kind, Kind::Symlink(_));
    for (name, value) in &node.xattrs {
        let cname = CString::new(name.clone()).unwrap();
        // SAFETY: as above.
        let n = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if is_symlink && name.starts_with(b"user.") {
            let e = std::io::Error::last_os_error().raw_os_error();
            f.check(n < 0 && e == Some(libc::ENODATA), || {
                format!("{}: user xattr readable on a symlink", show())
            });
            continue;
        }
        let got = (n >= 0).then(|| buf[..n as usize].to_vec());
        f.check(got.as_ref() == Some(value), || {
            format!(
                "{}: xattr {} = {:?}",
                show(),
                String::from_utf8_lossy(name),
                got.map(|g| g.len())
            )
        });
    }
}

/// Builds, writes, fscks (extracting and comparing) and mounts (comparing) one tree.
pub fn round_trip(root: &Node, options: &Options, name: &str) -> WriteStats {
    let scratch = Scratch::new(name);
    let tree = build_tree(root, &scratch.path("blobs"));
    let (image, data, stats, root_nid) = write(&tree, options, &scratch.0, "img");
    assert!(root_nid <= u64::from(u16::MAX));
    let expect = Expect {
        uid: options.uid,
        gid: options.gid,
        mount: true,
    };
    let extracted = scratch.path("extracted");
    fsck(&image, data.as_deref(), Some(&extracted));
    compare(&extracted, root, Expect { mount: false, ..expect }).assert_none("fsck.erofs --extract");
    let mount = Mount::new(&image, &scratch.path("mnt"), data.as_deref()).expect("mount");
    compare(&mount.dir, root, expect).assert_none("kernel mount");
    drop(mount);
    stats
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a program is installed.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}
