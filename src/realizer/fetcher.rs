//! The fetcher module, built from `fetcher/` by `scripts/build-fetcher` and committed, so that
//! a user needs no WASM toolchain. CI rebuilds it and fails if the bytes differ.

/// The WASM fetcher's bytes.
pub const FETCHER_WASM: &[u8] = include_bytes!("../../fetcher/fetcher.wasm");

/// The fetcher compiled for this machine by `build.rs` (empty if it could not be). Loaded
/// only into an engine with the same wasmtime, settings and CPU features; wasmtime checks.
pub const FETCHER_PRECOMPILED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fetcher.cwasm"));
