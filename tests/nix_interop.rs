//! Pins both ways with Nix's tools, against the local forge and the real Nix:
//!
//! - `cab import flake.lock`: a flake.lock written by the real `nix flake lock` (git, tarball
//!   and path inputs from the local forge), with the nodes Nix writes for github, gitlab and
//!   sourcehut inputs (a `dir`, a tag, subgroups, a registry input, a `follows`) added the way
//!   Nix writes them, since Nix resolves those through forges' APIs the local forge does not
//!   have. Every pin keeps its commit and narHash; what cannot be imported is named.
//! - `cab import` of npins' and niv's sources.json, written as those tools write them.
//! - `cab export nix`: real `nix-instantiate --eval --strict` and `nix-build` of the exported
//!   file fetch from the local forge, and give the very narHashes the lock pins.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cab::hash::NarHash;
use cab::lock::Lock;
use common::forge::{self, Forge};
use common::*;
use serde_json::{Value, json};

/// A forge with the repositories and files every test here uses, and real Nix's narHashes of
/// what each serves.
struct World {
    dir: TempDir,
    root: PathBuf,
    forge: Forge,
    /// `acme/widgets`: `main` and the annotated tag `v1` on the commit before it.
    main: String,
    v1: String,
    lab: String,
    hut: String,
    /// A local tree (a `path` input, an fs island).
    local: PathBuf,
}

impl World {
    fn new(label: &str) -> World {
        require_nix();
        let dir = TempDir::new(label);
        let root = dir.join("forge");
        let tree = |name: &str, text: &str| {
            let src = dir.join(name);
            write_file(&src.join("README"), text.as_bytes(), 0o644);
            write_file(&src.join("sub/tool.sh"), b"#!/bin/sh\necho tool\n", 0o755);
            write_file(&src.join("sub/data.txt"), format!("data of {name}\n").as_bytes(), 0o644);
            make_symlink("../README", &src.join("sub/readme"));
            src
        };
        let v1 = forge::commit(&root, "acme/widgets", &tree("w1", "widgets one\n"), "main", "one");
        forge::tag(&root, "acme/widgets", "v1", &v1, true);
        let main = forge::commit(&root, "acme/widgets", &tree("w2", "widgets two\n"), "main", "two");
        let lab = forge::commit(&root, "group/sub/lab", &tree("lab", "on gitlab\n"), "main", "lab");
        let hut = forge::commit(&root, "~me/hut", &tree("hut", "on sourcehut\n"), "main", "hut");
        // A tarball with one top-level directory, as Nix 2.8's fetchTarball requires.
        tree("tarball", "a tarball\n");
        forge::serve_archive(&root, "t.tar.gz", dir.path(), &["tarball"]);
        let local = tree("local", "a local tree\n");
        let forge = Forge::start(&root, &[]);
        World {
            dir,
            root,
            forge,
            main,
            v1,
            lab,
            hut,
            local,
        }
    }

    fn url(&self) -> String {
        self.forge.url()
    }

    /// Real Nix's narHash of what `git archive` makes of `rev` (of `sub` in it).
    fn nar(&self, repo: &str, rev: &str, sub: Option<&str>) -> String {
        let dest = self
            .dir
            .join(format!("archive-{}-{rev}", repo.replace(['/', '~'], "-")));
        if !dest.exists() {
            forge::git_archive_extract(&self.root, repo, rev, &dest);
        }
        nix_hash(&sub.map_or(dest.clone(), |s| dest.join(s)), None)
    }

    /// `cab ARGS…` in `project`, with every forge at the local one.
    fn cab(&self, project: &Path) -> Command {
        let mut cmd = cab();
        let url = self.url();
        cmd.current_dir(project)
            .arg("--store")
            .arg(self.dir.join("store"))
            .env("CAB_GITHUB_URL", &url)
            .env("CAB_GITLAB_URL", &url)
            .env("CAB_SOURCEHUT_URL", &url);
        cmd
    }

    fn project(&self, name: &str) -> PathBuf {
        let project = self.dir.join(name);
        fs::create_dir_all(&project).unwrap();
        project
    }
}

fn run_long(cmd: &mut Command) -> Output {
    run_timeout(cmd, Duration::from_secs(300))
}

/// The lock's pins: name → (rev, narHash of the locked literal).
fn pins(project: &Path) -> BTreeMap<String, (Option<String>, NarHash)> {
    let lock = Lock::read(&project.join("islands.lock")).unwrap();
    lock.pins
        .into_iter()
        .map(|(name, pin)| {
            let config = pin.locked.config;
            (name, (config.rev, config.nar_hash.expect("a locked narHash")))
        })
        .collect()
}

fn nar(text: &str) -> NarHash {
    let text = if text.starts_with("sha256-") {
        text.to_owned()
    } else {
        format!("sha256:{text}")
    };
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// A flake.lock node as Nix writes one for a `flake = false` input.
fn node(locked: Value, original: Value) -> Value {
    json!({ "flake": false, "locked": locked, "original": original })
}

#[test]
fn flake_lock_imports_losslessly() {
    let world = World::new("interop-flake");
    let url = world.url();
    // The real Nix locks what it can reach here: git, tarball and path inputs.
    let flake = world.project("flake");
    fs::write(
        flake.join("flake.nix"),
        format!(
            "{{\n  inputs.gitin = {{ url = \"git+{url}/acme/widgets.git?ref=main\"; flake = false; }};\n  \
             inputs.tarin = {{ url = \"{url}/files/t.tar.gz\"; flake = false; }};\n  \
             inputs.pathin = {{ url = \"path:{}\"; flake = false; }};\n  \
             outputs = {{ self, ... }}: {{ }};\n}}\n",
            world.local.display()
        ),
    )
    .unwrap();
    let out = run_long(
        Command::new("nix")
            .args(["--extra-experimental-features", "nix-command flakes", "flake", "lock"])
            .current_dir(&flake),
    );
    assert!(out.status.success(), "{}", report("nix flake lock", &out));
    let mut lock: Value = serde_json::from_str(&fs::read_to_string(flake.join("flake.lock")).unwrap()).unwrap();
    assert_eq!(
        lock["nodes"]["gitin"]["locked"]["rev"],
        json!(world.main),
        "Nix locked main"
    );

    // The nodes Nix writes for forge inputs, which it locks through the forges' APIs.
    let (main, v1, lab, hut) = (&world.main, &world.v1, &world.lab, &world.hut);
    let github = |rev: &str, nar: String| json!({ "lastModified": 1704067200, "narHash": nar, "owner": "acme", "repo": "widgets", "rev": rev, "type": "github" });
    let nodes = lock["nodes"].as_object_mut().unwrap();
    nodes.insert(
        "widgets".into(),
        node(
            github(v1, world.nar("acme/widgets", v1, None)),
            json!({ "owner": "acme", "ref": "v1", "repo": "widgets", "type": "github" }),
        ),
    );
    // `?dir=sub`: the narHash is the whole tree's; the island is the subtree.
    nodes.insert(
        "widgets-sub".into(),
        node(
            github(main, world.nar("acme/widgets", main, None)),
            json!({ "dir": "sub", "owner": "acme", "repo": "widgets", "type": "github" }),
        ),
    );
    nodes.insert(
        "registry".into(),
        node(
            github(main, world.nar("acme/widgets", main, None)),
            json!({ "id": "widgets", "type": "indirect" }),
        ),
    );
    nodes.insert(
        "lab".into(),
        node(
            json!({ "lastModified": 1704067200, "narHash": world.nar("group/sub/lab", lab, None), "owner": "group%2Fsub", "repo": "lab", "rev": lab, "type": "gitlab" }),
            json!({ "owner": "group%2Fsub", "repo": "lab", "type": "gitlab" }),
        ),
    );
    nodes.insert(
        "hut".into(),
        node(
            json!({ "lastModified": 1704067200, "narHash": world.nar("~me/hut", hut, None), "owner": "~me", "repo": "hut", "rev": hut, "type": "sourcehut" }),
            json!({ "owner": "~me", "ref": "main", "repo": "hut", "type": "sourcehut" }),
        ),
    );
    nodes.insert(
        "single".into(),
        node(
            json!({ "narHash": "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "type": "file", "url": format!("{url}/files/t.tar.gz") }),
            json!({ "type": "file", "url": format!("{url}/files/t.tar.gz") }),
        ),
    );
    let inputs = nodes["root"]["inputs"].as_object_mut().unwrap();
    for name in ["widgets", "widgets-sub", "registry", "lab", "hut", "single"] {
        inputs.insert(name.into(), json!(name));
    }
    inputs.insert("also-git".into(), json!(["gitin"]));
    let lock_file = flake.join("flake.lock");
    fs::write(&lock_file, serde_json::to_string_pretty(&lock).unwrap()).unwrap();

    let project = world.project("project");
    let out = run_long(world.cab(&project).arg("import").arg(&lock_file));
    assert!(out.status.success(), "{}", report("cab import flake.lock", &out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not imported: single: it is a single file"), "{stderr}");
    assert!(
        stderr.contains("note: registry: the flake names it through the registry"),
        "{stderr}"
    );

    // Every pin as Nix locked it: the same commit, the same narHash (the subtree's for `dir`).
    let got = pins(&project);
    let nodes = &lock["nodes"];
    for (name, node) in ["gitin", "tarin", "pathin", "widgets", "registry", "lab", "hut"]
        .map(|n| (n, n))
        .into_iter()
        .chain([("also-git", "gitin")])
    {
        let locked = &nodes[node]["locked"];
        let (rev, nar_hash) = got.get(name).unwrap_or_else(|| panic!("no pin for {name}: {got:?}"));
        assert_eq!(rev.as_deref(), locked["rev"].as_str(), "{name}");
        assert_eq!(*nar_hash, nar(locked["narHash"].as_str().unwrap()), "{name}");
    }
    let (rev, sub) = &got["widgets-sub"];
    assert_eq!(rev.as_deref(), Some(main.as_str()));
    assert_eq!(sub.to_string(), world.nar("acme/widgets", main, Some("sub")));
    assert_eq!(got.len(), 9, "{got:?}");

    // The manifest follows what the flake follows.
    let manifest = fs::read_to_string(project.join("islands.toml")).unwrap();
    for line in [
        format!("gitin = '<git:{url}/acme/widgets.git:{{ ref = \"main\" }}>'"),
        "widgets = '<github:acme/widgets:{ ref = \"v1\" }>'".to_string(),
        "widgets-sub = '<github:acme/widgets::/sub>'".to_string(),
        format!("registry = '<github:acme/widgets:{{ rev = \"{main}\" }}>'"),
        "lab = '<gitlab:group/sub/lab>'".to_string(),
        "hut = '<sourcehut:~me/hut:{ ref = \"main\" }>'".to_string(),
        format!("tarin = '<tarball:{url}/files/t.tar.gz>'"),
        format!("pathin = '<fs::{}>'", world.local.display()),
    ] {
        assert!(manifest.lines().any(|l| l == line), "no line {line:?} in\n{manifest}");
    }
    // Imported pins are current: an update moves nothing that is pinned to a tag or commit.
    let out = run_long(
        world
            .cab(&project)
            .args(["update", "widgets", "registry", "widgets-sub"]),
    );
    assert!(out.status.success(), "{}", report("cab update", &out));
    assert!(
        text(&out.stderr).contains("up to date"),
        "{}",
        report("cab update", &out)
    );
}

/// A pin that does not give its tree stops the whole import, and nothing is written.
#[test]
fn an_import_that_does_not_give_the_pinned_tree_writes_nothing() {
    let world = World::new("interop-mismatch");
    let lock = json!({
        "nodes": {
            "good": node(
                json!({ "narHash": world.nar("acme/widgets", &world.main, None), "owner": "acme", "repo": "widgets", "rev": world.main, "type": "github" }),
                json!({ "owner": "acme", "repo": "widgets", "type": "github" }),
            ),
            "bad": node(
                json!({ "narHash": "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "owner": "acme", "repo": "widgets", "rev": world.v1, "type": "github" }),
                json!({ "owner": "acme", "repo": "widgets", "type": "github" }),
            ),
            "root": { "inputs": { "good": "good", "bad": "bad" } }
        },
        "root": "root",
        "version": 7
    });
    let project = world.project("project");
    let manifest = "# my islands\nmine = '<fs::/usr/include>'\n";
    fs::write(project.join("islands.toml"), manifest).unwrap();
    let file = world.dir.join("flake.lock");
    fs::write(&file, lock.to_string()).unwrap();
    let out = run_long(world.cab(&project).arg("import").arg(&file));
    assert_eq!(out.status.code(), Some(1), "{}", report("cab import", &out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("nothing was written"), "{stderr}");
    assert!(
        stderr.contains("bad:") && stderr.contains("wanted: narHash = \"sha256-47DEQ"),
        "{stderr}"
    );
    assert_eq!(fs::read_to_string(project.join("islands.toml")).unwrap(), manifest);
    assert!(!project.join("islands.lock").exists());
}

#[test]
fn npins_and_niv_sources_import_losslessly() {
    let world = World::new("interop-sources");
    let url = world.url();
    let (main, v1, lab) = (&world.main, &world.v1, &world.lab);
    let base32 = |sri: String| nar(&sri).display(cab::hash::NarHashStyle::Base32);
    let widgets_main = world.nar("acme/widgets", main, None);
    let widgets_v1 = world.nar("acme/widgets", v1, None);
    let tarball = nix_hash(&world.dir.join("tarball"), None);
    // npins 0.2 (format version 3): hashes in Nix's base-32.
    let npins = json!({
        "pins": {
            "widgets": {
                "type": "Git",
                "repository": { "type": "GitHub", "owner": "acme", "repo": "widgets" },
                "branch": "main",
                "revision": main,
                "url": format!("https://github.com/acme/widgets/archive/{main}.tar.gz"),
                "hash": base32(widgets_main.clone())
            },
            "release": {
                "type": "GitRelease",
                "repository": { "type": "GitHub", "owner": "acme", "repo": "widgets" },
                "pre_releases": false,
                "version_upper_bound": null,
                "release_prefix": null,
                "version": "v1",
                "revision": v1,
                "url": format!("https://api.github.com/repos/acme/widgets/tarball/v1"),
                "hash": base32(widgets_v1.clone())
            },
            "plain": {
                "type": "Git",
                "repository": { "type": "Git", "url": format!("{url}/acme/widgets.git") },
                "branch": "main",
                "revision": main,
                "url": null,
                "hash": base32(widgets_main.clone())
            },
            "lab": {
                "type": "Git",
                "repository": { "type": "GitLab", "repo_path": "group/sub/lab", "server": "https://gitlab.com/", "private_token": null },
                "branch": "main",
                "revision": lab,
                "url": format!("https://gitlab.com/api/v4/projects/group%2Fsub%2Flab/repository/archive.tar.gz?sha={lab}"),
                "hash": base32(world.nar("group/sub/lab", lab, None))
            },
            "channel": {
                "type": "Channel",
                "name": "local-channel",
                "url": format!("{url}/files/t.tar.gz"),
                "hash": base32(tarball.clone())
            },
            "image": { "type": "Container", "image_name": "x", "image_tag": "y" }
        },
        "version": 3
    });
    let project = world.project("npins");
    let file = world.dir.join("npins-sources.json");
    fs::write(&file, serde_json::to_string_pretty(&npins).unwrap()).unwrap();
    let out = run_long(world.cab(&project).arg("import").arg(&file));
    assert!(out.status.success(), "{}", report("cab import npins", &out));
    assert!(
        text(&out.stderr).contains("not imported: image: its type `Container`"),
        "{}",
        report("import", &out)
    );
    let got = pins(&project);
    let want = [
        ("widgets", Some(main), &widgets_main),
        ("release", Some(v1), &widgets_v1),
        ("plain", Some(main), &widgets_main),
        ("channel", None, &tarball),
    ];
    for (name, rev, nar_hash) in want {
        assert_eq!(got[name], (rev.cloned(), nar(nar_hash)), "{name}");
    }
    assert_eq!(got["lab"].0.as_deref(), Some(lab.as_str()));
    let manifest = fs::read_to_string(project.join("islands.toml")).unwrap();
    assert!(
        manifest.contains("release = '<github:acme/widgets:{ ref = \"v1\" }>'"),
        "{manifest}"
    );
    assert!(
        manifest.contains("lab = '<gitlab:group/sub/lab:{ ref = \"main\" }>'"),
        "{manifest}"
    );

    // niv: GitHub sources as tarballs of niv's URL template, plain tarballs, git, files.
    let niv = json!({
        "widgets": {
            "branch": "main",
            "description": "widgets",
            "homepage": "",
            "owner": "acme",
            "repo": "widgets",
            "rev": main,
            "sha256": base32(widgets_main.clone()),
            "type": "tarball",
            "url": format!("https://github.com/acme/widgets/archive/{main}.tar.gz"),
            "url_template": "https://github.com/<owner>/<repo>/archive/<rev>.tar.gz"
        },
        "tarball": {
            "sha256": base32(tarball.clone()),
            "type": "tarball",
            "url": format!("{url}/files/t.tar.gz"),
            "url_template": format!("{url}/files/t.tar.gz")
        },
        "plain": {
            "branch": "main",
            "repo": format!("{url}/acme/widgets.git"),
            "rev": v1,
            "type": "git"
        },
        "script": {
            "sha256": base32(tarball.clone()),
            "type": "file",
            "url": format!("{url}/files/t.tar.gz")
        }
    });
    let project = world.project("niv");
    let file = world.dir.join("niv-sources.json");
    fs::write(&file, serde_json::to_string_pretty(&niv).unwrap()).unwrap();
    let out = run_long(world.cab(&project).arg("import").arg(&file));
    assert!(out.status.success(), "{}", report("cab import niv", &out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not imported: script: it is a single file"), "{stderr}");
    assert!(
        stderr.contains("note: plain: niv keeps no hash of git sources"),
        "{stderr}"
    );
    let got = pins(&project);
    assert_eq!(got["widgets"], (Some(main.clone()), nar(&widgets_main)));
    assert_eq!(got["tarball"], (None, nar(&tarball)));
    assert_eq!(
        got["plain"],
        (Some(v1.clone()), nar(&world.nar("acme/widgets", v1, None)))
    );
    let manifest = fs::read_to_string(project.join("islands.toml")).unwrap();
    assert!(
        manifest.contains("widgets = '<github:acme/widgets:{ ref = \"main\" }>'"),
        "{manifest}"
    );
}

/// The exported file, evaluated and built by the real Nix, fetches from the URLs cab fetched
/// from and yields the narHashes the lock pins.
#[test]
fn export_nix_gives_nix_the_same_trees() {
    let world = World::new("interop-export");
    let url = world.url();
    let project = world.project("project");
    fs::write(
        project.join("islands.toml"),
        format!(
            "widgets = '<github:acme/widgets>'\n\
             tagged = '<github:acme/widgets:{{ ref = \"v1\" }}>'\n\
             sub = '<github:acme/widgets::/sub>'\n\
             lab = '<gitlab:group/sub/lab>'\n\
             hut = '<sourcehut:~me/hut>'\n\
             plain = '<git:{url}/acme/widgets.git:{{ ref = \"v1\" }}>'\n\
             tarball = '<tarball:{url}/files/t.tar.gz>'\n\
             tarball-sub = '<tarball:{url}/files/t.tar.gz::/sub>'\n\
             local = '<fs::{}>'\n",
            world.local.display()
        ),
    )
    .unwrap();
    let out = run_long(world.cab(&project).arg("export").arg("nix"));
    assert_eq!(out.status.code(), Some(1), "{}", report("export before pinning", &out));
    assert!(
        text(&out.stderr).contains("run `cab update` first"),
        "{}",
        report("export", &out)
    );
    let out = run_long(world.cab(&project).arg("update"));
    assert!(out.status.success(), "{}", report("cab update", &out));
    let nix_file = project.join("islands.nix");
    let out = run_long(world.cab(&project).args(["export", "nix", "-o"]).arg(&nix_file));
    assert!(out.status.success(), "{}", report("cab export nix", &out));
    let exported = fs::read_to_string(&nix_file).unwrap();
    assert!(
        exported.contains(&format!("url = \"{url}/acme/widgets/archive/{}.tar.gz\";", world.main)),
        "the export names the URL cab fetched from:\n{exported}"
    );

    let out = run_long(
        Command::new("nix-instantiate")
            // Read-write: `--eval` alone only computes `builtins.path`'s store path.
            .args(["--eval", "--strict", "--json", "--read-write-mode", "-E"])
            .arg(format!(
                "builtins.mapAttrs (name: tree: \"${{tree}}\") (import {})",
                nix_file.display()
            )),
    );
    assert!(out.status.success(), "{}", report("nix-instantiate --eval", &out));
    let paths: BTreeMap<String, String> = serde_json::from_slice(&out.stdout).unwrap();
    let pinned = pins(&project);
    assert_eq!(paths.len(), pinned.len(), "{paths:?}");
    for (name, path) in &paths {
        assert_eq!(
            nar(&nix_hash(Path::new(path), None)),
            pinned[name].1,
            "{name}: Nix's tree {path} is not the pinned one"
        );
    }

    // nix-build of a derivation that uses every island: the same store paths.
    let out = run_long(
        Command::new("nix-build")
            .args(["--no-out-link", "-E"])
            .arg(format!(
                "let islands = import {}; in derivation {{ name = \"uses-islands\"; system = builtins.currentSystem; \
                 builder = \"/bin/sh\"; args = [ \"-c\" \"echo ${{toString (builtins.attrValues islands)}} > $out\" ]; }}",
                nix_file.display()
            )),
    );
    assert!(out.status.success(), "{}", report("nix-build", &out));
    let built = fs::read_to_string(text(&out.stdout).trim()).unwrap();
    let mut used: Vec<&str> = built.split_whitespace().collect();
    let mut wanted: Vec<&str> = paths.values().map(String::as_str).collect();
    used.sort();
    wanted.sort();
    assert_eq!(used, wanted);
}
