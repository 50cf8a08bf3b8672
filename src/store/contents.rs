//! Where a ready tree's contents are. A tree is ready to be served once its listing is known;
//! its files may all be in the store (a tree stored, fetched or substituted whole), or still
//! on their way (a tree served from the remote as its files are read). Whoever serves a tree —
//! the mount — asks through this one small trait, "is this blob here, or tell me when it has
//! arrived", and never learns where the tree came from.

use std::fmt;
use std::sync::Arc;

use crate::hash::tree::Entry;
use crate::hash::{BlobHash, TreeHash};

/// Runs with the outcome of waiting for a blob: `Ok` once it is in the store.
pub type Arrival = Box<dyn FnOnce(Result<(), ()>) + Send>;

/// How a ready tree's files reach the store. Every method has the answer of a tree whose
/// files are all stored already ([`Stored`]).
pub trait Contents: Send + Sync + fmt::Debug {
    /// The entries of directory `tree` of this tree when the store does not have its object
    /// yet (a listing still being written); `None`: read it from the store.
    fn directory(&self, tree: &TreeHash) -> Option<Arc<Vec<Entry>>> {
        let _ = tree;
        None
    }

    /// Whether `blob` (of `size` bytes) can be read from the store now.
    fn has(&self, blob: &BlobHash, size: u64) -> bool {
        let _ = (blob, size);
        true
    }

    /// Runs `then` once `blob` is in the store, or its fetch failed (at once if it is here).
    fn when_here(self: Arc<Self>, blob: BlobHash, size: u64, then: Arrival) {
        let _ = (blob, size);
        then(Ok(()))
    }

    /// A reader's first read in a directory whose files are `files` (blob and size): a hint
    /// that the rest of them, or of the tree, will be read soon.
    fn reading_in(self: Arc<Self>, files: Vec<(BlobHash, u64)>) {
        let _ = files;
    }

    /// Whether every file is in the store (and the tree published there).
    fn is_complete(&self) -> bool {
        true
    }

    /// How much of a tree served as its files arrive is in the store so far (`None`: a tree
    /// whose files were all here from the start, or one whose count is not known yet).
    fn local_share(&self) -> Option<LocalShare> {
        None
    }
}

/// How much of a tree is in the local store: its files (each distinct content once) and their
/// bytes, here and in all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LocalShare {
    /// Files in the store.
    pub files_local: u64,
    /// Files in the tree.
    pub files: u64,
    /// Bytes of the files in the store.
    pub bytes_local: u64,
    /// Bytes of the files in the tree.
    pub bytes: u64,
}

/// A tree whose files are all in the store.
#[derive(Debug, Default)]
pub struct Stored;

impl Contents for Stored {}
