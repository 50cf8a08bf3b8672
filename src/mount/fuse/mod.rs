//! FUSE, spoken directly: the kernel protocol cab's mount needs, and nothing else.
//!
//! cab used fuser until the mount had to answer every request in bounded time. fuser 0.18 (the
//! newest release) answers FUSE_INTERRUPT with ENOSYS, which turns interrupts off for the
//! whole connection: a process waiting on a fetch can then not be freed by Ctrl-C or even
//! SIGKILL until the fetch ends. Nor can it declare a request timeout in FUSE_INIT, or let a
//! reply be parked without holding a worker thread's request context. What cab needs is small
//! — a dozen read-only operations — so it is written here: [`abi`] (the wire format),
//! [`request`] (parsing), [`reply`] (answers, parking, interrupts), [`channel`] (mounting and
//! the descriptor), [`session`] (handshake and the serving threads), and FUSE over io_uring
//! where the kernel offers it: [`ring`] (per-CPU rings and their threads), [`entry`] (a
//! ring entry's buffers, answered into from any thread) and [`watchdog`] (the interrupts the
//! kernel does not send over io_uring).

pub mod abi;
pub mod channel;
mod entry;
pub mod reply;
pub mod request;
mod ring;
pub mod session;
mod watchdog;

pub use abi::{Attr, InitIn, InitOut};
pub use channel::{Channel, MountOptions, unmount};
pub use reply::{Dirents, Interrupts, Parked, Reply};
pub use request::{Op, Request};
pub use session::{Filesystem, Session, SessionOptions};
