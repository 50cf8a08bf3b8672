//! The guest's side of the host's doors: the imports of module `cab` (HTTP and the output
//! tree), wrapped as the [`Net`] and [`Sink`] traits, and WASI's standard streams as the
//! [`Console`]. Compiled for wasm32 only; this is the one module with `unsafe`.
//!
//! Every import takes pointers and lengths into our memory (i32 on wasm32) and returns an i32:
//! non-negative on success, negative on failure, the reason kept by the host.

use std::io::Write;
use std::os::fd::FromRawFd;

use crate::error::{Error, Result};
use crate::io::{Console, Net, Refused, Sink};

#[link(wasm_import_module = "cab")]
unsafe extern "C" {
    fn http_open(
        method_ptr: *const u8,
        method_len: usize,
        url_ptr: *const u8,
        url_len: usize,
        headers_ptr: *const u8,
        headers_len: usize,
        body_ptr: *const u8,
        body_len: usize,
    ) -> i32;
    fn http_status(handle: i32) -> i32;
    fn http_read(handle: i32, buf_ptr: *mut u8, buf_len: usize) -> i32;
    fn http_close(handle: i32) -> i32;
    fn out_mkdir(path_ptr: *const u8, path_len: usize) -> i32;
    fn out_create(path_ptr: *const u8, path_len: usize, executable: i32) -> i32;
    fn out_write(handle: i32, buf_ptr: *const u8, buf_len: usize) -> i32;
    fn out_close(handle: i32) -> i32;
    fn out_symlink(path_ptr: *const u8, path_len: usize, target_ptr: *const u8, target_len: usize) -> i32;
    fn out_set_root(path_ptr: *const u8, path_len: usize) -> i32;
}

fn check(r: i32) -> Result<i32, Refused> {
    if r >= 0 { Ok(r) } else { Err(Refused) }
}

/// HTTP through the host.
pub struct HostNet;

impl Net for HostNet {
    fn open(&mut self, method: &str, url: &str, headers: &str, body: &[u8]) -> Result<i32, Refused> {
        // SAFETY: every pointer and length comes from a live slice; the host only reads them.
        check(unsafe {
            http_open(
                method.as_ptr(),
                method.len(),
                url.as_ptr(),
                url.len(),
                headers.as_ptr(),
                headers.len(),
                body.as_ptr(),
                body.len(),
            )
        })
    }

    fn status(&mut self, response: i32) -> Result<u16, Refused> {
        // SAFETY: no pointers.
        let s = check(unsafe { http_status(response) })?;
        u16::try_from(s).map_err(|_| Refused)
    }

    fn read(&mut self, response: i32, buf: &mut [u8]) -> Result<usize, Refused> {
        // SAFETY: the host writes at most `buf.len()` bytes into `buf`, which we own mutably.
        let n = check(unsafe { http_read(response, buf.as_mut_ptr(), buf.len()) })?;
        usize::try_from(n).map_err(|_| Refused)
    }

    fn close(&mut self, response: i32) -> Result<(), Refused> {
        // SAFETY: no pointers.
        check(unsafe { http_close(response) }).map(drop)
    }
}

/// The output tree through the host.
pub struct HostSink;

impl Sink for HostSink {
    fn mkdir(&mut self, path: &[u8]) -> Result<(), Refused> {
        // SAFETY: a live slice, only read.
        check(unsafe { out_mkdir(path.as_ptr(), path.len()) }).map(drop)
    }

    fn create(&mut self, path: &[u8], executable: bool) -> Result<i32, Refused> {
        // SAFETY: a live slice, only read.
        check(unsafe { out_create(path.as_ptr(), path.len(), i32::from(executable)) })
    }

    fn write(&mut self, file: i32, data: &[u8]) -> Result<(), Refused> {
        // SAFETY: a live slice, only read.
        check(unsafe { out_write(file, data.as_ptr(), data.len()) }).map(drop)
    }

    fn close(&mut self, file: i32) -> Result<(), Refused> {
        // SAFETY: no pointers.
        check(unsafe { out_close(file) }).map(drop)
    }

    fn symlink(&mut self, path: &[u8], target: &[u8]) -> Result<(), Refused> {
        // SAFETY: live slices, only read.
        check(unsafe { out_symlink(path.as_ptr(), path.len(), target.as_ptr(), target.len()) }).map(drop)
    }

    fn set_root(&mut self, path: &[u8]) -> Result<(), Refused> {
        // SAFETY: a live slice, only read.
        check(unsafe { out_set_root(path.as_ptr(), path.len()) }).map(drop)
    }
}

/// WASI standard output (the protocol) and standard error (the log).
pub struct Stdio;

impl Console for Stdio {
    fn announce(&mut self, line: &str) -> Result<()> {
        // Straight to WASI fd 1, not through std's line-buffered `Stdout`: the line must
        // reach the host before we go on, and the unbuffered descriptor costs less code.
        // SAFETY: fd 1 is WASI's standard output for the whole run; `ManuallyDrop` keeps this
        // `File` from closing it.
        let mut out = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|_| Error::new("cannot write to standard output"))
    }

    fn note(&mut self, message: &str) {
        // Nothing to do if the log is gone; the exit code still tells.
        let _ = writeln!(std::io::stderr().lock(), "fetcher: {message}");
    }
}

/// Runs the fetcher on WASI argv and returns the exit code.
pub fn main() -> i32 {
    let argv: Option<Vec<String>> = std::env::args_os().map(|a| a.into_string().ok()).collect();
    let result = match argv {
        Some(argv) => crate::run(&argv, &mut HostNet, &mut HostSink, &mut Stdio),
        None => Err(Error::usage("an argument is not UTF-8")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            Stdio.note(&format!("error: {e}"));
            e.code()
        }
    }
}
