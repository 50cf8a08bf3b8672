//! Fetcher modules: what a derivation's `wasm` builder names, made runnable. The fetcher comes
//! precompiled inside `cab` (build.rs); otherwise — other modules, an engine that cannot load
//! the precompiled bytes, or `CAB_NO_PRECOMPILED=1` — a module is compiled once per process
//! and once per store (`cache/`), since compiling costs ~0.3 s and loading a cached module
//! ~0.15 ms.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use wasmtime::{Engine, Linker, Module};

use super::host::HostState;
use super::{Realizer, engine, fetcher, host, wasi};
use crate::hash::TreeHash;
use crate::sync::MutexExt;

/// A compiled module and the linker that binds its imports.
pub(super) struct Loaded {
    pub(super) module: Module,
    pub(super) linker: Arc<Linker<HostState>>,
}

/// The compatibility tag of modules compiled by `engine`: 16 hex digits of wasmtime's
/// compatibility hash (its version and settings), the suffix of their `cache/` file names.
fn engine_tag(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The tag this cab's compiled modules carry in the store's `cache/`; modules with another
/// were compiled by another wasmtime (or with other settings) and cannot be loaded here.
pub fn module_cache_tag() -> Result<String> {
    let engine = Engine::new(&engine::engine_config()).map_err(|e| anyhow!("cannot start wasmtime: {e}"))?;
    Ok(engine_tag(&engine))
}

/// The BLAKE3 of a module's bytes: its name in derivations.
pub fn module_hash(bytes: &[u8]) -> TreeHash {
    TreeHash(*blake3::hash(bytes).as_bytes())
}

impl Realizer {
    /// Makes another module runnable by hash (for purpose-built test guests).
    pub fn add_module(&self, bytes: Vec<u8>) -> TreeHash {
        let hash = module_hash(&bytes);
        self.extra_modules.locked().insert(hash, bytes);
        hash
    }

    /// Compiles a module once per process, and once per machine via a cache in the store.
    pub(super) fn load(&self, hash: &TreeHash) -> Result<Arc<Loaded>> {
        if let Some(loaded) = self.modules.locked().get(hash) {
            return Ok(loaded.clone());
        }
        let bytes = if *hash == module_hash(fetcher::FETCHER_WASM) {
            fetcher::FETCHER_WASM.to_vec()
        } else {
            let extra = self.extra_modules.locked();
            extra
                .get(hash)
                .cloned()
                .with_context(|| format!("no fetcher module {hash} is known to this cab"))?
        };
        let module = match self.precompiled(hash) {
            Some(module) => module,
            None => self.compile_cached(hash, &bytes)?,
        };
        let mut linker = Linker::new(&self.engine);
        wasi::add_to_linker(&mut linker, &module).map_err(|e| anyhow!("cannot bind WASI: {e}"))?;
        host::add_to_linker(&mut linker).map_err(|e| anyhow!("cannot bind host functions: {e}"))?;
        let loaded = Arc::new(Loaded {
            module,
            linker: Arc::new(linker),
        });
        self.modules.locked().insert(*hash, loaded.clone());
        Ok(loaded)
    }

    /// The fetcher as `build.rs` compiled it, if this engine can load it.
    fn precompiled(&self, hash: &TreeHash) -> Option<Module> {
        // CAB_NO_PRECOMPILED: compile as a cab without it would (benchmarks compare both).
        if *hash != module_hash(fetcher::FETCHER_WASM)
            || fetcher::FETCHER_PRECOMPILED.is_empty()
            || std::env::var_os("CAB_NO_PRECOMPILED").is_some()
        {
            return None;
        }
        // SAFETY: the bytes were made by `Engine::precompile_module` in build.rs, from the
        // fetcher embedded beside them; wasmtime refuses them if this engine differs.
        match unsafe { Module::deserialize(&self.engine, fetcher::FETCHER_PRECOMPILED) } {
            Ok(module) => Some(module),
            Err(e) => {
                tracing::debug!("the precompiled fetcher does not fit this machine ({e}); compiling it");
                None
            }
        }
    }

    fn compile_cached(&self, hash: &TreeHash, bytes: &[u8]) -> Result<Module> {
        let dir = self.store.root().join("cache");
        let path = dir.join(format!("{}-{}.cwasm", hash.to_hex(), engine_tag(&self.engine)));
        if path.exists() {
            // SAFETY: the cache lives in the user's own store and was written by
            // `Module::serialize` of an engine with the same compatibility hash.
            match unsafe { Module::deserialize_file(&self.engine, &path) } {
                Ok(module) => return Ok(module),
                Err(e) => tracing::warn!("ignoring unusable compiled module {}: {e}", path.display()),
            }
        }
        let module =
            Module::new(&self.engine, bytes).map_err(|e| anyhow!("cannot compile fetcher module {hash}: {e}"))?;
        // The cache is an optimisation: failing to write it is not an error.
        if let Ok(serialized) = module.serialize() {
            let tmp = dir.join(format!(".{}.{}", hash.to_hex(), std::process::id()));
            let _ = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&tmp, serialized))
                .and_then(|()| std::fs::rename(&tmp, &path));
        }
        Ok(module)
    }
}
