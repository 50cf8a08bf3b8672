//! A mount's control socket, for `cab status`: a Unix socket in the store
//! (`STORE/control/<pid>.sock`, owner-only), answering every connection with one JSON snapshot
//! of what the mount serves and is doing ([`Islands::status`]). A socket and not xattrs on the
//! mount's root: it answers on a thread of its own, whatever the FUSE workers are doing, and
//! from a mount the kernel no longer reaches (a busy or detached one), and it can say what has
//! no place in the tree (fetches in flight, pushes pending, failures of browsed names).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};

use super::Islands;

/// Where the control sockets of a store's mounts are.
pub fn socket_dir(store_root: &Path) -> PathBuf {
    store_root.join("control")
}

/// The control socket of the mount whose daemon is `pid`.
pub fn socket_path(store_root: &Path, pid: u32) -> PathBuf {
    socket_dir(store_root).join(format!("{pid}.sock"))
}

/// The socket, removed when dropped.
pub struct Control {
    path: PathBuf,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on this process's control socket and answers on a thread of its own.
pub fn listen(islands: Arc<Islands>, mountpoint: &Path, manifest: Option<&Path>) -> Result<Control> {
    let store_root = islands.realizer().store().root().to_owned();
    let dir = socket_dir(&store_root);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = socket_path(&store_root, std::process::id());
    // Sockets of daemons that are gone (one that exits while its mount is busy does not
    // unwind to remove its own), and one left by an earlier process with this pid.
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_suffix(".sock"));
        if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    let header = serde_json::json!({
        "pid": std::process::id(),
        "mountpoint": mountpoint.display().to_string(),
        "manifest": manifest.map(|m| m.display().to_string()),
        "since": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    });
    std::thread::Builder::new()
        .name("cab-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut snapshot = header.clone();
                if let (Some(out), serde_json::Value::Object(status)) = (snapshot.as_object_mut(), islands.status()) {
                    out.extend(status);
                }
                let _ = writeln!(stream, "{snapshot}");
            }
        })
        .context("cannot start the control thread")?;
    Ok(Control { path })
}
