//! `toDerivation`: from an island to the recipe that produces its tree.
//!
//! A derivation names the fetcher (the WASM module, by hash), its arguments, the realizer
//! features it needs and what is already known of the result (expected `rev`, `hash`,
//! `narHash`). Its identity is the BLAKE3 of its canonical JSON encoding (keys sorted, no
//! whitespace), so two islands that would fetch the same thing the same way share one id.
//! Pure data: no I/O here.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::hash::{NarHash, TreeHash};
use crate::island::{Format, Island};

/// The base URLs of the forges whose islands name no `host`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forges {
    /// GitHub's (`github-url`, default `https://github.com`).
    pub github: String,
    /// GitLab's (`gitlab-url`, default `https://gitlab.com`).
    pub gitlab: String,
    /// SourceHut's git service (`sourcehut-url`, default `https://git.sr.ht`).
    pub sourcehut: String,
}

impl Default for Forges {
    fn default() -> Self {
        Forges {
            github: "https://github.com".into(),
            gitlab: "https://gitlab.com".into(),
            sourcehut: "https://git.sr.ht".into(),
        }
    }
}

impl Forges {
    /// The default instances, with GitHub at `github` (tests and the sandbox use this).
    pub fn with_github(github: &str) -> Forges {
        Forges {
            github: github.into(),
            ..Forges::default()
        }
    }

    /// The base URL of `format`'s default instance, without a trailing slash.
    pub fn base(&self, format: Format) -> Option<&str> {
        let base = match format {
            Format::Github => &self.github,
            Format::Gitlab => &self.gitlab,
            Format::Sourcehut => &self.sourcehut,
            _ => return None,
        };
        Some(base.trim_end_matches('/'))
    }

    /// The setting that names `format`'s default instance, for messages.
    fn setting(format: Format) -> &'static str {
        match format {
            Format::Gitlab => "gitlab-url (CAB_GITLAB_URL)",
            Format::Sourcehut => "sourcehut-url (CAB_SOURCEHUT_URL)",
            _ => "github-url (CAB_GITHUB_URL)",
        }
    }
}

/// Where a forge island's commits come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForgeUrls {
    /// The repository's smart-HTTP URL.
    pub git: String,
    /// The archive of a commit, with `{rev}` where the commit id goes.
    pub archive: String,
    /// The host both are on.
    pub host: String,
}

impl ForgeUrls {
    /// The archive URL of commit `rev`.
    pub fn archive_of(&self, rev: &str) -> String {
        self.archive.replace("{rev}", rev)
    }
}

/// The URLs of a `github`, `gitlab` or `sourcehut` island: on its `host` (over https) if it
/// names one, else on the forge's default instance. `None` for other formats.
pub fn forge_urls(island: &Island, forges: &Forges) -> Result<Option<ForgeUrls>> {
    let Some(default) = forges.base(island.format) else {
        return Ok(None);
    };
    let base = match &island.config.host {
        Some(host) => format!("https://{host}"),
        None => default.to_owned(),
    };
    let Some(host) = url_host(&base) else {
        bail!(
            "{} `{base}` is not an http(s) URL with a host",
            Forges::setting(island.format)
        );
    };
    let path = &island.location;
    let (git, archive) = match island.format {
        Format::Github => (
            format!("{base}/{path}.git"),
            format!("{base}/{path}/archive/{{rev}}.tar.gz"),
        ),
        Format::Gitlab => {
            let name = path.rsplit('/').next().unwrap_or(path);
            (
                format!("{base}/{path}.git"),
                format!("{base}/{path}/-/archive/{{rev}}/{name}-{{rev}}.tar.gz"),
            )
        }
        _ => (
            format!("{base}/{path}"),
            format!("{base}/{path}/archive/{{rev}}.tar.gz"),
        ),
    };
    Ok(Some(ForgeUrls {
        git,
        archive,
        host: host.to_owned(),
    }))
}

/// Where things come from: settings that change what a derivation fetches, not how.
#[derive(Clone, Debug)]
pub struct Environment {
    /// The forges' default instances.
    pub forges: Forges,
    /// The BLAKE3 of the fetcher module's bytes.
    pub fetcher: TreeHash,
}

/// How a tree was made: part of every index key, since the same commit could give different
/// trees by different routes (before git islands applied `export-ignore` and `export-subst` as
/// GitHub's archives do, a git pack gave the plain checkout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// A GitHub `archive/<rev>.tar.gz`.
    GithubArchive,
    /// A GitLab `-/archive/<rev>/<project>-<rev>.tar.gz`.
    GitlabArchive,
    /// A SourceHut `archive/<rev>.tar.gz`.
    SourcehutArchive,
    /// A plain `.tar.gz` URL.
    Tarball,
    /// A shallow fetch over git's smart HTTP pack protocol, exported as `git archive` exports
    /// it (gitattributes applied).
    GitPack,
    /// A local tree, ingested.
    Fs,
}

impl Method {
    /// Whether trees made this way come from a commit (which every lock entry must name).
    pub fn has_rev(self) -> bool {
        matches!(
            self,
            Method::GithubArchive | Method::GitlabArchive | Method::SourcehutArchive | Method::GitPack
        )
    }

    /// Every method.
    const ALL: [Method; 6] = [
        Method::GithubArchive,
        Method::GitlabArchive,
        Method::SourcehutArchive,
        Method::Tarball,
        Method::GitPack,
        Method::Fs,
    ];

    /// The method named `name` (as [`Method::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// The name used in index keys and in the derivation's encoding.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::GithubArchive => "github-archive",
            Method::GitlabArchive => "gitlab-archive",
            Method::SourcehutArchive => "sourcehut-archive",
            Method::Tarball => "tarball",
            // Neither "git-pack" (the plain checkouts that came first) nor "git-export" (trees
            // with `export-ignore` and `export-subst` but not `ident` and line endings): a
            // store's entries under those names hold other trees for the same commit.
            Method::GitPack => "git-archive",
            Method::Fs => "fs",
        }
    }
}

/// What runs a derivation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Builder {
    /// The WASM fetcher with this module hash, given `args` as its argv after its name.
    Wasm {
        /// BLAKE3 of the module's bytes.
        module: TreeHash,
    },
    /// No program: the realizer ingests this local path itself.
    Local {
        /// The absolute path of the tree.
        path: std::path::PathBuf,
    },
}

/// A recipe for a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derivation {
    /// What runs it.
    pub builder: Builder,
    /// How the tree is made (index keys carry this).
    pub method: Method,
    /// The fetcher's arguments: the format, then `key=value` pairs.
    pub args: Vec<String>,
    /// Hosts the fetcher may talk to.
    pub hosts: Vec<String>,
    /// Realizer features required (`wasm`, a system such as `x86_64-linux`).
    pub features: Vec<String>,
    /// The part of the fetched tree that is the island's tree, applied after fetching.
    pub subpath: Vec<String>,
    /// The commit the result must come from, if pinned.
    pub rev: Option<String>,
    /// The tree hash the result must have, if pinned (of the subpath, if there is one).
    pub hash: Option<TreeHash>,
    /// The NAR hash the result must have, if pinned.
    pub nar_hash: Option<NarHash>,
}

/// The host part of an `http(s)://host[:port]/…` URL.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// Builds the derivation for an island.
pub fn to_derivation(island: &Island, env: &Environment) -> Result<Derivation> {
    let subpath = island.subpath.as_ref().map(|s| s.names().to_vec()).unwrap_or_default();
    let config = &island.config;
    let wasm = |args: Vec<String>, hosts: Vec<String>, method| Derivation {
        builder: Builder::Wasm { module: env.fetcher },
        method,
        args,
        hosts,
        features: std::iter::once("wasm".to_owned())
            .chain(config.requires.iter().cloned())
            .collect(),
        subpath: subpath.clone(),
        rev: config.rev.clone(),
        hash: config.hash,
        nar_hash: config.nar_hash,
    };
    Ok(match island.format {
        Format::Github | Format::Gitlab | Format::Sourcehut => {
            let urls = forge_urls(island, &env.forges)?.expect("a forge format");
            let mut hosts = vec![urls.host.clone()];
            // github.com answers archive requests with a redirect to codeload.github.com.
            if island.format == Format::Github && urls.host == "github.com" {
                hosts.push("codeload.github.com".into());
            }
            let mut args = vec![
                "forge".into(),
                format!("git={}", urls.git),
                format!("archive={}", urls.archive),
            ];
            if let Some(r) = &config.r#ref {
                args.push(format!("ref={r}"));
            }
            if let Some(rev) = &config.rev {
                args.push(format!("rev={rev}"));
            }
            let method = match island.format {
                Format::Github => Method::GithubArchive,
                Format::Gitlab => Method::GitlabArchive,
                _ => Method::SourcehutArchive,
            };
            wasm(args, hosts, method)
        }
        Format::Tarball => {
            let host = url_host(&island.location).unwrap_or_default().to_owned();
            wasm(
                vec!["tarball".into(), format!("url={}", island.location)],
                vec![host],
                Method::Tarball,
            )
        }
        Format::Git => {
            let host = url_host(&island.location).unwrap_or_default().to_owned();
            let mut args = vec!["git".into(), format!("url={}", island.location)];
            if let Some(r) = &config.r#ref {
                args.push(format!("ref={r}"));
            }
            if let Some(rev) = &config.rev {
                args.push(format!("rev={rev}"));
            }
            wasm(args, vec![host], Method::GitPack)
        }
        Format::Fs => {
            let path = island.fs_path().unwrap_or_default();
            Derivation {
                builder: Builder::Local { path },
                method: Method::Fs,
                args: Vec::new(),
                hosts: Vec::new(),
                features: Vec::new(),
                // The fs island's path is its subpath of `/`; the builder already points at it.
                subpath: Vec::new(),
                rev: None,
                hash: config.hash,
                nar_hash: config.nar_hash,
            }
        }
    })
}

/// The derivation that asks which refs `island`'s repository has — what HEAD points to, or the
/// branch and tag names under `prefix` — instead of fetching a tree (the fetcher's `refs`
/// format). For the forges and `git`; the island's ref, rev and hashes play no part. Its
/// answer is a question to the forge, like a branch's commit: never indexed or stored.
pub fn to_refs_derivation(island: &Island, prefix: Option<&str>, env: &Environment) -> Result<Derivation> {
    let bare = Island {
        config: crate::island::Config {
            host: island.config.host.clone(),
            requires: island.config.requires.clone(),
            ..Default::default()
        },
        subpath: None,
        ..island.clone()
    };
    let mut drv = to_derivation(&bare, env)?;
    let git = match bare.format {
        Format::Github | Format::Gitlab | Format::Sourcehut => {
            forge_urls(&bare, &env.forges)?.map(|urls| urls.git).unwrap_or_default()
        }
        Format::Git => bare.location.clone(),
        _ => bail!("{island}: only git repositories have refs"),
    };
    // A forge's archives come from other hosts; the refs come from the git URL's alone.
    drv.hosts.truncate(1);
    drv.args = vec!["refs".into(), format!("git={git}")];
    drv.args.extend(prefix.map(|p| format!("prefix={p}")));
    Ok(drv)
}

impl Derivation {
    /// Whether the result is fixed in advance (a `rev` or a `hash`): only then may the
    /// realizer remember derivation → tree. One that names only a branch must ask again.
    pub fn is_pinned(&self) -> bool {
        self.rev.is_some() || self.hash.is_some()
    }

    /// Whether the fetcher must be asked for the commit before the tree can be answered: the
    /// method makes trees from commits and none is pinned (pinned by hash alone, a stored tree
    /// would leave the lock without its commit).
    pub fn needs_commit(&self) -> bool {
        self.method.has_rev() && self.rev.is_none()
    }

    /// The tree this derivation gives, where it is known before anything runs: its pinned
    /// hash, unless the commit must be asked for first.
    pub fn known_tree(&self) -> Option<TreeHash> {
        self.hash.filter(|_| !self.needs_commit())
    }

    /// The canonical JSON value (without the id).
    fn encode(&self) -> Value {
        let builder = match &self.builder {
            Builder::Wasm { module } => json!({ "wasm": module.to_string() }),
            Builder::Local { path } => json!({ "local": path.to_string_lossy() }),
        };
        let mut expected = BTreeMap::new();
        if let Some(rev) = &self.rev {
            expected.insert("rev", rev.clone());
        }
        if let Some(hash) = &self.hash {
            expected.insert("hash", hash.to_string());
        }
        if let Some(nar) = &self.nar_hash {
            expected.insert("narHash", nar.to_string());
        }
        json!({
            "builder": builder,
            "method": self.method.as_str(),
            "args": self.args,
            "hosts": self.hosts,
            "features": self.features,
            "subpath": self.subpath,
            "expected": expected,
        })
    }

    /// The derivation a canonical encoding (as [`Derivation::to_json`] writes it, with or
    /// without its id) describes: what travels to a realizer elsewhere. Refused unless it is
    /// exactly canonical, so that it has the same identity on both sides.
    pub fn from_json(value: &Value) -> Result<Derivation> {
        let field = |name: &str| value.get(name).ok_or_else(|| anyhow::anyhow!("no `{name}`"));
        let strings = |name: &str| -> Result<Vec<String>> {
            field(name)?
                .as_array()
                .ok_or_else(|| anyhow::anyhow!("`{name}` is not a list"))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| anyhow::anyhow!("`{name}` holds a non-string"))
                })
                .collect()
        };
        let builder = field("builder")?;
        let builder = match (builder.get("wasm"), builder.get("local")) {
            (Some(module), None) => Builder::Wasm {
                module: module
                    .as_str()
                    .and_then(|m| m.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("a bad module hash in `builder`"))?,
            },
            (None, Some(path)) => Builder::Local {
                path: path
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("a bad path in `builder`"))?
                    .into(),
            },
            _ => bail!("`builder` names neither a wasm module nor a local path"),
        };
        let method = field("method")?.as_str().and_then(Method::parse);
        let method = method.ok_or_else(|| anyhow::anyhow!("an unknown `method`"))?;
        let expected = field("expected")?;
        let text = |name: &str| expected.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let drv = Derivation {
            builder,
            method,
            args: strings("args")?,
            hosts: strings("hosts")?,
            features: strings("features")?,
            subpath: strings("subpath")?,
            rev: text("rev"),
            hash: text("hash")
                .map(|h| h.parse())
                .transpose()
                .map_err(|_| anyhow::anyhow!("a bad expected `hash`"))?,
            nar_hash: text("narHash")
                .map(|h| h.parse())
                .transpose()
                .map_err(|_| anyhow::anyhow!("a bad expected `narHash`"))?,
        };
        let mut canonical = drv.encode();
        if let Some(id) = value.get("id") {
            canonical["id"] = json!(drv.id().to_string());
            if *id != canonical["id"] {
                bail!("its `id` is not the BLAKE3 of its encoding");
            }
        }
        if canonical != *value {
            bail!("it is not in canonical form (unknown or missing fields)");
        }
        Ok(drv)
    }

    /// The derivation's identity: BLAKE3 of its canonical encoding.
    pub fn id(&self) -> TreeHash {
        // serde_json's map is ordered by key, and `to_string` adds no whitespace: canonical.
        TreeHash(*blake3::hash(self.encode().to_string().as_bytes()).as_bytes())
    }

    /// The JSON that `cab derivation` prints: the encoding plus its id.
    pub fn to_json(&self) -> Value {
        let mut value = self.encode();
        value["id"] = json!(self.id().to_string());
        value
    }
}

impl fmt::Display for Derivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "derivation {}", self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Environment {
        Environment {
            forges: Forges::default(),
            fetcher: TreeHash([7; 32]),
        }
    }

    #[test]
    fn derivations_travel_as_their_canonical_json() {
        for literal in [
            "<github:cull-os/cab:{ ref = \"main\" }>",
            "<git:https://h/x.git:{ rev = \"0123456789abcdef0123456789abcdef01234567\" }:/a/b>",
            "<tarball:https://h/x.tar.gz>",
            "<fs::/usr/include>",
        ] {
            let drv = to_derivation(&literal.parse().unwrap(), &env()).unwrap();
            assert_eq!(Derivation::from_json(&drv.to_json()).unwrap(), drv, "{literal}");
            assert_eq!(Derivation::from_json(&drv.encode()).unwrap(), drv, "{literal}");
        }
        let drv = to_derivation(&"<tarball:https://h/x.tar.gz>".parse().unwrap(), &env()).unwrap();
        let mut extra = drv.to_json();
        extra["surprise"] = json!(1);
        assert!(Derivation::from_json(&extra).is_err());
        let mut wrong = drv.to_json();
        wrong["args"] = json!(["tarball", "url=https://elsewhere/y.tar.gz"]);
        assert!(Derivation::from_json(&wrong).unwrap_err().to_string().contains("id"));
        assert!(Derivation::from_json(&json!("garbage")).is_err());
        assert!(Derivation::from_json(&json!({"builder": {"wasm": 7}})).is_err());
    }

    #[test]
    fn github_derivation_names_its_hosts_and_args() {
        let island: Island = "<github:cull-os/cab:{ ref = \"main\" }>".parse().unwrap();
        let drv = to_derivation(&island, &env()).unwrap();
        assert_eq!(drv.hosts, ["github.com", "codeload.github.com"]);
        assert_eq!(
            drv.args,
            [
                "forge",
                "git=https://github.com/cull-os/cab.git",
                "archive=https://github.com/cull-os/cab/archive/{rev}.tar.gz",
                "ref=main"
            ]
        );
        assert!(!drv.is_pinned());
        assert_eq!(drv.features, ["wasm"]);
    }

    #[test]
    fn identity_is_stable_and_sensitive() {
        let a: Island = "<github:o/r>".parse().unwrap();
        let b: Island = "<github:o/r:{ ref = \"dev\" }>".parse().unwrap();
        let (da, db) = (to_derivation(&a, &env()).unwrap(), to_derivation(&b, &env()).unwrap());
        assert_eq!(da.id(), to_derivation(&a, &env()).unwrap().id());
        assert_ne!(da.id(), db.id());
        let other = Environment {
            forges: Forges::with_github("http://127.0.0.1:9/"),
            ..env()
        };
        let dc = to_derivation(&a, &other).unwrap();
        assert_ne!(da.id(), dc.id());
        assert_eq!(dc.hosts, ["127.0.0.1"]);
        assert_eq!(da.to_json()["id"], json!(da.id().to_string()));
    }

    #[test]
    fn gitlab_and_sourcehut_urls() {
        let drv = |text: &str| to_derivation(&text.parse().unwrap(), &env()).unwrap();
        let g = drv("<gitlab:group/sub/proj:{ ref = \"main\" }>");
        assert_eq!(
            g.args,
            [
                "forge",
                "git=https://gitlab.com/group/sub/proj.git",
                "archive=https://gitlab.com/group/sub/proj/-/archive/{rev}/proj-{rev}.tar.gz",
                "ref=main"
            ]
        );
        assert_eq!(
            (g.hosts.as_slice(), g.method),
            (&["gitlab.com".to_owned()][..], Method::GitlabArchive)
        );
        let g = drv("<gitlab:g/p:{ host = \"gitlab.example.org:8443\" }>");
        assert_eq!(g.args[1], "git=https://gitlab.example.org:8443/g/p.git");
        assert_eq!(g.hosts, ["gitlab.example.org"]);
        let s = drv("<sourcehut:~me/thing>");
        assert_eq!(
            s.args,
            [
                "forge",
                "git=https://git.sr.ht/~me/thing",
                "archive=https://git.sr.ht/~me/thing/archive/{rev}.tar.gz"
            ]
        );
        assert_eq!(s.method.as_str(), "sourcehut-archive");
        let h = drv("<github:o/r:{ host = \"github.example.com\" }>");
        assert_eq!(h.hosts, ["github.example.com"]);
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("http://127.0.0.1:8080/x.tar.gz"), Some("127.0.0.1"));
        assert_eq!(url_host("https://user@example.org/x"), Some("example.org"));
        assert_eq!(url_host("https://[fe80::1]:443/x"), Some("fe80::1"));
        assert_eq!(url_host("ftp://x/y"), None);
    }
}
