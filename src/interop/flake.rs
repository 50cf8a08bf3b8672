//! `flake.lock` (version 7, as Nix 2.4 and later write it): the root's inputs, each followed
//! to its node (through `follows` paths), its `locked` attributes the pin and its `original`
//! attributes what the manifest follows.

use std::path::{Component, Path, PathBuf};

use anyhow::{Result, bail};
use serde_json::Value;

use super::{Pin, Plan, forge_host, nar_hash, need, text};
use crate::island::{Format, Subpath};

/// Reads a flake.lock's root inputs.
pub fn read(lock: &Value, base: &Path) -> Result<Plan> {
    let version = lock.get("version").and_then(Value::as_u64);
    if !matches!(version, Some(5..=7)) {
        bail!("flake.lock version {version:?}: this cab reads versions 5 to 7");
    }
    let nodes = lock.get("nodes").and_then(Value::as_object);
    let root_key = text(lock, "root").unwrap_or("root");
    let Some(root) = nodes.and_then(|n| n.get(root_key)) else {
        bail!("the flake.lock has no root node `{root_key}`");
    };
    let mut plan = Plan {
        tool: "flake.lock",
        ..Plan::default()
    };
    let inputs = root
        .get("inputs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (name, target) in &inputs {
        let node = follow(lock, root_key, target, 0);
        plan.add(name, node.and_then(|node| pin(node, base)));
    }
    Ok(plan)
}

/// The node an input names: a node key, or a `follows` path of input names from the root.
fn follow<'a>(lock: &'a Value, root: &str, target: &Value, depth: usize) -> Result<&'a Value, String> {
    let nodes = &lock["nodes"];
    if depth > 32 {
        return Err("its `follows` paths go round in a circle".into());
    }
    match target {
        Value::String(key) => nodes.get(key).ok_or_else(|| format!("its node `{key}` is missing")),
        Value::Array(path) => {
            let mut node = nodes.get(root).ok_or("the root node is missing")?;
            for step in path {
                let name = step.as_str().ok_or("a `follows` path holds a non-string")?;
                let next = node
                    .get("inputs")
                    .and_then(|i| i.get(name))
                    .ok_or_else(|| format!("it follows `{name}`, which is not there"))?;
                node = follow(lock, root, next, depth + 1)?;
            }
            Ok(node)
        }
        _ => Err("its input is neither a node nor a `follows` path".into()),
    }
}

/// A node's pin.
fn pin(node: &Value, base: &Path) -> Result<Pin, String> {
    let Some(locked) = node.get("locked") else {
        return Err("it is not locked (no `locked` attributes): lock it with `nix flake lock` first".into());
    };
    let original = node.get("original").cloned().unwrap_or(Value::Null);
    let kind = need(locked, "type")?;
    let nar = Some(nar_hash(need(locked, "narHash")?)?);
    let subpath = match text(&original, "dir").or_else(|| text(locked, "dir")) {
        Some(dir) => Some(
            Subpath::new(dir.split('/').filter(|p| !p.is_empty() && *p != "."))
                .map_err(|e| format!("its `dir` {dir:?}: {e}"))?,
        ),
        None => None,
    };
    // The manifest follows what the flake names: the original's ref (or rev), when the
    // original is the same kind of source; an indirect (registry) input, or any other kind,
    // has nothing an island can say, so the manifest keeps the pin itself.
    let same_kind = text(&original, "type") == Some(kind);
    let reference = same_kind.then(|| text(&original, "ref").map(str::to_owned)).flatten();
    let keep_rev = !same_kind || text(&original, "rev").is_some();
    let note = (text(&original, "type") == Some("indirect")).then(|| {
        format!(
            "the flake names it through the registry (`{}`), which cab cannot follow: kept at its locked commit",
            text(&original, "id").unwrap_or("?")
        )
    });
    let rev = text(locked, "rev").map(str::to_owned);
    let mut pin = Pin {
        reference,
        rev,
        keep_rev,
        nar,
        subpath,
        note,
        ..Pin::default()
    };
    match kind {
        "github" | "gitlab" | "sourcehut" => {
            let (format, default_host) = match kind {
                "github" => (Format::Github, "github.com"),
                "gitlab" => (Format::Gitlab, "gitlab.com"),
                _ => (Format::Sourcehut, "git.sr.ht"),
            };
            // GitLab subgroups are written into the owner, `%2F`-escaped.
            let owner = need(locked, "owner")?.replace("%2F", "/").replace("%2f", "/");
            pin.format = Some(format);
            pin.location = format!("{owner}/{}", need(locked, "repo")?);
            pin.host = match text(locked, "host") {
                Some(host) => forge_host(&format!("https://{host}"), default_host)?,
                None => None,
            };
            if pin.rev.is_none() {
                return Err("it is locked without a `rev`".into());
            }
        }
        "git" => {
            if locked.get("submodules").and_then(Value::as_bool) == Some(true) {
                return Err("it asks for submodules, which cab does not fetch".into());
            }
            let url = need(locked, "url")?;
            if !url.starts_with("https://") && !url.starts_with("http://") {
                return Err(format!(
                    "its URL `{url}` is not http(s): cab fetches git over smart HTTP only"
                ));
            }
            pin.format = Some(Format::Git);
            pin.location = url.to_owned();
            if pin.rev.is_none() {
                return Err("it is locked without a `rev`".into());
            }
        }
        "tarball" => {
            pin.format = Some(Format::Tarball);
            pin.location = need(locked, "url")?.to_owned();
            // A lockable tarball's locked URL is immutable; the manifest follows the original.
            pin.followed = text(&original, "url").filter(|_| same_kind).map(str::to_owned);
            pin.keep_rev = false;
        }
        "path" => {
            let path = need(locked, "path")?;
            // Relative to the flake; `./` steps dropped (a subpath has no `.` names).
            let absolute: PathBuf = base
                .join(path)
                .components()
                .filter(|c| !matches!(c, Component::CurDir))
                .collect();
            let absolute = absolute.to_str().ok_or("its path is not UTF-8")?;
            pin.format = Some(Format::Fs);
            pin.subpath = Some(
                Subpath::parse(absolute)
                    .map_err(|e| format!("its path {absolute:?} cannot be an fs island: {}", e.message))?,
            );
            pin.keep_rev = false;
            pin.rev = None;
        }
        "file" => return Err("it is a single file (type `file`), not a tree: cab islands are trees".into()),
        "mercurial" => return Err("it is a Mercurial repository, which cab does not fetch".into()),
        other => return Err(format!("its type `{other}` is not one cab reads")),
    }
    Ok(pin)
}
