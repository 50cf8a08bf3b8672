//! Images mounted by the kernel: a file-backed EROFS mount (Linux 6.12+, no loop device) of a
//! stored tree's image, attached on a directory of the FUSE mount, after which the kernel
//! serves that tree alone — lookups, listings and reads never reach cab again. Made with the
//! new mount API (fsopen, fsconfig, fsmount, move_mount), which takes the image and its data
//! file as separate strings: the old `mount(2)` data string would split a store path that
//! holds a comma.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::store::images::Image;

const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_BENEATH: libc::c_uint = 0x200;

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// A descriptor a syscall returned, or its error.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor, and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Why this process cannot have the kernel serve images, if it cannot: mounting needs
/// CAP_SYS_ADMIN, and the kernel must know EROFS.
pub fn unavailable() -> Option<String> {
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let caps = status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&caps, 16).ok()
        })
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u32 = 21;
    if effective & (1 << CAP_SYS_ADMIN) == 0 {
        return Some("mounting an image needs root (CAP_SYS_ADMIN); this mount is not".into());
    }
    let name = c"erofs";
    // SAFETY: a plain syscall with a valid C string; the descriptor is owned at once.
    match owned(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) }) {
        Ok(_) => None,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Some("this kernel has no EROFS".into()),
        Err(e) => Some(format!("the kernel refuses to mount EROFS ({e})")),
    }
}

/// Mounts `image` read-only (and nosuid, nodev) on `target`, then has the kernel read its
/// metadata once: it reads an image's metadata a page at a time, without read-ahead, so a
/// first walk would otherwise wait on the disk for every few inodes.
pub fn attach(image: &Image, target: &Path) -> io::Result<()> {
    mount_image(image, target, 0)
}

/// Puts `image` where the image mounted on `target` is, without a moment in which neither
/// is there: the new one is mounted beneath the old (Linux 6.5+), then the old detached.
/// Whoever has a file or directory open in the old one keeps it, whole.
pub fn replace(image: &Image, target: &Path) -> io::Result<()> {
    mount_image(image, target, MOVE_MOUNT_BENEATH)?;
    detach(target)
}

fn mount_image(image: &Image, target: &Path, how: libc::c_uint) -> io::Result<()> {
    let fs_type = c"erofs";
    // SAFETY: plain syscalls with valid C strings; every descriptor is owned at once.
    let fs = owned(unsafe { libc::syscall(libc::SYS_fsopen, fs_type.as_ptr(), FSOPEN_CLOEXEC) })?;
    let set = |key: &std::ffi::CStr, value: &Path| -> io::Result<()> {
        let value = c_string(value.as_os_str().as_bytes())?;
        // SAFETY: valid C strings that outlive the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        })
    };
    set(c"source", &image.meta)?;
    set(c"device", &image.data)?;
    // SAFETY: a plain syscall on our descriptor.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    let attributes = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    // SAFETY: a plain syscall on our descriptor; the result is owned at once.
    let mount = owned(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attributes) })?;
    let target = c_string(target.as_os_str().as_bytes())?;
    let empty = c"";
    // SAFETY: valid C strings and our descriptor.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | how,
        )
    })?;
    if let Ok(meta) = std::fs::File::open(&image.meta) {
        // SAFETY: a plain syscall on a descriptor we own; advice only.
        unsafe {
            libc::posix_fadvise(
                meta.as_raw_fd(),
                0,
                image.metadata_len as i64,
                libc::POSIX_FADV_WILLNEED,
            )
        };
    }
    Ok(())
}

/// Detaches the mount on `target` at once; whoever has a file or directory open in it keeps
/// it until they let go (MNT_DETACH).
pub fn detach(target: &Path) -> io::Result<()> {
    let path = c_string(target.as_os_str().as_bytes())?;
    // SAFETY: a plain syscall with a valid C string.
    check(unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } as libc::c_long)
}

/// Every mount strictly below `mountpoint`, deepest first, from /proc/self/mountinfo (never
/// by looking at the paths, which would ask the FUSE daemon).
pub fn mounts_below(mountpoint: &Path) -> Vec<PathBuf> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut below: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape(point)))
        .filter(|point| point != mountpoint && point.starts_with(mountpoint))
        .collect();
    below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    below.dedup();
    below
}

/// Detaches every mount below `mountpoint` (images a cab mount attached there), deepest
/// first, so that the FUSE mount itself can go.
pub fn detach_below(mountpoint: &Path) {
    for point in mounts_below(mountpoint) {
        if let Err(e) = detach(&point) {
            tracing::debug!("cannot detach {}: {e}", point.display());
        }
    }
}

/// A mountinfo path with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(digits) = octal
        {
            out.push(digits.iter().fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape(r"/tmp/plain"), "/tmp/plain");
        assert_eq!(unescape(r"/tmp/tab\011x"), "/tmp/tab\tx");
        assert_eq!(unescape("/tmp/é\\04"), "/tmp/é\\04");
    }
}
