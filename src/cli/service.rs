//! `cab mount` as service managers start mounts: it tells systemd when the mount is up and when
//! it goes down (`sd_notify`, for `Type=notify` units), `--daemon` returns once the mount
//! answers, leaving the daemon running, as sshfs and rclone do, and `mount -t fuse.cab` (an
//! `/etc/fstab` line) works through `mount.fuse3`, which runs `cab SOURCE MOUNTPOINT -o OPTIONS`.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=…` lines) to the service manager, if one
/// asked for it (`NOTIFY_SOCKET`): a datagram to that socket, which may be in the abstract
/// namespace (`@…`). Failing to is logged, never fatal: the mount works without it.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&socket, state) {
        tracing::warn!("cannot tell the service manager {state:?} on NOTIFY_SOCKET: {e:#}");
    }
}

fn send(socket: &std::ffi::OsStr, state: &str) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = socket.as_bytes();
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None if bytes.starts_with(b"/") => SocketAddr::from_pathname(Path::new(socket))?,
        None => bail!(
            "{} is neither an absolute path nor an abstract name",
            socket.to_string_lossy()
        ),
    };
    let datagram = UnixDatagram::unbound()?;
    datagram.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

/// How long `--daemon` waits for the mount to answer before it gives up on it.
const DAEMON_START: Duration = Duration::from_secs(120);

/// `cab … mount --daemon …`: runs the same command without `--daemon` in a session of its own,
/// its log appended to `log`, and returns once it says the mount is up — or fails with the end
/// of that log if it exits first.
pub fn daemonize(log: &Path) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find cab's own executable")?;
    let line = super::COMMAND_LINE
        .get()
        .cloned()
        .unwrap_or_else(|| std::env::args_os().collect());
    // The same command without `--daemon` and `--log FILE`, which are this process's.
    let mut args = Vec::new();
    let mut words = line.into_iter().skip(1);
    while let Some(word) = words.next() {
        if word == "--log" {
            words.next();
        } else if word != "--daemon" && !word.to_string_lossy().starts_with("--log=") {
            args.push(word);
        }
    }
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    let start = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut command = Command::new(exe);
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    // SAFETY: setsid is async-signal-safe; the child leaves our session and terminal, so that
    // closing them does not end the mount.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().context("cannot start the mount daemon")?;
    let deadline = Instant::now() + DAEMON_START;
    loop {
        let said = read_from(log, start);
        if let Some(line) = said.lines().find(|l| l.starts_with("mounted ")) {
            eprintln!("{line}");
            eprintln!("cab mount runs as pid {}, its log in {}", child.id(), log.display());
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let tail: Vec<&str> = said.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("the mount ended before it was up ({status}):\n{}", tail.join("\n"));
        }
        if Instant::now() > deadline {
            bail!(
                "the mount (pid {}) did not come up within {} s; see {}",
                child.id(),
                DAEMON_START.as_secs(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `log` holds past byte `start`.
fn read_from(log: &Path, start: u64) -> String {
    use std::io::Seek;
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(log)
        && file.seek(std::io::SeekFrom::Start(start)).is_ok()
    {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// Where a daemon's log goes unless `--log` says: `$XDG_STATE_HOME/cab/` (else
/// `~/.local/state/cab/`), one file per mount point.
pub fn default_log(mountpoint: &Path) -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    let absolute = crate::mount::absolute_mountpoint(mountpoint);
    let name: String = absolute
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    state.join("cab").join(format!("mount-{name}.log"))
}

/// Mount options the kernel, mount(8) or mount.fuse3 act on, which cab has nothing to do with.
const MOUNT_OPTIONS_IGNORED: &[&str] = &[
    "rw", "ro", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "auto", "noauto", "user", "nouser", "users",
    "owner", "group", "_netdev", "nofail", "defaults", "atime", "noatime", "relatime",
];

/// Options that are global flags of `cab` (before the subcommand), not `cab mount`'s.
const GLOBAL_OPTIONS: &[&str] = &["store", "config", "remote", "push", "nix-secret-key", "realizer"];

/// The command line `mount.fuse3` gives a `fuse.cab` mount — `cab SOURCE MOUNTPOINT -o OPTS` —
/// as cab's own: `cab [GLOBAL…] mount --daemon [--manifest SOURCE] MOUNTPOINT [FLAGS…]`. SOURCE
/// is the manifest (`cab` or `none` for none); each option `key=value` is the flag `--key value`
/// and a bare `key` the flag `--key` (`_` read as `-`), so an fstab line takes every setting
/// `cab mount` has a flag for. `None` when `args` is not that shape (an ordinary command line).
pub fn from_mount_helper(args: &[std::ffi::OsString], subcommands: &[String]) -> Option<Vec<std::ffi::OsString>> {
    let first = args.get(1)?.to_str()?;
    if first.starts_with('-') || first == "help" || subcommands.iter().any(|s| s == first) || args.len() < 3 {
        return None;
    }
    let mountpoint = args.get(2)?;
    let mut options = Vec::new();
    let mut rest = args[3..].iter();
    while let Some(arg) = rest.next() {
        match arg.to_str() {
            Some("-o") => options.extend(rest.next()?.to_str()?.split(',').map(str::to_owned)),
            Some(o) if o.starts_with("-o") => options.extend(o[2..].split(',').map(str::to_owned)),
            // mount(8)'s own flags (-n: no mtab, -s: sloppy, -f: fake, -v: verbose) mean
            // nothing here.
            Some("-n" | "-s" | "-f" | "-v") => {}
            _ => return None,
        }
    }
    // mount.fuse3 always passes options (at least `rw` or `ro`): a mistyped subcommand with
    // two arguments is not taken for a mount.
    if options.is_empty() {
        return None;
    }
    let mut globals = Vec::new();
    let mut flags = Vec::new();
    for option in options.iter().filter(|o| !o.is_empty()) {
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k.replace('_', "-"), Some(v)),
            None => (option.replace('_', "-"), None),
        };
        if MOUNT_OPTIONS_IGNORED.contains(&key.as_str()) || key.starts_with("x-") || key == "comment" {
            continue;
        }
        let into = if GLOBAL_OPTIONS.contains(&key.as_str()) {
            &mut globals
        } else {
            &mut flags
        };
        into.push(format!("--{key}").into());
        if let Some(value) = value {
            into.push(value.into());
        }
    }
    let mut line: Vec<std::ffi::OsString> = vec![args[0].clone()];
    line.extend(globals);
    line.extend(["mount".into(), "--daemon".into()]);
    if !matches!(first, "cab" | "none") {
        line.extend(["--manifest".into(), args[1].clone()]);
    }
    line.push(mountpoint.clone());
    line.extend(flags);
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_helper_lines_become_cab_mount() {
        let subcommands = vec!["mount".to_owned(), "fetch".to_owned()];
        let line = |words: &[&str]| -> Vec<std::ffi::OsString> { words.iter().map(|w| w.into()).collect() };
        let got = from_mount_helper(
            &line(&[
                "cab",
                "/srv/p/islands.toml",
                "/mnt/islands",
                "-o",
                "rw,nosuid,nodev,allow_other,store=/var/cache/cab,threads=8,no_kernel_serve,x-systemd.automount",
            ]),
            &subcommands,
        )
        .unwrap();
        assert_eq!(
            got,
            line(&[
                "cab",
                "--store",
                "/var/cache/cab",
                "mount",
                "--daemon",
                "--manifest",
                "/srv/p/islands.toml",
                "/mnt/islands",
                "--allow-other",
                "--threads",
                "8",
                "--no-kernel-serve",
            ])
        );
        let got = from_mount_helper(&line(&["cab", "none", "/mnt/x", "-orw"]), &subcommands).unwrap();
        assert_eq!(got, line(&["cab", "mount", "--daemon", "/mnt/x"]));
        // Ordinary command lines are left alone.
        for words in [
            &["cab", "mount", "/mnt/x"][..],
            &["cab", "--store", "s", "fetch"],
            &["cab", "x"],
            &["cab", "fecth", "<github:a/b>", "<github:c/d>"],
            &["cab", "help", "mount", "-o", "x"],
        ] {
            assert!(from_mount_helper(&line(words), &subcommands).is_none(), "{words:?}");
        }
    }
}
