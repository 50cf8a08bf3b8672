//! Settings, and where each one comes from: a command-line flag, else an environment variable,
//! else the configuration file, else the default.
//!
//! The file is TOML at `$XDG_CONFIG_HOME/cab/config.toml` (else `~/.config/cab/config.toml`);
//! `--config FILE` or `CAB_CONFIG` names another. Every key is also the environment variable
//! `CAB_` + the key in upper case with `_` for `-` (`max-time` is `CAB_MAX_TIME`), and most are
//! flags too. Keys are declared once, in [`settings!`]'s invocation below: the file's schema,
//! the environment's names and the merge all come from that list, so a new setting is one line
//! there (plus its flag, if it has one, and its line in README.md's table).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::derivation::{Forges, url_host};
use crate::realizer::delegate::Realizers;
use crate::realizer::{Credentials, Limits, Secret};

/// A size in bytes: `268435456` or `"256M"` in the file, `256M` in the environment and on the
/// command line (K, M, G, T: powers of 1024).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Bytes(u64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Bytes(n) => Ok(Size(n)),
            Either::Text(text) => parse_size(&text).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `123`, `64K`, `256M`, `8G` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 512M or 8G"))?;
    let shift = match unit.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// How a setting's value is read from an environment variable.
pub trait FromEnv: Sized {
    /// Parses the variable's text.
    fn from_env(text: &str) -> Result<Self, String>;
}

impl FromEnv for String {
    fn from_env(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
}

impl FromEnv for PathBuf {
    fn from_env(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
}

impl FromEnv for bool {
    fn from_env(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(format!("`{text}` is not a yes or no: use 1 or 0 (or true/false)")),
        }
    }
}

impl FromEnv for Size {
    fn from_env(text: &str) -> Result<Self, String> {
        parse_size(text).map(Size)
    }
}

macro_rules! from_env_by_parse {
    ($($ty:ty),*) => {$(
        impl FromEnv for $ty {
            fn from_env(text: &str) -> Result<Self, String> {
                text.trim().parse().map_err(|_| format!("`{text}` is not a whole number in range"))
            }
        }
    )*};
}
from_env_by_parse!(u16, u64, usize);

impl FromEnv for Vec<String> {
    /// Words separated by commas or whitespace.
    fn from_env(text: &str) -> Result<Self, String> {
        Ok(text
            .split([',', ' ', '\n', '\t'])
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

impl FromEnv for BTreeMap<String, String> {
    /// `host=token` pairs, separated by commas or whitespace.
    fn from_env(text: &str) -> Result<Self, String> {
        text.split([',', ' ', '\n', '\t'])
            .filter(|p| !p.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((host, token)) if !host.is_empty() && !token.is_empty() => Ok((host.to_owned(), token.to_owned())),
                _ => Err("expected host=token pairs separated by commas".to_owned()),
            })
            .collect()
    }
}

/// The environment variable of a key: `max-time` → `CAB_MAX_TIME`.
pub fn env_name(key: &str) -> String {
    format!("CAB_{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// Declares the settings: each is a field of [`Layer`], named in the file by its key, and
/// read from the environment variable [`env_name`] gives.
macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $field:ident: $ty:ty = $key:literal; )*) => {
        /// Settings as one source gives them (the file, the environment or the command line);
        /// what the source leaves out is `None`.
        #[derive(Clone, Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Layer {
            $( $(#[doc = $doc])* #[serde(rename = $key, default)] pub $field: Option<$ty>, )*
        }

        impl Layer {
            /// Every key, as the file spells it.
            pub const KEYS: &'static [&'static str] = &[$($key),*];

            /// The settings the environment gives (`var` looks a variable up; empty counts as
            /// unset).
            pub fn from_env(var: &dyn Fn(&str) -> Option<String>) -> Result<Layer> {
                let mut config = Layer::default();
                $(
                    let name = env_name($key);
                    if let Some(text) = var(&name).filter(|t| !t.is_empty()) {
                        let value = <$ty as FromEnv>::from_env(&text).map_err(|e| anyhow!("{name}: {e}"))?;
                        config.$field = Some(value);
                    }
                )*
                Ok(config)
            }

            /// Each setting from `self` where it has one, else from `lower`.
            pub fn or(self, lower: Layer) -> Layer {
                Layer { $( $field: self.$field.or(lower.$field), )* }
            }
        }
    };
}

settings! {
    /// The store directory.
    store: PathBuf = "store";
    /// Memory the fetcher may use.
    max_memory: Size = "max-memory";
    /// Seconds one fetch may take.
    max_time: u64 = "max-time";
    /// Bytes one fetch may download.
    max_download: Size = "max-download";
    /// Bytes one fetch may unpack.
    max_unpacked: Size = "max-unpacked";
    /// Entries one fetch may make.
    max_entries: usize = "max-entries";
    /// Seconds a server may send nothing.
    stall_timeout: u64 = "stall-timeout";
    /// GitHub's base URL.
    github_url: String = "github-url";
    /// GitLab's base URL (the instance of islands without `host`).
    gitlab_url: String = "gitlab-url";
    /// SourceHut's git base URL (the instance of islands without `host`).
    sourcehut_url: String = "sourcehut-url";
    /// A token for the GitHub host.
    github_token: String = "github-token";
    /// A token for the GitLab host.
    gitlab_token: String = "gitlab-token";
    /// A token for the SourceHut host.
    sourcehut_token: String = "sourcehut-token";
    /// Tokens for any host, by host name.
    tokens: BTreeMap<String, String> = "tokens";
    /// The netrc file (logins by host).
    netrc: PathBuf = "netrc";
    /// FUSE worker threads.
    threads: usize = "threads";
    /// FUSE passthrough.
    passthrough: bool = "passthrough";
    /// Read-ahead by directory.
    read_ahead: bool = "read-ahead";
    /// Let other users see the mount.
    allow_other: bool = "allow-other";
    /// The FUSE request timeout to declare, in seconds.
    request_timeout: u16 = "request-timeout";
    /// Complete trees served from the remote store in the background.
    prefetch: bool = "prefetch";
    /// Have the kernel serve whole trees from images.
    kernel_serve: bool = "kernel-serve";
    /// FUSE requests over io_uring where the kernel offers it.
    io_uring: bool = "io-uring";
    /// The most bytes the image cache may hold.
    image_cache_size: Size = "image-cache-size";
    /// A remote store to read from (and push to).
    remote: String = "remote";
    /// Push what is realized to the remote store.
    push: bool = "push";
    /// The key that signs what is pushed, as Nix signs store paths.
    nix_secret_key: PathBuf = "nix-secret-key";
    /// Where derivations are realized: `local` and `ssh://` realizers, tried in order.
    realizers: Vec<String> = "realizers";
    /// Features this machine offers as a realizer, besides `wasm`, `network` and its system.
    features: Vec<String> = "features";
    /// Collect garbage when the store holds more than this.
    gc_auto_size: Size = "gc-auto-size";
}

/// Every setting in force, each from the most specific source that gives it.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The merged settings.
    pub values: Layer,
    /// The configuration file read, if any.
    pub file: Option<PathBuf>,
}

/// The configuration file cab reads when none is named: `$XDG_CONFIG_HOME/cab/config.toml`,
/// else `~/.config/cab/config.toml`.
pub fn default_file() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("XDG_CONFIG_HOME")
        .or_else(|| var("HOME").map(|home| home.join(".config")))
        .map(|dir| dir.join("cab/config.toml"))
}

/// Reads and checks a configuration file. Relative paths in it are relative to its directory,
/// and `~/` is the home directory.
pub fn read_file(path: &Path) -> Result<Layer> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the config file {}", path.display()))?;
    let mut config: Layer =
        toml::from_str(&text).map_err(|e| anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for value in [&mut config.store, &mut config.netrc, &mut config.nix_secret_key]
        .into_iter()
        .flatten()
    {
        *value = resolve_path(dir, value);
    }
    Ok(config)
}

fn resolve_path(dir: &Path, path: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    dir.join(path)
}

impl Settings {
    /// The settings in force: `flags` (the command line), then the environment, then the file
    /// (`file` if given — it must exist —, else the default file if there is one).
    pub fn load(file: Option<PathBuf>, flags: Layer) -> Result<Settings> {
        let env = Layer::from_env(&|name| std::env::var(name).ok())?;
        let file = match file {
            Some(path) => Some(path),
            None => default_file().filter(|p| p.exists()),
        };
        let from_file = match &file {
            Some(path) => read_file(path)?,
            None => Layer::default(),
        };
        let mut config = flags.or(env).or(from_file);
        // GitHub's own variable, as the gh tool and GitHub Actions set it.
        if config.github_token.is_none() {
            config.github_token = std::env::var("GITHUB_TOKEN").ok().filter(|t| !t.is_empty());
        }
        Ok(Settings { values: config, file })
    }

    /// The store directory.
    pub fn store(&self) -> Result<PathBuf> {
        match &self.values.store {
            Some(path) => Ok(path.clone()),
            None => crate::store::default_root(),
        }
    }

    /// The limits on one fetch.
    pub fn limits(&self) -> Limits {
        let c = &self.values;
        let d = Limits::default();
        Limits {
            memory: c.max_memory.map_or(d.memory, |s| s.0 as usize),
            time: c.max_time.map_or(d.time, Duration::from_secs),
            download: c.max_download.map_or(d.download, |s| s.0),
            unpacked: c.max_unpacked.map_or(d.unpacked, |s| s.0),
            entries: c.max_entries.unwrap_or(d.entries),
            stall: c.stall_timeout.map_or(d.stall, Duration::from_secs),
        }
    }

    /// Where derivations are realized: the `realizers` list, `local` last unless listed.
    pub fn realizers(&self) -> Result<Realizers> {
        Realizers::parse(self.values.realizers.as_deref().unwrap_or_default())
    }

    /// The forges' default instances.
    pub fn forges(&self) -> Forges {
        let d = Forges::default();
        let c = &self.values;
        Forges {
            github: c.github_url.clone().unwrap_or(d.github),
            gitlab: c.gitlab_url.clone().unwrap_or(d.gitlab),
            sourcehut: c.sourcehut_url.clone().unwrap_or(d.sourcehut),
        }
    }

    /// Every host's credentials: each forge's token for its default instance, then `tokens`,
    /// then the netrc file's logins (`netrc`, else `~/.netrc` if there is one).
    pub fn credentials(&self) -> Result<Credentials> {
        let c = &self.values;
        let forges = self.forges();
        let host_of = |setting: &str, url: &str| -> Result<String> {
            url_host(url)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("{setting} `{url}` is not an http(s) URL with a host"))
        };
        let mut credentials = Credentials::none();
        credentials.add_gitlab_host(&host_of("gitlab-url", &forges.gitlab)?);
        for (token, setting, url) in [
            (&c.github_token, "github-url", &forges.github),
            (&c.gitlab_token, "gitlab-url", &forges.gitlab),
            (&c.sourcehut_token, "sourcehut-url", &forges.sourcehut),
        ] {
            if let Some(token) = token {
                credentials.add(&host_of(setting, url)?, Secret::Token(token.clone()));
            }
        }
        for (host, token) in c.tokens.iter().flatten() {
            credentials.add(host, Secret::Token(token.clone()));
        }
        let (netrc, named) = match &c.netrc {
            Some(path) => (Some(path.clone()), true),
            None => (std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".netrc")), false),
        };
        if let Some(path) = netrc {
            match std::fs::read_to_string(&path) {
                Ok(text) => credentials.add_netrc(&text),
                Err(e) if !named && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot read the netrc file {}", path.display())),
            }
        }
        let hosts: Vec<&str> = credentials.hosts().collect();
        if !hosts.is_empty() {
            tracing::debug!("credentials for {}", hosts.join(", "));
        }
        Ok(credentials)
    }

    /// Refuses settings that parse but cannot work, naming the setting.
    pub fn check(&self) -> Result<()> {
        let forges = self.forges();
        for (setting, url) in [
            ("github-url", &forges.github),
            ("gitlab-url", &forges.gitlab),
            ("sourcehut-url", &forges.sourcehut),
        ] {
            if url_host(url).is_none() {
                bail!(
                    "{setting} ({}) `{url}` is not an http(s) URL with a host",
                    env_name(setting)
                );
            }
        }
        if self.values.threads == Some(0) {
            bail!("threads ({}) must be at least 1", env_name("threads"));
        }
        if self.values.request_timeout == Some(0) {
            bail!("request-timeout ({}) must be at least 1", env_name("request-timeout"));
        }
        self.realizers()
            .with_context(|| format!("realizers ({})", env_name("realizers")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn environment_names_and_values() {
        assert_eq!(env_name("max-time"), "CAB_MAX_TIME");
        let vars = BTreeMap::from([
            ("CAB_MAX_MEMORY", "1G"),
            ("CAB_PASSTHROUGH", "yes"),
            ("CAB_TOKENS", "a.example=1, b.example=2"),
            ("CAB_STORE", ""),
        ]);
        let config = Layer::from_env(&|n| vars.get(n).map(|v| v.to_string())).unwrap();
        assert_eq!(config.max_memory, Some(Size(1 << 30)));
        assert_eq!(config.passthrough, Some(true));
        assert_eq!(config.tokens.unwrap().len(), 2);
        assert_eq!(config.store, None);
        let e = Layer::from_env(&|n| (n == "CAB_THREADS").then(|| "many".to_owned())).unwrap_err();
        assert!(e.to_string().starts_with("CAB_THREADS: "), "{e}");
    }

    #[test]
    fn the_file_refuses_unknown_keys_and_bad_values() {
        let e = toml::from_str::<Layer>("max-tmie = 3\n").unwrap_err().to_string();
        assert!(e.contains("max-tmie"), "{e}");
        assert!(toml::from_str::<Layer>("max-memory = \"lots\"\n").is_err());
        let c: Layer =
            toml::from_str("max-memory = 1024\nmax-download = \"2G\"\n[tokens]\n\"h.example\" = \"t\"\n").unwrap();
        assert_eq!((c.max_memory, c.max_download), (Some(Size(1024)), Some(Size(2 << 30))));
    }
}
