//! A real OpenSSH server on loopback for the remote-realizer tests: its own host key, a client
//! key made by the test and allowed in, and an ssh client configuration (`CAB_SSHOPTS="-F …"`)
//! that names it `realizer` and trusts only its host key. "Machines" behind it are wrapper
//! scripts that run `cab` with their own store, home and settings, as `program=` names them.
//! The server is killed when the guard is dropped.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The directory sshd needs for privilege separation, made by the first server that found it
/// missing and removed by the last one to stop.
static PRIVSEP: Mutex<(usize, bool)> = Mutex::new((0, false));
const PRIVSEP_DIR: &str = "/run/sshd";

/// The sshd binary.
fn sshd_binary() -> PathBuf {
    for candidate in ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("no sshd: run scripts/setup (it installs openssh-server)");
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(status.success(), "ssh-keygen failed");
}

/// A running sshd.
pub struct Sshd {
    dir: PathBuf,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    child: Option<Child>,
}

impl Sshd {
    /// Starts sshd under `dir` on a free port and waits until it answers.
    pub fn start(dir: &Path) -> Sshd {
        fs::create_dir_all(dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        {
            let mut privsep = PRIVSEP.lock().unwrap();
            if privsep.0 == 0 && !Path::new(PRIVSEP_DIR).exists() {
                fs::create_dir_all(PRIVSEP_DIR).unwrap();
                fs::set_permissions(PRIVSEP_DIR, fs::Permissions::from_mode(0o755)).unwrap();
                privsep.1 = true;
            }
            privsep.0 += 1;
        }
        keygen(&dir.join("host_key"));
        keygen(&dir.join("id"));
        fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let user = whoami();
        fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile none\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPrintMotd no\nPrintLastLog no\nLogLevel VERBOSE\n\
                 AllowUsers {user}\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let host_key = fs::read_to_string(dir.join("host_key.pub")).unwrap();
        let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        fs::write(
            dir.join("known_hosts"),
            format!("[127.0.0.1]:{port} {}\n", host_key.join(" ")),
        )
        .unwrap();
        fs::write(
            dir.join("ssh_config"),
            format!(
                "Host realizer\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {d}/id\n  \
                 IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n  \
                 HostKeyAlias [127.0.0.1]:{port}\n  LogLevel ERROR\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("sshd.log")).unwrap();
        let child = Command::new(sshd_binary())
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("sshd");
        let sshd = Sshd {
            dir,
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start: {}", sshd.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    /// What `CAB_SSHOPTS` must say for ssh to reach it.
    pub fn ssh_options(&self) -> String {
        format!("-F {}", self.dir.join("ssh_config").display())
    }

    /// A realizer URI for the machine whose `cab` is `program`.
    pub fn uri(&self, program: &Path) -> String {
        format!("ssh://realizer?program={}", program.display())
    }

    /// sshd's own log (connections, authentication).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut privsep = PRIVSEP.lock().unwrap();
        privsep.0 -= 1;
        if privsep.0 == 0 && privsep.1 {
            let _ = fs::remove_dir(PRIVSEP_DIR);
            privsep.1 = false;
        }
    }
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Another machine behind the server: a script at `dir/NAME` that runs `cab` (`-v`) with the
/// given environment only (and its own HOME), writing its process id to `dir/NAME.pid` first.
pub fn machine(dir: &Path, name: &str, env: &[(&str, String)]) -> PathBuf {
    let home = dir.join(format!("{name}-home"));
    fs::create_dir_all(&home).unwrap();
    let mut script = format!(
        "#!/bin/sh\necho $$ > '{dir}/{name}.pid'\nexport HOME='{home}' XDG_CONFIG_HOME='{home}/.config' \
         XDG_CACHE_HOME='{home}/.cache' NO_COLOR=1\n",
        dir = dir.display(),
        home = home.display()
    );
    for (key, value) in env {
        script.push_str(&format!("export {key}='{value}'\n"));
    }
    script.push_str(&format!("exec '{}' -v \"$@\"\n", env!("CARGO_BIN_EXE_cab")));
    let path = dir.join(name);
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}
