//! Text for people: labels (island literals, command lines) cut to what a log line can carry.
//! A literal may be 8 KiB and a command line longer; one failing lookup once wrote 497 MB of
//! log by repeating a 1 MB literal.

use std::borrow::Cow;

/// `text` for a log line: whole when short, else its start and its length.
pub fn shorten(text: &str) -> Cow<'_, str> {
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
