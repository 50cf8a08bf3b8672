//! What every mount test builds on: a [`World`] (forge, store, project, mount point under one
//! temporary directory), a live [`Mount`] that always unmounts, and small helpers for running
//! real tools against it. See mount-tests/README.md.

// Each test binary uses a part of this.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::forge::{self, Forge};
use crate::common::*;

/// How long the daemon may take to print `mounted …`.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one tool run against the mount may take (a fetch included).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the daemon may take to exit after a signal.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub const READ_ONLY: &str = "Read-only file system";

// ---------------------------------------------------------------------------------------------
// The read path: the daemon's own (default) or FUSE passthrough (--passthrough)
// ---------------------------------------------------------------------------------------------

/// How a mount serves a tree: the kernel from the tree's image (the default, once the tree is
/// whole in the store), or FUSE with either read path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Kernel,
    Passthrough,
    Plain,
}

pub const PASSTHROUGH_LINE: &str = "serving file reads through FUSE passthrough";
pub const PLAIN_LINE: &str = "serving file reads without passthrough";

impl Mode {
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Kernel => &[],
            Mode::Passthrough => &["--no-kernel-serve", "--passthrough"],
            Mode::Plain => &["--no-kernel-serve"],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One test's world: forge, store, project, mount point
// ---------------------------------------------------------------------------------------------

pub struct World {
    // Dropped in this order: the forge stops, then the directory goes.
    pub forge: Forge,
    pub tmp: TempDir,
    pub forge_root: PathBuf,
    pub project: PathBuf,
    pub store: PathBuf,
    pub mnt: PathBuf,
}

impl World {
    pub fn new(label: &str, forge_flags: &[&str]) -> World {
        let tmp = TempDir::new(label);
        let forge_root = tmp.join("forge");
        let project = tmp.join("project");
        let store = tmp.join("store");
        let mnt = tmp.join("mnt");
        for dir in [&forge_root, &project, &mnt] {
            mkdir(dir);
        }
        let forge = Forge::start(&forge_root, forge_flags);
        World {
            forge,
            tmp,
            forge_root,
            project,
            store,
            mnt,
        }
    }

    /// A fresh directory to build a source tree in.
    pub fn dir(&self, rel: &str) -> PathBuf {
        let dir = self.tmp.join(rel);
        mkdir(&dir);
        dir
    }

    /// Pushes `src` as the new head of `main` in `owner/repo`; returns the commit.
    pub fn push(&self, owner_repo: &str, src: &Path, message: &str) -> String {
        forge::commit(&self.forge_root, owner_repo, src, "main", message)
    }

    /// `git archive` of `rev`, extracted: what the mount must show.
    pub fn reference(&self, owner_repo: &str, rev: &str) -> PathBuf {
        let dest = self
            .tmp
            .join(format!("reference-{}-{rev}", owner_repo.replace('/', "-")));
        if !dest.exists() {
            forge::git_archive_extract(&self.forge_root, owner_repo, rev, &dest);
        }
        dest
    }

    pub fn manifest(&self, text: &str) {
        fs::write(self.project.join("islands.toml"), text).unwrap();
    }

    pub fn lock_text(&self) -> String {
        fs::read_to_string(self.project.join("islands.lock")).unwrap_or_default()
    }

    /// The `locked` literal of `name` in islands.lock.
    pub fn locked(&self, name: &str) -> Option<String> {
        lock_entry(&self.lock_text(), name).map(|(_, locked)| locked)
    }

    /// `cab --store STORE -v ARGS…` run in the project directory against the forge (which
    /// plays GitHub, GitLab and SourceHut).
    pub fn cab(&self) -> Command {
        let mut cmd = cab();
        cmd.current_dir(&self.project)
            .env("CAB_GITHUB_URL", self.forge.url())
            .env("CAB_GITLAB_URL", self.forge.url())
            .env("CAB_SOURCEHUT_URL", self.forge.url())
            .env("NO_COLOR", "1")
            .arg("--store")
            .arg(&self.store)
            .arg("-v");
        cmd
    }

    /// `cab mount MNT ARGS…`, live.
    pub fn mount(&self, args: &[&str]) -> Mount {
        let mut cmd = self.cab();
        cmd.arg("mount").arg(&self.mnt).args(args);
        Mount::start(cmd, &self.mnt)
    }

    pub fn at(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.mnt.clone()
        } else {
            self.mnt.join(rel)
        }
    }

    /// Archive downloads the forge has finished so far.
    pub fn archives(&self) -> Vec<forge::Request> {
        self.forge
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("/archive/"))
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The last line of defence: never leave a mount behind, nor delete through one.
        if is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
    }
}

/// `(original, locked)` of `[islands.NAME]` in a lock file's text.
pub fn lock_entry(lock: &str, name: &str) -> Option<(String, String)> {
    let table: toml::Table = toml::from_str(lock).unwrap_or_else(|e| panic!("islands.lock is not TOML: {e}\n{lock}"));
    let entry = table.get("islands")?.as_table()?.get(name)?.as_table()?;
    let field = |key: &str| entry.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    Some((field("original")?, field("locked")?))
}

/// The value of `key = "…"` inside an island literal's config.
pub fn config_value(literal: &str, key: &str) -> Option<String> {
    let needle = format!("{key} = \"");
    let start = literal.find(&needle)? + needle.len();
    let len = literal[start..].find('"')?;
    Some(literal[start..start + len].to_owned())
}

// ---------------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------------

/// Whether `path` is listed in /proc/self/mounts (a live or a stale mount).
pub fn is_mounted(path: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .any(|point| point.replace("\\040", " ") == want)
}

pub fn lazy_unmount(path: &Path) {
    let _ = run_timeout(
        Command::new("fusermount3").arg("-u").arg("-z").arg(path),
        Duration::from_secs(20),
    );
}

/// What a child process wrote to one of its pipes, as it arrives.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<(String, bool)>>);

impl Captured {
    pub fn collect(pipe: impl Read + Send + 'static) -> Captured {
        let captured = Captured::default();
        let sink = captured.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => sink.0.lock().unwrap().0.push_str(&strip_ansi(&text(&line))),
                }
            }
            sink.0.lock().unwrap().1 = true;
        });
        captured
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().0.clone()
    }

    pub fn closed(&self) -> bool {
        self.0.lock().unwrap().1
    }

    /// Waits (bounded) until the text contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.text().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for the writer to close the pipe.
    pub fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.closed() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Log lines may be coloured; matching is on the plain text.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls a child until it exits or the timeout passes.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: a plain syscall on the pid of our own child, which has not been reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Child processes, killed and reaped when dropped, so a failing test leaves none behind.
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running `cab mount`: stopped, and its mount point cleared, when dropped.
pub struct Mount {
    pub child: Child,
    pub mnt: PathBuf,
    pub what: String,
    pub stdout: Captured,
    pub stderr: Captured,
    /// Set after a deliberate SIGKILL: the stale mount is the test's to clear.
    pub leave_stale: bool,
}

impl Mount {
    pub fn start(mut cmd: Command, mnt: &Path) -> Mount {
        let what = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start `{what}`: {e}"));
        let stdout = Captured::collect(child.stdout.take().unwrap());
        let stderr = Captured::collect(child.stderr.take().unwrap());
        // The guard exists before the first assertion: a failure below still cleans up.
        let mut mount = Mount {
            child,
            mnt: mnt.to_owned(),
            what,
            stdout,
            stderr,
            leave_stale: false,
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if mount.log().lines().any(|l| l.starts_with("mounted ")) {
                break;
            }
            if let Ok(Some(status)) = mount.child.try_wait() {
                mount.stderr.wait_closed(Duration::from_secs(5));
                panic!(
                    "`{}` exited with {status} before mounting\n--- stderr ---\n{}",
                    mount.what,
                    mount.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "`{}` did not mount within {MOUNT_TIMEOUT:?}\n--- stderr ---\n{}",
                mount.what,
                mount.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        assert!(
            is_mounted(mnt),
            "`mounted` was printed but {} is not in /proc/mounts",
            mnt.display()
        );
        mount
    }

    /// Everything the daemon logged so far (stderr).
    pub fn log(&self) -> String {
        self.stderr.text()
    }

    /// What the daemon printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.stderr.wait_for(needle, timeout)
    }

    /// In `Kernel` mode, looks `island` up and waits until the kernel serves it from its
    /// image, so that everything after reads it from there; nothing in the FUSE modes.
    pub fn settle(&self, mode: Mode, island: &Path) {
        if mode != Mode::Kernel {
            return;
        }
        // A listing, not a stat: a stat may be answered from what an earlier listing of the
        // root told the kernel, and not start the island's realization.
        let listed = fs::read_dir(island).map(|entries| entries.count());
        assert!(listed.is_ok(), "{}\n{}", island.display(), self.log());
        let absolute = fs::canonicalize(island.parent().unwrap())
            .unwrap()
            .join(island.file_name().unwrap());
        let line = format!("{} is served by the kernel", absolute.display());
        assert!(
            self.wait_log(&line, Duration::from_secs(60)),
            "expected `{line}` (root, Linux 6.12+)\n{}",
            self.log()
        );
    }

    /// Asserts the log names `mode`'s read path (logged at the first open of a file).
    pub fn assert_read_path(&self, mode: Mode) {
        match mode {
            Mode::Kernel => assert!(
                self.wait_log("is served by the kernel", Duration::from_secs(60)),
                "expected the kernel to serve the tree (root, Linux 6.12+)\n{}",
                self.log()
            ),
            Mode::Passthrough => assert!(
                self.wait_log(PASSTHROUGH_LINE, Duration::from_secs(10)),
                "expected `{PASSTHROUGH_LINE}` in the log (we run as root on a 6.9+ kernel)\n{}",
                self.log()
            ),
            Mode::Plain => {
                // The daemon's own read path: it must never have handed a file to the kernel.
                thread::sleep(Duration::from_millis(100));
                assert!(
                    !self.log().contains(PASSTHROUGH_LINE),
                    "the default read path must not use passthrough\n{}",
                    self.log()
                );
                // (That it also says so is checked by `plain_read_path_is_logged`.)
            }
        }
    }

    /// Sends `sig`, waits (bounded) for the daemon to exit; returns its status and full log.
    pub fn stop_with(&mut self, sig: i32) -> (ExitStatus, String) {
        signal(&self.child, sig);
        let status = wait_child(&mut self.child, STOP_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "`{}` did not exit within {STOP_TIMEOUT:?} of signal {sig}\n{}",
                self.what,
                self.log()
            )
        });
        self.stderr.wait_closed(Duration::from_secs(5));
        self.stdout.wait_closed(Duration::from_secs(5));
        (status, self.log())
    }

    /// SIGTERM; the daemon must unmount, print `unmounted MNT` and exit 0.
    pub fn stop(mut self) -> String {
        let (status, log) = self.stop_with(libc::SIGTERM);
        assert_eq!(status.code(), Some(0), "cab mount must exit 0 on SIGTERM\n{log}");
        assert!(log.contains("unmounted "), "no `unmounted` line\n{log}");
        assert!(
            !is_mounted(&self.mnt),
            "{} is still mounted after the daemon exited",
            self.mnt.display()
        );
        log
    }

    /// SIGKILL: the daemon dies and leaves a stale mount behind.
    pub fn kill9(mut self) -> String {
        self.leave_stale = true;
        let (status, log) = self.stop_with(libc::SIGKILL);
        assert_eq!(status.code(), None, "SIGKILL must kill the daemon");
        log
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(&self.child, libc::SIGTERM);
            if wait_child(&mut self.child, Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = wait_child(&mut self.child, Duration::from_secs(10));
            }
        }
        if !self.leave_stale && is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
        if thread::panicking() {
            eprintln!("--- log of `{}` ---\n{}", self.what, self.log());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running tools against the mount
// ---------------------------------------------------------------------------------------------

/// A tool, with the C locale so its messages and sorting are predictable.
pub fn tool(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("LC_ALL", "C");
    cmd
}

pub fn sh(script: &str, args: &[&OsStr]) -> Command {
    let mut cmd = tool("sh");
    cmd.arg("-c").arg(script).arg("sh").args(args);
    cmd
}

pub fn ok(cmd: &mut Command) -> Output {
    let what = describe(cmd);
    let out = run_timeout(cmd, TOOL_TIMEOUT);
    assert!(out.status.success(), "expected success: {}", report(&what, &out));
    out
}

pub fn ok_text(cmd: &mut Command) -> String {
    text(&ok(cmd).stdout)
}

/// Runs a tool that must fail with `message` (e.g. "Read-only file system") on stderr.
pub fn fails_with(cmd: &mut Command, message: &str) -> Output {
    let what = describe(cmd);
    let out = run_timeout(cmd, TOOL_TIMEOUT);
    assert!(!out.status.success(), "expected failure: {}", report(&what, &out));
    assert!(
        text(&out.stderr).contains(message),
        "expected {message:?} on stderr: {}",
        report(&what, &out)
    );
    out
}

/// A file's text through the mount; a failure names the path and the error.
pub fn read_text(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e} ({e:?})", path.display()))
}

/// The names in a directory, read to the end (errors come from reading, not opening).
pub fn list(dir: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
    fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect()
}

pub fn errno_of<T>(result: std::io::Result<T>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

/// A Python script run with the mount's paths as arguments; its stdout.
pub fn python(script: &str, args: &[&OsStr]) -> String {
    let mut cmd = tool("python3");
    cmd.arg("-I").arg("-c").arg(script).args(args);
    ok_text(&mut cmd)
}

pub fn os(p: &Path) -> &OsStr {
    p.as_os_str()
}

/// Copies a tree (files with their modes, directories, symlinks), skipping `__pycache__`.
pub fn copy_tree(src: &Path, dst: &Path) {
    mkdir(dst);
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let (from, to) = (entry.path(), dst.join(&name));
        let meta = fs::symlink_metadata(&from).unwrap();
        if meta.is_dir() {
            copy_tree(&from, &to);
        } else if meta.file_type().is_symlink() {
            make_symlink(fs::read_link(&from).unwrap(), &to);
        } else if meta.is_file() {
            write_file(&to, &fs::read(&from).unwrap(), meta.permissions().mode() & 0o777);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A server that fails on demand
// ---------------------------------------------------------------------------------------------

/// How a [`Gate`] treats connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateMode {
    /// Passes them on to the server behind it.
    Open,
    /// Nobody listens: connections are refused.
    Closed,
    /// Accepts each connection and resets it at once.
    Reset,
}

/// A TCP port in front of a server that can be opened, closed (connection refused) or made to
/// reset every connection, while clients keep using the same address: a forge that goes down
/// and comes back.
pub struct Gate {
    port: u16,
    upstream: String,
    mode: Arc<Mutex<GateMode>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    worker: Option<thread::JoinHandle<()>>,
}

impl Gate {
    /// A gate in front of `upstream` (`HOST:PORT`), open.
    pub fn new(upstream: &str) -> Gate {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut gate = Gate {
            port,
            upstream: upstream.to_owned(),
            mode: Arc::new(Mutex::new(GateMode::Open)),
            accepted: Arc::default(),
            stop: Arc::default(),
            worker: None,
        };
        gate.set(GateMode::Open);
        gate
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far (in `Open` and `Reset` modes).
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Switches the gate: the listener is dropped while closed and bound again (same port)
    /// when opened or resetting.
    pub fn set(&mut self, mode: GateMode) {
        use std::sync::atomic::Ordering;
        *self.mode.lock().unwrap() = mode;
        let listening = self.worker.is_some();
        if mode == GateMode::Closed && listening {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(worker) = self.worker.take() {
                worker.join().unwrap();
            }
        } else if mode != GateMode::Closed && !listening {
            self.stop.store(false, Ordering::SeqCst);
            let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
            listener.set_nonblocking(true).unwrap();
            let (mode, stop, accepted, upstream) = (
                self.mode.clone(),
                self.stop.clone(),
                self.accepted.clone(),
                self.upstream.clone(),
            );
            self.worker = Some(thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let _ = client.set_nonblocking(false);
                    if *mode.lock().unwrap() == GateMode::Reset {
                        // Take the request first: the reset then comes where a reply should.
                        let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
                        let _ = (&client).read(&mut [0; 4096]);
                        reset(client);
                        continue;
                    }
                    let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                        reset(client);
                        continue;
                    };
                    for (from, to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        thread::spawn(move || {
                            let (mut from, mut to) = (from, to);
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        });
                    }
                }
            }));
        }
    }
}

/// Closes a connection with a reset (SO_LINGER 0) instead of an orderly close.
fn reset(stream: std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a plain setsockopt on a socket we own, with a value that lives for the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.set(GateMode::Closed);
    }
}

/// The FUSE connection number of the mount at `mnt`, from /proc/self/mountinfo.
pub fn connection_of(mnt: &Path) -> u32 {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mnt.to_string_lossy();
    mountinfo
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.get(4) == Some(&want.as_ref())).then(|| fields[2].split(':').nth(1).unwrap().parse().unwrap())
        })
        .expect("the mount is in /proc/self/mountinfo")
}

/// The FUSE control filesystem at /sys/fs/fuse/connections, mounted for the test if it was
/// not (and unmounted again when dropped).
pub struct FuseControl {
    mounted_here: bool,
}

impl FuseControl {
    pub fn ensure() -> FuseControl {
        let mounted = fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(2) == Some("fusectl"));
        if !mounted {
            ok(Command::new("mount").args(["-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"]));
        }
        FuseControl { mounted_here: !mounted }
    }
}

impl Drop for FuseControl {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = Command::new("umount").arg("/sys/fs/fuse/connections").status();
        }
    }
}

/// A kernel setting (a sysctl, a module parameter) set for the length of a test; the old value comes back when dropped (also when
/// the test fails).
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    /// Sets `path` to `value`; None where the kernel has no such setting.
    pub fn set(path: &str, value: &str) -> Option<Sysctl> {
        let old = fs::read_to_string(path).ok()?;
        fs::write(path, value).unwrap_or_else(|e| panic!("cannot set {path}: {e} (the tests run as root)"));
        Some(Sysctl {
            path: path.into(),
            old: old.trim().to_owned(),
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, &self.old) {
            eprintln!("cannot restore {} to {}: {e}", self.path.display(), self.old);
        }
    }
}

/// Runs `call` on this thread while another thread interrupts it with SIGUSR1 (its handler
/// installed, doing nothing) after `delay`, then every 50 ms in case the first came before the
/// call began; returns what `call` returned and how long after the first signal it came back.
pub fn interrupted<R>(delay: Duration, call: impl FnOnce() -> R) -> (R, Duration) {
    // SAFETY: the id of this very thread.
    let me = unsafe { libc::pthread_self() } as usize;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let signaller = thread::spawn(move || {
        thread::sleep(delay);
        let first = Instant::now();
        loop {
            // SAFETY: the thread is alive until it says it is done.
            unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
            if done_rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                return first.elapsed();
            }
        }
    });
    let result = call();
    let _ = done_tx.send(());
    (result, signaller.join().unwrap())
}
