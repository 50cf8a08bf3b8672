//! Interrupts the kernel does not send over io_uring.
//!
//! When a caller gets a signal while its request waits, the kernel sends FUSE_INTERRUPT only if
//! the request had reached the server already. Read from /dev/fuse, a request is marked sent
//! and then checked for a signal that came meanwhile, so no interrupt is lost. Over io_uring
//! (Linux 6.14–6.18 at least) that check is missing: a request that was still in its CPU's
//! queue, or on its way into a ring entry, when the signal came is never interrupted — its
//! caller, now waiting killably, stays until the answer, even after SIGKILL. Parked behind a
//! fetch, that can be minutes.
//!
//! The state of the waiting thread tells: it waits interruptibly (`S`) until a signal comes,
//! then killably (`D`). So while requests that came over a ring are parked, this thread looks
//! at their callers every [`PERIOD`]; a caller seen in `D` twice in a row, with no interrupt
//! having come for its request, has one that was lost, and the request is answered EINTR as
//! the interrupt would have had it. Only requests a caller waits for are watched: read-ahead
//! READs are the kernel's own (their "caller" may be in `D` for other reasons).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::reply::Interrupts;

/// How often parked requests' callers are looked at.
const PERIOD: Duration = Duration::from_millis(100);

/// The watching thread; it ends when dropped.
pub(super) struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Watches the callers of `interrupts`' parked requests.
    pub fn start(interrupts: Arc<Interrupts>) -> std::io::Result<Watchdog> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fuse-watchdog".into())
            .spawn(move || watch(&interrupts, &stopped))?;
        Ok(Watchdog {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(interrupts: &Interrupts, stopped: &mpsc::Receiver<()>) {
    // Requests whose caller was seen signalled once: the interrupt may still be on its way.
    let mut seen: HashMap<u64, u32> = HashMap::new();
    loop {
        match stopped.recv_timeout(PERIOD) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let mut signalled = HashMap::new();
        for (unique, caller) in interrupts.waiting_callers(PERIOD) {
            if state_of(caller) != Some('D') {
                continue;
            }
            if seen.get(&unique) == Some(&caller) {
                tracing::debug!(
                    "request {unique}: its caller (thread {caller}) was signalled and the kernel sent \
                     no interrupt (FUSE over io_uring); interrupting it here"
                );
                interrupts.interrupt(unique);
            } else {
                signalled.insert(unique, caller);
            }
        }
        seen = signalled;
    }
}

/// The state letter of thread `tid` (`R`, `S`, `D`, …), from /proc.
fn state_of(tid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_reads_its_own_state_as_running() {
        // SAFETY: a plain getter.
        let me = unsafe { libc::gettid() } as u32;
        assert_eq!(state_of(me), Some('R'));
        assert_eq!(state_of(u32::MAX), None);
    }
}
