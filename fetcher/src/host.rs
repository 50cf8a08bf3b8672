//! The guest's side of the host's doors: the imports of module `cab` (HTTP, the output tree
//! and the scratch file), wrapped as the [`Net`] and [`Sink`] traits, and WASI's argv and
//! standard streams (the crate has no `std`), the latter as the [`Console`]. Compiled for
//! wasm32 only; with [`crate::heap`], the only code with `unsafe`.
//!
//! Every import takes pointers and lengths into our memory (i32 on wasm32) and returns an i32
//! (`scratch_append` an i64 offset): non-negative on success, negative on failure, the reason
//! kept by the host.

use crate::error::{Error, Result};
use crate::io::{Console, Net, Refused, Sink};
use crate::prelude::*;

#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    fn args_sizes_get(argc: *mut usize, buf_len: *mut usize) -> i32;
    fn args_get(argv: *mut *mut u8, buf: *mut u8) -> i32;
    fn fd_write(fd: i32, iovs: *const [usize; 2], iovs_len: usize, written: *mut usize) -> i32;
    fn proc_exit(code: i32) -> !;
}

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
    fn http_identity(handle: i32, buf_ptr: *mut u8, buf_len: usize) -> i32;
    fn out_mkdir(path_ptr: *const u8, path_len: usize) -> i32;
    fn out_create(path_ptr: *const u8, path_len: usize, executable: i32) -> i32;
    fn out_write(handle: i32, buf_ptr: *const u8, buf_len: usize) -> i32;
    fn out_close(handle: i32) -> i32;
    fn out_symlink(path_ptr: *const u8, path_len: usize, target_ptr: *const u8, target_len: usize) -> i32;
    fn out_set_root(path_ptr: *const u8, path_len: usize) -> i32;
    fn out_copy(from_ptr: *const u8, from_len: usize, path_ptr: *const u8, path_len: usize) -> i32;
    fn scratch_append(data_ptr: *const u8, data_len: usize) -> i64;
    fn scratch_read(offset: i64, buf_ptr: *mut u8, buf_len: usize) -> i32;
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

    fn identity(&mut self, response: i32) -> Option<String> {
        let mut buf = [0u8; 64];
        // SAFETY: the host writes at most `buf.len()` bytes into `buf`, which we own mutably.
        let n = check(unsafe { http_identity(response, buf.as_mut_ptr(), buf.len()) }).ok()?;
        let n = usize::try_from(n).ok().filter(|&n| n > 0 && n <= buf.len())?;
        core::str::from_utf8(&buf[..n]).ok().map(String::from)
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

    fn copy(&mut self, from: &[u8], path: &[u8]) -> Result<(), Refused> {
        // SAFETY: live slices, only read.
        check(unsafe { out_copy(from.as_ptr(), from.len(), path.as_ptr(), path.len()) }).map(drop)
    }

    fn set_root(&mut self, path: &[u8]) -> Result<(), Refused> {
        // SAFETY: a live slice, only read.
        check(unsafe { out_set_root(path.as_ptr(), path.len()) }).map(drop)
    }

    fn scratch_append(&mut self, data: &[u8]) -> Result<u64, Refused> {
        // SAFETY: a live slice, only read.
        u64::try_from(unsafe { scratch_append(data.as_ptr(), data.len()) }).map_err(|_| Refused)
    }

    fn scratch_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Refused> {
        let offset = i64::try_from(offset).map_err(|_| Refused)?;
        // SAFETY: the host writes at most `buf.len()` bytes into `buf`, which we own mutably.
        let n = check(unsafe { scratch_read(offset, buf.as_mut_ptr(), buf.len()) })?;
        usize::try_from(n).map_err(|_| Refused)
    }
}

/// WASI standard output (the protocol) and standard error (the log).
pub struct Stdio;

/// Writes all of `data` to WASI descriptor `fd` (1 or 2), unbuffered: a protocol line must
/// reach the host before we go on.
fn write_fd(fd: i32, mut data: &[u8]) -> Result<(), Refused> {
    while !data.is_empty() {
        let iov = [data.as_ptr() as usize, data.len()];
        let mut written = 0;
        // SAFETY: one iovec over a live slice, which the host only reads.
        if unsafe { fd_write(fd, &iov, 1, &mut written) } != 0 || written == 0 {
            return Err(Refused);
        }
        data = data.get(written..).unwrap_or_default();
    }
    Ok(())
}

impl Console for Stdio {
    fn announce(&mut self, line: &str) -> Result<()> {
        write_fd(1, line.as_bytes()).map_err(|_| Error::new("cannot write to standard output"))
    }

    fn note(&mut self, message: &str) {
        // Nothing to do if the log is gone; the exit code still tells.
        let _ = write_fd(2, format!("fetcher: {message}\n").as_bytes());
    }
}

/// WASI argv, each argument checked to be UTF-8.
fn args() -> Option<Vec<String>> {
    let (mut argc, mut len) = (0, 0);
    // SAFETY: two out-pointers to locals.
    if unsafe { args_sizes_get(&mut argc, &mut len) } != 0 {
        return None;
    }
    let mut pointers = vec![core::ptr::null_mut(); argc];
    let mut buf = vec![0u8; len];
    // SAFETY: room for `argc` pointers and `len` bytes, as the host just said it needs.
    if unsafe { args_get(pointers.as_mut_ptr(), buf.as_mut_ptr()) } != 0 {
        return None;
    }
    // The arguments are laid out one after the other, each ended by a NUL.
    let mut args = buf
        .split(|&b| b == 0)
        .map(|a| String::from_utf8(a.to_vec()).ok())
        .collect::<Option<Vec<_>>>()?;
    args.truncate(argc);
    Some(args)
}

/// Runs the fetcher on WASI argv and returns the exit code.
pub fn main() -> i32 {
    let result = match args() {
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

/// What a panic does: say so, and exit with code 101 (as Rust programs do). The library is
/// written not to panic; this is the last line.
pub fn panicked() -> ! {
    let _ = write_fd(2, b"fetcher: internal error (panic)\n");
    // SAFETY: ends the program.
    unsafe { proc_exit(101) }
}
