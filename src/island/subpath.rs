//! Subpaths: the part of a tree an island stands for (`<github:o/r::/a/b>`), and for `fs`
//! islands the absolute path. The name rules here are what keep a subpath from climbing out of
//! its tree or ending the literal early, whether it was parsed or built from names.

use std::fmt;
use std::str::FromStr;

use super::parse::ParseError;

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
pub(super) fn parse_subpath(chars: &[char], offset: usize) -> Result<Subpath, ParseError> {
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
