//! The session: the INIT handshake, then the threads that serve requests — classic workers
//! that read /dev/fuse, or, when the kernel offers FUSE over io_uring and the options allow it,
//! the per-CPU rings of [`super::ring`] with one classic worker beside them for what still
//! comes through /dev/fuse (forgets, interrupts). The session itself answers what needs no
//! filesystem: INTERRUPT (parked requests answer EINTR), forgets (passed on, never answered),
//! anything that would write (EROFS), and what cab does not implement (ENOSYS, so the kernel
//! stops asking).

use std::io;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use super::abi::{self, InitIn, InitOut, init};
use super::channel::Channel;
use super::entry::Entry;
use super::reply::{Interrupts, Reply, is_disconnect};
use super::request::{Op, Request};
use super::ring;
use super::watchdog::Watchdog;

/// What a filesystem implements to be served.
pub trait Filesystem: Send + Sync + 'static {
    /// Chooses the connection's settings from what the kernel offers.
    fn init(&self, offered: &InitIn) -> InitOut;

    /// Answers one request (now, or later through a parked reply).
    fn handle(self: &Arc<Self>, request: Request<'_>, reply: Reply);

    /// The kernel dropped `nlookup` references to each inode.
    fn forget(&self, nodes: &[(u64, u64)]);
}

/// How the session serves.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Serve over io_uring when the kernel offers it (Linux 6.14+, while
    /// `/sys/module/fuse/parameters/enable_uring` is on); false: always through /dev/fuse.
    pub uring: bool,
    /// Over io_uring: rings per CPU, each its own thread pinned to the CPU (a handler that
    /// blocks holds only its own ring).
    pub rings_per_cpu: usize,
    /// Test hook: every ring's first REGISTER names a queue that does not exist, so the kernel
    /// refuses it and falls back to /dev/fuse, as it does after any refused REGISTER.
    #[doc(hidden)]
    pub bad_register: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            uring: true,
            rings_per_cpu: 2,
            bad_register: false,
        }
    }
}

/// A connection after its handshake, ready to serve.
pub struct Session {
    channel: Arc<Channel>,
    interrupts: Arc<Interrupts>,
    buffer_size: usize,
    /// FUSE over io_uring, accepted at INIT: its rings, and their entries' payload size.
    rings: Option<(ring::Prepared, usize)>,
    /// Why requests come through /dev/fuse, when they do.
    classic_because: String,
    bad_register: bool,
}

/// What the threads serving over io_uring tell the session.
pub(super) enum Event {
    /// The kernel refused a ring's first REGISTER and turned io_uring off for the connection:
    /// unless every queue had an entry already, requests now come through /dev/fuse.
    Refused(io::Error),
    /// The classic worker beside the rings ended: the connection is over.
    Ended(io::Result<()>),
}

impl Session {
    /// Answers the kernel's INIT on `channel` with what `fs` chooses, and FUSE over io_uring
    /// when it is offered, allowed by `options`, and its rings could be made.
    pub fn handshake<F: Filesystem>(fs: &F, channel: Channel, options: &SessionOptions) -> io::Result<Session> {
        let mut buf = vec![0u8; 64 * 1024 + 4096];
        loop {
            let n = channel.receive(&mut buf)?;
            let Some(request) = Request::parse(&buf[..n]) else {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "a malformed first request"));
            };
            let Op::Init(offered) = request.op else {
                let _ = channel.send_message(request.unique, -libc::EIO, &[]);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the first request was not INIT",
                ));
            };
            if offered.major > abi::MAJOR {
                // A newer kernel protocol: say ours, and the kernel asks again.
                let out = InitOut::default().encode(abi::MINOR);
                channel.send_message(request.unique, 0, &[&out[..8]])?;
                continue;
            }
            if offered.major < abi::MAJOR || offered.minor < 31 {
                let _ = channel.send_message(request.unique, -libc::EPROTO, &[]);
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "the kernel speaks FUSE {}.{}; cab needs 7.31 or newer (Linux 5.4+)",
                        offered.major, offered.minor
                    ),
                ));
            }
            let mut chosen = fs.init(&offered);
            chosen.flags &= offered.flags;
            let (rings, classic_because) = Session::rings(&channel, &offered, &chosen, options);
            if rings.is_some() {
                chosen.flags |= init::OVER_IO_URING;
            }
            let minor = offered.minor.min(abi::MINOR);
            channel.send_message(request.unique, 0, &[&chosen.encode(minor)])?;
            let buffer_size = (chosen.max_write as usize + 4096).max(64 * 1024 + 4096);
            return Ok(Session {
                channel: Arc::new(channel),
                interrupts: Arc::default(),
                buffer_size,
                rings,
                classic_because,
                bad_register: options.bad_register,
            });
        }
    }

    /// The rings for FUSE over io_uring, made before INIT is answered (the kernel hangs every
    /// request of a connection that accepted it and registers nothing); or why there are none.
    fn rings(
        channel: &Channel,
        offered: &InitIn,
        chosen: &InitOut,
        options: &SessionOptions,
    ) -> (Option<(ring::Prepared, usize)>, String) {
        if offered.flags & init::OVER_IO_URING == 0 {
            let why = "the kernel does not offer FUSE over io_uring (Linux 6.14+, with \
                       /sys/module/fuse/parameters/enable_uring on)";
            return (None, why.into());
        }
        if !options.uring {
            return (None, "FUSE over io_uring is turned off".into());
        }
        match ring::prepare(channel.raw_fd(), options.rings_per_cpu) {
            Ok(prepared) => {
                let pages = (chosen.flags & init::MAX_PAGES != 0).then_some(chosen.max_pages);
                (
                    Some((prepared, abi::ring::payload_size(chosen.max_write, pages))),
                    String::new(),
                )
            }
            Err(e) => (None, format!("io_uring is refused here ({e})")),
        }
    }

    /// The parked requests and pending interrupts of this connection.
    pub fn interrupts(&self) -> &Arc<Interrupts> {
        &self.interrupts
    }

    /// The main channel (for notifications).
    pub fn channel(&self) -> &Arc<Channel> {
        &self.channel
    }

    /// Whether requests are served over io_uring (accepted at INIT).
    pub fn over_io_uring(&self) -> bool {
        self.rings.is_some()
    }

    /// Serves until the connection ends (unmounted or aborted): over io_uring if it was
    /// accepted, else with `threads` workers reading /dev/fuse. `serving` is called once the
    /// threads that answer are running (whoever waits for "mounted" finds them there).
    pub fn run<F: Filesystem>(mut self, fs: Arc<F>, threads: usize, serving: impl FnOnce()) -> io::Result<()> {
        let Some((prepared, payload)) = self.rings.take() else {
            tracing::info!(
                "serving FUSE requests through /dev/fuse ({threads} workers; {})",
                self.classic_because
            );
            let workers = self.workers(&fs, 0, threads.max(1))?;
            serving();
            return join(workers);
        };
        let (queues, per_queue) = (prepared.queues, prepared.per_queue);
        let (events, news) = mpsc::channel();
        let handler = Arc::new(Served {
            fs: fs.clone(),
            channel: self.channel.clone(),
            interrupts: self.interrupts.clone(),
        });
        let rings = match prepared.start(handler, payload, self.bad_register, events.clone()) {
            Ok(rings) => rings,
            Err(e) => {
                // io_uring was accepted at INIT and nothing will register: a refused REGISTER
                // turns it off again, and everything comes through /dev/fuse.
                tracing::warn!("cannot start the FUSE rings ({e}); serving through /dev/fuse");
                ring::refuse(self.channel.raw_fd(), queues, payload)?;
                let workers = self.workers(&fs, 0, threads.max(1))?;
                serving();
                return join(workers);
            }
        };
        tracing::info!("serving FUSE requests over io_uring ({queues} queues, {per_queue} rings each)");
        // Interrupts the kernel does not send for requests that came over a ring.
        let watchdog = Watchdog::start(self.interrupts.clone())?;
        // Forgets and interrupts still come through /dev/fuse: one classic worker reads them,
        // and says when the connection is over.
        let device = {
            let (fs, channel, interrupts, size) = (
                fs.clone(),
                self.channel.clone(),
                self.interrupts.clone(),
                self.buffer_size,
            );
            thread::Builder::new().name("fuse-dev".into()).spawn(move || {
                let _ = events.send(Event::Ended(work(fs, channel, interrupts, size)));
            })?
        };
        serving();
        let mut classic = Vec::new();
        let result = loop {
            match news.recv() {
                Ok(Event::Refused(e)) if classic.is_empty() => {
                    tracing::warn!(
                        "the kernel refused a FUSE ring entry ({e}) and falls back to /dev/fuse: \
                         serving through it with {threads} workers as well"
                    );
                    classic = self.workers(&fs, 1, threads.max(2))?;
                }
                Ok(Event::Refused(_)) => {}
                Ok(Event::Ended(result)) => break result,
                Err(_) => break Err(io::Error::other("the FUSE device worker vanished")),
            }
        };
        // The connection is over: the rings' commands end, or their threads are told to.
        rings.stop();
        drop(watchdog);
        let _ = device.join();
        join(classic).and(result)
    }

    /// Classic workers `first..count` (worker 0 reads the main descriptor, the others a clone
    /// each).
    fn workers<F: Filesystem>(
        &self,
        fs: &Arc<F>,
        first: usize,
        count: usize,
    ) -> io::Result<Vec<JoinHandle<io::Result<()>>>> {
        let mut workers = Vec::new();
        for i in first..count {
            let channel = if i == 0 {
                self.channel.clone()
            } else {
                match self.channel.clone_for_thread() {
                    Ok(clone) => Arc::new(clone),
                    // Older kernels: the workers share one descriptor, which works, with contention.
                    Err(e) => {
                        tracing::debug!("cannot clone the FUSE descriptor ({e}); workers share one");
                        self.channel.clone()
                    }
                }
            };
            let (fs, interrupts, size) = (fs.clone(), self.interrupts.clone(), self.buffer_size);
            workers.push(
                thread::Builder::new()
                    .name(format!("fuse-{i}"))
                    .spawn(move || work(fs, channel, interrupts, size))?,
            );
        }
        Ok(workers)
    }
}

/// Waits for every worker; the first failure wins.
fn join(workers: Vec<JoinHandle<io::Result<()>>>) -> io::Result<()> {
    let mut result = Ok(());
    for worker in workers {
        match worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(io::Error::other("a FUSE worker thread panicked")),
        }
    }
    result
}

/// One classic worker: read a request, dispatch it, repeat until the connection ends.
fn work<F: Filesystem>(
    fs: Arc<F>,
    channel: Arc<Channel>,
    interrupts: Arc<Interrupts>,
    buffer_size: usize,
) -> io::Result<()> {
    let mut buf = vec![0u8; buffer_size];
    loop {
        let n = match channel.receive(&mut buf) {
            Ok(n) => n,
            Err(e) if is_disconnect(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        let Some(request) = Request::parse(&buf[..n]) else {
            tracing::warn!("ignoring a malformed request from the kernel ({n} bytes)");
            if let Some(header) = abi::InHeader::parse(&buf[..n]) {
                let _ = channel.send_message(header.unique, -libc::EIO, &[]);
            }
            continue;
        };
        let unique = request.unique;
        dispatch(&fs, &interrupts, request, || {
            Reply::new(unique, channel.clone(), interrupts.clone())
        });
    }
}

/// The filesystem as the rings' threads see it.
struct Served<F> {
    fs: Arc<F>,
    channel: Arc<Channel>,
    interrupts: Arc<Interrupts>,
}

impl<F: Filesystem> ring::Handler for Served<F> {
    fn handle(&self, request: Request<'_>, entry: Arc<Entry>) {
        let unique = request.unique;
        // A READ may be the kernel's read-ahead, which nobody waits for in the request itself.
        let caller = (!matches!(request.op, Op::Read { .. }) && request.pid != 0).then_some(request.pid);
        dispatch(&self.fs, &self.interrupts, request, || {
            Reply::over_ring(unique, self.channel.clone(), self.interrupts.clone(), entry, caller)
        });
    }
}

/// Answers one request, however it came; `reply` makes its reply (not for forgets and
/// interrupts, which get none).
fn dispatch<F: Filesystem>(
    fs: &Arc<F>,
    interrupts: &Arc<Interrupts>,
    request: Request<'_>,
    reply: impl FnOnce() -> Reply,
) {
    match &request.op {
        Op::Forget { nlookup } => return fs.forget(&[(request.nodeid, *nlookup)]),
        Op::BatchForget { nodes } => return fs.forget(nodes),
        Op::Interrupt { unique } => return interrupts.interrupt(*unique),
        _ => {}
    }
    let reply = reply();
    match request.op {
        Op::Init(_) => reply.error(libc::EIO),
        Op::Destroy => reply.ok(),
        Op::Write => reply.error(libc::EROFS),
        Op::Unsupported(_) => reply.error(libc::ENOSYS),
        _ => {
            // A bug in a handler must cost one request, not a worker (or a ring's thread): the
            // reply it held is dropped as the panic unwinds, which answers the kernel EIO, and
            // the thread serves the next request. Shared state stays usable (every lock
            // ignores poisoning).
            let (name, nodeid, pid, unique) = (request.op_name(), request.nodeid, request.pid, request.unique);
            let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fs.handle(request, reply)));
            if let Err(panic) = handled {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                tracing::error!(
                    "a bug in cab: request {unique} ({name} on inode {nodeid}, from pid {pid}) panicked: \
                     {message}; answered EIO, and the mount goes on"
                );
            }
        }
    }
}
