//! Cab islands: pinned source trees from GitHub, git servers, tarballs and local paths, stored
//! content-addressed and served under one read-only mount. See DESIGN.md for the words used
//! throughout (island, derivation, realizer, store).

pub mod cli;
pub mod collection;
pub mod config;
pub mod derivation;
pub mod erofs;
pub mod hash;
pub mod interop;
pub mod island;
pub mod lock;
pub mod mount;
pub mod pin;
pub mod realizer;
pub mod store;
pub mod sync;
pub mod text;
