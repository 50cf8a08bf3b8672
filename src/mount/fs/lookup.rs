//! Lookups: names at the top (islands, the forges, `by-hash`), the forges' browsing levels
//! — `github/OWNER/REPO/REF`, `sourcehut/~OWNER/REPO/REF`, and GitLab's groups nested to any
//! depth, `gitlab/GROUP/…/PROJECT/-/REF` — and names inside served trees.

use std::sync::Arc;

use super::{CabFs, Content, FORGES, Inode, PANIC_NAME, ROOT, TREE_TTL, forge_top};
use crate::hash::TreeHash;
use crate::hash::tree::Node;
use crate::island::{Config, Format, Island};
use crate::mount::fuse::Reply;
use crate::mount::islands::State;

impl CabFs {
    pub(super) fn lookup(self: &Arc<Self>, parent: u64, name: Vec<u8>, reply: Reply) {
        let Some(parent_kind) = self.kind(parent) else {
            return reply.error(libc::ENOENT);
        };
        if self.panic_hook && name == PANIC_NAME {
            panic!(
                "CAB_FAILPOINT=mount-panic: a lookup of {}",
                String::from_utf8_lossy(PANIC_NAME)
            );
        }
        let text = std::str::from_utf8(&name).ok();
        match parent_kind {
            Inode::Root => match &name[..] {
                b"by-hash" => self.answer_entry(reply, self.look_up(ROOT, &name, || Inode::ByHash), &Inode::ByHash),
                forge if let Some((_, format)) = FORGES.iter().find(|(n, _)| *n == forge) => {
                    let kind = forge_top(*format);
                    self.answer_entry(reply, self.look_up(ROOT, &name, || kind.clone()), &kind)
                }
                _ => {
                    let Some(text) = text.filter(|t| self.islands.has_name(t)) else {
                        return reply.error(libc::ENOENT);
                    };
                    // The directory exists before its contents: start the realization and
                    // answer now.
                    let _ = self.islands.get_named(text);
                    let kind = Inode::Named(text.into());
                    let ino = self.look_up(ROOT, &name, || kind.clone());
                    self.answer_entry(reply, ino, &kind);
                }
            },
            Inode::Browse(format, path) => match text.map(|t| browse_step(format, &path, t)) {
                Some(Step::Deeper) => {
                    let mut deeper = path.to_vec();
                    deeper.push(text.unwrap_or_default().into());
                    let kind = Inode::Browse(format, deeper.into());
                    let ino = self.look_up(parent, &name, || kind.clone());
                    self.answer_entry(reply, ino, &kind);
                }
                Some(Step::Ref(island)) => match self.islands.get_island(&island) {
                    State::Failed(failure) => reply.error(if failure.not_found() { libc::ENOENT } else { libc::EIO }),
                    State::Pending(realization) if realization.rev().is_none() => {
                        // One round trip tells whether the ref exists.
                        self.wait(realization, reply, true, move |fs, reply| {
                            fs.lookup(parent, name, reply)
                        });
                    }
                    State::Ready(_) | State::Pending(_) => {
                        let kind = Inode::Browsed(Arc::new(*island));
                        let ino = self.look_up(parent, &name, || kind.clone());
                        self.answer_entry(reply, ino, &kind);
                    }
                },
                Some(Step::Nothing) | None => reply.error(libc::ENOENT),
            },
            Inode::ByHash => {
                let Some(hash) = text.and_then(|t| t.parse::<TreeHash>().ok()) else {
                    return reply.error(libc::ENOENT);
                };
                match self.islands.realizer().store().published(&hash) {
                    Ok(Some(_)) => {
                        let kind = Inode::Stored(hash);
                        let ino = self.look_up(parent, &name, || kind.clone());
                        self.answer_entry(reply, ino, &kind);
                    }
                    Ok(None) => reply.error(libc::ENOENT),
                    Err(_) => reply.error(libc::EIO),
                }
            }
            Inode::Named(_) | Inode::Browsed(_) | Inode::Stored(_) => match self.content(parent) {
                Ok(Content::Now(kind)) => self.lookup_in_tree(parent, &kind, &name, reply),
                Ok(Content::Wait(realization)) => self.wait(realization, reply, false, move |fs, reply| {
                    fs.lookup(parent, name, reply)
                }),
                Err(e) => reply.error(e),
            },
            kind @ Inode::Tree { .. } => self.lookup_in_tree(parent, &kind, &name, reply),
        }
    }

    pub(super) fn lookup_in_tree(&self, parent: u64, parent_kind: &Inode, name: &[u8], reply: Reply) {
        let Inode::Tree {
            node: Node::Directory { tree },
            island,
        } = parent_kind
        else {
            return reply.error(libc::ENOTDIR);
        };
        let entries = match self.entries(tree, island) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        match entries.binary_search_by(|e| e.name.as_slice().cmp(name)) {
            Ok(at) => {
                let kind = Inode::Tree {
                    node: entries[at].node.clone(),
                    island: island.clone(),
                };
                let ino = self.look_up(parent, name, || kind.clone());
                self.answer_entry(reply, ino, &kind);
            }
            // A negative entry with a long TTL: the kernel remembers the absence.
            Err(_) => reply.negative_entry(TREE_TTL),
        }
    }
}

/// What a name means one level below a forge's browsing path.
enum Step {
    /// Another name of the repository's path.
    Deeper,
    /// The ref: the path names a repository, and this is the island.
    Ref(Box<Island>),
    /// Nothing: not a name the forge could have.
    Nothing,
}

/// The meaning of `name` below `path` in `forge`'s browsing levels: `github/OWNER/REPO/REF`,
/// `sourcehut/~OWNER/REPO/REF`, and `gitlab/GROUP/…/PROJECT/-/REF` — GitLab nests groups to
/// any depth, so the project's path ends where GitLab's own URLs end it, at `-`.
fn browse_step(forge: Format, path: &[Arc<str>], name: &str) -> Step {
    let name_ok = crate::island::forge_name_ok(name) && name.len() <= 100;
    let depth = path.len();
    let deeper = match forge {
        Format::Gitlab if path.last().is_some_and(|p| &**p == "-") => {
            let project = path[..depth - 1].join("/");
            return browsed_island(forge, &project, name).map_or(Step::Nothing, |island| Step::Ref(Box::new(island)));
        }
        Format::Gitlab if name == "-" => depth >= 2,
        Format::Gitlab => name_ok && depth < crate::island::MAX_GITLAB_DEPTH,
        Format::Sourcehut if depth == 0 => name.strip_prefix('~').is_some_and(crate::island::forge_name_ok),
        _ if depth < 2 => name_ok,
        _ => {
            return browsed_island(forge, &path.join("/"), name)
                .map_or(Step::Nothing, |island| Step::Ref(Box::new(island)));
        }
    };
    if deeper { Step::Deeper } else { Step::Nothing }
}

/// A browsed repository at a ref as an island, validated as a literal would be.
fn browsed_island(format: Format, location: &str, reference: &str) -> Option<Island> {
    // A full commit id is that commit (pinned: no ref round trip when its tree is stored), as
    // git itself reads 40 hex digits before any ref of that name.
    let is_commit = reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit());
    let config = if is_commit {
        Config {
            rev: Some(reference.to_ascii_lowercase()),
            ..Config::default()
        }
    } else {
        Config {
            r#ref: Some(reference.to_owned()),
            ..Config::default()
        }
    };
    let island = Island {
        format,
        location: location.to_owned(),
        config,
        subpath: None,
    };
    island.to_string().parse().ok()
}
