//! The git attributes that change what `git archive` exports (gitattributes(5)):
//! `export-ignore` leaves a path out, `export-subst` expands `$Format:…$` placeholders in a
//! file, and `ident`, `text`, `eol` (and the older `crlf`) change a file's bytes as git's
//! checkout does (see [`crate::convert`]). GitHub's archives, `git archive` and Nix's
//! `builtins.fetchGit` all apply them, so a git island applies them too, and `<github:X>` and
//! `<git:…/X.git>` give one tree.
//!
//! As `git archive` reads them: from the `.gitattributes` files of the tree being exported
//! (not the fetcher's own configuration, which it has none of). A path's attributes come from
//! the files of its directory and every directory above, the deepest first and, within a
//! file, the last matching line first; the first value found for an attribute wins. Patterns
//! are gitignore's: a pattern without `/` matches a name at any depth below its file's
//! directory, one with `/` the path from there; a trailing `/` matches only directories; `*`
//! and `?` stop at `/`, `**` crosses it, `[…]` is a set. Macros (`[attr]name …`) are read from
//! the top-level file only, as git does, and git's own `binary` (`-diff -merge -text`) is one
//! unless that file redefines it. A line naming an attribute git would not accept (`a@b`,
//! `--x`, `builtin_…`) is ignored whole, as git ignores it. A directory that is
//! export-ignored goes with all it holds.

use crate::convert::Eol;
use crate::prelude::*;

/// What a line says of an attribute: set, unset (`-a`), back to unspecified (`!a`), or a value
/// (`a=v`). Only a plain `a` sets `export-ignore`, `export-subst` and `ident`: with a value
/// they do nothing, as in git.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `a`.
    Set,
    /// `-a`.
    Unset,
    /// `!a`.
    Unspecified,
    /// `a=v`.
    Value(Value),
}

/// The values that mean something to the attributes read here; any other is [`Value::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    /// `text=auto`, `crlf=auto`.
    Auto,
    /// `text=input`, `crlf=input`.
    Input,
    /// `eol=lf`.
    Lf,
    /// `eol=crlf`.
    Crlf,
    /// Anything else.
    Other,
}

/// The attributes read, in the order of [`Found::states`].
const NAMES: [&[u8]; 6] = [b"export-ignore", b"export-subst", b"ident", b"text", b"eol", b"crlf"];
const IGNORE: usize = 0;
const SUBST: usize = 1;
const IDENT: usize = 2;
const TEXT: usize = 3;
const EOL: usize = 4;
const CRLF: usize = 5;

/// One piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// This byte.
    Byte(u8),
    /// `?`: one byte, not `/`.
    One,
    /// `*`: any bytes but `/`.
    Star,
    /// `**` at the end, after `/`: anything at all.
    All,
    /// `**/` at the start or after `/`: nothing, or anything ending in `/`.
    Dirs,
    /// `[…]`: one byte (not `/`) in the set (negated: not in it), a bit per byte.
    Set { negated: bool, bits: [u64; 4] },
}

/// A pattern of a `.gitattributes` line.
#[derive(Debug, Clone)]
struct Pattern {
    tokens: Vec<Token>,
    /// No `/` in it: it matches the last name of a path.
    basename: bool,
    /// It ended in `/`: only directories.
    dir_only: bool,
}

/// One line: a pattern and what it says of each attribute it names.
#[derive(Debug, Clone)]
struct Rule {
    pattern: Pattern,
    attrs: Vec<(Vec<u8>, State)>,
}

/// A macro: its name and what it stands for.
type Macro = (Vec<u8>, Vec<(Vec<u8>, State)>);

/// The rules of one `.gitattributes` file, and the macros it defines.
#[derive(Debug, Clone, Default)]
pub struct File {
    rules: Vec<Rule>,
    macros: Vec<Macro>,
}

/// The attributes `git archive` acts on, for one path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Export {
    /// Left out of the archive.
    pub ignore: bool,
    /// `$Format:…$` expanded.
    pub subst: bool,
    /// `$Id$` expanded.
    pub ident: bool,
    /// What becomes of the line endings.
    pub eol: Eol,
}

/// Git's limits on attribute files: longer lines are ignored (`ATTR_MAX_LINE_LENGTH`).
const MAX_LINE: usize = 2048;
/// What separates words on a line (git's `blank`).
const BLANK: &[u8] = b" \t\r";

/// Parses a `.gitattributes` file; `top` for the tree's top-level one (macros are read there
/// only). Lines git would ignore (negative patterns, bad names, too long) are ignored.
pub fn parse(data: &[u8], top: bool) -> File {
    let mut file = File::default();
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE {
            continue;
        }
        let line = trim_start(line);
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let (pattern, rest) = split_pattern(line);
        let Some(attrs) = states(rest) else {
            continue;
        };
        if let Some(name) = pattern.strip_prefix(b"[attr]") {
            if top && valid(name) {
                file.macros.push((name.to_vec(), attrs));
            }
            continue;
        }
        if pattern.starts_with(b"!") {
            continue; // "Negative patterns are ignored in git attributes."
        }
        if let Some(pattern) = compile(&pattern) {
            file.rules.push(Rule { pattern, attrs });
        }
    }
    file
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| BLANK.contains(b)).count();
    s.get(n..).unwrap_or_default()
}

/// The pattern (C-quoted if it starts with `"`) and the rest of the line.
fn split_pattern(line: &[u8]) -> (Vec<u8>, &[u8]) {
    if let Some(quoted) = line.strip_prefix(b"\"") {
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(&b) = quoted.get(i) {
            i += 1;
            match b {
                b'"' => return (out, quoted.get(i..).unwrap_or_default()),
                b'\\' => {
                    let c = quoted.get(i).copied().unwrap_or(b'\\');
                    i += 1;
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'a' => 7,
                        b'b' => 8,
                        b'f' => 12,
                        b'r' => b'\r',
                        b'v' => 11,
                        b'0'..=b'3' => {
                            let digits = [
                                c,
                                quoted.get(i).copied().unwrap_or(0),
                                quoted.get(i + 1).copied().unwrap_or(0),
                            ];
                            i += 2;
                            digits
                                .iter()
                                .fold(0u8, |v, d| v.wrapping_mul(8).wrapping_add(d.wrapping_sub(b'0')))
                        }
                        other => other,
                    });
                }
                other => out.push(other),
            }
        }
        // An unterminated quote: git takes the line as it is.
    }
    let end = line.iter().position(|b| BLANK.contains(b)).unwrap_or(line.len());
    (
        line.get(..end).unwrap_or_default().to_vec(),
        line.get(end..).unwrap_or_default(),
    )
}

/// `a -b !c d=v`: each attribute and its state; `None` if a name is one git refuses, which
/// makes git ignore the whole line. (`-a=v` and `!a=v` are `-a` and `!a`.)
fn states(rest: &[u8]) -> Option<Vec<(Vec<u8>, State)>> {
    let mut out = Vec::new();
    for word in rest.split(|b| BLANK.contains(b)).filter(|w| !w.is_empty()) {
        let equals = word.iter().position(|&b| b == b'=');
        let head = word.get(..equals.unwrap_or(word.len())).unwrap_or(word);
        let (state, name) = match head.split_first() {
            Some((b'-', name)) => (State::Unset, name),
            Some((b'!', name)) => (State::Unspecified, name),
            _ => match equals.and_then(|at| word.get(at + 1..)) {
                Some(v) => (State::Value(value(v)), head),
                None => (State::Set, head),
            },
        };
        if !valid(name) {
            return None;
        }
        out.push((name.to_vec(), state));
    }
    Some(out)
}

fn value(v: &[u8]) -> Value {
    match v {
        b"auto" => Value::Auto,
        b"input" => Value::Input,
        b"lf" => Value::Lf,
        b"crlf" => Value::Crlf,
        _ => Value::Other,
    }
}

/// An attribute name git accepts: `[-A-Za-z0-9_.]`, not starting with `-`, and not in the
/// `builtin_` namespace git keeps for itself.
fn valid(name: &[u8]) -> bool {
    !name.is_empty()
        && !name.starts_with(b"-")
        && !name.starts_with(b"builtin_")
        && name.iter().all(|&b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Turns a pattern into tokens; `None` for one that can match nothing (empty).
fn compile(text: &[u8]) -> Option<Pattern> {
    let dir_only = text.ends_with(b"/");
    let text = text.strip_suffix(b"/").unwrap_or(text);
    let basename = !text.contains(&b'/');
    let text = text.strip_prefix(b"/").unwrap_or(text);
    if text.is_empty() {
        return None;
    }
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        i += 1;
        match b {
            b'?' => tokens.push(Token::One),
            b'*' => {
                let start = i - 1;
                while text.get(i) == Some(&b'*') {
                    i += 1;
                }
                let after_slash = start == 0 || text.get(start - 1) == Some(&b'/');
                if i - start >= 2 && after_slash && text.get(i) == Some(&b'/') {
                    tokens.push(Token::Dirs);
                    i += 1;
                } else if i - start >= 2 && after_slash && i == text.len() {
                    tokens.push(Token::All);
                } else {
                    tokens.push(Token::Star);
                }
            }
            b'[' => match set(text, i) {
                Some((token, next)) => {
                    tokens.push(token);
                    i = next;
                }
                None => tokens.push(Token::Byte(b'[')),
            },
            b'\\' => {
                tokens.push(Token::Byte(text.get(i).copied().unwrap_or(b'\\')));
                i += 1;
            }
            other => tokens.push(Token::Byte(other)),
        }
    }
    Some(Pattern {
        tokens,
        basename,
        dir_only,
    })
}

/// A `[…]` set starting after the `[` at `i`; the token and where the pattern goes on.
fn set(text: &[u8], mut i: usize) -> Option<(Token, usize)> {
    let mut bits = [0u64; 4];
    let mut add = |c: u8| {
        if let Some(word) = bits.get_mut(usize::from(c >> 6)) {
            *word |= 1 << (c & 63);
        }
    };
    let negated = matches!(text.get(i), Some(b'!' | b'^'));
    if negated {
        i += 1;
    }
    let mut first = true;
    loop {
        let b = *text.get(i)?;
        if b == b']' && !first {
            return Some((Token::Set { negated, bits }, i + 1));
        }
        first = false;
        if b == b'[' && text.get(i + 1) == Some(&b':') {
            let end = text.get(i + 2..)?.windows(2).position(|w| w == b":]")? + i + 2;
            let class = text.get(i + 2..end)?;
            (0..=255u8).filter(|&c| class_has(class, c)).for_each(&mut add);
            i = end + 2;
            continue;
        }
        let lo = if b == b'\\' {
            i += 1;
            *text.get(i)?
        } else {
            b
        };
        i += 1;
        let mut hi = lo;
        if text.get(i) == Some(&b'-') && text.get(i + 1).is_some_and(|&c| c != b']') {
            hi = *text.get(i + 1)?;
            if hi == b'\\' {
                hi = *text.get(i + 2)?;
                i += 1;
            }
            i += 2;
        }
        (lo..=hi).for_each(&mut add);
    }
}

fn class_has(class: &[u8], c: u8) -> bool {
    match class {
        b"alnum" => c.is_ascii_alphanumeric(),
        b"alpha" => c.is_ascii_alphabetic(),
        b"blank" => c == b' ' || c == b'\t',
        b"cntrl" => c.is_ascii_control(),
        b"digit" => c.is_ascii_digit(),
        b"graph" => c.is_ascii_graphic(),
        b"lower" => c.is_ascii_lowercase(),
        b"print" => c.is_ascii_graphic() || c == b' ',
        b"punct" => c.is_ascii_punctuation(),
        b"space" => c.is_ascii_whitespace() || c == 11,
        b"upper" => c.is_ascii_uppercase(),
        b"xdigit" => c.is_ascii_hexdigit(),
        _ => false,
    }
}

/// Whether `tokens` match all of `text`. A table over (token, position), filled from the end,
/// so no pattern takes more than tokens × bytes steps whatever its stars.
fn matches(tokens: &[Token], text: &[u8]) -> bool {
    let n = text.len();
    // `next[j]`: tokens i+1.. match text[j..]; `here[j]`: tokens i.. do.
    let mut next = vec![false; n + 1];
    if let Some(last) = next.get_mut(n) {
        *last = true;
    }
    let mut here = vec![false; n + 1];
    for token in tokens.iter().rev() {
        // For `Dirs`: whether some `/` at k >= j has next[k + 1].
        let mut slash_then_next = false;
        for j in (0..=n).rev() {
            let at = text.get(j).copied();
            let after = |k: usize| next.get(k).copied().unwrap_or(false);
            let later = here.get(j + 1).copied().unwrap_or(false);
            let value = match token {
                Token::Byte(b) => at == Some(*b) && after(j + 1),
                Token::One => at.is_some_and(|c| c != b'/') && after(j + 1),
                Token::Set { negated, bits } => {
                    let has = |c: u8| bits.get(usize::from(c >> 6)).is_some_and(|w| w >> (c & 63) & 1 == 1);
                    at.is_some_and(|c| c != b'/' && has(c) != *negated) && after(j + 1)
                }
                Token::Star => after(j) || (at.is_some_and(|c| c != b'/') && later),
                Token::All => after(j) || (at.is_some() && later),
                Token::Dirs => {
                    if at == Some(b'/') && after(j + 1) {
                        slash_then_next = true;
                    }
                    after(j) || slash_then_next
                }
            };
            if let Some(slot) = here.get_mut(j) {
                *slot = value;
            }
        }
        core::mem::swap(&mut next, &mut here);
    }
    next.first().copied().unwrap_or(false)
}

impl Pattern {
    /// Whether the pattern, from a file in directory `base`, matches `path` (a directory if
    /// `dir`).
    fn hits(&self, base: &[u8], path: &[u8], dir: bool) -> bool {
        if self.dir_only && !dir {
            return false;
        }
        if self.basename {
            let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
            return matches(&self.tokens, name);
        }
        let rel = if base.is_empty() {
            Some(path)
        } else {
            path.strip_prefix(base).and_then(|r| r.strip_prefix(b"/"))
        };
        rel.is_some_and(|rel| matches(&self.tokens, rel))
    }
}

/// The attribute files of a tree, by directory (`""` for the top).
#[derive(Debug, Default)]
pub struct Attributes {
    files: Vec<(Vec<u8>, File)>,
    /// Whether any file has a rule: if none does, there is nothing to look up.
    any: bool,
}

impl Attributes {
    /// Adds directory `dir`'s `.gitattributes`.
    pub fn add(&mut self, dir: &[u8], data: &[u8]) {
        let file = parse(data, dir.is_empty());
        self.any |= !file.rules.is_empty();
        self.files.push((dir.to_vec(), file));
    }

    /// Whether directory `dir`'s file was added.
    pub fn has(&self, dir: &[u8]) -> bool {
        self.file(dir).is_some()
    }

    /// What applies to `path` (a directory if `dir`).
    pub fn export(&self, path: &[u8], dir: bool) -> Export {
        if !self.any {
            return Export::default();
        }
        let found = self.lookup(path, dir).states;
        let set = |i: usize| found.get(i).copied().flatten() == Some(State::Set);
        // git's "crlf action": `text`, or else the older `crlf`, which say the same things.
        let action = |i: usize| {
            found
                .get(i)
                .copied()
                .flatten()
                .filter(|s| matches!(s, State::Set | State::Unset | State::Value(Value::Auto | Value::Input)))
        };
        let text = action(TEXT).or_else(|| action(CRLF));
        // With a server's defaults only `eol=crlf` writes CRLF, unless the file is `-text`.
        let eol = match (found.get(EOL).copied().flatten(), text) {
            (_, Some(State::Unset)) => Eol::Keep,
            (Some(State::Value(Value::Crlf)), Some(State::Value(Value::Auto))) => Eol::Auto,
            (Some(State::Value(Value::Crlf)), _) => Eol::Crlf,
            _ => Eol::Keep,
        };
        Export {
            ignore: set(IGNORE),
            subst: set(SUBST),
            ident: set(IDENT),
            eol,
        }
    }

    /// The first state found for each attribute of [`NAMES`], for `path`.
    fn lookup(&self, path: &[u8], dir: bool) -> Found {
        let macros = self.file(b"").map(|f| &f.macros[..]).unwrap_or_default();
        let mut found = Found::default();
        // The files of the directories above `path`, deepest first.
        let mut end = path.len();
        loop {
            // The next directory up: what comes before the last `/` before `end`, or the top.
            end = path
                .get(..end)
                .and_then(|p| p.iter().rposition(|&b| b == b'/'))
                .unwrap_or(0);
            let base = path.get(..end).unwrap_or_default();
            for rule in self.file(base).map(|f| &f.rules[..]).unwrap_or_default().iter().rev() {
                if rule.pattern.hits(base, path, dir) {
                    found.take(&rule.attrs, macros, 0);
                    if found.states.iter().all(Option::is_some) {
                        return found;
                    }
                }
            }
            if end == 0 {
                return found;
            }
        }
    }

    fn file(&self, dir: &[u8]) -> Option<&File> {
        self.files.iter().find(|(d, _)| d == dir).map(|(_, f)| f)
    }
}

/// The first state found for each attribute, and the macros already expanded.
#[derive(Default)]
struct Found {
    /// By the index of the attribute's name in [`NAMES`].
    states: [Option<State>; 6],
    seen_macros: Vec<Vec<u8>>,
}

impl Found {
    /// Takes a line's attributes, the last first (as git does), expanding macros that are set.
    fn take(&mut self, attrs: &[(Vec<u8>, State)], macros: &[Macro], depth: usize) {
        for (name, state) in attrs.iter().rev() {
            if let Some(slot) = NAMES
                .iter()
                .position(|n| n == name)
                .and_then(|i| self.states.get_mut(i))
            {
                slot.get_or_insert(*state);
                continue;
            }
            if self.seen_macros.contains(name) || depth > 8 {
                continue;
            }
            self.seen_macros.push(name.clone());
            if *state != State::Set {
                continue;
            }
            match macros.iter().rev().find(|(m, _)| m == name) {
                Some((_, expansion)) => self.take(expansion, macros, depth + 1),
                // git's own macro; `-diff -merge` mean nothing to an archive.
                None if name == b"binary" => {
                    if let Some(text) = self.states.get_mut(TEXT) {
                        text.get_or_insert(State::Unset);
                    }
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
