//! Precompiles the WASM fetcher for this machine, so that the first fetch into a new store
//! does not spend 0.3-0.8 s compiling it. The result is embedded in `cab`; at run time it is
//! used when the engine is compatible (same wasmtime, same settings, a CPU with the features
//! it was compiled for), and the module is compiled as before when it is not.

include!("src/realizer/engine.rs");

fn main() {
    println!("cargo:rerun-if-changed=fetcher/fetcher.wasm");
    println!("cargo:rerun-if-changed=src/realizer/engine.rs");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let wasm = std::fs::read("fetcher/fetcher.wasm").expect("fetcher/fetcher.wasm is committed");
    let engine = wasmtime::Engine::new(&engine_config()).expect("wasmtime starts");
    // An empty file when precompiling is not possible here: cab then compiles at run time.
    let compiled = engine.precompile_module(&wasm).unwrap_or_else(|e| {
        println!("cargo:warning=cannot precompile the fetcher ({e}); cab will compile it when first used");
        Vec::new()
    });
    std::fs::write(out.join("fetcher.cwasm"), compiled).expect("OUT_DIR is writable");
}
