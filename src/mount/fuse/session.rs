//! The session: the INIT handshake, then worker threads that read requests and hand them to
//! the filesystem. The session itself answers what needs no filesystem: INTERRUPT (parked
//! requests answer EINTR), forgets (passed on, never answered), anything that would write
//! (EROFS), and what cab does not implement (ENOSYS, so the kernel stops asking).

use std::io;
use std::sync::Arc;
use std::thread;

use super::abi::{self, InitIn, InitOut};
use super::channel::Channel;
use super::reply::{Interrupts, Reply, is_disconnect};
use super::request::{Op, Request};

/// What a filesystem implements to be served.
pub trait Filesystem: Send + Sync + 'static {
    /// Chooses the connection's settings from what the kernel offers.
    fn init(&self, offered: &InitIn) -> InitOut;

    /// Answers one request (now, or later through a parked reply).
    fn handle(self: &Arc<Self>, request: Request<'_>, reply: Reply);

    /// The kernel dropped `nlookup` references to each inode.
    fn forget(&self, nodes: &[(u64, u64)]);
}

/// A connection after its handshake, ready to serve.
pub struct Session {
    channel: Arc<Channel>,
    interrupts: Arc<Interrupts>,
    buffer_size: usize,
}

impl Session {
    /// Answers the kernel's INIT on `channel` with what `fs` chooses.
    pub fn handshake<F: Filesystem>(fs: &F, channel: Channel) -> io::Result<Session> {
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
            let minor = offered.minor.min(abi::MINOR);
            channel.send_message(request.unique, 0, &[&chosen.encode(minor)])?;
            let buffer_size = (chosen.max_write as usize + 4096).max(64 * 1024 + 4096);
            return Ok(Session {
                channel: Arc::new(channel),
                interrupts: Arc::default(),
                buffer_size,
            });
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

    /// Serves with `threads` workers until the connection ends (unmounted or aborted).
    pub fn run<F: Filesystem>(self, fs: Arc<F>, threads: usize) -> io::Result<()> {
        let mut channels = vec![self.channel.clone()];
        for _ in 1..threads.max(1) {
            match self.channel.clone_for_thread() {
                Ok(clone) => channels.push(Arc::new(clone)),
                // Older kernels: the workers share one descriptor, which works, with contention.
                Err(e) => {
                    tracing::debug!("cannot clone the FUSE descriptor ({e}); workers share one");
                    channels.push(self.channel.clone());
                }
            }
        }
        let mut workers = Vec::new();
        for (i, channel) in channels.into_iter().enumerate() {
            let fs = fs.clone();
            let interrupts = self.interrupts.clone();
            let size = self.buffer_size;
            workers.push(
                thread::Builder::new()
                    .name(format!("fuse-{i}"))
                    .spawn(move || work(fs, channel, interrupts, size))?,
            );
        }
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
}

/// One worker: read a request, dispatch it, repeat until the connection ends.
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
        dispatch(&fs, &channel, &interrupts, request);
    }
}

fn dispatch<F: Filesystem>(fs: &Arc<F>, channel: &Arc<Channel>, interrupts: &Arc<Interrupts>, request: Request<'_>) {
    match &request.op {
        Op::Forget { nlookup } => return fs.forget(&[(request.nodeid, *nlookup)]),
        Op::BatchForget { nodes } => return fs.forget(nodes),
        Op::Interrupt { unique } => return interrupts.interrupt(*unique),
        _ => {}
    }
    let reply = Reply::new(request.unique, channel.clone(), interrupts.clone());
    match request.op {
        Op::Init(_) => reply.error(libc::EIO),
        Op::Destroy => reply.ok(),
        Op::Write => reply.error(libc::EROFS),
        Op::Unsupported(_) => reply.error(libc::ENOSYS),
        _ => {
            // A bug in a handler must cost one request, not a worker: the reply it held is
            // dropped as the panic unwinds, which answers the kernel EIO, and the worker reads
            // the next request. Shared state stays usable (every lock ignores poisoning).
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
