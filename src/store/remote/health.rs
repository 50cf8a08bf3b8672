//! A remote's health as this process has seen it: every request to its backend is counted as
//! answered or failed, with the last error and when it happened. `cab status` shows it from a
//! mount's memory, so asking never sends a request of its own nor waits for one.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::backend::{Backend, Body, BoxFuture};
use crate::sync::MutexExt;

/// What the requests to a remote have given so far.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Health {
    /// Requests answered (an object, or its absence).
    pub answered: u64,
    /// Requests that failed (no connection, a timeout, an unexpected status).
    pub failed: u64,
    /// Whether the last request was answered (`None`: none was made yet).
    pub last_ok: Option<bool>,
    /// When the last request was answered, in seconds since the epoch.
    pub last_answer_at: Option<u64>,
    /// The last failure's message…
    pub last_error: Option<String>,
    /// …and when it happened, in seconds since the epoch.
    pub last_error_at: Option<u64>,
}

/// A backend whose every request is recorded in a [`Health`].
pub struct Watched {
    inner: Arc<dyn Backend>,
    health: Arc<Mutex<Health>>,
}

impl Watched {
    /// `inner`, watched.
    pub fn new(inner: Arc<dyn Backend>) -> Watched {
        Watched {
            inner,
            health: Arc::default(),
        }
    }

    /// The health so far.
    pub fn health(&self) -> Health {
        self.health.locked().clone()
    }

    fn record<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut health = self.health.locked();
        match &result {
            Ok(_) => {
                health.answered += 1;
                health.last_ok = Some(true);
                health.last_answer_at = Some(now);
            }
            Err(e) => {
                health.failed += 1;
                health.last_ok = Some(false);
                health.last_error = Some(format!("{e:#}"));
                health.last_error_at = Some(now);
            }
        }
        result
    }
}

impl Backend for Watched {
    fn describe(&self) -> &str {
        self.inner.describe()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<Option<Vec<u8>>>> {
        Box::pin(async move { self.record(self.inner.get(key).await) })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move { self.record(self.inner.exists(key).await) })
    }

    fn put<'a>(&'a self, key: &'a str, body: Body) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { self.record(self.inner.put(key, body).await) })
    }
}
