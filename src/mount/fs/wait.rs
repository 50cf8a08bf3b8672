//! Requests that must wait: for a tree still on its way (parked until its realization ends,
//! or only its commit is known), or for a file of a tree whose files are still arriving. A
//! parked request holds no thread; an interrupt answers it EINTR, and where the kernel has a
//! request timeout that cab's waits may outlast, the request budget answers it EAGAIN first.

use std::sync::Arc;

use super::{CabFs, Content, Inode};
use crate::hash::tree::Node;
use crate::mount::failures::Failure;
use crate::mount::fuse::{Parked, Reply};
use crate::mount::realization::Realization;

impl CabFs {
    /// Parks `reply` until `realization` has ended (or only learned its commit, with `rev_only`),
    /// then runs `then` with it; a failed realization answers EIO (ENOENT for what does not exist,
    /// where only its commit was awaited). Bounded by the request budget where the kernel has
    /// one.
    pub(super) fn wait(
        self: &Arc<Self>,
        realization: Arc<Realization>,
        reply: Reply,
        rev_only: bool,
        then: impl FnOnce(&Arc<CabFs>, Reply) + Send + 'static,
    ) {
        self.wait_or(realization, reply, rev_only, then, move |_, reply, failure| {
            reply.error(if rev_only && failure.not_found() {
                libc::ENOENT
            } else {
                libc::EIO
            })
        });
    }

    /// [`CabFs::wait`], answering a failed realization with `failed`.
    pub(super) fn wait_or(
        self: &Arc<Self>,
        realization: Arc<Realization>,
        reply: Reply,
        rev_only: bool,
        then: impl FnOnce(&Arc<CabFs>, Reply) + Send + 'static,
        failed: impl FnOnce(&Arc<CabFs>, Reply, &Failure) + Send + 'static,
    ) {
        let parked = self.park(reply);
        let fs = self.clone();
        let watched = realization.clone();
        let resume = move || {
            if let Some(reply) = parked.take() {
                match watched.failure() {
                    Some(failure) => failed(&fs, reply, &failure),
                    None => then(&fs, reply),
                }
            }
        };
        if rev_only {
            realization.when_rev_known(resume);
        } else {
            realization.when_done(resume);
        }
    }

    /// Parks `reply` (no thread holds it; an interrupt answers it EINTR), answered EAGAIN
    /// if it is still waiting when the request budget runs out.
    pub(super) fn park(&self, reply: Reply) -> Parked {
        let parked = reply.park();
        if let Some(budget) = self.budget.get().copied().flatten() {
            let timer = parked.clone();
            self.islands.runtime().spawn(async move {
                tokio::time::sleep(budget).await;
                if let Some(reply) = timer.take() {
                    tracing::warn!(
                        "a request waited {:.1} s for a fetch that is still running; answered \
                         EAGAIN (try again) before the kernel's FUSE request timeout would end the mount",
                        budget.as_secs_f64()
                    );
                    reply.error(libc::EAGAIN);
                }
            });
        }
        parked
    }

    /// The file behind `ino`, once its contents are here: a file of a tree served lazily is
    /// fetched first (the request parked meanwhile), then `then` runs with the reply. Answers
    /// EIO itself when the fetch fails.
    pub(super) fn with_contents(
        self: &Arc<Self>,
        ino: u64,
        reply: Reply,
        then: impl FnOnce(&Arc<CabFs>, Reply) + Send + 'static,
    ) {
        let missing = match self.content(ino) {
            Ok(Content::Now(Inode::Tree {
                node: Node::File { blob, size, .. },
                island,
            })) => (!island.contents.has(&blob, size)).then(|| (island.contents.clone(), blob, size)),
            _ => None,
        };
        let Some((contents, blob, size)) = missing else {
            return then(self, reply);
        };
        self.fetch_ahead(ino);
        let parked = self.park(reply);
        let fs = self.clone();
        contents.when_here(
            blob,
            size,
            Box::new(move |arrived| {
                if let Some(reply) = parked.take() {
                    match arrived {
                        Ok(()) => then(&fs, reply),
                        Err(()) => reply.error(libc::EIO),
                    }
                }
            }),
        );
    }
}
