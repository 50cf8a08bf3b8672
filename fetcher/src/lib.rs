//! Cab's fetcher: the WASM guest that fetches source trees ("islands") for the realizer, which
//! runs it sandboxed. It has no filesystem or network of its own: arguments come from WASI
//! argv, protocol lines go to standard output, diagnostics to standard error, and HTTP and the
//! output tree go through the host's module `cab` (see [`host`], built for wasm32 only).
//!
//! Everything but [`host`] is plain Rust over the small traits in [`io`], so the whole fetch —
//! ref resolution, every archive format, git packs — is tested natively with `cargo test`.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

/// What `std`'s prelude would give: the crate is `no_std` (in the module, the standard
/// library's share was mostly libc's allocator and std's panic and I/O machinery: a quarter).
mod prelude {
    pub use alloc::borrow::ToOwned;
    pub use alloc::boxed::Box;
    pub use alloc::string::{String, ToString};
    pub use alloc::vec::Vec;
    pub use alloc::{format, vec};
}

pub mod archive;
pub mod args;
pub mod attributes;
pub mod bzip2;
pub mod checkout;
pub mod convert;
pub mod crc32;
pub mod delta;
pub mod error;
pub mod fetch;
#[cfg(test)]
mod fuzz;
pub mod git;
pub mod gzip;
pub mod heap;
#[cfg(target_arch = "wasm32")]
pub mod host;
pub mod inflate;
pub mod io;
pub mod listing;
pub mod pack;
pub mod pktline;
pub mod refs;
pub mod sha1;
pub mod subst;
pub mod suggest;
pub mod tar;
#[cfg(test)]
mod testing;

// The tests' allocator counts what each thread holds, so that the fuzz tests can bound it.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: fuzz::Counting = fuzz::Counting;
pub mod tree;
pub mod xz;
pub mod zip;
pub mod zstd;

use crate::error::Result;
use crate::io::{Console, Net, Sink};
use crate::prelude::*;

/// Runs the fetcher on `argv` (with `argv[0]`).
pub fn run<N: Net, K: Sink, C: Console>(argv: &[String], net: &mut N, sink: &mut K, console: &mut C) -> Result<()> {
    let request = args::parse(argv)?;
    fetch::fetch(&request, net, sink, console)
}
