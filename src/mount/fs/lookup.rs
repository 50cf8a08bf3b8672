//! Lookups: names at the top (islands, the forges, `by-hash`), the forges' browsing levels
//! — `github/OWNER/REPO/REF`, `sourcehut/~OWNER/REPO/REF`, and GitLab's groups nested to any
//! depth, `gitlab/GROUP/…/PROJECT/-/REF`, where REF is a commit id, a ref, or a prefix of refs
//! (a directory: `release/1.2` is `REPO/release/1.2`) — and names inside served trees.

use std::sync::Arc;

use super::{CabFs, Content, FORGES, Inode, Listed, PANIC_NAME, ROOT, TREE_TTL, forge_top};
use crate::hash::TreeHash;
use crate::hash::tree::Node;
use crate::island::{Config, Format, Island};
use crate::mount::failures::Failure;
use crate::mount::fuse::Reply;
use crate::mount::islands::State;
use crate::mount::refs::{Listing, ListingKey, children};

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
                Some(Step::Ref(island)) => self.lookup_ref(parent, name, *island, reply),
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

impl CabFs {
    /// A name below a repository's browsing level: a commit id, a ref (its tree, once the
    /// one ref round trip has found it), or a prefix of refs (a directory of them, as git's
    /// ref namespace nests them: `release` for `release/1.2`). A branch wins over a tag and a
    /// ref over a prefix, as git reads names; anything else is ENOENT.
    fn lookup_ref(self: &Arc<Self>, parent: u64, name: Vec<u8>, island: Island, reply: Reply) {
        match self.known_in_parent(parent, &island) {
            Some(Known::Prefix) => return self.answer_prefix(parent, &name, reply),
            Some(Known::Missing) => return reply.error(libc::ENOENT),
            Some(Known::Ref) | None => {}
        }
        // A prefix found a moment ago (its listing is kept) was found not to be a ref then.
        if let Some(list) = listing_of(&island).and_then(|key| self.islands.refs().kept(&key))
            && !list.names.is_empty()
        {
            return self.answer_prefix(parent, &name, reply);
        }
        let is_ref = island.config.r#ref.is_some();
        match self.islands.get_island(&island) {
            State::Failed(failure) if failure.not_found() && is_ref => self.lookup_prefix(parent, name, island, reply),
            State::Failed(failure) => reply.error(errno(&failure)),
            State::Pending(realization) if realization.rev().is_none() => {
                // One round trip tells whether the ref exists; if not, whether it is a prefix.
                let again = name.clone();
                self.wait_or(
                    realization,
                    reply,
                    true,
                    move |fs, reply| fs.lookup(parent, again, reply),
                    move |fs, reply, failure| match failure.not_found() && is_ref {
                        true => fs.lookup_prefix(parent, name, island, reply),
                        false => reply.error(errno(failure)),
                    },
                );
            }
            State::Ready(_) | State::Pending(_) => {
                let kind = Inode::Browsed(Arc::new(island));
                let ino = self.look_up(parent, &name, || kind.clone());
                self.answer_entry(reply, ino, &kind);
            }
        }
    }

    /// `island`'s ref is no ref: a directory if refs are named under it, else ENOENT.
    fn lookup_prefix(self: &Arc<Self>, parent: u64, name: Vec<u8>, island: Island, reply: Reply) {
        let Some(key) = listing_of(&island) else {
            return reply.error(libc::ENOENT);
        };
        match self.islands.refs().get(&key) {
            Listing::Ready(list) if list.names.is_empty() => reply.error(libc::ENOENT),
            Listing::Ready(_) => {
                // Not a ref but a directory of them: its ref's failure is no failure to report.
                self.islands.forget_failure(&island);
                self.answer_prefix(parent, &name, reply)
            }
            Listing::Pending(asked) => self.wait_or(
                asked,
                reply,
                false,
                move |fs, reply| fs.lookup_prefix(parent, name, island, reply),
                |_, reply, failure| reply.error(errno(failure)),
            ),
            Listing::Failed(failure) => reply.error(errno(&failure)),
        }
    }

    /// Answers `name` below `parent` as a directory of refs.
    fn answer_prefix(&self, parent: u64, name: &[u8], reply: Reply) {
        let (Some(Inode::Browse(format, path)), Ok(text)) = (self.kind(parent), std::str::from_utf8(name)) else {
            return reply.error(libc::ENOENT);
        };
        let mut deeper = path.to_vec();
        deeper.push(text.into());
        let kind = Inode::Browse(format, deeper.into());
        let ino = self.look_up(parent, name, || kind.clone());
        self.answer_entry(reply, ino, &kind);
    }

    /// What the listing of `parent` (a prefix of refs, kept from a moment ago) says of
    /// `island`'s ref, without asking anything: a listing cut short says nothing of absence.
    fn known_in_parent(&self, parent: u64, island: &Island) -> Option<Known> {
        let Some(Inode::Browse(format, path)) = self.kind(parent) else {
            return None;
        };
        let (location, prefix) = repository(format, &path)?;
        if prefix.is_empty() {
            return None;
        }
        let prefix = prefix.join("/");
        let key = ListingKey {
            repo: repository_island(format, &location),
            prefix: Some(prefix.clone()),
        };
        let list = self.islands.refs().kept(&key)?;
        let reference = island.config.r#ref.as_deref()?;
        let name = reference.strip_prefix(&prefix)?.strip_prefix('/')?;
        match children(&list, Some(&prefix)).into_iter().find(|(n, _)| n == name) {
            Some((_, true)) => Some(Known::Ref),
            Some((_, false)) => Some(Known::Prefix),
            None if list.more == 0 => Some(Known::Missing),
            None => None,
        }
    }

    /// The entries a browsing level shows besides what has been looked up: a repository's
    /// default branch, or the refs and prefixes one level below a prefix. `Err(Some(..))`:
    /// the listing is on its way.
    pub(super) fn listed_refs(
        &self,
        format: Format,
        path: &[Arc<str>],
    ) -> Result<Vec<Listed>, Option<Arc<crate::mount::realization::Realization>>> {
        let Some((location, prefix)) = repository(format, path) else {
            return Ok(Vec::new());
        };
        let prefix = (!prefix.is_empty()).then(|| prefix.join("/"));
        let key = ListingKey {
            repo: repository_island(format, &location),
            prefix: prefix.clone(),
        };
        let list = match self.islands.refs().get(&key) {
            Listing::Ready(list) => list,
            Listing::Pending(asked) => return Err(Some(asked)),
            // A repository's own level lists what was looked up even when its forge fails; a
            // prefix's listing is all it has.
            Listing::Failed(failure) if prefix.is_some() && !failure.not_found() => return Err(None),
            Listing::Failed(_) => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for (name, is_ref) in children(&list, prefix.as_deref()) {
            let full = match &prefix {
                Some(p) => format!("{p}/{name}"),
                None => name.clone(),
            };
            let kind = if is_ref {
                match browsed_island(format, &location, &full, false) {
                    Some(island) => Inode::Browsed(Arc::new(island)),
                    None => continue,
                }
            } else {
                let mut deeper = path.to_vec();
                deeper.push(name.as_str().into());
                Inode::Browse(format, deeper.into())
            };
            out.push((name.into_bytes().into(), kind));
        }
        Ok(out)
    }
}

/// What a kept listing says of a name.
enum Known {
    Ref,
    Prefix,
    Missing,
}

/// ENOENT for what does not exist, EIO for any other failure.
fn errno(failure: &Failure) -> i32 {
    if failure.not_found() { libc::ENOENT } else { libc::EIO }
}

/// Where a browsing path's repository ends: its location, and the prefix of refs below it
/// (`None` above the repository). GitLab's project path ends at `-`.
fn repository(forge: Format, path: &[Arc<str>]) -> Option<(String, &[Arc<str>])> {
    let end = match forge {
        Format::Gitlab => path.iter().position(|p| &**p == "-")?,
        _ if path.len() >= 2 => 2,
        _ => return None,
    };
    let skip = usize::from(forge == Format::Gitlab);
    Some((path[..end].join("/"), &path[end + skip..]))
}

/// The ref listing a browsing path shows, if it is a repository's level (what HEAD points to)
/// or a prefix of refs below it.
pub(super) fn listing_key(forge: Format, path: &[Arc<str>]) -> Option<ListingKey> {
    let (location, prefix) = repository(forge, path)?;
    Some(ListingKey {
        repo: repository_island(forge, &location),
        prefix: (!prefix.is_empty()).then(|| prefix.join("/")),
    })
}

/// A browsed repository with no ref: what its listings are asked of.
fn repository_island(format: Format, location: &str) -> Island {
    Island {
        format,
        location: location.to_owned(),
        config: Config::default(),
        subpath: None,
    }
}

/// The listing that says whether `island`'s ref is a prefix of refs.
fn listing_of(island: &Island) -> Option<ListingKey> {
    Some(ListingKey {
        repo: repository_island(island.format, &island.location),
        prefix: Some(island.config.r#ref.clone()?),
    })
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
    if let Some((location, prefix)) = repository(forge, path) {
        // Below a prefix, a name is the rest of a ref's name, never a commit id.
        let reference = match prefix.is_empty() {
            true => name.to_owned(),
            false => format!("{}/{name}", prefix.join("/")),
        };
        return browsed_island(forge, &location, &reference, prefix.is_empty())
            .map_or(Step::Nothing, |island| Step::Ref(Box::new(island)));
    }
    let name_ok = crate::island::forge_name_ok(name) && name.len() <= 100;
    let depth = path.len();
    let deeper = match forge {
        Format::Gitlab if name == "-" => depth >= 2,
        Format::Gitlab => name_ok && depth < crate::island::MAX_GITLAB_DEPTH,
        Format::Sourcehut if depth == 0 => name.strip_prefix('~').is_some_and(crate::island::forge_name_ok),
        _ => name_ok,
    };
    if deeper { Step::Deeper } else { Step::Nothing }
}

/// A browsed repository at a ref as an island, validated as a literal would be.
fn browsed_island(format: Format, location: &str, reference: &str, commit_ok: bool) -> Option<Island> {
    // A full commit id is that commit (pinned: no ref round trip when its tree is stored), as
    // git itself reads 40 hex digits before any ref of that name.
    let is_commit = commit_ok && reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit());
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
