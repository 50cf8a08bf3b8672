//! `cab status`: what each running mount serves and is doing, asked of its control socket
//! (`mount::control`) — found from the store's records of running mounts, or named by its
//! mount point.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use crate::config::Settings;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Only the mount at this mount point.
    mountpoint: Option<PathBuf>,
    /// One JSON object per mount.
    #[arg(long)]
    json: bool,
    /// Show it again every second, until interrupted.
    #[arg(long)]
    watch: bool,
}

pub fn status(args: StatusArgs, settings: &Settings) -> Result<ExitCode> {
    let store = super::open_store(settings)?;
    loop {
        let mut mounts = store.mounts()?;
        if let Some(want) = &args.mountpoint {
            let want = crate::mount::absolute_mountpoint(want);
            mounts.retain(|m| m.mountpoint == want);
            if mounts.is_empty() {
                bail!(
                    "no cab mount at {} uses the store {}",
                    want.display(),
                    store.root().display()
                );
            }
        }
        if args.watch {
            // Clear the screen and go home, as watch(1) does.
            print!("\x1b[H\x1b[2J");
        }
        if mounts.is_empty() {
            println!("no cab mount is running on the store {}", store.root().display());
        }
        for mount in &mounts {
            let socket = crate::mount::control::socket_path(store.root(), mount.pid);
            match ask(&socket) {
                Ok(snapshot) if args.json => println!("{snapshot}"),
                Ok(snapshot) => print_human(&snapshot),
                Err(e) => println!(
                    "{} (pid {}): no answer from its control socket: {e:#}",
                    mount.mountpoint.display(),
                    mount.pid
                ),
            }
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn ask(socket: &std::path::Path) -> Result<serde_json::Value> {
    let mut stream = UnixStream::connect(socket).with_context(|| format!("cannot connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    serde_json::from_str(&text).context("not a status this cab reads")
}

fn print_human(s: &serde_json::Value) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let str_of = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    println!(
        "{} (pid {}, manifest {}, up {} s)",
        str_of(&s["mountpoint"]),
        s["pid"],
        str_of(&s["manifest"]),
        now.saturating_sub(s["since"].as_u64().unwrap_or(now))
    );
    let empty = Vec::new();
    for island in s["served"].as_array().unwrap_or(&empty) {
        let rev = island["rev"]
            .as_str()
            .map(|r| format!(" at {}", &r[..r.len().min(12)]))
            .unwrap_or_default();
        println!(
            "  {}: {}{rev}, served by {}{}",
            str_of(&island["place"]),
            str_of(&island["tree"]),
            str_of(&island["served_by"]),
            local_share(&island["local"])
        );
    }
    for fetch in s["fetching"].as_array().unwrap_or(&empty) {
        let rev = fetch["rev"]
            .as_str()
            .map(|r| format!(" (commit {r})"))
            .unwrap_or_default();
        println!("  {}: fetching{rev}", str_of(&fetch["place"]));
    }
    for download in s["downloads"].as_array().unwrap_or(&empty) {
        let mb = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as f64 / 1e6;
        println!(
            "  downloading {}: {:.1} MB in {} s ({:.1} MB/s), {} files",
            str_of(&download["label"]),
            mb(&download["bytes"]),
            download["seconds"],
            mb(&download["bytes_per_second"]),
            download["files"]
        );
    }
    for failure in s["failed"].as_array().unwrap_or(&empty) {
        let retry = failure["retry_at"].as_u64().unwrap_or(0);
        let when = if retry > now {
            format!("tried again in {} s", retry - now)
        } else {
            "tried again at the next look".to_owned()
        };
        let error = str_of(&failure["error"]).replace('\n', "\n    ");
        println!("  {}: FAILED ({when}): {error}", str_of(&failure["place"]));
    }
    let pending = s["pushes_pending"].as_u64().unwrap_or(0);
    if pending > 0 {
        println!("  {pending} push(es) to the remote pending");
    }
    if s["remote"].is_object() {
        println!("  {}", remote_health(&s["remote"], now));
    }
    let named = s["islands"].as_array().map_or(0, Vec::len);
    let served = s["served"].as_array().map_or(0, Vec::len);
    println!("  {named} named islands; {served} trees served");
}

/// "; 1,234 of 54,518 files, 12.3 of 600.0 MB here" for a tree served as its files arrive.
fn local_share(local: &serde_json::Value) -> String {
    let n = |key: &str| local[key].as_u64().unwrap_or(0);
    if !local.is_object() {
        return String::new();
    }
    format!(
        "; {} of {} files, {:.1} of {:.1} MB here",
        grouped(n("files_local")),
        grouped(n("files")),
        n("bytes_local") as f64 / 1e6,
        n("bytes") as f64 / 1e6
    )
}

/// The remote's health as the mount's requests found it: how the last one went, the counts,
/// and the last error with how long ago it was.
fn remote_health(remote: &serde_json::Value, now: u64) -> String {
    let ago = |key: &str| remote[key].as_u64().map(|t| format!("{} s ago", now.saturating_sub(t)));
    let last = match remote["last_ok"].as_bool() {
        None => "no request yet".to_owned(),
        Some(true) => format!("last request answered {}", ago("last_answer_at").unwrap_or_default()),
        Some(false) => "last request FAILED".to_owned(),
    };
    let mut said = format!(
        "remote {}: {last} ({} answered, {} failed)",
        remote["url"].as_str().unwrap_or("-"),
        remote["answered"],
        remote["failed"]
    );
    if let (Some(error), Some(when)) = (remote["last_error"].as_str(), ago("last_error_at")) {
        said.push_str(&format!("; last error {when}: {}", error.replace('\n', "\n    ")));
    }
    said
}

/// `n` with its thousands apart: 54,518.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_grouped() {
        assert_eq!(super::grouped(0), "0");
        assert_eq!(super::grouped(999), "999");
        assert_eq!(super::grouped(1234), "1,234");
        assert_eq!(super::grouped(54_518_000), "54,518,000");
    }
}
