//! Handing stored trees over to the kernel. FUSE stays the front door and does the laziness;
//! once a tree the mount serves is whole in the store, its image is written in the background
//! (store::images) and mounted by the kernel on the tree's directory of the FUSE mount
//! ([`kernel`]), the way autofs hands a lookup to a real mount. From then on the kernel serves
//! it alone, at its own speed; whoever was already inside the FUSE tree (a shell, an open file)
//! goes on through FUSE. Where it cannot — not root, a kernel without file-backed EROFS, an
//! image cache that is full, `--no-kernel-serve` — trees stay on FUSE, and one log line says
//! why.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::islands::Served;
use super::kernel;
use crate::hash::TreeHash;
use crate::store::Store;
use crate::store::images::Label;
use crate::sync::MutexExt;

/// Settings for handing trees over.
#[derive(Clone, Debug)]
pub struct HandoverOptions {
    /// Whether to hand trees over at all (`--no-kernel-serve` says no).
    pub enabled: bool,
    /// The most bytes the image cache may hold (`image-cache-size`).
    pub cache_size: u64,
}

/// One tree to hand over: where (relative to the mount point) and what; `replacing` the tree
/// an image mounted there shows, if one is.
struct Job {
    at: PathBuf,
    tree: TreeHash,
    label: Label,
    replacing: Option<TreeHash>,
}

/// How a place of the mount is served.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Handed {
    /// Queued, or being written.
    Pending,
    /// Mounted by the kernel.
    Mounted(TreeHash),
    /// Left on FUSE (the reason was logged).
    Fuse,
}

/// Trees handed over to the kernel, and the worker that does it.
pub struct Handover {
    mountpoint: PathBuf,
    store: Store,
    owner: (u32, u32),
    cache_size: u64,
    jobs: Mutex<mpsc::Sender<Job>>,
    handed: Mutex<HashMap<PathBuf, Handed>>,
    /// The places an image is mounted on; `None` once the mount is going away (nothing is
    /// attached any more). Held while attaching, so that detaching everything cannot race an
    /// attach.
    attached: Mutex<Option<HashSet<PathBuf>>>,
    /// Why trees stay on FUSE for the rest of the mount, once that is known.
    off: Mutex<Option<String>>,
}

impl Handover {
    /// Hands trees over below `mountpoint` as `options` say; `None` (after one log line) where
    /// it cannot or is not to.
    pub fn start(mountpoint: &Path, store: &Store, options: &HandoverOptions) -> Option<Arc<Handover>> {
        if !options.enabled {
            tracing::info!("trees are served through FUSE (--no-kernel-serve)");
            return None;
        }
        if let Some(why) = kernel::unavailable() {
            tracing::info!("trees are served through FUSE: {why}");
            return None;
        }
        let (jobs, queue) = mpsc::channel();
        // SAFETY: plain getters.
        let owner = unsafe { (libc::getuid(), libc::getgid()) };
        let handover = Arc::new(Handover {
            mountpoint: mountpoint.to_owned(),
            store: store.clone(),
            owner,
            cache_size: options.cache_size,
            jobs: Mutex::new(jobs),
            handed: Mutex::default(),
            attached: Mutex::new(Some(HashSet::new())),
            off: Mutex::default(),
        });
        let worker = Arc::downgrade(&handover);
        let spawned = std::thread::Builder::new().name("handover".into()).spawn(move || {
            for job in queue {
                let Some(handover) = worker.upgrade() else { break };
                handover.hand_over(job);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("trees are served through FUSE: cannot start the handover thread ({e})");
            return None;
        }
        Some(handover)
    }

    /// Offers `served`, at `at` below the mount point, to the kernel: queued once it is whole
    /// in the store and a directory (an image shows a directory).
    pub fn offer(&self, at: PathBuf, served: &Served) {
        if !served.contents.is_complete() || !matches!(served.root, crate::hash::tree::Node::Directory { .. }) {
            return;
        }
        if self.off.locked().is_some() {
            return;
        }
        let replacing = {
            let mut handed = self.handed.locked();
            let replacing = match handed.get(&at) {
                None => None,
                // Another tree is mounted there (the island moved): the new one replaces it.
                Some(Handed::Mounted(tree)) if *tree != served.tree => Some(*tree),
                Some(_) => return,
            };
            handed.insert(at.clone(), Handed::Pending);
            replacing
        };
        let label = Label {
            rev: served.rev.clone(),
            island: served.island_xattr(),
            owner: self.owner,
        };
        let job = Job {
            at,
            tree: served.tree,
            label,
            replacing,
        };
        let _ = self.jobs.locked().send(job);
    }

    /// Writes the job's image (if the cache lacks it) and mounts it.
    fn hand_over(&self, job: Job) {
        let target = self.mountpoint.join(&job.at);
        let outcome = self.image_and_mount(&job, &target);
        let state = match outcome {
            Ok(()) => Handed::Mounted(job.tree),
            Err(Why::ThisTree(why)) => {
                tracing::info!("{} stays on FUSE: {why}", target.display());
                match job.replacing {
                    // The old image stays until the new one can take its place.
                    Some(old) => Handed::Mounted(old),
                    None => Handed::Fuse,
                }
            }
            Err(Why::Everything(why)) => {
                tracing::warn!("trees are served through FUSE from now on: {why}");
                *self.off.locked() = Some(why);
                Handed::Fuse
            }
        };
        self.handed.locked().insert(job.at, state);
    }

    fn image_and_mount(&self, job: &Job, target: &Path) -> Result<(), Why> {
        let started = std::time::Instant::now();
        let keep: HashSet<TreeHash> = self.mounted().into_iter().collect();
        let mut again = false;
        loop {
            let image = match self.store.image(&job.tree, &job.label, self.cache_size, &keep) {
                Ok(Some(image)) => image,
                Ok(None) => {
                    return Err(Why::ThisTree(format!(
                        "the image cache is full (image-cache-size {} bytes, the images in it in use)",
                        self.cache_size
                    )));
                }
                Err(e) => return Err(Why::ThisTree(format!("cannot write its image ({e:#})"))),
            };
            let mounted = {
                let mut attached = self.attached.locked();
                let Some(places) = attached.as_mut() else {
                    return Err(Why::ThisTree("the mount is going away".into()));
                };
                let mounted = match job.replacing {
                    Some(_) => kernel::replace(&image, target),
                    None => kernel::attach(&image, target),
                };
                if mounted.is_ok() {
                    places.insert(job.at.clone());
                }
                mounted
            };
            match mounted {
                Ok(()) => {
                    tracing::info!(
                        "{} is served by the kernel from its image ({} in {:.2} s)",
                        target.display(),
                        if image.built { "written" } else { "cached" },
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                // A cached image the kernel refuses may be damaged: written again, once.
                Err(e) if !image.built && !again => {
                    tracing::warn!("the cached image of {} did not mount ({e}); writing it again", job.tree);
                    self.store.forget_image(&job.tree, &job.label);
                    again = true;
                }
                // A kernel without file-backed EROFS (before 6.12) says so for every image;
                // an image on a filesystem the kernel cannot read a file-backed mount from
                // (tmpfs) too.
                Err(e) => {
                    return Err(match e.raw_os_error() {
                        Some(libc::ENOTBLK | libc::EOPNOTSUPP) => Why::Everything(format!(
                            "the kernel cannot mount images from {} ({e}; file-backed EROFS needs Linux 6.12+ and \
                             a store on a disk filesystem, not tmpfs)",
                            self.store.root().display()
                        )),
                        Some(libc::EPERM | libc::EACCES) => {
                            Why::Everything(format!("the kernel refuses to mount ({e})"))
                        }
                        _ => Why::ThisTree(format!("its image does not mount ({e})")),
                    });
                }
            }
        }
    }

    /// The trees mounted now.
    fn mounted(&self) -> Vec<TreeHash> {
        self.handed
            .locked()
            .values()
            .filter_map(|h| match h {
                Handed::Mounted(tree) => Some(*tree),
                _ => None,
            })
            .collect()
    }

    /// Whether an image is mounted at `at` (or one is replacing it): then the kernel serves
    /// that place, and FUSE must not have the kernel forget its entry (which would detach
    /// the image).
    pub fn is_mounted(&self, at: &Path) -> bool {
        self.attached
            .locked()
            .as_ref()
            .is_some_and(|places| places.contains(at))
    }

    /// Detaches every image mounted below the mount point, for good: the mount is going
    /// away (before the FUSE mount goes, or after it went).
    pub fn detach_all(&self) {
        let mut attached = self.attached.locked();
        *attached = None;
        kernel::detach_below(&self.mountpoint);
        self.handed.locked().clear();
    }
}

/// Why a tree stays on FUSE: this tree only, or every tree from now on.
enum Why {
    ThisTree(String),
    Everything(String),
}
