//! `cab mount` served over FUSE's io_uring transport (Linux 6.14+): every guarantee of the
//! classic /dev/fuse loop, checked again with requests arriving on per-CPU rings — a real tree
//! byte for byte, parked requests interrupted by the thousand, a panicking handler, read-ahead's
//! FUSE_NOTIFY_STORE, passthrough's backing ids, unmount, Ctrl-C, kill -9 and an aborted
//! connection — and the falls back to /dev/fuse: the kernel parameter off, io_uring refused,
//! a REGISTER refused.
//!
//! The kernel offers io_uring at INIT only while `/sys/module/fuse/parameters/enable_uring` is
//! on; each test sets it (before mounting) and puts the old value back on every exit path. The
//! tests run one at a time, since the parameter is the whole machine's. On a kernel without the
//! parameter they say so and pass.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use support::*;

const PARAMETER: &str = "/sys/module/fuse/parameters/enable_uring";
const URING_LINE: &str = "serving FUSE requests over io_uring";
const CLASSIC_LINE: &str = "serving FUSE requests through /dev/fuse";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `enable_uring` on or off for the test; None (the test is skipped) on kernels before 6.14.
fn enable_uring(on: bool) -> Option<Sysctl> {
    let setting = Sysctl::set(PARAMETER, if on { "Y" } else { "N" });
    if setting.is_none() {
        eprintln!("skipped: this kernel has no {PARAMETER} (FUSE over io_uring needs Linux 6.14+)");
    }
    setting
}

/// The number of possible CPUs: the kernel's queues.
fn possible_cpus() -> usize {
    let list = fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    list.trim()
        .split(',')
        .map(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1
        })
        .sum()
}

/// The names of the daemon's threads.
fn threads_of(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim().to_owned())
        .collect()
}

/// How many of the daemon's threads serve rings.
fn ring_threads(mount: &Mount) -> usize {
    threads_of(mount.child.id())
        .iter()
        .filter(|name| name.starts_with("fuse-ring-"))
        .count()
}

/// Asserts the daemon logged that it serves over io_uring, with a queue per possible CPU and
/// two rings each, one thread each.
fn assert_over_io_uring(mount: &Mount) {
    let line = format!("{URING_LINE} ({} queues, 2 rings each)", possible_cpus());
    assert!(
        mount.wait_log(&line, Duration::from_secs(5)),
        "expected `{line}`\n{}",
        mount.log()
    );
    assert!(!mount.log().contains(CLASSIC_LINE), "{}", mount.log());
    assert_eq!(
        ring_threads(mount),
        2 * possible_cpus(),
        "{:?}",
        threads_of(mount.child.id())
    );
}

/// Runs `what` on a thread pinned to `cpu`: its requests go to that CPU's queue.
fn on_cpu<T: Send + 'static>(cpu: usize, what: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity on this thread.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        assert_eq!(rc, 0, "cannot run on CPU {cpu}: {}", std::io::Error::last_os_error());
        what()
    })
    .join()
    .unwrap()
}

/// Runs `what`, which must finish within `bound` (a hang shows as a failure, not a stuck run).
fn answers_within<T: Send + 'static>(bound: Duration, label: &str, what: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(what());
    });
    rx.recv_timeout(bound)
        .unwrap_or_else(|_| panic!("{label}: no answer within {bound:?}: the mount hangs"))
}

/// A repository whose archive is `size` incompressible bytes plus a small file.
fn push_big(world: &World, repo: &str, size: usize, seed: u64) {
    let src = world.dir(&format!("src-{}", repo.replace('/', "-")));
    write_file(&src.join("payload.bin"), &pseudo_random(size, seed), 0o644);
    write_file(&src.join("small.txt"), format!("{repo}\n").as_bytes(), 0o644);
    world.push(repo, &src, "payload");
}

/// A real repository: two Python packages, an executable, symlinks, a 3 MB file (reads of a
/// whole ring entry's payload), and a directory of many small files.
fn real_tree(root: &Path) {
    copy_tree(&python_package("email"), &root.join("email"));
    copy_tree(&python_package("json"), &root.join("lib/json"));
    write_file(&root.join("bin/run.sh"), b"#!/bin/sh\necho ring\n", 0o755);
    write_file(&root.join("data/big.bin"), &pseudo_random(3 << 20, 7), 0o644);
    for i in 0..300 {
        write_file(
            &root.join(format!("many/f{i:03}.txt")),
            format!("file {i}\n").as_bytes(),
            0o644,
        );
    }
    make_symlink("email/__init__.py", &root.join("link"));
}

extern "C" fn ignore_signal(_: libc::c_int) {}

// ---------------------------------------------------------------------------------------------
// What is served
// ---------------------------------------------------------------------------------------------

#[test]
fn a_real_tree_reads_byte_for_byte_over_io_uring_and_through_passthrough() {
    let _serial = serial();
    let Some(_uring) = enable_uring(true) else { return };
    let world = World::new("uring-real", &[]);
    let src = world.dir("src");
    real_tree(&src);
    let rev = world.push("acme/widgets", &src, "widgets");
    world.manifest("widgets = '<github:acme/widgets>'\n");
    let reference = world.reference("acme/widgets", &rev);

    let mount = world.mount(Mode::Plain.args());
    assert_over_io_uring(&mount);
    // Every CPU's queue serves: the tree's parts read first from one CPU each.
    for (i, part) in ["email", "lib", "many", "data", "bin"].into_iter().enumerate() {
        let (reference, island) = (reference.join(part), world.at("widgets").join(part));
        on_cpu(i % possible_cpus(), move || assert_same_tree(&reference, &island));
    }
    assert_same_tree(&reference, &world.at("widgets"));
    assert_eq!(ok_text(&mut Command::new(world.at("widgets/bin/run.sh"))), "ring\n");
    mount.assert_read_path(Mode::Plain);
    mount.stop();

    // Passthrough: the backing file is registered by an ioctl on the descriptor, the open is
    // answered on a ring.
    let mount = world.mount(Mode::Passthrough.args());
    assert_over_io_uring(&mount);
    assert_eq!(
        fs::read(world.at("widgets/data/big.bin")).unwrap(),
        fs::read(reference.join("data/big.bin")).unwrap()
    );
    assert_same_tree(&reference, &world.at("widgets"));
    mount.assert_read_path(Mode::Passthrough);
    mount.stop();
}

/// Read-ahead pushes a directory's small files with FUSE_NOTIFY_STORE, written to /dev/fuse
/// while the reads come over a ring, as `read_ahead_pushes_for_readers_not_for_walks` in
/// mount.rs checks over /dev/fuse.
#[test]
fn read_ahead_pushes_through_notify_store_over_io_uring() {
    let _serial = serial();
    let Some(_uring) = enable_uring(true) else { return };
    let world = World::new("uring-read-ahead", &[]);
    let src = world.dir("src");
    for i in 0..20 {
        write_file(
            &src.join(format!("pkg/m{i:02}.py")),
            &pseudo_random(3000 + i * 100, i as u64),
            0o644,
        );
    }
    write_file(&src.join("pkg/big.bin"), &pseudo_random(600 * 1024, 99), 0o644);
    world.push("acme/widgets", &src, "one");
    world.manifest("widgets = '<github:acme/widgets>'\n");
    let pushed = |log: &str| log.lines().filter(|l| l.contains("read-ahead: pushed")).count();

    let mut args = vec!["-vv"];
    args.extend_from_slice(Mode::Plain.args());
    let mount = world.mount(&args);
    assert_over_io_uring(&mount);
    let found = ok_text(tool("find").arg(world.at("widgets")));
    assert_eq!(found.lines().count(), 23, "{found}");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(pushed(&mount.log()), 0, "a walk pushes nothing\n{}", mount.log());
    assert_eq!(
        fs::read(world.at("widgets/pkg/m00.py")).unwrap(),
        fs::read(src.join("pkg/m00.py")).unwrap()
    );
    assert!(
        mount.wait_log("read-ahead: pushed 19 files", Duration::from_secs(10)),
        "the first read pushes the 19 small files beside it\n{}",
        mount.log()
    );
    // A failed push would be logged (at debug, which -vv shows).
    assert!(!mount.log().contains("read-ahead of inode"), "{}", mount.log());
    for entry in fs::read_dir(src.join("pkg")).unwrap() {
        let name = entry.unwrap().file_name();
        assert_eq!(
            fs::read(world.at("widgets/pkg").join(&name)).unwrap(),
            fs::read(src.join("pkg").join(&name)).unwrap(),
            "{name:?}"
        );
    }
    mount.stop();
}

/// Read-ahead fills pages that readers on the same CPU are reading at that moment: a push waits
/// for such a page's lock, held by a READ that came in over a ring. Pushed from a ring thread,
/// that READ could sit in the pushing thread's own entry and never be answered; every reader
/// here must finish, mount after mount.
#[test]
fn read_ahead_and_readers_of_the_same_directory_on_one_cpu_all_finish() {
    let _serial = serial();
    let Some(_uring) = enable_uring(true) else { return };
    let world = World::new("uring-ahead-race", &[]);
    let src = world.dir("src");
    for d in 0..8 {
        for i in 0..40 {
            let name = format!("d{d}/f{i:02}.txt");
            write_file(
                &src.join(&name),
                &pseudo_random(2000 + 300 * i, (d * 40 + i) as u64),
                0o644,
            );
        }
    }
    world.push("acme/widgets", &src, "one");
    world.manifest("widgets = '<github:acme/widgets>'\n");
    for round in 0..4 {
        let mount = world.mount(Mode::Plain.args());
        assert_over_io_uring(&mount);
        // A deadlocked daemon cannot be killed (its thread waits for a page lock): if this
        // round fails, the connection is aborted so that the machine is left as it was.
        let _abort = AbortIfFailing::new(&world.at(""));
        let readers: Vec<_> = (0..4)
            .map(|reader| {
                let (island, src) = (world.at("widgets"), src.clone());
                thread::spawn(move || {
                    on_cpu(0, move || {
                        for d in 0..8 {
                            // Each reader goes through the directory in its own order.
                            for k in 0..40 {
                                let name = format!("d{d}/f{:02}.txt", (k * (2 * reader + 1) + 7 * reader) % 40);
                                assert_eq!(
                                    fs::read(island.join(&name)).unwrap(),
                                    fs::read(src.join(&name)).unwrap()
                                );
                            }
                        }
                    })
                })
            })
            .collect();
        answers_within(
            Duration::from_secs(60),
            &format!("round {round}: readers beside read-ahead"),
            move || readers.into_iter().for_each(|r| r.join().unwrap()),
        );
        mount.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Parked requests and interrupts
// ---------------------------------------------------------------------------------------------

/// 2,000 lookups parked on a pending island, each interrupted at a random moment, all return
/// EINTR promptly, while a stored island keeps answering on every CPU; no ring thread is lost.
#[test]
fn thousands_of_parked_requests_interrupted_at_random_moments_all_return() {
    let _serial = serial();
    let Some(_uring) = enable_uring(true) else { return };
    // The archive trickles: its island stays pending for the length of the test.
    let world = World::new(
        "uring-interrupts",
        &["--throttle", "2000", "--throttle-path-regex", "slow"],
    );
    let stored = world.dir("stored-src");
    write_file(&stored.join("here.txt"), b"stored\n", 0o644);
    world.push("acme/stored", &stored, "stored");
    world.manifest("stored = '<github:acme/stored>'\n");
    ok(world.cab().arg("update"));
    push_big(&world, "acme/slow", 1_000_000, 3);
    world.manifest("stored = '<github:acme/stored>'\nslow = '<github:acme/slow>'\n");
    let mut args = vec!["--max-time", "60", "-vv"];
    args.extend_from_slice(Mode::Plain.args());
    let mount = world.mount(&args);
    assert_over_io_uring(&mount);
    let rings_before = ring_threads(&mount);
    // A handler without SA_RESTART: a signal makes a waiting call return EINTR.
    // SAFETY: installs a handler that does nothing, for a signal nothing else here uses.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_signal as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut());
    }
    let slow = world.at("slow");
    assert!(fs::metadata(&slow).unwrap().is_dir());

    // Meanwhile, on every CPU in turn, the stored island answers: a name looked up for the
    // first time each time, so that each is a request.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (done, stored) = (done.clone(), world.at("stored"));
        thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut k = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let missing = stored.join(format!("missing-{k}"));
                let started = Instant::now();
                let errno = on_cpu(k % possible_cpus(), move || errno_of(fs::metadata(missing)));
                assert_eq!(errno, Some(libc::ENOENT));
                slowest = slowest.max(started.elapsed());
                k += 1;
                thread::sleep(Duration::from_millis(20));
            }
            (slowest, k)
        })
    };

    let (threads, rounds) = (16, 125);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let slow = slow.clone();
            thread::spawn(move || {
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
                let mut slowest = Duration::ZERO;
                for k in 0..rounds {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Each call waits on the pending island (a distinct name each time, so the
                    // kernel sends every one); it is interrupted after 0-20 ms.
                    let delay = Duration::from_micros(seed % 20_000);
                    let path = slow.join(format!("name-{t}-{k}"));
                    let (result, after_first_signal) = interrupted(delay, || fs::symlink_metadata(&path));
                    assert_eq!(
                        result.as_ref().err().and_then(|e| e.raw_os_error()),
                        Some(libc::EINTR),
                        "{}: {result:?}",
                        path.display()
                    );
                    slowest = slowest.max(after_first_signal);
                }
                slowest
            })
        })
        .collect();
    let slowest = workers.into_iter().map(|w| w.join().unwrap()).max().unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (slowest_probe, probes) = prober.join().unwrap();
    assert!(
        slowest < Duration::from_secs(3),
        "an interrupted call waited {slowest:?} after its first signal: an interrupt was lost\n{}",
        mount.log()
    );
    assert!(probes > 10, "the stored island was read {probes} times");
    assert!(
        slowest_probe < Duration::from_secs(2),
        "a read of a stored island took {slowest_probe:?} while requests were parked\n{}",
        mount.log()
    );
    // How many interrupts the kernel did not send (see src/mount/fuse/watchdog.rs).
    eprintln!(
        "interrupts made up for: {}",
        mount.log().matches("interrupting it here").count()
    );
    assert_eq!(ring_threads(&mount), rings_before, "no ring thread lost");
    assert!(
        !mount.log().contains("may wait until one of them is answered"),
        "{}",
        mount.log()
    );
    // The mount is as it was.
    assert_eq!(read_text(&world.at("stored/here.txt")), "stored\n");
    mount.stop();
}

/// A handler that panics costs its request only (EIO), on every CPU's rings: each ring thread
/// survives, and the mount keeps serving from all of them.
#[test]
fn a_panicking_handler_answers_eio_and_every_ring_keeps_serving() {
    let _serial = serial();
    let Some(_uring) = enable_uring(true) else { return };
    let world = World::new("uring-panic", &[]);
    let src = world.dir("src");
    write_file(&src.join("hello.txt"), b"still here\n", 0o644);
    world.push("acme/here", &src, "here");
    world.manifest("here = '<github:acme/here>'\n");
    let mut cmd = world.cab();
    cmd.env("CAB_FAILPOINT", "mount-panic")
        .arg("mount")
        .arg(&world.mnt)
        .args(Mode::Plain.args());
    let mount = Mount::start(cmd, &world.mnt);
    assert_over_io_uring(&mount);
    let serving = |pid: u32| threads_of(pid).iter().filter(|n| n.starts_with("fuse-")).count();
    let before = serving(mount.child.id());
    // More panics than rings, from every CPU.
    for cpu in 0..possible_cpus() {
        for _ in 0..6 {
            let path = world.at("cab-failpoint-panic");
            let errno = answers_within(Duration::from_secs(5), "a panicking lookup", move || {
                on_cpu(cpu, move || errno_of(fs::metadata(path)))
            });
            assert_eq!(errno, Some(libc::EIO));
        }
    }
    assert!(mount.log().contains("a bug in cab: request"), "{}", mount.log());
    assert_eq!(
        serving(mount.child.id()),
        before,
        "no ring thread lost: {:?}",
        threads_of(mount.child.id())
    );
    // Every CPU's rings still answer (a name not asked before, so the kernel asks).
    assert_eq!(read_text(&world.at("here/hello.txt")), "still here\n");
    for cpu in 0..possible_cpus() {
        let path = world.at(&format!("here/missing-{cpu}"));
        assert_eq!(on_cpu(cpu, move || errno_of(fs::metadata(path))), Some(libc::ENOENT));
    }
    mount.stop();
}

// ---------------------------------------------------------------------------------------------
// The end of a mount
// ---------------------------------------------------------------------------------------------

/// SIGTERM (also while a request is parked), Ctrl-C, `cab unmount`, kill -9 and an aborted
/// connection end an io_uring mount as they end one served through /dev/fuse.
#[test]
fn unmount_ctrl_c_kill_9_and_abort_end_the_mount_as_over_dev_fuse() {
    let _serial = serial();
    let Some(_uring) = enable_uring(true) else { return };
    let world = World::new(
        "uring-lifecycle",
        &["--throttle", "2000", "--throttle-path-regex", "slow"],
    );
    let src = world.dir("src");
    write_file(&src.join("f.txt"), b"lifecycle\n", 0o644);
    world.push("acme/widgets", &src, "one");
    world.manifest("widgets = '<github:acme/widgets>'\n");
    ok(world.cab().arg("update"));
    push_big(&world, "acme/slow", 1_000_000, 5);
    world.manifest("widgets = '<github:acme/widgets>'\nslow = '<github:acme/slow>'\n");
    let read = |w: &World| read_text(&w.at("widgets/f.txt"));
    let args = Mode::Plain.args();

    // SIGTERM while an `ls` waits in a parked request: unmounted, exit 0, the caller freed.
    let mount = world.mount(args);
    assert_over_io_uring(&mount);
    assert_eq!(read(&world), "lifecycle\n");
    let mut waiting = Children(vec![
        tool("ls")
            .arg(world.at("slow"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ]);
    assert!(
        mount.wait_log("fetcher: downloading", Duration::from_secs(30)),
        "{}",
        mount.log()
    );
    thread::sleep(Duration::from_millis(300));
    assert!(
        waiting.0[0].try_wait().unwrap().is_none(),
        "ls ended while its fetch stalls"
    );
    mount.stop();
    assert!(
        wait_child(&mut waiting.0[0], Duration::from_secs(5)).is_some(),
        "the parked caller is freed when the mount ends"
    );

    // Ctrl-C.
    let mut mount = world.mount(args);
    assert_over_io_uring(&mount);
    assert_eq!(read(&world), "lifecycle\n");
    let (status, log) = mount.stop_with(libc::SIGINT);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("unmounted "), "{log}");
    assert!(!is_mounted(&world.mnt));

    // `cab unmount` of a live mount: the daemon sees the connection end and exits 0.
    let mut mount = world.mount(args);
    assert_over_io_uring(&mount);
    assert_eq!(read(&world), "lifecycle\n");
    ok(world.cab().arg("unmount").arg(&world.mnt));
    let status = wait_child(&mut mount.child, STOP_TIMEOUT).expect("the daemon exits after `cab unmount`");
    assert_eq!(status.code(), Some(0), "{}", mount.log());
    assert!(!is_mounted(&world.mnt));
    drop(mount);

    // kill -9 leaves a stale mount (the rings go with the process); `cab unmount` clears it.
    let mount = world.mount(args);
    assert_over_io_uring(&mount);
    assert_eq!(read(&world), "lifecycle\n");
    mount.kill9();
    assert!(is_mounted(&world.mnt), "a killed daemon leaves its mount behind");
    wait_stale(&world.mnt);
    let out = ok(world.cab().arg("unmount").arg(&world.mnt));
    assert!(text(&out.stderr).contains("stale"), "{}", text(&out.stderr));
    assert!(!is_mounted(&world.mnt));

    // An aborted connection (what the kernel's request timeout does): exit 1, no `unmounted`.
    let _control = FuseControl::ensure();
    let mut mount = world.mount(args);
    assert_over_io_uring(&mount);
    assert_eq!(read(&world), "lifecycle\n");
    let connection = connection_of(&world.mnt);
    fs::write(format!("/sys/fs/fuse/connections/{connection}/abort"), "1").unwrap();
    let status = wait_child(&mut mount.child, STOP_TIMEOUT).expect("the daemon ends with its connection");
    mount.stderr.wait_closed(Duration::from_secs(5));
    let log = mount.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("the kernel ended the FUSE connection"), "{log}");
    assert!(!is_mounted(&world.mnt), "the stale mount is cleared");
}

/// Waits (bounded) until stat on `mnt` fails with ENOTCONN.
fn wait_stale(mnt: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while errno_of(fs::metadata(mnt)) != Some(libc::ENOTCONN) {
        assert!(Instant::now() < deadline, "{} is not stale", mnt.display());
        thread::sleep(Duration::from_millis(100));
    }
}

/// Aborts the FUSE connection of a mount through fusectl if dropped while the test fails.
/// Mounts fusectl at the start: a test process whose threads wait on a dead connection may not
/// be able to start another process.
struct AbortIfFailing {
    connection: u32,
    _control: FuseControl,
}

impl AbortIfFailing {
    fn new(mnt: &Path) -> AbortIfFailing {
        AbortIfFailing {
            connection: connection_of(mnt.canonicalize().as_deref().unwrap_or(mnt)),
            _control: FuseControl::ensure(),
        }
    }
}

impl Drop for AbortIfFailing {
    fn drop(&mut self) {
        if thread::panicking() {
            let _ = fs::write(format!("/sys/fs/fuse/connections/{}/abort", self.connection), "1");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Falling back to /dev/fuse
// ---------------------------------------------------------------------------------------------

/// One mount, three ways to /dev/fuse: the parameter off (the kernel does not offer io_uring),
/// io_uring refused (`kernel.io_uring_disabled = 2`, as a sandbox would), and a REGISTER the
/// kernel refuses after io_uring was accepted (`CAB_FAILPOINT=uring-register`). Each logs why
/// and serves the tree byte for byte, with interrupts working.
#[test]
fn without_io_uring_the_mount_serves_through_dev_fuse() {
    let _serial = serial();
    let world = World::new("uring-fallback", &[]);
    let src = world.dir("src");
    real_tree(&src);
    let rev = world.push("acme/widgets", &src, "widgets");
    world.manifest("widgets = '<github:acme/widgets>'\n");
    let reference = world.reference("acme/widgets", &rev);
    let args = Mode::Plain.args();

    // The parameter off.
    let Some(off) = enable_uring(false) else { return };
    let mount = world.mount(args);
    assert!(
        mount.wait_log(CLASSIC_LINE, Duration::from_secs(5)),
        "expected `{CLASSIC_LINE}`\n{}",
        mount.log()
    );
    assert!(
        mount.log().contains("does not offer FUSE over io_uring"),
        "{}",
        mount.log()
    );
    assert_eq!(ring_threads(&mount), 0);
    assert_same_tree(&reference, &world.at("widgets"));
    mount.stop();
    drop(off);

    // io_uring refused outright.
    let _on = enable_uring(true);
    if let Some(disabled) = Sysctl::set("/proc/sys/kernel/io_uring_disabled", "2") {
        let mount = world.mount(args);
        assert!(
            mount.wait_log("io_uring is refused here", Duration::from_secs(5)),
            "{}",
            mount.log()
        );
        assert!(mount.log().contains(CLASSIC_LINE), "{}", mount.log());
        drop(disabled);
        assert_eq!(ring_threads(&mount), 0);
        assert_same_tree(&reference, &world.at("widgets"));
        mount.stop();
    }

    // A REGISTER refused after io_uring was accepted at INIT: the kernel falls back.
    let mut cmd = world.cab();
    cmd.env("CAB_FAILPOINT", "uring-register")
        .arg("mount")
        .arg(&world.mnt)
        .args(args);
    let mount = Mount::start(cmd, &world.mnt);
    assert!(mount.wait_log(URING_LINE, Duration::from_secs(5)), "{}", mount.log());
    assert_same_tree(&reference, &world.at("widgets"));
    assert!(
        mount.wait_log("refused a FUSE ring entry", Duration::from_secs(5)),
        "{}",
        mount.log()
    );
    let workers = threads_of(mount.child.id())
        .iter()
        .filter(|n| *n == "fuse-dev" || n.strip_prefix("fuse-").is_some_and(|i| i.parse::<u32>().is_ok()))
        .count();
    assert_eq!(workers, 4, "the device reader and three more workers");
    mount.stop();
}
