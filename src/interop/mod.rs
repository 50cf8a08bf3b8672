//! Pins both ways with Nix's tools: other lock files read as islands (`cab import`), and the
//! islands written as a Nix file of Nix's own fetchers (`cab export nix`).
//!
//! Reading is pure: a lock file becomes a list of [`Imported`] pins (and the entries that
//! cannot be islands, each with why). Realizing them against their expectations and writing
//! the manifest and the lock is [`crate::pin::import`]'s work, so that an import is checked
//! exactly as any other realization is.

mod flake;
mod nix_file;
mod sources;

use anyhow::{Result, anyhow, bail};
use serde_json::Value;

use crate::hash::NarHash;
use crate::island::{Config, Format, Island, Subpath};

pub use self::nix_file::{NixIsland, render_nix_file};

/// One pin read from another tool's lock file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// The island's name (the input's or pin's).
    pub name: String,
    /// What the manifest gets: the island as the tool follows it (a branch or tag, or the pin
    /// itself when the tool's own way of following it cannot be said as an island).
    pub original: Island,
    /// What the pin was: the tree to realize (its commit, where there is one, and the narHash
    /// as expectations, without a subpath: a narHash covers the whole tree).
    pub pinned: Island,
    /// The part of the pinned tree that is the island (a flake's `dir`).
    pub subpath: Option<Subpath>,
    /// Something the user should know about this entry.
    pub note: Option<String>,
}

/// An entry that cannot become an island, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The entry's name.
    pub name: String,
    /// Why it cannot be imported.
    pub why: String,
}

/// What a lock file holds, as islands.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Which tool wrote it: `flake.lock`, `npins` or `niv`.
    pub tool: &'static str,
    /// The pins that become islands.
    pub imported: Vec<Imported>,
    /// The entries that do not.
    pub skipped: Vec<Skipped>,
}

impl Plan {
    /// Adds what became of one entry: an island, or why not.
    fn add(&mut self, name: &str, pin: Result<Pin, String>) {
        match pin.and_then(|p| p.imported(name)) {
            Ok(imported) => self.imported.push(imported),
            Err(why) => self.skipped.push(Skipped {
                name: name.to_owned(),
                why,
            }),
        }
    }
}

/// Reads a `flake.lock`, an npins `sources.json` or a niv `nix/sources.json` (told apart by
/// their contents). `base` is the file's directory (relative `path` inputs start there).
pub fn read_lock_file(text: &str, base: &std::path::Path) -> Result<Plan> {
    let value: Value = serde_json::from_str(text).map_err(|e| anyhow!("not JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        bail!("not a flake.lock, npins or niv sources.json: the top level is not a JSON object");
    };
    if object.contains_key("nodes") && object.contains_key("root") {
        flake::read(&value, base)
    } else if object.contains_key("pins") && object.contains_key("version") {
        sources::read_npins(&value)
    } else if !object.is_empty() && object.values().all(Value::is_object) {
        sources::read_niv(&value)
    } else {
        bail!(
            "not a flake.lock (no `nodes` and `root`), an npins sources.json (no `pins` and `version`) \
             or a niv sources.json (an object of objects)"
        )
    }
}

/// A string field of a JSON object, if present.
fn text<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

/// A string field that must be there.
fn need<'a>(object: &'a Value, key: &str) -> Result<&'a str, String> {
    text(object, key).ok_or_else(|| format!("it has no `{key}`"))
}

/// A narHash as these files write it: SRI (`sha256-…`), or a bare SHA-256 in Nix's base-32 or
/// in hex (npins, niv).
fn nar_hash(text: &str) -> Result<NarHash, String> {
    let parsed = if text.starts_with("sha256-") || text.starts_with("sha256:") {
        text.parse()
    } else {
        format!("sha256:{text}").parse()
    };
    parsed.map_err(|_| format!("`{text}` is not a SHA-256 narHash (SRI, Nix base-32 or hex)"))
}

/// Builds an island and checks it as a literal is checked (location shape, ref, rev).
fn island(format: Format, location: &str, config: Config, subpath: Option<Subpath>) -> Result<Island, String> {
    let island = Island {
        format,
        location: location.to_owned(),
        config,
        subpath,
    };
    let literal = island.to_string();
    literal
        .parse::<Island>()
        .map_err(|e| format!("it would be {literal}, which is not a valid island: {}", e.message))
}

/// A pin as a lock file states it, before it is checked as islands.
#[derive(Clone, Debug, Default)]
struct Pin {
    format: Option<Format>,
    /// Where the pinned tree is (a forge path, a URL, an absolute path).
    location: String,
    /// Where the manifest's island follows it, when that differs (a tarball's moving URL).
    followed: Option<String>,
    host: Option<String>,
    /// The branch or tag the tool follows.
    reference: Option<String>,
    /// The commit it pinned.
    rev: Option<String>,
    /// The manifest's island keeps the commit: the tool follows nothing an island can say.
    keep_rev: bool,
    nar: Option<NarHash>,
    subpath: Option<Subpath>,
    note: Option<String>,
}

impl Pin {
    /// The pin as an import: its manifest island and the island to realize.
    fn imported(self, name: &str) -> Result<Imported, String> {
        let format = self.format.ok_or("it names no format")?;
        let original = island(
            format,
            self.followed.as_deref().unwrap_or(&self.location),
            Config {
                host: self.host.clone(),
                r#ref: self.reference.clone(),
                rev: self.rev.clone().filter(|_| self.keep_rev),
                ..Config::default()
            },
            self.subpath.clone(),
        )?;
        let pinned = island(
            format,
            &self.location,
            Config {
                host: self.host,
                r#ref: self.reference,
                rev: self.rev,
                requires: Vec::new(),
                hash: None,
                nar_hash: self.nar,
            },
            // An fs island's path is its subpath.
            (format == Format::Fs).then(|| original.subpath.clone()).flatten(),
        )?;
        Ok(Imported {
            name: name.to_owned(),
            subpath: if format == Format::Fs { None } else { self.subpath },
            original,
            pinned,
            note: self.note,
        })
    }
}

/// The host a forge URL names, unless it is the forge's default instance (`default_host`):
/// what goes into an island's `host`.
fn forge_host(server: &str, default_host: &str) -> Result<Option<String>, String> {
    let rest = server
        .strip_prefix("https://")
        .ok_or_else(|| format!("the server `{server}` is not https, and `host` is always reached over https"))?;
    let host = rest.split('/').next().unwrap_or_default();
    Ok((host != default_host && !host.is_empty()).then(|| host.to_owned()))
}
