//! The one place that calls miniz_oxide: a streaming inflater over a 32 KiB wrapping window,
//! shared by gzip (raw DEFLATE) and git packs (zlib). One call site keeps the module small,
//! since the decompressor's core is large and would otherwise be copied into each caller.

use core::ops::Range;

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};

use crate::error::{Error, Result};
use crate::io::{Input, Source};
use crate::prelude::*;

/// The output window: DEFLATE looks back at most 32 KiB, and miniz_oxide wants a power of two.
const WINDOW: usize = 32 * 1024;

/// How one step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The stream is complete (for zlib, its Adler-32 checked).
    Done,
    /// More input is needed, or more output is waiting: call again.
    More,
    /// The data is not valid DEFLATE (or zlib).
    Corrupt,
}

/// A streaming inflater.
pub struct Inflater {
    core: Box<DecompressorOxide>,
    window: Vec<u8>,
    /// Where the next inflated byte goes in `window`.
    wpos: usize,
    zlib: bool,
}

impl Inflater {
    /// An inflater for raw DEFLATE (`zlib == false`) or zlib streams.
    pub fn new(zlib: bool) -> Inflater {
        Inflater {
            core: Box::default(),
            window: vec![0; WINDOW],
            wpos: 0,
            zlib,
        }
    }

    /// Starts a new stream.
    pub fn reset(&mut self) {
        self.core.init();
    }

    /// Inflates what `input` allows. Returns how it ended, how many input bytes were used, and
    /// where in the window the bytes it produced are (see [`Inflater::output`]; valid until
    /// the next call). `Done` uses no input past the end of the stream.
    #[inline(never)]
    pub fn step(&mut self, input: &[u8]) -> (Step, usize, Range<usize>) {
        let flags = inflate_flags::TINFL_FLAG_HAS_MORE_INPUT
            | if self.zlib {
                // Which also checks the stream's Adler-32.
                inflate_flags::TINFL_FLAG_PARSE_ZLIB_HEADER
            } else {
                0
            };
        let (status, used, produced) = decompress(&mut self.core, input, &mut self.window, self.wpos, flags);
        let at = self.wpos;
        self.wpos = (at + produced) & (WINDOW - 1);
        let step = match status {
            TINFLStatus::Done => Step::Done,
            // (Without more input it would say FailedCannotMakeProgress; the caller, which
            // knows whether the input has ended, decides whether that is a truncation.)
            TINFLStatus::NeedsMoreInput | TINFLStatus::HasMoreOutput | TINFLStatus::FailedCannotMakeProgress => {
                Step::More
            }
            _ => Step::Corrupt,
        };
        // miniz_oxide stops at the end of the window, so the output never wraps.
        (step, used.min(input.len()), at..at + produced)
    }

    /// Bytes the last step produced.
    pub fn output(&self, range: Range<usize>) -> &[u8] {
        self.window.get(range).unwrap_or_default()
    }
}

impl Inflater {
    /// One step over `input`, which it refills and consumes: whether the stream is done, and
    /// where in the window the bytes it made are. An input that ends before the stream does
    /// is the `truncated` error, data that is not DEFLATE the `corrupt` one.
    pub fn step_from<S: Source>(
        &mut self,
        input: &mut Input<S>,
        truncated: fn() -> Error,
        corrupt: fn() -> Error,
    ) -> Result<(bool, Range<usize>)> {
        input.fill()?;
        let (step, used, out) = self.step(input.available());
        input.consume(used);
        match step {
            Step::Done => Ok((true, out)),
            // Only when all input is used; the end of the source then means it was cut short.
            Step::More if input.ended() && out.is_empty() => Err(truncated()),
            Step::More => Ok((false, out)),
            Step::Corrupt => Err(corrupt()),
        }
    }
}
