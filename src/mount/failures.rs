//! What the mount remembers of islands that failed, by the failure's [`Cause`]: one caused on
//! this machine (no space, too many open files) not at all — the next look tries again, so
//! freeing space is enough; one of the forge or the network for about one user action (`ls`
//! alone asks three times), so that a forge that comes back serves at the next look while a
//! loop of looks costs it at most one attempt a second; one the same request would meet again
//! (a limit, a mismatch) for a few seconds, longer on each repeat. The last failure's text and
//! the moment of the next try are kept for `user.cab.error`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::realizer::Cause;
use crate::sync::MutexExt;

/// Why an island could not be realized.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The error, as logged.
    pub message: String,
    /// What kind of failure it is (when to try again; ENOENT for what does not exist).
    pub cause: Cause,
}

impl Failure {
    /// The failure `error` is.
    pub fn of(error: anyhow::Error) -> Failure {
        Failure {
            cause: Cause::of(&error),
            message: format!("{error:#}"),
        }
    }

    /// The island names something that does not exist (a repository, a ref): ENOENT, not EIO.
    pub fn not_found(&self) -> bool {
        self.cause == Cause::NotFound
    }
}

/// The last failure of an island, as `user.cab.error` tells it.
#[derive(Clone, Debug)]
pub struct LastFailure {
    /// The failure.
    pub failure: Failure,
    /// When it happened.
    pub at: SystemTime,
    /// From when the next look tries again (at once if past).
    pub retry_at: SystemTime,
}

impl LastFailure {
    /// The text of `user.cab.error`: the error, then when it happened and when cab tries
    /// again.
    pub fn describe(&self) -> String {
        let now = SystemTime::now();
        let next = match self.retry_at.duration_since(now) {
            Ok(wait) if !wait.is_zero() => format!(
                "cab tries again at the first look after {} ({:.1} s from now)",
                utc(self.retry_at),
                wait.as_secs_f64()
            ),
            _ => "cab tries again at the next look".to_owned(),
        };
        let why = match self.failure.cause {
            Cause::Local => "this machine ran out of something; it is not remembered",
            Cause::NotFound => "it does not exist at its source",
            Cause::Unreachable => "its source could not be reached or failed",
            Cause::Content => "its source gave an answer cab refuses; asking again gives the same",
        };
        format!(
            "{}\nfailed at {} ({why}); {next}\n",
            self.failure.message.trim_end(),
            utc(self.at)
        )
    }
}

/// A moment as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// A remembered failure.
struct Remembered {
    last: LastFailure,
    at: Instant,
    until: Instant,
    repeats: u32,
}

/// A failure of the forge or the network answers the requests that come within this long of
/// it: the several requests of one user action (`ls` alone makes three), not the next action.
const UNREACHABLE_MEMORY: Duration = Duration::from_secs(1);
/// A failure the same request would meet again waits this long before the first retry; each
/// repeat doubles it, up to [`CONTENT_MEMORY_MAX`].
const CONTENT_MEMORY: Duration = Duration::from_secs(2);
const CONTENT_MEMORY_MAX: Duration = Duration::from_secs(60);
/// Repeats count as repeats when they come within this long of the last failure.
const REPEAT_WINDOW: Duration = Duration::from_secs(600);
/// At most this many failures are remembered (distinct bad paths must not grow memory).
const FAILURES_KEPT: usize = 4096;

/// The failures of the islands of one mount, by key.
pub struct Failures<K> {
    by_key: Mutex<HashMap<K, Remembered>>,
}

impl<K> Default for Failures<K> {
    fn default() -> Self {
        Failures {
            by_key: Mutex::default(),
        }
    }
}

impl<K: Clone + Eq + Hash> Failures<K> {
    /// The failure that answers for `key` now, if one is remembered.
    pub fn remembered(&self, key: &K) -> Option<Failure> {
        let failures = self.by_key.locked();
        let remembered = failures.get(key)?;
        (Instant::now() < remembered.until).then(|| remembered.last.failure.clone())
    }

    /// The last failure of `key`, remembered or not, while nothing has succeeded since.
    pub fn last(&self, key: &K) -> Option<LastFailure> {
        self.by_key.locked().get(key).map(|r| r.last.clone())
    }

    /// Every key's last failure, while nothing has succeeded since.
    pub fn all(&self) -> Vec<(K, LastFailure)> {
        self.by_key
            .locked()
            .iter()
            .map(|(k, r)| (k.clone(), r.last.clone()))
            .collect()
    }

    /// `key` succeeded: its failures are forgotten.
    pub fn forget(&self, key: &K) {
        self.by_key.locked().remove(key);
    }

    /// `key` failed with `failure`: remembered as its cause says, and logged once.
    pub fn remember(&self, key: &K, failure: &Failure) {
        let now = Instant::now();
        let mut failures = self.by_key.locked();
        let last = failures
            .get(key)
            .filter(|last| now.duration_since(last.at) < REPEAT_WINDOW);
        let repeats = last.map_or(0, |last| last.repeats + 1);
        let same_again = last.is_some_and(|last| last.last.failure.message == failure.message);
        let wait = match failure.cause {
            Cause::Local => Duration::ZERO,
            Cause::NotFound | Cause::Unreachable => UNREACHABLE_MEMORY,
            Cause::Content => CONTENT_MEMORY
                .saturating_mul(1 << repeats.min(16))
                .min(CONTENT_MEMORY_MAX),
        };
        if failures.len() >= FAILURES_KEPT {
            failures.retain(|_, r| now < r.until);
            if failures.len() >= FAILURES_KEPT
                && let Some(oldest) = failures.iter().min_by_key(|(_, r)| r.at).map(|(k, _)| k.clone())
            {
                failures.remove(&oldest);
            }
        }
        let wall = SystemTime::now();
        failures.insert(
            key.clone(),
            Remembered {
                last: LastFailure {
                    failure: failure.clone(),
                    at: wall,
                    retry_at: wall + wait,
                },
                at: now,
                until: now + wait,
                repeats,
            },
        );
        drop(failures);
        // One log line per failure, not per look: a failure that repeats with the same words
        // is logged again only at debug.
        let when = match failure.cause {
            Cause::Local => "tried again at the next look".to_owned(),
            _ => format!("not tried again for {:.0} s", wait.as_secs_f64().max(1.0)),
        };
        if same_again {
            tracing::debug!("{}\n  (again, {repeats} times; {when})", failure.message);
        } else {
            tracing::error!("{}\n  ({when})", failure.message);
        }
    }
}
