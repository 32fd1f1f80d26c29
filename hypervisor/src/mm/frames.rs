//! Physical frame allocator built from the firmware memory map.
//!
//! Holds a sorted list of disjoint, non-adjacent free ranges in a fixed-size
//! array, so it works before the heap exists (no allocation).
//!
//! Allocation policy: highest address first, in three passes so scarce low
//! memory is used last:
//!   1. memory at or above 16 MiB,
//!   2. memory in [1 MiB, 16 MiB) (ISA DMA, early loaders, guest low RAM),
//!   3. memory below 1 MiB (real-mode trampolines, SIPI vectors).
//!
//! Within a pass the highest fitting, suitably aligned block is taken.
//! Physical page 0 is never handed out, so 0 never names an allocation.

use arch::addr::Hpa;
use core::fmt;

/// Size of one frame.
pub const FRAME_SIZE: u64 = 4096;
/// Maximum number of disjoint free ranges tracked.
pub const MAX_RANGES: usize = 256;

const MIB: u64 = 1 << 20;
/// Allocation zones, searched in this order (see module docs).
const ZONES: [(u64, u64); 3] = [(16 * MIB, u64::MAX), (MIB, 16 * MIB), (0, MIB)];

/// What went wrong in a frame-allocator call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// `start + len` does not fit in 64 bits.
    Overflow { start: u64, len: u64 },
    /// A size of zero or one that is not a multiple of 4 KiB.
    BadSize { size: u64 },
    /// An alignment that is not a power of two of at least 4 KiB.
    BadAlign { align: u64 },
    /// An address that is not 4 KiB aligned (on `free`).
    Unaligned { addr: u64 },
    /// More than [`MAX_RANGES`] disjoint free ranges would be needed.
    TooManyRanges,
    /// No free block of `size` bytes aligned to `align` ends at or below `limit`.
    OutOfMemory { size: u64, align: u64, limit: u64 },
    /// `add_free` of [start, end) overlaps the free range [free_start, free_end).
    AddOverlap {
        start: u64,
        end: u64,
        free_start: u64,
        free_end: u64,
    },
    /// `free` of [start, end) overlaps the free range [free_start, free_end):
    /// a double free or a bad address.
    DoubleFree {
        start: u64,
        end: u64,
        free_start: u64,
        free_end: u64,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::Overflow { start, len } => {
                write!(f, "range {start:#x} + {len:#x} overflows 64 bits")
            }
            FrameError::BadSize { size } => {
                write!(f, "size {size:#x} is not a non-zero multiple of 4 KiB")
            }
            FrameError::BadAlign { align } => {
                write!(f, "alignment {align:#x} is not a power of two >= 4 KiB")
            }
            FrameError::Unaligned { addr } => write!(f, "address {addr:#x} is not 4 KiB aligned"),
            FrameError::TooManyRanges => {
                write!(f, "free list full ({MAX_RANGES} disjoint ranges)")
            }
            FrameError::OutOfMemory { size, align, limit } => {
                write!(f, "out of memory: no {size:#x}-byte block aligned to {align:#x}")?;
                if limit != u64::MAX {
                    write!(f, " below {limit:#x}")?;
                }
                Ok(())
            }
            FrameError::AddOverlap {
                start,
                end,
                free_start,
                free_end,
            } => write!(
                f,
                "added range [{start:#x}, {end:#x}) overlaps free range [{free_start:#x}, {free_end:#x})"
            ),
            FrameError::DoubleFree {
                start,
                end,
                free_start,
                free_end,
            } => write!(
                f,
                "double free: [{start:#x}, {end:#x}) overlaps free range [{free_start:#x}, {free_end:#x})"
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: u64,
    /// Exclusive.
    end: u64,
}

const EMPTY: Range = Range { start: 0, end: 0 };

/// Physical frame allocator; see the module docs for the policy.
pub struct FrameAllocator {
    ranges: [Range; MAX_RANGES],
    len: usize,
    /// Bytes managed: added minus reserved.
    total: u64,
}

impl Default for FrameAllocator {
    fn default() -> Self {
        Self::new()
    }
}

const fn align_up(x: u64, a: u64) -> Option<u64> {
    match x.checked_add(a - 1) {
        Some(v) => Some(v & !(a - 1)),
        None => None,
    }
}

const fn align_down(x: u64, a: u64) -> u64 {
    x & !(a - 1)
}

fn end_of(start: u64, len: u64) -> Result<u64, FrameError> {
    start
        .checked_add(len)
        .ok_or(FrameError::Overflow { start, len })
}

impl FrameAllocator {
    /// An allocator with no memory.
    pub const fn new() -> Self {
        Self {
            ranges: [EMPTY; MAX_RANGES],
            len: 0,
            total: 0,
        }
    }

    /// Adds usable memory. The range is shrunk inward to 4 KiB boundaries
    /// (and page 0 is dropped); what remains is merged with adjacent free
    /// ranges. Overlapping memory already free is an error.
    pub fn add_free(&mut self, start: Hpa, len: u64) -> Result<(), FrameError> {
        let start = start.0;
        let end = end_of(start, len)?;
        let s = align_up(start, FRAME_SIZE)
            .unwrap_or(u64::MAX)
            .max(FRAME_SIZE);
        let e = align_down(end, FRAME_SIZE);
        if s >= e {
            return Ok(());
        }
        if let Some(r) = self.overlapping(s, e) {
            return Err(FrameError::AddOverlap {
                start: s,
                end: e,
                free_start: r.start,
                free_end: r.end,
            });
        }
        self.insert(s, e)?;
        self.total += e - s;
        Ok(())
    }

    /// Removes [start, start+len), widened outward to 4 KiB boundaries,
    /// from the free memory (e.g. the hypervisor image). Parts that are not
    /// free are ignored.
    pub fn reserve(&mut self, start: Hpa, len: u64) -> Result<(), FrameError> {
        let start = start.0;
        let end = end_of(start, len)?;
        let s = align_down(start, FRAME_SIZE);
        let e = align_up(end, FRAME_SIZE).unwrap_or(align_down(u64::MAX, FRAME_SIZE));
        if s >= e {
            return Ok(());
        }
        let before = self.free_bytes();
        self.remove(s, e)?;
        self.total -= before - self.free_bytes();
        Ok(())
    }

    /// Allocates `size` bytes aligned to `align` anywhere (see module policy).
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<Hpa, FrameError> {
        self.alloc_below(size, align, u64::MAX)
    }

    /// Allocates `size` bytes aligned to `align` that end at or below `limit`
    /// (e.g. 1 MiB for an AP trampoline, 4 GiB for 32-bit structures).
    pub fn alloc_below(&mut self, size: u64, align: u64, limit: u64) -> Result<Hpa, FrameError> {
        if size == 0 || !size.is_multiple_of(FRAME_SIZE) {
            return Err(FrameError::BadSize { size });
        }
        if !align.is_power_of_two() || align < FRAME_SIZE {
            return Err(FrameError::BadAlign { align });
        }
        for (zone_lo, zone_hi) in ZONES {
            let hi = zone_hi.min(limit);
            if let Some((index, base)) = self.find_top(size, align, zone_lo, hi) {
                self.carve(index, base, base + size)?;
                return Ok(Hpa(base));
            }
        }
        Err(FrameError::OutOfMemory { size, align, limit })
    }

    /// Returns [start, start+size) to the free list, merging neighbours.
    /// Overlap with memory already free is reported as a double free.
    pub fn free(&mut self, start: Hpa, size: u64) -> Result<(), FrameError> {
        let start = start.0;
        if !start.is_multiple_of(FRAME_SIZE) {
            return Err(FrameError::Unaligned { addr: start });
        }
        if size == 0 || !size.is_multiple_of(FRAME_SIZE) {
            return Err(FrameError::BadSize { size });
        }
        let end = end_of(start, size)?;
        if let Some(r) = self.overlapping(start, end) {
            return Err(FrameError::DoubleFree {
                start,
                end,
                free_start: r.start,
                free_end: r.end,
            });
        }
        self.insert(start, end)
    }

    /// Bytes currently free.
    pub fn free_bytes(&self) -> u64 {
        self.ranges[..self.len]
            .iter()
            .map(|r| r.end - r.start)
            .sum()
    }

    /// Bytes managed: everything added minus everything reserved.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The free ranges as (start, end-exclusive), ascending.
    pub fn free_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges[..self.len].iter().map(|r| (r.start, r.end))
    }

    /// The first free range overlapping [s, e), if any.
    fn overlapping(&self, s: u64, e: u64) -> Option<Range> {
        self.ranges[..self.len]
            .iter()
            .find(|r| r.start < e && s < r.end)
            .copied()
    }

    /// Inserts a range known not to overlap any free range, merging with
    /// adjacent neighbours.
    fn insert(&mut self, s: u64, e: u64) -> Result<(), FrameError> {
        let i = self.ranges[..self.len].partition_point(|r| r.start < s);
        let merge_prev = i > 0 && self.ranges[i - 1].end == s;
        let merge_next = i < self.len && self.ranges[i].start == e;
        match (merge_prev, merge_next) {
            (true, true) => {
                self.ranges[i - 1].end = self.ranges[i].end;
                self.remove_at(i);
            }
            (true, false) => self.ranges[i - 1].end = e,
            (false, true) => self.ranges[i].start = s,
            (false, false) => self.insert_at(i, Range { start: s, end: e })?,
        }
        Ok(())
    }

    /// Removes [s, e) from every free range it touches.
    fn remove(&mut self, s: u64, e: u64) -> Result<(), FrameError> {
        let mut i = 0;
        while i < self.len {
            let r = self.ranges[i];
            if r.end <= s || r.start >= e {
                i += 1;
                continue;
            }
            // Whatever is left at index i no longer overlaps [s, e); the
            // next pass over i steps past it.
            self.carve(i, s.max(r.start), e.min(r.end))?;
        }
        Ok(())
    }

    /// Cuts [s, e), which lies inside range `i`, out of that range.
    fn carve(&mut self, i: usize, s: u64, e: u64) -> Result<(), FrameError> {
        let r = self.ranges[i];
        debug_assert!(r.start <= s && e <= r.end && s < e);
        match (r.start < s, e < r.end) {
            (false, false) => self.remove_at(i),
            (true, false) => self.ranges[i].end = s,
            (false, true) => self.ranges[i].start = e,
            (true, true) => {
                self.insert_at(
                    i + 1,
                    Range {
                        start: e,
                        end: r.end,
                    },
                )?;
                self.ranges[i].end = s;
            }
        }
        Ok(())
    }

    /// Highest block of `size` aligned to `align` inside [lo, hi) that is
    /// free: (range index, base).
    fn find_top(&self, size: u64, align: u64, lo: u64, hi: u64) -> Option<(usize, u64)> {
        for i in (0..self.len).rev() {
            let r = self.ranges[i];
            let start = r.start.max(lo);
            let end = r.end.min(hi);
            if end <= start || end - start < size {
                continue;
            }
            let base = align_down(end - size, align);
            if base >= start {
                return Some((i, base));
            }
        }
        None
    }

    fn insert_at(&mut self, i: usize, r: Range) -> Result<(), FrameError> {
        if self.len == MAX_RANGES {
            return Err(FrameError::TooManyRanges);
        }
        self.ranges.copy_within(i..self.len, i + 1);
        self.ranges[i] = r;
        self.len += 1;
        Ok(())
    }

    fn remove_at(&mut self, i: usize) {
        self.ranges.copy_within(i + 1..self.len, i);
        self.len -= 1;
        self.ranges[self.len] = EMPTY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const K4: u64 = 4096;
    const GIB: u64 = 1 << 30;

    fn ranges(a: &FrameAllocator) -> Vec<(u64, u64)> {
        a.free_ranges().collect()
    }

    /// Checks the invariants: sorted, disjoint, non-adjacent, page aligned.
    fn check(a: &FrameAllocator) {
        let r = ranges(a);
        for w in r.windows(2) {
            assert!(w[0].1 < w[1].0, "not sorted/merged: {r:x?}");
        }
        for &(s, e) in &r {
            assert!(
                s < e && s % K4 == 0 && e % K4 == 0,
                "bad range {s:#x}..{e:#x}"
            );
        }
    }

    #[test]
    fn add_free_aligns_inward_and_skips_page_zero() {
        let mut a = FrameAllocator::new();
        a.add_free(Hpa(0), 0x9F000).unwrap();
        a.add_free(Hpa(0x100123), 0x2000).unwrap(); // -> [0x101000, 0x102000)
        a.add_free(Hpa(0x200000), 0xFFF).unwrap(); // nothing whole
        assert_eq!(ranges(&a), [(0x1000, 0x9F000), (0x101000, 0x102000)]);
        assert_eq!(a.total_bytes(), 0x9E000 + 0x1000);
        assert_eq!(a.free_bytes(), a.total_bytes());
    }

    #[test]
    fn add_free_merges_neighbours_in_any_order() {
        let mut a = FrameAllocator::new();
        a.add_free(Hpa(0x300000), 0x100000).unwrap();
        a.add_free(Hpa(0x100000), 0x100000).unwrap();
        a.add_free(Hpa(0x200000), 0x100000).unwrap();
        assert_eq!(ranges(&a), [(0x100000, 0x400000)]);
        check(&a);
    }

    #[test]
    fn add_free_rejects_overlap_and_overflow() {
        let mut a = FrameAllocator::new();
        a.add_free(Hpa(0x100000), 0x100000).unwrap();
        assert_eq!(
            a.add_free(Hpa(0x1FF000), 0x2000),
            Err(FrameError::AddOverlap {
                start: 0x1FF000,
                end: 0x201000,
                free_start: 0x100000,
                free_end: 0x200000
            })
        );
        assert_eq!(
            a.add_free(Hpa(u64::MAX - 10), 20),
            Err(FrameError::Overflow {
                start: u64::MAX - 10,
                len: 20
            })
        );
    }

    #[test]
    fn reserve_splits_and_widens_outward() {
        let mut a = FrameAllocator::new();
        a.add_free(Hpa(0x100000), 0x100000).unwrap();
        a.reserve(Hpa(0x140800), 0x1000).unwrap(); // -> [0x140000, 0x142000)
        assert_eq!(ranges(&a), [(0x100000, 0x140000), (0x142000, 0x200000)]);
        assert_eq!(a.total_bytes(), 0x100000 - 0x2000);
        assert_eq!(a.free_bytes(), a.total_bytes());
    }

    #[test]
    fn reserve_spanning_several_ranges_and_holes() {
        let mut a = FrameAllocator::new();
        a.add_free(Hpa(0x1000), 0x9E000).unwrap();
        a.add_free(Hpa(0x100000), 0x100000).unwrap();
        a.add_free(Hpa(0x300000), 0x100000).unwrap();
        a.add_free(Hpa(0x500000), 0x100000).unwrap();
        a.reserve(Hpa(0x80000), 0x400000).unwrap(); // [0x80000, 0x480000)
        assert_eq!(ranges(&a), [(0x1000, 0x80000), (0x500000, 0x600000)]);
        assert_eq!(a.total_bytes(), a.free_bytes());
        // Reserving memory that is not free is a no-op.
        a.reserve(Hpa(0x90000), 0x1000).unwrap();
        assert_eq!(a.total_bytes(), a.free_bytes());
        check(&a);
    }

    #[test]
    fn reserve_everything() {
        let mut a = FrameAllocator::new();
        a.add_free(Hpa(0x1000), 0x10000).unwrap();
        a.add_free(Hpa(0x20000), 0x10000).unwrap();
        a.reserve(Hpa(0), 0x100000).unwrap();
        assert_eq!(ranges(&a), []);
        assert_eq!(a.total_bytes(), 0);
    }

    #[test]
    fn alloc_from_top_of_high_memory_first() {
        let mut a = FrameAllocator::new();
        a.add_free(Hpa(0x1000), 0x9E000).unwrap();
        a.add_free(Hpa(0x100000), 0x7F00000).unwrap(); // up to 128 MiB
        assert_eq!(a.alloc(K4, K4), Ok(Hpa(0x8000000 - K4)));
        assert_eq!(a.alloc(2 * K4, K4), Ok(Hpa(0x8000000 - 3 * K4)));
        check(&a);
    }

    #[test]
    fn alloc_keeps_low_memory_for_last() {
        let mut a = FrameAllocator::new();
        a.add_free(Hpa(0x1000), 0x9E000).unwrap(); // < 1 MiB
        a.add_free(Hpa(0x100000), 0x100000).unwrap(); // [1 MiB, 2 MiB)
        a.add_free(Hpa(0x1000000), 0x2000).unwrap(); // 16 MiB, two pages
        assert_eq!(a.alloc(K4, K4), Ok(Hpa(0x1001000)));
        assert_eq!(a.alloc(K4, K4), Ok(Hpa(0x1000000)));
        // High zone exhausted: next from [1 MiB, 16 MiB), top down.
        assert_eq!(a.alloc(K4, K4), Ok(Hpa(0x1FF000)));
        // Take the rest of [1 MiB, 16 MiB); then < 1 MiB is used.
        assert_eq!(a.alloc(0xFF000, K4), Ok(Hpa(0x100000)));
        assert_eq!(a.alloc(K4, K4), Ok(Hpa(0x9E000)));
        assert_eq!(
            a.alloc(0x100000, K4),
            Err(FrameError::OutOfMemory {
                size: 0x100000,
                align: K4,
                limit: u64::MAX
            })
        );
    }

    #[test]
    fn alloc_alignment() {
        let mut a = FrameAllocator::new();
        a.add_free(Hpa(0x1000000), 0x401000).unwrap(); // [16M, 20M+4K)
        let p = a.alloc(0x200000, 0x200000).unwrap();
        assert_eq!(p, Hpa(0x1200000));
        assert!(p.is_aligned(0x200000));
        // The unaligned tail above stays free.
        assert_eq!(ranges(&a), [(0x1000000, 0x1200000), (0x1400000, 0x1401000)]);
        let q = a.alloc(0x200000, 0x200000).unwrap();
        assert_eq!(q, Hpa(0x1000000));
        assert!(a.alloc(0x2000, 0x2000).is_err());
        assert_eq!(a.alloc(K4, K4), Ok(Hpa(0x1400000)));
    }

    #[test]
    fn alloc_rejects_bad_arguments() {
        let mut a = FrameAllocator::new();
        a.add_free(Hpa(0x100000), 0x100000).unwrap();
        assert_eq!(a.alloc(0, K4), Err(FrameError::BadSize { size: 0 }));
        assert_eq!(a.alloc(100, K4), Err(FrameError::BadSize { size: 100 }));
        assert_eq!(
            a.alloc(K4, 0x3000),
            Err(FrameError::BadAlign { align: 0x3000 })
        );
        assert_eq!(a.alloc(K4, 512), Err(FrameError::BadAlign { align: 512 }));
        assert_eq!(a.free_bytes(), 0x100000);
    }

    #[test]
    fn alloc_below_limit() {
        let mut a = FrameAllocator::new();
        a.add_free(Hpa(0x1000), 0x9E000).unwrap();
        a.add_free(Hpa(0x100000), 8 * GIB).unwrap();
        assert_eq!(a.alloc_below(K4, K4, MIB), Ok(Hpa(0x9E000)));
        let p = a.alloc_below(0x10000, K4, 4 * GIB).unwrap();
        assert_eq!(p, Hpa(4 * GIB - 0x10000));
        // Unaligned limit: the block must end at or below it.
        let q = a.alloc_below(K4, K4, 0x9E800).unwrap();
        assert_eq!(q, Hpa(0x9D000));
        assert_eq!(
            a.alloc_below(K4, K4, 0x1000),
            Err(FrameError::OutOfMemory {
                size: K4,
                align: K4,
                limit: 0x1000
            })
        );
        check(&a);
    }

    #[test]
    fn free_merges_back_to_original() {
        let mut a = FrameAllocator::new();
        a.add_free(Hpa(0x100000), 0x100000).unwrap();
        let before = ranges(&a);
        let p1 = a.alloc(K4, K4).unwrap();
        let p2 = a.alloc(0x4000, K4).unwrap();
        let p3 = a.alloc(K4, K4).unwrap();
        assert_eq!(a.free_bytes(), 0x100000 - 0x6000);
        a.free(p2, 0x4000).unwrap();
        a.free(p1, K4).unwrap();
        a.free(p3, K4).unwrap();
        assert_eq!(ranges(&a), before);
        assert_eq!(a.total_bytes(), 0x100000);
    }

    #[test]
    fn double_free_is_detected() {
        let mut a = FrameAllocator::new();
        a.add_free(Hpa(0x100000), 0x100000).unwrap();
        let p = a.alloc(0x2000, K4).unwrap();
        a.free(p, 0x2000).unwrap();
        assert_eq!(
            a.free(p, 0x2000),
            Err(FrameError::DoubleFree {
                start: p.0,
                end: p.0 + 0x2000,
                free_start: 0x100000,
                free_end: 0x200000
            })
        );
        // Partial overlap is caught too.
        let q = a.alloc(0x2000, K4).unwrap();
        assert!(matches!(
            a.free(Hpa(q.0 - K4), 0x2000),
            Err(FrameError::DoubleFree { .. })
        ));
        assert_eq!(
            a.free(Hpa(q.0 + 1), K4),
            Err(FrameError::Unaligned { addr: q.0 + 1 })
        );
        assert_eq!(a.free(q, 10), Err(FrameError::BadSize { size: 10 }));
    }

    #[test]
    fn fragmentation_and_refill() {
        let mut a = FrameAllocator::new();
        a.add_free(Hpa(0x1000000), 64 * K4).unwrap();
        let pages: Vec<Hpa> = (0..64).map(|_| a.alloc(K4, K4).unwrap()).collect();
        assert_eq!(a.free_bytes(), 0);
        // Free every other page: 32 one-page holes.
        for p in pages.iter().step_by(2) {
            a.free(*p, K4).unwrap();
        }
        assert_eq!(a.free_ranges().count(), 32);
        // No two-page hole exists.
        assert!(matches!(
            a.alloc(2 * K4, K4),
            Err(FrameError::OutOfMemory { .. })
        ));
        // Free the rest: everything merges back to one range.
        for p in pages.iter().skip(1).step_by(2) {
            a.free(*p, K4).unwrap();
        }
        assert_eq!(ranges(&a), [(0x1000000, 0x1000000 + 64 * K4)]);
        check(&a);
    }

    #[test]
    fn range_capacity_is_reported() {
        let mut a = FrameAllocator::new();
        for i in 0..MAX_RANGES as u64 {
            a.add_free(Hpa(0x100000 + i * 2 * K4), K4).unwrap();
        }
        assert_eq!(
            a.add_free(Hpa(0x100000 + MAX_RANGES as u64 * 2 * K4), K4),
            Err(FrameError::TooManyRanges)
        );
        // Filling a hole merges and needs no new slot.
        a.add_free(Hpa(0x100000 + K4), K4).unwrap();
        assert_eq!(a.free_ranges().count(), MAX_RANGES - 1);
        check(&a);
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            FrameError::OutOfMemory {
                size: 0x1000,
                align: 0x1000,
                limit: 0x100000
            }
            .to_string(),
            "out of memory: no 0x1000-byte block aligned to 0x1000 below 0x100000"
        );
        assert_eq!(
            FrameError::DoubleFree {
                start: 0x2000,
                end: 0x3000,
                free_start: 0x1000,
                free_end: 0x4000
            }
            .to_string(),
            "double free: [0x2000, 0x3000) overlaps free range [0x1000, 0x4000)"
        );
    }
}
