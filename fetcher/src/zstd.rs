//! A streaming zstd decoder over any [`Source`], itself a [`Source`], on ruzstd. The crate
//! decodes one frame at a time; the stream's framing is here: frames one after another (`cat
//! a.zst b.zst`, `pzstd`), skippable frames (which carry metadata, not data) skipped, and each
//! frame's content checksum (XXH64, which `zstd` writes by default) verified.

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use ruzstd::io::{Error as IoError, ErrorKind, Read};

use crate::error::{Error, Result};
use crate::io::{Input, Source};
use crate::prelude::*;

/// How much compressed input is read from the source at once.
const INPUT: usize = 32 * 1024;
/// The largest window `zstd -d` decodes without `--long`/`--memory` (its `windowLogMax` 27).
const MAX_WINDOW: u64 = 128 << 20;
/// How much is decoded before it is handed out (a block holds at most 128 KiB).
const STEP: usize = 128 * 1024;

fn truncated() -> Error {
    Error::new("truncated zstd stream")
}

/// The compressed input, as ruzstd reads it, keeping our own error (an HTTP failure) for the
/// caller, since ruzstd's error type cannot carry it.
struct Compressed<S> {
    input: Input<S>,
    error: Option<Error>,
}

impl<S: Source> Read for Compressed<S> {
    fn read(&mut self, out: &mut [u8]) -> core::result::Result<usize, IoError> {
        self.input.read(out).map_err(|e| {
            self.error = Some(e);
            IoError::from(ErrorKind::Other)
        })
    }
}

/// Decodes the zstd data read from `S`.
pub struct ZstdReader<S> {
    input: Compressed<S>,
    decoder: FrameDecoder,
    in_frame: bool,
    frames: u64,
}

impl<S: Source> ZstdReader<S> {
    /// A decoder reading compressed bytes from `src`.
    pub fn new(src: S) -> ZstdReader<S> {
        let mut decoder = FrameDecoder::new();
        decoder.set_max_window_size(MAX_WINDOW);
        ZstdReader {
            input: Compressed {
                input: Input::new(src, INPUT),
                error: None,
            },
            decoder,
            in_frame: false,
            frames: 0,
        }
    }

    /// ruzstd's error as ours: our own source's error if that was the cause, a truncation if
    /// the input ended, else what ruzstd says.
    fn failed(&mut self, e: &FrameDecoderError) -> Error {
        if let Some(own) = self.input.error.take() {
            return own;
        }
        if let FrameDecoderError::WindowSizeTooBig { requested, .. } = e {
            return Error::new(format!(
                "zstd data needs a {} MiB window; cab decodes windows up to {} MiB, as `zstd -d` \
                 does without `--long=31` or `--memory`",
                requested >> 20,
                MAX_WINDOW >> 20
            ));
        }
        if self.input.input.ended() {
            return truncated();
        }
        // Named by where it went wrong, not by ruzstd's own messages: their formatting
        // code alone would be a tenth of the module.
        let place = match e {
            FrameDecoderError::ReadFrameHeaderError(_) | FrameDecoderError::FrameHeaderError(_) => "a frame header",
            FrameDecoderError::FailedToReadBlockHeader(_) => "a block header",
            FrameDecoderError::FailedToReadBlockBody(_) => "a block",
            FrameDecoderError::FailedToReadChecksum(_) => "a frame's checksum",
            FrameDecoderError::DictNotProvided { .. } | FrameDecoderError::DictionaryDecodeError(_) => {
                "a frame that needs a dictionary, which a tarball cannot carry"
            }
            _ => "the frame",
        };
        Error::new(format!("corrupt zstd data: bad {place}"))
    }

    /// Starts the next frame, skipping skippable ones; `false` at the end of the input.
    fn next_frame(&mut self) -> Result<bool> {
        loop {
            if self.input.input.at_end()? {
                return if self.frames > 0 { Ok(false) } else { Err(truncated()) };
            }
            match self.decoder.reset(&mut self.input) {
                Ok(()) => {
                    self.frames += 1;
                    return Ok(true);
                }
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame { length, .. })) => {
                    if !self.input.input.skip(u64::from(length))? {
                        return Err(truncated());
                    }
                    // A stream of only skippable frames holds no data, but is well formed.
                    self.frames += 1;
                }
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::BadMagicNumber(_)))
                    if self.frames > 0 =>
                {
                    return Err(Error::new("corrupt zstd data: garbage after the last frame"));
                }
                Err(e) => return Err(self.failed(&e)),
            }
        }
    }
}

impl<S: Source> Source for ZstdReader<S> {
    fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if !self.next_frame()? {
                    return Ok(0);
                }
                self.in_frame = true;
            }
            // Hands out what the window no longer needs (all of it once the frame is done).
            let n = self
                .decoder
                .read(out)
                .map_err(|_| Error::new("corrupt zstd data: the decode buffer failed"))?;
            if n > 0 {
                return Ok(n);
            }
            if self.decoder.is_finished() {
                let (stored, computed) = (
                    self.decoder.get_checksum_from_data(),
                    self.decoder.get_calculated_checksum(),
                );
                if let (Some(stored), Some(computed)) = (stored, computed)
                    && stored != computed
                {
                    return Err(Error::new(format!(
                        "zstd checksum mismatch: the data's XXH64 ends {computed:08x}, the frame says {stored:08x}"
                    )));
                }
                self.in_frame = false;
                continue;
            }
            if let Err(e) = self
                .decoder
                .decode_blocks(&mut self.input, BlockDecodingStrategy::UptoBytes(STEP))
            {
                return Err(self.failed(&e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Trickle, compress, compress_with, drain, noise};

    fn decode(data: &[u8]) -> Result<Vec<u8>> {
        drain(ZstdReader::new(Trickle::new(data)))
    }

    fn sample() -> Vec<u8> {
        let mut data = noise(300_000, 5);
        data.extend_from_slice(&vec![b'x'; 1_000_000]);
        data.extend_from_slice(&noise(300_000, 5));
        data
    }

    #[test]
    fn round_trips_real_zstd() {
        let data = sample();
        assert_eq!(decode(&compress("zstd", &data)).unwrap(), data);
        for flags in [
            &["-19"][..],
            &["--no-check"],
            &["--long=27"],
            &["-1", "--single-thread"],
        ] {
            assert_eq!(decode(&compress_with("zstd", flags, &data)).unwrap(), data, "{flags:?}");
        }
        assert_eq!(decode(&compress("zstd", b"")).unwrap(), b"");
        let mut two = compress("zstd", b"hello, ");
        // A skippable frame between the two.
        two.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        two.extend_from_slice(&compress("zstd", b"world"));
        assert_eq!(decode(&two).unwrap(), b"hello, world");
        two.extend_from_slice(b"junk");
        assert!(decode(&two).unwrap_err().message().contains("garbage"));
    }

    #[test]
    fn truncation_corruption_and_big_windows_are_errors() {
        let zst = compress("zstd", &sample());
        for cut in [0, 3, 6, 20, zst.len() / 2, zst.len() - 1] {
            assert!(decode(&zst[..cut]).is_err(), "cut at {cut}");
        }
        for at in [30, zst.len() / 3, zst.len() / 2, zst.len() - 2] {
            let mut bad = zst.clone();
            bad[at] ^= 0x20;
            assert!(decode(&bad).is_err(), "flip at {at}");
        }
        let big = compress_with("zstd", &["--long=28"], &sample());
        let e = decode(&big).unwrap_err();
        assert!(e.message().contains("window"), "{e}");
    }
}
