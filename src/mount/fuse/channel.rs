//! The connection to the kernel: a /dev/fuse descriptor, mounted either directly (mount(2),
//! when cab may) or through `fusermount3` (which hands the descriptor back over a socket), one
//! clone of it per worker thread, and the raw sends: replies, notifications, and the
//! passthrough backing-file ioctls.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::abi;

/// One descriptor of a FUSE connection. Requests read from it must be answered on it.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// The name shown as the mount's source and subtype (`fuse.NAME`).
    pub name: String,
    /// Let other users in (`allow_other`).
    pub allow_other: bool,
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

impl Channel {
    /// Mounts a read-only FUSE filesystem at `mountpoint` and returns its connection.
    pub fn mount(mountpoint: &Path, options: &MountOptions) -> Result<Channel> {
        // SAFETY: plain getters.
        let (euid, uid, gid) = unsafe { (libc::geteuid(), libc::getuid(), libc::getgid()) };
        if euid == 0 {
            match Channel::mount_directly(mountpoint, options, uid, gid) {
                Ok(channel) => return Ok(channel),
                // In a container without CAP_SYS_ADMIN root may not mount; fusermount3 may.
                Err(e) => tracing::debug!("mount(2) refused ({e:#}); trying fusermount3"),
            }
        }
        Channel::mount_with_fusermount(mountpoint, options)
    }

    fn open_device() -> Result<File> {
        File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .context("cannot open /dev/fuse (is the fuse module loaded, and /dev/fuse usable?)")
    }

    fn mount_directly(mountpoint: &Path, options: &MountOptions, uid: u32, gid: u32) -> Result<Channel> {
        let device = Channel::open_device()?;
        let mut data = format!(
            "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions",
            device.as_raw_fd()
        );
        if options.allow_other {
            data.push_str(",allow_other");
        }
        let source = CString::new(options.name.as_str()).context("mount name has a NUL")?;
        let fstype = CString::new(format!("fuse.{}", options.name)).context("mount name has a NUL")?;
        let target = CString::new(mountpoint.as_os_str().as_bytes()).context("mount point has a NUL")?;
        let data = CString::new(data).context("mount data has a NUL")?;
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RDONLY | libc::MS_NOATIME;
        // SAFETY: valid C strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(last_error()).with_context(|| format!("mount(2) of {}", mountpoint.display()));
        }
        Ok(Channel { fd: device.into() })
    }

    fn mount_with_fusermount(mountpoint: &Path, options: &MountOptions) -> Result<Channel> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds has room for the two descriptors.
        if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) } != 0 {
            return Err(last_error()).context("cannot make a socket pair for fusermount3");
        }
        // SAFETY: socketpair just gave us these two descriptors.
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut opts = format!(
            "ro,nosuid,nodev,noatime,default_permissions,fsname={0},subtype={0}",
            options.name
        );
        if options.allow_other {
            opts.push_str(",allow_other");
        }
        let theirs_raw = theirs.as_raw_fd();
        let mut command = Command::new("fusermount3");
        command
            .arg("-o")
            .arg(&opts)
            .arg("--")
            .arg(mountpoint)
            .env("_FUSE_COMMFD", theirs_raw.to_string());
        // SAFETY: pre_exec runs in the child between fork and exec; fcntl is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(move || {
                // The socket must survive exec (Rust opens everything close-on-exec).
                if libc::fcntl(theirs_raw, libc::F_SETFD, 0) != 0 {
                    return Err(last_error());
                }
                Ok(())
            });
        }
        let status = command
            .status()
            .context("cannot run fusermount3 (install the fuse3 package)")?;
        drop(theirs);
        if !status.success() {
            bail!("fusermount3 could not mount {} ({status})", mountpoint.display());
        }
        let fd = receive_fd(&ours).context("fusermount3 did not pass the FUSE descriptor back")?;
        Ok(Channel { fd })
    }

    /// A channel over any descriptor (tests speak the protocol over a socket pair).
    #[cfg(test)]
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// The descriptor (the rings of FUSE over io_uring register it as their fixed file).
    pub(super) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A new descriptor on the same connection, with its own queue of requests in progress
    /// (so worker threads do not contend for one).
    pub fn clone_for_thread(&self) -> io::Result<Channel> {
        let device = File::options().read(true).write(true).open("/dev/fuse")?;
        let mut source = self.fd.as_raw_fd() as u32;
        // SAFETY: the ioctl reads one u32, which lives for the call.
        if unsafe { libc::ioctl(device.as_raw_fd(), abi::DEV_IOC_CLONE as _, &mut source) } != 0 {
            return Err(last_error());
        }
        Ok(Channel { fd: device.into() })
    }

    /// Reads one request into `buf`, waiting for one. `ENODEV` means the connection is over.
    pub fn receive(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = last_error();
            match err.raw_os_error() {
                // Interrupted, or a request that went away before we read it: read the next.
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
                _ => return Err(err),
            }
        }
    }

    /// Writes one message (a reply or a notification) made of `parts`.
    pub fn send(&self, parts: &[IoSlice<'_>]) -> io::Result<()> {
        // SAFETY: IoSlice is ABI-compatible with iovec; the slices live for the call.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), parts.as_ptr().cast(), parts.len() as i32) };
        if n < 0 {
            return Err(last_error());
        }
        Ok(())
    }

    /// Sends a header and body: `unique` 0 makes it a notification with code `error`.
    pub fn send_message(&self, unique: u64, error: i32, body: &[&[u8]]) -> io::Result<()> {
        let len = 16 + body.iter().map(|b| b.len()).sum::<usize>();
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&(len as u32).to_ne_bytes());
        header[4..8].copy_from_slice(&error.to_ne_bytes());
        header[8..].copy_from_slice(&unique.to_ne_bytes());
        let mut parts = Vec::with_capacity(1 + body.len());
        parts.push(IoSlice::new(&header));
        parts.extend(body.iter().filter(|b| !b.is_empty()).map(|b| IoSlice::new(b)));
        self.send(&parts)
    }

    /// Pushes `data` into the kernel's page cache for `ino` at `offset` (FUSE_NOTIFY_STORE).
    pub fn notify_store(&self, ino: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut out = abi::Out::with_capacity(24);
        out.u64(ino).u64(offset).u32(data.len() as u32).u32(0);
        self.send_message(0, abi::notify::STORE, &[&out.bytes, data])
    }

    /// Makes the kernel forget a cached name (FUSE_NOTIFY_INVAL_ENTRY).
    pub fn notify_inval_entry(&self, parent: u64, name: &[u8]) -> io::Result<()> {
        let mut out = abi::Out::with_capacity(16);
        out.u64(parent).u32(name.len() as u32).u32(0);
        self.send_message(0, abi::notify::INVAL_ENTRY, &[&out.bytes, name, &[0]])
    }

    /// Registers `file` as a passthrough backing file; returns its id.
    pub fn open_backing(&self, file: &File) -> io::Result<u32> {
        let mut map = [0u8; 16];
        map[..4].copy_from_slice(&file.as_raw_fd().to_ne_bytes());
        // SAFETY: the ioctl reads a 16-byte struct fuse_backing_map, which lives for the call.
        let id = unsafe { libc::ioctl(self.fd.as_raw_fd(), abi::DEV_IOC_BACKING_OPEN as _, map.as_mut_ptr()) };
        if id < 0 {
            return Err(last_error());
        }
        Ok(id as u32)
    }

    /// Drops a backing file id.
    pub fn close_backing(&self, id: u32) {
        let mut id = id;
        // SAFETY: the ioctl reads one u32, which lives for the call.
        unsafe { libc::ioctl(self.fd.as_raw_fd(), abi::DEV_IOC_BACKING_CLOSE as _, &mut id) };
    }
}

/// Receives one descriptor sent with SCM_RIGHTS over `socket`.
fn receive_fd(socket: &OwnedFd) -> Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one descriptor's control message, aligned as cmsghdr wants.
    let mut control = [0u64; 8];
    // SAFETY: zeroed msghdr is a valid starting value; every pointer set below outlives recvmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg is set up above.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(last_error()).context("recvmsg");
    }
    // SAFETY: CMSG_FIRSTHDR/CMSG_DATA walk the control buffer recvmsg filled in.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_level != libc::SOL_SOCKET || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            bail!("no descriptor in fusermount3's message");
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Unmounts `mountpoint`; `lazy` detaches it even while busy (or with its daemon gone).
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    // SAFETY: a plain getter.
    if unsafe { libc::geteuid() } == 0 {
        let target = CString::new(mountpoint.as_os_str().as_bytes()).context("mount point has a NUL")?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: a valid C string.
        if unsafe { libc::umount2(target.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        let err = last_error();
        if err.raw_os_error() == Some(libc::EBUSY) {
            return Err(err).with_context(|| format!("{} is busy", mountpoint.display()));
        }
        tracing::debug!("umount2 of {} failed ({err}); trying fusermount3", mountpoint.display());
    }
    let mut args = vec!["-u"];
    if lazy {
        args.push("-z");
    }
    let status = Command::new("fusermount3")
        .args(&args)
        .arg(mountpoint)
        .status()
        .context("cannot run fusermount3 (install the fuse3 package)")?;
    if !status.success() {
        bail!("fusermount3 could not unmount {}", mountpoint.display());
    }
    Ok(())
}
