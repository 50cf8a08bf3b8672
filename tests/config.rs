//! The configuration file and the order of precedence — a flag, else the environment, else the
//! file, else the default — through the real `cab` binary: the store it opens, the limits a real
//! fetch runs into, a forge URL; unknown keys and bad values refused with exit code 2, naming the
//! file or variable and the key; and README.md documenting every key there is.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cab::config::{Layer, env_name};
use common::forge::{self, Forge};
use common::*;

fn run_cab(cmd: &mut Command) -> Output {
    run_timeout(cmd, Duration::from_secs(120))
}

/// `cab store path` with `args` before it and `env`, which must succeed: the store in force.
fn store_path(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = cab();
    cmd.args(args).args(["store", "path"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_cab(&mut cmd);
    assert!(out.status.success(), "{}", report("cab store path", &out));
    text(&out.stdout).trim().to_owned()
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let dir = TempDir::new("config-store");
    let file = dir.join("conf/config.toml");
    write_file(&file, b"store = \"from-file\"\n", 0o644);
    let file_arg = file.to_str().unwrap();
    let cache = dir.join("cache");
    let default = [("XDG_CACHE_HOME", cache.to_str().unwrap())];
    assert_eq!(store_path(&[], &default), cache.join("cab/store").display().to_string());
    // Relative paths in the file are relative to the file's directory.
    let in_file = dir.join("conf/from-file").display().to_string();
    assert_eq!(store_path(&["--config", file_arg], &default), in_file);
    assert_eq!(store_path(&[], &[("CAB_CONFIG", file_arg)]), in_file);
    // The default file, found through XDG_CONFIG_HOME.
    let xdg = dir.join("xdg");
    let xdg_store = dir.join("xdg-store").display().to_string();
    write_file(
        &xdg.join("cab/config.toml"),
        format!("store = \"{xdg_store}\"\n").as_bytes(),
        0o644,
    );
    assert_eq!(
        store_path(&[], &[("XDG_CONFIG_HOME", xdg.to_str().unwrap())]),
        xdg_store
    );
    let env_store = dir.join("env-store").display().to_string();
    assert_eq!(
        store_path(&["--config", file_arg], &[("CAB_STORE", &env_store)]),
        env_store
    );
    let flag_store = dir.join("flag-store").display().to_string();
    assert_eq!(
        store_path(
            &["--config", file_arg, "--store", &flag_store],
            &[("CAB_STORE", &env_store)]
        ),
        flag_store
    );
}

/// The limits, in the same order, as a real fetch meets them.
#[test]
fn limits_come_from_the_flag_the_environment_or_the_file() {
    let dir = TempDir::new("config-limits");
    let root = dir.join("forge");
    let src = dir.join("src");
    write_file(&src.join("big.bin"), &pseudo_random(64 * 1024, 7), 0o644);
    forge::serve_archive(&root, "big.tar", &src, &["."]);
    let forge = Forge::start(&root, &[]);
    let island = format!("<tarball:{}/files/big.tar>", forge.url());
    let file = dir.join("config.toml");
    write_file(&file, b"max-download = \"1K\"\n", 0o644);
    let fetch = |flags: &[&str], env: &[(&str, &str)], store: &str| {
        let mut cmd = cab();
        cmd.arg("--config")
            .arg(&file)
            .arg("--store")
            .arg(dir.join(store))
            .arg("fetch")
            .args(flags)
            .arg(&island);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_cab(&mut cmd)
    };
    let out = fetch(&[], &[], "s1");
    assert!(exited_nonzero(out.status), "{}", report("file: 1K", &out));
    assert!(
        text(&out.stderr).contains("raise --max-download"),
        "{}",
        report("file: 1K", &out)
    );
    let out = fetch(&[], &[("CAB_MAX_DOWNLOAD", "1G")], "s2");
    assert!(
        out.status.success(),
        "{}",
        report("environment: 1G over the file's 1K", &out)
    );
    let out = fetch(&["--max-download", "1K"], &[("CAB_MAX_DOWNLOAD", "1G")], "s3");
    assert!(
        exited_nonzero(out.status),
        "{}",
        report("flag: 1K over the environment's 1G", &out)
    );
    assert!(text(&out.stderr).contains("raise --max-download"));
}

/// A forge's URL from the file: the derivation and the fetch use it.
#[test]
fn forge_urls_from_the_file() {
    let dir = TempDir::new("config-forge");
    let root = dir.join("forge");
    let src = dir.join("src");
    write_file(&src.join("a.txt"), b"configured\n", 0o644);
    let rev = forge::commit(&root, "acme/conf", &src, "main", "x");
    let forge = Forge::start(&root, &[]);
    let file = dir.join("config.toml");
    write_file(&file, format!("github-url = \"{}\"\n", forge.url()).as_bytes(), 0o644);
    let mut cmd = cab();
    cmd.arg("--config")
        .arg(&file)
        .args(["derivation", "<github:acme/conf>"]);
    let out = run_cab(&mut cmd);
    assert!(out.status.success(), "{}", report("cab derivation", &out));
    assert!(
        text(&out.stdout).contains(&format!("git={}/acme/conf.git", forge.url())),
        "{}",
        report("cab derivation", &out)
    );
    let mut cmd = cab();
    cmd.arg("--config")
        .arg(&file)
        .arg("--store")
        .arg(dir.join("store"))
        .args(["fetch", "<github:acme/conf>"]);
    let out = run_cab(&mut cmd);
    assert!(out.status.success(), "{}", report("cab fetch", &out));
    assert!(text(&out.stdout).contains(&rev));
}

/// Mistakes in the file or the environment stop cab before it does anything, with exit code 2
/// and a message naming where the mistake is.
#[test]
fn unknown_keys_and_bad_values_are_usage_errors() {
    let dir = TempDir::new("config-errors");
    let store = dir.join("store");
    // (config file or "", environment, words the error must contain)
    type Case = (String, Vec<(&'static str, String)>, Vec<String>);
    let cases: Vec<Case> = {
        let file = |name: &str, body: &str| {
            let path = dir.join(name);
            write_file(&path, body.as_bytes(), 0o644);
            path.display().to_string()
        };
        let typo = file("typo.toml", "max-tmie = 30\n");
        let bad_size = file("size.toml", "max-memory = \"lots\"\n");
        let bad_toml = file("broken.toml", "store = \n");
        let zero = file("zero.toml", "threads = 0\n");
        let bad_url = file("url.toml", "gitlab-url = \"gitlab.example.org\"\n");
        let missing = dir.join("missing.toml").display().to_string();
        vec![
            (typo.clone(), vec![], vec![typo, "max-tmie".into()]),
            (bad_size.clone(), vec![], vec![bad_size, "lots".into()]),
            (bad_toml.clone(), vec![], vec![bad_toml]),
            (zero.clone(), vec![], vec!["threads".into(), "CAB_THREADS".into()]),
            (
                bad_url.clone(),
                vec![],
                vec!["gitlab-url".into(), "gitlab.example.org".into()],
            ),
            (missing.clone(), vec![], vec![missing, "cannot read".into()]),
            (
                String::new(),
                vec![("CAB_MAX_TIME", "soon".into())],
                vec!["CAB_MAX_TIME".into(), "soon".into()],
            ),
            (
                String::new(),
                vec![("CAB_PASSTHROUGH", "maybe".into())],
                vec!["CAB_PASSTHROUGH".into()],
            ),
        ]
    };
    for (file, env, words) in cases {
        let mut cmd = cab();
        if !file.is_empty() {
            cmd.arg("--config").arg(&file);
        }
        cmd.arg("--store").arg(&store).args(["store", "ls"]);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = run_cab(&mut cmd);
        let what = format!("{file} {env:?}");
        assert_eq!(out.status.code(), Some(2), "{}", report(&what, &out));
        let stderr = text(&out.stderr);
        for word in &words {
            assert!(stderr.contains(word.as_str()), "{what}: no {word:?} in {stderr}");
        }
        assert!(!store.exists(), "{what}: cab did something before refusing");
    }
}

/// README.md's table names every key and its environment variable.
#[test]
fn readme_documents_every_key() {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for key in Layer::KEYS {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` ")))
            .unwrap_or_else(|| panic!("README.md has no row for the key `{key}`"));
        assert!(row.contains(&format!("`{}`", env_name(key))), "{row}");
    }
}
