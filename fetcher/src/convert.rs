//! What `git archive` does to a file's bytes on the way out besides `export-subst`: it runs
//! them through git's checkout conversion (`convert_to_working_tree`), which applies `ident`,
//! then the line-ending attributes. Filters need a driver in the exporting repository's
//! configuration, which a server does not have, so they do nothing.
//!
//! The line endings are what a server's defaults make of the attributes (`core.autocrlf`
//! false, `core.eol` native, LF on the Linux hosts forges run on): a file becomes CRLF only
//! when its attributes say `eol=crlf` (or the old `crlf` with `eol=crlf`) and not `-text` or
//! `binary`. `text`, `text=auto`, `eol=lf` and `crlf=input` alone export the blob as it is.
//! With `text=auto eol=crlf` git first decides whether the blob is text: not if it holds a NUL,
//! a CR that starts no CRLF, any CRLF already, or more than one byte in 128 that is neither
//! printable nor a usual control character.
//!
//! Blobs larger than git's `core.bigFileThreshold` (512 MiB) are streamed out unconverted,
//! unless they are `export-subst`. Checked byte for byte against `git archive` in the tests.

use crate::prelude::*;
use crate::sha1::hex;

/// Where `git archive` stops converting: blobs over this many bytes that are not
/// `export-subst` go out as they are (git's default `core.bigFileThreshold`).
pub const BIG_FILE: u64 = 512 << 20;

/// What happens to a file's line endings on the way out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Eol {
    /// As they are.
    #[default]
    Keep,
    /// Every LF that no CR precedes becomes CRLF (`eol=crlf`).
    Crlf,
    /// The same, if git takes the blob for text and it has no CR yet (`text=auto eol=crlf`).
    Auto,
}

/// What git counts of a blob's bytes to tell text from binary (its `text_stat`), gathered
/// piece by piece so a large blob need not be held whole.
#[derive(Debug, Default)]
pub struct Stats {
    lone_lf: u64,
    lone_cr: u64,
    crlf: u64,
    nul: u64,
    printable: u64,
    nonprintable: u64,
    /// The last byte seen was a CR: the next decides what it was.
    cr: bool,
    /// The last byte seen, for git's allowance of a final Ctrl-Z.
    last: u8,
}

impl Stats {
    /// Counts the next piece of the blob.
    pub fn add(&mut self, data: &[u8]) {
        for &b in data {
            if core::mem::take(&mut self.cr) {
                if b == b'\n' {
                    self.crlf += 1;
                    self.last = b;
                    continue;
                }
                self.lone_cr += 1;
            }
            match b {
                b'\r' => self.cr = true,
                b'\n' => self.lone_lf += 1,
                // Backspace, tab, escape and form feed count as printable.
                8 | 9 | 12 | 27 => self.printable += 1,
                0 => {
                    self.nul += 1;
                    self.nonprintable += 1;
                }
                1..=31 | 127 => self.nonprintable += 1,
                _ => self.printable += 1,
            }
            self.last = b;
        }
    }

    /// Whether, with every byte counted, `eol` turns the blob's LFs into CRLFs.
    pub fn converts(&self, eol: Eol) -> bool {
        // A file ending in Ctrl-Z (an old DOS end-of-file mark) is not binary for it.
        let nonprintable = self.nonprintable.saturating_sub(u64::from(self.last == 0x1a));
        let text = self.lone_cr + u64::from(self.cr) == 0
            && self.crlf == 0
            && self.nul == 0
            && self.printable >> 7 >= nonprintable;
        self.lone_lf > 0 && (eol == Eol::Crlf || (eol == Eol::Auto && text))
    }
}

/// Appends `data` to `out` with every LF that no CR precedes made CRLF; `cr` says whether the
/// piece before ended in CR, and is left saying whether this one does.
pub fn to_crlf(data: &[u8], cr: &mut bool, out: &mut Vec<u8>) {
    let mut rest = data;
    while let Some(at) = rest.iter().position(|&b| b == b'\n') {
        let line = rest.get(..at).unwrap_or_default();
        let after_cr = line.last().map_or(*cr, |&b| b == b'\r');
        out.extend_from_slice(line);
        out.extend_from_slice(if after_cr { b"\n" } else { b"\r\n" });
        *cr = false;
        rest = rest.get(at + 1..).unwrap_or_default();
    }
    if let Some(&last) = rest.last() {
        *cr = last == b'\r';
    }
    out.extend_from_slice(rest);
}

/// `data` (blob `id`) with `ident` applied: each `$Id$`, and each `$Id:…$` whose text holds
/// no newline and no space but at its ends, becomes `$Id: <blob id> $`. Other `$Id…` are left
/// alone, as git leaves them (a keyword another version control system expanded, say).
pub fn ident(data: &[u8], id: &[u8; 20]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while let Some(dollar) = rest.iter().position(|&b| b == b'$') {
        out.extend_from_slice(rest.get(..=dollar).unwrap_or_default());
        rest = rest.get(dollar + 1..).unwrap_or_default();
        // git wants three bytes after the `$`: `Id$` or `Id:` at least.
        if rest.len() < 3 || !rest.starts_with(b"Id") {
            continue;
        }
        let end = match rest.get(2) {
            Some(b'$') => 3,
            Some(b':') => {
                let after = rest.get(3..).unwrap_or_default();
                // No closing `$` anywhere: git stops looking.
                let Some(close) = after.iter().position(|&b| b == b'$') else {
                    break;
                };
                let inside = after.get(..close).unwrap_or_default();
                let middle = inside.get(1..close.saturating_sub(1)).unwrap_or_default();
                if inside.contains(&b'\n') || middle.contains(&b' ') {
                    continue;
                }
                3 + close + 1
            }
            _ => continue,
        };
        out.extend_from_slice(b"Id: ");
        out.extend_from_slice(hex(id).as_bytes());
        out.extend_from_slice(b" $");
        rest = rest.get(end..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    out
}

/// `data` (blob `id`) with `ident` (if `ident`) and then `eol` applied, as git's checkout
/// conversion does them, in that order; `None` when nothing changes it.
pub fn convert(data: &[u8], id: &[u8; 20], ident_on: bool, eol: Eol) -> Option<Vec<u8>> {
    let identified = ident_on.then(|| ident(data, id));
    let data = identified.as_deref().unwrap_or(data);
    if eol != Eol::Keep {
        let mut stats = Stats::default();
        stats.add(data);
        if stats.converts(eol) {
            let mut out = Vec::with_capacity(data.len() + data.len() / 16);
            to_crlf(data, &mut false, &mut out);
            return Some(out);
        }
    }
    identified
}

#[cfg(test)]
mod tests;
