//! The fetcher's entry point. The real program is the wasm32 build, `no_std`: wasi-libc's
//! `_start` calls our `__main_void`, memory comes from [`fetcher::heap`], and a panic exits
//! with code 101 (see `fetcher::host`). A native build exists only so that `cargo test` and
//! `cargo clippy` work on the host target.

#![cfg_attr(target_arch = "wasm32", no_std, no_main)]

// wasi-libc still provides `_start` and its helpers (and `memcmp`); without std, nothing else
// asks for it, so it is named here.
#[cfg(target_arch = "wasm32")]
#[link(name = "c")]
unsafe extern "C" {}

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static HEAP: fetcher::heap::wasm::Heap = fetcher::heap::wasm::Heap::new();

#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    fetcher::host::panicked()
}

/// Called by wasi-libc's `_start`, which exits with the code returned.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn __main_void() -> i32 {
    fetcher::host::main()
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("fetcher: this program runs only as WebAssembly under cab's realizer; scripts/build-fetcher builds it");
    std::process::exit(2);
}
