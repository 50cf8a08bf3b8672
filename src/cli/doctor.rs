//! `cab doctor`: checks what cab depends on — the kernel's FUSE and what the read paths need,
//! the store, the configuration, the remote store, the tokens — and says how to fix each thing
//! that is wrong. Exit code 0 when nothing is.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use crate::config::Settings;
use crate::store::remote::{Body, Timeouts};

/// How one check came out.
enum Verdict {
    Ok,
    /// Works, with something worth knowing (a read path that will not be available, say).
    Note,
    /// Broken: cab (or part of it) will not work until it is fixed.
    Fail,
}

/// What the checks found, printed as they run.
struct Report {
    failed: usize,
}

impl Report {
    fn say(&mut self, verdict: Verdict, what: &str, detail: impl AsRef<str>) {
        let mark = match verdict {
            Verdict::Ok => "ok  ",
            Verdict::Note => "note",
            Verdict::Fail => {
                self.failed += 1;
                "FAIL"
            }
        };
        println!("{mark}  {what}: {}", detail.as_ref());
    }
}

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {}

/// Runs every check; exit code 1 if any failed.
pub fn doctor(_args: DoctorArgs, settings: &Settings) -> Result<ExitCode> {
    let mut report = Report { failed: 0 };
    fuse(&mut report);
    kernel(&mut report);
    configuration(&mut report, settings);
    store(&mut report, settings);
    let runtime = super::fetch::runtime()?;
    runtime.block_on(remote(&mut report, settings));
    runtime.block_on(tokens(&mut report, settings));
    if report.failed == 0 {
        println!("all is well");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} check(s) failed", report.failed);
        Ok(ExitCode::from(1))
    }
}

fn is_root() -> bool {
    // SAFETY: a plain syscall.
    unsafe { libc::geteuid() == 0 }
}

fn fuse(report: &mut Report) {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Ok(_) => report.say(Verdict::Ok, "/dev/fuse", "opens"),
        Err(e) => report.say(
            Verdict::Fail,
            "/dev/fuse",
            format!("cannot open it ({e}): load the module (`modprobe fuse`) or, in a container, pass the device in"),
        ),
    }
    if is_root() {
        report.say(Verdict::Ok, "mounting", "as root: mount(2) directly");
    } else {
        let found = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|d| d.join("fusermount3").is_file()))
            .unwrap_or(false);
        if found {
            report.say(Verdict::Ok, "mounting", "fusermount3 is on PATH");
        } else {
            report.say(
                Verdict::Fail,
                "mounting",
                "fusermount3 is not on PATH: install it (Debian: `apt install fuse3`)",
            );
        }
    }
}

/// The running kernel's version, as (major, minor).
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Where the kernel offers FUSE over io_uring (Linux 6.14+), off by default.
const URING_PARAMETER: &str = "/sys/module/fuse/parameters/enable_uring";

fn kernel(report: &mut Report) {
    let Some(version) = kernel_version() else {
        report.say(Verdict::Note, "kernel", "cannot read /proc/sys/kernel/osrelease");
        return;
    };
    let at_least = |major: u32, minor: u32| version >= (major, minor);
    report.say(Verdict::Ok, "kernel", format!("Linux {}.{}", version.0, version.1));
    // The same check a mount makes before it hands trees to the kernel, plus the version
    // that file-backed mounts need (an older kernel refuses them at the first attach).
    let (verdict, detail) = match crate::mount::kernel_serve_unavailable() {
        Some(why) => (Verdict::Note, format!("{why}: stored trees stay on FUSE")),
        None if !at_least(6, 12) => (
            Verdict::Note,
            "Linux 6.12+ is needed for file-backed EROFS mounts: stored trees stay on FUSE".to_owned(),
        ),
        None => (
            Verdict::Ok,
            "stored trees are served by the kernel (EROFS images)".to_owned(),
        ),
    };
    report.say(verdict, "kernel-served trees", detail);
    if at_least(6, 9) && is_root() {
        report.say(Verdict::Ok, "passthrough", "available (`--passthrough`)");
    } else {
        report.say(
            Verdict::Note,
            "passthrough",
            "needs root and Linux 6.9+; the plain read path is used",
        );
    }
    let uring = std::fs::read_to_string(URING_PARAMETER);
    let (verdict, detail) = match uring.as_deref().map(str::trim) {
        Ok("Y") => (
            Verdict::Ok,
            "on: FUSE requests are answered on the caller's CPU".to_owned(),
        ),
        Ok(_) => (
            Verdict::Note,
            format!(
                "off: `echo Y > {URING_PARAMETER}` as root makes FUSE mounts (unprivileged ones, trees still arriving) faster"
            ),
        ),
        Err(_) => (
            Verdict::Note,
            "needs Linux 6.14+: FUSE requests go through /dev/fuse".to_owned(),
        ),
    };
    report.say(verdict, "FUSE over io_uring", detail);
    if Path::new("/proc/sys/fs/fuse/max_request_timeout").exists() {
        let cap = std::fs::read_to_string("/proc/sys/fs/fuse/max_request_timeout").unwrap_or_default();
        let detail = match cap.trim() {
            "0" | "" => "cab declares one covering its longest wait".to_owned(),
            cap => format!("the admin's cap is {cap} s: a wait longer than that answers EAGAIN"),
        };
        report.say(Verdict::Ok, "request timeouts", detail);
    } else {
        report.say(
            Verdict::Ok,
            "request timeouts",
            "this kernel does not time FUSE requests out",
        );
    }
}

fn configuration(report: &mut Report, settings: &Settings) {
    match &settings.file {
        Some(path) => report.say(
            Verdict::Ok,
            "configuration",
            format!("{} (read, valid)", path.display()),
        ),
        None => report.say(
            Verdict::Ok,
            "configuration",
            "no configuration file: defaults, the environment and flags",
        ),
    }
}

fn store(report: &mut Report, settings: &Settings) {
    let root = match settings.store() {
        Ok(root) => root,
        Err(e) => return report.say(Verdict::Fail, "store", format!("{e:#}: set `store` or CAB_STORE")),
    };
    let shown = root.display().to_string();
    let store = match crate::store::Store::open(&root) {
        Ok(store) => store,
        Err(e) => {
            return report.say(
                Verdict::Fail,
                "store",
                format!("{e:#}: make {shown} a writable directory, or point `store` elsewhere"),
            );
        }
    };
    let probe = root.join("tmp").join(format!("doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"probe").and_then(|()| std::fs::remove_file(&probe)) {
        Ok(()) => report.say(Verdict::Ok, "store", format!("{shown} is writable")),
        Err(e) => {
            return report.say(
                Verdict::Fail,
                "store",
                format!("cannot write in {shown} ({e}): fix its permissions or point `store` elsewhere"),
            );
        }
    }
    // SAFETY: statfs with a valid C string and a zeroed out-struct.
    let (kind, free) = unsafe {
        let c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).unwrap_or_default();
        let mut fs: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut fs) == 0 {
            (fs.f_type, Some(fs.f_bavail as u64 * fs.f_bsize as u64))
        } else {
            (0, None)
        }
    };
    let name = match kind {
        0xEF53 => "ext4",
        0x5846_5342 => "XFS (file data of images shared with blobs by reflink)",
        0x9123_683E => "btrfs (file data of images shared with blobs by reflink)",
        0x0102_1994 => "tmpfs (kernel-served trees need a disk filesystem)",
        0x6573_5546 => "a FUSE filesystem",
        0x6969 => "NFS (flock and renames there are not what cab expects)",
        _ => "another filesystem",
    };
    report.say(Verdict::Ok, "store filesystem", name);
    if let Some(free) = free {
        let gib = free as f64 / (1u64 << 30) as f64;
        let verdict = if free < 1 << 30 { Verdict::Fail } else { Verdict::Ok };
        let hint = if free < 1 << 30 {
            ": free some (`cab store gc`), or point `store` at a bigger disk"
        } else {
            ""
        };
        report.say(verdict, "store free space", format!("{gib:.1} GiB{hint}"));
    }
    match store.roots() {
        Ok(trees) => {
            let sample: Vec<_> = trees.iter().rev().take(3).collect();
            let broken: Vec<String> = sample
                .iter()
                .filter_map(|t| store.check_tree(t).err().map(|e| format!("{t}: {e}")))
                .collect();
            if broken.is_empty() {
                report.say(
                    Verdict::Ok,
                    "store contents",
                    format!("{} published trees; {} checked whole", trees.len(), sample.len()),
                );
            } else {
                report.say(
                    Verdict::Fail,
                    "store contents",
                    format!("{}: run `cab store verify`", broken.join("; ")),
                );
            }
        }
        Err(e) => report.say(Verdict::Fail, "store contents", format!("{e:#}")),
    }
}

async fn remote(report: &mut Report, settings: &Settings) {
    let timeouts = Timeouts {
        stall: Duration::from_secs(15),
        ..Default::default()
    };
    let remote = match super::remote(settings, timeouts) {
        Ok(Some(remote)) => remote,
        Ok(None) => return report.say(Verdict::Ok, "remote store", "none configured"),
        Err(e) => return report.say(Verdict::Fail, "remote store", format!("{e:#}")),
    };
    // One PUT and one HEAD of a probe: reachable, credentials accepted, bucket there.
    let key = format!("doctor/probe-{}", std::process::id());
    let put = remote.backend().put(&key, Body::Bytes(b"cab doctor".to_vec())).await;
    let head = match &put {
        Ok(()) => remote.backend().exists(&key).await,
        Err(_) => Ok(false),
    };
    match (put, head) {
        (Ok(()), Ok(true)) => report.say(
            Verdict::Ok,
            "remote store",
            format!("{remote}: a probe written and read back"),
        ),
        (Ok(()), Ok(false)) => report.say(
            Verdict::Fail,
            "remote store",
            format!("{remote}: a probe written could not be found again"),
        ),
        (Err(e), _) | (Ok(()), Err(e)) => report.say(
            Verdict::Fail,
            "remote store",
            format!("{e:#} (check the URL, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, and that the bucket exists)"),
        ),
    }
}

async fn tokens(report: &mut Report, settings: &Settings) {
    let credentials = match settings.credentials() {
        Ok(credentials) => credentials,
        Err(e) => return report.say(Verdict::Fail, "tokens", format!("{e:#}")),
    };
    let hosts: Vec<String> = credentials.hosts().map(str::to_owned).collect();
    if hosts.is_empty() {
        return report.say(Verdict::Ok, "tokens", "none (public repositories only)");
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build();
    for host in hosts {
        // The one API cab knows per forge that answers 401 to a rejected token.
        let gitlab = crate::derivation::url_host(&settings.forges().gitlab) == Some(host.as_str());
        let url = match host.as_str() {
            "github.com" | "api.github.com" => Some("https://api.github.com/user".to_owned()),
            _ if gitlab => Some(format!("https://{host}/api/v4/user")),
            _ => None,
        };
        let (Some(url), Ok(client)) = (url, &client) else {
            report.say(
                Verdict::Ok,
                &format!("token for {host}"),
                "present (no API cab knows to check it with)",
            );
            continue;
        };
        let mut request = client.get(&url).header("User-Agent", "cab-doctor");
        if let Some(authorization) = credentials.authorization(&host, gitlab) {
            request = request.header("Authorization", authorization);
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => report.say(Verdict::Ok, &format!("token for {host}"), "accepted"),
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => report.say(
                Verdict::Fail,
                &format!("token for {host}"),
                format!("rejected by {url} ({}): make a new one", r.status()),
            ),
            Ok(r) => report.say(
                Verdict::Note,
                &format!("token for {host}"),
                format!("{url} answered {}", r.status()),
            ),
            Err(e) => report.say(
                Verdict::Note,
                &format!("token for {host}"),
                format!("cannot reach {url}: {e}"),
            ),
        }
    }
}
