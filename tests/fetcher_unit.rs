//! The WASM fetcher's own unit tests, as part of `cargo test`. The fetcher is a crate of its
//! own (another target, another profile, its bytes committed), so cargo does not see its
//! tests from here; this runs them, natively, in its own target directory, so the one test
//! command the README gives covers the whole project.

use std::path::Path;
use std::process::Command;

#[test]
fn fetcher_unit_tests_pass() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("fetcher/Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args(["test", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        // The outer build's settings are for cab, not for the fetcher's own workspace.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cannot run cargo");
    assert!(
        output.status.success(),
        "the fetcher's unit tests failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Not vacuous: tests ran (the fetcher has dozens).
    let stdout = String::from_utf8_lossy(&output.stdout);
    let passed: u32 = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|l| l.split(' ').next()?.parse::<u32>().ok())
        .sum();
    assert!(passed >= 50, "only {passed} fetcher tests ran:\n{stdout}");
}
