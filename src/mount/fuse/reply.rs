//! Answers to requests. A [`Reply`] is the one way to answer a request: it can travel to any
//! thread, it answers exactly once, and one dropped unanswered answers EIO, so no request is
//! ever left waiting. A reply that must wait (for a tree being fetched) is *parked*: it holds
//! no thread while it waits, and an interrupt from the kernel (the caller got a signal)
//! answers it EINTR at once.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::abi::{self, Attr, Out};
use super::channel::Channel;
use super::entry::Entry;

/// A lock's guard even if a panic poisoned it (the fuse layer stands alone, without cab's
/// `sync` helpers).
fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Parked requests by unique, and interrupts that arrived before their request was parked.
#[derive(Default)]
pub struct Interrupts {
    state: Mutex<InterruptState>,
}

#[derive(Default)]
struct InterruptState {
    parked: HashMap<u64, Weak<Slot>>,
    /// Interrupts for requests not (yet) parked: a request being handled on another thread
    /// may park a moment later. Kept briefly, bounded.
    early: VecDeque<(u64, Instant)>,
}

/// How long an interrupt for an unknown request is remembered.
const EARLY_INTERRUPT_KEPT: Duration = Duration::from_secs(10);
/// At most this many are remembered.
const EARLY_INTERRUPTS_MAX: usize = 4096;

impl Interrupts {
    /// The kernel interrupts request `unique`: a parked one is answered EINTR now.
    pub fn interrupt(&self, unique: u64) {
        let slot = {
            let mut state = locked(&self.state);
            match state.parked.remove(&unique).and_then(|w| w.upgrade()) {
                Some(slot) => slot,
                None => {
                    let now = Instant::now();
                    while state
                        .early
                        .front()
                        .is_some_and(|(_, at)| now.duration_since(*at) > EARLY_INTERRUPT_KEPT)
                        || state.early.len() >= EARLY_INTERRUPTS_MAX
                    {
                        state.early.pop_front();
                    }
                    state.early.push_back((unique, now));
                    return;
                }
            }
        };
        if let Some(reply) = locked(&slot.reply).take() {
            tracing::debug!("request {unique} interrupted by its caller; answered EINTR");
            reply.error(libc::EINTR);
        }
    }

    /// How many requests are parked now.
    pub fn parked(&self) -> usize {
        locked(&self.state).parked.len()
    }

    /// Parked requests that came over io_uring from a caller that waits for them (not
    /// read-ahead), parked at least `for_at_least`: their unique and the caller's thread id.
    pub(super) fn waiting_callers(&self, for_at_least: Duration) -> Vec<(u64, u32)> {
        let state = locked(&self.state);
        state
            .parked
            .iter()
            .filter_map(|(unique, slot)| {
                let slot = slot.upgrade()?;
                let caller = slot.caller?;
                (slot.since.elapsed() >= for_at_least).then_some((*unique, caller))
            })
            .collect()
    }
}

struct Slot {
    unique: u64,
    reply: Mutex<Option<Reply>>,
    interrupts: Arc<Interrupts>,
    /// See [`Reply::caller`].
    caller: Option<u32>,
    since: Instant,
}

/// A parked request: whoever takes its reply first answers it (the wait's end, a deadline,
/// or an interrupt). Cheap to clone.
#[derive(Clone)]
pub struct Parked(Arc<Slot>);

impl Parked {
    /// The reply, if nobody has answered yet.
    pub fn take(&self) -> Option<Reply> {
        let reply = locked(&self.0.reply).take();
        if reply.is_some() {
            let mut state = locked(&self.0.interrupts.state);
            state.parked.remove(&self.0.unique);
        }
        reply
    }

    /// Whether it has been answered already.
    pub fn answered(&self) -> bool {
        locked(&self.0.reply).is_none()
    }
}

/// The answer to one request.
pub struct Reply {
    unique: u64,
    channel: Arc<Channel>,
    interrupts: Arc<Interrupts>,
    /// The ring entry the request came in, if it came over io_uring: the answer goes there
    /// instead of to `channel`.
    entry: Option<Arc<Entry>>,
    /// Over io_uring, for a request its caller waits for: the caller's thread id, watched while
    /// the request is parked (see [`super::watchdog`]).
    caller: Option<u32>,
    answered: bool,
}

impl Reply {
    /// The reply to request `unique`, read from `channel`.
    pub fn new(unique: u64, channel: Arc<Channel>, interrupts: Arc<Interrupts>) -> Reply {
        Reply {
            unique,
            channel,
            interrupts,
            entry: None,
            caller: None,
            answered: false,
        }
    }

    /// The reply to request `unique`, which came in ring entry `entry` of the connection whose
    /// main descriptor is `channel`; `caller`: the thread that waits for it, if one does.
    pub(super) fn over_ring(
        unique: u64,
        channel: Arc<Channel>,
        interrupts: Arc<Interrupts>,
        entry: Arc<Entry>,
        caller: Option<u32>,
    ) -> Reply {
        Reply {
            unique,
            channel,
            interrupts,
            entry: Some(entry),
            caller,
            answered: false,
        }
    }

    /// Whether the request came over io_uring: its thread serves a ring, and must not wait on
    /// anything another request in the same ring could hold (a page lock, say).
    pub fn over_io_uring(&self) -> bool {
        self.entry.is_some()
    }

    /// The channel the request came from, or the connection's main one for a request that came
    /// over io_uring: notifications and backing-file ioctls go out on it.
    pub fn channel(&self) -> &Arc<Channel> {
        &self.channel
    }

    /// Sends the answer; false if the kernel no longer wanted it (interrupted, aborted). An
    /// answer through a ring entry is taken to arrive: its commit completes only with the
    /// entry's next request.
    fn send(mut self, error: i32, body: &[&[u8]]) -> bool {
        self.answered = true;
        if let Some(entry) = self.entry.take() {
            entry.answer(self.unique, -error, body);
            return true;
        }
        match self.channel.send_message(self.unique, -error, body) {
            Ok(()) => true,
            Err(e) => {
                // ENOENT: the request was interrupted and answered already, or is gone.
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::debug!("cannot answer request {}: {e}", self.unique);
                }
                false
            }
        }
    }

    /// Fails the request with `errno`.
    pub fn error(self, errno: i32) {
        self.send(errno, &[]);
    }

    /// Succeeds with no data.
    pub fn ok(self) {
        self.send(0, &[]);
    }

    /// Answers a lookup; false if the kernel did not take it (so it holds no reference).
    pub fn entry(self, attr: &Attr, entry_ttl: Duration, attr_ttl: Duration) -> bool {
        let mut out = Out::with_capacity(abi::ENTRY_OUT_SIZE);
        abi::entry_out(&mut out, attr, entry_ttl, attr_ttl);
        self.send(0, &[&out.bytes])
    }

    /// Answers a lookup with "no such name", remembered by the kernel for `ttl`.
    pub fn negative_entry(self, ttl: Duration) {
        let attr = Attr::default();
        self.entry(&attr, ttl, Duration::ZERO);
    }

    /// Answers getattr.
    pub fn attr(self, attr: &Attr, ttl: Duration) {
        let mut out = Out::with_capacity(104);
        abi::attr_out(&mut out, attr, ttl);
        self.send(0, &[&out.bytes]);
    }

    /// Answers with bytes (read, readlink, getxattr, listxattr, readdir).
    pub fn data(self, data: &[u8]) {
        self.send(0, &[data]);
    }

    /// Answers an open: a handle, `fopen` flags, and a passthrough backing id (0: none).
    pub fn opened(self, fh: u64, flags: u32, backing_id: u32) {
        let mut out = Out::with_capacity(16);
        out.u64(fh).u32(flags).u32(backing_id);
        self.send(0, &[&out.bytes]);
    }

    /// Answers getxattr/listxattr asked for the size only.
    pub fn xattr_size(self, size: u32) {
        let mut out = Out::with_capacity(8);
        out.u32(size).u32(0);
        self.send(0, &[&out.bytes]);
    }

    /// Answers statfs.
    pub fn statfs(self, files: u64, block_size: u32, name_max: u32) {
        let mut out = Out::with_capacity(80);
        out.u64(0).u64(0).u64(0).u64(files).u64(0);
        out.u32(block_size).u32(name_max).u32(block_size).u32(0);
        out.bytes.resize(80, 0);
        self.send(0, &[&out.bytes]);
    }

    /// Parks the request until [`Parked::take`] gives its reply back. An interrupt that came
    /// before it was parked answers it at once.
    ///
    /// The reply is in its slot before the slot is registered, and both the registration and
    /// the check for an early interrupt happen under the one lock [`Interrupts::interrupt`]
    /// takes: an interrupt handled on another worker finds either the early mark or a slot
    /// with its reply in it, never an empty slot in between.
    pub fn park(self) -> Parked {
        let (unique, caller) = (self.unique, self.caller);
        let interrupts = self.interrupts.clone();
        let slot = Arc::new(Slot {
            unique,
            reply: Mutex::new(Some(self)),
            interrupts: interrupts.clone(),
            caller,
            since: Instant::now(),
        });
        let mut state = locked(&interrupts.state);
        if let Some(at) = state.early.iter().position(|(u, _)| *u == unique) {
            state.early.remove(at);
            drop(state);
            tracing::debug!("request {unique} was interrupted before it could wait; answered EINTR");
            if let Some(reply) = locked(&slot.reply).take() {
                reply.error(libc::EINTR);
            }
            return Parked(slot);
        }
        state.parked.insert(unique, Arc::downgrade(&slot));
        drop(state);
        Parked(slot)
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.answered {
            tracing::error!("request {} was dropped unanswered (a bug); answering EIO", self.unique);
            self.answered = true;
            match self.entry.take() {
                Some(entry) => entry.answer(self.unique, -libc::EIO, &[]),
                None => {
                    let _ = self.channel.send_message(self.unique, -libc::EIO, &[]);
                }
            }
        }
    }
}

/// Directory entries for one readdir or readdirplus answer, up to the size the kernel asked.
pub struct Dirents {
    out: Out,
    max: usize,
}

impl Dirents {
    /// Room for `max` bytes.
    pub fn new(max: u32) -> Dirents {
        Dirents {
            out: Out::with_capacity((max as usize).min(64 * 1024)),
            max: max as usize,
        }
    }

    /// Whether an entry named `name` still fits (`plus`: a readdirplus entry).
    pub fn fits(&self, name: &[u8], plus: bool) -> bool {
        let size = (abi::DIRENT_SIZE + name.len()).next_multiple_of(8) + if plus { abi::ENTRY_OUT_SIZE } else { 0 };
        self.out.bytes.len() + size <= self.max
    }

    /// Adds a readdir entry; false when full (the entry was not added).
    pub fn add(&mut self, ino: u64, offset: u64, kind: u32, name: &[u8]) -> bool {
        if !self.fits(name, false) {
            return false;
        }
        abi::dirent(&mut self.out, ino, offset, kind, name);
        true
    }

    /// Adds a readdirplus entry (an entry and its attributes); false when full.
    pub fn add_plus(&mut self, attr: &Attr, ttl: Duration, offset: u64, name: &[u8]) -> bool {
        if !self.fits(name, true) {
            return false;
        }
        abi::entry_out(&mut self.out, attr, ttl, ttl);
        abi::dirent(&mut self.out, attr.ino, offset, attr.dirent_type(), name);
        true
    }

    /// Sends them.
    pub fn send(self, reply: Reply) {
        reply.data(&self.out.bytes);
    }
}

/// Whether an I/O error means the connection is over.
pub fn is_disconnect(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENODEV)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// A channel whose replies arrive, one message each, on the returned socket.
    fn channel() -> (Arc<Channel>, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: a plain syscall filling a two-element array.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
        // SAFETY: both descriptors were just made and are owned by nobody else.
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        (Arc::new(Channel::from_fd(ours)), theirs)
    }

    /// Collects every reply sent on the channel, (unique, error), until it is closed.
    fn answers(socket: OwnedFd) -> std::thread::JoinHandle<Vec<(u64, i32)>> {
        use std::os::fd::AsRawFd;
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = [0u8; 256];
            loop {
                // SAFETY: buf is valid for writes of its length.
                let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 16 {
                    return out;
                }
                let error = i32::from_ne_bytes(buf[4..8].try_into().unwrap());
                let unique = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
                out.push((unique, error));
            }
        })
    }

    /// An interrupt handled on another worker while a request is being parked: whichever
    /// comes first, the request is answered EINTR, exactly once, without anyone taking it.
    #[test]
    fn an_interrupt_racing_a_park_is_never_lost() {
        let (channel, socket) = channel();
        let answered = answers(socket);
        let interrupts: Arc<Interrupts> = Arc::default();
        let rounds = 40_000u64;
        let start = Arc::new(std::sync::Barrier::new(2));
        let parker = {
            let (channel, interrupts, start) = (channel.clone(), interrupts.clone(), start.clone());
            std::thread::spawn(move || {
                let mut parked = Vec::new();
                for unique in 1..=rounds {
                    start.wait();
                    // A little work of varying length first, as a handler would do.
                    for _ in 0..(unique % 41) * 3 {
                        std::hint::spin_loop();
                    }
                    parked.push(Reply::new(unique, channel.clone(), interrupts.clone()).park());
                }
                parked
            })
        };
        for unique in 1..=rounds {
            start.wait();
            for _ in 0..(unique % 37) * 3 {
                std::hint::spin_loop();
            }
            interrupts.interrupt(unique);
        }
        let parked = parker.join().unwrap();
        let unanswered = parked.iter().filter(|p| !p.answered()).count();
        assert_eq!(
            unanswered, 0,
            "interrupts lost: their callers would wait for the fetch to end"
        );
        assert_eq!(interrupts.parked(), 0);
        drop((parked, channel));
        let mut got = answered.join().unwrap();
        got.sort();
        assert_eq!(got.len() as u64, rounds, "each request answered exactly once");
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, &(u, e))| u == i as u64 + 1 && e == -libc::EINTR)
        );
    }

    /// A reply taken back by its waiter is not answered again by a late interrupt.
    #[test]
    fn a_taken_reply_is_answered_once() {
        let (channel, socket) = channel();
        let answered = answers(socket);
        let interrupts: Arc<Interrupts> = Arc::default();
        let parked = Reply::new(7, channel, interrupts.clone()).park();
        let reply = parked.take().expect("nobody answered yet");
        interrupts.interrupt(7);
        reply.ok();
        assert!(parked.take().is_none());
        drop(parked);
        assert_eq!(answered.join().unwrap(), [(7, 0)]);
    }
}
