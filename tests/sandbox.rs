//! The sandbox, tested with purpose-built guest modules (WAT) run by the real realizer under
//! real wasmtime: each hostile or runaway guest must be stopped with its own clear error, and
//! nothing it did may reach the store.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cab::derivation::{Builder, Derivation, Method};
use cab::realizer::{Limits, Realizer};
use cab::store::{IndexKey, Store};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("cab-sandbox-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A guest: `body` is the code of `_start`; strings go in data at `(i32.const 1024)` onward.
fn guest(data: &[(u32, &str)], body: &str) -> Vec<u8> {
    let data: String = data
        .iter()
        .map(|(at, s)| {
            format!(
                "(data (i32.const {at}) \"{}\")\n",
                s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
            )
        })
        .collect();
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "cab" "http_open" (func $http_open (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "cab" "http_read" (func $http_read (param i32 i32 i32) (result i32)))
  (import "cab" "out_mkdir" (func $out_mkdir (param i32 i32) (result i32)))
  (import "cab" "out_create" (func $out_create (param i32 i32 i32) (result i32)))
  (import "cab" "out_write" (func $out_write (param i32 i32 i32) (result i32)))
  (import "cab" "out_close" (func $out_close (param i32) (result i32)))
  (import "cab" "out_symlink" (func $out_symlink (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  {data}
  ;; write(fd, ptr, len): one iovec at 0..8
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  ;; exit 1 when a host call failed
  (func $check (param $r i32)
    (if (i32.lt_s (local.get $r) (i32.const 0)) (then (call $proc_exit (i32.const 1)))))
  (func (export "_start") (local $h i32) (local $n i32)
    {body}))"#
    )
    .into_bytes()
}

struct Setup {
    _dir: TempDir,
    store: Store,
    realizer: Realizer,
}

fn setup(tag: &str, limits: Limits) -> Setup {
    let dir = TempDir::new(tag);
    let store = Store::open(&dir.0.join("store")).unwrap();
    let realizer = Realizer::new(store.clone(), cab::derivation::Forges::default(), limits)
        .unwrap()
        .without_progress_bars();
    Setup {
        _dir: dir,
        store,
        realizer,
    }
}

fn derivation(module: cab::hash::TreeHash, hosts: &[&str]) -> Derivation {
    Derivation {
        builder: Builder::Wasm { module },
        method: Method::Tarball,
        args: vec!["test".into()],
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        features: vec!["wasm".into()],
        subpath: vec![],
        rev: None,
        hash: None,
        nar_hash: None,
    }
}

fn run(setup: &Setup, drv: &Derivation) -> anyhow::Result<cab::realizer::Realized> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(setup.realizer.realize(drv, "test-island"))
}

fn expect_error(setup: &Setup, drv: &Derivation, wanted: &[&str]) {
    let before = setup.store.roots().unwrap();
    let err = format!("{:#}", run(setup, drv).expect_err("the run must fail"));
    for w in wanted {
        assert!(err.contains(w), "error should mention {w:?}: {err}");
    }
    assert!(err.contains("test-island"), "error should name the island: {err}");
    assert_eq!(
        setup.store.roots().unwrap(),
        before,
        "a failed run must publish nothing"
    );
    let tmp: Vec<_> = std::fs::read_dir(setup.store.root().join("tmp")).unwrap().collect();
    // Only this process's own long-lived staging (if any) may remain; no run directories.
    for entry in tmp {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert!(
                std::fs::read_dir(&path)
                    .unwrap()
                    .all(|e| !e.unwrap().path().join("out").exists()),
                "{path:?}"
            );
        }
    }
}

fn create_call(path_at: u32, path: &str) -> String {
    format!(
        "(call $check (call $out_create (i32.const {path_at}) (i32.const {}) (i32.const 0)))",
        path.len()
    )
}

#[test]
fn writing_outside_the_output_is_refused() {
    let s = setup("escape", Limits::default());
    let cases = [
        ("../escape", "invalid name"),
        ("/etc/cab-escape", "absolute path"),
        ("a/../../escape", "invalid name"),
        ("./x/../../y", "invalid name"),
        ("nodir/file", "does not exist"),
    ];
    for (path, why) in cases {
        let module = s.realizer.add_module(guest(&[(1024, path)], &create_call(1024, path)));
        expect_error(&s, &derivation(module, &[]), &[why]);
    }
    assert!(!std::path::Path::new("/etc/cab-escape").exists());
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let s = setup("symlink", Limits::default());
    let outside = s._dir.0.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let target = outside.to_str().unwrap().to_owned();
    let body = format!(
        "(call $check (call $out_symlink (i32.const 1024) (i32.const 4) (i32.const 2048) (i32.const {})))\n{}",
        target.len(),
        create_call(1100, "link/pwned")
    );
    let module = s
        .realizer
        .add_module(guest(&[(1024, "link"), (1100, "link/pwned"), (2048, &target)], &body));
    expect_error(&s, &derivation(module, &[]), &["not a directory"]);
    assert!(!outside.join("pwned").exists());
}

#[test]
fn a_host_not_named_by_the_island_is_refused() {
    let s = setup("host", Limits::default());
    let url = "http://example.org/secret";
    let body = format!(
        "(call $check (call $http_open (i32.const 1024) (i32.const 3) (i32.const 1100) (i32.const {}) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))",
        url.len()
    );
    let module = s.realizer.add_module(guest(&[(1024, "GET"), (1100, url)], &body));
    expect_error(
        &s,
        &derivation(module, &["127.0.0.1"]),
        &["example.org", "not one this island names"],
    );
}

#[test]
fn an_endless_loop_is_stopped_by_the_time_limit() {
    let s = setup(
        "loop",
        Limits {
            time: Duration::from_secs(1),
            ..Limits::default()
        },
    );
    let module = s.realizer.add_module(guest(&[], "(loop $l (br $l))"));
    let started = Instant::now();
    expect_error(&s, &derivation(module, &[]), &["time limit"]);
    assert!(started.elapsed() < Duration::from_secs(10), "stopped promptly");
}

#[test]
fn a_memory_blow_up_is_stopped_by_the_memory_limit() {
    let s = setup(
        "memory",
        Limits {
            memory: 16 << 20,
            ..Limits::default()
        },
    );
    let module = s
        .realizer
        .add_module(guest(&[], "(loop $l (drop (memory.grow (i32.const 16))) (br $l))"));
    expect_error(&s, &derivation(module, &[]), &["memory"]);
}

/// A real HTTP server on 127.0.0.1 that answers every request with an endless body.
fn endless_server() -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n");
            let chunk = vec![b'x'; 64 << 10];
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) && stream.write_all(&chunk).is_ok() {}
        }
    });
    (port, handle)
}

#[test]
fn a_huge_download_is_stopped_by_the_download_limit() {
    let (port, server) = endless_server();
    let s = setup(
        "download",
        Limits {
            download: 1 << 20,
            ..Limits::default()
        },
    );
    let url = format!("http://127.0.0.1:{port}/huge");
    let body = format!(
        "(local.set $h (call $http_open (i32.const 1024) (i32.const 3) (i32.const 1100) (i32.const {}) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
         (call $check (local.get $h))
         (loop $l
           (local.set $n (call $http_read (local.get $h) (i32.const 4096) (i32.const 65536)))
           (call $check (local.get $n))
           (br_if $l (i32.gt_s (local.get $n) (i32.const 0))))",
        url.len()
    );
    let module = s.realizer.add_module(guest(&[(1024, "GET"), (1100, &url)], &body));
    expect_error(&s, &derivation(module, &["127.0.0.1"]), &["download limit"]);
    server.join().unwrap();
}

#[test]
fn a_derivation_needing_a_missing_feature_is_refused() {
    let s = setup("feature", Limits::default());
    let module = s.realizer.add_module(guest(&[], ""));
    let mut drv = derivation(module, &[]);
    drv.features.push("gpu".into());
    expect_error(&s, &drv, &["`gpu`", "lacks"]);
}

#[test]
fn a_malformed_fifo_line_fails_the_run() {
    let s = setup("malformed", Limits::default());
    let line = "git-rev not-a-commit\n";
    let module = s.realizer.add_module(guest(
        &[(1024, line)],
        &format!(
            "(call $write (i32.const 1) (i32.const 1024) (i32.const {}))",
            line.len()
        ),
    ));
    expect_error(&s, &derivation(module, &[]), &["malformed"]);
}

#[test]
fn a_known_fifo_value_stops_the_run_at_once() {
    let s = setup(
        "early",
        Limits {
            time: Duration::from_secs(20),
            ..Limits::default()
        },
    );
    // A tree the store holds, indexed under a commit id.
    let tree_dir = s._dir.0.join("tree");
    std::fs::create_dir_all(tree_dir.join("sub")).unwrap();
    std::fs::write(tree_dir.join("sub/file"), b"stored\n").unwrap();
    let added = s.store.add_path(&tree_dir, cab::store::Ingest::Copy, None).unwrap();
    let rev = "0123456789abcdef0123456789abcdef01234567";
    s.store
        .record(&IndexKey::new("tarball", "git-rev", rev), &added.tree)
        .unwrap();
    // The guest reports that commit, then would spin forever.
    let line = format!("git-rev {rev}\n");
    let body = format!(
        "(call $write (i32.const 1) (i32.const 1024) (i32.const {})) (loop $l (br $l))",
        line.len()
    );
    let module = s.realizer.add_module(guest(&[(1024, &line)], &body));
    let started = Instant::now();
    let realized = run(&s, &derivation(module, &[])).unwrap();
    assert!(realized.stopped_early);
    assert_eq!(realized.tree, added.tree);
    assert_eq!(realized.rev.as_deref(), Some(rev));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped at once, took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_guest_output_is_ingested_hashed_and_verified() {
    let s = setup("output", Limits::default());
    let body = "
        (call $check (call $out_mkdir (i32.const 1024) (i32.const 3)))
        (local.set $h (call $out_create (i32.const 1100) (i32.const 9) (i32.const 1)))
        (call $check (local.get $h))
        (call $check (call $out_write (local.get $h) (i32.const 1200) (i32.const 10)))
        (call $check (call $out_close (local.get $h)))
        (call $check (call $out_symlink (i32.const 1300) (i32.const 8) (i32.const 1400) (i32.const 11)))";
    let module = s.realizer.add_module(guest(
        &[
            (1024, "bin"),
            (1100, "bin/tool"),
            (1200, "#!/bin/sh\n"),
            (1300, "bin/link"),
            (1400, "/etc/passwd"),
        ],
        &body.replace("(i32.const 9) (i32.const 1)", "(i32.const 8) (i32.const 1)"),
    ));
    let realized = run(&s, &derivation(module, &[])).unwrap();
    let export = s._dir.0.join("export");
    s.store.export(&realized.tree, &export).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::read(export.join("bin/tool")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(
        std::fs::metadata(export.join("bin/tool")).unwrap().permissions().mode() & 0o111,
        0o111
    );
    assert_eq!(
        std::fs::read_link(export.join("bin/link")).unwrap(),
        PathBuf::from("/etc/passwd")
    );
    assert_eq!(cab::hash::hash_path(&export).unwrap().tree, realized.tree);
}
