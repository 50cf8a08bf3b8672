/// The wasmtime settings of every engine that runs the fetcher. `build.rs` includes this
/// file to precompile the fetcher with exactly these settings: a compiled module loads only
/// into an engine configured alike.
pub fn engine_config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    // A stopped or timed-out run must end within an epoch tick, even in a loop that never
    // calls the host.
    config.epoch_interruption(true);
    // Only for outside unwinders (wasmtime's own traps and backtraces do without it), and
    // registering it is a third of the time a cached module takes to load.
    config.native_unwind_info(false);
    config
}
