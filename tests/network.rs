//! The realizer's network, end to end through `cab fetch`: redirects across hosts (on two
//! loopback names, `127.0.0.1` and `localhost`), credentials kept to their host, https down to
//! http refused, redirect loops cut; TLS with a CA of the test's own given in `SSL_CERT_FILE`;
//! proxies from the environment (a small CONNECT and forward proxy written here); IPv6 literal
//! hosts; and every limit an error names being a flag the user can pass.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::forge::{Forge, pki, tls_forge};
use common::*;

/// `cab --store STORE fetch --json ISLAND` with extra environment; whatever its outcome.
fn fetch(store: &Path, island: &str, env: &[(&str, &str)], flags: &[&str]) -> Output {
    let mut cmd = cab();
    cmd.arg("--store")
        .arg(store)
        .arg("fetch")
        .arg("--json")
        .args(flags)
        .arg(island);
    cmd.env("CAB_GITHUB_URL", "http://127.0.0.1:1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_timeout(&mut cmd, Duration::from_secs(90))
}

fn fetched_nar(out: &Output) -> String {
    assert!(out.status.success(), "{}", report("cab fetch", out));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    v["narHash"].as_str().unwrap().to_owned()
}

fn failed(out: &Output) -> String {
    assert!(
        exited_nonzero(out.status),
        "expected a failure: {}",
        report("cab fetch", out)
    );
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked at"), "{stderr}");
    stderr
}

/// A forge root with one tarball, `files/t.tar.gz`, of a small tree; returns the tree.
fn forge_root(dir: &Path) -> PathBuf {
    let root = dir.join("forge");
    let tree = dir.join("tree/top");
    write_file(&tree.join("README"), b"a tree behind redirects\n", 0o644);
    write_file(&tree.join("bin/run"), b"#!/bin/sh\n", 0o755);
    mkdir(&root.join("files"));
    run_ok(
        Command::new("tar")
            .arg("czf")
            .arg(root.join("files/t.tar.gz"))
            .arg("-C")
            .arg(dir.join("tree"))
            .arg("top"),
    );
    tree
}

/// `/redirect?to=URL` on `base`, as the forge serves it.
fn redirect(base: &str, to: &str) -> String {
    let mut quoted = String::new();
    for b in to.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            quoted.push(char::from(b));
        } else {
            quoted.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{base}/redirect?to={quoted}")
}

#[test]
fn redirects_are_followed_across_hosts() {
    let dir = TempDir::new("net-redirects");
    let tree = forge_root(dir.path());
    let forge = Forge::start(&dir.path().join("forge"), &[]);
    let store = dir.join("store");
    let direct = format!("{}/files/t.tar.gz", forge.url());
    // 127.0.0.1 → localhost → 127.0.0.1 → the file: two other-host hops.
    let chain = redirect(&forge.url(), &redirect(&forge.url_as("localhost"), &direct));
    let island = format!("<tarball:{chain}>");
    let nar = fetched_nar(&fetch(&store, &island, &[], &[]));
    assert_eq!(nar, nix_hash(&tree, None));
    let hosts: Vec<String> = forge.requests().iter().map(|r| r.host.clone()).collect();
    assert!(
        hosts.iter().any(|h| h.starts_with("localhost:")),
        "the chain went through localhost: {hosts:?}"
    );
}

/// A github island whose archive redirects to another host (as github.com sends archives to
/// codeload.github.com): the token goes to the forge's own host, never to the other.
#[test]
fn credentials_stay_on_their_host() {
    let dir = TempDir::new("net-credentials");
    let src = dir.join("src");
    write_file(&src.join("lib.rs"), b"pub fn f() {}\n", 0o644);
    let root = dir.join("forge");
    let rev = common::forge::commit(&root, "acme/creds", &src, "main", "Import");
    let forge = Forge::start(&root, &["--archive-redirect", "--redirect-host", "localhost"]);
    let mut cmd = cab();
    cmd.arg("--store")
        .arg(dir.join("store"))
        .args(["fetch", "--json", "<github:acme/creds>"])
        .env("CAB_GITHUB_URL", forge.url())
        .env("CAB_GITHUB_TOKEN", "secret-token");
    let out = run_timeout(&mut cmd, Duration::from_secs(90));
    assert!(out.status.success(), "{}", report("cab fetch", &out));
    assert!(text(&out.stdout).contains(&rev));
    let requests = forge.settled_requests(Duration::from_millis(300), Duration::from_secs(5));
    let to_forge: Vec<_> = requests.iter().filter(|r| r.host.starts_with("127.0.0.1:")).collect();
    let to_other: Vec<_> = requests.iter().filter(|r| r.host.starts_with("localhost:")).collect();
    assert!(!to_forge.is_empty() && !to_other.is_empty(), "{requests:?}");
    for r in &to_forge {
        assert_eq!(r.authorization.as_deref(), Some("Bearer secret-token"), "{r:?}");
    }
    for r in &to_other {
        assert_eq!(
            r.authorization, None,
            "the token followed a redirect to another host: {r:?}"
        );
        assert!(r.path.starts_with("/codeload/"), "{r:?}");
    }
}

#[test]
fn tls_trusts_ssl_cert_file_and_refuses_downgrades_and_loops() {
    let dir = TempDir::new("net-tls");
    let tree = forge_root(dir.path());
    let pki = pki(dir.path());
    let tls = tls_forge(&dir.join("forge"), &pki);
    let plain = Forge::start(&dir.join("forge"), &[]);
    let store = dir.join("store");
    let island = format!("<tarball:{}/files/t.tar.gz>", tls.url());
    // Not a CA the machine or cab trusts...
    let e = failed(&fetch(&store, &island, &[], &[]));
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // ...until the user names it, as for a corporate CA.
    let ca = pki.ca.to_str().unwrap();
    let nar = fetched_nar(&fetch(&store, &island, &[("SSL_CERT_FILE", ca)], &[]));
    assert_eq!(nar, nix_hash(&tree, None));

    let down = format!(
        "<tarball:{}>",
        redirect(&tls.url(), &format!("{}/files/t.tar.gz", plain.url()))
    );
    let e = failed(&fetch(&store, &down, &[("SSL_CERT_FILE", ca)], &[]));
    assert!(e.contains("from https down to plain http"), "{e}");
    assert!(
        !plain.requests().iter().any(|r| r.path.contains("t.tar.gz")),
        "the http URL was asked for"
    );

    // A loop: the redirect points at itself.
    let url = format!("{}/redirect?loop=1", plain.url());
    let e = failed(&fetch(&store, &format!("<tarball:{url}>"), &[], &[]));
    assert!(e.contains("redirected 20 times"), "{e}");
}

/// A proxy, as corporate networks have: `CONNECT host:port` tunnels (for https) and
/// absolute-URI requests (for http), each logged as one line, then served by the real server.
const PROXY: &str = r#"
import select, socket, socketserver, sys, threading
log = open(sys.argv[1], "a", buffering=1)
class Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline().decode("latin-1")
        headers = []
        while True:
            h = self.rfile.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            headers.append(h)
        log.write(line.strip() + "\n")
        method, target, version = line.split()
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            rest = target.split("://", 1)[1]
            hostport, _, path = rest.partition("/")
            host, _, port = hostport.partition(":")
            upstream = socket.create_connection((host, int(port or 80)))
            upstream.sendall(f"{method} /{path} {version}\r\n".encode() + b"".join(headers) + b"\r\n")
        sockets = [self.connection, upstream]
        while True:
            ready, _, _ = select.select(sockets, [], [], 30)
            if not ready:
                return
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (upstream if s is self.connection else self.connection).sendall(data)
server = Proxy(("127.0.0.1", 0), Handler)
open(sys.argv[2], "w").write(str(server.server_address[1]))
server.serve_forever()
"#;

struct ProxyProcess {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_proxy(dir: &Path) -> ProxyProcess {
    let (log, port_file) = (dir.join("proxy.log"), dir.join("proxy.port"));
    // Owned by the guard at once, so that it is stopped (and waited for) whatever happens.
    let mut proxy = ProxyProcess {
        child: Command::new("python3")
            .args(["-c", PROXY])
            .arg(&log)
            .arg(&port_file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        port: 0,
        log,
    };
    let started = Instant::now();
    while proxy.port == 0 {
        proxy.port = fs::read_to_string(&port_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        assert!(started.elapsed() < Duration::from_secs(10), "the proxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy
}

#[test]
fn proxies_from_the_environment() {
    let dir = TempDir::new("net-proxy");
    let tree = forge_root(dir.path());
    let pki = pki(dir.path());
    let plain = Forge::start(&dir.join("forge"), &[]);
    let tls = tls_forge(&dir.join("forge"), &pki);
    let proxy = start_proxy(dir.path());
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let ca = pki.ca.to_str().unwrap();
    let logged = || fs::read_to_string(&proxy.log).unwrap_or_default();
    let want = nix_hash(&tree, None);

    // http through HTTP_PROXY: the proxy gets the absolute URL.
    let url = format!("{}/files/t.tar.gz", plain.url());
    let out = fetch(
        &dir.join("s1"),
        &format!("<tarball:{url}>"),
        &[("HTTP_PROXY", &proxy_url)],
        &[],
    );
    assert_eq!(fetched_nar(&out), want);
    assert!(logged().contains(&format!("GET {url} HTTP/1.1")), "{}", logged());

    // https through https_proxy (lowercase, as many set it): a CONNECT tunnel.
    let url = format!("{}/files/t.tar.gz", tls.url());
    let env = [("https_proxy", proxy_url.as_str()), ("SSL_CERT_FILE", ca)];
    let out = fetch(&dir.join("s2"), &format!("<tarball:{url}>"), &env, &[]);
    assert_eq!(fetched_nar(&out), want);
    assert!(
        logged().contains(&format!("CONNECT 127.0.0.1:{} HTTP/1.1", tls.port)),
        "{}",
        logged()
    );

    // NO_PROXY names the host: straight to the server, the proxy sees nothing new.
    let before = logged();
    let url = format!("{}/files/t.tar.gz", plain.url());
    let env = [
        ("HTTP_PROXY", proxy_url.as_str()),
        ("NO_PROXY", "example.org,127.0.0.1"),
    ];
    assert_eq!(
        fetched_nar(&fetch(&dir.join("s3"), &format!("<tarball:{url}>"), &env, &[])),
        want
    );
    assert_eq!(logged(), before);
    // A proxy that is not there is an error, not a silent direct connection.
    let env = [("HTTP_PROXY", "http://127.0.0.1:1")];
    failed(&fetch(&dir.join("s4"), &format!("<tarball:{url}>"), &env, &[]));
}

#[test]
fn ipv6_literal_hosts() {
    let dir = TempDir::new("net-ipv6");
    let tree = forge_root(dir.path());
    let forge = Forge::start(&dir.join("forge"), &["--host", "::1"]);
    let island = format!("<tarball:{}/files/t.tar.gz>", forge.url_as("[::1]"));
    let out = fetch(&dir.join("store"), &island, &[], &[]);
    assert_eq!(fetched_nar(&out), nix_hash(&tree, None));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["island"], island);
    // The locked literal parses back.
    let locked = v["locked"].as_str().unwrap();
    let again = fetch(&dir.join("store"), locked, &[], &[]);
    assert_eq!(fetched_nar(&again), nix_hash(&tree, None));
}

/// Every `(raise --FLAG)` an error can say names a flag `cab fetch` and `cab mount` take, and
/// the entries limit, which once named a flag that did not exist, works through its flag.
#[test]
fn every_limit_an_error_names_is_a_flag() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut named = std::collections::BTreeSet::new();
    for file in files_under(&src) {
        let code = fs::read_to_string(&file).unwrap();
        for (i, _) in code.match_indices("(raise --") {
            let flag: String = code[i + 7..]
                .chars()
                .take_while(|c| *c == '-' || c.is_ascii_alphanumeric())
                .collect();
            named.insert(flag);
        }
    }
    assert!(named.len() >= 6, "{named:?}");
    for command in ["fetch", "mount", "update"] {
        let help = text(&run_ok(cab().args([command, "--help"])).stdout);
        for flag in &named {
            assert!(help.contains(flag.as_str()), "`cab {command}` has no {flag}:\n{help}");
        }
    }

    let dir = TempDir::new("net-entries");
    forge_root(dir.path());
    let forge = Forge::start(&dir.join("forge"), &[]);
    let island = format!("<tarball:{}/files/t.tar.gz>", forge.url());
    let e = failed(&fetch(&dir.join("s1"), &island, &[], &["--max-entries", "2"]));
    assert!(e.contains("(raise --max-entries)"), "{e}");
    fetched_nar(&fetch(&dir.join("s2"), &island, &[], &["--max-entries", "10"]));
}
