//! The few WASI preview 1 calls the fetcher may make, implemented here instead of with a
//! general WASI host, because the sandbox is the point: there is no filesystem and no socket
//! to offer. The guest gets its arguments, a clock, randomness, standard output (the hash
//! FIFO) and standard error (the log). Every other WASI import the module names is bound to a
//! function that answers `ENOSYS`.

use std::io::Write;

use wasmtime::{Caller, Extern, ExternType, Linker, Memory, Module, Val};

use super::host::{Exit, HostState};

/// WASI errno values we answer with.
pub mod errno {
    /// Success.
    pub const SUCCESS: i32 = 0;
    /// Bad file descriptor.
    pub const BADF: i32 = 8;
    /// Bad address.
    pub const FAULT: i32 = 21;
    /// Invalid argument.
    pub const INVAL: i32 = 28;
    /// I/O error.
    pub const IO: i32 = 29;
    /// Not implemented.
    pub const NOSYS: i32 = 52;
    /// Invalid seek (a pipe).
    pub const SPIPE: i32 = 70;
}

const MODULE: &str = "wasi_snapshot_preview1";

/// The guest's exported linear memory.
pub fn memory(caller: &mut Caller<'_, HostState>) -> Option<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

/// Copies `len` bytes at `ptr` out of guest memory.
pub fn read(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let mem = memory(caller)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    mem.data(&caller).get(ptr..ptr.checked_add(len)?).map(|s| s.to_vec())
}

/// Copies `data` into guest memory at `ptr`.
pub fn write(caller: &mut Caller<'_, HostState>, ptr: i32, data: &[u8]) -> bool {
    let Some(mem) = memory(caller) else { return false };
    let ptr = ptr as u32 as usize;
    match mem.data_mut(caller).get_mut(ptr..ptr.saturating_add(data.len())) {
        Some(dest) if dest.len() == data.len() => {
            dest.copy_from_slice(data);
            true
        }
        _ => false,
    }
}

fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, value: u32) -> bool {
    write(caller, ptr, &value.to_le_bytes())
}

/// A list of byte strings laid out as WASI wants for argv and environ: pointers, then data.
fn put_list(caller: &mut Caller<'_, HostState>, list: &[Vec<u8>], ptrs: i32, buf: i32) -> i32 {
    let mut at = buf as u32;
    for (i, item) in list.iter().enumerate() {
        let mut with_nul = item.clone();
        with_nul.push(0);
        if !write_u32(caller, ptrs + 4 * i as i32, at) || !write(caller, at as i32, &with_nul) {
            return errno::FAULT;
        }
        at += with_nul.len() as u32;
    }
    errno::SUCCESS
}

fn sizes(caller: &mut Caller<'_, HostState>, list: &[Vec<u8>], count: i32, size: i32) -> i32 {
    let total: usize = list.iter().map(|a| a.len() + 1).sum();
    if write_u32(caller, count, list.len() as u32) && write_u32(caller, size, total as u32) {
        errno::SUCCESS
    } else {
        errno::FAULT
    }
}

/// Adds the WASI calls the sandbox offers, and `ENOSYS` stubs for every other WASI import of
/// `module`.
pub fn add_to_linker(linker: &mut Linker<HostState>, module: &Module) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "args_sizes_get",
        |mut c: Caller<'_, HostState>, count: i32, size: i32| {
            let args = c.data().args.clone();
            sizes(&mut c, &args, count, size)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "args_get",
        |mut c: Caller<'_, HostState>, ptrs: i32, buf: i32| {
            let args = c.data().args.clone();
            put_list(&mut c, &args, ptrs, buf)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_sizes_get",
        |mut c: Caller<'_, HostState>, count: i32, size: i32| sizes(&mut c, &[], count, size),
    )?;
    linker.func_wrap(MODULE, "environ_get", |_: Caller<'_, HostState>, _: i32, _: i32| {
        errno::SUCCESS
    })?;
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut c: Caller<'_, HostState>, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32| {
            let mut data = Vec::new();
            for i in 0..iovs_len.max(0) {
                let Some(iov) = read(&mut c, iovs + 8 * i, 8) else {
                    return errno::FAULT;
                };
                let ptr = i32::from_le_bytes(iov[0..4].try_into().expect("4 bytes"));
                let len = i32::from_le_bytes(iov[4..8].try_into().expect("4 bytes"));
                let Some(bytes) = read(&mut c, ptr, len) else {
                    return errno::FAULT;
                };
                data.extend_from_slice(&bytes);
            }
            let state = c.data_mut();
            let result = match fd {
                1 => match &mut state.fifo {
                    Some(fifo) => {
                        let result = fifo.write_all(&data).map_err(|_| errno::IO);
                        state.barrier.wrote(data.iter().filter(|&&b| b == b'\n').count() as u64);
                        result
                    }
                    None => Err(errno::BADF),
                },
                2 => {
                    state.stderr(&data);
                    Ok(())
                }
                _ => Err(errno::BADF),
            };
            match result {
                Ok(()) if write_u32(&mut c, nwritten, data.len() as u32) => errno::SUCCESS,
                Ok(()) => errno::FAULT,
                Err(e) => e,
            }
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_fdstat_get",
        |mut c: Caller<'_, HostState>, fd: i32, stat: i32| {
            if !(0..=2).contains(&fd) {
                return errno::BADF;
            }
            // filetype 2 = character device; no flags; rights: fd_write (bit 6) only.
            let mut buf = [0u8; 24];
            buf[0] = 2;
            buf[8..16].copy_from_slice(&(1u64 << 6).to_le_bytes());
            if write(&mut c, stat, &buf) {
                errno::SUCCESS
            } else {
                errno::FAULT
            }
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_seek",
        |_: Caller<'_, HostState>, _: i32, _: i64, _: i32, _: i32| errno::SPIPE,
    )?;
    linker.func_wrap(MODULE, "fd_close", |_: Caller<'_, HostState>, _: i32| errno::SUCCESS)?;
    linker.func_wrap(MODULE, "fd_prestat_get", |_: Caller<'_, HostState>, _: i32, _: i32| {
        errno::BADF
    })?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |_: Caller<'_, HostState>, _: i32, _: i32, _: i32| errno::BADF,
    )?;
    linker.func_wrap(
        MODULE,
        "random_get",
        |mut c: Caller<'_, HostState>, buf: i32, len: i32| {
            let mut bytes = vec![0u8; len.max(0) as usize];
            // SAFETY: getrandom writes at most `len` bytes into our buffer.
            let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
            if n != bytes.len() as isize {
                return errno::IO;
            }
            if write(&mut c, buf, &bytes) {
                errno::SUCCESS
            } else {
                errno::FAULT
            }
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut c: Caller<'_, HostState>, id: i32, _: i64, out: i32| {
            let now = match id {
                0 => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default(),
                1 => c.data().started.elapsed(),
                _ => return errno::INVAL,
            };
            if write(&mut c, out, &(now.as_nanos() as u64).to_le_bytes()) {
                errno::SUCCESS
            } else {
                errno::FAULT
            }
        },
    )?;
    linker.func_wrap(MODULE, "sched_yield", |_: Caller<'_, HostState>| errno::SUCCESS)?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_: Caller<'_, HostState>, code: i32| -> wasmtime::Result<()> { Err(wasmtime::Error::new(Exit(code))) },
    )?;

    // Everything else WASI has: refused.
    const OFFERED: &[&str] = &[
        "args_sizes_get",
        "args_get",
        "environ_sizes_get",
        "environ_get",
        "fd_write",
        "fd_fdstat_get",
        "fd_seek",
        "fd_close",
        "fd_prestat_get",
        "fd_prestat_dir_name",
        "random_get",
        "clock_time_get",
        "sched_yield",
        "proc_exit",
    ];
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else { continue };
        if import.module() != MODULE || OFFERED.contains(&import.name()) {
            continue;
        }
        let call = import.name().to_owned();
        linker.func_new(MODULE, import.name(), ty, move |_, _: &[Val], results: &mut [Val]| {
            tracing::debug!("the fetcher called WASI `{call}`, which the sandbox does not offer");
            if let Some(first) = results.first_mut() {
                *first = Val::I32(errno::NOSYS);
            }
            Ok(())
        })?;
    }
    Ok(())
}
