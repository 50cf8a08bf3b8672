//! The narrow interfaces between the fetch logic and the world: a byte [`Source`] to read
//! from, a [`Sink`] that creates the output tree, [`Net`] for HTTP and a [`Console`] for the
//! protocol lines and diagnostics. In the module they are the host's imports; in the tests they
//! are plain Rust values, which is what lets the whole fetch run natively under `cargo test`.

use crate::error::{Error, Result};
use crate::prelude::*;

/// A host call failed. The host keeps the detailed reason and reports it itself, so the guest
/// only learns *that* it failed; the caller names the operation and the path or URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// A stream of bytes: an HTTP body, the inflated contents of a gzip stream.
pub trait Source {
    /// Reads some bytes into `buf`; 0 means the end (or `buf` is empty).
    fn read(&mut self, buf: &mut [u8]) -> Result<usize>;
}

impl Source for &[u8] {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = buf.len().min(self.len());
        let (head, rest) = self.split_at(n);
        if let Some(dest) = buf.get_mut(..n) {
            dest.copy_from_slice(head);
        }
        *self = rest;
        Ok(n)
    }
}

impl<S: Source + ?Sized> Source for &mut S {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        (**self).read(buf)
    }
}

/// Reads until `buf` is full or the source ends; returns how many bytes were read, so a short
/// count means the end came first.
pub fn read_full(src: &mut impl Source, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        let n = src.read(rest)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// A [`Source`] with a buffer in front, so that parsers that read a few bytes at a time (the
/// pkt-line reader) do not make one host call per read.
pub struct Buffered<S> {
    inner: S,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl<S: Source> Buffered<S> {
    /// Wraps `inner` with a buffer of `capacity` bytes.
    pub fn new(inner: S, capacity: usize) -> Buffered<S> {
        Buffered {
            inner,
            buf: vec![0; capacity.max(1)],
            pos: 0,
            end: 0,
        }
    }

    /// Gives the wrapped source back; anything still buffered is dropped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Source> Source for Buffered<S> {
    fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        if self.pos == self.end {
            // A large read skips the buffer: copying it twice gains nothing.
            if out.len() >= self.buf.len() {
                return self.inner.read(out);
            }
            self.end = self.inner.read(&mut self.buf)?;
            self.pos = 0;
        }
        let avail = self.buf.get(self.pos..self.end).unwrap_or_default();
        let n = avail.len().min(out.len());
        if let (Some(dest), Some(src)) = (out.get_mut(..n), avail.get(..n)) {
            dest.copy_from_slice(src);
        }
        self.pos += n;
        Ok(n)
    }
}

/// A source read in large pieces into a buffer that a decoder consumes as it can: the input
/// side of every decompressor here.
pub struct Input<S> {
    src: S,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    eof: bool,
}

impl<S: Source> Input<S> {
    /// Reads `src` in pieces of `capacity` bytes.
    pub fn new(src: S, capacity: usize) -> Input<S> {
        Input {
            src,
            buf: vec![0; capacity.max(1)],
            pos: 0,
            end: 0,
            eof: false,
        }
    }

    /// Gives the source back; anything still buffered is dropped.
    pub fn into_inner(self) -> S {
        self.src
    }

    /// Reads the next piece once the last is used up; afterwards [`Input::available`] is
    /// empty only at the end of the source.
    pub fn fill(&mut self) -> Result<()> {
        if self.pos == self.end && !self.eof {
            let n = self.src.read(&mut self.buf)?;
            self.pos = 0;
            self.end = n.min(self.buf.len());
            self.eof = n == 0;
        }
        Ok(())
    }

    /// What is buffered and not yet used.
    pub fn available(&self) -> &[u8] {
        self.buf.get(self.pos..self.end).unwrap_or_default()
    }

    /// Marks `n` buffered bytes used.
    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.end);
    }

    /// Whether the source has ended and everything was used.
    pub fn ended(&self) -> bool {
        self.eof && self.pos == self.end
    }

    /// Whether the source has ended (what is buffered may still be unused).
    pub fn eof(&self) -> bool {
        self.eof
    }

    /// Fills, then tells whether nothing is left.
    pub fn at_end(&mut self) -> Result<bool> {
        self.fill()?;
        Ok(self.pos == self.end)
    }

    /// The next byte, or `None` at the end.
    pub fn byte(&mut self) -> Result<Option<u8>> {
        self.fill()?;
        let b = self.available().first().copied();
        self.consume(usize::from(b.is_some()));
        Ok(b)
    }

    /// Skips `n` bytes; `false` if the source ended first.
    pub fn skip(&mut self, mut n: u64) -> Result<bool> {
        while n > 0 {
            if self.at_end()? {
                return Ok(false);
            }
            let step = (self.available().len() as u64).min(n);
            self.consume(step as usize);
            n -= step;
        }
        Ok(true)
    }

    /// Moves what is unused to the front and reads more behind it, for a decoder that needs
    /// more than a piece's end holds; `false` when the buffer is full or the source ended.
    pub fn read_more(&mut self) -> Result<bool> {
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
        let rest = self.buf.get_mut(self.end..).unwrap_or_default();
        if rest.is_empty() || self.eof {
            return Ok(false);
        }
        let n = self.src.read(rest)?;
        self.end += n.min(rest.len());
        self.eof = n == 0;
        Ok(n > 0)
    }
}

impl<S: Source> Source for Input<S> {
    fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        self.fill()?;
        let avail = self.available();
        let n = avail.len().min(out.len());
        if let (Some(dest), Some(src)) = (out.get_mut(..n), avail.get(..n)) {
            dest.copy_from_slice(src);
        }
        self.consume(n);
        Ok(n)
    }
}

/// Where an unpacked tree goes: paths are relative, `/`-separated bytes, already checked.
pub trait Sink {
    /// Makes a directory whose parent exists.
    fn mkdir(&mut self, path: &[u8]) -> Result<(), Refused>;
    /// Makes a new regular file and returns a handle to write it.
    fn create(&mut self, path: &[u8], executable: bool) -> Result<i32, Refused>;
    /// Appends all of `data` to an open file.
    fn write(&mut self, file: i32, data: &[u8]) -> Result<(), Refused>;
    /// Finishes a file.
    fn close(&mut self, file: i32) -> Result<(), Refused>;
    /// Makes a symlink with any target.
    fn symlink(&mut self, path: &[u8], target: &[u8]) -> Result<(), Refused>;
    /// Makes `path` a copy of `from`, a closed file or a symlink made earlier in this run
    /// (a hard link in an archive).
    fn copy(&mut self, from: &[u8], path: &[u8]) -> Result<(), Refused>;
    /// Says that the tree is the directory `path`, not the whole output.
    fn set_root(&mut self, path: &[u8]) -> Result<(), Refused>;
    /// Appends to the run's scratch file (beside the output, never part of it); returns the
    /// offset the bytes were written at.
    fn scratch_append(&mut self, data: &[u8]) -> Result<u64, Refused>;
    /// Reads scratch bytes at `offset` into `buf`; fewer than asked only at the end.
    fn scratch_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Refused>;
}

/// HTTP, as the host offers it: redirects followed (to any host, never from https to http),
/// credentials added for their own host only, the first URL of each request checked against
/// the hosts the island names.
pub trait Net {
    /// Sends a request; returns a handle once the response headers have arrived.
    fn open(&mut self, method: &str, url: &str, headers: &str, body: &[u8]) -> Result<i32, Refused>;
    /// The response's status code.
    fn status(&mut self, response: i32) -> Result<u16, Refused>;
    /// Reads body bytes; 0 is the end of the body.
    fn read(&mut self, response: i32, buf: &mut [u8]) -> Result<usize, Refused>;
    /// Drops the response.
    fn close(&mut self, response: i32) -> Result<(), Refused>;
    /// The server's identity of the response (a BLAKE3 of its final URL and its `ETag`, or
    /// `Last-Modified` and length), if it gave one.
    fn identity(&mut self, _response: i32) -> Option<String> {
        None
    }
}

/// The guest's standard output (the protocol) and standard error (diagnostics).
pub trait Console {
    /// Writes one protocol line (with its newline) and flushes it at once: the host acts on
    /// each line as it arrives.
    fn announce(&mut self, line: &str) -> Result<()>;
    /// Writes a diagnostic line for the log.
    fn note(&mut self, message: &str);
}

/// The body of an open HTTP response, as a [`Source`].
pub struct Body<'n, N: Net> {
    net: &'n mut N,
    response: i32,
    url: &'n str,
}

impl<'n, N: Net> Body<'n, N> {
    /// Sends a request and checks that the answer is a success (2xx); the body is then read
    /// from the returned value.
    pub fn open(net: &'n mut N, method: &str, url: &'n str, headers: &str, body: &[u8]) -> Result<Body<'n, N>> {
        Body::answer(net, method, url, headers, body)?.map_err(|status| Error::new(format!("HTTP {status} for {url}")))
    }

    /// Sends a request; the outer error is a failure to get any answer, the inner one the
    /// status of an answer that is not a success (for callers that try something else then).
    pub fn answer(
        net: &'n mut N,
        method: &str,
        url: &'n str,
        headers: &str,
        body: &[u8],
    ) -> Result<core::result::Result<Body<'n, N>, u16>> {
        let response = net
            .open(method, url, headers, body)
            .map_err(|_| Error::new(format!("http_open failed for {url}")))?;
        let status = net
            .status(response)
            .map_err(|_| Error::new(format!("http_status failed for {url}")))?;
        if !(200..300).contains(&status) {
            // Best effort: the failure is what matters, and the host drops everything anyway.
            let _ = net.close(response);
            return Ok(Err(status));
        }
        Ok(Ok(Body { net, response, url }))
    }

    /// The server's identity of this response, if it gave one ([`Net::identity`]).
    pub fn identity(&mut self) -> Option<String> {
        self.net.identity(self.response)
    }

    /// Ends the response.
    pub fn close(self) -> Result<()> {
        self.net
            .close(self.response)
            .map_err(|_| Error::new(format!("http_close failed for {}", self.url)))
    }
}

impl<N: Net> Source for Body<'_, N> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        match self.net.read(self.response, buf) {
            // A host that claims more than it was asked for is broken; stop rather than index.
            Ok(n) if n <= buf.len() => Ok(n),
            _ => Err(Error::new(format!("http_read failed for {}", self.url))),
        }
    }
}
