//! The local forge (`scripts/forge`) as the tests drive it: real `git http-backend` smart
//! HTTP and `git archive` tarballs on 127.0.0.1, with a request log that tells what was sent.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::run_ok;
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("scripts/forge").exists())
        .expect("scripts/forge")
        .to_owned()
}

/// One request, as the forge logged it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The `Host` header: which name the client used.
    pub host: String,
    /// The `Authorization` header, if one came.
    pub authorization: Option<String>,
    pub status: u64,
    pub bytes_sent: u64,
    pub body_complete: bool,
    /// Whether it asked conditionally (`If-None-Match` or `If-Modified-Since`).
    pub conditional: bool,
}

/// A running forge; stopped when dropped.
pub struct Forge {
    pub root: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    /// `http`, or `https` when started with `--tls-cert`.
    pub scheme: &'static str,
    child: Child,
}

impl Forge {
    /// Starts a forge serving `root` (which holds `OWNER/REPO.git` and `files/`), with extra
    /// `serve` flags (e.g. `--throttle`).
    pub fn start(root: &Path, extra: &[&str]) -> Forge {
        fs::create_dir_all(root.join("files")).unwrap();
        let state = root.with_extension(format!("forge-{}", std::process::id() as u128 * 1000 + rand_suffix()));
        fs::create_dir_all(&state).unwrap();
        let port_file = state.join("port");
        let log = state.join("log");
        let child = Command::new(repo_root().join("scripts/forge"))
            .arg("serve")
            .arg("--root")
            .arg(root)
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start scripts/forge (is python3 installed?)");
        let started = Instant::now();
        let port = loop {
            if let Ok(text) = fs::read_to_string(&port_file)
                && let Ok(port) = text.trim().parse()
            {
                break port;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the forge did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Forge {
            root: root.to_owned(),
            port,
            log,
            scheme: if extra.contains(&"--tls-cert") { "https" } else { "http" },
            child,
        }
    }

    /// `http://127.0.0.1:PORT` (or https).
    pub fn url(&self) -> String {
        self.url_as("127.0.0.1")
    }

    /// The forge's URL under another name for the same address (`localhost`, `[::1]`).
    pub fn url_as(&self, host: &str) -> String {
        format!("{}://{host}:{}", self.scheme, self.port)
    }

    /// Every request logged so far.
    pub fn requests(&self) -> Vec<Request> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .map(|v| Request {
                method: v["method"].as_str().unwrap_or_default().to_owned(),
                path: v["path"].as_str().unwrap_or_default().to_owned(),
                host: v["host"].as_str().unwrap_or_default().to_owned(),
                authorization: v["authorization"].as_str().map(str::to_owned),
                status: v["status"].as_u64().unwrap_or_default(),
                bytes_sent: v["bytes_sent"].as_u64().unwrap_or_default(),
                body_complete: v["body_complete"].as_bool().unwrap_or_default(),
                conditional: v["conditional"].as_bool().unwrap_or_default(),
            })
            .collect()
    }

    /// Requests whose path contains `needle`, waiting briefly for the log to catch up (the
    /// forge logs a request when it ends).
    pub fn requests_matching(&self, needle: &str, at_least: usize) -> Vec<Request> {
        let started = Instant::now();
        loop {
            let found: Vec<_> = self
                .requests()
                .into_iter()
                .filter(|r| r.path.contains(needle))
                .collect();
            if found.len() >= at_least || started.elapsed() > Duration::from_secs(10) {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Forge {
    /// Stops the forge now (it is down for whoever asks next).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Forge {
    fn drop(&mut self) {
        self.stop();
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u128)
        .unwrap_or(0)
}

/// Creates `root/OWNER/REPO.git` (or adds a commit to it) holding exactly `src`'s files on
/// `branch`; returns the commit id.
pub fn commit(root: &Path, owner_repo: &str, src: &Path, branch: &str, message: &str) -> String {
    let out = Command::new(repo_root().join("scripts/forge"))
        .arg("make-repo")
        .arg(root.join(format!("{owner_repo}.git")))
        .arg("--from")
        .arg(src)
        .args(["--branch", branch, "--message", message])
        .output()
        .expect("scripts/forge make-repo");
    assert!(
        out.status.success(),
        "make-repo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rev = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(rev.len(), 40, "make-repo printed {rev:?}");
    rev
}

/// Archives `entries` of `dir` as `root/files/NAME` (compressed as NAME's suffix says), for the
/// forge to serve at `/files/NAME`.
pub fn serve_archive(root: &Path, name: &str, dir: &Path, entries: &[&str]) {
    fs::create_dir_all(root.join("files")).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-caf")
            .arg(root.join("files").join(name))
            .arg("-C")
            .arg(dir)
            .args(entries),
    );
}

/// Tags `rev` in `root/OWNER/REPO.git`.
pub fn tag(root: &Path, owner_repo: &str, name: &str, rev: &str, annotated: bool) {
    let mut cmd = Command::new(repo_root().join("scripts/forge"));
    cmd.arg("tag")
        .arg(root.join(format!("{owner_repo}.git")))
        .args([name, rev]);
    if annotated {
        cmd.arg("--annotated");
    }
    let out = cmd.output().expect("scripts/forge tag");
    assert!(
        out.status.success(),
        "tag failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Extracts what `git archive` makes of `rev` into `dest` (no top-level directory), the
/// reference a fetched tree is compared with.
pub fn git_archive_extract(root: &Path, owner_repo: &str, rev: &str, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg("git --git-dir=\"$1\" archive --format=tar \"$2\" | tar -x -C \"$3\"")
        .arg("sh")
        .arg(root.join(format!("{owner_repo}.git")))
        .arg(rev)
        .arg(dest)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The commit `rev` (a branch, tag or commit id) names in `root/OWNER/REPO.git`, as
/// `git rev-parse --verify REV^{commit}` prints it: annotated tags are peeled to their commit.
pub fn rev_parse(root: &Path, owner_repo: &str, rev: &str) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(root.join(format!("{owner_repo}.git")))
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{rev}^{{commit}}"))
        .output()
        .expect("git rev-parse");
    assert!(
        out.status.success(),
        "git rev-parse {rev} failed in {owner_repo}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(commit.len(), 40, "git rev-parse printed {commit:?}");
    commit
}

impl Forge {
    /// Every request logged so far, once the log has been quiet for `quiet` (the forge logs
    /// a request when it ends, e.g. when it notices that the client went away), waiting at
    /// most `max` in all.
    pub fn settled_requests(&self, quiet: Duration, max: Duration) -> Vec<Request> {
        let started = Instant::now();
        let mut last_len = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let mut last_change = Instant::now();
        while started.elapsed() < max {
            std::thread::sleep(Duration::from_millis(50));
            let len = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
            if len != last_len {
                last_len = len;
                last_change = Instant::now();
            } else if last_change.elapsed() >= quiet {
                break;
            }
        }
        self.requests()
    }
}

/// A CA of the test's own, and a certificate for 127.0.0.1 and localhost signed by it.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes the CA and the certificate in `dir`.
pub fn pki(dir: &Path) -> Pki {
    let p = |name: &str| dir.join(name);
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509", "-days", "2", "-subj", "/CN=cab test CA"])
            .args(ec)
            .args([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ])
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")),
    );
    run_ok(
        Command::new("openssl")
            .args(["req", "-subj", "/CN=127.0.0.1"])
            .args(ec)
            .arg("-keyout")
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr")),
    );
    fs::write(
        p("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p("ext"))
            .arg("-out")
            .arg(p("server.pem")),
    );
    Pki {
        ca: p("ca.pem"),
        cert: p("server.pem"),
        key: p("server.key"),
    }
}

/// A forge serving https with `pki`'s certificate.
pub fn tls_forge(root: &Path, pki: &Pki) -> Forge {
    Forge::start(
        root,
        &[
            "--tls-cert",
            pki.cert.to_str().unwrap(),
            "--tls-key",
            pki.key.to_str().unwrap(),
        ],
    )
}
