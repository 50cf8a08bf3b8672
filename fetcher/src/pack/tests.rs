use std::collections::BTreeMap;
use std::path::Path;

use miniz_oxide::deflate::compress_to_vec_zlib;

use super::*;
use crate::sha1::sha1;
use crate::testing::{RecordingSink, TempDir, Trickle, git, git_repo, git_with_input};

/// Every object of the repository at `dir`: id → (type number, contents), from `git cat-file`.
fn all_objects(dir: &Path) -> BTreeMap<[u8; 20], (u8, Vec<u8>)> {
    let list = git(dir, &["cat-file", "--batch-all-objects", "--batch-check=%(objectname)"]);
    let out = git_with_input(dir, &["cat-file", "--batch"], &list);
    let mut objects = BTreeMap::new();
    let mut rest = &out[..];
    while !rest.is_empty() {
        let nl = rest.iter().position(|&b| b == b'\n').unwrap();
        let head = std::str::from_utf8(&rest[..nl]).unwrap();
        let mut fields = head.split(' ');
        let id = crate::sha1::parse_hex(fields.next().unwrap().as_bytes()).unwrap();
        let kind = match fields.next().unwrap() {
            "commit" => 1,
            "tree" => 2,
            "blob" => 3,
            "tag" => 4,
            other => panic!("{other}"),
        };
        let size: usize = fields.next().unwrap().parse().unwrap();
        objects.insert(id, (kind, rest[nl + 1..nl + 1 + size].to_vec()));
        rest = &rest[nl + 2 + size..];
    }
    objects
}

fn read(pack: &[u8]) -> Result<(Pack, RecordingSink)> {
    let mut sink = RecordingSink::default();
    let parsed = Pack::read(&mut Trickle::new(pack), &mut sink, &mut |_, _, _, _| Ok(()))?;
    assert!(sink.scratch == pack, "the scratch file holds the pack");
    Ok((parsed, sink))
}

/// The raw type numbers of a pack's objects, as the pack has them.
fn raw_types(pack: &Pack, bytes: &[u8]) -> Vec<u8> {
    pack.objs.iter().map(|o| (bytes[o.start as usize] >> 4) & 7).collect()
}

/// Reads `bytes` and checks every object of the repository against it, twice (the second time
/// mostly from the cache, or past it).
fn check_pack(dir: &Path, bytes: &[u8]) -> Vec<u8> {
    let objects = all_objects(dir);
    let (mut pack, mut sink) = read(bytes).unwrap();
    assert_eq!(pack.objs.len(), objects.len());
    for _ in 0..2 {
        for (id, (kind, data)) in &objects {
            let (i, k) = pack.lookup(id).unwrap_or_else(|| panic!("{} missing", hex(id)));
            assert_eq!(k, *kind, "{}", hex(id));
            assert_eq!(*pack.load(&mut sink, i).unwrap(), *data, "{}", hex(id));
            let mut streamed = Vec::new();
            pack.stream(&mut sink, i, &mut |_, piece| {
                assert!(piece.len() <= 64 * 1024);
                streamed.extend_from_slice(piece);
                Ok(())
            })
            .unwrap();
            assert_eq!(streamed, *data);
        }
    }
    assert!(pack.cached <= CACHE);
    raw_types(&pack, bytes)
}

fn pack_objects(dir: &Path, args: &[&str]) -> Vec<u8> {
    let mut all = vec!["pack-objects", "--stdout", "--all", "-q"];
    all.extend_from_slice(args);
    git_with_input(dir, &all, b"")
}

#[test]
fn reads_packs_with_offset_deltas() {
    let tmp = TempDir::new("pack-ofs");
    git_repo(tmp.path());
    let bytes = pack_objects(tmp.path(), &["--delta-base-offset"]);
    let types = check_pack(tmp.path(), &bytes);
    assert!(types.iter().filter(|&&t| t == OFS_DELTA).count() > 10, "{types:?}");
    assert!(!types.contains(&REF_DELTA));
}

#[test]
fn reads_packs_with_ref_deltas() {
    let tmp = TempDir::new("pack-ref");
    git_repo(tmp.path());
    let bytes = pack_objects(tmp.path(), &[]);
    let types = check_pack(tmp.path(), &bytes);
    assert!(types.iter().filter(|&&t| t == REF_DELTA).count() > 10, "{types:?}");
    assert!(!types.contains(&OFS_DELTA));
}

#[test]
fn reads_a_repacked_pack_file() {
    let tmp = TempDir::new("pack-repack");
    git_repo(tmp.path());
    git(tmp.path(), &["repack", "-adfq", "--depth=20"]);
    let dir = tmp.path().join(".git/objects/pack");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pack"))
        .unwrap();
    let bytes = std::fs::read(file).unwrap();
    let types = check_pack(tmp.path(), &bytes);
    assert!(types.contains(&OFS_DELTA));
}

#[test]
fn refuses_corrupt_and_truncated_packs() {
    let tmp = TempDir::new("pack-corrupt");
    git_repo(tmp.path());
    let bytes = pack_objects(tmp.path(), &["--delta-base-offset"]);
    // A flipped bit anywhere: bad zlib data, a wrong size, an Adler-32 or a pack checksum
    // mismatch, but never a pack taken as good.
    let step = bytes.len() / 300;
    for at in (0..bytes.len()).step_by(step).chain(bytes.len() - 20..bytes.len()) {
        let mut bad = bytes.clone();
        bad[at] ^= 0x04;
        assert!(read(&bad).is_err(), "flip at {at} of {}", bytes.len());
    }
    for cut in [0, 5, 12, 13, 100, bytes.len() / 2, bytes.len() - 21, bytes.len() - 1] {
        let e = read(&bytes[..cut]).err().unwrap();
        assert!(e.message().contains("truncated pack"), "cut at {cut}: {e}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(
        read(&long).err().unwrap().message(),
        "corrupt pack: data after its checksum"
    );
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert_eq!(
        read(&bad).err().unwrap().message(),
        "the server did not send a git pack"
    );
    let mut bad = bytes;
    bad[7] = 9;
    assert_eq!(
        read(&bad).err().unwrap().message(),
        "corrupt pack: unknown pack version"
    );
}

// Packs built by hand, for what git never writes.

fn object_header(kind: u8, size: usize) -> Vec<u8> {
    let mut out = vec![(kind << 4) | (size & 15) as u8];
    let mut rest = size >> 4;
    while rest > 0 {
        *out.last_mut().unwrap() |= 0x80;
        out.push((rest & 0x7f) as u8);
        rest >>= 7;
    }
    out
}

enum Part<'a> {
    Whole(u8, &'a [u8]),
    Ref([u8; 20], &'a [u8]),
    /// A delta against the object this many entries back.
    Ofs(usize, &'a [u8]),
    /// Raw bytes for an object, as given.
    Raw(Vec<u8>),
}

fn build(parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = b"PACK\0\0\0\x02".to_vec();
    out.extend_from_slice(&(parts.len() as u32).to_be_bytes());
    let mut starts = Vec::new();
    for part in parts {
        starts.push(out.len());
        match part {
            Part::Whole(kind, data) => {
                out.extend(object_header(*kind, data.len()));
                out.extend(compress_to_vec_zlib(data, 6));
            }
            Part::Ref(base, delta) => {
                out.extend(object_header(REF_DELTA, delta.len()));
                out.extend_from_slice(base);
                out.extend(compress_to_vec_zlib(delta, 6));
            }
            Part::Ofs(back, delta) => {
                let here = *starts.last().unwrap();
                let mut n = (here - starts[starts.len() - 1 - back]) as u64;
                out.extend(object_header(OFS_DELTA, delta.len()));
                let mut bytes = vec![(n & 0x7f) as u8];
                n >>= 7;
                while n > 0 {
                    n -= 1;
                    bytes.push(0x80 | (n & 0x7f) as u8);
                    n >>= 7;
                }
                bytes.reverse();
                out.extend(bytes);
                out.extend(compress_to_vec_zlib(delta, 6));
            }
            Part::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
    let sum = sha1(&out);
    out.extend_from_slice(&sum);
    out
}

fn id(kind: &str, data: &[u8]) -> [u8; 20] {
    let mut all = format!("{kind} {}\0", data.len()).into_bytes();
    all.extend_from_slice(data);
    sha1(&all)
}

/// A delta turning `base` into `base + suffix`.
fn append_delta(base: &[u8], suffix: &[u8]) -> Vec<u8> {
    assert!(base.len() < 128 && base.len() + suffix.len() < 128 && !base.is_empty());
    let mut d = vec![base.len() as u8, (base.len() + suffix.len()) as u8];
    d.extend_from_slice(&[0x90, base.len() as u8]);
    d.push(suffix.len() as u8);
    d.extend_from_slice(suffix);
    d
}

#[test]
fn ref_delta_before_its_base_and_chains() {
    let a = b"hello".to_vec();
    let ab = [&a[..], b" world"].concat();
    let abc = [&ab[..], b"!"].concat();
    let d1 = append_delta(&a, b" world");
    let d2 = append_delta(&ab, b"!");
    // abc's delta first (against ab, itself a delta), then ab's (against a), then a.
    let bytes = build(&[
        Part::Ref(id("blob", &ab), &d2),
        Part::Ref(id("blob", &a), &d1),
        Part::Whole(BLOB, &a),
        Part::Ofs(1, &append_delta(&a, b"?")),
    ]);
    let (mut pack, mut sink) = read(&bytes).unwrap();
    for data in [&a, &ab, &abc, &b"hello?".to_vec()] {
        let (i, kind) = pack.lookup(&id("blob", data)).unwrap();
        assert_eq!(kind, BLOB);
        assert_eq!(*pack.load(&mut sink, i).unwrap(), *data);
    }
}

#[test]
fn refuses_unresolvable_deltas() {
    let a = b"hello".to_vec();
    let missing = build(&[Part::Whole(BLOB, &a), Part::Ref([7; 20], &append_delta(&a, b"x"))]);
    assert_eq!(
        read(&missing).err().unwrap().message(),
        format!("corrupt pack: a delta's base {} is not in the pack", hex(&[7; 20]))
    );
    // Two deltas, each against the other.
    let x = append_delta(&a, b"x");
    let y = append_delta(&a, b"y");
    let ax = [&a[..], b"x"].concat();
    let ay = [&a[..], b"y"].concat();
    let cycle = build(&[Part::Ref(id("blob", &ay), &x), Part::Ref(id("blob", &ax), &y)]);
    assert!(read(&cycle).err().unwrap().message().contains("is not in the pack"));
    // A delta whose base has another size than the delta says.
    let bad = build(&[Part::Whole(BLOB, b"hi"), Part::Ofs(1, &x)]);
    assert_eq!(
        read(&bad).err().unwrap().message(),
        "corrupt delta: its base has another size"
    );
}

#[test]
fn refuses_bad_headers() {
    let mut wrong_size = object_header(BLOB, 6);
    wrong_size.extend(compress_to_vec_zlib(b"hello", 6));
    let e = read(&build(&[Part::Raw(wrong_size)])).err().unwrap();
    assert_eq!(
        e.message(),
        "pack object at offset 12: corrupt pack: an object is smaller than its header says"
    );
    let mut wrong_size = object_header(BLOB, 4);
    wrong_size.extend(compress_to_vec_zlib(b"hello", 6));
    let e = read(&build(&[Part::Raw(wrong_size)])).err().unwrap();
    assert!(e.message().ends_with("an object is larger than its header says"), "{e}");
    let mut odd = object_header(5, 5);
    odd.extend(compress_to_vec_zlib(b"hello", 6));
    let e = read(&build(&[Part::Raw(odd)])).err().unwrap();
    assert!(e.message().ends_with("unknown object type"), "{e}");
    // An offset delta pointing into the middle of an object.
    let mut mid = object_header(OFS_DELTA, 1);
    mid.push(3);
    mid.extend(compress_to_vec_zlib(b"x", 6));
    let e = read(&build(&[Part::Whole(BLOB, b"hello"), Part::Raw(mid)]))
        .err()
        .unwrap();
    assert!(e.message().ends_with("a delta's base offset is not an object"), "{e}");
    // Counts that promise more objects than there are.
    let mut short = build(&[Part::Whole(BLOB, b"hello")]);
    short[11] = 2;
    assert!(read(&short).err().unwrap().message().contains("truncated pack"));
}

#[test]
fn duplicate_and_empty_objects() {
    let bytes = build(&[Part::Whole(BLOB, b""), Part::Whole(BLOB, b""), Part::Whole(TREE, b"")]);
    let (mut pack, mut sink) = read(&bytes).unwrap();
    let (i, _) = pack.lookup(&id("tree", b"")).unwrap();
    assert_eq!(hex(&id("tree", b"")), "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
    assert!(pack.load(&mut sink, i).unwrap().is_empty());
    assert!(pack.lookup(&id("blob", b"")).is_some());
    assert!(pack.lookup(&id("blob", b"x")).is_none());
}

/// Ids come from the contents, not from the pack: a blob changed in transit (with the pack's
/// checksum made to match) is not found under the id a tree names it by.
#[test]
fn a_changed_object_is_not_found_under_its_id() {
    let tmp = TempDir::new("pack-changed");
    git_repo(tmp.path());
    let objects = all_objects(tmp.path());
    let (id, data) = objects
        .iter()
        .find(|(_, (kind, data))| *kind == BLOB && data.starts_with(b"deep"))
        .map(|(id, (_, data))| (*id, data.clone()))
        .unwrap();
    let mut changed = data.clone();
    changed[0] ^= 0x20;
    let (pack, _) = read(&build(&[Part::Whole(BLOB, &changed)])).unwrap();
    assert!(pack.lookup(&id).is_none());
    assert!(pack.lookup(&self::id("blob", &changed)).is_some());
}
