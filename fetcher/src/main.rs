//! The fetcher's entry point. The real program is the wasm32 build (see `fetcher::host`); a
//! native build exists only so that `cargo test` and `cargo clippy` work on the host target.

fn main() {
    #[cfg(target_arch = "wasm32")]
    std::process::exit(fetcher::host::main());
    #[cfg(not(target_arch = "wasm32"))]
    {
        eprintln!(
            "fetcher: this program runs only as WebAssembly under cab's realizer; scripts/build-fetcher builds it"
        );
        std::process::exit(2);
    }
}
