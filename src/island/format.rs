//! Formats: which kinds of source an island can name, what each one's location looks like, and
//! which config keys each takes.

use std::fmt;
use std::str::FromStr;

use super::config::Key;
use super::parse::ParseError;

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

    /// The format a literal names by `name`, if any.
    pub(super) fn from_name(name: &str) -> Option<Format> {
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
    pub(super) fn check_key(self, key: Key) -> Result<(), String> {
        if key == Key::Host {
            if self.is_forge() {
                return Ok(());
            }
            return Err(format!(
                "{self} islands have no `host`: only `github`, `gitlab` and `sourcehut` name a forge by host"
            ));
        }
        if key == Key::Requires {
            if self == Format::Fs {
                return Err("fs islands have no `requires`: a local path is read where it is".into());
            }
            return Ok(());
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

/// The formats, as error messages list them.
pub(super) const FORMAT_LIST: &str = "`github`, `gitlab`, `sourcehut`, `tarball`, `git` or `fs`";

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

/// Checks a location's shape for its format.
pub(super) fn check_location(format: Format, loc: &str) -> Result<(), String> {
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
