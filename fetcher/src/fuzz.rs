//! Fuzzing every parser that reads network input: archives (the format sniffing, tar, zip,
//! each decompressor), pkt-lines and ref advertisements, packs and deltas. No nightly
//! toolchain (so no `cargo fuzz`) is available to this project, so these are property tests
//! over mutated bytes: valid seeds made by the real tools (`tar`, `gzip`, `bzip2`, `xz`,
//! `zstd`, `zip`, `git`), changed by a small deterministic mutator (bit flips, interesting
//! values, cuts, splices, repeated and deleted runs, length fields set to their limits), each
//! input run to its end.
//!
//! What must hold for every input: no panic (in the module, a panic is exit code 101), the
//! host's rules kept (paths normalized, parents before children; the sink below checks them
//! as the host does), and bounded cost: at most [`PEAK`] bytes of heap at once (the largest
//! dictionary xz writes, plus room) and [`SLOW`] per input.
//!
//! `CAB_FUZZ_SECONDS` is the time each target gets (default 1: a smoke run in every `cargo
//! test`); `CAB_FUZZ_SEED` picks the mutator's seed (default: a fixed one, so that a plain run
//! is reproducible). Inputs that once failed live in `fuzz/regressions/TARGET/` and run first,
//! every time; a new failure is written to `target/fuzz-failures/` and named in the panic.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::io::{Refused, Sink, Source};
use crate::testing::{TempDir, compress, drain, git, git_repo, make_tree, run};

/// The most heap one input may hold at once.
const PEAK: usize = 2 << 30;
/// The longest one input may take.
const SLOW: Duration = Duration::from_secs(20);
/// The most output one input may make before the sink refuses (as the host's limits do).
const OUTPUT: u64 = 64 << 20;

// ---------------------------------------------------------------------------------------------
// Heap accounting: a counting wrapper around the system allocator, per thread (the tests run
// in parallel), so that a run's peak is its own.

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static HIGH: Cell<usize> = const { Cell::new(0) };
}

/// The test build's allocator: the system's, counted.
pub struct Counting;

// SAFETY: every call is passed to the system allocator unchanged; only counters are updated.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as the caller promised.
        grew(unsafe { std::alloc::System.alloc(layout) }, layout.size())
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as the caller promised.
        grew(unsafe { std::alloc::System.alloc_zeroed(layout) }, layout.size())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(layout.size())));
        // SAFETY: as the caller promised.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        // SAFETY: as the caller promised.
        let moved = grew(unsafe { std::alloc::System.realloc(ptr, layout, new) }, new);
        if !moved.is_null() {
            let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(layout.size())));
        }
        moved
    }
}

/// Counts `n` bytes if the allocation `p` succeeded (a refused one holds nothing).
fn grew(p: *mut u8, n: usize) -> *mut u8 {
    if !p.is_null() {
        let _ = LIVE.try_with(|l| {
            let now = l.get() + n;
            l.set(now);
            let _ = HIGH.try_with(|h| h.set(h.get().max(now)));
        });
    }
    p
}

/// Runs `f`, returning how much more heap than before it held at its peak.
fn peak_of(f: impl FnOnce()) -> usize {
    let before = LIVE.with(Cell::get);
    HIGH.with(|h| h.set(before));
    f();
    HIGH.with(Cell::get).saturating_sub(before)
}

// ---------------------------------------------------------------------------------------------
// The mutator.

/// xorshift64*: small, fast and deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    u64::MAX,
];

/// Changes `data` a few times, sometimes splicing in part of `other`.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(6) {
        let len = data.len();
        match rng.below(10) {
            0 | 1 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            2 if len > 0 => {
                let at = rng.below(len);
                data[at] = rng.next() as u8;
            }
            3 if len > 0 => {
                // A little-endian or big-endian field set to a limit.
                let width = [1, 2, 4, 8][rng.below(4)];
                let at = rng.below(len);
                let value = INTERESTING[rng.below(INTERESTING.len())];
                let bytes = if rng.below(2) == 0 {
                    value.to_le_bytes()
                } else {
                    value.to_be_bytes()
                };
                for (i, b) in bytes.iter().take(width).enumerate() {
                    if let Some(x) = data.get_mut(at + i) {
                        *x = *b;
                    }
                }
            }
            4 if len > 0 => data.truncate(rng.below(len)),
            5 if len > 0 => {
                let at = rng.below(len);
                let n = rng.below((len - at).min(4096)) + 1;
                data.drain(at..(at + n).min(len));
            }
            6 if len > 0 => {
                // Repeat a run.
                let at = rng.below(len);
                let n = (rng.below(512) + 1).min(len - at);
                let run: Vec<u8> = data[at..at + n].to_vec();
                let to = rng.below(len);
                data.splice(to..to, run);
            }
            7 if !other.is_empty() => {
                // Splice: our head, the other's tail.
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            8 => {
                let at = rng.below(len + 1);
                let junk: Vec<u8> = (0..rng.below(64) + 1).map(|_| rng.next() as u8).collect();
                data.splice(at..at, junk);
            }
            _ if len > 0 => {
                // Printable text where a number or name goes.
                let at = rng.below(len);
                data[at] = b"0123456789 /.-=\n\0"[rng.below(17)];
            }
            _ => data.push(rng.next() as u8),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A sink that keeps the host's rules and limits.

/// Checks every call as the host does, refusing what the host refuses (a path made twice, a
/// parent that is not a directory, output past [`OUTPUT`]); panics on what the fetcher
/// promises never to ask (a path that is not normalized), which is a bug to find.
#[derive(Default)]
struct HostLike {
    made: BTreeMap<Vec<u8>, bool>,
    open: BTreeMap<i32, Vec<u8>>,
    next: i32,
    written: u64,
    scratch: Vec<u8>,
}

impl HostLike {
    fn place(&mut self, path: &[u8], dir: bool) -> Result<(), Refused> {
        assert!(
            !path.is_empty() && !path.starts_with(b"/") && !path.ends_with(b"/"),
            "bad path {path:?}"
        );
        assert!(
            path.split(|&b| b == b'/')
                .all(|c| !c.is_empty() && c != b"." && c != b".." && !c.contains(&0)),
            "bad path {path:?}"
        );
        if self.made.contains_key(path) {
            return Err(Refused);
        }
        if let Some(slash) = path.iter().rposition(|&b| b == b'/')
            && self.made.get(&path[..slash]) != Some(&true)
        {
            return Err(Refused);
        }
        self.made.insert(path.to_vec(), dir);
        Ok(())
    }

    fn count(&mut self, n: usize) -> Result<(), Refused> {
        self.written += n as u64;
        if self.written > OUTPUT { Err(Refused) } else { Ok(()) }
    }
}

impl Sink for HostLike {
    fn mkdir(&mut self, path: &[u8]) -> Result<(), Refused> {
        self.place(path, true)
    }
    fn create(&mut self, path: &[u8], _: bool) -> Result<i32, Refused> {
        self.place(path, false)?;
        self.next += 1;
        self.open.insert(self.next, path.to_vec());
        Ok(self.next)
    }
    fn write(&mut self, file: i32, data: &[u8]) -> Result<(), Refused> {
        assert!(self.open.contains_key(&file), "write to a file not open");
        assert!(data.len() <= 64 * 1024, "chunk over 64 KiB");
        self.count(data.len())
    }
    fn close(&mut self, file: i32) -> Result<(), Refused> {
        self.open.remove(&file).map(drop).ok_or(Refused)
    }
    fn symlink(&mut self, path: &[u8], target: &[u8]) -> Result<(), Refused> {
        if target.is_empty() || target.contains(&0) {
            return Err(Refused);
        }
        self.place(path, false)
    }
    fn copy(&mut self, from: &[u8], path: &[u8]) -> Result<(), Refused> {
        match self.made.get(from) {
            Some(false) if !self.open.values().any(|p| p == from) => self.place(path, false),
            _ => Err(Refused),
        }
    }
    fn set_root(&mut self, path: &[u8]) -> Result<(), Refused> {
        assert!(self.made.contains_key(path), "root {path:?} was not made");
        assert!(self.open.is_empty(), "root set with files open");
        Ok(())
    }
    fn scratch_append(&mut self, data: &[u8]) -> Result<u64, Refused> {
        self.count(data.len())?;
        self.scratch.extend_from_slice(data);
        Ok((self.scratch.len() - data.len()) as u64)
    }
    fn scratch_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Refused> {
        let rest = self.scratch.get(offset as usize..).ok_or(Refused)?;
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// The driver.

fn budget() -> Duration {
    let secs = std::env::var("CAB_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs.max(0.0))
}

fn regressions(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut found: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Runs one input, checking the properties; on a failure, keeps the input and says where.
fn check(target: &str, input: &[u8], run_one: &dyn Fn(&[u8])) {
    let started = Instant::now();
    let mut peak = 0;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        peak = peak_of(|| run_one(input));
    }));
    let took = started.elapsed();
    let problem = match outcome {
        Err(_) => Some("panicked".to_owned()),
        Ok(()) if peak > PEAK => Some(format!("held {peak} bytes of heap at once")),
        Ok(()) if took > SLOW => Some(format!("took {took:?}")),
        Ok(()) => None,
    };
    if let Some(problem) = problem {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/fuzz-failures")
            .join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let name = format!(
            "{:016x}.bin",
            crate::sha1::sha1(input)[..8]
                .iter()
                .fold(0u64, |a, &b| a << 8 | u64::from(b))
        );
        std::fs::write(dir.join(&name), input).unwrap();
        panic!(
            "fuzz target {target}: an input {problem}; kept as {}/{name} (move it to fuzz/regressions/{target}/ once fixed)",
            dir.display()
        );
    }
}

/// Fuzzes `run_one` from `seeds` for the budget; returns how many inputs ran.
fn fuzz(target: &str, seeds: &[Vec<u8>], run_one: &dyn Fn(&[u8])) -> u64 {
    for (path, input) in regressions(target) {
        eprintln!("fuzz {target}: regression {}", path.display());
        check(target, &input, run_one);
    }
    for seed in seeds {
        check(target, seed, run_one);
    }
    let seed = std::env::var("CAB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cab1_u64);
    let mut rng = Rng(seed
        ^ target.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
        | 1);
    let (started, budget) = (Instant::now(), budget());
    let mut runs = 0u64;
    while started.elapsed() < budget {
        let mut input = seeds[rng.below(seeds.len())].clone();
        let other = &seeds[rng.below(seeds.len())];
        mutate(&mut rng, &mut input, other);
        check(target, &input, run_one);
        runs += 1;
    }
    eprintln!("fuzz {target}: {runs} inputs in {:?} (seed {seed})", started.elapsed());
    runs
}

// ---------------------------------------------------------------------------------------------
// Seeds, made once by the real tools.

struct Seeds {
    tar: Vec<u8>,
    archives: Vec<Vec<u8>>,
    pack: Vec<u8>,
    root: [u8; 20],
    refs: Vec<Vec<u8>>,
}

fn seeds() -> &'static Seeds {
    static SEEDS: std::sync::OnceLock<Seeds> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = TempDir::new("fuzz-seeds");
        make_tree(dir.path(), true);
        let top = dir.path().join("top");
        std::fs::hard_link(top.join("run.sh"), top.join("hard")).unwrap();
        // Small: mutations then reach every part of the seeds quickly.
        for big in ["big.bin", "zeros.bin"] {
            std::fs::write(top.join(big), &crate::testing::noise(3000, 1)[..]).unwrap();
        }
        let tar_of = |format: &str| {
            run(Command::new("tar")
                .arg(format!("--format={format}"))
                .arg("-C")
                .arg(dir.path())
                .args(["-cf", "-", "top"]))
        };
        let tar = tar_of("gnu");
        let zip = {
            let out = dir.path().join("top.zip");
            run(Command::new("zip")
                .current_dir(dir.path())
                .arg("-qry")
                .arg(&out)
                .arg("top"));
            std::fs::read(out).unwrap()
        };
        let mut archives = vec![tar.clone(), tar_of("pax"), tar_of("oldgnu"), zip];
        for tool in ["gzip", "bzip2", "xz", "zstd"] {
            archives.push(compress(tool, &tar));
        }
        let repo = dir.path().join("repo");
        let commits = git_repo(&repo);
        let rev = commits.last().unwrap();
        let list = format!("{rev}\n");
        let pack = crate::testing::git_with_input(
            &repo,
            &["pack-objects", "--stdout", "--revs", "--delta-base-offset", "-q"],
            list.as_bytes(),
        );
        let tree = String::from_utf8(git(&repo, &["rev-parse", &format!("{rev}^{{tree}}")])).unwrap();
        let root = crate::sha1::parse_hex(tree.trim().as_bytes()).unwrap();
        let mut v2 = Vec::new();
        for line in [
            format!("{rev} HEAD symref-target:refs/heads/main\n"),
            format!("{rev} refs/heads/main\n"),
            format!("{rev} refs/tags/v1 peeled:{rev}\n"),
        ] {
            crate::pktline::encode(&mut v2, line.as_bytes()).unwrap();
        }
        v2.extend_from_slice(crate::pktline::FLUSH);
        let mut v0 = Vec::new();
        crate::pktline::encode(&mut v0, b"# service=git-upload-pack\n").unwrap();
        v0.extend_from_slice(crate::pktline::FLUSH);
        crate::pktline::encode(
            &mut v0,
            format!("{rev} HEAD\0symref=HEAD:refs/heads/main side-band-64k\n").as_bytes(),
        )
        .unwrap();
        crate::pktline::encode(&mut v0, format!("{rev} refs/heads/main\n").as_bytes()).unwrap();
        v0.extend_from_slice(crate::pktline::FLUSH);
        Seeds {
            tar,
            archives,
            pack,
            root,
            refs: vec![v2, v0],
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The targets.

fn unpack_archive(data: &[u8]) {
    let _ = crate::archive::unpack(&mut &data[..], &mut HostLike::default());
}

#[test]
fn fuzz_archives() {
    assert!(fuzz("archive", &seeds().archives, &unpack_archive) > 0 || budget().is_zero());
}

#[test]
fn fuzz_tar() {
    let s = seeds();
    fuzz("tar", &s.archives[..3], &|data| {
        let _ = crate::tar::extract(&mut &data[..], &mut HostLike::default());
    });
}

#[test]
fn fuzz_zip() {
    fuzz("zip", &seeds().archives[3..4], &|data| {
        let _ = crate::zip::extract(&mut &data[..], &mut HostLike::default());
    });
}

/// Reads a decoder to its end, or to [`OUTPUT`] bytes.
fn decode(src: impl Source) {
    let mut limited = Limited(src, OUTPUT);
    let _ = drain(&mut limited);
}

struct Limited<S>(S, u64);

impl<S: Source> Source for Limited<S> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.1 == 0 {
            return Ok(0);
        }
        let n = self.0.read(buf)?;
        self.1 = self.1.saturating_sub(n as u64);
        Ok(n)
    }
}

#[test]
fn fuzz_decompressors() {
    let tar = &seeds().tar;
    fuzz("gzip", &[compress("gzip", tar)], &|d| {
        decode(crate::gzip::GzDecoder::new(d))
    });
    fuzz("bzip2", &[compress("bzip2", tar)], &|d| {
        decode(crate::bzip2::Bz2Decoder::new(d))
    });
    fuzz("xz", &[compress("xz", tar)], &|d| decode(crate::xz::XzReader::new(d)));
    fuzz("zstd", &[compress("zstd", tar)], &|d| {
        decode(crate::zstd::ZstdReader::new(d))
    });
}

#[test]
fn fuzz_pktlines_and_refs() {
    let s = seeds();
    fuzz("refs", &s.refs, &|data| {
        let want = crate::refs::Want::new(Some("main"));
        let mut resolver = crate::refs::Resolver::new(&want);
        let mut reader = crate::pktline::PktReader::new(data);
        if data.get(4..5) == Some(b"#") {
            let _ = crate::refs::read_advertisement(&mut reader, &mut resolver);
        } else {
            let _ = crate::refs::read_ls_refs(&mut reader, &mut resolver);
        }
        let _ = resolver.resolved();
        let _ = resolver.suggestions();
    });
}

/// A pack read as a fetch reads it, then its tree checked out; the trailing checksum is put
/// right after some mutations, so that they reach past it.
#[test]
fn fuzz_packs_and_deltas() {
    let s = seeds();
    let root = s.root;
    fuzz("pack", std::slice::from_ref(&s.pack), &|data| {
        let mut fixed = data.to_vec();
        if fixed.len() > 32 && fixed[12] & 1 == 0 {
            let n = fixed.len() - 20;
            let sum = crate::sha1::sha1(&fixed[..n]);
            fixed[n..].copy_from_slice(&sum);
        }
        let mut sink = HostLike::default();
        let mut early = crate::checkout::Early::default();
        if early.root(&mut sink, &root).is_err() {
            return;
        }
        let read = crate::pack::Pack::read(&mut &fixed[..], &mut sink, &mut |sink, kind, id, data| {
            if kind == crate::pack::COMMIT {
                Ok(())
            } else {
                early.arrived(sink, kind, id, data)
            }
        });
        if let Ok(mut pack) = read {
            let _ = crate::checkout::checkout(&mut pack, &mut sink, &root, &mut early);
        }
    });
    // Deltas alone: a base and a delta, split at a byte the input chooses.
    let base = crate::testing::noise(2000, 3);
    let mut target = base.clone();
    target.splice(100..200, b"inserted".repeat(10));
    let delta = git_delta(&base, &target);
    let mut seed = vec![(base.len() / 256) as u8, (base.len() % 256) as u8];
    seed.extend_from_slice(&base);
    seed.extend_from_slice(&delta);
    fuzz("delta", &[seed], &|data| {
        let Some((&[hi, lo], rest)) = data.split_first_chunk::<2>() else {
            return;
        };
        let cut = (usize::from(hi) * 256 + usize::from(lo)).min(rest.len());
        let _ = crate::delta::apply(&rest[..cut], &rest[cut..]);
    });
}

/// A delta from `base` to `target` (which is `base` with bytes 100..200 replaced by 80 new
/// ones), in git's delta format: both sizes, a copy of the head, an insert, a copy of the tail.
fn git_delta(base: &[u8], target: &[u8]) -> Vec<u8> {
    let mut delta = Vec::new();
    for size in [base.len(), target.len()] {
        let mut n = size;
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            delta.push(if n > 0 { b | 0x80 } else { b });
            if n == 0 {
                break;
            }
        }
    }
    delta.extend_from_slice(&[0x80 | 0x10, 100]);
    delta.push(80);
    delta.extend_from_slice(&target[100..180]);
    let tail = base.len() - 200;
    delta.extend_from_slice(&[0x80 | 0x01 | 0x10 | 0x20, 200, (tail % 256) as u8, (tail / 256) as u8]);
    delta
}
