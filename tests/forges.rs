//! GitLab and SourceHut islands end to end, through `cab fetch` and `cab update`, against the
//! local forge playing each forge's URL shapes (`scripts/forge`): GitLab's nested groups and
//! `-/archive/REV/PROJECT-REV.tar.gz`, another GitLab instance named by `host` (over https, with
//! a CA of the test's own), SourceHut's `~OWNER/REPO` without `.git`; the early stop when a ref
//! has not moved; and credentials — each forge's token, a token for any host from the config
//! file, netrc logins — each sent to its own host only, and needed where the forge asks for them.
//!
//! References are independent of cab: `git rev-parse` for commits, `git archive` for trees,
//! real Nix for narHashes.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::forge::{self, Forge, pki, tls_forge};
use common::*;

/// Where a forge's default instance points when a test does not use it: nothing listens on
/// port 1, so a stray request fails at once.
const NOWHERE: &str = "http://127.0.0.1:1";

/// `cab --store STORE` with every forge's default instance at [`NOWHERE`], then `env`.
fn cab_with(store: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = cab();
    cmd.arg("--store").arg(store);
    for var in ["CAB_GITHUB_URL", "CAB_GITLAB_URL", "CAB_SOURCEHUT_URL"] {
        cmd.env(var, NOWHERE);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run_cab(cmd: &mut Command) -> Output {
    run_timeout(cmd, Duration::from_secs(120))
}

/// What `cab fetch --json` said of one island.
#[derive(Debug)]
struct Fetched {
    locked: String,
    rev: Option<String>,
    hash: String,
    nar: String,
}

/// `cab fetch --json ISLAND`, which must succeed.
fn fetch(store: &Path, env: &[(&str, &str)], island: &str) -> Fetched {
    let out = run_cab(cab_with(store, env).args(["fetch", "--json", island]));
    assert!(out.status.success(), "{}", report(&format!("cab fetch {island}"), &out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let field = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("no {k} in {v}")).to_owned();
    Fetched {
        locked: field("locked"),
        rev: v["rev"].as_str().map(str::to_owned),
        hash: field("hash"),
        nar: field("narHash"),
    }
}

/// Both hashes of what `git archive` makes of `rev` (of `sub` within it, if given).
fn reference(root: &Path, repo: &str, rev: &str, scratch: &Path, sub: Option<&str>) -> Hashes {
    let dest = scratch.join(format!("ref-{}-{rev}", repo.replace(['/', '~'], "-")));
    if !dest.exists() {
        forge::git_archive_extract(root, repo, rev, &dest);
    }
    let path = sub.map_or(dest.clone(), |s| dest.join(s));
    let hashes = cab_hash(&path, None);
    assert_eq!(
        hashes.nar,
        nix_hash(&path, None),
        "cab hash and Nix disagree on {}",
        path.display()
    );
    hashes
}

/// A source tree with a nested directory, an executable and a symlink.
fn source(dir: &Path, text: &str) -> PathBuf {
    let src = dir.join(format!("src-{}", text.len()));
    write_file(&src.join("README"), text.as_bytes(), 0o644);
    write_file(&src.join("sub/run.sh"), b"#!/bin/sh\necho run\n", 0o755);
    make_symlink("../README", &src.join("sub/readme"));
    src
}

fn basic(user: &str, password: &str) -> String {
    let out = run_ok(
        Command::new("python3")
            .args([
                "-c",
                "import base64,sys; print(base64.b64encode(sys.argv[1].encode()).decode())",
            ])
            .arg(format!("{user}:{password}")),
    );
    format!("Basic {}", text(&out.stdout).trim())
}

#[test]
fn gitlab_subgroups_and_sourcehut_match_git_archive_and_nix() {
    require_nix();
    let dir = TempDir::new("forges-shapes");
    let root = dir.join("forge");
    let src = source(dir.path(), "hello from a forge\n");
    let tagged = forge::commit(&root, "group/sub/proj", &src, "main", "first");
    forge::tag(&root, "group/sub/proj", "v1", &tagged, true);
    let src2 = source(dir.path(), "hello again, from a forge\n");
    let main = forge::commit(&root, "group/sub/proj", &src2, "main", "second");
    let hut = forge::commit(&root, "~me/thing", &src, "main", "on sourcehut");
    let forge = Forge::start(&root, &[]);
    let url = forge.url();
    let env = [("CAB_GITLAB_URL", url.as_str()), ("CAB_SOURCEHUT_URL", url.as_str())];
    let store = dir.join("store");

    let got = fetch(&store, &env, "<gitlab:group/sub/proj>");
    let want = reference(&root, "group/sub/proj", &main, dir.path(), None);
    assert_eq!(got.rev.as_deref(), Some(main.as_str()));
    assert_eq!((&got.hash, &got.nar), (&want.tree, &want.nar));
    assert_eq!(
        got.locked,
        format!(
            "<gitlab:group/sub/proj:{{ rev = \"{main}\", hash = \"{}\", narHash = \"{}\" }}>",
            want.tree, want.nar
        )
    );
    let got = fetch(&store, &env, "<gitlab:group/sub/proj:{ ref = \"v1\" }>");
    assert_eq!(got.rev.as_deref(), Some(tagged.as_str()), "an annotated tag, peeled");
    assert_eq!(
        got.nar,
        reference(&root, "group/sub/proj", &tagged, dir.path(), None).nar
    );
    let got = fetch(&store, &env, "<gitlab:group/sub/proj::/sub>");
    assert_eq!(
        got.nar,
        reference(&root, "group/sub/proj", &main, dir.path(), Some("sub")).nar
    );

    let got = fetch(&store, &env, "<sourcehut:~me/thing>");
    let want = reference(&root, "~me/thing", &hut, dir.path(), None);
    assert_eq!(got.rev.as_deref(), Some(hut.as_str()));
    assert_eq!((&got.hash, &got.nar), (&want.tree, &want.nar));

    // Each forge's own URLs, as cab built them.
    let paths: Vec<String> = forge.requests().into_iter().map(|r| r.path).collect();
    for wanted in [
        "/group/sub/proj.git/git-upload-pack".to_string(),
        format!("/group/sub/proj/-/archive/{main}/proj-{main}.tar.gz"),
        format!("/group/sub/proj/-/archive/{tagged}/proj-{tagged}.tar.gz"),
        "/~me/thing/git-upload-pack".into(),
        format!("/~me/thing/archive/{hut}.tar.gz"),
    ] {
        assert!(paths.contains(&wanted), "no request for {wanted}: {paths:?}");
    }
}

/// `cab update` of unchanged GitLab and SourceHut refs costs one ref round trip each and no
/// archive; a moved ref is fetched and repinned.
#[test]
fn unchanged_refs_stop_early_and_moved_ones_are_repinned() {
    let dir = TempDir::new("forges-update");
    let root = dir.join("forge");
    let src = source(dir.path(), "one\n");
    let first = forge::commit(&root, "g/s/p", &src, "main", "one");
    forge::commit(&root, "~me/r", &src, "main", "one");
    let forge = Forge::start(&root, &[]);
    let url = forge.url();
    let project = dir.join("project");
    fs::create_dir_all(&project).unwrap();
    fs::write(
        project.join("islands.toml"),
        "lab = '<gitlab:g/s/p>'\nhut = '<sourcehut:~me/r:{ ref = \"main\" }>'\n",
    )
    .unwrap();
    let update = |flags: &[&str]| {
        let mut cmd = cab_with(
            &dir.join("store"),
            &[("CAB_GITLAB_URL", &url), ("CAB_SOURCEHUT_URL", &url)],
        );
        cmd.current_dir(&project).arg("update").args(flags);
        let out = run_cab(&mut cmd);
        assert!(out.status.success(), "{}", report("cab update", &out));
        out
    };
    let archives = || {
        forge
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("/archive/"))
            .count()
    };
    update(&[]);
    assert_eq!(archives(), 2);
    let lock = fs::read_to_string(project.join("islands.lock")).unwrap();
    assert!(lock.contains(&format!("rev = \"{first}\"")), "{lock}");

    let before = forge.requests().len();
    let out = update(&[]);
    assert!(
        text(&out.stderr).contains("all 2 islands are up to date"),
        "{}",
        report("update", &out)
    );
    let again = &forge.settled_requests(Duration::from_millis(300), Duration::from_secs(5))[before..];
    assert_eq!(archives(), 2, "no archive for an unchanged ref: {again:?}");
    assert_eq!(again.len(), 2, "one ls-refs per island: {again:?}");
    assert!(again.iter().all(|r| r.path.ends_with("/git-upload-pack")), "{again:?}");

    let moved = forge::commit(&root, "g/s/p", &source(dir.path(), "two, moved\n"), "main", "two");
    let out = update(&[]);
    assert_eq!(text(&out.stdout).trim(), format!("lab: {first} → {moved}"));
    assert_eq!(archives(), 3);

    // The same, for scripts: one JSON object per island, the lock's pins in it.
    let third = forge::commit(&root, "g/s/p", &source(dir.path(), "three\n"), "main", "three");
    let out = update(&["--json"]);
    let lock = cab::lock::Lock::read(&project.join("islands.lock")).unwrap();
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(lines.len(), 2, "{}", report("update --json", &out));
    for line in &lines {
        let name = line["name"].as_str().unwrap();
        let pin = &lock.pins[name].locked;
        assert_eq!(line["moved"], name == "lab", "{line}");
        assert_eq!(line["new"], pin.to_string(), "{line}");
        assert_eq!(line["rev"].as_str(), pin.config.rev.as_deref(), "{line}");
        assert_eq!(
            line["narHash"],
            pin.config.nar_hash.as_ref().unwrap().to_string(),
            "{line}"
        );
        assert_eq!(line["hash"], pin.config.hash.as_ref().unwrap().to_string(), "{line}");
    }
    let lab = lines.iter().find(|l| l["name"] == "lab").unwrap();
    assert_eq!(lab["rev"].as_str(), Some(third.as_str()));
    assert!(lab["old"].as_str().unwrap().contains(&moved), "{lab}");
}

/// `host` names another GitLab instance, reached over https; a token for that host from the
/// config file's `[tokens]` goes there the way GitLab takes tokens (Basic, user `oauth2`).
#[test]
fn host_names_another_instance_and_its_own_token() {
    let dir = TempDir::new("forges-host");
    let root = dir.join("forge");
    let src = source(dir.path(), "elsewhere\n");
    let rev = forge::commit(&root, "team/tool", &src, "main", "elsewhere");
    let certs = dir.join("pki");
    fs::create_dir_all(&certs).unwrap();
    let pki = pki(&certs);
    let forge = tls_forge(&root, &pki);
    let config = dir.join("config.toml");
    fs::write(&config, "[tokens]\n\"localhost\" = \"lab-token\"\n").unwrap();
    let island = format!("<gitlab:team/tool:{{ host = \"localhost:{}\" }}>", forge.port);
    let ca = pki.ca.to_str().unwrap();
    let got = fetch(
        &dir.join("store"),
        &[("SSL_CERT_FILE", ca), ("CAB_CONFIG", config.to_str().unwrap())],
        &island,
    );
    assert_eq!(got.rev.as_deref(), Some(rev.as_str()));
    assert_eq!(got.nar, reference(&root, "team/tool", &rev, dir.path(), None).nar);
    assert!(got.locked.starts_with(&format!(
        "<gitlab:team/tool:{{ host = \"localhost:{}\", rev = ",
        forge.port
    )));
    let requests = forge.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    for r in &requests {
        assert_eq!(r.host, format!("localhost:{}", forge.port), "{r:?}");
        assert_eq!(
            r.authorization.as_deref(),
            Some(basic("oauth2", "lab-token").as_str()),
            "{r:?}"
        );
    }
}

/// Every host gets its own credentials and no other's: a GitLab token, a netrc login for the
/// SourceHut host, and nothing for a host a redirect leads to.
#[test]
fn credentials_go_to_their_own_host_only() {
    let dir = TempDir::new("forges-credentials");
    let root = dir.join("forge");
    let src = source(dir.path(), "secret things\n");
    forge::commit(&root, "g/p", &src, "main", "lab");
    forge::commit(&root, "~me/r", &src, "main", "hut");
    forge::serve_archive(&root, "t.tar.gz", &src, &["."]);
    let forge = Forge::start(&root, &[]);
    let (lab, hut) = (forge.url(), forge.url_as("localhost"));
    let netrc = dir.join("netrc");
    fs::write(&netrc, "machine localhost\n  login me\n  password \"pass word\"\n").unwrap();
    let env = [
        ("CAB_GITLAB_URL", lab.as_str()),
        ("CAB_SOURCEHUT_URL", hut.as_str()),
        ("CAB_GITLAB_TOKEN", "gl-secret"),
        ("CAB_NETRC", netrc.to_str().unwrap()),
    ];
    let store = dir.join("store");
    fetch(&store, &env, "<gitlab:g/p>");
    fetch(&store, &env, "<sourcehut:~me/r>");
    let requests = forge.settled_requests(Duration::from_millis(300), Duration::from_secs(5));
    let (to_lab, to_hut): (Vec<_>, Vec<_>) = requests.iter().partition(|r| r.host.starts_with("127.0.0.1:"));
    assert!(!to_lab.is_empty() && !to_hut.is_empty(), "{requests:?}");
    for r in to_lab {
        assert_eq!(
            r.authorization.as_deref(),
            Some(basic("oauth2", "gl-secret").as_str()),
            "{r:?}"
        );
    }
    for r in to_hut {
        assert_eq!(
            r.authorization.as_deref(),
            Some(basic("me", "pass word").as_str()),
            "{r:?}"
        );
    }

    // A redirect from the GitLab host to a host without credentials: the token stays behind.
    let before = requests.len();
    let target = format!("{}/files/t.tar.gz", forge.url_as("localhost"));
    let island = format!("<tarball:{lab}/redirect?to={target}>");
    fetch(&store, &env[..3], &island);
    let requests = forge.settled_requests(Duration::from_millis(300), Duration::from_secs(5));
    let hops = &requests[before..];
    assert_eq!(hops.len(), 2, "{hops:?}");
    assert!(
        hops[0].path.starts_with("/redirect") && hops[0].authorization.is_some(),
        "{hops:?}"
    );
    assert_eq!(hops[1].path, "/files/t.tar.gz");
    assert_eq!(
        hops[1].authorization, None,
        "a token followed a redirect to another host: {hops:?}"
    );
}

/// A forge that wants credentials gets them from the environment or the config file, and a
/// fetch without them fails with a plain error.
#[test]
fn a_private_forge_needs_its_token() {
    let dir = TempDir::new("forges-private");
    let root = dir.join("forge");
    let rev = forge::commit(&root, "g/private", &source(dir.path(), "private\n"), "main", "x");
    let forge = Forge::start(&root, &["--require-authorization", &basic("oauth2", "tok")]);
    let url = forge.url();
    let store = dir.join("store");
    let out = run_cab(cab_with(&store, &[("CAB_GITLAB_URL", &url)]).args(["fetch", "<gitlab:g/private>"]));
    assert!(exited_nonzero(out.status), "{}", report("fetch without a token", &out));
    assert!(!text(&out.stderr).contains("panicked"), "{}", report("fetch", &out));

    let got = fetch(
        &store,
        &[("CAB_GITLAB_URL", &url), ("CAB_GITLAB_TOKEN", "tok")],
        "<gitlab:g/private>",
    );
    assert_eq!(got.rev.as_deref(), Some(rev.as_str()));
    let config = dir.join("config.toml");
    fs::write(&config, format!("gitlab-url = \"{url}\"\ngitlab-token = \"tok\"\n")).unwrap();
    let mut cmd = cab();
    cmd.arg("--store")
        .arg(dir.join("store2"))
        .arg("--config")
        .arg(&config)
        .args(["fetch", "<gitlab:g/private>"]);
    let out = run_cab(&mut cmd);
    assert!(
        out.status.success(),
        "{}",
        report("fetch with the config file's token", &out)
    );
    assert!(text(&out.stdout).contains(&rev));
}
