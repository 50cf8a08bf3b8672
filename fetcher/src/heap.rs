//! The module's memory allocator, in place of libc's (dlmalloc is an eighth of the module on
//! its own). Blocks come in power-of-two sizes from 16 bytes; a freed block goes on its size's
//! free list (threaded through the blocks' first word) and is reused for the next request of
//! that size, and new blocks are cut from the top of the heap, which grows the WASM memory as
//! needed. A block at the top of the heap grows in place, so a growing buffer is not copied.
//! Rust passes every block's size back on free, so blocks carry no header.
//!
//! The price of that simplicity is up to 2x slack per block and no coalescing, which the
//! fetcher's pattern — many small index entries, a bounded cache, a few large buffers — bears
//! well. The wasm module is single-threaded, so no locking.

/// Every block is aligned to this, and is at least this large.
const MIN: usize = 16;

/// The size class (log2 of the block size) of a request.
fn class(size: usize) -> Option<usize> {
    Some(size.max(MIN).checked_next_power_of_two()?.trailing_zeros() as usize)
}

/// The allocator's state over one contiguous region `[.., end)` that can grow upward.
pub struct Arena {
    /// Where the next new block starts.
    top: usize,
    /// The end of the memory we have.
    end: usize,
    /// The first free block of each class, 0 for none.
    free: [usize; usize::BITS as usize],
}

impl Arena {
    /// An arena handing out blocks from `start` (aligned to 16 bytes); memory up to `end` is
    /// there already.
    pub const fn new(start: usize, end: usize) -> Arena {
        Arena {
            top: start.next_multiple_of(MIN),
            end,
            free: [0; usize::BITS as usize],
        }
    }

    /// Cuts `n` bytes from the top, asking `more(bytes)` for memory past `end` if needed (it
    /// returns how much it added, contiguously).
    fn bump(&mut self, n: usize, more: &mut dyn FnMut(usize) -> usize) -> *mut u8 {
        let Some(top) = self.top.checked_add(n) else {
            return core::ptr::null_mut();
        };
        if top > self.end {
            self.end += more(top - self.end);
            if top > self.end {
                return core::ptr::null_mut();
            }
        }
        let p = self.top;
        self.top = top;
        p as *mut u8
    }

    /// A block for `size` bytes aligned to `align`; null if there is no memory (or the
    /// alignment is over 16, which nothing here asks for).
    ///
    /// # Safety
    /// The arena's region must be memory this program owns, and free blocks must not be
    /// written by anyone else.
    pub unsafe fn alloc(&mut self, size: usize, align: usize, more: &mut dyn FnMut(usize) -> usize) -> *mut u8 {
        let Some(k) = class(size).filter(|_| align <= MIN) else {
            return core::ptr::null_mut();
        };
        if let Some(head) = self.free.get_mut(k)
            && *head != 0
        {
            let p = *head;
            // SAFETY: `p` is a free block of ours; its first word holds the next one.
            *head = unsafe { *(p as *const usize) };
            return p as *mut u8;
        }
        self.bump(1 << k, more)
    }

    /// Gives back the block at `p`, allocated for `size` bytes.
    ///
    /// # Safety
    /// `p` must come from this arena with that size, and not be used again.
    pub unsafe fn free(&mut self, p: *mut u8, size: usize) {
        if let Some(head) = class(size).and_then(|k| self.free.get_mut(k)) {
            // SAFETY: the block is ours again, and at least a word long and aligned.
            unsafe { *(p as *mut usize) = *head };
            *head = p as usize;
        }
    }

    /// Resizes the block at `p` from `old` to `new` bytes: in place when its class suffices
    /// or it is the top block, else by moving it.
    ///
    /// # Safety
    /// As for [`Arena::alloc`] and [`Arena::free`].
    pub unsafe fn realloc(
        &mut self,
        p: *mut u8,
        old: usize,
        new: usize,
        more: &mut dyn FnMut(usize) -> usize,
    ) -> *mut u8 {
        let (Some(a), Some(b)) = (class(old), class(new)) else {
            return core::ptr::null_mut();
        };
        if b <= a {
            return p;
        }
        if p as usize + (1 << a) == self.top && !self.bump((1 << b) - (1 << a), more).is_null() {
            return p;
        }
        // SAFETY: as the caller promises.
        unsafe {
            let q = self.alloc(new, MIN, more);
            if !q.is_null() {
                core::ptr::copy_nonoverlapping(p, q, old);
                self.free(p, old);
            }
            q
        }
    }
}

/// The global allocator of the wasm module: an [`Arena`] over the WASM memory above the
/// linker's `__heap_base`.
#[cfg(target_arch = "wasm32")]
pub mod wasm {
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::UnsafeCell;

    use super::Arena;

    const PAGE: usize = 64 * 1024;

    unsafe extern "C" {
        static __heap_base: u8;
    }

    /// The allocator.
    pub struct Heap(UnsafeCell<Option<Arena>>);

    // SAFETY: the module is single-threaded.
    unsafe impl Sync for Heap {}

    impl Heap {
        /// The allocator, before its first use.
        pub const fn new() -> Heap {
            Heap(UnsafeCell::new(None))
        }

        #[allow(clippy::mut_from_ref, reason = "single-threaded, and never re-entered")]
        fn arena(&self) -> &mut Arena {
            // SAFETY: single-threaded, and no call below re-enters the allocator.
            let arena = unsafe { &mut *self.0.get() };
            arena.get_or_insert_with(|| {
                let start = &raw const __heap_base as usize;
                Arena::new(start, core::arch::wasm32::memory_size(0) * PAGE)
            })
        }
    }

    impl Default for Heap {
        fn default() -> Heap {
            Heap::new()
        }
    }

    /// Grows the memory by at least `bytes`; returns how much it added (0 if it could not).
    fn more(bytes: usize) -> usize {
        let pages = bytes.div_ceil(PAGE);
        if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
            0
        } else {
            pages * PAGE
        }
    }

    // SAFETY: the arena hands out disjoint blocks of at least the size asked for, aligned to
    // 16, and refuses larger alignments.
    unsafe impl GlobalAlloc for Heap {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the arena owns the memory above `__heap_base`.
            unsafe { self.arena().alloc(layout.size(), layout.align(), &mut more) }
        }

        unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
            // SAFETY: as the caller of `dealloc` promises.
            unsafe { self.arena().free(p, layout.size()) }
        }

        unsafe fn realloc(&self, p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
            // SAFETY: as the caller of `realloc` promises.
            unsafe { self.arena().realloc(p, layout.size(), new, &mut more) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arena over a buffer of `cap` bytes, of which `first` are available at the start.
    struct Region {
        buf: Vec<u128>,
        arena: Arena,
        avail: usize,
    }

    impl Region {
        fn new(cap: usize, first: usize) -> Region {
            let buf = vec![0u128; cap / 16];
            let start = buf.as_ptr() as usize;
            Region {
                arena: Arena::new(start, start + first),
                avail: cap - first,
                buf,
            }
        }

        fn more(avail: &mut usize) -> impl FnMut(usize) -> usize + '_ {
            move |n| {
                let n = n.div_ceil(4096) * 4096;
                if n <= *avail {
                    *avail -= n;
                    n
                } else {
                    0
                }
            }
        }

        fn alloc(&mut self, size: usize) -> *mut u8 {
            unsafe { self.arena.alloc(size, 8, &mut Self::more(&mut self.avail)) }
        }

        fn realloc(&mut self, p: *mut u8, old: usize, new: usize) -> *mut u8 {
            unsafe { self.arena.realloc(p, old, new, &mut Self::more(&mut self.avail)) }
        }

        fn contains(&self, p: *mut u8, size: usize) -> bool {
            let start = self.buf.as_ptr() as usize;
            p as usize >= start && p as usize + size <= start + self.buf.len() * 16
        }
    }

    #[test]
    fn classes() {
        assert_eq!(class(0), Some(4));
        assert_eq!(class(16), Some(4));
        assert_eq!(class(17), Some(5));
        assert_eq!(class(4096), Some(12));
        assert_eq!(class(usize::MAX), None);
    }

    #[test]
    fn reuses_freed_blocks_and_grows() {
        let mut r = Region::new(1 << 20, 4096);
        let a = r.alloc(100);
        let b = r.alloc(100);
        assert_eq!(b as usize - a as usize, 128);
        unsafe { r.arena.free(a, 100) };
        assert_eq!(r.alloc(120), a, "same class, same block");
        let big = r.alloc(100_000);
        assert!(!big.is_null() && r.contains(big, 100_000));
        assert!(r.alloc(1 << 20).is_null(), "more than there is");
        unsafe {
            assert!(r.arena.alloc(8, 32, &mut |_| 0).is_null(), "alignment over 16");
        }
    }

    #[test]
    fn realloc_in_place_at_the_top_and_by_moving() {
        let mut r = Region::new(1 << 20, 1 << 20);
        let p = r.alloc(20);
        unsafe { core::ptr::write_bytes(p, 7, 20) };
        let q = r.realloc(p, 20, 1000);
        assert_eq!(q, p, "the top block grows in place");
        let other = r.alloc(10);
        let moved = r.realloc(q, 1000, 5000);
        assert_ne!(moved, q);
        assert!(
            unsafe { core::slice::from_raw_parts(moved, 20) }
                .iter()
                .all(|&b| b == 7)
        );
        assert_eq!(r.realloc(moved, 5000, 10), moved, "shrinking keeps the block");
        assert!(!other.is_null());
    }

    /// Random allocations, frees and reallocations: blocks never overlap and keep their bytes.
    #[test]
    fn stress() {
        let mut r = Region::new(64 << 20, 0);
        let mut live: Vec<(*mut u8, usize, u8)> = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..20_000u32 {
            let tag = step as u8;
            match rnd() % 4 {
                0 | 1 => {
                    let size = (rnd() % (1 << (rnd() % 17))) as usize;
                    let p = r.alloc(size);
                    assert!(!p.is_null());
                    unsafe { core::ptr::write_bytes(p, tag, size) };
                    live.push((p, size, tag));
                }
                2 if !live.is_empty() => {
                    let (p, size, t) = live.swap_remove(rnd() as usize % live.len());
                    assert!(unsafe { core::slice::from_raw_parts(p, size) }.iter().all(|&b| b == t));
                    unsafe { r.arena.free(p, size) };
                }
                3 if !live.is_empty() => {
                    let i = rnd() as usize % live.len();
                    let (p, size, t) = live[i];
                    let new = size * 2 + 1;
                    let q = r.realloc(p, size, new);
                    assert!(unsafe { core::slice::from_raw_parts(q, size) }.iter().all(|&b| b == t));
                    unsafe { core::ptr::write_bytes(q, t, new) };
                    live[i] = (q, new, t);
                }
                _ => {}
            }
        }
        let mut spans: Vec<(usize, usize)> = live.iter().map(|&(p, s, _)| (p as usize, s)).collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap");
        }
        for &(p, size, t) in &live {
            assert!(r.contains(p, size));
            assert!(unsafe { core::slice::from_raw_parts(p, size) }.iter().all(|&b| b == t));
        }
    }
}
