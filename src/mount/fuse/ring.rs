//! FUSE over io_uring (Linux 6.14+): requests handed to a thread on the caller's own CPU.
//!
//! With read(2) on /dev/fuse, the kernel wakes whichever worker sleeps on the device, most
//! often on the other CPU; an idle CPU of a virtual machine takes 40–55 µs to wake, and a cold
//! walk is mostly such round trips. Over io_uring the kernel keeps one queue per possible CPU
//! and puts a request from a process on CPU *n* into an entry of queue *n*, completing it on
//! the thread that registered the entry: here a thread pinned to CPU *n*, so the request is
//! served where it was made.
//!
//! Each CPU's queue is served by a few rings (`rings_per_cpu`), each its own thread with its own
//! io_uring and [`DEPTH`] entries to start with: a handler that blocks (a cold disk read)
//! delays only the requests the kernel put into its own ring's entries, and the CPU's other
//! ring goes on. A handler on a ring thread must never wait for something another request may
//! hold — a page lock, say, held by a READ that may sit in the same ring: read-ahead's pushes
//! go to a thread of their own for that reason. A request that is parked keeps its entry until it is answered, so a
//! replacement is registered for it (entries cannot be unregistered; a ring holds at most
//! [`ENTRIES_MAX`]). Answers given on other threads come back through the ring's
//! [`Mailbox`](super::entry::Mailbox), so that only the ring's thread submits to its ring.
//!
//! The rings are made before INIT is answered, and FUSE over io_uring is accepted only if every
//! one of them could be: every possible CPU's queue must get an entry, or requests wait for
//! them forever. What still comes through /dev/fuse (forgets, interrupts; everything, if a
//! REGISTER is refused and the kernel falls back) is read by the session's classic workers.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::abi::{InHeader, ring as abi};
use super::entry::{Entry, Mailbox};
use super::request::Request;
use super::session::Event;

/// Submission queue slots of one ring (commands beyond it wait in the kernel, not here).
const SQ_SIZE: u32 = 64;
/// Entries each ring registers at the start.
const DEPTH: usize = 8;
/// A ring registers another entry when fewer than this many wait for requests.
const IDLE_MIN: usize = 4;
/// The most entries one ring registers: beyond it, a request parked on a CPU whose every entry
/// is held waits for one of them to be answered.
pub const ENTRIES_MAX: usize = 256;
/// The `user_data` of the eventfd read.
const WAKE: u64 = u64::MAX;

/// The rings' setup flags: none. Requests come only to idle rings (one entry each), so the
/// task work that hands them over rarely interrupts a thread at work, and the prototype
/// measured no gain from `COOP_TASKRUN` or `DEFER_TASKRUN` (docs/DESIGN.md, "The cold walk").
type Uring = IoUring<squeue::Entry128, cqueue::Entry>;

/// What a ring's thread hands each request to (the filesystem comes after the rings are made).
pub(super) trait Handler: Send + Sync {
    /// Answers `request`, which came in `entry` (its reply answers into the entry).
    fn handle(&self, request: Request<'_>, entry: Arc<Entry>);
}

/// The number of possible CPUs: the kernel's number of queues.
pub fn possible_cpus() -> usize {
    let listed = std::fs::read_to_string("/sys/devices/system/cpu/possible").ok();
    let counted = listed.as_deref().and_then(|list| {
        list.trim().split(',').try_fold(0usize, |n, range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            Some(n + last.parse::<usize>().ok()?.checked_sub(first.parse().ok()?)? + 1)
        })
    });
    // SAFETY: a plain getter.
    counted.unwrap_or_else(|| usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }).unwrap_or(1))
}

/// Rings made and not yet serving: INIT is answered in between.
pub(super) struct Prepared {
    rings: Vec<(u16, Uring, Arc<Mailbox>)>,
    /// Queues (possible CPUs).
    pub queues: usize,
    /// Rings per queue.
    pub per_queue: usize,
}

/// Makes `per_queue` rings for every possible CPU, each with `fuse` as its fixed file 0. Fails
/// if any cannot be made (io_uring refused by `io_uring_disabled` or a seccomp filter, memory):
/// then FUSE over io_uring must not be accepted.
pub(super) fn prepare(fuse: RawFd, per_queue: usize) -> io::Result<Prepared> {
    let queues = possible_cpus();
    let per_queue = per_queue.max(1);
    let mut rings = Vec::with_capacity(queues * per_queue);
    for qid in 0..queues {
        for _ in 0..per_queue {
            // SQE128 comes with Entry128: URING_CMD carries `struct fuse_uring_cmd_req`.
            let uring = Uring::builder().build(SQ_SIZE)?;
            uring.submitter().register_files(&[fuse])?;
            let qid = u16::try_from(qid).map_err(|_| io::Error::other("more CPUs than FUSE has queue ids"))?;
            rings.push((qid, uring, Arc::new(Mailbox::new()?)));
        }
    }
    Ok(Prepared {
        rings,
        queues,
        per_queue,
    })
}

/// Serving rings: their threads, and how to stop them.
pub(super) struct Rings {
    threads: Vec<JoinHandle<()>>,
    mailboxes: Vec<Arc<Mailbox>>,
}

impl Prepared {
    /// Starts every ring's thread: it pins itself to its CPU, registers its first entry of
    /// `payload` bytes and serves with `handler`. `bad_register` (a test hook) makes every
    /// first REGISTER name a queue that does not exist, which the kernel refuses.
    ///
    /// Nothing is registered unless every thread could be started: a queue without its rings
    /// would hold its CPU's requests forever.
    pub fn start(
        self,
        handler: Arc<dyn Handler>,
        payload: usize,
        bad_register: bool,
        events: Sender<Event>,
    ) -> io::Result<Rings> {
        let queues = self.queues;
        let mut rings = Rings {
            threads: Vec::new(),
            mailboxes: Vec::new(),
        };
        let mut go = Vec::new();
        for (k, (qid, uring, mailbox)) in self.rings.into_iter().enumerate() {
            let ring = Ring {
                uring,
                qid,
                mailbox: mailbox.clone(),
                entries: Vec::new(),
                last: Vec::new(),
                in_kernel: 0,
                wake_count: Box::new(0),
                payload,
                may_grow: true,
                full_warned: false,
                closing: false,
            };
            let (handler, events) = (handler.clone(), events.clone());
            let bad_qid = bad_register.then_some(queues as u16);
            let (start, started) = std::sync::mpsc::channel::<bool>();
            let spawned = std::thread::Builder::new()
                .name(format!("fuse-ring-{qid}-{}", k % self.per_queue))
                .spawn(move || {
                    if started.recv() == Ok(true) {
                        serve(ring, handler, events, bad_qid);
                    }
                });
            match spawned {
                Ok(thread) => {
                    rings.threads.push(thread);
                    rings.mailboxes.push(mailbox);
                    go.push(start);
                }
                Err(e) => {
                    drop(go);
                    rings.stop();
                    return Err(e);
                }
            }
        }
        for start in go {
            let _ = start.send(true);
        }
        Ok(rings)
    }
}

impl Rings {
    /// Ends every ring's thread (after the connection ended) and waits for them.
    pub fn stop(self) {
        for mailbox in &self.mailboxes {
            mailbox.stop();
        }
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("a FUSE ring thread panicked");
            }
        }
    }
}

/// One ring, owned by its thread.
struct Ring {
    /// First, so that it is closed before the entries' buffers go.
    uring: Uring,
    qid: u16,
    mailbox: Arc<Mailbox>,
    entries: Vec<Arc<Entry>>,
    /// Each entry's last command (REGISTER or COMMIT_AND_FETCH), to send again after EAGAIN.
    last: Vec<u32>,
    /// Commands the kernel holds (REGISTER or COMMIT_AND_FETCH not completed yet).
    in_kernel: usize,
    /// Where the eventfd read lands; boxed, so it stays put while the read is in flight.
    wake_count: Box<u64>,
    payload: usize,
    /// Whether entries may still be added (not after the kernel refused one).
    may_grow: bool,
    full_warned: bool,
    /// The connection is over: the thread ends once the kernel has returned every entry.
    closing: bool,
}

thread_local! {
    /// The ring this thread serves, if it is a ring's thread. The loop borrows it only between
    /// handlers, so that a reply answered while its handler runs commits at once from here.
    static SERVING: RefCell<Option<Ring>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's ring (a ring thread's, outside its handlers).
fn with_ring<T>(f: impl FnOnce(&mut Ring) -> T) -> T {
    SERVING.with_borrow_mut(|ring| f(ring.as_mut().expect("a ring thread has its ring")))
}

/// Commits `entry` now if this thread is its ring's: the answer reaches the kernel (and the
/// waiting caller) before the handler goes on. False elsewhere: the mailbox takes it.
pub(super) fn commit_here(entry: &Entry) -> bool {
    SERVING
        .try_with(|serving| {
            let Ok(mut serving) = serving.try_borrow_mut() else {
                return false;
            };
            match serving.as_mut() {
                Some(ring) if Arc::ptr_eq(&ring.mailbox, &entry.mailbox) => {
                    ring.commit(entry);
                    if let Err(e) = ring.uring.submit() {
                        tracing::debug!("io_uring_enter: {e}; the next wait submits it");
                    }
                    true
                }
                _ => false,
            }
        })
        .unwrap_or(false)
}

/// A ring thread: serves until the connection ends or the session stops it.
fn serve(ring: Ring, handler: Arc<dyn Handler>, events: Sender<Event>, bad_qid: Option<u16>) {
    pin_to(ring.qid as usize);
    SERVING.set(Some(ring));
    with_ring(|ring| {
        for _ in 0..DEPTH {
            ring.register(bad_qid);
        }
        ring.arm_wake();
    });
    let mut message = Vec::with_capacity(4096);
    'serving: loop {
        for (user_data, result) in with_ring(Ring::wait) {
            if user_data == WAKE {
                if with_ring(|ring| ring.woken(result)) {
                    break 'serving;
                }
                continue;
            }
            let Some(entry) = with_ring(|ring| ring.completed(user_data, result, &events)) else {
                continue;
            };
            if entry.take_request(&mut message).is_some()
                && let Some(request) = Request::parse(&message)
            {
                if request.is_one_way() {
                    tracing::warn!("the kernel sent {} on a ring; its entry stays held", request.op_name());
                }
                handler.handle(request, entry.clone());
            } else if let Some(header) = InHeader::parse(&message) {
                tracing::warn!("ignoring a malformed request from the kernel on a ring");
                entry.answer(header.unique, -libc::EIO, &[]);
            }
        }
        if with_ring(|ring| ring.closing && ring.in_kernel == 0) {
            break;
        }
    }
    // The ring is closed here, before the entries that parked replies may still hold.
    drop(SERVING.take());
}

impl Ring {
    /// Pushes one SQE, submitting what is queued when the submission queue is full.
    fn push(&mut self, sqe: &squeue::Entry128) {
        loop {
            // SAFETY: every buffer an SQE points at (an entry's iovecs and buffers, the wake
            // counter) lives until the ring is closed: entries are never dropped before it.
            if unsafe { self.uring.submission().push(sqe) }.is_ok() {
                return;
            }
            if let Err(e) = self.uring.submit() {
                tracing::debug!("io_uring_enter: {e}");
            }
        }
    }

    /// Registers one more entry: `bad_qid` names a queue the kernel does not have (test hook).
    fn register(&mut self, bad_qid: Option<u16>) {
        let index = self.entries.len() as u32;
        let entry = match Entry::new(index, self.mailbox.clone(), self.payload) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!("cannot make a FUSE ring entry: {e}");
                self.may_grow = false;
                return;
            }
        };
        let sqe = command(
            abi::CMD_REGISTER,
            bad_qid.unwrap_or(self.qid),
            0,
            Some(entry.iovecs()),
            index,
        );
        self.entries.push(entry);
        self.last.push(abi::CMD_REGISTER);
        self.push(&sqe);
        self.in_kernel += 1;
    }

    /// Queues COMMIT_AND_FETCH of an answered entry: the answer goes to the kernel and the
    /// entry waits for the next request, in one command.
    fn commit(&mut self, entry: &Entry) {
        let sqe = command(
            abi::CMD_COMMIT_AND_FETCH,
            self.qid,
            entry.commit_id(),
            None,
            entry.index,
        );
        self.last[entry.index as usize] = abi::CMD_COMMIT_AND_FETCH;
        self.push(&sqe);
        self.in_kernel += 1;
    }

    /// Reads the mailbox's eventfd through the ring, so that a post wakes the thread.
    fn arm_wake(&mut self) {
        let counter: *mut u64 = &mut *self.wake_count;
        let read = opcode::Read::new(types::Fd(self.mailbox.eventfd()), counter.cast(), 8)
            .build()
            .user_data(WAKE);
        self.push(&read.into());
    }

    /// Submits what is queued and waits for at least one completion; returns them all.
    fn wait(&mut self) -> Vec<(u64, i32)> {
        loop {
            match self.uring.submit_and_wait(1) {
                Ok(_) => break,
                // A signal, or completions to reap first.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => break,
                Err(e) => {
                    tracing::error!("io_uring_enter on FUSE queue {}: {e}", self.qid);
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
        self.uring.completion().map(|c| (c.user_data(), c.result())).collect()
    }

    /// The eventfd was read: commits the entries answered elsewhere. True if the thread must end.
    fn woken(&mut self, result: i32) -> bool {
        if self.mailbox.stopping() {
            return true;
        }
        for index in self.mailbox.take() {
            if let Some(entry) = self.entries.get(index as usize).cloned() {
                self.commit(&entry);
            }
        }
        if result >= 0 || result == -libc::EINTR || result == -libc::EAGAIN {
            self.arm_wake();
        }
        false
    }

    /// An entry's command completed: the entry if a request is in it now.
    fn completed(&mut self, user_data: u64, result: i32, events: &Sender<Event>) -> Option<Arc<Entry>> {
        self.in_kernel -= 1;
        let entry = self.entries.get(user_data as usize)?.clone();
        if result >= 0 {
            self.replenish();
            return Some(entry);
        }
        let registered = self.last[entry.index as usize] == abi::CMD_REGISTER;
        match -result {
            // Not ready, or a signal: the same command again.
            libc::EAGAIN | libc::EINTR if registered => self.resubmit_register(&entry),
            libc::EAGAIN | libc::EINTR => self.commit(&entry),
            // The connection is over (unmounted, aborted, or this ring is being closed).
            libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV => self.closing = true,
            errno if registered => {
                let e = io::Error::from_raw_os_error(errno);
                if (entry.index as usize) < DEPTH {
                    // One of the first: the kernel turned io_uring off for the connection.
                    if self.may_grow {
                        let _ = events.send(Event::Refused(e));
                    }
                } else {
                    tracing::warn!("FUSE queue {} could not add a ring entry: {e}", self.qid);
                }
                self.may_grow = false;
            }
            errno => {
                // The kernel did not take the answer: the entry is lost to this ring.
                let e = io::Error::from_raw_os_error(errno);
                tracing::warn!("FUSE queue {}: committing an answer failed: {e}", self.qid);
                self.replenish();
            }
        }
        None
    }

    fn resubmit_register(&mut self, entry: &Entry) {
        let sqe = command(abi::CMD_REGISTER, self.qid, 0, Some(entry.iovecs()), entry.index);
        self.push(&sqe);
        self.in_kernel += 1;
    }

    /// An entry was taken by a request (or lost): if fewer than [`IDLE_MIN`] are left waiting
    /// for requests, registers another. Requests are parked in their entries (held until
    /// answered), and a request that finds none idle waits in the kernel's queue until some
    /// entry of its CPU is committed — a newly registered one does not take it — and, in that
    /// queue, cannot be interrupted. So a ring keeps idle entries ahead of what its callers
    /// park; it grows to the most it held at once plus a few, within [`ENTRIES_MAX`].
    fn replenish(&mut self) {
        if self.in_kernel >= IDLE_MIN {
            return;
        }
        if self.may_grow && self.entries.len() < ENTRIES_MAX {
            self.register(None);
        } else if !self.full_warned {
            self.full_warned = true;
            tracing::warn!(
                "{} requests wait in one of FUSE queue {}'s rings; new requests on CPU {} may wait \
                 until one of them is answered",
                self.entries.len(),
                self.qid,
                self.qid
            );
        }
    }
}

/// After FUSE over io_uring was accepted at INIT with no rings to serve it: one REGISTER the
/// kernel refuses (a queue that does not exist) turns io_uring off for the connection again,
/// and its requests come through /dev/fuse.
pub(super) fn refuse(fuse: RawFd, queues: usize, payload: usize) -> io::Result<()> {
    let mut uring = Uring::builder().build(2)?;
    uring.submitter().register_files(&[fuse])?;
    let entry = Entry::new(0, Arc::new(Mailbox::new()?), payload)?;
    let qid = u16::try_from(queues).unwrap_or(u16::MAX);
    let sqe = command(abi::CMD_REGISTER, qid, 0, Some(entry.iovecs()), 0);
    // SAFETY: the entry's iovecs and buffers outlive the ring, closed below first.
    unsafe { uring.submission().push(&sqe) }.map_err(|_| io::Error::other("a full new ring"))?;
    uring.submit_and_wait(1)?;
    let result = uring.completion().next().map_or(0, |c| c.result());
    drop(uring);
    if result >= 0 {
        return Err(io::Error::other("the kernel took a REGISTER it should have refused"));
    }
    Ok(())
}

/// An `IORING_OP_URING_CMD` on fixed file 0 (/dev/fuse): `struct fuse_uring_cmd_req` { flags,
/// commit_id, qid } in the SQE's command area; for REGISTER, `addr` points at the entry's two
/// iovecs.
fn command(op: u32, qid: u16, commit_id: u64, iovecs: Option<*const libc::iovec>, index: u32) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    let mut builder = opcode::UringCmd80::new(types::Fixed(0), op).cmd(cmd);
    if let Some(iovecs) = iovecs {
        builder = builder.addr(Some(iovecs as u64));
    }
    let mut sqe = builder.build().user_data(u64::from(index));
    if iovecs.is_some() {
        // REGISTER wants sqe->len = 2 (the iovec count), for which the builder has no field:
        // it is set in the raw SQE (`struct io_uring_sqe`: `len` at byte 24).
        // SAFETY: Entry128 is repr(C): a 64-byte io_uring_sqe, then 64 command bytes.
        let raw = unsafe { &mut *(&mut sqe as *mut squeue::Entry128).cast::<[u8; 128]>() };
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    }
    sqe
}

/// Pins this thread to `cpu`: the kernel hands a queue's requests over on the thread that
/// registered its entries, and the point is to do that on the caller's CPU.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity on this thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        // Offline, or outside this process's cpuset: served from elsewhere, just slower.
        tracing::debug!(
            "cannot pin a FUSE ring thread to CPU {cpu}: {}",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_register_command_says_two_iovecs() {
        let iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2];
        let sqe = command(abi::CMD_REGISTER, 3, 0, Some(iov.as_ptr()), 7);
        // SAFETY: reading the 128 bytes of a repr(C) Entry128.
        let raw = unsafe { &*(&sqe as *const squeue::Entry128).cast::<[u8; 128]>() };
        assert_eq!(raw[0], io_uring::opcode::UringCmd80::CODE, "IORING_OP_URING_CMD");
        assert_eq!(u32::from_ne_bytes(raw[24..28].try_into().unwrap()), 2, "sqe->len");
        assert_eq!(
            u64::from_ne_bytes(raw[16..24].try_into().unwrap()),
            iov.as_ptr() as u64,
            "sqe->addr"
        );
        assert_eq!(
            u32::from_ne_bytes(raw[8..12].try_into().unwrap()),
            abi::CMD_REGISTER,
            "sqe->cmd_op"
        );
        assert_eq!(u64::from_ne_bytes(raw[32..40].try_into().unwrap()), 7, "sqe->user_data");
        // struct fuse_uring_cmd_req at sqe->cmd (byte 48): flags, commit_id, qid.
        assert_eq!(u16::from_ne_bytes(raw[64..66].try_into().unwrap()), 3, "qid");
        let commit = command(abi::CMD_COMMIT_AND_FETCH, 1, 0xfeed, None, 2);
        // SAFETY: as above.
        let raw = unsafe { &*(&commit as *const squeue::Entry128).cast::<[u8; 128]>() };
        assert_eq!(u64::from_ne_bytes(raw[56..64].try_into().unwrap()), 0xfeed, "commit_id");
        assert_eq!(u32::from_ne_bytes(raw[24..28].try_into().unwrap()), 0, "no iovecs");
    }

    #[test]
    fn possible_cpus_covers_every_online_one() {
        // SAFETY: a plain getter.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as usize;
        assert!(possible_cpus() >= online.max(1));
    }
}
