//! A realization in progress, as the mount waits on it: requests that need its tree wait
//! here without holding a thread (their replies are parked; see [`super::fuse::Parked`]), and
//! run again when it ends — or, for a browsed ref, as soon as the commit is known.

use std::sync::Mutex;

use super::failures::Failure;
use crate::sync::MutexExt;

type Waiter = Box<dyn FnOnce() + Send>;

/// One realization in progress, and who waits for it.
#[derive(Default)]
pub struct Realization {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The commit, once the fetcher has said it.
    rev: Option<String>,
    done: bool,
    /// Waiters for the commit (or the end, whichever is first).
    on_rev: Vec<Waiter>,
    /// Waiters for the end.
    on_done: Vec<Waiter>,
    /// How it failed, once it has.
    failure: Option<Failure>,
}

impl Realization {
    /// Runs `then` once the realization has ended (now, if it has).
    pub fn when_done(&self, then: impl FnOnce() + Send + 'static) {
        let mut state = self.state.locked();
        if state.done {
            drop(state);
            then();
        } else {
            state.on_done.push(Box::new(then));
        }
    }

    /// Runs `then` once the commit is known or the realization has ended.
    pub fn when_rev_known(&self, then: impl FnOnce() + Send + 'static) {
        let mut state = self.state.locked();
        if state.done || state.rev.is_some() {
            drop(state);
            then();
        } else {
            state.on_rev.push(Box::new(then));
        }
    }

    /// Whether the realization has ended.
    pub fn is_done(&self) -> bool {
        self.state.locked().done
    }

    /// The commit, if the fetcher has said it.
    pub fn rev(&self) -> Option<String> {
        self.state.locked().rev.clone()
    }

    /// The fetcher has said the commit.
    pub fn set_rev(&self, rev: &str) {
        let waiters = {
            let mut state = self.state.locked();
            state.rev = Some(rev.to_owned());
            std::mem::take(&mut state.on_rev)
        };
        run_waiters(waiters);
    }

    /// How the realization failed, if it has ended in failure. Its waiters answer with this,
    /// not with a fresh look at the island (which, for a failure not remembered, would start
    /// the next realization and wait again).
    pub fn failure(&self) -> Option<Failure> {
        self.state.locked().failure.clone()
    }

    /// The realization has ended (in `failure`, if it failed): its waiters run.
    pub fn finish(&self, failure: Option<Failure>) {
        let waiters = {
            let mut state = self.state.locked();
            state.done = true;
            state.failure = failure;
            let mut waiters = std::mem::take(&mut state.on_rev);
            waiters.append(&mut state.on_done);
            waiters
        };
        run_waiters(waiters);
    }
}

/// Waiters answer requests (reading tree objects on the way): a blocking thread's work.
fn run_waiters(waiters: Vec<Waiter>) {
    if waiters.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || waiters.into_iter().for_each(|w| w()))),
        Err(_) => waiters.into_iter().for_each(|w| w()),
    }
}
