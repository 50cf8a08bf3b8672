//! Writing a commit's tree out of a pack, mostly while the pack is still arriving.
//!
//! git sends a pack's commits first, then its trees, then its blobs. So when a whole blob
//! arrives, the paths it goes at are usually known already, and [`Early`] writes it there and
//! then: the writing overlaps the rest of the download (a server takes seconds to send a
//! pack), and the blob is inflated once, not again from the scratch file afterwards. What
//! cannot be placed that way — deltified trees and blobs, blobs too big to hold, anything under
//! such a tree — is left to [`checkout`], which walks the whole tree at the end, checks every
//! entry, and writes what is not there yet.
//!
//! Both write the tree as `git archive` exports it: `export-ignore` paths left out, files
//! with `ident` or line-ending attributes converted and `export-subst` files expanded, in that
//! order (see [`crate::attributes`], [`crate::convert`], [`crate::subst`]). A directory with a
//! `.gitattributes` is placed only once that file has arrived (git sends it among the first
//! blobs); what arrives before it is written by [`checkout`].

use alloc::rc::Rc;

use crate::attributes::{Attributes, Export};
use crate::convert::{BIG_FILE, Eol, Stats, convert, to_crlf};
use crate::error::{Error, Result, show};
use crate::io::Sink;
use crate::pack::{BLOB, Pack, TREE};
use crate::prelude::*;
use crate::sha1::hex;
use crate::subst::Commit;
use crate::tree::{Dirs, failed};

/// The largest blob written as it arrives; bigger ones are streamed by [`checkout`].
pub const EARLY_BLOB: u64 = 1 << 20;

/// What has been learnt of the tree while the pack arrives, and what has been written.
pub struct Early {
    /// What is known of each object met so far, by id.
    known: Known,
    /// The `.gitattributes` files read so far, by directory.
    pub attrs: Attributes,
    /// The commit being exported, for `export-subst`.
    pub commit: Option<Commit>,
    /// The directories made: each only once something in it is written, since `git
    /// archive` leaves out a directory whose contents are all `export-ignore`d.
    pub dirs: Dirs,
    /// The size past which a blob is written unconverted unless `export-subst` ([`BIG_FILE`];
    /// the tests lower it, as `core.bigFileThreshold` lowers git's).
    pub big_file: u64,
}

impl Default for Early {
    fn default() -> Early {
        Early {
            known: Known::default(),
            attrs: Attributes::default(),
            commit: None,
            dirs: Dirs::default(),
            big_file: BIG_FILE,
        }
    }
}

/// What is known of one object.
#[derive(Default)]
struct Object {
    /// A tree that has arrived whole: its entries.
    tree: Option<Rc<Vec<u8>>>,
    /// A tree whose place is known but which has not arrived: the paths it goes at.
    awaited: Vec<Vec<u8>>,
    /// A blob whose place is known but which has not arrived: where, with which mode, and
    /// what its attributes do to it.
    wanted: Vec<(Vec<u8>, u32, Export)>,
    /// A `.gitattributes` blob not arrived yet: the trees waiting for it, and their paths.
    rules_for: Vec<([u8; 20], Vec<u8>)>,
    /// A blob that has arrived (and gone).
    arrived: bool,
    /// Where it has been written already: a blob's files and symlinks (a tree's or a
    /// submodule's) directories.
    written: Vec<Vec<u8>>,
}

/// Objects by id, in an open-addressed table (ids are uniformly random already, and the
/// standard maps would add a fifth to the module).
#[derive(Default)]
struct Known {
    slots: Vec<Option<([u8; 20], Object)>>,
    len: usize,
}

impl Known {
    /// Where `id` is (`Ok`), or the free slot where it would go (`Err`). The table is never
    /// more than half full, so the probe ends.
    fn find(&self, id: &[u8; 20]) -> Result<usize, usize> {
        let mask = self.slots.len().wrapping_sub(1);
        let mut at = u64::from_le_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]]) as usize & mask;
        loop {
            match self.slots.get(at) {
                Some(Some((key, _))) if key == id => return Ok(at),
                Some(Some(_)) => at = (at + 1) & mask,
                _ => return Err(at),
            }
        }
    }

    fn get(&self, id: &[u8; 20]) -> Option<&Object> {
        if self.slots.is_empty() {
            return None;
        }
        let at = self.find(id).ok()?;
        self.slots.get(at)?.as_ref().map(|(_, o)| o)
    }

    #[allow(clippy::indexing_slicing, reason = "find gives indices masked to the table's size")]
    fn entry(&mut self, id: &[u8; 20]) -> &mut Object {
        if (self.len + 1) * 2 > self.slots.len() {
            let old = core::mem::take(&mut self.slots);
            self.slots.resize_with((old.len() * 2).max(64), || None);
            for (key, object) in old.into_iter().flatten() {
                let (Ok(at) | Err(at)) = self.find(&key);
                self.slots[at] = Some((key, object));
            }
        }
        let (Ok(at) | Err(at)) = self.find(id);
        let slot = &mut self.slots[at];
        if slot.is_none() {
            self.len += 1;
        }
        &mut slot.get_or_insert_with(|| (*id, Object::default())).1
    }
}

impl Early {
    /// The commit's tree is `root`: it goes at the top of the output.
    pub fn root<K: Sink>(&mut self, sink: &mut K, root: &[u8; 20]) -> Result<()> {
        self.place(sink, *root, Vec::new())
    }

    /// A whole object has arrived: a tree (all of it) or a blob (all of it, when it is at
    /// most [`EARLY_BLOB`] bytes).
    pub fn arrived<K: Sink>(&mut self, sink: &mut K, kind: u8, id: &[u8; 20], data: &[u8]) -> Result<()> {
        match kind {
            TREE => {
                let object = self.known.entry(id);
                object.tree = Some(Rc::new(data.to_vec()));
                for path in core::mem::take(&mut object.awaited) {
                    self.place(sink, *id, path)?;
                }
            }
            BLOB => {
                let object = self.known.entry(id);
                object.arrived = true;
                // A `.gitattributes` first: the trees waiting for it can be placed now, and
                // that may want this very blob (the file itself is part of the tree).
                for (tree, dir) in core::mem::take(&mut object.rules_for) {
                    self.attrs.add(&dir, data);
                    self.place(sink, tree, dir)?;
                }
                let wanted = core::mem::take(&mut self.known.entry(id).wanted);
                for (path, mode, export) in wanted {
                    let converted = exported(self.commit.as_ref(), id, data, export, self.big_file)?;
                    let data = converted.as_deref().unwrap_or(data);
                    // In pieces, as everything else is written: the host copies each one.
                    write_blob(sink, &path, mode, data, &mut |sink, file| {
                        write_all(sink, file, &path, data)
                    })?;
                    self.known.entry(id).written.push(path);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Tree `id` goes at `path`: makes its directories and notes where its blobs go, down
    /// through the subtrees that have arrived. An entry [`checkout`] would refuse (a bad name,
    /// an unknown mode) stops the placing of that tree, for `checkout` to report.
    fn place<K: Sink>(&mut self, sink: &mut K, id: [u8; 20], path: Vec<u8>) -> Result<()> {
        let mut work = vec![(id, path)];
        while let Some((id, path)) = work.pop() {
            let object = self.known.entry(&id);
            let Some(tree) = object.tree.clone() else {
                object.awaited.push(path);
                continue;
            };
            // Nothing of a directory is placed before its own `.gitattributes` is read. If
            // that blob came already (it is not kept), [`checkout`] does the directory.
            if !self.attrs.has(&path)
                && let Some(rules) = rules_blob(&tree)
            {
                let object = self.known.entry(&rules);
                if !object.arrived {
                    object.rules_for.push((id, path));
                }
                continue;
            }
            let mut rest = &tree[..];
            while let Some((mode, name, child, used)) = entry(rest) {
                rest = rest.get(used..).unwrap_or_default();
                if bad_name(name) {
                    break;
                }
                let at = join(&path, name);
                if mode >> 12 != 0o04 {
                    // As `git archive`: a directory is made once anything but a directory is
                    // met in it, even something it then leaves out.
                    self.dirs.parents(sink, &at)?;
                }
                let export = self.attrs.export(&at, matches!(mode >> 12, 0o04 | 0o16));
                if export.ignore {
                    continue;
                }
                match mode >> 12 {
                    0o04 => work.push((child, at)),
                    0o16 => self.dirs.make(sink, &at)?,
                    0o10 => self.known.entry(&child).wanted.push((at, mode, export)),
                    0o12 => self.known.entry(&child).wanted.push((at, mode, Export::default())),
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// Whether object `id` has been written at `path` already.
    fn has(&self, id: &[u8; 20], path: &[u8]) -> bool {
        self.known.get(id).is_some_and(|o| o.written.iter().any(|p| p == path))
    }

    fn tree(&self, id: &[u8; 20]) -> Option<Rc<Vec<u8>>> {
        self.known.get(id)?.tree.clone()
    }
}

/// Writes the tree `root` into `sink` as the output's top level: directories, files with their
/// executable bit, symlinks, and an empty directory for each submodule (as `git archive`
/// leaves it), without what `export-ignore` leaves out and with `export-subst` expanded,
/// skipping what `early` wrote already. Depth-first, with the trees being walked on an
/// explicit stack.
pub fn checkout<K: Sink>(pack: &mut Pack, sink: &mut K, root: &[u8; 20], early: &mut Early) -> Result<()> {
    let mut path = Vec::new();
    let mut stack: Vec<(Rc<Vec<u8>>, usize, usize)> = Vec::new();
    let mut next = Some(*root);
    loop {
        if let Some(id) = next.take() {
            let tree = match (pack.lookup(&id), early.tree(&id)) {
                (Some((_, TREE)), Some(tree)) => tree,
                (Some((i, TREE)), None) => pack.load(sink, i)?,
                _ => return Err(missing(&path, &id, "tree")),
            };
            if !early.attrs.has(&path)
                && let Some(rules) = rules_blob(&tree)
            {
                let Some((i, BLOB)) = pack.lookup(&rules) else {
                    return Err(missing(&join(&path, b".gitattributes"), &rules, "blob"));
                };
                let data = pack.load(sink, i)?;
                early.attrs.add(&path, &data);
            }
            stack.push((tree, 0, path.len()));
        }
        let Some((tree, pos, len)) = stack.last_mut() else {
            break;
        };
        let rest = tree.get(*pos..).unwrap_or_default();
        if rest.is_empty() {
            stack.pop();
            continue;
        }
        path.truncate(*len);
        let (mode, name, id, used) =
            entry(rest).ok_or_else(|| Error::new(format!("malformed tree at `{}`", show(&path))))?;
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        if bad_name(name) {
            return Err(Error::new(format!("a tree holds the bad name `{}`", show(&path))));
        }
        *pos += used;
        if mode >> 12 != 0o04 {
            early.dirs.parents(sink, &path)?;
        }
        let export = early.attrs.export(&path, matches!(mode >> 12, 0o04 | 0o16));
        if export.ignore {
            continue;
        }
        match mode >> 12 {
            // A directory, made once something in it is; a submodule's commit, an empty
            // directory.
            0o04 => next = Some(id),
            0o16 => early.dirs.make(sink, &path)?,
            0o10 | 0o12 => {
                let Some((i, BLOB)) = pack.lookup(&id) else {
                    return Err(missing(&path, &id, "blob"));
                };
                if early.has(&id, &path) {
                    continue;
                }
                if mode >> 12 == 0o12 {
                    let target = pack.load(sink, i)?;
                    write_blob(sink, &path, mode, &target, &mut |_, _| Ok(()))?;
                } else {
                    write_late(pack, sink, (i, &id), &path, mode, export, early)?;
                }
            }
            _ => return Err(Error::new(format!("`{}` has the unknown mode {mode:o}", show(&path)))),
        }
    }
    Ok(())
}

/// Writes blob `i` (`id`) as the file at `path`, converted as its attributes `export` say:
/// whole when `ident` or `export-subst` apply, which need all of it; streamed otherwise, once
/// more before that when `text=auto` must first learn whether it is text.
fn write_late<K: Sink>(
    pack: &mut Pack,
    sink: &mut K,
    (i, id): (usize, &[u8; 20]),
    path: &[u8],
    mode: u32,
    export: Export,
    early: &Early,
) -> Result<()> {
    // A delta's size is known only once it is rebuilt; git never makes one of a blob past its
    // big-file threshold, so one is taken to be below it.
    let small = pack.size(i).is_none_or(|size| size <= early.big_file);
    if export.subst || (small && export.ident) {
        let data = pack.load(sink, i)?;
        let converted = exported(early.commit.as_ref(), id, &data, export, early.big_file)?;
        let data = converted.as_deref().unwrap_or(&data);
        return write_blob(sink, path, mode, &[], &mut |sink, file| {
            write_all(sink, file, path, data)
        });
    }
    let mut crlf = small && export.eol == Eol::Crlf;
    if small && export.eol == Eol::Auto {
        let mut stats = Stats::default();
        pack.stream(sink, i, &mut |_, data| {
            stats.add(data);
            Ok(())
        })?;
        crlf = stats.converts(Eol::Auto);
    }
    let (mut cr, mut buf) = (false, Vec::new());
    write_blob(sink, path, mode, &[], &mut |sink, file| {
        pack.stream(sink, i, &mut |sink, data| {
            if !crlf {
                return sink.write(file, data).map_err(|_| failed("out_write", path));
            }
            buf.clear();
            to_crlf(data, &mut cr, &mut buf);
            write_all(sink, file, path, &buf)
        })
    })
}

/// Writes `data` to the open `file` (at `path`), in the pieces the host takes.
fn write_all<K: Sink>(sink: &mut K, file: i32, path: &[u8], data: &[u8]) -> Result<()> {
    for piece in data.chunks(64 * 1024) {
        sink.write(file, piece).map_err(|_| failed("out_write", path))?;
    }
    Ok(())
}

/// Writes one blob at `path`: a symlink to `target` (mode 120000), or a file (executable for
/// mode 100755) whose contents `fill` writes to the open handle it is given.
fn write_blob<K: Sink>(
    sink: &mut K,
    path: &[u8],
    mode: u32,
    target: &[u8],
    fill: &mut dyn FnMut(&mut K, i32) -> Result<()>,
) -> Result<()> {
    if mode >> 12 == 0o12 {
        return sink.symlink(path, target).map_err(|_| failed("out_symlink", path));
    }
    let file = sink
        .create(path, mode & 0o100 != 0)
        .map_err(|_| failed("out_create", path))?;
    fill(sink, file)?;
    sink.close(file).map_err(|_| failed("out_close", path))
}

/// One tree entry: mode, name, id; and its length.
fn entry(data: &[u8]) -> Option<(u32, &[u8], [u8; 20], usize)> {
    let space = data.iter().position(|&b| b == b' ')?;
    let nul = data.iter().position(|&b| b == 0)?;
    let mut mode = 0u32;
    for &b in data.get(..space)? {
        mode = mode.checked_mul(8)?.checked_add(char::from(b).to_digit(8)?)?;
    }
    let name = data.get(space + 1..nul)?;
    let id: [u8; 20] = data.get(nul + 1..nul + 21)?.try_into().ok()?;
    Some((mode, name, id, nul + 21))
}

/// The `.gitattributes` of a tree, if it has one that is a file (git reads no other).
fn rules_blob(tree: &[u8]) -> Option<[u8; 20]> {
    let mut rest = tree;
    while let Some((mode, name, id, used)) = entry(rest) {
        if name == b".gitattributes" && mode >> 12 == 0o10 {
            return Some(id);
        }
        rest = rest.get(used..).unwrap_or_default();
    }
    None
}

/// Blob `id`'s `data` as `git archive` writes it: `ident`, the line endings, then
/// `export-subst` (from `commit`), as `export` says; `None` when it goes out unchanged, as a
/// blob over `big_file` bytes that is not `export-subst` does.
fn exported(
    commit: Option<&Commit>,
    id: &[u8; 20],
    data: &[u8],
    export: Export,
    big_file: u64,
) -> Result<Option<Vec<u8>>> {
    if !export.subst {
        return Ok((data.len() as u64 <= big_file)
            .then(|| convert(data, id, export.ident, export.eol))
            .flatten());
    }
    let commit = commit.ok_or_else(|| Error::new("an export-subst file, but the commit could not be read"))?;
    let converted = convert(data, id, export.ident, export.eol);
    Ok(Some(commit.substitute(converted.as_deref().unwrap_or(data))))
}

/// A name no tree entry may have: it would leave its directory or name none.
fn bad_name(name: &[u8]) -> bool {
    name.is_empty() || name == b"." || name == b".." || name.contains(&b'/')
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

fn missing(path: &[u8], id: &[u8; 20], what: &str) -> Error {
    let place = match path {
        b"" => "the commit's tree".to_owned(),
        _ => format!("for `{}`", show(path)),
    };
    Error::new(format!("the pack holds no {what} {} ({place})", hex(id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::COMMIT;
    use crate::sha1::sha1;
    use crate::testing::{Node, RecordingSink, pack};
    use std::collections::BTreeMap;

    fn id(kind: &str, data: &[u8]) -> [u8; 20] {
        sha1(&[format!("{kind} {}\0", data.len()).as_bytes(), data].concat())
    }

    fn tree(entries: &[(&str, &[u8], [u8; 20])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (mode, name, id) in entries {
            out.extend_from_slice(&[mode.as_bytes(), b" ", name, b"\0", id].concat());
        }
        out
    }

    /// Reads `objects` as a pack the way a fetch does (root known first), then checks out.
    fn fetch(objects: &[(u8, &[u8])], root: &[u8; 20]) -> (Result<()>, RecordingSink, usize) {
        let bytes = pack(objects);
        let mut sink = RecordingSink::default();
        let mut early = Early::default();
        early.root(&mut sink, root).unwrap();
        let read = Pack::read(&mut &bytes[..], &mut sink, &mut |sink, kind, id, data| {
            if kind == COMMIT {
                Ok(())
            } else {
                early.arrived(sink, kind, id, data)
            }
        });
        let mut pack = read.unwrap();
        let written_early = sink.calls.len();
        let result = checkout(&mut pack, &mut sink, root, &mut early);
        (result, sink, written_early)
    }

    #[test]
    fn blobs_are_written_as_they_arrive_and_the_rest_at_the_end() {
        let (x, y, link) = (b"x data".as_slice(), b"y data".as_slice(), b"../a".as_slice());
        let sub = tree(&[("100755", b"run", id("blob", y)), ("120000", b"up", id("blob", link))]);
        let root = tree(&[("100644", b"a", id("blob", x)), ("40000", b"d", id("tree", &sub))]);
        let root_id = id("tree", &root);

        // Trees first, as git sends them: everything is written while the pack arrives.
        let (r, sink, early) = fetch(&[(2, &root), (2, &sub), (3, x), (3, y), (3, link)], &root_id);
        r.unwrap();
        assert_eq!(early, sink.calls.len(), "checkout wrote more: {:?}", sink.calls);
        assert_eq!(sink.file("a"), (x, false));
        assert_eq!(sink.file("d/run"), (y, true));
        assert!(
            sink.calls.contains(&"symlink d/up -> ../a".to_owned()),
            "{:?}",
            sink.calls
        );

        // Blobs first: nothing is known of them as they pass, and checkout writes them.
        let (r, late, early) = fetch(&[(3, x), (3, y), (3, link), (2, &sub), (2, &root)], &root_id);
        r.unwrap();
        assert_eq!(early, 1, "only the directory: {:?}", late.calls);
        assert_eq!(late.tree, sink.tree);
    }

    /// Past `core.bigFileThreshold` `git archive` writes a blob as it is, unless it is
    /// `export-subst`; so does the checkout, its threshold lowered as git's is, whether a blob
    /// is written early or at the end.
    #[test]
    fn big_blobs_go_out_unconverted_unless_export_subst() {
        use crate::testing::{TempDir, git, git_archive_tree_with};
        let tmp = TempDir::new("big-file");
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join(".git/info/attributes"), "* -text -ident\n").unwrap();
        let lines = "$Id$ $Format:%h$\n".repeat(20);
        for (name, data) in [
            (
                ".gitattributes",
                "* eol=crlf ident\nplain.* -ident\nsubst.* export-subst\n",
            ),
            ("small", "$Id$\nsmall\n"),
            ("big", &lines),
            ("plain.small", "$Id$\nsmall\n"),
            ("plain.big", &lines),
            ("subst.small", "$Id$ $Format:%h$\n"),
            ("subst.big", &lines),
        ] {
            std::fs::write(repo.join(name), data).unwrap();
        }
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "big"]);
        std::fs::remove_file(repo.join(".git/info/attributes")).unwrap();
        let text = |args: &[&str]| String::from_utf8(git(&repo, args)).unwrap();
        let ids: Vec<String> = text(&["rev-list", "--objects", "--no-object-names", "-n1", "HEAD"])
            .lines()
            .map(str::to_owned)
            .collect();
        let objects: Vec<(u8, Vec<u8>)> = ids
            .iter()
            .map(|id| {
                let kind = text(&["cat-file", "-t", id]);
                let number = match kind.trim() {
                    "commit" => COMMIT,
                    "tree" => TREE,
                    _ => BLOB,
                };
                (number, git(&repo, &["cat-file", kind.trim(), id]))
            })
            .collect();
        let commit_id = crate::sha1::parse_hex(ids[0].as_bytes()).unwrap();
        let root = crate::sha1::parse_hex(text(&["rev-parse", "HEAD^{tree}"]).trim().as_bytes()).unwrap();
        let want = git_archive_tree_with(&repo, "HEAD", &["-c", "core.bigFileThreshold=100"]);
        assert!(matches!(&want["big"], Node::File { data, .. } if data == lines.as_bytes()));
        assert!(matches!(&want["plain.big"], Node::File { data, .. } if data == lines.as_bytes()));
        assert!(matches!(&want["plain.small"], Node::File { data, .. } if data == b"$Id$\r\nsmall\r\n"));
        assert!(matches!(&want["small"], Node::File { data, .. } if data.ends_with(b" $\r\nsmall\r\n")));
        // Trees first (blobs written as they come), then blobs first (all written at the end).
        let mut blobs_first = objects.clone();
        blobs_first.sort_by_key(|(kind, _)| core::cmp::Reverse(*kind));
        for order in [objects, blobs_first] {
            let order: Vec<(u8, &[u8])> = order.iter().map(|(k, d)| (*k, &d[..])).collect();
            let bytes = pack(&order);
            let mut sink = RecordingSink::default();
            let mut early = Early {
                big_file: 100,
                commit: Commit::parse(&commit_id, order.iter().find(|(k, _)| *k == COMMIT).unwrap().1),
                ..Early::default()
            };
            early.root(&mut sink, &root).unwrap();
            let mut pack = Pack::read(&mut &bytes[..], &mut sink, &mut |sink, kind, id, data| {
                if kind == COMMIT {
                    Ok(())
                } else {
                    early.arrived(sink, kind, id, data)
                }
            })
            .unwrap();
            checkout(&mut pack, &mut sink, &root, &mut early).unwrap();
            let got: BTreeMap<String, Node> = sink.tree.clone();
            assert!(got == want, "{:?}", got.keys());
        }
    }

    #[test]
    fn what_early_skips_checkout_refuses() {
        let x = b"x".as_slice();
        let root = tree(&[("100644", b"ok", id("blob", x)), ("100644", b"..", id("blob", x))]);
        let (r, sink, _) = fetch(&[(2, &root), (3, x)], &id("tree", &root));
        assert_eq!(r.unwrap_err().message(), "a tree holds the bad name `..`");
        assert_eq!(sink.file("ok"), (x, false));
        assert!(!sink.tree.contains_key(".."));
    }
}
