//! The fetcher module, built from `fetcher/` by `scripts/build-fetcher` and committed, so that
//! a user needs no WASM toolchain. CI rebuilds it and fails if the bytes differ.

/// The WASM fetcher's bytes.
pub const FETCHER_WASM: &[u8] = include_bytes!("../../fetcher/fetcher.wasm");
