//! Extended attributes: `user.cab.hash`, `user.cab.rev`, `user.cab.island` and
//! `user.cab.complete` on every node of a served tree, and `user.cab.error` on an island root
//! whose realization failed (an errno alone tells a user nothing).

use std::sync::Arc;

use super::{CabFs, Content, Inode};
use crate::mount::failures::LastFailure;
use crate::mount::fuse::Reply;

impl CabFs {
    pub(super) fn xattrs(&self, kind: &Inode) -> Vec<(&'static str, Vec<u8>)> {
        let Inode::Tree { node, island } = kind else {
            return Vec::new();
        };
        let hash = crate::hash::tree::root_hash(node);
        let mut out = vec![("user.cab.hash", hash.to_string().into_bytes())];
        if let Some(rev) = &island.rev {
            out.push(("user.cab.rev", rev.clone().into_bytes()));
        }
        if let Some(literal) = island.island_xattr() {
            out.push(("user.cab.island", literal.into_bytes()));
        }
        // A tree served while its files still arrive is not in the store yet.
        let complete = island.contents.is_complete();
        out.push(("user.cab.complete", if complete { &b"yes"[..] } else { b"no" }.to_vec()));
        out
    }

    pub(super) fn xattr(self: &Arc<Self>, ino: u64, name: Option<Vec<u8>>, size: u32, reply: Reply) {
        let kind = match self.content(ino) {
            Ok(Content::Now(kind)) => kind,
            Ok(Content::Wait(realization)) => {
                let again = name.clone();
                return self.wait_or(
                    realization,
                    reply,
                    false,
                    move |fs, reply| fs.xattr(ino, again, size, reply),
                    move |fs, reply, _| match fs.island_failure(ino) {
                        Some(last) => {
                            answer_xattrs(&[("user.cab.error", last.describe().into_bytes())], name, size, reply)
                        }
                        None => reply.error(libc::EIO),
                    },
                );
            }
            // An island that failed says why (an errno alone tells a user nothing).
            Err(e) => {
                return match self.island_failure(ino) {
                    Some(last) => answer_xattrs(&[("user.cab.error", last.describe().into_bytes())], name, size, reply),
                    None => reply.error(e),
                };
            }
        };
        answer_xattrs(&self.xattrs(&kind), name, size, reply);
    }

    /// The last failure of the island whose root `ino` is, if it failed.
    pub(super) fn island_failure(&self, ino: u64) -> Option<LastFailure> {
        match self.kind(ino)? {
            Inode::Named(name) => self.islands.failure_named(&name),
            Inode::Browsed(island) => self.islands.failure_island(&island),
            _ => None,
        }
    }
}

/// Answers getxattr (`name`) or listxattr (`None`) from `xattrs`.
fn answer_xattrs(xattrs: &[(&str, Vec<u8>)], name: Option<Vec<u8>>, size: u32, reply: Reply) {
    let value = match &name {
        Some(name) => match xattrs.iter().find(|(n, _)| n.as_bytes() == name.as_slice()) {
            Some((_, value)) => value.clone(),
            None => return reply.error(libc::ENODATA),
        },
        None => {
            let mut list = Vec::new();
            for (name, _) in xattrs {
                list.extend_from_slice(name.as_bytes());
                list.push(0);
            }
            list
        }
    };
    if size == 0 {
        reply.xattr_size(value.len() as u32)
    } else if (size as usize) < value.len() {
        reply.error(libc::ERANGE)
    } else {
        reply.data(&value)
    }
}
