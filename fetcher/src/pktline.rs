//! Git's pkt-line framing (gitprotocol-common): each packet is four hex digits giving its
//! length including those four, then the payload; `0000` is a flush, `0001` a delimiter and
//! `0002` a response end. Both the ref advertisement and the ls-refs exchange are made of it.

use crate::error::{Error, Result};
use crate::io::{Source, read_full};
use crate::prelude::*;

/// The largest packet git allows, length prefix included.
pub const MAX_PACKET: usize = 65520;

/// A flush packet.
pub const FLUSH: &[u8] = b"0000";
/// A delimiter packet (protocol v2: separates a command's capabilities from its arguments).
pub const DELIM: &[u8] = b"0001";

/// Appends `payload` as one data packet. Payloads are ours (commands and ref prefixes whose
/// length the argument checks bound), so a too-long one is a bug, reported as an error anyway.
pub fn encode(out: &mut Vec<u8>, payload: &[u8]) -> Result<()> {
    let len = payload.len() + 4;
    if len > MAX_PACKET {
        return Err(Error::new("pkt-line payload too long"));
    }
    out.extend_from_slice(format!("{len:04x}").as_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// One packet read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0000`.
    Flush,
    /// `0001`.
    Delim,
    /// `0002`.
    ResponseEnd,
    /// A data packet's payload.
    Data(&'a [u8]),
}

/// Reads packets one at a time, so a long ref list is never held whole.
pub struct PktReader<S> {
    src: S,
    buf: Vec<u8>,
}

impl<S: Source> PktReader<S> {
    /// A reader over `src`.
    pub fn new(src: S) -> PktReader<S> {
        PktReader { src, buf: Vec::new() }
    }

    /// The next packet, or `None` when the stream ends cleanly between packets.
    pub fn next_packet(&mut self) -> Result<Option<Packet<'_>>> {
        let len = match read_len(&mut self.src)? {
            None => return Ok(None),
            Some(0) => return Ok(Some(Packet::Flush)),
            Some(1) => return Ok(Some(Packet::Delim)),
            Some(2) => return Ok(Some(Packet::ResponseEnd)),
            Some(len) => len,
        };
        self.buf.resize(len - 4, 0);
        if read_full(&mut self.src, &mut self.buf)? != self.buf.len() {
            return Err(Error::new("truncated pkt-line stream"));
        }
        Ok(Some(Packet::Data(&self.buf)))
    }

    /// Gives the underlying source back.
    pub fn into_inner(self) -> S {
        self.src
    }
}

/// Reads a packet's length prefix: `None` when the stream ends cleanly before one, 0, 1 or 2
/// for the special packets, else the data packet's length (at least 4, prefix included).
pub fn read_len<S: Source>(src: &mut S) -> Result<Option<usize>> {
    let mut head = [0u8; 4];
    match read_full(src, &mut head)? {
        0 => return Ok(None),
        4 => {}
        _ => return Err(Error::new("truncated pkt-line stream")),
    }
    let mut len = 0usize;
    for b in head {
        let digit = (b as char)
            .to_digit(16)
            .ok_or_else(|| Error::new("malformed pkt-line length"))?;
        len = len * 16 + digit as usize;
    }
    if len == 3 || len > MAX_PACKET {
        return Err(Error::new("malformed pkt-line length"));
    }
    Ok(Some(len))
}

/// A data payload without its one optional trailing newline.
pub fn line(payload: &[u8]) -> &[u8] {
    payload.strip_suffix(b"\n").unwrap_or(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_length_prefix() {
        let mut out = Vec::new();
        encode(&mut out, b"command=ls-refs\n").unwrap();
        out.extend_from_slice(DELIM);
        encode(&mut out, b"peel\n").unwrap();
        out.extend_from_slice(FLUSH);
        assert_eq!(out, b"0014command=ls-refs\n00010009peel\n0000");
        assert!(encode(&mut Vec::new(), &[b'x'; MAX_PACKET]).is_err());
    }

    #[test]
    fn decodes_every_kind() {
        let data: &[u8] = b"0009abcd\n000000010002";
        let mut r = PktReader::new(data);
        assert_eq!(r.next_packet().unwrap(), Some(Packet::Data(b"abcd\n")));
        assert_eq!(r.next_packet().unwrap(), Some(Packet::Flush));
        assert_eq!(r.next_packet().unwrap(), Some(Packet::Delim));
        assert_eq!(r.next_packet().unwrap(), Some(Packet::ResponseEnd));
        assert_eq!(r.next_packet().unwrap(), None);
        assert_eq!(line(b"abc\n"), b"abc");
        assert_eq!(line(b"abc"), b"abc");
    }

    #[test]
    fn rejects_bad_framing() {
        for bad in [&b"00"[..], b"zzzz", b"0003", b"fff1", b"0009ab"] {
            let mut r = PktReader::new(bad);
            assert!(r.next_packet().is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
