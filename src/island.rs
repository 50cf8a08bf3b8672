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

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::hash::{NarHash, TreeHash};

/// Where an island's tree comes from, which decides what its location means and which config
/// keys it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// A GitHub repository, located by `OWNER/REPO`.
    Github,
    /// A GitLab project, located by `GROUP/[SUBGROUP/…]PROJECT`.
    Gitlab,
    /// A SourceHut git repository, located by `~OWNER/REPO`.
    Sourcehut,
    /// A tarball at an `http://` or `https://` URL.
    Tarball,
    /// A git repository at an `http://` or `https://` URL.
    Git,
    /// A subtree of the local filesystem; the location is empty and the subpath is the path.
    Fs,
}

impl Format {
    /// Every format, in the order error messages list them.
    pub const ALL: [Format; 6] = [
        Format::Github,
        Format::Gitlab,
        Format::Sourcehut,
        Format::Tarball,
        Format::Git,
        Format::Fs,
    ];

    /// The name used in literals, e.g. `github`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Github => "github",
            Format::Gitlab => "gitlab",
            Format::Sourcehut => "sourcehut",
            Format::Tarball => "tarball",
            Format::Git => "git",
            Format::Fs => "fs",
        }
    }

    fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// Whether this format's islands choose a commit (and so take `ref` and `rev`).
    pub fn has_revisions(self) -> bool {
        self.is_forge() || self == Format::Git
    }

    /// Whether this format names a repository on a forge (and so takes `host`).
    pub fn is_forge(self) -> bool {
        matches!(self, Format::Github | Format::Gitlab | Format::Sourcehut)
    }

    /// Rejects keys the format has no use for, saying why.
    fn check_key(self, key: Key) -> Result<(), String> {
        if key == Key::Host {
            if self.is_forge() {
                return Ok(());
            }
            return Err(format!(
                "{self} islands have no `host`: only `github`, `gitlab` and `sourcehut` name a forge by host"
            ));
        }
        if self.has_revisions() || matches!(key, Key::Hash | Key::NarHash) {
            return Ok(());
        }
        let why = match self {
            Format::Fs => "a local path names one tree",
            _ => "a tarball URL names one tree",
        };
        Err(format!(
            "{self} islands have no `{key}`: {why}; expected `hash` or `narHash`"
        ))
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const FORMAT_LIST: &str = "`github`, `gitlab`, `sourcehut`, `tarball`, `git` or `fs`";

impl FromStr for Format {
    type Err = ParseError;

    /// Parses a format name; the error's column is 1.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Format::from_name(s).ok_or_else(|| ParseError {
            column: 1,
            message: format!("unknown format `{s}`: expected one of {FORMAT_LIST}"),
        })
    }
}

/// The config keys, in canonical order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Host,
    Ref,
    Rev,
    Hash,
    NarHash,
}

const KEY_LIST: &str = "`host`, `ref`, `rev`, `hash` or `narHash`";

impl Key {
    const ALL: [Key; 5] = [Key::Host, Key::Ref, Key::Rev, Key::Hash, Key::NarHash];

    fn as_str(self) -> &'static str {
        match self {
            Key::Host => "host",
            Key::Ref => "ref",
            Key::Rev => "rev",
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

    fn has(&self, key: Key) -> bool {
        match key {
            Key::Host => self.host.is_some(),
            Key::Ref => self.r#ref.is_some(),
            Key::Rev => self.rev.is_some(),
            Key::Hash => self.hash.is_some(),
            Key::NarHash => self.nar_hash.is_some(),
        }
    }

    /// Validates `value` for `key` and stores it; the error is the message only.
    fn set(&mut self, key: Key, value: String) -> Result<(), String> {
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

/// Writes `s` double-quoted, escaping `"` and `\` (the only escapes the syntax has).
fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// A path inside an island's tree, as a list of names; for `fs` islands, the absolute path.
///
/// Names are never empty, `.` or `..`, and contain no `/`, `>` (which would end the literal) or
/// NUL, so a subpath can never climb out of its tree and always prints back as it parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subpath(Vec<String>);

/// A name rejected by [`Subpath::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadName {
    /// The rejected name.
    pub name: String,
    /// What was wrong and what was expected.
    pub message: String,
}

impl fmt::Display for BadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BadName {}

/// Why `name` cannot be a subpath component: the character index to blame and the message.
fn name_problem(name: &str) -> Option<(usize, &'static str)> {
    match name {
        "" => return Some((0, "empty name in subpath: expected a name between `/`s")),
        "." | ".." => {
            return Some((0, "`.` or `..` in subpath: expected a plain name"));
        }
        _ => {}
    }
    name.chars().enumerate().find_map(|(i, c)| {
        let message = match c {
            '/' => "`/` in subpath name: expected one name per component",
            '>' => "`>` in subpath: expected names without `>`, which ends the island",
            '\0' => "NUL in subpath: expected names without NUL characters",
            _ => return None,
        };
        Some((i, message))
    })
}

impl Subpath {
    /// Builds a subpath from its names, rejecting an empty list and any name that is empty,
    /// `.`, `..`, or contains `/`, `>` or NUL.
    pub fn new<I, S>(names: I) -> Result<Subpath, BadName>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        if names.is_empty() {
            return Err(BadName {
                name: String::new(),
                message: "empty subpath: expected at least one name".into(),
            });
        }
        for name in &names {
            if let Some((_, message)) = name_problem(name) {
                return Err(BadName {
                    name: name.clone(),
                    message: message.into(),
                });
            }
        }
        Ok(Subpath(names))
    }

    /// The names, outermost first.
    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// Parses `/a/b`; error columns count from the start of `s`.
    pub fn parse(s: &str) -> Result<Subpath, ParseError> {
        let chars: Vec<char> = s.chars().collect();
        parse_subpath(&chars, 0)
    }
}

impl FromStr for Subpath {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        Subpath::parse(s)
    }
}

impl fmt::Display for Subpath {
    /// `/a/b`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for name in &self.0 {
            write!(f, "/{name}")?;
        }
        Ok(())
    }
}

/// Parses a subpath held in `chars`, which start at character index `offset` of the input.
fn parse_subpath(chars: &[char], offset: usize) -> Result<Subpath, ParseError> {
    let at = |i: usize, message: &str| ParseError {
        column: offset + i + 1,
        message: message.into(),
    };
    if chars.first() != Some(&'/') {
        return Err(at(0, "expected a subpath starting with `/`"));
    }
    let mut names = Vec::new();
    let mut i = 1;
    loop {
        let start = i;
        while i < chars.len() && chars[i] != '/' {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        if name.is_empty() && i == chars.len() {
            return Err(at(start - 1, "trailing `/` in subpath: expected a name after it"));
        }
        if let Some((k, message)) = name_problem(&name) {
            return Err(at(start + k, message));
        }
        names.push(name);
        if i == chars.len() {
            return Ok(Subpath(names));
        }
        i += 1;
    }
}

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

    /// The same island without its pins (`rev`, `hash`, `narHash`), keeping `host`, `ref` and
    /// the subpath: what `--update` resolves afresh.
    pub fn unpinned(&self) -> Island {
        Island {
            config: Config {
                host: self.config.host.clone(),
                r#ref: self.config.r#ref.clone(),
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

/// `text` for a log line: whole when short, else its start and its length.
pub fn shorten(text: &str) -> std::borrow::Cow<'_, str> {
    const SHOWN: usize = 160;
    if text.len() <= SHOWN {
        return text.into();
    }
    let mut end = SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len()).into()
}

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
        Parser {
            chars: s.chars().collect(),
            pos: 0,
        }
        .island()
    }
}

/// Why a literal did not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based, in characters from the start of the input; one past the end when the input
    /// stopped too early.
    pub column: usize,
    /// What was wrong, ending with what was expected.
    pub message: String,
}

impl ParseError {
    /// The message, the input's offending line and a caret under the column, for terminals.
    pub fn render(&self, input: &str) -> String {
        let chars: Vec<char> = input.chars().collect();
        let at = self.column.saturating_sub(1).min(chars.len());
        let start = chars[..at].iter().rposition(|&c| c == '\n').map_or(0, |i| i + 1);
        let end = chars[at..]
            .iter()
            .position(|&c| c == '\n')
            .map_or(chars.len(), |i| at + i);
        // A window around the caret: a long line is cut, with `…` where it was.
        const AROUND: usize = 60;
        let (from, to) = (start.max(at.saturating_sub(AROUND)), end.min(at + AROUND));
        let before = if from > start { "…" } else { "" };
        let after = if to < end { "…" } else { "" };
        let line: String = chars[from..to].iter().collect();
        let pad: String = before
            .chars()
            .chain(chars[from..at].iter().copied())
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        format!("{self}\n  {before}{line}{after}\n  {pad}^")
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Checks a `ref` against git's ref-name rules (`git check-ref-format`).
fn check_ref(r: &str) -> Result<(), String> {
    let why = if r.is_empty() {
        "a non-empty git ref name"
    } else if r == "@" {
        "a git ref name other than `@`"
    } else if r.chars().any(|c| c == ' ' || c.is_control()) {
        "a git ref name without spaces or control characters"
    } else if r.contains("..") {
        "a git ref name without `..`"
    } else if r.contains(['~', '^', ':', '?', '*', '[', '\\']) {
        "a git ref name without any of `~^:?*[\\`"
    } else if r.starts_with(['/', '.']) || r.ends_with(['/', '.']) {
        "a git ref name that does not start or end with `/` or `.`"
    } else if r.contains("//") {
        "a git ref name without `//`"
    } else if r.contains("@{") {
        "a git ref name without `@{`"
    } else if r.split('/').any(|c| c.ends_with(".lock")) {
        "a git ref name with no part ending in `.lock`"
    } else if r.split('/').any(|c| c.starts_with('.')) {
        "a git ref name with no part starting with `.`"
    } else {
        return Ok(());
    };
    Err(format!("invalid `ref` {r:?}: expected {why}"))
}

/// Checks a `host`: a DNS name or IPv4 address, and an optional port (`name[:port]`).
fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = host.split_once(':').unwrap_or((host, ""));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let port_ok = port.is_empty() && !host.contains(':') || !port.is_empty() && port.parse::<u16>().is_ok();
    if name.len() <= 253 && name.split('.').all(label_ok) && port_ok {
        Ok(())
    } else {
        Err(format!(
            "invalid `host` {host:?}: expected a host name such as \"gitlab.example.org\", optionally with \":PORT\""
        ))
    }
}

/// Checks a `rev`: a full commit id in lowercase hex.
fn check_rev(r: &str) -> Result<(), String> {
    let hex = r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit());
    if hex && !r.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else if hex {
        Err(format!(
            "invalid `rev` {r:?}: expected 40 lowercase hex digits, not uppercase"
        ))
    } else {
        Err(format!(
            "invalid `rev` {r:?}: expected a full commit id of 40 lowercase hex digits"
        ))
    }
}

/// Checks a location's shape for its format.
fn check_location(format: Format, loc: &str) -> Result<(), String> {
    match format {
        Format::Fs if loc.is_empty() => Ok(()),
        Format::Fs => Err("fs islands have an empty location: expected `<fs::/absolute/path>`".into()),
        Format::Github => match loc.split_once('/') {
            Some((owner, repo)) if forge_name_ok(owner) && forge_name_ok(repo) => Ok(()),
            _ if loc.is_empty() => Err("missing repository: expected `OWNER/REPO` after `github:`".into()),
            _ => Err(format!(
                "invalid GitHub location `{loc}`: expected `OWNER/REPO`, each of letters, digits, \
                 `.`, `_` and `-` (and not `.` or `..`)"
            )),
        },
        Format::Gitlab => {
            let parts: Vec<&str> = loc.split('/').collect();
            if loc.is_empty() {
                Err("missing project: expected `GROUP/PROJECT` after `gitlab:`".into())
            } else if (2..=MAX_GITLAB_DEPTH).contains(&parts.len()) && parts.iter().all(|p| forge_name_ok(p)) {
                Ok(())
            } else {
                Err(format!(
                    "invalid GitLab location `{loc}`: expected `GROUP/PROJECT` or `GROUP/SUBGROUP/…/PROJECT` \
                     (at most {MAX_GITLAB_DEPTH} names), each of letters, digits, `.`, `_` and `-` (and not \
                     `.` or `..`)"
                ))
            }
        }
        Format::Sourcehut => match loc.split_once('/') {
            Some((owner, repo)) if owner.strip_prefix('~').is_some_and(forge_name_ok) && forge_name_ok(repo) => Ok(()),
            _ if loc.is_empty() => Err("missing repository: expected `~OWNER/REPO` after `sourcehut:`".into()),
            _ => Err(format!(
                "invalid SourceHut location `{loc}`: expected `~OWNER/REPO`, each of letters, digits, \
                 `.`, `_` and `-` (and not `.` or `..`) after the `~`"
            )),
        },
        Format::Tarball | Format::Git => check_url(format, loc),
    }
}

/// The most names a GitLab location has: GitLab nests subgroups 20 deep, and the project
/// is one more.
pub const MAX_GITLAB_DEPTH: usize = 21;

/// Whether `p` can be one name of a forge location (an owner, group or repository): letters,
/// digits, `.`, `_` and `-`, and not `.` or `..`.
pub fn forge_name_ok(p: &str) -> bool {
    !p.is_empty()
        && p != "."
        && p != ".."
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks that `loc` is an `http://` or `https://` URL with a host, without rewriting it.
fn check_url(format: Format, loc: &str) -> Result<(), String> {
    let bad = |what: &str| Err(format!("invalid {format} location `{loc}`: expected {what}"));
    if loc.is_empty() {
        return Err(format!(
            "missing URL: expected an `http://` or `https://` URL after `{format}:`"
        ));
    }
    let Some(rest) = loc.strip_prefix("https://").or_else(|| loc.strip_prefix("http://")) else {
        return bad("an `http://` or `https://` URL");
    };
    if loc.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("a URL without spaces or control characters");
    }
    if loc.ends_with(':') {
        // It would run into the `:` before a config or subpath: `x:` + `::/a` reads as `x`.
        return bad("a URL that does not end in `:`");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if host_port.starts_with('[') {
        match host_port.find(']') {
            Some(i) => (&host_port[..=i], host_port[i + 1..].strip_prefix(':')),
            None => return bad("a `]` closing the IPv6 address"),
        }
    } else {
        match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    let after_host = &host_port[host.len()..];
    if host.is_empty() || host == "[]" {
        return bad("a URL with a host");
    }
    if !after_host.is_empty() && port.is_none() {
        return bad("`:` and a port after the host");
    }
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return bad("a numeric port after `:`");
    }
    Ok(())
}

/// A cursor over the literal's characters; columns are `pos + 1`.
struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(c);
        self.pos += usize::from(hit);
        hit
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn text(&self, start: usize) -> String {
        self.chars[start..self.pos].iter().collect()
    }

    fn error(&self, pos: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            column: pos + 1,
            message: message.into(),
        }
    }

    /// "expected X, found `c`", or "unterminated island literal: expected X" at the end.
    fn expected(&self, pos: usize, what: &str) -> ParseError {
        match self.chars.get(pos) {
            None => self.error(pos, format!("unterminated island literal: expected {what}")),
            Some(c) => self.error(pos, format!("expected {what}, found `{}`", c.escape_debug())),
        }
    }

    fn island(mut self) -> Result<Island, ParseError> {
        if self.chars.is_empty() {
            return Err(self.error(
                0,
                "empty input: expected an island literal such as `<github:OWNER/REPO>`",
            ));
        }
        if !self.eat('<') {
            return Err(self.expected(0, "`<` to start an island literal"));
        }

        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        {
            self.pos += 1;
        }
        let name = self.text(start);
        if name.is_empty() {
            return Err(self.expected(start, &format!("a format: one of {FORMAT_LIST}")));
        }
        let Some(format) = Format::from_name(&name) else {
            return Err(self.error(start, format!("unknown format `{name}`: expected one of {FORMAT_LIST}")));
        };
        if !self.eat(':') {
            return Err(self.expected(self.pos, &format!("`:` after `{format}`")));
        }

        let start = self.pos;
        // An IPv6 literal host (`http://[::1]:8080/…`) has colons of its own: inside the
        // brackets that follow `://` or `@`, `:` and `::` separate nothing.
        let mut in_brackets = false;
        loop {
            match self.peek() {
                None => return Err(self.expected(self.pos, "`>` to close the island")),
                Some('[') if self.text(start).ends_with("://") || self.text(start).ends_with('@') => {
                    in_brackets = true;
                    self.pos += 1;
                }
                Some(']') => {
                    in_brackets = false;
                    self.pos += 1;
                }
                Some(':') if in_brackets => self.pos += 1,
                Some('>') => break,
                // An empty location (`fs`) is followed by one `:` and the path: `<fs::/path>`.
                Some(':') if self.pos == start => break,
                Some(':') if matches!(self.chars.get(self.pos + 1), Some(':' | '{')) => break,
                Some(_) => self.pos += 1,
            }
        }
        let location = self.text(start);
        check_location(format, &location).map_err(|m| self.error(start, m))?;

        let mut config = Config::default();
        let mut subpath = None;
        if self.eat(':') {
            if self.peek() == Some('{') {
                self.config(format, &mut config)?;
                if self.eat(':') {
                    subpath = Some(self.subpath(format)?);
                } else if self.peek() != Some('>') {
                    return Err(self.expected(self.pos, "`:` and a subpath, or `>` to close the island"));
                }
            } else {
                // `::` before a subpath, or a lone `:` after an empty location.
                if !location.is_empty() || self.peek() == Some(':') {
                    self.pos += 1;
                }
                subpath = Some(self.subpath(format)?);
            }
        }

        let close = self.pos;
        if !self.eat('>') {
            return Err(self.expected(close, "`>` to close the island"));
        }
        if self.pos < self.chars.len() {
            return Err(self.error(
                self.pos,
                "trailing characters after `>`: expected the island to end there",
            ));
        }
        if format == Format::Fs && subpath.is_none() {
            return Err(self.error(
                close,
                "fs islands need an absolute path: expected `<fs::/absolute/path>`",
            ));
        }
        Ok(Island {
            format,
            location,
            config,
            subpath,
        })
    }

    /// Parses `{ key = "value", … }`, starting at the `{`.
    fn config(&mut self, format: Format, config: &mut Config) -> Result<(), ParseError> {
        self.pos += 1;
        loop {
            self.skip_ws();
            if self.eat('}') {
                return Ok(());
            }
            let start = self.pos;
            while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                self.pos += 1;
            }
            let name = self.text(start);
            if name.is_empty() {
                return Err(self.expected(start, &format!("a config key ({KEY_LIST}) or `}}`")));
            }
            let Some(key) = Key::ALL.into_iter().find(|k| k.as_str() == name) else {
                return Err(self.error(
                    start,
                    format!("unknown config key `{name}`: expected one of {KEY_LIST}"),
                ));
            };
            format.check_key(key).map_err(|m| self.error(start, m))?;
            if config.has(key) {
                return Err(self.error(
                    start,
                    format!("duplicate config key `{key}`: expected each key at most once"),
                ));
            }
            self.skip_ws();
            if !self.eat('=') {
                return Err(self.expected(self.pos, &format!("`=` after `{key}`")));
            }
            self.skip_ws();
            let value_start = self.pos;
            let value = self.string()?;
            config.set(key, value).map_err(|m| self.error(value_start, m))?;
            self.skip_ws();
            if !self.eat(',') {
                if self.eat('}') {
                    return Ok(());
                }
                return Err(self.expected(self.pos, "`,` or `}`"));
            }
        }
    }

    /// Parses a double-quoted string with `\"` and `\\` escapes.
    fn string(&mut self) -> Result<String, ParseError> {
        if !self.eat('"') {
            return Err(self.expected(self.pos, "a double-quoted string"));
        }
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(self.expected(self.pos, "`\"` to end the string")),
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => match self.chars.get(self.pos + 1) {
                    Some(&c @ ('"' | '\\')) => {
                        out.push(c);
                        self.pos += 2;
                    }
                    None => return Err(self.expected(self.pos + 1, "`\"` or `\\` after `\\`")),
                    Some(c) => {
                        let message = format!("invalid escape `\\{}`: expected `\\\"` or `\\\\`", c.escape_debug());
                        return Err(self.error(self.pos, message));
                    }
                },
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// Parses the subpath after its introducing `:`, up to (not including) the closing `>`.
    fn subpath(&mut self, format: Format) -> Result<Subpath, ParseError> {
        let start = self.pos;
        if self.peek() != Some('/') {
            if format != Format::Fs {
                return Err(self.expected(start, "a subpath starting with `/`"));
            } else if self.peek().is_some_and(|c| c != '>') {
                return Err(self.error(
                    start,
                    "relative path in fs island: expected an absolute path starting with `/`",
                ));
            }
            return Err(self.expected(start, "an absolute path starting with `/`"));
        }
        while self.peek().is_some_and(|c| c != '>') {
            self.pos += 1;
        }
        if self.peek().is_none() {
            return Err(self.expected(self.pos, "`>` to close the island"));
        }
        parse_subpath(&self.chars[start..self.pos], start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex40(seed: u8) -> String {
        (0..40)
            .map(|i| char::from_digit(u32::from((seed + i) % 16), 16).unwrap())
            .collect()
    }

    fn blake() -> String {
        format!("blake3-{}", "0123456789abcdef".repeat(4))
    }

    const NAR: &str = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    fn parse(s: &str) -> Island {
        s.parse().unwrap_or_else(|e: ParseError| panic!("{}", e.render(s)))
    }

    fn round_trips(island: &Island) {
        let printed = island.to_string();
        let again = parse(&printed);
        assert_eq!(&again, island, "{printed}");
        assert_eq!(again.to_string(), printed);
    }

    #[test]
    fn examples_print_back_exactly() {
        let (rev, hash) = (hex40(3), blake());
        let examples = [
            "<github:OWNER/REPO>".to_string(),
            r#"<github:OWNER/REPO:{ ref = "v1.2" }>"#.to_string(),
            format!(r#"<github:OWNER/REPO:{{ rev = "{rev}" }}>"#),
            format!(r#"<github:o/r:{{ ref = "main", rev = "{rev}", hash = "{hash}", narHash = "{NAR}" }}>"#),
            "<tarball:https://host/x.tar.gz>".to_string(),
            format!(r#"<tarball:http://127.0.0.1:8080/x.tar.gz:{{ hash = "{hash}" }}>"#),
            r#"<git:https://host/path.git:{ ref = "main" }>"#.to_string(),
            "<fs::/absolute/path>".to_string(),
            format!(r#"<fs::{{ hash = "{hash}" }}:/absolute/path>"#),
            "<github:cull-os/cab::/cab/cab-island>".to_string(),
            format!(r#"<github:o/r:{{ rev = "{rev}" }}:/cab/cab-island>"#),
        ];
        for text in examples {
            let island = parse(&text);
            assert_eq!(island.to_string(), text);
            round_trips(&island);
        }

        let t = parse(&format!(
            r#"<tarball:http://127.0.0.1:8080/x.tar.gz:{{ hash = "{hash}" }}>"#
        ));
        assert_eq!(t.location, "http://127.0.0.1:8080/x.tar.gz");
        assert!(t.is_locked());
        let fs = parse("<fs::/absolute/path>");
        assert_eq!(
            (fs.location.as_str(), fs.fs_path()),
            ("", Some(PathBuf::from("/absolute/path")))
        );
        assert!(!fs.is_locked());
        let sub = parse("<github:cull-os/cab::/cab/cab-island>");
        assert_eq!(sub.subpath.as_ref().unwrap().names(), ["cab", "cab-island"]);
        assert_eq!(sub.fs_path(), None);
    }

    #[test]
    fn parsing_canonicalizes() {
        let (rev, hash) = (hex40(7), blake());
        let messy =
            format!("<github:o/r:{{\n\tnarHash=\"{NAR}\" ,hash = \"{hash}\",rev=\"{rev}\",  ref = \"main\" , }}:/a>");
        let island = parse(&messy);
        assert_eq!(
            island.to_string(),
            format!(r#"<github:o/r:{{ ref = "main", rev = "{rev}", hash = "{hash}", narHash = "{NAR}" }}:/a>"#)
        );
        assert!(island.is_locked());
        let unpinned = island.unpinned();
        assert_eq!(unpinned.to_string(), r#"<github:o/r:{ ref = "main" }:/a>"#);
        assert!(!unpinned.is_locked());
        assert_eq!(parse("<github:o/r:{}>").to_string(), "<github:o/r>");
        assert_eq!(parse("<fs:::/x>").to_string(), "<fs::/x>");
        assert_eq!(parse("<fs::{ }:/x>").to_string(), "<fs::/x>");
        let nix32 = parse(r#"<fs::{ narHash = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73" }:/x>"#);
        assert_eq!(nix32.to_string(), format!(r#"<fs::{{ narHash = "{NAR}" }}:/x>"#));
        assert_eq!(
            parse(r#"<git:https://h/r:{ ref = "a\"b" }>"#).config.r#ref.as_deref(),
            Some("a\"b")
        );
    }

    #[test]
    fn generated_islands_round_trip() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let ref_chars: Vec<char> = "ab/.-_\"@{}<>,=: Zé".chars().collect();
        let name_chars: Vec<char> = "ab.\"\\:{}, é-".chars().collect();
        let url_chars: Vec<char> = "ab.\"\\:{},é-%?#@".chars().collect();
        let mut tested = 0;
        for _ in 0..4000 {
            let format = Format::ALL[next(Format::ALL.len())];
            let location = match format {
                Format::Github => ["o/r", "cull-os/cab", "A.b_c/d-e.git"][next(3)].to_string(),
                Format::Gitlab => ["g/p", "group/sub/sub2/proj", "A.b/c_d/e-f.git"][next(3)].to_string(),
                Format::Sourcehut => ["~o/r", "~sir_hat/a.b-c"][next(2)].to_string(),
                Format::Tarball | Format::Git => {
                    let path: String = (0..next(6)).map(|_| url_chars[next(url_chars.len())]).collect();
                    // A location ends at the first `::` or `:{`, so it cannot contain them.
                    let mut path = path.replace("::", ":x").replace(":{", ":x");
                    if path.ends_with(':') {
                        path.push('z');
                    }
                    let host = ["h", "127.0.0.1:8080", "u@ex.com", "[fe80:1]:1"][next(4)];
                    format!("{}://{host}/{path}", ["http", "https"][next(2)])
                }
                Format::Fs => String::new(),
            };
            let mut config = Config::default();
            if format.is_forge() {
                config.host = ["gitlab.example.org", "h:8443", "127.0.0.1"][next(3)..]
                    .first()
                    .map(|h| h.to_string());
            }
            if format.has_revisions() {
                let r: String = (0..1 + next(8)).map(|_| ref_chars[next(ref_chars.len())]).collect();
                config.r#ref = (next(2) == 0 && check_ref(&r).is_ok()).then_some(r);
                config.rev = (next(2) == 0).then(|| hex40(next(16) as u8));
            }
            config.hash = (next(2) == 0).then(|| TreeHash([next(256) as u8; 32]));
            config.nar_hash = (next(2) == 0).then(|| NarHash([next(256) as u8; 32]));
            let names = (0..next(4)).map(|_| {
                let name: String = (0..1 + next(4)).map(|_| name_chars[next(name_chars.len())]).collect();
                if name == "." || name == ".." {
                    "x".to_string()
                } else {
                    name
                }
            });
            let subpath = Subpath::new(names)
                .ok()
                .or_else(|| (format == Format::Fs).then(|| Subpath::new(["tmp"]).unwrap()));
            let island = Island {
                format,
                location,
                config,
                subpath,
            };
            if island.config.r#ref.as_deref().is_some_and(|r| r.contains('"')) {
                tested += 1;
            }
            round_trips(&island);
        }
        assert!(tested > 10, "too few refs with quotes: {tested}");
    }

    #[test]
    fn strings_unescape_and_escape() {
        let mut p = Parser {
            chars: r#""a\"b\\c" rest"#.chars().collect(),
            pos: 0,
        };
        assert_eq!(p.string().unwrap(), r#"a"b\c"#);
        assert_eq!(p.pos, 9);
        struct Q(&'static str);
        impl fmt::Display for Q {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_quoted(f, self.0)
            }
        }
        assert_eq!(Q(r#"a"b\c"#).to_string(), r#""a\"b\\c""#);
    }

    #[test]
    fn malformed_islands_name_column_and_expectation() {
        let (rev, hash) = (hex40(1), blake());
        let cases: Vec<(String, usize, &[&str])> = vec![
            ("".into(), 1, &["expected an island"]),
            ("github:o/r>".into(), 1, &["expected `<`", "found `g`"]),
            (
                "<foo:o/r>".into(),
                2,
                &["unknown format `foo`", "`github`", "`tarball`", "`git`", "`fs`"],
            ),
            ("<:o/r>".into(), 2, &["expected a format", "`github`"]),
            ("<github/o/r>".into(), 8, &["expected `:` after `github`"]),
            ("<github:o/r".into(), 12, &["unterminated", "`>`"]),
            ("<github:o/r:{ ref = \"main\" }".into(), 29, &["unterminated", "`>`"]),
            ("<github:o/r::/a".into(), 16, &["unterminated", "`>`"]),
            ("<github:o/r:{ ref = \"main".into(), 26, &["unterminated", "`\"`"]),
            ("<github:o/r>x".into(), 13, &["trailing characters", "`>`"]),
            (
                "<github:o/r:{ branch = \"x\" }>".into(),
                15,
                &["unknown config key `branch`", "`narHash`"],
            ),
            (
                "<github:o/r:{ narhash = \"x\" }>".into(),
                15,
                &["unknown config key", "`narHash`"],
            ),
            (
                "<github:o/r:{ ref = \"a\", ref = \"b\" }>".into(),
                26,
                &["duplicate config key `ref`"],
            ),
            ("<github:o/r:{ ref \"a\" }>".into(), 19, &["expected `=` after `ref`"]),
            (
                "<gitlab:proj>".into(),
                9,
                &["invalid GitLab location", "`GROUP/PROJECT`"],
            ),
            (
                "<sourcehut:owner/repo>".into(),
                12,
                &["invalid SourceHut location", "`~OWNER/REPO`"],
            ),
            (
                "<tarball:https://h/x:{ host = \"h\" }>".into(),
                24,
                &["tarball islands have no `host`"],
            ),
            ("<gitlab:g/p:{ host = \"a b\" }>".into(), 22, &["invalid `host`"]),
            (
                "<gitlab:g/p:{ host = \"h:x\" }>".into(),
                22,
                &["invalid `host`", ":PORT"],
            ),
            (
                "<github:o/r:{ ref = a }>".into(),
                21,
                &["expected a double-quoted string"],
            ),
            (
                "<github:o/r:{ ref = \"a\" rev }>".into(),
                25,
                &["expected `,` or `}`", "found `r`"],
            ),
            (
                "<github:o/r:{ ref = \"a\",, }>".into(),
                25,
                &["expected a config key", "found `,`"],
            ),
            (
                "<github:o/r:{ ref = \"a\\n\" }>".into(),
                23,
                &["invalid escape `\\n`", "`\\\"`"],
            ),
            (
                "<github:o/r:{ rev = \"abc\" }>".into(),
                21,
                &["invalid `rev`", "40 lowercase hex"],
            ),
            (
                format!("<github:o/r:{{ rev = \"{}\" }}>", rev.to_uppercase()),
                21,
                &["lowercase", "not uppercase"],
            ),
            (
                "<github:o/r:{ hash = \"blake3-00\" }>".into(),
                22,
                &["invalid `hash`", "expected `blake3-`"],
            ),
            (
                "<github:o/r:{ narHash = \"md5-x\" }>".into(),
                25,
                &["invalid `narHash`", "expected `sha256-`"],
            ),
            (
                "<github:o/r:{ ref = \"\" }>".into(),
                21,
                &["invalid `ref`", "non-empty"],
            ),
            (
                "<github:o/r:{ ref = \"a b\" }>".into(),
                21,
                &["invalid `ref`", "spaces"],
            ),
            ("<github:o/r:{ ref = \"a..b\" }>".into(), 21, &["`..`"]),
            (
                "<github:o/r:{ ref = \"a\\\\b\" }>".into(),
                21,
                &["invalid `ref`", "`~^:?*[\\`"],
            ),
            ("<github:o/r:{ ref = \"a^b\" }>".into(), 21, &["`~^:?*[\\`"]),
            (
                "<github:o/r:{ ref = \"/a\" }>".into(),
                21,
                &["start or end with `/` or `.`"],
            ),
            (
                "<github:o/r:{ ref = \"a.\" }>".into(),
                21,
                &["start or end with `/` or `.`"],
            ),
            ("<github:o/r:{ ref = \"a//b\" }>".into(), 21, &["`//`"]),
            ("<github:o/r:{ ref = \"a.lock\" }>".into(), 21, &["`.lock`"]),
            ("<github:o/r:{ ref = \"a@{b\" }>".into(), 21, &["`@{`"]),
            (
                "<github:o/r:{ ref = \"main\" }x>".into(),
                29,
                &["expected `:` and a subpath, or `>`"],
            ),
            (
                "<fs:/abs>".into(),
                5,
                &["fs islands have an empty location", "<fs::/absolute/path>"],
            ),
            (
                "<fs::rel/path>".into(),
                6,
                &["relative path", "absolute path starting with `/`"],
            ),
            (
                format!("<fs::{{ hash = \"{hash}\" }}:rel>"),
                91,
                &["relative path", "absolute"],
            ),
            ("<fs:>".into(), 5, &["fs islands need an absolute path"]),
            ("<fs::>".into(), 6, &["expected an absolute path", "found `>`"]),
            (
                format!("<fs::{{ hash = \"{hash}\" }}>"),
                90,
                &["fs islands need an absolute path"],
            ),
            ("<tarball:https://h/x:>".into(), 10, &["not end in `:`"]),
            (
                "<fs::{ rev = \"x\" }:/a>".into(),
                8,
                &["fs islands have no `rev`", "expected `hash` or `narHash`"],
            ),
            (
                "<tarball:https://h/x:{ rev = \"x\" }>".into(),
                24,
                &[
                    "tarball islands have no `rev`: a tarball URL names one tree",
                    "`hash` or `narHash`",
                ],
            ),
            (
                "<tarball:https://h/x:{ ref = \"x\" }>".into(),
                24,
                &["tarball islands have no `ref`"],
            ),
            ("<github:o/r::/a//b>".into(), 17, &["empty name", "expected a name"]),
            (
                "<github:o/r::/a/./b>".into(),
                17,
                &["`.` or `..`", "expected a plain name"],
            ),
            ("<github:o/r::/..>".into(), 15, &["`.` or `..`"]),
            ("<github:o/r::/a/>".into(), 16, &["trailing `/`", "expected a name"]),
            (
                "<github:o/r::>".into(),
                14,
                &["expected a subpath starting with `/`", "found `>`"],
            ),
            ("<github:o/r::a>".into(), 14, &["expected a subpath starting with `/`"]),
            ("<github:>".into(), 9, &["expected `OWNER/REPO`"]),
            (
                "<github:owner>".into(),
                9,
                &["invalid GitHub location `owner`", "`OWNER/REPO`"],
            ),
            ("<github:o/r/x>".into(), 9, &["`OWNER/REPO`"]),
            ("<github:o/..>".into(), 9, &["`OWNER/REPO`"]),
            ("<github:o/r:>".into(), 9, &["`OWNER/REPO`"]),
            ("<github:o$/r>".into(), 9, &["`OWNER/REPO`"]),
            (
                "<tarball:ftp://h/x>".into(),
                10,
                &["invalid tarball location", "`http://` or `https://` URL"],
            ),
            ("<git:https:///x>".into(), 6, &["invalid git location", "a host"]),
            ("<git:https://h:port/x>".into(), 6, &["numeric port"]),
            ("<git:https://h x/y>".into(), 6, &["without spaces"]),
            ("<tarball:>".into(), 10, &["missing URL", "`http://`"]),
        ];
        for (input, column, words) in cases {
            let err = input.parse::<Island>().expect_err(&input);
            let rendered = err.render(&input);
            assert_eq!(err.column, column, "{input}: {rendered}");
            for word in words {
                assert!(err.message.contains(word), "{input}: {err} lacks {word:?}");
            }
        }
    }

    #[test]
    fn errors_render_with_a_caret() {
        let err = "<github:o/r:{ rev = \"x\" }>".parse::<Island>().unwrap_err();
        assert_eq!(err.to_string(), format!("column 21: {}", err.message));
        assert_eq!(
            err.render("<github:o/r:{ rev = \"x\" }>"),
            format!("{err}\n  <github:o/r:{{ rev = \"x\" }}>\n                      ^")
        );
        let input = "<github:o/r:{\n\tref = \"a..b\" }>";
        let err = input.parse::<Island>().unwrap_err();
        assert_eq!(err.render(input), format!("{err}\n  \tref = \"a..b\" }}>\n  \t      ^"));
        let end = "<github:o/r".parse::<Island>().unwrap_err();
        assert!(end.render("<github:o/r").ends_with("\n  <github:o/r\n             ^"));
    }

    #[test]
    fn huge_literals_are_refused_and_rendered_small() {
        let owner = "o".repeat(1_000_000);
        let input = format!("<github:{owner}/r>");
        let err = input.parse::<Island>().unwrap_err();
        assert!(err.message.contains("at most 8192 bytes"), "{}", err.message);
        assert_eq!(err.column, MAX_LITERAL_LEN + 1);
        let rendered = err.render(&input);
        assert!(rendered.len() < 400, "{} bytes", rendered.len());
        assert!(rendered.contains("…"), "{rendered}");
        assert!(rendered.ends_with('^'), "{rendered}");
        let just_fits = format!("<tarball:https://h/{}>", "a".repeat(MAX_LITERAL_LEN - 20));
        assert_eq!(just_fits.len(), MAX_LITERAL_LEN);
        assert!(just_fits.parse::<Island>().is_ok());
        assert_eq!(shorten("short"), "short");
        assert!(shorten(&owner).len() < 200);
    }

    #[test]
    fn subpaths_and_formats() {
        let s = Subpath::parse("/a/b c").unwrap();
        assert_eq!(
            (s.names(), s.to_string().as_str()),
            (&["a".to_string(), "b c".to_string()][..], "/a/b c")
        );
        assert_eq!("/a/b".parse::<Subpath>().unwrap(), Subpath::new(["a", "b"]).unwrap());
        assert_eq!(Subpath::parse("a").unwrap_err().column, 1);
        assert_eq!(Subpath::parse("/a>b").unwrap_err().column, 3);
        for bad in [&[][..], &[""], &["."], &[".."], &["a/b"], &["a>"], &["a\0"]] {
            assert!(Subpath::new(bad.iter().copied()).is_err(), "{bad:?}");
        }
        for f in Format::ALL {
            assert_eq!(f.to_string().parse::<Format>().unwrap(), f);
        }
        assert!("GitHub".parse::<Format>().unwrap_err().message.contains("`fs`"));
    }

    #[test]
    fn ipv6_literal_hosts() {
        for text in [
            "<tarball:http://[::1]:8080/x.tar.gz>",
            "<tarball:http://[::1]/x.tar.gz::/sub>",
            "<git:https://user@[2001:db8::1]:443/r.git:{ ref = \"main\" }>",
            "<tarball:http://[::1]:8080/x.tar.gz:{ narHash = \"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\" }:/a>",
        ] {
            let island = text
                .parse::<Island>()
                .unwrap_or_else(|e| panic!("{text}: {}", e.render(text)));
            assert!(island.location.contains("]"), "{text}: {}", island.location);
            assert_eq!(island.to_string(), text);
            round_trips(&island);
        }
        let island: Island = "<tarball:http://[::1]:8080/x.tar.gz::/sub>".parse().unwrap();
        assert_eq!(island.location, "http://[::1]:8080/x.tar.gz");
        assert_eq!(island.subpath.unwrap().to_string(), "/sub");
        assert!(
            "<tarball:http://[::1/x>"
                .parse::<Island>()
                .unwrap_err()
                .message
                .contains("`]`")
        );
    }
}
