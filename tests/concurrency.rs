//! Many `cab` processes on one store at once, as parallel CI jobs sharing a cache run them:
//! none may fail for another's sake, and an island they all want is downloaded once.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::forge::Forge;
use common::*;

/// Starts `cmd` with its output captured.
fn start(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start cab")
}

/// Waits for every child (bounded) and returns (command index, exit ok, stderr).
fn finish(children: Vec<Child>) -> Vec<(usize, bool, String)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    children
        .into_iter()
        .enumerate()
        .map(|(i, mut child)| {
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("process {i} did not finish within 120 s");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let out = child.wait_with_output().unwrap();
            (i, out.status.success(), text(&out.stderr))
        })
        .collect()
}

fn cab_on(store: &Path) -> Command {
    let mut cmd = cab();
    cmd.arg("--store").arg(store);
    cmd
}

#[test]
fn processes_starting_together_on_one_store_never_fail() {
    let tmp = TempDir::new("concurrent-processes");
    let trees: Vec<_> = (0..4)
        .map(|i| {
            let dir = tmp.join(format!("tree{i}"));
            write_file(&dir.join("a.txt"), format!("tree {i}\n").as_bytes(), 0o644);
            write_file(&dir.join("sub/b.bin"), &pseudo_random(10_000, i), 0o755);
            dir
        })
        .collect();
    let mut store = tmp.join("store-0");
    for round in 0..50 {
        // Every other round on a fresh store: creating a store races too.
        if round % 2 == 0 {
            store = tmp.join(format!("store-{round}"));
        }
        let children = (0..8)
            .map(|i| {
                let tree = &trees[i % trees.len()];
                let mut cmd = cab_on(&store);
                if i % 2 == 0 {
                    cmd.args(["store", "add"]).arg(tree);
                } else {
                    cmd.arg("fetch").arg(format!("<fs::{}>", tree.display()));
                }
                start(cmd)
            })
            .collect();
        for (i, ok, stderr) in finish(children) {
            assert!(ok, "round {round}, process {i} failed:\n{stderr}");
        }
    }
    let out = run_ok(cab_on(&store).args(["store", "verify"]));
    assert!(out.status.success());
    // No staging is left behind by any of them.
    let left: Vec<_> = fs::read_dir(store.join("tmp")).unwrap().flatten().collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

#[test]
fn processes_realizing_one_island_download_it_once() {
    let tmp = TempDir::new("concurrent-one-download");
    let forge_root = tmp.join("forge");
    // 2 MB at 1 MB/s: every process asks while the first download runs.
    let forge = Forge::start(
        &forge_root,
        &["--throttle", "1000000", "--throttle-path-regex", "files"],
    );
    let src = tmp.join("src");
    write_file(&src.join("pkg/data.bin"), &pseudo_random(2_000_000, 7), 0o644);
    write_file(&src.join("pkg/README"), b"one download\n", 0o644);
    for (archive, member) in [("pkg.tar.gz", "pkg"), ("warm.tar.gz", "pkg/README")] {
        let status = Command::new("tar")
            .arg("-czf")
            .arg(forge_root.join("files").join(archive))
            .arg("-C")
            .arg(&src)
            .arg(member)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let island = format!("<tarball:{}/files/pkg.tar.gz>", forge.url());
    let store = tmp.join("store");
    // A store with the fetcher compiled already, so that all four ask at once.
    run_ok(
        cab_on(&store)
            .arg("fetch")
            .arg(format!("<tarball:{}/files/warm.tar.gz>", forge.url())),
    );
    let children = (0..4)
        .map(|_| {
            let mut cmd = cab_on(&store);
            cmd.args(["fetch", "--json"]).arg(&island);
            start(cmd)
        })
        .collect();
    let results = finish(children);
    for (i, ok, stderr) in &results {
        assert!(ok, "process {i} failed:\n{stderr}");
    }
    let downloads: Vec<_> = forge
        .settled_requests(Duration::from_millis(300), Duration::from_secs(10))
        .into_iter()
        .filter(|r| r.path.contains("pkg.tar.gz"))
        .collect();
    assert_eq!(downloads.len(), 1, "one download for four processes: {downloads:?}");
}
