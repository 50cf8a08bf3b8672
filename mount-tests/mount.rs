//! End-to-end tests of `cab mount` with real tools: see mount-tests/README.md.

#[path = "../tests/common/mod.rs"]
mod common;

#[test]
fn placeholder_until_written() {
    common::require_nix();
}
