//! A real Garage (the S3-compatible object store) for the tests: one node, or a cluster of
//! three on loopback with every object on all three. Each test starts its own, under its own
//! directory, on free ports; every node is killed when the guard is dropped.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bucket every test uses.
pub const BUCKET: &str = "cab-islands";

/// The garage binary: on PATH, or where `cargo install` puts it.
pub fn garage_binary() -> PathBuf {
    let on_path = Command::new("garage")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if on_path {
        return PathBuf::from("garage");
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let installed = home.join("bin/garage");
    assert!(
        installed.exists(),
        "Garage is not installed: run scripts/setup (it runs `cargo install --locked garage`)"
    );
    installed
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Node {
    config: PathBuf,
    rpc: u16,
    child: Option<Child>,
}

/// A running Garage cluster with a bucket and a key allowed to read and write it.
pub struct Garage {
    nodes: Vec<Node>,
    binary: PathBuf,
    /// The S3 API of the first node.
    pub s3_port: u16,
    /// The website endpoint of the first node (the bucket is a website, read-only HTTP).
    pub web_port: u16,
    /// The admin API of the first node (its `/metrics` counts requests).
    pub admin_port: u16,
    /// The key's id (`AWS_ACCESS_KEY_ID`).
    pub key_id: String,
    /// The key's secret (`AWS_SECRET_ACCESS_KEY`).
    pub secret: String,
}

impl Garage {
    /// Starts `nodes` nodes under `dir` (replication factor = nodes), makes the bucket and key.
    pub fn start(dir: &Path, nodes: usize) -> Garage {
        let binary = garage_binary();
        let secret: String = (0..32).map(|i| format!("{:02x}", (i * 37 + 11) % 256)).collect();
        let mut garage = Garage {
            nodes: Vec::new(),
            binary,
            s3_port: 0,
            web_port: 0,
            admin_port: 0,
            key_id: String::new(),
            secret: String::new(),
        };
        for i in 0..nodes {
            let node_dir = dir.join(format!("garage-{i}"));
            fs::create_dir_all(node_dir.join("meta")).unwrap();
            fs::create_dir_all(node_dir.join("data")).unwrap();
            let (rpc, s3, web, admin) = (free_port(), free_port(), free_port(), free_port());
            if i == 0 {
                garage.s3_port = s3;
                garage.web_port = web;
                garage.admin_port = admin;
            }
            let config = node_dir.join("garage.toml");
            fs::write(
                &config,
                format!(
                    "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = {nodes}\n\
                     rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_secret = \"{secret}\"\n\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                     root_domain = \".s3.garage.localhost\"\n\n\
                     [s3_web]\nbind_addr = \"127.0.0.1:{web}\"\nroot_domain = \".web.garage.localhost\"\n\
                     index = \"index.html\"\n\n\
                     [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                    meta = node_dir.join("meta").display(),
                    data = node_dir.join("data").display(),
                ),
            )
            .unwrap();
            let log = fs::File::create(node_dir.join("log")).unwrap();
            let child = Command::new(&garage.binary)
                .arg("-c")
                .arg(&config)
                .arg("server")
                .env("RUST_LOG", "garage=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("cannot start garage");
            garage.nodes.push(Node {
                config,
                rpc,
                child: Some(child),
            });
        }
        garage.bootstrap();
        garage
    }

    /// `garage -c NODE0 ARGS…`, which must succeed; its stdout.
    fn admin(&self, args: &[&str]) -> String {
        self.admin_on(0, args)
    }

    fn admin_on(&self, node: usize, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(&self.binary)
                .arg("-c")
                .arg(&self.nodes[node].config)
                .args(args)
                .output()
                .expect("cannot run garage");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            // The node may still be starting, or the cluster settling: ask again, bounded.
            assert!(
                Instant::now() < deadline,
                "`garage {}` failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn bootstrap(&mut self) {
        let ids: Vec<String> = (0..self.nodes.len())
            .map(|i| self.admin_on(i, &["node", "id", "-q"]).trim().to_owned())
            .collect();
        for (i, id) in ids.iter().enumerate().skip(1) {
            let full = if id.contains('@') {
                id.clone()
            } else {
                format!("{id}@127.0.0.1:{}", self.nodes[i].rpc)
            };
            self.admin(&["node", "connect", &full]);
        }
        for id in &ids {
            let short = id.split('@').next().unwrap();
            self.admin(&["layout", "assign", "-z", "dc1", "-c", "1G", &short[..16]]);
        }
        self.admin(&["layout", "apply", "--version", "1"]);
        self.admin(&["bucket", "create", BUCKET]);
        let key = self.admin(&["key", "create", "cab-test"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
                .unwrap_or_else(|| panic!("no `{name}` in `garage key create`'s answer:\n{key}"))
        };
        self.key_id = field("Key ID:");
        self.secret = field("Secret key:");
        self.admin(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "cab-test",
        ]);
        self.admin(&["bucket", "website", "--allow", BUCKET]);
        // Ready once the key can write.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.answers() {
            assert!(Instant::now() < deadline, "garage did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn answers(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok()
    }

    /// The remote URL for cab.
    pub fn remote_url(&self) -> String {
        format!("s3://{BUCKET}?endpoint=http://127.0.0.1:{}&region=garage", self.s3_port)
    }

    /// The bucket's website, as Nix (or cab's read-only HTTP remote) reads it. curl and
    /// reqwest resolve `*.localhost` to loopback; the name picks the bucket.
    pub fn web_url(&self) -> String {
        format!("http://{BUCKET}.web.garage.localhost:{}", self.web_port)
    }

    /// Gives `cmd` the key, the way every S3 tool takes it.
    pub fn credentials(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
    }

    /// Kills node `i` (SIGKILL), as a machine that dies.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every object file of every node's data directory (to corrupt one, in tests).
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        self.nodes
            .iter()
            .map(|n| n.config.parent().unwrap().join("data"))
            .collect()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
