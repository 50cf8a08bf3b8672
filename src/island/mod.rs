//! Island literals: the text that names a source tree, such as `<github:cull-os/cab>`.
//!
//! ```text
//! island   = "<" format ":" location [ ":" [ config ] [ ":" subpath ] ] ">"
//! format   = github | gitlab | sourcehut | tarball | git | fs
//! location = everything up to the first ":{", "::" or ">"
//! config   = "{" [ key "=" string { "," key "=" string } [ "," ] ] "}"
//! subpath  = "/" name { "/" name }
//! ```
//!
//! Parsing validates everything that can be checked without the network (location shape, ref
//! names, commit ids, hash forms, which keys a format takes), so a literal that parses names
//! exactly one thing to fetch. Printing gives the canonical form: keys in the order `host`,
//! `ref`, `rev`, `hash`, `narHash`, spaced as `{ key = "value", … }`, with no config braces when there
//! is no config. Parsing a printed island gives the same island back.
//!
//! Errors carry the 1-based column, counted in characters, of the offending text and a message
//! that says what was expected there; [`ParseError::render`] draws a caret under it.
//!
//! A file per concept: `format.rs` (the kinds of source and their locations), `config.rs` (the
//! `{ … }` part), `subpath.rs`, and `parse.rs` (text into an island, and its errors); this file
//! holds the island itself, how it prints, and the bound on a literal's size.

mod config;
mod format;
mod parse;
mod subpath;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use self::config::Config;
pub use self::format::{Format, MAX_GITLAB_DEPTH, forge_name_ok};
pub use self::parse::ParseError;
use self::parse::Parser;
pub use self::subpath::{BadName, Subpath};
use crate::hash::{NarHash, TreeHash};

/// A literal that names one source tree: `<format:location:{ config }:/subpath>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Island {
    /// Where the tree comes from.
    pub format: Format,
    /// `OWNER/REPO` for `github`, `GROUP/…/PROJECT` for `gitlab`, `~OWNER/REPO` for
    /// `sourcehut`, the URL for `tarball` and `git`, empty for `fs`; never
    /// rewritten (URLs are kept byte for byte, not percent-decoded).
    pub location: String,
    /// What to fetch and what it must hash to.
    pub config: Config,
    /// The part of the tree the island stands for; for `fs`, the absolute path (required).
    pub subpath: Option<Subpath>,
}

impl Island {
    /// Whether the island pins one exact tree: forges and `git` need `rev` and `hash`;
    /// `tarball` and `fs` need `hash`.
    pub fn is_locked(&self) -> bool {
        let hash = self.config.hash.is_some();
        if self.format.has_revisions() {
            hash && self.config.rev.is_some()
        } else {
            hash
        }
    }

    /// The same island without its pins (`rev`, `hash`, `narHash`), keeping `host`, `ref`,
    /// `requires` and the subpath: what `--update` resolves afresh.
    pub fn unpinned(&self) -> Island {
        Island {
            config: Config {
                host: self.config.host.clone(),
                r#ref: self.config.r#ref.clone(),
                requires: self.config.requires.clone(),
                ..Config::default()
            },
            ..self.clone()
        }
    }

    /// The fully locked form of this island: its `ref` and subpath, plus the commit it
    /// resolved to (for formats that have one) and both hashes of its tree.
    pub fn locked(&self, rev: Option<String>, hash: TreeHash, nar_hash: NarHash) -> Island {
        let has_rev = self.format.has_revisions();
        Island {
            config: Config {
                host: self.config.host.clone(),
                r#ref: self.config.r#ref.clone(),
                rev: if has_rev {
                    rev.or_else(|| self.config.rev.clone())
                } else {
                    None
                },
                requires: self.config.requires.clone(),
                hash: Some(hash),
                nar_hash: Some(nar_hash),
            },
            ..self.clone()
        }
    }

    /// For an `fs` island, the absolute path it stands for.
    pub fn fs_path(&self) -> Option<PathBuf> {
        if self.format != Format::Fs {
            return None;
        }
        self.subpath.as_ref().map(|s| PathBuf::from(s.to_string()))
    }
}

impl fmt::Display for Island {
    /// The canonical form, which parses back to the same island.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}:{}", self.format, self.location)?;
        if !self.config.is_empty() {
            write!(f, ":{}", self.config)?;
        }
        if let Some(subpath) = &self.subpath {
            let sep = if !self.config.is_empty() || self.location.is_empty() {
                ":"
            } else {
                "::"
            };
            write!(f, "{sep}{subpath}")?;
        }
        f.write_str(">")
    }
}

/// The longest literal accepted, in bytes: room for any real URL or ref, and a bound on what
/// one literal can cost in memory and in every log line that names it.
pub const MAX_LITERAL_LEN: usize = 8192;

impl FromStr for Island {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        if s.len() > MAX_LITERAL_LEN {
            return Err(ParseError {
                column: s.char_indices().take_while(|(i, _)| *i < MAX_LITERAL_LEN).count() + 1,
                message: format!(
                    "the literal is {} bytes long; an island literal is at most {MAX_LITERAL_LEN} bytes",
                    s.len()
                ),
            });
        }
        Parser::new(s).island()
    }
}
