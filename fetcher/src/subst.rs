//! `export-subst`: what `git archive` writes for `$Format:…$` in a file with that attribute —
//! the text between the colon and the next `$` expanded as `git log --format` would expand it
//! for the exported commit (gitattributes(5), git-log(1) "PRETTY FORMATS").
//!
//! Expanded from the commit itself: hashes (`%H %h %T %t %P %p`), author and committer (`%an
//! %ae %al %ad %aD %ai %aI %as %at`, the same with `c`; `%aN %aE %aL`, which would go through
//! a mailmap, as without one), the message (`%s %f %b %B %e`), `%n %% %x..` and `%m`.
//! Abbreviated hashes are 7 digits, git's shortest, since a shallow fetch cannot know how
//! many objects the repository has (git lengthens them past 8,192 objects, and to stay
//! unique). What depends on the repository that exports rather than on the commit — ref names
//! (`%d %D %S`), relative dates (`%ar %ah`), notes, signatures, `%(describe)` — expands to
//! nothing: each git host would expand it differently, and a pinned tree must not change.
//! Colours, wrapping and padding (`%C… %w(…) %<(…)`) are dropped, as with no terminal.

use crate::prelude::*;
use crate::sha1::hex;

/// A person line of a commit: name, email, time, and time zone as `+hhmm` minutes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Person {
    name: Vec<u8>,
    email: Vec<u8>,
    time: i64,
    /// The offset from UTC in minutes.
    offset: i64,
}

/// What `%…` placeholders are expanded from. Bytes throughout (and byte searches only: the
/// standard library's substring search would cost more than all of this).
#[derive(Debug, Clone, Default)]
pub struct Commit {
    id: String,
    tree: Vec<u8>,
    parents: Vec<Vec<u8>>,
    author: Person,
    committer: Person,
    encoding: Vec<u8>,
    message: Vec<u8>,
}

/// Where `needle` first is in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Commit {
    /// Parses commit `id`'s object data; `None` if it is not a commit git would write.
    pub fn parse(id: &[u8; 20], data: &[u8]) -> Option<Commit> {
        let split = find(data, b"\n\n");
        let head = split.map_or(data, |at| data.get(..at).unwrap_or_default());
        let mut commit = Commit {
            id: hex(id),
            message: split
                .map_or(&[][..], |at| data.get(at + 2..).unwrap_or_default())
                .to_vec(),
            ..Commit::default()
        };
        for line in head.split(|&b| b == b'\n') {
            let space = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
            let (key, value) = (
                line.get(..space).unwrap_or_default(),
                line.get(space + 1..).unwrap_or_default(),
            );
            match key {
                b"tree" => commit.tree = value.to_vec(),
                b"parent" => commit.parents.push(value.to_vec()),
                b"author" => commit.author = person(value)?,
                b"committer" => commit.committer = person(value)?,
                b"encoding" => commit.encoding = value.to_vec(),
                _ => {}
            }
        }
        Some(commit)
    }

    /// `data` with every `$Format:…$` expanded.
    pub fn substitute(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        let mut rest = data;
        while let Some(at) = find(rest, b"$Format:") {
            let after = rest.get(at + 8..).unwrap_or_default();
            let Some(end) = after.iter().position(|&b| b == b'$') else {
                break;
            };
            out.extend_from_slice(rest.get(..at).unwrap_or_default());
            self.format(after.get(..end).unwrap_or_default(), &mut out);
            rest = after.get(end + 1..).unwrap_or_default();
        }
        out.extend_from_slice(rest);
        out
    }

    /// Expands one format.
    fn format(&self, fmt: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while let Some(&b) = fmt.get(i) {
            i += 1;
            if b != b'%' {
                out.push(b);
                continue;
            }
            // `%+x`: a newline before, if not empty; `%-x`: the newlines before go, if empty;
            // `% x`: a space before, if not empty.
            let modifier = fmt.get(i).copied().filter(|m| b"+- ".contains(m));
            if modifier.is_some() {
                i += 1;
            }
            let mut expanded = Vec::new();
            let used = self.placeholder(fmt.get(i..).unwrap_or_default(), &mut expanded);
            if used == 0 {
                // Not a placeholder: kept as written.
                out.push(b'%');
                out.extend(modifier);
                continue;
            }
            i += used;
            match modifier {
                Some(b'+') if !expanded.is_empty() => out.push(b'\n'),
                Some(b' ') if !expanded.is_empty() => out.push(b' '),
                Some(b'-') if expanded.is_empty() => {
                    while out.last() == Some(&b'\n') {
                        out.pop();
                    }
                }
                _ => {}
            }
            out.extend_from_slice(&expanded);
        }
    }

    /// Expands the placeholder at the start of `p` (after its `%`) into `out`; returns how
    /// many bytes it was, 0 if it is none.
    fn placeholder(&self, p: &[u8], out: &mut Vec<u8>) -> usize {
        let Some(&c) = p.first() else { return 0 };
        let short = |id: &[u8]| id.get(..7).unwrap_or(id).to_vec();
        let list = |ids: &mut dyn Iterator<Item = Vec<u8>>| ids.collect::<Vec<_>>().join(&b' ');
        match c {
            b'H' => out.extend_from_slice(self.id.as_bytes()),
            b'h' => out.extend(short(self.id.as_bytes())),
            b'T' => out.extend_from_slice(&self.tree),
            b't' => out.extend(short(&self.tree)),
            b'P' => out.extend(list(&mut self.parents.iter().cloned())),
            b'p' => out.extend(list(&mut self.parents.iter().map(|p| short(p)))),
            b'a' | b'c' => {
                let who = if c == b'a' { &self.author } else { &self.committer };
                return match p.get(1).and_then(|&what| person_field(who, what, out)) {
                    Some(()) => 2,
                    None => 0,
                };
            }
            b's' => out.extend(self.subject()),
            b'f' => out.extend(sanitized(
                self.message.split(|&b| b == b'\n').next().unwrap_or_default(),
            )),
            b'b' => out.extend_from_slice(self.body()),
            b'B' => out.extend_from_slice(&self.message),
            b'e' => out.extend_from_slice(&self.encoding),
            b'n' => out.push(b'\n'),
            b'%' => out.push(b'%'),
            b'm' => out.push(b'>'),
            // What the exporting repository, not the commit, would decide.
            b'd' | b'D' | b'S' | b'N' => {}
            b'G' | b'g' => return if p.len() >= 2 { 2 } else { 0 },
            b'x' => {
                let digit = |i: usize| p.get(i).and_then(|&d| char::from(d).to_digit(16));
                return match (digit(1), digit(2)) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        3
                    }
                    _ => 0,
                };
            }
            b'C' => {
                // %Cred, %Cgreen, %Cblue, %Creset, %C(…): colours, off with no terminal.
                for name in [&b"red"[..], b"green", b"blue", b"reset"] {
                    if p.get(1..).is_some_and(|r| r.starts_with(name)) {
                        return 1 + name.len();
                    }
                }
                return parenthesized(p.get(1..).unwrap_or_default()).map_or(0, |n| 1 + n);
            }
            b'w' | b'<' | b'>' => {
                // Wrapping and padding: %w(…), %<(…), %<|(…), %>(…), %>>(…), %><(…).
                let after = p.get(1..).unwrap_or_default();
                let extra = usize::from(matches!(after.first(), Some(b'|' | b'>' | b'<')));
                return parenthesized(after.get(extra..).unwrap_or_default()).map_or(0, |n| 1 + extra + n);
            }
            b'(' => return parenthesized(p).unwrap_or(0),
            _ => return 0,
        }
        1
    }

    /// The first paragraph of the message, its lines joined by spaces.
    fn subject(&self) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        for line in self.message.split(|&b| b == b'\n') {
            let line = line.trim_ascii_end();
            if line.trim_ascii().is_empty() {
                break;
            }
            if !out.is_empty() {
                out.push(b' ');
            }
            out.extend_from_slice(line);
        }
        out
    }

    /// The message after the subject's paragraph and the blank lines after it.
    fn body(&self) -> &[u8] {
        let msg = &self.message[..];
        let (mut at, mut in_subject) = (0, true);
        for line in msg.split_inclusive(|&b| b == b'\n') {
            let blank = line.trim_ascii().is_empty();
            if !in_subject && !blank {
                return msg.get(at..).unwrap_or_default();
            }
            in_subject &= !blank;
            at += line.len();
        }
        &[]
    }
}

/// The length of a `(…)` group at the start of `p`.
fn parenthesized(p: &[u8]) -> Option<usize> {
    if p.first() != Some(&b'(') {
        return None;
    }
    p.iter().position(|&b| b == b')').map(|end| end + 1)
}

/// A decimal number, optionally signed.
fn number(digits: &[u8]) -> Option<i64> {
    let (sign, digits) = match digits.split_first() {
        Some((b'-', rest)) => (-1, rest),
        Some((b'+', rest)) => (1, rest),
        _ => (1, digits),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut v = 0i64;
    for &d in digits {
        v = v * 10 + i64::from(char::from(d).to_digit(10)?);
    }
    Some(sign * v)
}

/// `Name <email> 1112911993 -0700`.
fn person(value: &[u8]) -> Option<Person> {
    let lt = value.iter().position(|&b| b == b'<')?;
    let gt = lt + value.get(lt..)?.iter().position(|&b| b == b'>')?;
    let mut fields = value.get(gt + 1..)?.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let time = number(fields.next()?)?;
    let zone = number(fields.next().unwrap_or(b"+0000"))?;
    Some(Person {
        name: value.get(..lt)?.trim_ascii_end().to_vec(),
        email: value.get(lt + 1..gt)?.to_vec(),
        time,
        offset: zone.signum() * (zone.abs() / 100 * 60 + zone.abs() % 100),
    })
}

/// `%a?` / `%c?`: one field of a person, into `out`.
fn person_field(who: &Person, what: u8, out: &mut Vec<u8>) -> Option<()> {
    match what {
        b'n' | b'N' => out.extend_from_slice(&who.name),
        b'e' | b'E' => out.extend_from_slice(&who.email),
        b'l' | b'L' => out.extend(who.email.split(|&b| b == b'@').next().unwrap_or_default()),
        b't' => decimal(out, who.time, 1),
        b'd' | b'D' | b'i' | b'I' | b's' => date(who, what, out),
        // Relative and "human" dates change with the day they are printed on.
        b'r' | b'h' => {}
        _ => return None,
    }
    Some(())
}

/// `n` in decimal, with at least `width` digits.
fn decimal(out: &mut Vec<u8>, n: i64, width: usize) {
    if n < 0 {
        out.push(b'-');
    }
    let mut digits = Vec::new();
    let mut v = n.unsigned_abs();
    while v > 0 || digits.len() < width.max(1) {
        digits.push(b'0' + (v % 10) as u8);
        v /= 10;
    }
    out.extend(digits.iter().rev());
}

const DAYS: [&[u8]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// A date in the person's own time zone, as git prints it: `d` normal, `D` RFC 2822, `i`
/// ISO-like, `I` strict ISO 8601, `s` the day.
fn date(who: &Person, style: u8, out: &mut Vec<u8>) {
    let local = who.time + who.offset * 60;
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (year, month, day) = civil(days);
    let weekday = DAYS.get(days.rem_euclid(7) as usize).copied().unwrap_or_default();
    let mon = MONTHS.get((month - 1) as usize).copied().unwrap_or_default();
    let time = |out: &mut Vec<u8>| {
        for (i, v) in [secs / 3600, secs / 60 % 60, secs % 60].into_iter().enumerate() {
            if i > 0 {
                out.push(b':');
            }
            decimal(out, v, 2);
        }
    };
    let zone = |out: &mut Vec<u8>, colon: bool| {
        out.push(if who.offset < 0 { b'-' } else { b'+' });
        decimal(out, who.offset.abs() / 60, 2);
        if colon {
            out.push(b':');
        }
        decimal(out, who.offset.abs() % 60, 2);
    };
    let ymd = |out: &mut Vec<u8>| {
        decimal(out, year, 1);
        out.push(b'-');
        decimal(out, month, 2);
        out.push(b'-');
        decimal(out, day, 2);
    };
    match style {
        b'd' | b'D' => {
            out.extend_from_slice(weekday);
            if style == b'D' {
                out.extend_from_slice(b", ");
                decimal(out, day, 1);
                out.push(b' ');
                out.extend_from_slice(mon);
            } else {
                out.push(b' ');
                out.extend_from_slice(mon);
                out.push(b' ');
                decimal(out, day, 1);
            }
            out.push(b' ');
            if style == b'D' {
                decimal(out, year, 1);
                out.push(b' ');
                time(out);
            } else {
                time(out);
                out.push(b' ');
                decimal(out, year, 1);
            }
            out.push(b' ');
            zone(out, false);
        }
        b'i' | b'I' => {
            ymd(out);
            out.push(if style == b'I' { b'T' } else { b' ' });
            time(out);
            if style == b'i' {
                out.push(b' ');
                zone(out, false);
            } else if who.offset == 0 {
                out.push(b'Z');
            } else {
                zone(out, true);
            }
        }
        _ => ymd(out),
    }
}

/// Year, month and day of a day count from 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `%f`: the subject's first line with every run of bytes other than letters, digits, `.`
/// and `_` made one `-`, runs of `.` made one, and no `-` or `.` at its end.
fn sanitized(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut dash = false;
    for &c in line {
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' {
            if dash && !out.is_empty() {
                out.push(b'-');
            }
            dash = false;
            if !(c == b'.' && out.last() == Some(&b'.')) {
                out.push(c);
            }
        } else {
            dash = true;
        }
    }
    while matches!(out.last(), Some(b'.' | b'-')) {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests;
