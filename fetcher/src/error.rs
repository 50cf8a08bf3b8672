//! One error type for the whole fetcher. The guest has a single way to report a failure — a
//! line on standard error and an exit code — so an error is just that message and that code:
//! 2 for a bad invocation (the host's bug), 3 for a ref the repository does not have (the host
//! then answers "no such island" rather than "failed", without reading the message), 1 for
//! everything else the network or the host refused.

use core::fmt;

use crate::prelude::*;

/// The fetcher's result type.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// A failure, as the host will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: i32,
    message: String,
}

impl Error {
    /// A failure to fetch (exit code 1).
    pub fn new(message: impl Into<String>) -> Error {
        Error {
            code: 1,
            message: message.into(),
        }
    }

    /// What the island names does not exist: a ref the repository lacks, or no default
    /// branch (exit code 3).
    pub fn missing(message: impl Into<String>) -> Error {
        Error {
            code: 3,
            message: message.into(),
        }
    }

    /// A bad invocation (exit code 2).
    pub fn usage(message: impl Into<String>) -> Error {
        Error {
            code: 2,
            message: message.into(),
        }
    }

    /// The exit code this failure maps to.
    pub fn code(&self) -> i32 {
        self.code
    }

    /// The message, without any prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the message already names `what` (a byte search: `str::contains` would bring
    /// in a whole substring-search engine for this one use).
    pub fn mentions(&self, what: &str) -> bool {
        self.message
            .as_bytes()
            .windows(what.len().max(1))
            .any(|w| w == what.as_bytes())
    }

    /// The same failure, with `what` (a URL, a member name) said first.
    pub fn context(self, what: &str) -> Error {
        Error {
            code: self.code,
            message: format!("{what}: {}", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Bytes (a path, a ref name) as text for a message; anything not UTF-8 is replaced, since
/// the message is for a person and the exact bytes live in the archive anyway.
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
