//! A streaming gzip decoder (RFC 1952) over any [`Source`], itself a [`Source`]: downloads are
//! unpacked as they arrive, in bounded memory (a 32 KiB input buffer and the 32 KiB window
//! DEFLATE needs), never held whole. miniz_oxide does the raw inflating; the framing — header
//! flags, CRC-32 and length trailer, concatenated members — is here, because a fetcher that
//! does not check the trailer could hand a truncated download over as a tree.

use core::ops::Range;

use crate::crc32::{Crc32, Slicing8};
use crate::error::{Error, Result};
use crate::inflate::Inflater;
use crate::io::{Input, Source};
use crate::prelude::*;

/// How much compressed input is read from the source at once.
const INPUT: usize = 32 * 1024;

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const FRESERVED: u8 = 0xe0;

fn truncated() -> Error {
    Error::new("truncated gzip stream")
}

fn corrupt(why: &str) -> Error {
    Error::new(format!("corrupt gzip data: {why}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Body,
    Trailer,
    Done,
}

/// Decodes the gzip stream read from `S`.
pub struct GzDecoder<S> {
    input: Input<S>,
    inflater: Inflater,
    /// Inflated bytes not yet handed out, in the inflater's window.
    pending: Range<usize>,
    crc: Crc32,
    crc_tables: Slicing8,
    size: u32,
    state: State,
    members: u64,
}

impl<S: Source> GzDecoder<S> {
    /// A decoder reading compressed bytes from `src`.
    pub fn new(src: S) -> GzDecoder<S> {
        GzDecoder {
            input: Input::new(src, INPUT),
            inflater: Inflater::new(false),
            pending: 0..0,
            crc: Crc32::new(),
            crc_tables: Slicing8::default(),
            size: 0,
            state: State::Header,
            members: 0,
        }
    }

    /// Gives the compressed source back.
    pub fn into_inner(self) -> S {
        self.input.into_inner()
    }

    /// The next compressed byte, or `None` at the end of the source.
    fn byte(&mut self) -> Result<Option<u8>> {
        self.input.byte()
    }

    /// The next byte of a header or trailer, which must be there.
    fn need(&mut self, check: &mut Crc32) -> Result<u8> {
        let b = self.byte()?.ok_or_else(truncated)?;
        check.update(&[b]);
        Ok(b)
    }

    /// Reads a member header; `false` if the stream ended cleanly before one.
    fn header(&mut self) -> Result<bool> {
        let first = match self.byte()? {
            None if self.members > 0 => return Ok(false),
            None => return Err(truncated()),
            Some(b) => b,
        };
        if self.members > 0 && first == 0 {
            // Zero padding after the last member (tape-style blocking), as gzip allows.
            while let Some(b) = self.byte()? {
                if b != 0 {
                    return Err(corrupt("garbage after the last member"));
                }
            }
            return Ok(false);
        }
        let mut check = Crc32::new();
        check.update(&[first]);
        let second = self.need(&mut check)?;
        if (first, second) != (0x1f, 0x8b) {
            return Err(corrupt(if self.members == 0 {
                "not gzip (bad magic bytes)"
            } else {
                "garbage after a member"
            }));
        }
        if self.need(&mut check)? != 8 {
            return Err(corrupt("unknown compression method"));
        }
        let flags = self.need(&mut check)?;
        if flags & FRESERVED != 0 {
            return Err(corrupt("reserved header flags set"));
        }
        // MTIME, XFL, OS: nothing we use.
        for _ in 0..6 {
            self.need(&mut check)?;
        }
        if flags & FEXTRA != 0 {
            let len = u16::from_le_bytes([self.need(&mut check)?, self.need(&mut check)?]);
            for _ in 0..len {
                self.need(&mut check)?;
            }
        }
        for flag in [FNAME, FCOMMENT] {
            if flags & flag != 0 {
                while self.need(&mut check)? != 0 {}
            }
        }
        if flags & FHCRC != 0 {
            let expected = check.value() as u16;
            let mut ignore = Crc32::new();
            let stored = u16::from_le_bytes([self.need(&mut ignore)?, self.need(&mut ignore)?]);
            if stored != expected {
                return Err(corrupt("header checksum mismatch"));
            }
        }
        self.inflater.reset();
        self.crc = Crc32::new();
        self.size = 0;
        self.members += 1;
        Ok(true)
    }

    /// Inflates what the input allows into the window, making it pending.
    fn inflate(&mut self) -> Result<()> {
        let (done, out) = self
            .inflater
            .step_from(&mut self.input, truncated, || corrupt("invalid deflate data"))?;
        let data = self.inflater.output(out.clone());
        self.crc.update_fast(&self.crc_tables, data);
        self.size = self.size.wrapping_add(data.len() as u32);
        self.pending = out;
        if done {
            self.state = State::Trailer;
        }
        Ok(())
    }

    /// Reads and checks a member's trailer: CRC-32, then the length modulo 2^32.
    fn trailer(&mut self) -> Result<()> {
        let mut ignore = Crc32::new();
        let mut word = || -> Result<u32> {
            let mut b = [0u8; 4];
            for x in &mut b {
                *x = self.need(&mut ignore)?;
            }
            Ok(u32::from_le_bytes(b))
        };
        let (crc, size) = (word()?, word()?);
        if crc != self.crc.value() {
            return Err(Error::new(format!(
                "gzip checksum mismatch: the data's CRC-32 is {:08x}, the trailer says {crc:08x}",
                self.crc.value()
            )));
        }
        if size != self.size {
            return Err(Error::new(format!(
                "gzip checksum mismatch: the data is {} bytes (mod 2^32), the trailer says {size}",
                self.size
            )));
        }
        Ok(())
    }
}

impl<S: Source> Source for GzDecoder<S> {
    fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(out.len());
                let start = self.pending.start;
                let src = self.inflater.output(start..start + n);
                let dest = out.get_mut(..src.len()).unwrap_or_default();
                dest.copy_from_slice(src);
                self.pending.start += n;
                return Ok(n);
            }
            match self.state {
                State::Header => self.state = if self.header()? { State::Body } else { State::Done },
                State::Body => self.inflate()?,
                State::Trailer => {
                    self.trailer()?;
                    self.state = State::Header;
                }
                State::Done => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::testing::{Trickle, drain, gzip, noise};

    fn gunzip(data: &[u8]) -> Result<Vec<u8>> {
        drain(GzDecoder::new(Trickle::new(data)))
    }

    fn sample() -> Vec<u8> {
        let mut data = noise(100_000, 3);
        data.extend_from_slice(&vec![b'a'; 300_000]);
        data.extend_from_slice(&noise(50_000, 3));
        data
    }

    #[test]
    fn round_trips_real_gzip() {
        let data = sample();
        assert_eq!(gunzip(&gzip(&data)).unwrap(), data);
        assert_eq!(gunzip(&gzip(b"")).unwrap(), b"");
    }

    #[test]
    fn concatenated_members_and_padding() {
        let mut two = gzip(b"hello, ");
        two.extend_from_slice(&gzip(b"world"));
        assert_eq!(gunzip(&two).unwrap(), b"hello, world");
        two.extend_from_slice(&[0; 100]);
        assert_eq!(gunzip(&two).unwrap(), b"hello, world");
        two.push(1);
        assert!(gunzip(&two).unwrap_err().message().starts_with("corrupt gzip data: "));
    }

    /// A header with every optional field, before a body taken from real gzip output.
    #[test]
    fn optional_header_fields() {
        let data = b"with all the flags".repeat(10);
        let real = gzip(&data);
        let mut header = vec![0x1f, 0x8b, 8, FEXTRA | FNAME | FCOMMENT | FHCRC, 0, 0, 0, 0, 0, 3];
        header.extend_from_slice(&[4, 0, b'a', b'b', 2, 0]);
        header.extend_from_slice(b"name.txt\0a comment\0");
        let mut c = Crc32::new();
        c.update(&header);
        let mut with_crc = header.clone();
        with_crc.extend_from_slice(&(c.value() as u16).to_le_bytes());
        with_crc.extend_from_slice(&real[10..]);
        assert_eq!(gunzip(&with_crc).unwrap(), data);

        let mut bad = header;
        bad.extend_from_slice(&(c.value() as u16 ^ 1).to_le_bytes());
        bad.extend_from_slice(&real[10..]);
        assert_eq!(
            gunzip(&bad).unwrap_err().message(),
            "corrupt gzip data: header checksum mismatch"
        );
    }

    #[test]
    fn truncation_anywhere_is_an_error() {
        let gz = gzip(&sample());
        for cut in [0, 1, 5, 10, 11, 100, gz.len() / 2, gz.len() - 8, gz.len() - 1] {
            assert_eq!(
                gunzip(&gz[..cut]).unwrap_err().message(),
                "truncated gzip stream",
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn corruption_is_caught() {
        let gz = gzip(&sample());
        // A flipped bit in the deflate data: invalid data, or valid data that is not what was
        // packed, which the CRC catches.
        for at in [20, 200, gz.len() / 3, gz.len() - 20] {
            let mut bad = gz.clone();
            bad[at] ^= 0x10;
            let e = gunzip(&bad).unwrap_err();
            let m = e.message();
            assert!(
                m.starts_with("corrupt gzip data: ")
                    || m.starts_with("gzip checksum mismatch")
                    || m == "truncated gzip stream",
                "flip at {at}: {m}"
            );
        }
        let mut bad = gz.clone();
        let n = bad.len();
        bad[n - 6] ^= 1; // the CRC
        assert!(
            gunzip(&bad)
                .unwrap_err()
                .message()
                .starts_with("gzip checksum mismatch")
        );
        let mut bad = gz.clone();
        bad[n - 3] ^= 1; // the length
        assert!(
            gunzip(&bad)
                .unwrap_err()
                .message()
                .starts_with("gzip checksum mismatch")
        );
        assert_eq!(
            gunzip(b"PK\x03\x04 not gzip").unwrap_err().message(),
            "corrupt gzip data: not gzip (bad magic bytes)"
        );
        let mut bad = gz;
        bad[3] = 0x20;
        assert_eq!(
            gunzip(&bad).unwrap_err().message(),
            "corrupt gzip data: reserved header flags set"
        );
    }
}
