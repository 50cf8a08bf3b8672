//! A streaming tar reader (ustar, GNU and pax) that turns an archive into [`Sink`] calls as it
//! reads, in bounded memory: entry contents go out in 64 KiB chunks, and only extended headers
//! (at most 1 MiB each) are buffered.
//!
//! It accepts what source archives contain — files, directories, symlinks, hard links to
//! earlier members (made as copies, see [`crate::tree`]) — and refuses, naming the member,
//! everything a source tree has no business holding (devices, FIFOs) or that could escape the
//! output (absolute paths, `..`). The host checks paths again; this is the first line, and the
//! one that can say which member was wrong.

use crate::error::{Error, Result, show};
use crate::io::{Sink, Source, read_full};
use crate::prelude::*;
use crate::tree::{Tree, failed, normalize};

const BLOCK: usize = 512;
/// How much of an entry's contents is passed to the sink at once.
const CHUNK: usize = 64 * 1024;
/// The largest pax header or GNU long name we buffer.
const MAX_META: u64 = 1 << 20;

fn truncated() -> Error {
    Error::new("truncated tar archive")
}

fn member(name: &[u8], why: &str) -> Error {
    Error::new(format!("tar member `{}`: {why}", show(name)))
}

/// The part of a field before its first NUL.
fn cstr(field: &[u8]) -> &[u8] {
    field.split(|&b| b == 0).next().unwrap_or(field)
}

/// A numeric header field: octal digits (space- or NUL-terminated, leading spaces allowed), or
/// GNU base-256 when the high bit of the first byte is set. `None` if malformed or negative.
fn number(field: &[u8]) -> Option<u64> {
    let (&first, rest) = field.split_first()?;
    if first & 0x80 != 0 {
        if first & 0x40 != 0 {
            return None; // negative
        }
        let mut v = u64::from(first & 0x3f);
        for &b in rest {
            if v > u64::MAX >> 8 {
                return None;
            }
            v = (v << 8) | u64::from(b);
        }
        return Some(v);
    }
    let mut v: u64 = 0;
    for &b in field.iter().skip_while(|&&b| b == b' ') {
        match b {
            b'0'..=b'7' => v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?,
            0 | b' ' => break,
            _ => return None,
        }
    }
    Some(v)
}

/// One 512-byte header block, with accessors for the fields we use.
struct Header([u8; BLOCK]);

impl Header {
    fn field(&self, start: usize, len: usize) -> &[u8] {
        self.0.get(start..start + len).unwrap_or_default()
    }

    fn raw_name(&self) -> &[u8] {
        cstr(self.field(0, 100))
    }

    /// The name, with the ustar prefix when there is one. Only POSIX ustar (`ustar\0`) has a
    /// prefix field; GNU (`ustar  \0`) keeps other things in those bytes.
    fn name(&self) -> Vec<u8> {
        let prefix = cstr(self.field(345, 155));
        let mut name = Vec::new();
        if self.field(257, 6) == b"ustar\0" && !prefix.is_empty() {
            name.extend_from_slice(prefix);
            name.push(b'/');
        }
        name.extend_from_slice(self.raw_name());
        name
    }

    fn linkname(&self) -> Vec<u8> {
        cstr(self.field(157, 100)).to_vec()
    }

    fn typeflag(&self) -> u8 {
        self.0.get(156).copied().unwrap_or(0)
    }

    fn size(&self) -> Result<u64> {
        number(self.field(124, 12)).ok_or_else(|| member(self.raw_name(), "bad size field"))
    }

    fn mode(&self) -> Result<u64> {
        number(self.field(100, 8)).ok_or_else(|| member(self.raw_name(), "bad mode field"))
    }

    /// The header checksum: the sum of its bytes with the checksum field taken as spaces.
    /// Old writers summed signed bytes, so either sum is accepted, as GNU tar does.
    fn check(&self) -> Result<()> {
        let stored = number(self.field(148, 8)).ok_or_else(|| member(self.raw_name(), "bad checksum field"))?;
        let (mut unsigned, mut signed) = (0u64, 0i64);
        for (i, &b) in self.0.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { b };
            unsigned += u64::from(b);
            signed += i64::from(b as i8);
        }
        if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
            Ok(())
        } else {
            Err(member(
                self.raw_name(),
                "header checksum mismatch (corrupt tar archive)",
            ))
        }
    }
}

/// Whether `block` starts a tar archive: a header whose checksum holds, or the all-zero block
/// that ends an empty archive (libarchive reads both as tar).
pub fn is_header(block: &[u8]) -> bool {
    let Ok(block) = <[u8; BLOCK]>::try_from(block) else {
        return false;
    };
    block.iter().all(|&b| b == 0) || Header(block).check().is_ok()
}

/// What extended headers (pax `x`, GNU `L`/`K`) say about the next entry.
#[derive(Default)]
struct Overrides {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    gnu_name: Option<Vec<u8>>,
    gnu_link: Option<Vec<u8>>,
}

/// Parses pax records, `<length> <key>=<value>\n`, keeping the keys we use.
fn parse_pax(mut data: &[u8], next: &mut Overrides) -> core::result::Result<(), &'static str> {
    const BAD: &str = "malformed pax header";
    while let Some(&first) = data.first() {
        if first == 0 {
            break; // NUL padding after the last record
        }
        let sp = data.iter().position(|&b| b == b' ').ok_or(BAD)?;
        let len = core::str::from_utf8(data.get(..sp).ok_or(BAD)?)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or(BAD)?;
        let record = data.get(..len).ok_or(BAD)?;
        let body = record.get(sp + 1..).and_then(|r| r.strip_suffix(b"\n")).ok_or(BAD)?;
        let eq = body.iter().position(|&b| b == b'=').ok_or(BAD)?;
        let (key, value) = (body.get(..eq).ok_or(BAD)?, body.get(eq + 1..).ok_or(BAD)?);
        // An empty value removes the key (POSIX): the header field applies again.
        let value = Some(value.to_vec()).filter(|v| !v.is_empty());
        match key {
            b"path" => next.path = value,
            b"linkpath" => next.linkpath = value,
            b"size" => {
                next.size = match value {
                    None => None,
                    Some(v) => Some(core::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).ok_or(BAD)?),
                }
            }
            k if k.starts_with(b"GNU.sparse.") => return Err("sparse files are not supported"),
            _ => {}
        }
        data = data.get(len..).ok_or(BAD)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
}

struct Extractor<'a, 'k, S, K> {
    src: &'a mut S,
    tree: Tree<'k, K>,
    chunk: Vec<u8>,
}

/// Unpacks the tar archive read from `src` into `sink`. Reads `src` to its end, so that layers
/// below (gzip) check their trailers, and then, if the archive has one top-level entry, makes
/// it the root.
pub fn extract<S: Source, K: Sink>(src: &mut S, sink: &mut K) -> Result<()> {
    let mut x = Extractor {
        src,
        tree: Tree::new(sink),
        chunk: vec![0; CHUNK],
    };
    x.entries()?;
    // After the end marker may come padding to the record size; read it all.
    while x.src.read(&mut x.chunk)? > 0 {}
    x.tree.finish()
}

impl<S: Source, K: Sink> Extractor<'_, '_, S, K> {
    fn entries(&mut self) -> Result<()> {
        let mut next = Overrides::default();
        loop {
            let mut block = [0u8; BLOCK];
            match read_full(self.src, &mut block)? {
                0 => return Ok(()),
                BLOCK => {}
                _ => return Err(truncated()),
            }
            // A zero block ends the archive. A second one normally follows; like libarchive
            // (and so Nix) we stop at the first, and the caller reads what follows away.
            if block.iter().all(|&b| b == 0) {
                return Ok(());
            }
            let h = Header(block);
            h.check()?;
            let size = h.size()?;
            match h.typeflag() {
                b'x' => {
                    let data = self.read_meta(&h, size)?;
                    parse_pax(&data, &mut next).map_err(|why| member(h.raw_name(), why))?;
                }
                b'g' => self.skip(size)?,
                b'L' => next.gnu_name = Some(cstr(&self.read_meta(&h, size)?).to_vec()),
                b'K' => next.gnu_link = Some(cstr(&self.read_meta(&h, size)?).to_vec()),
                typeflag => {
                    let o = core::mem::take(&mut next);
                    let name = o.path.or(o.gnu_name).unwrap_or_else(|| h.name());
                    let link = o.linkpath.or(o.gnu_link).unwrap_or_else(|| h.linkname());
                    let size = o.size.unwrap_or(size);
                    self.entry(&h, typeflag, &name, &link, size)?;
                }
            }
        }
    }

    fn entry(&mut self, h: &Header, typeflag: u8, name: &[u8], link: &[u8], size: u64) -> Result<()> {
        let kind = match typeflag {
            // Old (pre-POSIX) archives mark directories only by a trailing slash.
            b'0' | 0 if name.ends_with(b"/") => Kind::Dir,
            b'0' | 0 | b'7' => Kind::File,
            b'5' => Kind::Dir,
            b'2' => Kind::Symlink,
            b'1' => Kind::HardLink,
            b'3' => return Err(member(name, "character devices are not supported")),
            b'4' => return Err(member(name, "block devices are not supported")),
            b'6' => return Err(member(name, "FIFOs are not supported")),
            t if t.is_ascii_graphic() => {
                return Err(member(name, &format!("unsupported entry type `{}`", char::from(t))));
            }
            t => return Err(member(name, &format!("unsupported entry type {t:#04x}"))),
        };
        let path = normalize(name).map_err(|why| member(name, why))?;
        if path.is_empty() {
            // `./` itself: the output directory, which exists.
            if kind == Kind::Dir && !name.is_empty() {
                return self.skip(size);
            }
            return Err(member(name, "empty name"));
        }
        match kind {
            Kind::Dir => {
                self.tree.dir(&path)?;
                // GNU "dumpdir" directories carry data; nothing we use.
                self.skip(size)
            }
            Kind::Symlink => {
                if link.is_empty() {
                    return Err(member(name, "symlink with an empty target"));
                }
                self.tree.symlink(&path, link)?;
                self.skip(size)
            }
            Kind::HardLink => {
                // pax lets a hard link carry contents of its own, which would replace the
                // earlier member's too; no tar we know writes that.
                if size > 0 {
                    return Err(member(name, "a hard link that carries data is not supported"));
                }
                let target = normalize(link).map_err(|why| {
                    member(
                        name,
                        &format!("a hard link to `{}`, outside the archive: {why}", show(link)),
                    )
                })?;
                if target.is_empty() || target == path {
                    return Err(member(name, "a hard link to nothing, or to itself"));
                }
                self.tree
                    .hard_link(&path, &target)
                    .map_err(|e| e.context(&format!("tar member `{}`", show(name))))
            }
            Kind::File => {
                // The host keeps only the owner's executable bit; setuid and the rest go.
                let executable = h.mode()? & 0o100 != 0;
                self.file(&path, executable, size)
            }
        }
    }

    fn file(&mut self, path: &[u8], executable: bool, size: u64) -> Result<()> {
        let file = self.tree.create(path, executable)?;
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(self.chunk.len());
            let buf = self.chunk.get_mut(..want).unwrap_or_default();
            let n = read_full(self.src, buf)?;
            if n < want {
                return Err(truncated());
            }
            self.tree.sink.write(file, buf).map_err(|_| failed("out_write", path))?;
            left -= want as u64;
        }
        self.tree.sink.close(file).map_err(|_| failed("out_close", path))?;
        self.skip_padding(size)
    }

    /// Reads an extended header's contents (a pax header, a GNU long name).
    fn read_meta(&mut self, h: &Header, size: u64) -> Result<Vec<u8>> {
        if size > MAX_META {
            return Err(member(h.raw_name(), "extended header larger than 1 MiB"));
        }
        let mut data = vec![0; size as usize];
        if read_full(self.src, &mut data)? != data.len() {
            return Err(truncated());
        }
        self.skip_padding(size)?;
        Ok(data)
    }

    /// Skips an entry's contents and their padding.
    fn skip(&mut self, size: u64) -> Result<()> {
        self.discard(size)?;
        self.skip_padding(size)
    }

    fn skip_padding(&mut self, size: u64) -> Result<()> {
        self.discard((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64)
    }

    fn discard(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            let want = usize::try_from(n).unwrap_or(usize::MAX).min(self.chunk.len());
            let buf = self.chunk.get_mut(..want).unwrap_or_default();
            let got = self.src.read(buf)?;
            if got == 0 {
                return Err(truncated());
            }
            n -= got.min(want) as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
