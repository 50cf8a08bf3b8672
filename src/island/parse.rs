//! Parsing: text into an [`Island`], and when it is not one, a [`ParseError`] with the column
//! to blame and what was expected there. The checks of values with rules of their own (git's
//! ref names, commit ids, host names) are here too: a value is checked only as it is parsed.

use std::fmt;

use super::Island;
use super::config::{Config, KEY_LIST, Key};
use super::format::{FORMAT_LIST, Format, check_location};
use super::subpath::{Subpath, parse_subpath};

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
pub(super) fn check_ref(r: &str) -> Result<(), String> {
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
pub(super) fn check_host(host: &str) -> Result<(), String> {
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
pub(super) fn check_rev(r: &str) -> Result<(), String> {
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

/// A cursor over the literal's characters; columns are `pos + 1`.
pub(super) struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    /// A parser at the start of `s`.
    pub(super) fn new(s: &str) -> Parser {
        Parser {
            chars: s.chars().collect(),
            pos: 0,
        }
    }

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

    /// Parses the whole input as one island literal.
    pub(super) fn island(mut self) -> Result<Island, ParseError> {
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
    use super::super::config::write_quoted;
    use super::super::tests::{blake, hex40, round_trips};
    use super::*;

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
