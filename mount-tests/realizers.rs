//! Remote realizers: the derivation travels, not the tree. Two or three "machines" on one host
//! — each its own store and home — a real sshd on loopback reaching the realizers (`cab realize
//! --stdio` behind `program=` wrappers), a real Garage they share, and a client whose own HTTP
//! to the forge is cut (a dead proxy; only Garage, addressed as `localhost`, bypasses it): its
//! islands must still mount, read, lock and update, every forge request coming from a realizer.
//! Then what goes wrong: a realizer killed mid-derivation, realizers that lie, a feature nobody
//! offers, and the stdio protocol fed garbage.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::forge;
use common::garage::Garage;
use common::sshd::{Sshd, machine};
use common::*;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(180);

/// Where nothing listens: the client's proxy, so that its own HTTP to the forge fails.
const DEAD_PROXY: &str = "http://127.0.0.1:9";

/// A source tree: a few small files and some bigger pseudo-random ones.
fn project(dir: &Path, generation: u64, big: usize) {
    write_file(
        &dir.join("README"),
        format!("generation {generation}\n").as_bytes(),
        0o644,
    );
    write_file(&dir.join("bin/run"), b"#!/bin/sh\necho run\n", 0o755);
    for i in 0..30 {
        write_file(
            &dir.join(format!("src/m{i:02}.rs")),
            &pseudo_random(900 + i * 37, generation * 100 + i as u64),
            0o644,
        );
    }
    for i in 0..big {
        write_file(
            &dir.join(format!("data/blob{i}")),
            &pseudo_random(256 << 10, generation * 1000 + i as u64),
            0o644,
        );
    }
}

/// Everything the tests here share: the forge (in the world), Garage, sshd, and the realizer
/// machines' wrappers.
struct Fleet {
    world: World,
    garage: Garage,
    sshd: Sshd,
    machines: PathBuf,
}

impl Fleet {
    fn new(label: &str, forge_flags: &[&str]) -> Fleet {
        let world = World::new(label, forge_flags);
        let garage = Garage::start(&world.dir("garage"), 1);
        let sshd = Sshd::start(&world.dir("sshd"));
        let machines = world.dir("machines");
        Fleet {
            world,
            garage,
            sshd,
            machines,
        }
    }

    /// A realizer machine named `name`: its own store, the forge, the shared remote, and
    /// `extra` settings. Returns its realizer URI.
    fn realizer(&self, name: &str, extra: &[(&str, String)]) -> String {
        let mut env = vec![
            ("CAB_STORE", self.store_of(name).display().to_string()),
            ("CAB_REMOTE", self.garage.remote_url()),
            ("AWS_ACCESS_KEY_ID", self.garage.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.garage.secret.clone()),
            ("CAB_GITHUB_URL", self.world.forge.url()),
        ];
        env.extend(extra.iter().cloned());
        self.sshd.uri(&machine(&self.machines, name, &env))
    }

    fn store_of(&self, name: &str) -> PathBuf {
        self.machines.join(format!("{name}-store"))
    }

    /// The client: `cab -v` in the project, its HTTP to anything but `localhost` sent to a
    /// dead proxy, with the shared remote (as `localhost`) and `realizers`.
    fn client(&self, realizers: &[&str]) -> Command {
        let mut cmd = self.world.cab();
        cmd.env("HTTP_PROXY", DEAD_PROXY)
            .env("http_proxy", DEAD_PROXY)
            .env("NO_PROXY", "localhost")
            .env("no_proxy", "localhost")
            .env("CAB_SSHOPTS", self.sshd.ssh_options())
            .env("CAB_REMOTE", self.garage.remote_url().replace("127.0.0.1", "localhost"))
            .env("CAB_REALIZERS", realizers.join(","));
        self.garage.credentials(&mut cmd);
        cmd
    }

    /// Requests the forge has served so far.
    fn forge_requests(&self) -> Vec<forge::Request> {
        self.world.forge.requests()
    }
}

fn is_ref_request(r: &forge::Request) -> bool {
    r.path.contains("/info/refs") || r.path.ends_with("/git-upload-pack")
}

/// Whether `store` has published anything.
fn published_anything(store: &Path) -> bool {
    fs::read_dir(store.join("roots")).is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn a_laptop_mounts_reads_and_updates_through_a_remote_realizer() {
    let fleet = Fleet::new("realizers-mount", &[]);
    let world = &fleet.world;
    let src = world.dir("src");
    project(&src, 1, 4);
    let rev = world.push("acme/app", &src, "one");
    world.manifest("app = '<github:acme/app>'\n");
    let a = fleet.realizer("a", &[]);

    // The cut is real: realized here, the island cannot be fetched at all.
    let mut here = fleet.client(&["local"]);
    here.args(["fetch", "<github:acme/app>"]);
    let out = run_timeout(&mut here, TIMEOUT);
    assert!(
        !out.status.success(),
        "{}",
        report("a fetch through the dead proxy", &out)
    );
    assert!(fleet.forge_requests().is_empty(), "the client reached the forge");

    // Mounted through realizer a: listed and read lazily from the remote.
    let mut mount_cmd = fleet.client(&[&a]);
    mount_cmd.arg("mount").arg(&world.mnt);
    let mount = Mount::start(mount_cmd, &world.mnt);
    let reference = world.reference("acme/app", &rev);
    ok(tool("diff").arg("-r").arg(&reference).arg(world.at("app")));
    let log = mount.stop();
    assert!(log.contains("realized on ssh://realizer"), "{log}");
    assert!(log.contains("served from the remote"), "{log}");
    let archives: Vec<_> = fleet
        .forge_requests()
        .into_iter()
        .filter(|r| r.path.contains("/archive/"))
        .collect();
    assert_eq!(archives.len(), 1, "one archive download, by the realizer: {archives:?}");
    assert!(published_anything(&fleet.store_of("a")));

    // The lock is the one a local realization writes.
    let lock_remote = world.lock_text();
    assert!(lock_remote.contains(&rev), "{lock_remote}");
    let elsewhere = world.dir("local-project");
    fs::copy(world.project.join("islands.toml"), elsewhere.join("islands.toml")).unwrap();
    let mut local = cab();
    local
        .current_dir(&elsewhere)
        .env("CAB_GITHUB_URL", world.forge.url())
        .arg("--store")
        .arg(world.dir("local-store"))
        .arg("update");
    run_ok(&mut local);
    assert_eq!(fs::read_to_string(elsewhere.join("islands.lock")).unwrap(), lock_remote);

    // Unchanged, an update costs the realizer's one round trip for refs: no archive.
    let before = fleet.forge_requests().len();
    let mut update = fleet.client(&[&a]);
    update.arg("update");
    let out = run_ok(&mut update);
    let new: Vec<_> = fleet.forge_requests().split_off(before);
    let said = text(&out.stderr);
    assert!(!new.is_empty() && new.iter().all(is_ref_request), "{new:?}\n{said}");
    assert_eq!(world.lock_text(), lock_remote);
    assert!(
        text(&out.stderr).contains("realized on ssh://realizer"),
        "{}",
        text(&out.stderr)
    );

    // Pinning is all an update needs: the tree stays on the remote (the mount reads it from
    // there), not brought over the laptop's link.
    assert!(!published_anything(&world.store), "the update brought the tree here");

    // `cab fetch` brings it whole; then a realizer that never saw it stops at the client's
    // word: the early stop crosses the wire.
    run_ok(fleet.client(&[&a]).args(["fetch", "<github:acme/app>"]));
    assert!(
        published_anything(&world.store),
        "the fetch did not bring the tree here"
    );
    let b = fleet.realizer("b", &[]);
    let before = fleet.forge_requests().len();
    let mut update = fleet.client(&[&b]);
    update.arg("update");
    let out = run_ok(&mut update);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the realizer stopped after its first report"),
        "{stderr}"
    );
    let new: Vec<_> = fleet.forge_requests().split_off(before);
    assert!(!new.is_empty() && new.iter().all(is_ref_request), "{new:?}");
    assert!(
        !published_anything(&fleet.store_of("b")),
        "b stored what the client holds"
    );

    // A new commit moves the pin, fetched by the realizer.
    project(&src, 2, 4);
    let rev2 = world.push("acme/app", &src, "two");
    let mut update = fleet.client(&[&a]);
    update.arg("update");
    run_ok(&mut update);
    assert!(world.lock_text().contains(&rev2), "{}", world.lock_text());
    // The update pinned it only; its tree comes from the remote when it is wanted.
    let tree = lock_entry(&world.lock_text(), "app").map(|(_, l)| l).unwrap();
    run_ok(fleet.client(&[&a]).args(["fetch", &tree]));
    let mut export = world.cab();
    let hash = &tree[tree.find("blake3-").unwrap()..][..71];
    let out_dir = world.tmp.join("export");
    export.args(["store", "export", hash]).arg(&out_dir);
    run_ok(&mut export);
    ok(tool("diff")
        .arg("-r")
        .arg(world.reference("acme/app", &rev2))
        .arg(&out_dir));

    // `cab import` goes the same way: a flake.lock's pin of a commit nobody has realized yet.
    project(&src, 3, 1);
    let rev3 = world.push("acme/app", &src, "three");
    let nar3 = cab_hash(&world.reference("acme/app", &rev3), Some("--sri")).nar;
    let flake_lock = serde_json::json!({
        "nodes": {
            "app3": {
                "locked": { "narHash": nar3, "owner": "acme", "repo": "app", "rev": rev3, "type": "github" },
                "original": { "owner": "acme", "repo": "app", "type": "github" }
            },
            "root": { "inputs": { "app3": "app3" } }
        },
        "root": "root",
        "version": 7
    });
    let file = world.tmp.join("flake.lock");
    fs::write(&file, flake_lock.to_string()).unwrap();
    let out = run_ok(fleet.client(&[&a]).arg("import").arg(&file));
    let said = text(&out.stderr);
    assert!(said.contains("realized on ssh://realizer"), "{said}");
    assert!(world.lock_text().contains(&rev3), "{}", world.lock_text());
}

#[test]
fn a_realizer_killed_mid_derivation_hands_over_to_the_next() {
    // Archives trickle out (~4 s for this one), so a realizer can be killed in the middle.
    let fleet = Fleet::new(
        "realizers-killed",
        &["--throttle", "400000", "--throttle-path-regex", "/archive/"],
    );
    let world = &fleet.world;
    let src = world.dir("src");
    project(&src, 1, 6);
    let rev = world.push("acme/big", &src, "one");
    let doomed = fleet.realizer("doomed", &[]);
    let b = fleet.realizer("b", &[]);

    let mut fetch = fleet.client(&[&doomed, &b]);
    fetch
        .args(["fetch", "<github:acme/big>"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = fetch.spawn().unwrap();
    let pid_file = fleet.machines.join("doomed.pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fleet.forge_requests().iter().any(is_ref_request) || !pid_file.exists() {
        assert!(Instant::now() < deadline, "the doomed realizer never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(800));
    let pid: i32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // SAFETY: a plain syscall on a process this test started (through sshd).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let status = wait_child(&mut child, TIMEOUT).expect("the fetch finished");
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("failed, trying the next"), "{stderr}");
    assert!(stderr.contains(&format!("realized on {b}")), "{stderr}");
    assert!(text(&out.stdout).contains(&rev), "{}", text(&out.stdout));
    // Nothing of the killed run was published anywhere, and what the client has is whole.
    assert!(!published_anything(&fleet.store_of("doomed")));
    assert!(published_anything(&fleet.store_of("b")));
    run_ok(world.cab().args(["store", "verify"]));
}

/// A realizer that answers every derivation with `done` for `tree`/`nar`, whatever it is.
fn liar(fleet: &Fleet, name: &str, tree: &str, nar: &str) -> String {
    let script = fleet.machines.join(format!("{name}.py"));
    fs::write(
        &script,
        format!(
            r#"import json, struct, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
def send(m):
    b = json.dumps(m).encode(); out.write(struct.pack(">I", len(b)) + b); out.flush()
def recv():
    h = inp.read(4)
    if len(h) < 4: sys.exit(0)
    return json.loads(inp.read(struct.unpack(">I", h)[0]))
send({{"type": "hello", "protocol": 1, "cab": "9", "features": ["wasm", "network"], "remote": "s3://elsewhere", "modules": []}})
recv()
while True:
    if recv()["type"] == "realize":
        send({{"type": "done", "tree": "{tree}", "nar": "{nar}", "rev": None, "whole": "{tree}", "downloaded": 0, "stopped_early": False, "reported": []}})
"#
        ),
    )
    .unwrap();
    let wrapper = fleet.machines.join(name);
    fs::write(&wrapper, format!("#!/bin/sh\nexec python3 '{}'\n", script.display())).unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    fleet.sshd.uri(&wrapper)
}

#[test]
fn realizers_that_lie_are_refused_and_features_decide_where() {
    let fleet = Fleet::new("realizers-liars", &[]);
    let world = &fleet.world;
    let src = world.dir("src");
    project(&src, 1, 0);
    world.push("acme/app", &src, "one");
    let a = fleet.realizer("a", &[]);
    // A real tree on the remote, realized by a.
    let out = run_ok(fleet.client(&[&a]).args(["fetch", "--json", "<github:acme/app>"]));
    let fetched: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (tree, nar) = (fetched["hash"].as_str().unwrap(), fetched["narHash"].as_str().unwrap());
    world.push("acme/app", &src, "two"); // a new commit, so nothing stops early

    // A tree the remote lacks.
    let absent = "blake3-0000000000000000000000000000000000000000000000000000000000000000";
    let missing = liar(&fleet, "missing", absent, nar);
    let out = run_timeout(fleet.client(&[&missing]).args(["fetch", "<github:acme/app>"]), TIMEOUT);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("refused the answer of realizer ssh://realizer"),
        "{stderr}"
    );
    assert!(stderr.contains("is not on the remote"), "{stderr}");

    // The right tree, the wrong narHash: both named.
    world.manifest("app = '<github:acme/app>'\n");
    let wrong_nar = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let disagrees = liar(&fleet, "disagrees", tree, wrong_nar);
    for want in ["fetch", "mount"] {
        let mut cmd = fleet.client(&[&disagrees]);
        let stderr = if want == "fetch" {
            let out = run_timeout(cmd.args(["fetch", "<github:acme/app>"]), TIMEOUT);
            assert!(!out.status.success());
            text(&out.stderr)
        } else {
            // Served lazily: refused all the same, the island unreadable.
            cmd.arg("mount").arg(&world.mnt);
            let mount = Mount::start(cmd, &world.mnt);
            assert!(list(&world.at("app")).is_err());
            mount.stop()
        };
        assert!(stderr.contains(wrong_nar) && stderr.contains(nar), "{want}: {stderr}");
        assert!(stderr.contains("refused the answer"), "{want}: {stderr}");
    }

    // A feature only one machine offers: that machine realizes it; without it, no one can,
    // and the error names every realizer's features.
    let island = "<github:acme/app:{ requires = \"corp-network\" }>";
    let out = run_timeout(fleet.client(&[&a]).args(["fetch", island]), TIMEOUT);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for needle in [
        "no realizer can realize it (it requires the features: wasm, corp-network)",
        "machines/a offers wasm, network,",
        "local offers wasm, network,",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
    let corp = fleet.realizer("corp", &[("CAB_FEATURES", "corp-network".into())]);
    let out = run_ok(fleet.client(&[&a, &corp]).args(["fetch", island]));
    assert!(
        text(&out.stderr).contains(&format!("realized on {corp}")),
        "{}",
        text(&out.stderr)
    );
    assert!(published_anything(&fleet.store_of("corp")));

    // A realizer that cannot be reached is passed over with a warning; the next one realizes.
    let gone = "ssh://realizer:1".to_owned();
    let out = run_ok(fleet.client(&[&gone, &a]).args(["fetch", "<github:acme/app>"]));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("realizer ssh://realizer:1 is unreachable, trying the next"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("realized on {a}")), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// The stdio protocol, spoken to `cab realize --stdio` directly
// ---------------------------------------------------------------------------------------------

fn frame(message: &serde_json::Value) -> Vec<u8> {
    let body = serde_json::to_vec(message).unwrap();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// The frames in `bytes` (a torn last one left out).
fn frames(mut bytes: &[u8]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        if bytes.len() < 4 + len {
            break;
        }
        out.push(serde_json::from_slice(&bytes[4..4 + len]).unwrap());
        bytes = &bytes[4 + len..];
    }
    out
}

/// `cab realize --stdio` fed `input`: its exit code, the frames it wrote, its stderr.
fn speak(store: &Path, input: &[u8]) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let mut child = cab()
        .arg("--store")
        .arg(store)
        .args(["realize", "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(input);
    drop(stdin);
    let status = wait_child(&mut child, Duration::from_secs(30)).expect("cab realize --stdio ended");
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    (status.code(), frames(&out.stdout), stderr)
}

fn hello(protocol: u32) -> Vec<u8> {
    frame(&serde_json::json!({"type": "hello", "protocol": protocol, "cab": "0.1.0"}))
}

fn realize(derivation: serde_json::Value) -> Vec<u8> {
    frame(&serde_json::json!({"type": "realize", "derivation": derivation, "label": "fuzz\u{1b}[31m"}))
}

#[test]
fn the_stdio_protocol_refuses_garbage_clearly() {
    let tmp = TempDir::new("realize-stdio");
    let store = tmp.join("store");
    let derivation = |literal: &str| -> serde_json::Value {
        let out = run_ok(cab().arg("--store").arg(&store).args(["derivation", literal]));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let github = derivation("<github:acme/app>");

    // The realizer speaks first.
    let (code, said, _) = speak(&store, b"");
    assert_eq!(code, Some(0));
    assert_eq!(said[0]["type"], "hello");
    assert!(said[0]["features"].as_array().unwrap().contains(&"wasm".into()));
    assert_eq!(said[0]["modules"][0], github["builder"]["wasm"]);

    let refused = |input: &[u8], needle: &str| {
        let (code, said, stderr) = speak(&store, input);
        assert_eq!(code, Some(1), "{needle}: {stderr}");
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
        said
    };
    refused(b"SSH-2.0-OpenSSH_9.2\r\n", "more than the 1048576 this protocol allows");
    refused(&hello(1)[..7], "ended inside a frame");
    let said = refused(&hello(2), "protocol 2");
    assert_eq!(said.last().unwrap()["type"], "failed");
    assert_eq!(said.last().unwrap()["cause"], "refused");
    refused(
        &frame(&serde_json::json!({"type": "launch"})),
        "no message of protocol 1",
    );
    refused(&realize(github.clone()), "did not begin with its handshake");

    // Past the handshake, a derivation it does not run is refused and the session goes on.
    let mut other_module = github.clone();
    other_module["builder"]["wasm"] = "blake3-1111111111111111111111111111111111111111111111111111111111111111".into();
    other_module.as_object_mut().unwrap().remove("id");
    let mut tampered = github.clone();
    tampered["args"] = serde_json::json!(["github", "url=http://169.254.169.254/"]);
    let cases = [
        (serde_json::json!("garbage"), "not a derivation"),
        (tampered, "its `id` is not the BLAKE3 of its encoding"),
        (other_module, "runs only the one it ships"),
        (derivation("<fs::/etc>"), "copies the local path /etc"),
        (github.clone(), "no remote store"),
    ];
    let mut input = hello(1);
    for (derivation, _) in &cases {
        input.extend(realize(derivation.clone()));
    }
    let (code, said, stderr) = speak(&store, &input);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(said.len(), 1 + cases.len(), "{said:?}");
    for ((_, needle), answer) in cases.iter().zip(&said[1..]) {
        assert_eq!(answer["type"], "failed", "{answer}");
        assert_eq!(answer["cause"], "refused", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(needle),
            "{needle:?}: {answer}"
        );
    }
    assert!(
        !stderr.contains('\u{1b}'),
        "a client's label reached the log raw: {stderr}"
    );

    // Random bytes, and random bytes after a good handshake: never a panic, always an end.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..60 {
        let len = (seed % 300) as usize;
        let mut input = if round % 2 == 0 { hello(1) } else { Vec::new() };
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            input.push((seed >> 24) as u8);
        }
        // Some with a small, believable length, so that the JSON parser sees the garbage.
        if round % 3 == 0 && input.len() > 8 {
            let n = input.len() - 4;
            let at = if round % 2 == 0 { hello(1).len() } else { 0 };
            if at + 4 <= input.len() {
                input[at..at + 4].copy_from_slice(&((n - at) as u32).to_be_bytes());
            }
        }
        let (code, _, _) = speak(&store, &input);
        assert!(matches!(code, Some(0 | 1)), "round {round}: exit {code:?}");
    }
}
