//! A streaming bzip2 decoder over any [`Source`], itself a [`Source`], on libbz2-rs-sys (the
//! Rust port of libbzip2). That crate offers only libbzip2's C interface, so this is the one
//! place outside [`crate::host`] and [`crate::heap`] with `unsafe`: three calls on a stream
//! record that lives in a box (libbzip2 keeps its address) and whose pointers always point
//! into the buffers of the same call. Concatenated streams (`cat a.bz2 b.bz2`, pbzip2) are read
//! one after another, as `bzip2 -d` does.

use core::ffi::c_uint;

use libbz2_rs_sys::{
    BZ_DATA_ERROR, BZ_DATA_ERROR_MAGIC, BZ_MEM_ERROR, BZ_OK, BZ_STREAM_END, BZ2_bzDecompress, BZ2_bzDecompressEnd,
    BZ2_bzDecompressInit, bz_stream,
};

use crate::error::{Error, Result};
use crate::io::{Input, Source};
use crate::prelude::*;

/// How much compressed input is read from the source at once.
const INPUT: usize = 32 * 1024;

fn truncated() -> Error {
    Error::new("truncated bzip2 stream")
}

/// The libbzip2 stream record, set up for decompressing; ended when dropped.
struct Stream(Box<bz_stream>);

impl Stream {
    fn new() -> Result<Stream> {
        let mut strm = Box::new(bz_stream {
            next_in: core::ptr::null(),
            avail_in: 0,
            total_in_lo32: 0,
            total_in_hi32: 0,
            next_out: core::ptr::null_mut(),
            avail_out: 0,
            total_out_lo32: 0,
            total_out_hi32: 0,
            state: core::ptr::null_mut(),
            bzalloc: None,
            bzfree: None,
            opaque: core::ptr::null_mut(),
        });
        // SAFETY: a valid, boxed (so never moving) record with no allocator set: the crate then
        // uses Rust's global allocator. Verbosity 0, the fast (not "small") mode.
        let r = unsafe { BZ2_bzDecompressInit(&mut *strm, 0, 0) };
        match r {
            BZ_OK => Ok(Stream(strm)),
            BZ_MEM_ERROR => Err(Error::new("out of memory for the bzip2 decoder")),
            _ => Err(Error::new(format!("the bzip2 decoder did not start (code {r})"))),
        }
    }

    /// Decompresses from `input` into `output`; returns the libbzip2 code and how many bytes
    /// of each were used.
    fn step(&mut self, input: &[u8], output: &mut [u8]) -> (i32, usize, usize) {
        let strm = &mut *self.0;
        let (avail_in, avail_out) = (clamp(input.len()), clamp(output.len()));
        strm.next_in = input.as_ptr().cast();
        strm.avail_in = avail_in;
        strm.next_out = output.as_mut_ptr().cast();
        strm.avail_out = avail_out;
        // SAFETY: the record was set up by `BZ2_bzDecompressInit` and has not moved; its input
        // and output pointers cover `avail_in` readable and `avail_out` writable bytes of the
        // two slices, which outlive the call.
        let r = unsafe { BZ2_bzDecompress(strm) };
        let used = (avail_in - strm.avail_in) as usize;
        let made = (avail_out - strm.avail_out) as usize;
        strm.next_in = core::ptr::null();
        strm.next_out = core::ptr::null_mut();
        (r, used, made)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: the record was set up by `BZ2_bzDecompressInit`; this frees its state.
        unsafe { BZ2_bzDecompressEnd(&mut *self.0) };
    }
}

fn clamp(n: usize) -> c_uint {
    c_uint::try_from(n).unwrap_or(c_uint::MAX)
}

/// Decodes the bzip2 data read from `S`.
pub struct Bz2Decoder<S> {
    input: Input<S>,
    /// The stream being decoded; `None` between streams.
    stream: Option<Stream>,
    streams: u64,
}

impl<S: Source> Bz2Decoder<S> {
    /// A decoder reading compressed bytes from `src`.
    pub fn new(src: S) -> Bz2Decoder<S> {
        Bz2Decoder {
            input: Input::new(src, INPUT),
            stream: None,
            streams: 0,
        }
    }
}

impl<S: Source> Source for Bz2Decoder<S> {
    fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            self.input.fill()?;
            let input = self.input.available();
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None if input.is_empty() && self.streams > 0 => return Ok(0),
                None if input.is_empty() => return Err(truncated()),
                None => {
                    self.streams += 1;
                    self.stream.insert(Stream::new()?)
                }
            };
            let (r, used, made) = stream.step(input, out);
            self.input.consume(used);
            match r {
                BZ_OK if made == 0 && used == 0 && self.input.eof() => return Err(truncated()),
                BZ_OK if made == 0 => continue,
                BZ_OK => return Ok(made),
                BZ_STREAM_END => {
                    self.stream = None;
                    if made > 0 {
                        return Ok(made);
                    }
                }
                BZ_DATA_ERROR_MAGIC if self.streams > 1 => {
                    return Err(Error::new("corrupt bzip2 data: garbage after the last stream"));
                }
                BZ_DATA_ERROR_MAGIC => return Err(Error::new("corrupt bzip2 data: not bzip2 (bad magic bytes)")),
                BZ_DATA_ERROR => return Err(Error::new("corrupt bzip2 data (or a checksum mismatch)")),
                BZ_MEM_ERROR => return Err(Error::new("out of memory in the bzip2 decoder")),
                other => return Err(Error::new(format!("the bzip2 decoder failed (code {other})"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Trickle, compress, drain, noise};

    fn decode(data: &[u8]) -> Result<Vec<u8>> {
        drain(Bz2Decoder::new(Trickle::new(data)))
    }

    #[test]
    fn round_trips_real_bzip2() {
        let mut data = noise(300_000, 5);
        data.extend_from_slice(&vec![b'z'; 2_000_000]);
        assert_eq!(decode(&compress("bzip2", &data)).unwrap(), data);
        assert_eq!(decode(&compress("bzip2", b"")).unwrap(), b"");
        let mut two = compress("bzip2", b"hello, ");
        two.extend_from_slice(&compress("bzip2", b"world"));
        assert_eq!(decode(&two).unwrap(), b"hello, world");
    }

    #[test]
    fn truncation_and_corruption_are_errors() {
        let bz = compress("bzip2", &noise(100_000, 9));
        for cut in [0, 3, 10, bz.len() / 2, bz.len() - 1] {
            assert!(decode(&bz[..cut]).is_err(), "cut at {cut}");
        }
        for at in [4, 20, bz.len() / 2, bz.len() - 3] {
            let mut bad = bz.clone();
            bad[at] ^= 0x08;
            let e = decode(&bad).unwrap_err();
            assert!(e.message().contains("bzip2"), "flip at {at}: {e}");
        }
        let mut junk = compress("bzip2", b"x");
        junk.extend_from_slice(b"junk");
        assert!(decode(&junk).unwrap_err().message().contains("garbage"));
    }
}
