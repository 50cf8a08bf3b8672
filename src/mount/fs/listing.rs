//! Directory listings: the top level (named islands are listed without being realized), the
//! forges' browsing levels (what the kernel has looked up and still holds), `by-hash/` (the
//! store's published trees) and the directories of served trees, as readdir or readdirplus.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{CabFs, Content, Errno, FORGES, Inode, Listed, forge_top};
use crate::hash::tree::Node;
use crate::mount::fuse::{Dirents, Reply};
use crate::mount::read_ahead;
use crate::sync::RwLockExt;

impl CabFs {
    /// The entries of a directory: (name, kind), in order.
    pub(super) fn list(&self, ino: u64, kind: Inode) -> Result<Vec<Listed>, Errno> {
        Ok(match kind {
            Inode::Tree {
                node: Node::Directory { tree },
                island,
            } => self
                .entries(&tree, &island)?
                .iter()
                .map(|entry| {
                    let kind = Inode::Tree {
                        node: entry.node.clone(),
                        island: island.clone(),
                    };
                    (entry.name.as_slice().into(), kind)
                })
                .collect(),
            Inode::Tree { .. } => return Err(libc::ENOTDIR),
            Inode::Root => {
                let mut out: Vec<Listed> = FORGES
                    .iter()
                    .map(|(name, format)| (Box::from(*name), forge_top(*format)))
                    .collect();
                out.push((b"by-hash"[..].into(), Inode::ByHash));
                // Named islands are listed without realizing them: listing must stay cheap.
                for name in self.islands.names() {
                    let kind = Inode::Named(name.as_str().into());
                    out.push((name.into_bytes().into(), kind));
                }
                out
            }
            Inode::ByHash => {
                let roots = self.islands.realizer().store().roots().map_err(|_| libc::EIO)?;
                roots
                    .into_iter()
                    .map(|hash| (hash.to_string().into_bytes().into(), Inode::Stored(hash)))
                    .collect()
            }
            // Browsing levels list what the kernel has looked up and still holds, and below a
            // repository what its refs are (see `listed_refs`).
            Inode::Browse(format, path) => {
                let mut out: Vec<Listed> = {
                    let table = self.table.read_locked();
                    table
                        .children(ino)
                        .into_iter()
                        .map(|(_, name, kind)| (name, kind))
                        .collect()
                };
                // A listing still on its way (it ended a moment ago) shows what was looked up.
                for (name, kind) in self.listed_refs(format, &path).or_else(|asked| match asked {
                    Some(_) => Ok(Vec::new()),
                    None => Err(libc::EIO),
                })? {
                    if !out.iter().any(|(n, _)| *n == name) {
                        out.push((name, kind));
                    }
                }
                out
            }
            Inode::Named(_) | Inode::Browsed(_) | Inode::Stored(_) => unreachable!("resolved by content()"),
        })
    }

    pub(super) fn readdir(self: &Arc<Self>, ino: u64, offset: u64, size: u32, plus: bool, reply: Reply) {
        // Below a repository, the listing of its refs comes first (one round trip).
        if offset == 0
            && let Some(Inode::Browse(format, path)) = self.kind(ino)
            && let Err(Some(asked)) = self.listed_refs(format, &path)
        {
            // A failed listing answers its own failure (a repository that does not exist is
            // ENOENT), never by asking again.
            return self.wait_or(
                asked,
                reply,
                false,
                move |fs, reply| fs.readdir(ino, offset, size, plus, reply),
                |_, reply, failure| reply.error(if failure.not_found() { libc::ENOENT } else { libc::EIO }),
            );
        }
        let kind = match self.content(ino) {
            Ok(Content::Now(kind)) => kind,
            Ok(Content::Wait(realization)) => {
                return self.wait(realization, reply, false, move |fs, reply| {
                    fs.readdir(ino, offset, size, plus, reply)
                });
            }
            Err(e) => return reply.error(e),
        };
        let here = self.kind(ino).unwrap_or(Inode::Root);
        let children = match self.list(ino, kind) {
            Ok(children) => children,
            Err(e) => return reply.error(e),
        };
        let mut dirents = Dirents::new(size);
        // While something is reading, the files of a directory it lists are pushed ahead of
        // it (see `read_ahead`); a walk that reads nothing pushes nothing.
        let mut listed_files = Vec::new();
        let read_ahead = plus && self.reading();
        let dots = [(&b"."[..], here.clone()), (&b".."[..], here)];
        let all = dots
            .into_iter()
            .map(|(n, k)| (n.into(), k, true))
            .chain(children.into_iter().map(|(n, k)| (n, k, false)));
        for (i, (name, kind, dot)) in all.enumerate().skip(offset as usize) {
            let next = (i + 1) as u64;
            let full = if plus {
                // Each entry given with its attributes is a reference the kernel holds (but
                // for `.` and `..`), so it is counted only once it surely fits.
                if !dirents.fits(&name, true) {
                    true
                } else {
                    let child = if dot {
                        ino
                    } else {
                        self.look_up(ino, &name, || kind.clone())
                    };
                    if read_ahead
                        && !dot
                        && let Inode::Tree {
                            node: Node::File { blob, size, .. },
                            ..
                        } = &kind
                        && (1..=read_ahead::FILE_MAX).contains(size)
                    {
                        listed_files.push(read_ahead::File {
                            ino: child,
                            blob: *blob,
                            size: *size,
                        });
                    }
                    !dirents.add_plus(&self.attr(child, &kind), Self::ttl(&kind), next, &name)
                }
            } else {
                let table = self.table.read_locked();
                // Plain readdir gives no reference: an inode number that is not in the table
                // is shown as a stable stand-in.
                let child = if dot {
                    ino
                } else {
                    table.find(ino, &name).unwrap_or_else(|| stand_in_ino(ino, &name))
                };
                !dirents.add(child, next, self.attr(child, &kind).dirent_type(), &name)
            };
            if full {
                break;
            }
        }
        let (channel, on_ring) = (reply.channel().clone(), reply.over_io_uring());
        dirents.send(reply);
        if let Some(read_ahead) = self.read_ahead.as_ref().filter(|_| !listed_files.is_empty()) {
            listed_files.truncate(read_ahead::DIR_MAX_FILES);
            read_ahead.push(&channel, listed_files, on_ring);
        }
    }

    /// Whether files were read a moment ago (read-ahead is for readers, not for walks).
    pub(super) fn reading(&self) -> bool {
        self.read_ahead.as_ref().is_some_and(|p| p.reading()) && !self.passthrough.load(Ordering::Relaxed)
    }
}

/// An inode number for a plain-readdir entry the table does not hold: stable, and never one
/// the table hands out (the high bit is set).
fn stand_in_ino(parent: u64, name: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&parent.to_le_bytes());
    h.update(name);
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or_default()) | 1 << 63
}
