//! `sources.json` files: npins' (`npins/sources.json`: `{ "pins": { NAME: { "type": … } },
//! "version": N }`) and niv's (`nix/sources.json`: `{ NAME: { "type": …, "url": …, "sha256": … } }`).
//! Both hash what `builtins.fetchTarball` (or, for plain git repositories, `builtins.fetchGit`)
//! makes of a source, which is the narHash of the tree cab makes of it.

use anyhow::{Result, bail};
use serde_json::Value;

use super::{Pin, Plan, forge_host, nar_hash, need, text};
use crate::island::Format;

/// Reads npins' pins (versions 3 to 5).
pub fn read_npins(file: &Value) -> Result<Plan> {
    let version = file.get("version").and_then(Value::as_u64);
    if !matches!(version, Some(3..=5)) {
        bail!("npins sources.json version {version:?}: this cab reads versions 3 to 5");
    }
    let mut plan = Plan {
        tool: "npins",
        ..Plan::default()
    };
    let pins = file.get("pins").and_then(Value::as_object).cloned().unwrap_or_default();
    for (name, entry) in &pins {
        plan.add(name, npins_pin(entry));
    }
    Ok(plan)
}

fn npins_pin(entry: &Value) -> Result<Pin, String> {
    let kind = need(entry, "type")?;
    if !matches!(kind, "Git" | "GitRelease" | "Channel" | "Tarball" | "PyPi") {
        return Err(format!("its type `{kind}` is not one cab reads"));
    }
    let nar = Some(nar_hash(need(entry, "hash")?)?);
    match kind {
        "Git" | "GitRelease" => {
            if entry.get("submodules").and_then(Value::as_bool) == Some(true) {
                return Err("it asks for submodules, which cab does not fetch".into());
            }
            let repository = entry.get("repository").ok_or("it has no `repository`")?;
            let reference = match kind {
                "Git" => need(entry, "branch")?,
                _ => need(entry, "version")?,
            };
            let mut pin = repository_pin(repository)?;
            pin.reference = Some(reference.to_owned());
            pin.rev = Some(need(entry, "revision")?.to_owned());
            pin.nar = nar;
            Ok(pin)
        }
        "Channel" | "Tarball" | "PyPi" => {
            // The URL fetched (a channel's or a tarball's immutable one, where npins keeps it).
            let url = text(entry, "locked_url").unwrap_or(need(entry, "url")?);
            let followed = text(entry, "url").filter(|u| *u != url).map(str::to_owned);
            Ok(Pin {
                format: Some(Format::Tarball),
                location: url.to_owned(),
                followed,
                nar,
                note: (kind == "Channel").then(|| {
                    format!(
                        "channel {}: pinned at its tarball; cab does not follow channels",
                        text(entry, "name").unwrap_or("?")
                    )
                }),
                ..Pin::default()
            })
        }
        other => Err(format!("its type `{other}` is not one cab reads")),
    }
}

/// An npins `repository` as the island that follows it.
fn repository_pin(repository: &Value) -> Result<Pin, String> {
    let (format, location, host) = match need(repository, "type")? {
        "GitHub" => (
            Format::Github,
            format!("{}/{}", need(repository, "owner")?, need(repository, "repo")?),
            None,
        ),
        "GitLab" => {
            let server = text(repository, "server").unwrap_or("https://gitlab.com/");
            (
                Format::Gitlab,
                need(repository, "repo_path")?.to_owned(),
                forge_host(server, "gitlab.com")?,
            )
        }
        "Forgejo" => {
            let server = need(repository, "server")?.trim_end_matches('/');
            let url = format!(
                "{server}/{}/{}.git",
                need(repository, "owner")?,
                need(repository, "repo")?
            );
            (Format::Git, url, None)
        }
        "Git" => (Format::Git, need(repository, "url")?.to_owned(), None),
        other => return Err(format!("its repository type `{other}` is not one cab reads")),
    };
    Ok(Pin {
        format: Some(format),
        location,
        host,
        ..Pin::default()
    })
}

/// Reads niv's sources.
pub fn read_niv(file: &Value) -> Result<Plan> {
    let mut plan = Plan {
        tool: "niv",
        ..Plan::default()
    };
    for (name, entry) in file.as_object().into_iter().flatten() {
        plan.add(name, niv_pin(entry));
    }
    Ok(plan)
}

fn niv_pin(entry: &Value) -> Result<Pin, String> {
    let kind = text(entry, "type").unwrap_or("tarball");
    match kind {
        "tarball" | "builtin-tarball" => {
            let url = need(entry, "url")?;
            let nar = Some(nar_hash(need(entry, "sha256")?)?);
            // A GitHub source: niv's own URL template over owner, repo and rev.
            if let (Some(owner), Some(repo), Some(rev)) =
                (text(entry, "owner"), text(entry, "repo"), text(entry, "rev"))
                && url == format!("https://github.com/{owner}/{repo}/archive/{rev}.tar.gz")
            {
                return Ok(Pin {
                    format: Some(Format::Github),
                    location: format!("{owner}/{repo}"),
                    reference: text(entry, "branch").map(str::to_owned),
                    rev: Some(rev.to_owned()),
                    nar,
                    ..Pin::default()
                });
            }
            Ok(Pin {
                format: Some(Format::Tarball),
                location: url.to_owned(),
                nar,
                ..Pin::default()
            })
        }
        "git" => Ok(Pin {
            format: Some(Format::Git),
            location: need(entry, "repo")?.to_owned(),
            reference: text(entry, "branch").or(text(entry, "ref")).map(str::to_owned),
            rev: Some(need(entry, "rev")?.to_owned()),
            nar: text(entry, "sha256").map(nar_hash).transpose()?,
            note: text(entry, "sha256")
                .is_none()
                .then(|| "niv keeps no hash of git sources: only its commit is checked".to_owned()),
            ..Pin::default()
        }),
        "file" | "builtin-url" => {
            Err("it is a single file (niv type `file`), hashed flat, not a tree: cab islands are trees".into())
        }
        other => Err(format!("its type `{other}` is not one cab reads")),
    }
}
