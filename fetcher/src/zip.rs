//! Zip archives (PKWARE's APPNOTE), as libarchive — and so Nix — reads them from a file: by the
//! central directory at the end, which alone holds each member's Unix mode (the executable bit,
//! symlinks). A download arrives front first, so it is spooled to the run's scratch file and
//! read back from there; each member's data is then decoded straight into the output, its
//! CRC-32 and length checked. Zip64 (more than 65,535 members or 4 GiB) is read too.
//!
//! Modes follow libarchive: a member made on Unix (the high byte of "version made by" is 3)
//! has its `st_mode` in the high half of the external attributes; one made on MS-DOS or Windows
//! is a directory or a plain, never executable, file; anything else has no mode. A name ending
//! in `/` is a directory whatever its mode. Members are stored, deflated or bzip2-compressed
//! (what `zip`, `git archive`, GitHub and Python's `zipfile` write); encrypted ones are refused.
//!
//! Names are taken as their bytes, flagged UTF-8 or not: a name without the flag is CP437 by
//! the letter of the format, but libarchive, so Nix, keeps its bytes (and so a pin Nix made of
//! such an archive holds), and those bytes are as often UTF-8 from a tool that did not say so.
//! An Info-ZIP Unicode Path extra field (0x7075, version 1) in the central directory replaces
//! the name with its UTF-8 one when its CRC-32 is the name's, so it was written for this very
//! name, as `unzip` reads it: the first such field only, and not an empty one.

use core::cell::RefCell;

use crate::bzip2::Bz2Decoder;
use crate::crc32::{Crc32, Slicing8};
use crate::error::{Error, Result, show};
use crate::inflate::Inflater;
use crate::io::{Input, Refused, Sink, Source};
use crate::prelude::*;
use crate::tree::{Tree, failed, normalize};

/// Pieces the download is spooled in, and read back in.
const PIECE: usize = 32 * 1024;
/// The end-of-central-directory record: 22 bytes and a comment of at most 64 KiB.
const EOCD_MAX: u64 = 22 + 0xffff;
/// The largest symlink target read (Linux's PATH_MAX is 4 KiB).
const MAX_TARGET: u64 = 64 * 1024;

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

fn corrupt(why: &str) -> Error {
    Error::new(format!("corrupt zip archive: {why}"))
}

fn member(name: &[u8], why: &str) -> Error {
    Error::new(format!("zip member `{}`: {why}", show(name)))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut x = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        x.copy_from_slice(s);
    }
    u16::from_le_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_le_bytes(x)
}

/// The sink, shared by the tree being written and the member data being read back from the
/// scratch file; each use borrows it for one call.
struct Shared<'a, K>(&'a RefCell<&'a mut K>);

impl<K: Sink> Shared<'_, K> {
    fn with<T>(&self, f: impl FnOnce(&mut K) -> Result<T, Refused>) -> Result<T, Refused> {
        let mut sink = self.0.try_borrow_mut().map_err(|_| Refused)?;
        f(&mut sink)
    }
}

impl<K: Sink> Sink for Shared<'_, K> {
    fn mkdir(&mut self, path: &[u8]) -> Result<(), Refused> {
        self.with(|s| s.mkdir(path))
    }
    fn create(&mut self, path: &[u8], executable: bool) -> Result<i32, Refused> {
        self.with(|s| s.create(path, executable))
    }
    fn write(&mut self, file: i32, data: &[u8]) -> Result<(), Refused> {
        self.with(|s| s.write(file, data))
    }
    fn close(&mut self, file: i32) -> Result<(), Refused> {
        self.with(|s| s.close(file))
    }
    fn symlink(&mut self, path: &[u8], target: &[u8]) -> Result<(), Refused> {
        self.with(|s| s.symlink(path, target))
    }
    fn copy(&mut self, from: &[u8], path: &[u8]) -> Result<(), Refused> {
        self.with(|s| s.copy(from, path))
    }
    fn set_root(&mut self, path: &[u8]) -> Result<(), Refused> {
        self.with(|s| s.set_root(path))
    }
    fn scratch_append(&mut self, data: &[u8]) -> Result<u64, Refused> {
        self.with(|s| s.scratch_append(data))
    }
    fn scratch_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Refused> {
        self.with(|s| s.scratch_read(offset, buf))
    }
}

/// The spooled archive: `len` bytes at `base` in the scratch file.
struct Spool<'a, K> {
    sink: Shared<'a, K>,
    base: u64,
    len: u64,
}

impl<K: Sink> Spool<'_, K> {
    /// Reads exactly `buf.len()` bytes at `at` (an offset in the archive).
    fn read_at(&mut self, at: u64, buf: &mut [u8]) -> Result<()> {
        if at.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(corrupt("a record points past the end of the archive"));
        }
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..) {
            if rest.is_empty() {
                break;
            }
            let n = self
                .sink
                .scratch_read(self.base + at + done as u64, rest)
                .map_err(|_| Error::new("scratch_read failed"))?;
            if n == 0 {
                return Err(Error::new("scratch_read ended early"));
            }
            done += n.min(rest.len());
        }
        Ok(())
    }
}

/// A member's data, read from the spool: `left` bytes from `at`.
struct Region<'s, 'a, K> {
    spool: &'s RefCell<Spool<'a, K>>,
    at: u64,
    left: u64,
}

impl<K: Sink> Source for Region<'_, '_, K> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.len());
        let dest = buf.get_mut(..n).unwrap_or_default();
        self.spool
            .try_borrow_mut()
            .map_err(|_| Error::new("the spool is busy"))?
            .read_at(self.at, dest)?;
        self.at += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Raw DEFLATE data as a [`Source`].
struct Deflated<S> {
    input: Input<S>,
    inflater: Inflater,
    pending: core::ops::Range<usize>,
    done: bool,
}

impl<S: Source> Source for Deflated<S> {
    fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(out.len());
                let start = self.pending.start;
                let src = self.inflater.output(start..start + n);
                out.get_mut(..src.len()).unwrap_or_default().copy_from_slice(src);
                self.pending.start += n;
                return Ok(n);
            }
            if self.done || out.is_empty() {
                return Ok(0);
            }
            (self.done, self.pending) = self.inflater.step_from(
                &mut self.input,
                || Error::new("truncated deflate data"),
                || Error::new("invalid deflate data"),
            )?;
        }
    }
}

/// One central-directory entry, with what was found of it.
struct Entry {
    name: Vec<u8>,
    flags: u16,
    method: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    offset: u64,
    kind: Kind,
    executable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

/// What libarchive makes of a member's mode: its kind and whether it is executable.
fn kind_of(name: &[u8], made_by: u16, external: u32) -> Option<(Kind, bool)> {
    let mode = match made_by >> 8 {
        3 => external >> 16,
        0 if external & 0x10 != 0 => S_IFDIR | 0o775,
        0 => S_IFREG | 0o664,
        _ => 0,
    };
    if name.ends_with(b"/") {
        return Some((Kind::Dir, false));
    }
    match mode & S_IFMT {
        S_IFDIR => Some((Kind::Dir, false)),
        S_IFLNK => Some((Kind::Symlink, false)),
        0 | S_IFREG => Some((Kind::File, mode & 0o100 != 0)),
        _ => None,
    }
}

fn method_name(method: u16) -> &'static str {
    match method {
        1 => "shrink",
        6 => "implode",
        9 => "deflate64",
        14 => "LZMA",
        93 => "zstd",
        95 => "xz",
        98 => "PPMd",
        99 => "AES encryption",
        _ => "an unknown method",
    }
}

/// Unpacks the zip archive read from `src` into `sink`, through the scratch file.
pub fn extract<S: Source, K: Sink>(src: &mut S, sink: &mut K) -> Result<()> {
    let cell = RefCell::new(sink);
    let mut writer = Shared(&cell);
    // Spool the download.
    let mut piece = vec![0u8; PIECE];
    let (mut base, mut len) = (None, 0u64);
    loop {
        let n = src.read(&mut piece)?;
        if n == 0 {
            break;
        }
        let data = piece.get(..n).unwrap_or_default();
        let at = writer
            .scratch_append(data)
            .map_err(|_| Error::new("scratch_append failed"))?;
        if base.is_none() {
            base = Some(at);
        }
        len += n as u64;
    }
    let spool = RefCell::new(Spool {
        sink: Shared(&cell),
        base: base.unwrap_or(0),
        len,
    });
    let (mut at, count, end) = directory(&mut spool.borrow_mut())?;
    let mut tree = Tree::new(&mut writer);
    for _ in 0..count {
        if at >= end {
            return Err(corrupt("the central directory ends before its last entry"));
        }
        let (entry, next) = read_entry(&mut spool.borrow_mut(), at)?;
        at = next;
        unpack(&spool, &mut tree, &entry).map_err(|e| {
            if e.mentions("zip member") {
                e
            } else {
                e.context(&format!("zip member `{}`", show(&entry.name)))
            }
        })?;
    }
    tree.finish()
}

/// Finds the central directory: its offset in the archive, its entry count and its end.
fn directory<K: Sink>(spool: &mut Spool<'_, K>) -> Result<(u64, u64, u64)> {
    let tail_len = spool.len.min(EOCD_MAX);
    let mut tail = vec![0u8; tail_len as usize];
    let tail_at = spool.len - tail_len;
    spool.read_at(tail_at, &mut tail)?;
    // The last signature that leaves room for the record and its comment.
    let eocd = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| {
            tail.get(i..i + 4) == Some(b"PK\x05\x06") && i + 22 + usize::from(u16_at(&tail, i + 20)) <= tail.len()
        })
        .ok_or_else(|| corrupt("no end of central directory record (not a whole zip archive?)"))?;
    let rec = tail.get(eocd..).unwrap_or_default();
    let eocd_at = tail_at + eocd as u64;
    let (mut count, mut size, mut offset) = (
        u64::from(u16_at(rec, 10)),
        u64::from(u32_at(rec, 12)),
        u64::from(u32_at(rec, 16)),
    );
    if u16_at(rec, 4) != 0 || u16_at(rec, 6) != 0 {
        return Err(corrupt("a split (multi-disk) archive, which cab does not read"));
    }
    let mut directory_end = eocd_at;
    // Zip64: a locator just before the record points at the zip64 record, whose fields win.
    if eocd_at >= 20 {
        let mut locator = [0u8; 20];
        spool.read_at(eocd_at - 20, &mut locator)?;
        if locator.starts_with(b"PK\x06\x07") {
            let at = u64_at(&locator, 8);
            let mut record = [0u8; 56];
            spool.read_at(at, &mut record)?;
            if !record.starts_with(b"PK\x06\x06") {
                return Err(corrupt("the zip64 locator points at no zip64 record"));
            }
            count = u64_at(&record, 32);
            size = u64_at(&record, 40);
            offset = u64_at(&record, 48);
            directory_end = at;
        }
    }
    // Data before the archive (a self-extractor's stub) moves every offset by as much.
    let shift = directory_end
        .checked_sub(size)
        .and_then(|start| start.checked_sub(offset))
        .ok_or_else(|| corrupt("the central directory does not fit before its end record"))?;
    spool.base += shift;
    spool.len -= shift;
    Ok((offset, count, offset + size))
}

/// Reads the central-directory entry at `at`; returns it and where the next one starts.
fn read_entry<K: Sink>(spool: &mut Spool<'_, K>, at: u64) -> Result<(Entry, u64)> {
    let mut fixed = [0u8; 46];
    spool.read_at(at, &mut fixed)?;
    if !fixed.starts_with(b"PK\x01\x02") {
        return Err(corrupt("a central directory entry without its signature"));
    }
    let (name_len, extra_len, comment_len) = (
        usize::from(u16_at(&fixed, 28)),
        usize::from(u16_at(&fixed, 30)),
        usize::from(u16_at(&fixed, 32)),
    );
    let mut var = vec![0u8; name_len + extra_len];
    spool.read_at(at + 46, &mut var)?;
    let (raw_name, mut extra) = var.split_at(name_len);
    let mut unicode = None;
    let mut size = u64::from(u32_at(&fixed, 24));
    let mut compressed = u64::from(u32_at(&fixed, 20));
    let mut offset = u64::from(u32_at(&fixed, 42));
    // The zip64 extra field holds, in this order, whichever of the three are all ones here.
    while extra.len() >= 4 {
        let (id, len) = (u16_at(extra, 0), usize::from(u16_at(extra, 2)));
        let data = extra.get(4..4 + len).unwrap_or_default();
        if id == 1 {
            let mut fields = data.chunks_exact(8).map(|c| u64_at(c, 0));
            for value in [&mut size, &mut compressed, &mut offset] {
                if *value == u64::from(u32::MAX) {
                    *value = fields.next().ok_or_else(|| corrupt("a short zip64 extra field"))?;
                }
            }
        }
        // unzip reads the first Unicode Path field only, whatever it says.
        if id == 0x7075 && unicode.is_none() {
            unicode = Some(data);
        }
        extra = extra.get(4 + len..).unwrap_or_default();
    }
    let name = unicode
        .and_then(|field| unicode_path(raw_name, field))
        .unwrap_or(raw_name);
    let (kind, executable) = kind_of(name, u16_at(&fixed, 4), u32_at(&fixed, 38))
        .ok_or_else(|| member(name, "a device, FIFO or socket, which a source tree has no use for"))?;
    let entry = Entry {
        name: name.to_vec(),
        flags: u16_at(&fixed, 8),
        method: u16_at(&fixed, 10),
        crc: u32_at(&fixed, 16),
        compressed,
        size,
        offset,
        kind,
        executable,
    };
    Ok((entry, at + 46 + (name_len + extra_len + comment_len) as u64))
}

/// The name an Info-ZIP Unicode Path extra field's `data` gives the member named `raw`: its
/// UTF-8 name, if the field is version 1, names something, and was made from `raw` (the CRC-32
/// it holds is `raw`'s; a tool that renamed the member without updating the field leaves the
/// old one).
fn unicode_path<'a>(raw: &[u8], data: &'a [u8]) -> Option<&'a [u8]> {
    let (&version, rest) = data.split_first()?;
    let utf8 = rest.get(4..).filter(|u| !u.is_empty())?;
    let mut crc = Crc32::new();
    crc.update(raw);
    (version == 1 && u32_at(rest, 0) == crc.value()).then_some(utf8)
}

/// Makes one member in the tree.
fn unpack<'s, 'a, K: Sink, T: Sink>(spool: &'s RefCell<Spool<'a, K>>, tree: &mut Tree<'_, T>, e: &Entry) -> Result<()> {
    let path = normalize(&e.name).map_err(|why| member(&e.name, why))?;
    if path.is_empty() {
        return if e.kind == Kind::Dir {
            Ok(())
        } else {
            Err(member(&e.name, "empty name"))
        };
    }
    if e.kind == Kind::Dir {
        return tree.dir(&path);
    }
    if e.flags & 0x41 != 0 {
        return Err(member(&e.name, "encrypted members are not supported"));
    }
    // The member's data starts after its local header, whose name and extra field may differ
    // in length from the central directory's.
    let mut local = [0u8; 30];
    spool
        .try_borrow_mut()
        .map_err(|_| Error::new("the spool is busy"))?
        .read_at(e.offset, &mut local)?;
    if !local.starts_with(b"PK\x03\x04") {
        return Err(corrupt("a member's local header is missing"));
    }
    let skip = 30 + u64::from(u16_at(&local, 26)) + u64::from(u16_at(&local, 28));
    let region = Region {
        spool,
        at: e.offset + skip,
        left: e.compressed,
    };
    let mut data: Box<dyn Source + '_> = match e.method {
        0 => Box::new(region),
        8 => Box::new(Deflated {
            input: Input::new(region, PIECE),
            inflater: Inflater::new(false),
            pending: 0..0,
            done: false,
        }),
        12 => Box::new(Bz2Decoder::new(region)),
        m => {
            return Err(member(
                &e.name,
                &format!(
                    "compressed with {} (method {m}); cab reads stored, deflated and bzip2 members",
                    method_name(m)
                ),
            ));
        }
    };
    if e.kind == Kind::Symlink {
        let mut target = Vec::new();
        copy_checked(data.as_mut(), e, &mut |chunk| {
            target.extend_from_slice(chunk);
            if target.len() as u64 > MAX_TARGET {
                return Err(member(&e.name, "a symlink target longer than 64 KiB"));
            }
            Ok(())
        })?;
        if target.is_empty() {
            return Err(member(&e.name, "symlink with an empty target"));
        }
        return tree.symlink(&path, &target);
    }
    let file = tree.create(&path, e.executable)?;
    copy_checked(data.as_mut(), e, &mut |chunk| {
        tree.sink.write(file, chunk).map_err(|_| failed("out_write", &path))
    })?;
    tree.sink.close(file).map_err(|_| failed("out_close", &path))
}

/// Passes a member's data to `to` in pieces, checking its length (never reading more than the
/// directory says) and its CRC-32.
fn copy_checked(data: &mut dyn Source, e: &Entry, to: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut check = Checked {
        crc: Crc32::new(),
        tables: Slicing8::default(),
        size: 0,
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = data.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let got = buf.get(..n).unwrap_or_default();
        check.see(got);
        if check.size > e.size {
            break;
        }
        to(got)?;
    }
    check.verify(e)
}

/// A member's CRC-32 and length, as its data is read.
struct Checked {
    crc: Crc32,
    tables: Slicing8,
    size: u64,
}

impl Checked {
    fn see(&mut self, data: &[u8]) {
        self.crc.update_fast(&self.tables, data);
        self.size += data.len() as u64;
    }

    fn verify(&self, e: &Entry) -> Result<()> {
        if self.size != e.size {
            return Err(member(
                &e.name,
                &format!("{} bytes of data where the directory says {}", self.size, e.size),
            ));
        }
        if self.crc.value() != e.crc {
            return Err(member(
                &e.name,
                &format!(
                    "CRC-32 mismatch: the data's is {:08x}, the directory says {:08x}",
                    self.crc.value(),
                    e.crc
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
