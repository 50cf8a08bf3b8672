//! Git packs (gitformat-pack), read as they stream in and in bounded memory. The raw pack goes
//! to the host's scratch file as it arrives, and only an index stays here: each object's
//! offset, type, size, id and delta base. Reading an object back means reading its bytes from
//! the scratch file and inflating them again (through its delta chain), with a cache of
//! inflated objects in front, so that memory does not grow with the pack.
//!
//! Everything is checked: the pack's header and trailing SHA-1, each object's inflated size
//! against its header, each zlib stream's Adler-32, and each delta's sizes and instructions.
//! Object ids are computed here, never taken from the pack, so an object found by id is that
//! object.

use alloc::collections::VecDeque;
use alloc::rc::Rc;

use crate::checkout::EARLY_BLOB;
use crate::delta;
use crate::error::{Error, Result};
use crate::inflate::{Inflater, Step};
use crate::io::{Sink, Source};
use crate::prelude::*;
use crate::sha1::{Sha1, hex};

/// Object types, as the pack numbers them.
pub const COMMIT: u8 = 1;
/// A tree.
pub const TREE: u8 = 2;
/// A blob.
pub const BLOB: u8 = 3;
const OFS_DELTA: u8 = 6;
const REF_DELTA: u8 = 7;

/// The names git hashes the object types under, by type number - 1.
const NAMES: [&[u8]; 4] = [b"commit", b"tree", b"blob", b"tag"];

/// Inflated objects kept for reuse (delta bases, trees), in bytes. (Tests use a small cache,
/// to see objects leave it.)
const CACHE: usize = if cfg!(test) { 64 << 10 } else { 32 << 20 };
/// How much of the scratch file or the network is read at once.
const CHUNK: usize = 32 * 1024;

/// `Obj::base` of an object that is not a delta.
const WHOLE: u32 = u32::MAX;
/// `Obj::base` of a REF_DELTA whose base has not been found yet.
const UNLINKED: u32 = u32::MAX - 1;

fn corrupt(why: &str) -> Error {
    Error::new(format!("corrupt pack: {why}"))
}

fn truncated() -> Error {
    Error::new("truncated pack")
}

/// One object of the pack.
struct Obj {
    /// Where its header starts in the pack.
    start: u64,
    /// Where its zlib data starts.
    data: u64,
    /// Its inflated size (for a delta, the delta's).
    size: u64,
    /// Its id, once known. For a REF_DELTA not yet linked, its base's id.
    id: [u8; 20],
    /// Its type (1 to 4) once known; 0 for a delta not yet resolved.
    kind: u8,
    /// Its delta base's index, or [`WHOLE`] or [`UNLINKED`].
    base: u32,
    /// Used since the cache last looked (the clock hand's second chance).
    hot: bool,
    cached: Option<Rc<Vec<u8>>>,
}

/// Shown each whole object as it arrives, with the sink: its type, its id, and its data — the
/// first 46 bytes of a commit (its `tree` line), all of a tree, all of a blob of at most
/// [`EARLY_BLOB`] bytes. Bigger blobs and tags are not shown.
pub type OnObject<'a, K> = dyn FnMut(&mut K, u8, &[u8; 20], &[u8]) -> Result<()> + 'a;

/// A received pack: its index, and the way back to its objects.
pub struct Pack {
    objs: Vec<Obj>,
    /// Open-addressing hash table of object ids: index + 1, 0 for empty.
    table: Vec<u32>,
    /// Where the pack starts in the scratch file.
    base: u64,
    /// Where the trailing checksum starts.
    end: u64,
    inflater: Inflater,
    /// Cached objects, in clock order.
    ring: VecDeque<u32>,
    cached: usize,
}

/// Reads bytes through a buffer, counting its position in the pack: from the network (which
/// is spooled to the scratch file and hashed on the way), or back from the scratch file.
struct Input<'s> {
    net: Option<&'s mut dyn Source>,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// The pack offset of `buf[pos]`.
    at: u64,
    /// Where reading must stop (the scratch file holds more than one object).
    limit: u64,
    eof: bool,
    /// The pack checksum, over the bytes consumed (network only).
    hash: Option<Sha1>,
    /// Where the pack starts in the scratch file.
    base: u64,
}

impl Input<'_> {
    fn fill<K: Sink>(&mut self, sink: &mut K) -> Result<()> {
        if self.pos < self.end || self.eof {
            return Ok(());
        }
        let want = self.limit.saturating_sub(self.at).min(self.buf.len() as u64) as usize;
        let buf = self.buf.get_mut(..want).unwrap_or_default();
        let n = match &mut self.net {
            Some(net) => {
                let n = net.read(buf)?;
                if n > 0 {
                    match sink.scratch_append(buf.get(..n).unwrap_or_default()) {
                        Ok(at) if self.at == 0 => self.base = at,
                        Ok(at) if at == self.base + self.at => {}
                        _ => return Err(Error::new("cannot spool the pack to the scratch file")),
                    }
                }
                n
            }
            None => sink
                .scratch_read(self.base + self.at, buf)
                .ok()
                .filter(|&n| n <= want)
                .ok_or_else(|| Error::new("cannot read the pack back from the scratch file"))?,
        };
        self.pos = 0;
        self.end = n;
        self.eof = n == 0;
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        if let Some(h) = &mut self.hash {
            h.update(self.buf.get(self.pos..self.pos + n).unwrap_or_default());
        }
        self.pos += n;
        self.at += n as u64;
    }

    fn byte<K: Sink>(&mut self, sink: &mut K) -> Result<u8> {
        self.fill(sink)?;
        let b = *self
            .buf
            .get(self.pos)
            .filter(|_| self.pos < self.end)
            .ok_or_else(truncated)?;
        self.consume(1);
        Ok(b)
    }

    /// Inflates one zlib stream of `size` bytes, handing the bytes to `out` as they come.
    fn inflate<K: Sink>(
        &mut self,
        sink: &mut K,
        inflater: &mut Inflater,
        size: u64,
        out: &mut dyn FnMut(&mut K, &[u8]) -> Result<()>,
    ) -> Result<()> {
        inflater.reset();
        let mut left = size;
        loop {
            self.fill(sink)?;
            let (step, used, range) = inflater.step(self.buf.get(self.pos..self.end).unwrap_or_default());
            self.consume(used);
            let data = inflater.output(range);
            left = left
                .checked_sub(data.len() as u64)
                .ok_or_else(|| corrupt("an object is larger than its header says"))?;
            out(sink, data)?;
            match step {
                Step::Done => break,
                Step::More if self.eof && data.is_empty() => return Err(truncated()),
                Step::More => {}
                Step::Corrupt => return Err(corrupt("bad zlib data")),
            }
        }
        if left > 0 {
            return Err(corrupt("an object is smaller than its header says"));
        }
        Ok(())
    }
}

/// The start of an object's id computation: `"<type> <size>\0"`.
fn hasher(kind: u8, size: u64) -> Sha1 {
    let mut h = Sha1::default();
    h.update(
        NAMES
            .get(usize::from(kind).wrapping_sub(1))
            .copied()
            .unwrap_or_default(),
    );
    h.update(format!(" {size}\0").as_bytes());
    h
}

impl Pack {
    /// Reads a whole pack from `net`, spooling it to `sink`'s scratch file, checks it, and
    /// resolves every delta. Whole objects are shown to `arrived` as soon as they are in:
    /// git sends commits first, then trees, then blobs, so a caller learns the tree long
    /// before the pack has arrived, and can write blobs out as they come.
    pub fn read<K: Sink>(net: &mut dyn Source, sink: &mut K, arrived: &mut OnObject<'_, K>) -> Result<Pack> {
        let mut input = Input {
            net: Some(net),
            buf: vec![0; CHUNK],
            pos: 0,
            end: 0,
            at: 0,
            limit: u64::MAX,
            eof: false,
            hash: Some(Sha1::default()),
            base: 0,
        };
        let mut pack = Pack {
            objs: Vec::new(),
            table: Vec::new(),
            base: 0,
            end: 0,
            inflater: Inflater::new(true),
            ring: VecDeque::new(),
            cached: 0,
        };
        let mut head = [0u8; 12];
        for b in &mut head {
            *b = input.byte(sink)?;
        }
        let [p, a, c, k, v0, v1, v2, v3, n0, n1, n2, n3] = head;
        if [p, a, c, k] != *b"PACK" {
            return Err(Error::new("the server did not send a git pack"));
        }
        if !matches!(u32::from_be_bytes([v0, v1, v2, v3]), 2 | 3) {
            return Err(corrupt("unknown pack version"));
        }
        let count = u32::from_be_bytes([n0, n1, n2, n3]);
        for _ in 0..count {
            let start = input.at;
            pack.object(&mut input, sink, arrived)
                .map_err(|e| e.context(&format!("pack object at offset {start}")))?;
        }
        let sum = input.hash.take().unwrap_or_default().finish();
        pack.end = input.at;
        let mut trailer = [0u8; 20];
        for b in &mut trailer {
            *b = input.byte(sink)?;
        }
        if trailer != sum {
            return Err(corrupt(&format!(
                "its checksum is {}, but its trailer says {}",
                hex(&sum),
                hex(&trailer)
            )));
        }
        input.fill(sink)?;
        if !input.eof {
            return Err(corrupt("data after its checksum"));
        }
        pack.base = input.base;
        pack.resolve(sink)?;
        Ok(pack)
    }

    /// Reads one object's header and data (pass one: whole objects are hashed, deltas only
    /// checked for size).
    fn object<K: Sink>(&mut self, input: &mut Input<'_>, sink: &mut K, arrived: &mut OnObject<'_, K>) -> Result<()> {
        let start = input.at;
        let mut b = input.byte(sink)?;
        let kind = (b >> 4) & 7;
        let mut size = u64::from(b & 15);
        let mut shift = 4;
        while b & 0x80 != 0 {
            b = input.byte(sink)?;
            if shift > 57 {
                return Err(corrupt("object size too large"));
            }
            size |= u64::from(b & 0x7f) << shift;
            shift += 7;
        }
        let mut obj = Obj {
            start,
            data: 0,
            size,
            id: [0; 20],
            kind,
            base: WHOLE,
            hot: false,
            cached: None,
        };
        match kind {
            COMMIT..=4 => {}
            OFS_DELTA => {
                // The distance back to the base, big-endian base-128 with an offset per byte.
                let mut b = input.byte(sink)?;
                let mut back = u64::from(b & 0x7f);
                while b & 0x80 != 0 {
                    b = input.byte(sink)?;
                    back = back
                        .checked_add(1)
                        .and_then(|v| v.checked_mul(128))
                        .ok_or_else(|| corrupt("delta base offset too large"))?
                        | u64::from(b & 0x7f);
                }
                let base = start.checked_sub(back).filter(|_| back > 0);
                let found = base.and_then(|base| self.objs.binary_search_by_key(&base, |o| o.start).ok());
                obj.base = found.ok_or_else(|| corrupt("a delta's base offset is not an object"))? as u32;
                obj.kind = 0;
            }
            REF_DELTA => {
                for b in &mut obj.id {
                    *b = input.byte(sink)?;
                }
                obj.base = UNLINKED;
                obj.kind = 0;
            }
            _ => return Err(corrupt("unknown object type")),
        }
        obj.data = input.at;
        if obj.kind == 0 {
            input.inflate(sink, &mut self.inflater, size, &mut |_, _| Ok(()))?;
        } else {
            let mut h = hasher(kind, size);
            // A commit (its tree is announced, its fields expand `export-subst`), a tree, a
            // blob that is not too big.
            let (keep, limit) = match kind {
                COMMIT => (true, size),
                TREE => (true, size),
                BLOB => (size <= EARLY_BLOB, size),
                _ => (false, 0),
            };
            let mut data = Vec::new();
            if keep {
                // What the header claims, up to what a blob may be: a tree grows past it.
                data.try_reserve_exact(limit.min(EARLY_BLOB) as usize)
                    .map_err(|_| Error::new("an object is too large for memory"))?;
            }
            input.inflate(sink, &mut self.inflater, size, &mut |_, part| {
                h.update(part);
                if keep {
                    let room = (limit as usize).saturating_sub(data.len());
                    data.extend_from_slice(part.get(..room.min(part.len())).unwrap_or_default());
                }
                Ok(())
            })?;
            obj.id = h.finish();
            if keep {
                arrived(sink, kind, &obj.id, &data)?;
            }
        }
        self.objs.push(obj);
        Ok(())
    }

    /// Pass two: gives every delta its type and id. A delta is resolved once its base is, so
    /// REF_DELTAs whose base comes later in the pack take another round; a round that resolves
    /// nothing means a base is missing (or the deltas form a cycle).
    fn resolve<K: Sink>(&mut self, sink: &mut K) -> Result<()> {
        self.table = vec![0; (self.objs.len() * 2).next_power_of_two().max(16)];
        let mut pending = Vec::new();
        for i in 0..self.objs.len() {
            if self.objs.get(i).is_some_and(|o| o.kind != 0) {
                self.insert(i);
            } else {
                pending.push(i);
            }
        }
        while !pending.is_empty() {
            let mut left = Vec::new();
            for &i in &pending {
                let Some(o) = self.objs.get(i) else { continue };
                let mut base = o.base;
                if base == UNLINKED {
                    match self.find(&o.id) {
                        Some(b) => base = b as u32,
                        None => {
                            left.push(i);
                            continue;
                        }
                    }
                }
                let kind = self.objs.get(base as usize).map_or(0, |b| b.kind);
                if kind == 0 {
                    left.push(i);
                    continue;
                }
                if let Some(o) = self.objs.get_mut(i) {
                    o.base = base;
                }
                let data = self.load(sink, i)?;
                let mut h = hasher(kind, data.len() as u64);
                h.update(&data);
                if let Some(o) = self.objs.get_mut(i) {
                    o.id = h.finish();
                    o.kind = kind;
                }
                self.insert(i);
            }
            if left.len() == pending.len() {
                let first = left.first().and_then(|&i| self.objs.get(i));
                return Err(match first {
                    Some(o) if o.base == UNLINKED => {
                        corrupt(&format!("a delta's base {} is not in the pack", hex(&o.id)))
                    }
                    _ => corrupt("a delta's base cannot be resolved"),
                });
            }
            pending = left;
        }
        Ok(())
    }

    fn slot(&self, id: &[u8; 20]) -> usize {
        let [a, b, c, d, ..] = *id;
        u32::from_le_bytes([a, b, c, d]) as usize & (self.table.len() - 1)
    }

    /// Adds object `i` to the id table (a second copy of an id is ignored).
    fn insert(&mut self, i: usize) {
        let Some(id) = self.objs.get(i).map(|o| o.id) else {
            return;
        };
        let mut s = self.slot(&id);
        while let Some(&e) = self.table.get(s) {
            if e == 0 {
                if let Some(slot) = self.table.get_mut(s) {
                    *slot = i as u32 + 1;
                }
                return;
            }
            if self.objs.get(e as usize - 1).is_some_and(|o| o.id == id) {
                return;
            }
            s = (s + 1) & (self.table.len() - 1);
        }
    }

    /// The object with id `id`, if the pack holds it (and it is resolved).
    fn find(&self, id: &[u8; 20]) -> Option<usize> {
        let mut s = self.slot(id);
        loop {
            let e = *self.table.get(s)? as usize;
            let o = self.objs.get(e.checked_sub(1)?)?;
            if o.id == *id && o.kind != 0 {
                return Some(e - 1);
            }
            s = (s + 1) & (self.table.len() - 1);
        }
    }

    /// The object `id` names: its index and type.
    pub fn lookup(&self, id: &[u8; 20]) -> Option<(usize, u8)> {
        let i = self.find(id)?;
        Some((i, self.objs.get(i)?.kind))
    }

    /// Object `i`'s size when it is whole in the pack; `None` for a delta, whose result's size
    /// is known only once it is rebuilt.
    pub fn size(&self, i: usize) -> Option<u64> {
        self.objs.get(i).filter(|o| o.base == WHOLE).map(|o| o.size)
    }

    /// Inflates object `i`'s own data (for a delta, the delta) from the scratch file, handing
    /// it to `out`.
    fn inflate<K: Sink>(
        &mut self,
        sink: &mut K,
        i: usize,
        out: &mut dyn FnMut(&mut K, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let o = self.objs.get(i).ok_or_else(|| corrupt("no such object"))?;
        let limit = self.objs.get(i + 1).map_or(self.end, |next| next.start);
        let mut input = Input {
            net: None,
            buf: vec![0; limit.saturating_sub(o.data).min(CHUNK as u64) as usize],
            pos: 0,
            end: 0,
            at: o.data,
            limit,
            eof: false,
            hash: None,
            base: self.base,
        };
        input
            .inflate(sink, &mut self.inflater, o.size, out)
            .map_err(|e| e.context(&format!("pack object at offset {}", o.start)))
    }

    /// Object `i`'s contents, through its delta chain, from the cache where possible.
    pub fn load<K: Sink>(&mut self, sink: &mut K, i: usize) -> Result<Rc<Vec<u8>>> {
        let mut chain = Vec::new();
        let mut j = i;
        let mut data = loop {
            let o = self
                .objs
                .get_mut(j)
                .ok_or_else(|| corrupt("a delta's base is missing"))?;
            if let Some(d) = &o.cached {
                o.hot = true;
                break d.clone();
            }
            if o.base != WHOLE {
                chain.push(j);
                j = o.base as usize;
                continue;
            }
            let mut data = Vec::new();
            data.try_reserve_exact(o.size as usize)
                .map_err(|_| Error::new("an object is too large for memory"))?;
            self.inflate(sink, j, &mut |_, d| {
                data.extend_from_slice(d);
                Ok(())
            })?;
            let data = Rc::new(data);
            self.keep(j, &data);
            break data;
        };
        while let Some(k) = chain.pop() {
            let mut d = Vec::new();
            self.inflate(sink, k, &mut |_, part| {
                d.extend_from_slice(part);
                Ok(())
            })?;
            data = Rc::new(delta::apply(&data, &d)?);
            self.keep(k, &data);
        }
        Ok(data)
    }

    /// Hands object `i`'s contents to `out` in pieces of at most 64 KiB, without holding them
    /// whole when the object is not a delta.
    pub fn stream<K: Sink>(
        &mut self,
        sink: &mut K,
        i: usize,
        out: &mut dyn FnMut(&mut K, &[u8]) -> Result<()>,
    ) -> Result<()> {
        if self.objs.get(i).is_some_and(|o| o.base == WHOLE && o.cached.is_none()) {
            return self.inflate(sink, i, out);
        }
        let data = self.load(sink, i)?;
        for piece in data.chunks(64 * 1024) {
            out(sink, piece)?;
        }
        Ok(())
    }

    /// Caches `data` as object `i`'s contents, evicting what has not been used lately.
    fn keep(&mut self, i: usize, data: &Rc<Vec<u8>>) {
        if data.len() > CACHE / 4 {
            return;
        }
        if let Some(o) = self.objs.get_mut(i) {
            o.cached = Some(data.clone());
            o.hot = false;
        }
        self.ring.push_back(i as u32);
        self.cached += data.len();
        while self.cached > CACHE {
            let Some(j) = self.ring.pop_front() else { break };
            let Some(o) = self.objs.get_mut(j as usize) else {
                continue;
            };
            if o.hot {
                o.hot = false;
                self.ring.push_back(j);
            } else if let Some(d) = o.cached.take() {
                self.cached -= d.len();
            }
        }
    }
}

#[cfg(test)]
mod tests;
