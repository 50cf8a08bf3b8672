//! The Nix file `cab export nix` writes: an attribute set of store paths, one per island, each
//! fetched by Nix's own fetchers from the URL cab itself fetches it from and checked against
//! the narHash cab pinned, so a Nix build uses exactly the trees the mount serves.
//!
//! Only builtins that need no experimental feature (Nix 2.4 and later): `fetchTarball` for
//! archives (a forge's archive of the commit, or the tarball), `fetchGit` with `narHash` for git
//! repositories, and `path` for local trees and for subpaths (`builtins.fetchTree`, which
//! would take a `github:` tree, needs the `flakes` feature before Nix 2.25).

use anyhow::{Context, Result, bail};

use crate::derivation::{Forges, forge_urls};
use crate::hash::NarHash;
use crate::island::{Format, Island};

/// One island to write.
#[derive(Clone, Debug)]
pub struct NixIsland {
    /// The attribute name (the island's name).
    pub name: String,
    /// The fully locked literal.
    pub locked: Island,
    /// For an island with a subpath: the narHash of the whole tree it is part of (Nix
    /// fetches whole trees, and checks each against its own hash).
    pub whole_nar: Option<NarHash>,
}

/// The whole file.
pub fn render_nix_file(islands: &[NixIsland], forges: &Forges) -> Result<String> {
    let mut out = String::from(
        "# Written by `cab export nix` from islands.lock: each island as Nix's own fetchers get it,\n\
         # from the URL cab fetches it from, checked against the narHash cab pinned.\n\
         # (import ./THIS-FILE).NAME is the island's tree in the Nix store. Needs Nix 2.4 or later.\n{\n",
    );
    for island in islands {
        let expr = expression(island, forges).with_context(|| format!("island `{}`", island.name))?;
        out.push_str(&format!("  {} = {};\n", attribute(&island.name), indent(&expr)));
    }
    out.push_str("}\n");
    Ok(out)
}

/// The expression for one island.
fn expression(island: &NixIsland, forges: &Forges) -> Result<String> {
    let locked = &island.locked;
    let nar = locked
        .config
        .nar_hash
        .with_context(|| format!("{locked} has no narHash"))?;
    let Some(subpath) = locked.subpath.as_ref().filter(|_| locked.format != Format::Fs) else {
        return fetch(locked, &nar, forges);
    };
    let whole_nar = island
        .whole_nar
        .with_context(|| format!("{locked}: the narHash of its whole tree is not known"))?;
    let whole = Island {
        subpath: None,
        ..locked.clone()
    };
    let mut path = format!("${{{}}}", fetch(&whole, &whole_nar, forges)?);
    for name in subpath.names() {
        path.push('/');
        path.push_str(&escape(name));
    }
    Ok(call(
        "builtins.path",
        &[
            ("path", format!("\"{path}\"")),
            ("name", string("source")),
            ("sha256", string(&nar.to_string())),
        ],
    ))
}

/// The fetch of a whole tree whose narHash is `nar`.
fn fetch(island: &Island, nar: &NarHash, forges: &Forges) -> Result<String> {
    let nar = string(&nar.to_string());
    let rev = || {
        island
            .config
            .rev
            .clone()
            .with_context(|| format!("{island} has no rev"))
    };
    Ok(match island.format {
        Format::Github | Format::Gitlab | Format::Sourcehut => {
            let urls = forge_urls(island, forges)?.context("a forge island has forge URLs")?;
            call(
                "builtins.fetchTarball",
                &[("url", string(&urls.archive_of(&rev()?))), ("sha256", nar)],
            )
        }
        Format::Tarball => call(
            "builtins.fetchTarball",
            &[("url", string(&island.location)), ("sha256", nar)],
        ),
        // `allRefs`: without a ref, Nix 2.8 fetches only `master`, and a commit on any other
        // branch or tag is then not found.
        Format::Git => call(
            "builtins.fetchGit",
            &[
                ("url", string(&island.location)),
                ("rev", string(&rev()?)),
                ("allRefs", "true".into()),
                ("narHash", nar),
            ],
        ),
        Format::Fs => {
            let Some(path) = island.fs_path() else {
                bail!("{island} has no path");
            };
            let path = path.to_str().context("a path that is not UTF-8")?;
            call(
                "builtins.path",
                &[("path", string(path)), ("name", string("source")), ("sha256", nar)],
            )
        }
    })
}

/// `f {\n  a = x;\n  …\n}`.
fn call(function: &str, arguments: &[(&str, String)]) -> String {
    let mut out = format!("{function} {{\n");
    for (name, value) in arguments {
        out.push_str(&format!("  {name} = {};\n", indent(value)));
    }
    out.push('}');
    out
}

/// Indents every line but the first by two spaces (the expression sits in the attribute set).
fn indent(expr: &str) -> String {
    expr.replace('\n', "\n  ")
}

/// A Nix string literal.
fn string(text: &str) -> String {
    format!("\"{}\"", escape(text))
}

/// The inside of a Nix string literal: `"`, `\` and `${` escaped, control characters spelled.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out
}

/// An attribute name: bare when it is an identifier that is not a keyword, else quoted.
fn attribute(name: &str) -> String {
    const KEYWORDS: [&str; 9] = ["if", "then", "else", "assert", "with", "let", "in", "rec", "inherit"];
    let mut chars = name.chars();
    let identifier = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '\'' | '-'));
    if identifier && !KEYWORDS.contains(&name) && name != "or" {
        name.to_owned()
    } else {
        string(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_names_are_quoted_for_nix() {
        assert_eq!(string("a\"b\\c${d}$e\n"), r#""a\"b\\c\${d}$e\n""#);
        assert_eq!(attribute("cab"), "cab");
        assert_eq!(attribute("flake-utils"), "flake-utils");
        assert_eq!(attribute("with.dot"), "\"with.dot\"");
        assert_eq!(attribute("in"), "\"in\"");
        assert_eq!(attribute("1st"), "\"1st\"");
    }

    #[test]
    fn each_format_becomes_its_fetcher() {
        let nar = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let rev = "0123456789abcdef0123456789abcdef01234567";
        let hash = format!("blake3-{}", "0".repeat(64));
        let island = |text: &str| NixIsland {
            name: "x".into(),
            locked: text.parse().unwrap(),
            whole_nar: Some(NarHash([1; 32])),
        };
        let forges = Forges::with_github("http://127.0.0.1:9");
        let gitlab = island(&format!(
            "<gitlab:g/s/p:{{ rev = \"{rev}\", hash = \"{hash}\", narHash = \"{nar}\" }}>"
        ));
        let expr = expression(&gitlab, &forges).unwrap();
        assert!(expr.starts_with("builtins.fetchTarball {"), "{expr}");
        assert!(expr.contains(&format!(
            "url = \"https://gitlab.com/g/s/p/-/archive/{rev}/p-{rev}.tar.gz\";"
        )));
        let github = island(&format!(
            "<github:o/r:{{ rev = \"{rev}\", hash = \"{hash}\", narHash = \"{nar}\" }}:/sub/dir>"
        ));
        let expr = expression(&github, &forges).unwrap();
        assert!(
            expr.starts_with("builtins.path {\n  path = \"${builtins.fetchTarball {"),
            "{expr}"
        );
        assert!(
            expr.contains(&format!("http://127.0.0.1:9/o/r/archive/{rev}.tar.gz")),
            "{expr}"
        );
        assert!(expr.contains("}/sub/dir\";"), "{expr}");
        let git = island(&format!(
            "<git:https://h/r.git:{{ rev = \"{rev}\", hash = \"{hash}\", narHash = \"{nar}\" }}>"
        ));
        let expr = expression(&git, &forges).unwrap();
        assert!(
            expr.contains("allRefs = true;") && expr.contains(&format!("narHash = \"{nar}\";")),
            "{expr}"
        );
        let fs = island(&format!("<fs::{{ hash = \"{hash}\", narHash = \"{nar}\" }}:/a b/c>"));
        assert!(expression(&fs, &forges).unwrap().contains("path = \"/a b/c\";"));
    }
}
