//! The config of an island literal: the `{ key = "value", … }` part, which says what to fetch
//! (`host`, `ref`, `rev`) and what it must hash to (`hash`, `narHash`). `Config` is the Cab
//! language's word for it. A value is checked as the parser sets it, and a config prints its
//! keys in canonical order, with the only two escapes the syntax has.

use std::fmt;

use super::parse::{check_host, check_ref, check_rev};
use crate::hash::{NarHash, TreeHash};

/// The config keys, in canonical order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    Host,
    Ref,
    Rev,
    Requires,
    Hash,
    NarHash,
}

/// The keys, as error messages list them.
pub(super) const KEY_LIST: &str = "`host`, `ref`, `rev`, `requires`, `hash` or `narHash`";

impl Key {
    /// Every key, in canonical order.
    pub(super) const ALL: [Key; 6] = [Key::Host, Key::Ref, Key::Rev, Key::Requires, Key::Hash, Key::NarHash];

    /// The key's name in literals.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Key::Host => "host",
            Key::Ref => "ref",
            Key::Rev => "rev",
            Key::Requires => "requires",
            Key::Hash => "hash",
            Key::NarHash => "narHash",
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The optional settings between an island's braces: what to fetch and what it must hash to.
///
/// An island with `rev` and `hash` (or just `hash`, for formats without revisions) is locked:
/// fetching it again must give the same tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Config {
    /// The forge's host (`name[:port]`, reached over https) instead of the default instance;
    /// only `github`, `gitlab` and `sourcehut` take it.
    pub host: Option<String>,
    /// A branch or tag to follow (git ref-name rules); only `github` and `git` take it.
    pub r#ref: Option<String>,
    /// A full commit id, 40 lowercase hex digits; only `github` and `git` take it.
    pub rev: Option<String>,
    /// Realizer features the island's derivation requires besides `wasm` (a realizer that
    /// reaches a private network, say): it is realized only where all are offered. Sorted,
    /// without repeats; written as one string of names separated by spaces.
    pub requires: Vec<String>,
    /// The Cab tree hash the fetched tree must have.
    pub hash: Option<TreeHash>,
    /// The Nix NAR hash the fetched tree must have.
    pub nar_hash: Option<NarHash>,
}

impl Config {
    /// Whether no key is set; such a config is not printed at all.
    pub fn is_empty(&self) -> bool {
        self == &Config::default()
    }

    /// Whether `key` is set.
    pub(super) fn has(&self, key: Key) -> bool {
        match key {
            Key::Host => self.host.is_some(),
            Key::Ref => self.r#ref.is_some(),
            Key::Rev => self.rev.is_some(),
            Key::Requires => !self.requires.is_empty(),
            Key::Hash => self.hash.is_some(),
            Key::NarHash => self.nar_hash.is_some(),
        }
    }

    /// Validates `value` for `key` and stores it; the error is the message only.
    pub(super) fn set(&mut self, key: Key, value: String) -> Result<(), String> {
        match key {
            Key::Host => {
                check_host(&value)?;
                self.host = Some(value);
            }
            Key::Ref => {
                check_ref(&value)?;
                self.r#ref = Some(value);
            }
            Key::Rev => {
                check_rev(&value)?;
                self.rev = Some(value);
            }
            Key::Requires => self.requires = parse_features(&value)?,
            Key::Hash => {
                let hash = value.parse().map_err(|e| format!("invalid `hash`: {e}"))?;
                self.hash = Some(hash);
            }
            Key::NarHash => {
                let hash = value.parse().map_err(|e| format!("invalid `narHash`: {e}"))?;
                self.nar_hash = Some(hash);
            }
        }
        Ok(())
    }

    /// The set keys and their text values, in canonical order.
    fn entries(&self) -> Vec<(Key, String)> {
        Key::ALL
            .into_iter()
            .filter_map(|key| {
                let value = match key {
                    Key::Host => self.host.clone(),
                    Key::Ref => self.r#ref.clone(),
                    Key::Rev => self.rev.clone(),
                    Key::Requires => (!self.requires.is_empty()).then(|| self.requires.join(" ")),
                    Key::Hash => self.hash.map(|h| h.to_string()),
                    Key::NarHash => self.nar_hash.map(|h| h.to_string()),
                };
                value.map(|v| (key, v))
            })
            .collect()
    }
}

impl fmt::Display for Config {
    /// `{ ref = "main", rev = "…" }`, or `{}` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.entries();
        if entries.is_empty() {
            return f.write_str("{}");
        }
        f.write_str("{ ")?;
        for (i, (key, value)) in entries.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{key} = ")?;
            write_quoted(f, value)?;
        }
        f.write_str(" }")
    }
}

/// Realizer feature names separated by spaces or commas (letters, digits, `.`, `_`, `-`),
/// at least one; sorted, without repeats.
fn parse_features(text: &str) -> Result<Vec<String>, String> {
    let mut features = Vec::new();
    for name in text.split([' ', ',']).filter(|n| !n.is_empty()) {
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(format!(
                "`requires`: `{name}` is not a feature name (letters, digits, `.`, `_` and `-`)"
            ));
        }
        features.push(name.to_owned());
    }
    if features.is_empty() {
        return Err("`requires` names no feature: give feature names separated by spaces".into());
    }
    features.sort();
    features.dedup();
    Ok(features)
}

/// Writes `s` double-quoted, escaping `"` and `\` (the only escapes the syntax has).
pub(super) fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}
