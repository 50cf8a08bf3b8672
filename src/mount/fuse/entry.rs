//! One entry of a FUSE-over-io_uring ring: the two buffers the kernel copies a request into
//! and takes its answer from, and the way an answer written on any thread gets to the one
//! thread that may submit to the ring.
//!
//! A [`Reply`](super::Reply) of a request that came on a ring holds its entry. Answering writes
//! the `fuse_out_header` and the body straight into the entry's buffers (the one copy a
//! `writev` to /dev/fuse would make) and then has the entry committed: at once when the answer
//! is given on the ring's own thread while it handles the request, otherwise through the
//! ring's [`Mailbox`] and its eventfd, which wakes that thread.

use std::cell::UnsafeCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::abi::ring;

/// Room for `struct fuse_uring_req_header` (288 bytes).
const HEADER_ROOM: usize = 512;

/// A ring entry's buffers.
///
/// Who may touch them follows the entry's state, which only the ring's thread changes: while
/// the kernel holds the entry (registered, or committed and fetching), nobody in this process
/// does; once its completion says a request is in it, the ring's thread copies the request
/// out, and from then until the entry is committed again the one [`Reply`](super::Reply) that
/// holds it may write its answer in. The kernel reads the answer during the commit, on the
/// ring's thread, after the writer handed the entry over (a lock or the ring thread itself
/// orders the two).
pub(super) struct Entry {
    /// Its index in its ring (the `user_data` of its commands).
    pub index: u32,
    /// The ring it belongs to.
    pub mailbox: Arc<Mailbox>,
    header: UnsafeCell<[u8; HEADER_ROOM]>,
    payload: Payload,
    /// The two iovecs REGISTER points at: header, payload.
    iov: UnsafeCell<[libc::iovec; 2]>,
}

// SAFETY: the buffers are shared under the protocol described on `Entry`; the rest is Sync.
unsafe impl Sync for Entry {}
// SAFETY: as above; the raw pointers point into the entry's own allocations.
unsafe impl Send for Entry {}

impl Entry {
    /// A new entry of `mailbox`'s ring with a payload buffer of `payload` bytes.
    pub fn new(index: u32, mailbox: Arc<Mailbox>, payload: usize) -> io::Result<Arc<Entry>> {
        let entry = Arc::new(Entry {
            index,
            mailbox,
            header: UnsafeCell::new([0; HEADER_ROOM]),
            payload: Payload::new(payload)?,
            iov: UnsafeCell::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; 2],
            ),
        });
        // SAFETY: nobody else has the entry yet.
        unsafe {
            *entry.iov.get() = [
                libc::iovec {
                    iov_base: entry.header.get().cast(),
                    iov_len: ring::HEADER_SIZE,
                },
                libc::iovec {
                    iov_base: entry.payload.ptr.cast(),
                    iov_len: entry.payload.len,
                },
            ];
        }
        Ok(entry)
    }

    /// What REGISTER hands the kernel (it keeps the two buffers for the entry's life).
    pub fn iovecs(&self) -> *const libc::iovec {
        self.iov.get().cast()
    }

    /// The request the kernel just put in the entry, as one message in /dev/fuse's layout
    /// (`fuse_in_header`, the operation's first argument, the rest), written into `message`.
    /// None if the sizes do not add up (`message` then holds the `fuse_in_header` alone).
    ///
    /// Called by the ring's thread only, between the completion and the dispatch.
    pub fn take_request(&self, message: &mut Vec<u8>) -> Option<()> {
        // SAFETY: the kernel handed the entry over (its completion came); no reply holds it yet.
        let header = unsafe { &*self.header.get() };
        let field = |at: usize, n: usize| &header[at..at + n];
        let len = u32::from_ne_bytes(field(ring::IN_OUT, 4).try_into().ok()?) as usize;
        let payload = u32::from_ne_bytes(field(ring::PAYLOAD_SIZE, 4).try_into().ok()?) as usize;
        message.clear();
        message.extend_from_slice(field(ring::IN_OUT, super::abi::InHeader::SIZE));
        let op_in = len.checked_sub(super::abi::InHeader::SIZE + payload)?;
        if op_in > ring::OP_IN_SIZE || payload > self.payload.len {
            return None;
        }
        message.extend_from_slice(field(ring::OP_IN, op_in));
        // SAFETY: as above; `payload` is within the buffer (checked).
        message.extend_from_slice(unsafe { std::slice::from_raw_parts(self.payload.ptr, payload) });
        Some(())
    }

    /// The commit id the kernel gave the request in the entry.
    pub fn commit_id(&self) -> u64 {
        // SAFETY: read by the ring's thread while it commits, after the answer was written.
        let header = unsafe { &*self.header.get() };
        u64::from_ne_bytes(
            header[ring::COMMIT_ID..ring::COMMIT_ID + 8]
                .try_into()
                .unwrap_or_default(),
        )
    }

    /// Answers the request in the entry: `error` (0 or a negative errno) and `body`, then has
    /// the entry committed. A body larger than the payload buffer (never asked for: the kernel
    /// sizes requests to it) is answered EIO.
    ///
    /// Called by the reply holding the entry, once.
    pub fn answer(self: &Arc<Entry>, unique: u64, error: i32, body: &[&[u8]]) {
        let mut len: usize = if error == 0 {
            body.iter().map(|b| b.len()).sum()
        } else {
            0
        };
        let mut error = error;
        if len > self.payload.len {
            tracing::error!(
                "the answer to request {unique} ({len} bytes) is larger than a ring entry ({} bytes); answering EIO",
                self.payload.len
            );
            (error, len) = (-libc::EIO, 0);
        }
        // SAFETY: this reply holds the entry (see `Entry`); nobody else reads or writes it now.
        unsafe {
            let header = &mut *self.header.get();
            header[ring::IN_OUT..ring::IN_OUT + 4].copy_from_slice(&((16 + len) as u32).to_ne_bytes());
            header[ring::IN_OUT + 4..ring::IN_OUT + 8].copy_from_slice(&error.to_ne_bytes());
            header[ring::IN_OUT + 8..ring::IN_OUT + 16].copy_from_slice(&unique.to_ne_bytes());
            header[ring::PAYLOAD_SIZE..ring::PAYLOAD_SIZE + 4].copy_from_slice(&(len as u32).to_ne_bytes());
            if len > 0 {
                let mut at = 0;
                for part in body {
                    std::ptr::copy_nonoverlapping(part.as_ptr(), self.payload.ptr.add(at), part.len());
                    at += part.len();
                }
            }
        }
        if !super::ring::commit_here(self) {
            self.mailbox.post(self.index);
        }
    }
}

/// A payload buffer: anonymous memory, reserved but not committed, so the pages an entry never
/// uses (most of its megabyte: requests and answers are mostly small) cost nothing.
struct Payload {
    ptr: *mut u8,
    len: usize,
}

impl Payload {
    fn new(len: usize) -> io::Result<Payload> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Payload { ptr: ptr.cast(), len })
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once. Entries outlive their ring (the
        // ring's thread closes the ring first), so the kernel no longer writes here.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// What other threads hold of a ring: answers for its entries, a stop flag, and an eventfd
/// the ring reads, so that a write to it wakes the ring's thread.
pub(super) struct Mailbox {
    answered: Mutex<Vec<u32>>,
    wake: OwnedFd,
    stop: AtomicBool,
}

impl Mailbox {
    /// An empty mailbox with its own eventfd.
    pub fn new() -> io::Result<Mailbox> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Mailbox {
            answered: Mutex::default(),
            // SAFETY: just made, owned here.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
            stop: AtomicBool::new(false),
        })
    }

    /// The eventfd the ring reads.
    pub fn eventfd(&self) -> i32 {
        self.wake.as_raw_fd()
    }

    /// Entry `index` was answered: its ring's thread commits it.
    pub fn post(&self, index: u32) {
        self.answered.lock().unwrap_or_else(|e| e.into_inner()).push(index);
        self.ring();
    }

    /// The entries answered since the last call.
    pub fn take(&self) -> Vec<u32> {
        std::mem::take(&mut *self.answered.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Asks the ring's thread to end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.ring();
    }

    /// Whether the ring's thread was asked to end.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn ring(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}
