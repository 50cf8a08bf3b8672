//! A streaming xz decoder over any [`Source`], itself a [`Source`], on xz4rust (a port of XZ
//! Embedded). The crate decodes one stream at a time; the framing between streams — the zero
//! padding xz allows after a stream, concatenated streams (`cat a.xz b.xz`, `pixz`) — is here.
//! Every block's check (CRC-32 or CRC-64, xz's default) is verified by the crate. Streams that
//! use xz's filters for executables (BCJ), audio or images (delta), or SHA-256 checks, none of
//! which `xz` uses unless asked, are refused by name.

use xz4rust::{XzDecoder, XzError, XzNextBlockResult};

use crate::error::{Error, Result};
use crate::io::{Input, Source};
use crate::prelude::*;

/// How much compressed input is read from the source at once.
const INPUT: usize = 32 * 1024;
/// The dictionary a stream starts with; it grows to what the stream's header asks.
const INITIAL_DICT: usize = 64 * 1024;
/// The largest dictionary `xz` writes (`--lzma2=dict=1536MiB`). What a dictionary costs is
/// the guest's memory, which the host's `--max-memory` bounds.
const MAX_DICT: usize = 1536 << 20;

fn truncated() -> Error {
    Error::new("truncated xz stream")
}

fn corrupt(e: &XzError) -> Error {
    match e {
        XzError::DictionaryTooLarge(size) => Error::new(format!(
            "xz data needs a {} MiB dictionary, more than the 1536 MiB xz itself can write",
            size >> 20
        )),
        XzError::UnsupportedCheckType(_) => Error::new("xz data with a check type cab does not know"),
        XzError::Sha256NotSupported => Error::new(
            "xz data checked with SHA-256 (`xz --check=sha256`), which cab does not verify; \
             CRC-32 and CRC-64 (xz's default) are",
        ),
        // Not xz4rust's own messages: their formatting code costs more than it tells.
        XzError::ContentCrc32Mismatch(..) | XzError::IndexCrc32Mismatch(..) | XzError::ContentCrc64Mismatch(..) => {
            Error::new("xz checksum mismatch: the data is not what was compressed")
        }
        XzError::BcjFilterNotSupported => Error::new(
            "xz data with a BCJ filter (`xz --x86` and the like, made for executables), which cab does not decode",
        ),
        XzError::DeltaFilterUnsupported => Error::new(
            "xz data with the delta filter (`xz --delta`, made for audio and images), which cab does not decode",
        ),
        _ => Error::new("corrupt xz data"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Decoding a stream.
    Stream,
    /// After a stream: zero padding, another stream, or the end.
    Between,
}

/// Decodes the xz data read from `S`.
pub struct XzReader<S> {
    input: Input<S>,
    decoder: Box<XzDecoder<'static>>,
    state: State,
    /// Bytes of zero padding after the last stream, which must come in fours.
    padding: u64,
}

impl<S: Source> XzReader<S> {
    /// A decoder reading compressed bytes from `src`.
    pub fn new(src: S) -> XzReader<S> {
        XzReader {
            input: Input::new(src, INPUT),
            decoder: XzDecoder::in_heap_with_alloc_dict_size(INITIAL_DICT, MAX_DICT),
            state: State::Stream,
            padding: 0,
        }
    }
}

impl<S: Source> Source for XzReader<S> {
    fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            self.input.fill()?;
            let input = self.input.available();
            if self.state == State::Between {
                let zeros = input.iter().take_while(|&&b| b == 0).count();
                let more = zeros < input.len();
                self.padding += zeros as u64;
                self.input.consume(zeros);
                if (more || self.input.eof()) && !self.padding.is_multiple_of(4) {
                    return Err(Error::new("corrupt xz data: stream padding not a multiple of 4 bytes"));
                }
                if more {
                    self.decoder.reset();
                    self.state = State::Stream;
                } else if self.input.eof() {
                    return Ok(0);
                }
                continue;
            }
            match self.decoder.decode(input, out) {
                Ok(XzNextBlockResult::NeedMoreData(used, made)) => {
                    self.input.consume(used);
                    if made > 0 {
                        return Ok(made);
                    }
                    if used == 0 && self.input.eof() {
                        return Err(truncated());
                    }
                }
                Ok(XzNextBlockResult::EndOfStream(used, made)) => {
                    self.input.consume(used);
                    self.state = State::Between;
                    self.padding = 0;
                    if made > 0 {
                        return Ok(made);
                    }
                }
                // Not enough input to go on: at the end of the source, the stream is cut short.
                // Not enough input to go on (a header split across reads): keep what is left
                // and read more behind it; at the end of the source, the stream is cut short.
                Err(XzError::NeedsLargerInputBuffer) => {
                    if !self.input.read_more()? {
                        return Err(truncated());
                    }
                }
                Err(e) => return Err(corrupt(&e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Trickle, compress, compress_with, drain, noise};

    fn decode(data: &[u8]) -> Result<Vec<u8>> {
        drain(XzReader::new(Trickle::new(data)))
    }

    fn sample() -> Vec<u8> {
        let mut data = noise(200_000, 5);
        data.extend_from_slice(&vec![b'x'; 1_000_000]);
        data.extend_from_slice(&noise(50_000, 6));
        data
    }

    #[test]
    fn round_trips_real_xz_with_its_checks() {
        let data = sample();
        assert_eq!(decode(&compress("xz", &data)).unwrap(), data);
        for flags in [
            &["--check=crc32"][..],
            &["--check=none"],
            &["-9"],
            &["--format=xz", "--block-size=100000"],
        ] {
            assert_eq!(decode(&compress_with("xz", flags, &data)).unwrap(), data, "{flags:?}");
        }
        assert_eq!(decode(&compress("xz", b"")).unwrap(), b"");
        let mut two = compress("xz", b"hello, ");
        two.extend_from_slice(&[0; 8]);
        two.extend_from_slice(&compress("xz", b"world"));
        two.extend_from_slice(&[0; 4]);
        assert_eq!(decode(&two).unwrap(), b"hello, world");
        two.push(0);
        assert!(decode(&two).unwrap_err().message().contains("padding"));
    }

    #[test]
    fn truncation_and_corruption_are_errors() {
        let xz = compress("xz", &sample());
        for cut in [0, 5, 12, 40, xz.len() / 2, xz.len() - 1] {
            assert!(decode(&xz[..cut]).is_err(), "cut at {cut}");
        }
        for at in [3, 20, xz.len() / 2, xz.len() - 10] {
            let mut bad = xz.clone();
            bad[at] ^= 0x04;
            assert!(decode(&bad).is_err(), "flip at {at}");
        }
        let sha = compress_with("xz", &["--check=sha256"], b"x");
        assert!(decode(&sha).unwrap_err().message().contains("SHA-256"));
        let delta = compress_with("xz", &["--delta=dist=4", "--lzma2"], b"x");
        assert!(decode(&delta).unwrap_err().message().contains("delta filter"));
        let bcj = compress_with("xz", &["--x86", "--lzma2"], b"x");
        assert!(decode(&bcj).unwrap_err().message().contains("BCJ filter"));
    }
}
