//! The shell conventions, through the real binary: completion scripts the shells accept,
//! manual pages groff renders cleanly, `--json` where scripts read cab's output, and the exit
//! codes `cab --help` documents.

mod common;

use std::fs;
use std::process::Command;

use common::*;

/// Every subcommand, as a user types it.
const SUBCOMMANDS: &[&str] = &[
    "hash",
    "fetch",
    "derivation",
    "mount",
    "unmount",
    "update",
    "store",
    "import",
    "export",
    "completions",
    "man",
];

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn completions_are_scripts_the_shells_accept() {
    let dir = TempDir::new("shell-completions");
    for (shell, check) in [
        ("bash", ["bash", "-n"]),
        ("zsh", ["zsh", "-n"]),
        ("fish", ["fish", "-n"]),
    ] {
        let out = run_ok(cab().args(["completions", shell]));
        let script = text(&out.stdout);
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} completion lacks `{sub}`");
        }
        assert!(script.contains("manifest"), "{shell} completion lacks the flags");
        if have(check[0]) {
            let file = dir.join(format!("cab.{shell}"));
            fs::write(&file, &out.stdout).unwrap();
            run_ok(Command::new(check[0]).arg(check[1]).arg(&file));
        } else {
            assert_ne!(shell, "bash", "bash is needed to check the bash completion");
        }
    }
    // Sourced into a real bash, it completes the subcommands.
    let file = dir.join("cab.bash");
    let out = run_ok(Command::new("bash").arg("-c").arg(format!(
        "source {} && COMP_WORDS=(cab mo) COMP_CWORD=1 COMP_LINE='cab mo' COMP_POINT=6 && _cab cab mo cab \
         && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display()
    )));
    assert_eq!(text(&out.stdout).trim(), "mount");
    let out = run_fail(cab().args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2), "{}", report("completions tcsh", &out));
}

#[test]
fn the_manual_pages_render_and_name_every_command() {
    let check = |page: &[u8]| {
        let dir = TempDir::new("shell-man-page");
        let file = dir.join("page.1");
        fs::write(&file, page).unwrap();
        // -ww: every warning; a page groff warns about is a page that renders wrong. -P-cbou:
        // plain text, no overstriking, to search in. -k: UTF-8 input, as man(1) reads pages.
        let out = run_ok(
            Command::new("groff")
                .args(["-k", "-man", "-Tutf8", "-ww", "-P-cbou"])
                .arg(&file),
        );
        assert!(out.stderr.is_empty(), "{}", report("groff", &out));
        text(&out.stdout)
    };
    let out = run_ok(cab().arg("man"));
    let page = check(&out.stdout);
    for sub in SUBCOMMANDS {
        assert!(page.contains(&format!("cab-{sub}")), "cab(1) lacks `{sub}`:\n{page}");
    }
    assert!(
        page.contains("Exit codes"),
        "cab(1) says nothing of exit codes:\n{page}"
    );

    let dir = TempDir::new("shell-man-dir");
    let pages = dir.join("man1");
    run_ok(cab().arg("man").arg("--dir").arg(&pages));
    for name in ["cab.1", "cab-mount.1", "cab-store-ls.1", "cab-export-nix.1"] {
        let page = check(&fs::read(pages.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")));
        assert!(
            page.contains("SYNOPSIS") || page.contains("Synopsis"),
            "{name}:\n{page}"
        );
    }
    let mount = check(&fs::read(pages.join("cab-mount.1")).unwrap());
    assert!(mount.contains("--request-timeout"), "{mount}");
}

#[test]
fn store_ls_json_gives_each_tree_with_its_nar_hash() {
    let dir = TempDir::new("shell-ls-json");
    let store = dir.join("store");
    let mut added = Vec::new();
    for (name, body) in [("a", "one\n"), ("b", "two\n")] {
        let tree = dir.join(name);
        write_file(&tree.join("file"), body.as_bytes(), 0o644);
        run_ok(cab().arg("--store").arg(&store).args(["store", "add"]).arg(&tree));
        added.push(cab_hash(&tree, None));
    }
    let out = run_ok(cab().arg("--store").arg(&store).args(["store", "ls", "--json"]));
    let mut got: Vec<(String, String)> = text(&out.stdout)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            (
                value["hash"].as_str().unwrap().to_owned(),
                value["narHash"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut want: Vec<(String, String)> = added.into_iter().map(|h| (h.tree, h.nar)).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn exit_codes_are_the_documented_ones() {
    let dir = TempDir::new("shell-exit");
    let help = text(&run_ok(cab().arg("--help")).stdout);
    assert!(help.contains("Exit codes:"), "{help}");
    // 2: the command line is wrong.
    for args in [&["--no-such-flag"][..], &["no-such-command"], &["fetch"]] {
        let out = run_fail(cab().args(args));
        assert_eq!(out.status.code(), Some(2), "{}", report(&format!("{args:?}"), &out));
    }
    // 2: the configuration is wrong (a key the file does not know; a variable that does not
    // parse), and nothing was done: no store was made.
    let config = dir.join("config.toml");
    fs::write(&config, "max-tmie = 3\n").unwrap();
    let store = dir.join("store");
    let out = run_fail(
        cab()
            .arg("--store")
            .arg(&store)
            .arg("--config")
            .arg(&config)
            .args(["store", "ls"]),
    );
    assert_eq!(out.status.code(), Some(2), "{}", report("bad config", &out));
    assert!(text(&out.stderr).contains("max-tmie"), "{}", report("bad config", &out));
    let out = run_fail(
        cab()
            .arg("--store")
            .arg(&store)
            .env("CAB_THREADS", "many")
            .args(["store", "ls"]),
    );
    assert_eq!(out.status.code(), Some(2), "{}", report("bad variable", &out));
    assert!(!store.exists(), "a usage error did something");
    // 1: the command was right and failed (here: a tree that is not there).
    let out = run_fail(cab().args(["hash"]).arg(dir.join("missing")));
    assert_eq!(out.status.code(), Some(1), "{}", report("hash of nothing", &out));
    assert!(
        text(&out.stderr).contains("missing"),
        "{}",
        report("hash of nothing", &out)
    );
    // 0, and completions work whatever the configuration says.
    let out = run_ok(cab().arg("--config").arg(&config).args(["completions", "bash"]));
    assert_eq!(out.status.code(), Some(0));
}
