//! Which archive a download is, told by its first bytes — never by its name, which often says
//! nothing (`…/download?id=3`) or the wrong thing — and its unpacking: tar, plain or compressed
//! with gzip, bzip2, xz or zstd, and zip. That is what libarchive (so Nix) detects the same way,
//! less the rarities. Anything else is refused with the formats cab reads and the bytes it saw.

use crate::bzip2::Bz2Decoder;
use crate::error::{Error, Result};
use crate::gzip::GzDecoder;
use crate::io::{Sink, Source, read_full};
use crate::prelude::*;
use crate::xz::XzReader;
use crate::zstd::ZstdReader;
use crate::{tar, zip};

/// The formats cab unpacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// gzip (RFC 1952), around a tar archive.
    Gzip,
    /// bzip2, around a tar archive.
    Bzip2,
    /// xz, around a tar archive.
    Xz,
    /// zstd, around a tar archive.
    Zstd,
    /// A zip archive.
    Zip,
    /// A tar archive.
    Tar,
    /// No bytes at all: an empty tree, as libarchive reads an empty file.
    Empty,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Gzip => "gzip",
            Format::Bzip2 => "bzip2",
            Format::Xz => "xz",
            Format::Zstd => "zstd",
            Format::Zip => "zip",
            Format::Tar => "tar",
            Format::Empty => "empty",
        }
    }
}

/// What cab reads, for messages.
pub const FORMATS: &str = "tar (plain, or compressed with gzip, bzip2, xz or zstd) and zip";

/// Formats cab does not read, named so that the message can say what the download is.
const OTHERS: &[(&[u8], &str)] = &[
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x04\x22\x4d\x18", "lz4 data"),
    (b"LZIP", "lzip data"),
    (b"\x1f\x9d", "compress (.Z) data"),
    (b"\x5d\x00\x00", "LZMA (.lzma) data"),
    (b"!<arch>\n", "an ar archive (a .deb?)"),
    (b"\xed\xab\xee\xdb", "an RPM package"),
    (b"<", "an HTML or XML page"),
    (b"{", "JSON"),
];

/// The format of data starting with `head` (up to 512 bytes; fewer only if that is all).
pub fn sniff(head: &[u8]) -> Option<Format> {
    let zstd_skippable = head.get(1..4) == Some(b"\x2a\x4d\x18") && head.first().is_some_and(|b| b & 0xf0 == 0x50);
    if head.is_empty() {
        Some(Format::Empty)
    } else if head.starts_with(b"\x1f\x8b") {
        Some(Format::Gzip)
    } else if head.starts_with(b"BZh") && head.get(3).is_some_and(|b| (b'1'..=b'9').contains(b)) {
        Some(Format::Bzip2)
    } else if head.starts_with(b"\xfd7zXZ\x00") {
        Some(Format::Xz)
    } else if head.starts_with(b"\x28\xb5\x2f\xfd") || zstd_skippable {
        Some(Format::Zstd)
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") || head.starts_with(b"PK\x07\x08") {
        Some(Format::Zip)
    } else if tar::is_header(head) {
        Some(Format::Tar)
    } else {
        None
    }
}

/// The first bytes of a source, read ahead to tell its format, then handed out again.
struct Peeked<S> {
    head: Vec<u8>,
    at: usize,
    src: S,
}

impl<S: Source> Peeked<S> {
    fn new(mut src: S) -> Result<Peeked<S>> {
        let mut head = vec![0u8; 512];
        let n = read_full(&mut src, &mut head)?;
        head.truncate(n);
        Ok(Peeked { head, at: 0, src })
    }
}

impl<S: Source> Source for Peeked<S> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        if let Some(rest) = self.head.get(self.at..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.len());
            buf.get_mut(..n)
                .unwrap_or_default()
                .copy_from_slice(rest.get(..n).unwrap_or_default());
            self.at += n;
            return Ok(n);
        }
        self.src.read(buf)
    }
}

/// The first bytes, as a person can read them: hex, then the printable ones.
fn describe(head: &[u8]) -> String {
    let head = head.get(..16).unwrap_or(head);
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
    let text: String = head
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect();
    format!("{} (\"{text}\")", hex.join(" "))
}

fn unknown(head: &[u8], inside: Option<Format>) -> Error {
    let what = OTHERS
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, name)| format!(", which looks like {name}"))
        .unwrap_or_default();
    let place = match inside {
        Some(outer) => format!(
            "{}-compressed data, but what it holds is not a tar archive",
            outer.name()
        ),
        None => "not an archive cab can unpack".into(),
    };
    Error::new(format!(
        "{place}: cab reads {FORMATS}, told apart by their first bytes; these are {}{what}",
        describe(head)
    ))
}

/// Unpacks the archive read from `src` into `sink`, whatever its format; returns it.
pub fn unpack<S: Source, K: Sink>(src: &mut S, sink: &mut K) -> Result<Format> {
    let mut peeked = Peeked::new(src)?;
    let format = sniff(&peeked.head).ok_or_else(|| unknown(&peeked.head, None))?;
    // Every tar goes through one `tar_inside`, taking its source as `dyn`: the tar reader made
    // for each decoder was a copy each, 11 KiB of the module.
    match format {
        Format::Gzip => tar_inside(&mut GzDecoder::new(peeked), format, sink)?,
        Format::Bzip2 => tar_inside(&mut Bz2Decoder::new(peeked), format, sink)?,
        Format::Xz => tar_inside(&mut XzReader::new(peeked), format, sink)?,
        Format::Zstd => tar_inside(&mut ZstdReader::new(peeked), format, sink)?,
        Format::Zip => zip::extract(&mut peeked, sink)?,
        Format::Tar => tar_inside(&mut peeked, format, sink)?,
        Format::Empty => {}
    }
    Ok(format)
}

/// Unpacks the tar archive that `decoded` must hold.
fn tar_inside<K: Sink>(decoded: &mut dyn Source, outer: Format, sink: &mut K) -> Result<()> {
    let mut peeked = Peeked::new(decoded)?;
    match sniff(&peeked.head) {
        Some(Format::Tar | Format::Empty) => tar::extract(&mut peeked, sink),
        _ => Err(unknown(&peeked.head, Some(outer))),
    }
}

#[cfg(test)]
mod tests;
