//! Stopping a guest that never calls the host. wasmtime interrupts a running guest at epoch
//! ticks; a thread increments the engine's epoch every 10 ms while at least one guest runs,
//! and sleeps otherwise (an idle mount costs no wake-ups). Each guest yields to the async
//! executor at every tick, so a time-out or an early stop takes effect within a tick even in
//! a loop that never returns to the host.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::Engine;

use crate::sync::MutexExt;

/// How many guests are running, so that the epoch thread ticks only while one is.
#[derive(Default)]
pub(super) struct Running {
    count: Mutex<usize>,
    wake: std::sync::Condvar,
}

/// Counts one running guest for as long as it lives.
pub(super) struct RunningGuard(Arc<Running>);

impl RunningGuard {
    pub(super) fn new(running: &Arc<Running>) -> RunningGuard {
        *running.count.locked() += 1;
        running.wake.notify_all();
        RunningGuard(running.clone())
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        *self.0.count.locked() -= 1;
    }
}

/// Starts the thread that ticks `engine`'s epoch while a guest counted in `running` runs.
pub(super) fn start_ticking(engine: &Engine, running: &Arc<Running>) -> Result<()> {
    let weak = engine.weak();
    let ticker = running.clone();
    std::thread::Builder::new()
        .name("epoch".into())
        .spawn(move || {
            loop {
                {
                    let mut count = ticker.count.locked();
                    while *count == 0 {
                        count = ticker.wake.wait(count).unwrap_or_else(|e| e.into_inner());
                    }
                }
                let Some(engine) = weak.upgrade() else { break };
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .context("cannot start the epoch thread")?;
    Ok(())
}
