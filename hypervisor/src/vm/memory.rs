//! Guest memory: guest-physical RAM ranges backed by host frames that belong
//! to one guest alone, and the EPT that maps exactly those ranges (SDM Vol. 3C
//! 29.3). Nothing else — not the hypervisor, not another guest — is reachable.
use crate::mm;
use alloc::vec::Vec;
pub use arch::addr::{Gpa, Hpa};
use arch::vmx::ept::{self, MemType, PageSize};

pub use loader::layout::{layout, FOUR_GIB, MMIO_HOLE_START};
const TWO_MIB: u64 = 0x20_0000;

/// One contiguous guest-physical RAM range and its host backing.
#[derive(Clone, Copy, Debug)]
pub struct RamRange {
    pub gpa: Gpa,
    pub size: u64,
    pub host: Hpa,
}

impl RamRange {
    /// The first guest-physical byte after the range (ranges never wrap:
    /// `new` builds them from the layout, below 2^64).
    fn end(&self) -> u64 {
        self.gpa.0.saturating_add(self.size)
    }
}

/// Guest RAM: disjoint, ascending, non-adjacent [`RamRange`]s (the layout
/// puts the MMIO hole between them), so an access lies in one range or is
/// not all RAM.
pub struct GuestMemory {
    pub ranges: Vec<RamRange>,
    /// EPT paging structures (all owned by this guest).
    tables: Vec<Hpa>,
    pml4: Hpa,
    /// Dirty logging for snapshots (see `memory_dirty.rs`).
    dirty: dirty::DirtyLog,
}

#[path = "memory_dirty.rs"]
pub mod dirty;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// No free host run of `wanted` bytes in one piece: `free` in all, `largest` the biggest
    /// run (guest RAM ranges are backed contiguously).
    OutOfMemory {
        wanted: u64,
        free: u64,
        largest: u64,
    },
    /// `gpa + len` passes 2^64.
    Wraps { gpa: Gpa, len: u64 },
    /// The access starts outside guest RAM.
    NotRam { gpa: Gpa, len: u64 },
    /// The access starts in RAM but runs past the end of its RAM range at
    /// `end` (into the MMIO hole or beyond the last byte of RAM).
    CrossesEnd { gpa: Gpa, len: u64, end: Gpa },
}

impl core::fmt::Display for MemError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MemError::OutOfMemory {
                wanted,
                free,
                largest,
            } => {
                write!(
                    f,
                    "not enough host memory: wanted {} KiB in one piece, {} KiB free",
                    wanted >> 10,
                    free >> 10
                )?;
                if largest < wanted && free >= wanted {
                    write!(f, " but the largest free run is {} KiB", largest >> 10)?;
                }
                Ok(())
            }
            MemError::Wraps { gpa, len } => write!(
                f,
                "guest-physical {gpa:#x}+{len:#x}: the range wraps past 2^64"
            ),
            MemError::NotRam { gpa, len } => {
                write!(f, "guest-physical {gpa:#x}+{len:#x}: not guest RAM")
            }
            MemError::CrossesEnd { gpa, len, end } => write!(
                f,
                "guest-physical {gpa:#x}+{len:#x}: runs past the end of guest RAM at {end:#x}"
            ),
        }
    }
}

/// Plain-old-data values that guest memory holds as little-endian bytes:
/// every byte pattern is a valid value, so [`GuestMemory::read_obj`] needs
/// no `unsafe`.
pub trait Pod: Copy {
    /// The value's little-endian bytes.
    type Bytes: Copy;
    const ZERO: Self::Bytes;
    fn bytes(b: &Self::Bytes) -> &[u8];
    fn bytes_mut(b: &mut Self::Bytes) -> &mut [u8];
    fn from_le(b: Self::Bytes) -> Self;
    fn to_le(&self) -> Self::Bytes;
}

macro_rules! pod_int {
    ($($t:ty),*) => {$(
        impl Pod for $t {
            type Bytes = [u8; core::mem::size_of::<$t>()];
            const ZERO: Self::Bytes = [0; core::mem::size_of::<$t>()];
            fn bytes(b: &Self::Bytes) -> &[u8] {
                b
            }
            fn bytes_mut(b: &mut Self::Bytes) -> &mut [u8] {
                b
            }
            fn from_le(b: Self::Bytes) -> Self {
                <$t>::from_le_bytes(b)
            }
            fn to_le(&self) -> Self::Bytes {
                self.to_le_bytes()
            }
        }

        impl<const N: usize> Pod for [$t; N] {
            type Bytes = [[u8; core::mem::size_of::<$t>()]; N];
            const ZERO: Self::Bytes = [[0; core::mem::size_of::<$t>()]; N];
            fn bytes(b: &Self::Bytes) -> &[u8] {
                b.as_flattened()
            }
            fn bytes_mut(b: &mut Self::Bytes) -> &mut [u8] {
                b.as_flattened_mut()
            }
            fn from_le(b: Self::Bytes) -> Self {
                b.map(<$t>::from_le_bytes)
            }
            fn to_le(&self) -> Self::Bytes {
                self.map(<$t>::to_le_bytes)
            }
        }
    )*};
}

pod_int!(u8, u16, u32, u64, i8, i16, i32, i64);

impl GuestMemory {
    /// Allocates and zeroes `size` bytes of guest RAM and builds its EPT.
    pub fn new(size: u64) -> Result<Self, MemError> {
        let mut me = GuestMemory {
            ranges: Vec::new(),
            tables: Vec::new(),
            pml4: Hpa(0),
            dirty: dirty::DirtyLog::new(
                layout(size).iter().map(|&(g, l)| g + l).max().unwrap_or(0),
            ),
        };
        let oom = |wanted| MemError::OutOfMemory {
            wanted,
            free: mm::free_bytes(),
            largest: mm::largest_free_run(),
        };
        for (gpa, len) in layout(size) {
            // 2 MiB-aligned backing lets the EPT use 2 MiB pages; where host memory is too
            // fragmented for that, any 4 KiB-aligned run will do (the EPT then maps 4 KiB pages).
            let host = (len >= TWO_MIB)
                .then(|| mm::alloc_zeroed(len, TWO_MIB))
                .flatten()
                .or_else(|| mm::alloc_zeroed(len, mm::PAGE))
                .ok_or_else(|| oom(len))?;
            me.ranges.push(RamRange {
                gpa: Gpa(gpa),
                size: len,
                host,
            });
        }
        me.pml4 = me.new_table().ok_or_else(|| oom(4096))?;
        for r in me.ranges.clone() {
            let mut off = 0;
            while off < r.size {
                let (gpa, hpa) = (Gpa(r.gpa.0 + off), Hpa(r.host.0 + off));
                let big =
                    gpa.is_aligned(TWO_MIB) && hpa.is_aligned(TWO_MIB) && r.size - off >= TWO_MIB;
                let size = if big {
                    PageSize::Size2M
                } else {
                    PageSize::Size4K
                };
                me.map(gpa, hpa, size).ok_or_else(|| oom(4096))?;
                off += size.bytes();
            }
        }
        Ok(me)
    }

    /// Guest memory over host memory the caller owns (host unit tests):
    /// no EPT, nothing freed on drop.
    #[cfg(test)]
    pub fn over_host(ranges: Vec<RamRange>) -> Self {
        for w in ranges.windows(2) {
            assert!(
                w[0].end() < w[1].gpa.0,
                "ranges must be ascending and apart"
            );
        }
        let end = ranges.last().map_or(0, |r| r.end());
        GuestMemory {
            ranges,
            tables: Vec::new(),
            pml4: Hpa(0),
            dirty: dirty::DirtyLog::new(end),
        }
    }

    fn new_table(&mut self) -> Option<Hpa> {
        let t = mm::alloc_zeroed_page()?;
        self.tables.push(t);
        Some(t)
    }

    fn map(&mut self, gpa: Gpa, hpa: Hpa, size: PageSize) -> Option<()> {
        let leaf_level = match size {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        };
        let mut table = self.pml4;
        let mut level = 4;
        while level > leaf_level {
            let slot = table
                .as_mut_ptr::<u64>()
                .wrapping_add(ept::index(gpa, level));
            // SAFETY: `table` is one of this guest's EPT pages (identity-mapped).
            let entry = unsafe { slot.read() };
            table = if entry & ept::RWX == 0 {
                let next = self.new_table()?;
                // SAFETY: as above.
                unsafe { slot.write(ept::table_entry(next)) };
                next
            } else {
                ept::entry_addr(entry)
            };
            level -= 1;
        }
        let slot = table
            .as_mut_ptr::<u64>()
            .wrapping_add(ept::index(gpa, level));
        // SAFETY: as above.
        unsafe { slot.write(ept::leaf_entry(hpa, ept::RWX, MemType::WriteBack, size)) };
        Some(())
    }

    pub fn eptp(&self) -> u64 {
        ept::eptp(self.pml4) | self.dirty.eptp_bits()
    }

    pub fn size(&self) -> u64 {
        self.ranges.iter().map(|r| r.size).sum()
    }

    /// Bytes of EPT paging structures.
    pub fn ept_bytes(&self) -> u64 {
        self.tables.len() as u64 * mm::PAGE
    }

    /// The host address of `[gpa, gpa + len)` if it lies entirely in one RAM
    /// range (a zero-length range may end a RAM range), else why not.
    pub fn host_range(&self, gpa: Gpa, len: u64) -> Result<Hpa, MemError> {
        let end = gpa.checked_add(len).ok_or(MemError::Wraps { gpa, len })?;
        let r = self
            .ranges
            .iter()
            .find(|r| gpa >= r.gpa && (gpa.0 < r.end() || (len == 0 && gpa.0 == r.end())))
            .ok_or(MemError::NotRam { gpa, len })?;
        if end.0 > r.end() {
            return Err(MemError::CrossesEnd {
                gpa,
                len,
                end: Gpa(r.end()),
            });
        }
        Ok(Hpa(r.host.0 + (gpa.0 - r.gpa.0)))
    }

    pub fn is_ram(&self, gpa: Gpa) -> bool {
        self.host_range(gpa, 1).is_ok()
    }

    /// Copies guest RAM at `gpa` into `buf` (no slice of guest memory, which
    /// another vCPU may be writing, is ever formed). All or nothing: on an
    /// error `buf` is unchanged.
    pub fn read_into(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemError> {
        let h = self.host_range(gpa, buf.len() as u64)?;
        // SAFETY: the source is inside this guest's RAM; `buf` is ours.
        unsafe { core::ptr::copy_nonoverlapping(h.as_ptr::<u8>(), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` into guest RAM at `gpa`. All or nothing: on an error no
    /// byte is written.
    pub fn write(&self, gpa: Gpa, data: &[u8]) -> Result<(), MemError> {
        let h = self.host_range(gpa, data.len() as u64)?;
        self.dirty.host_wrote(gpa, data.len() as u64);
        // SAFETY: the destination is inside this guest's RAM.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), h.as_mut_ptr::<u8>(), data.len()) };
        Ok(())
    }

    /// Reads a little-endian value at `gpa` (any alignment).
    pub fn read_obj<T: Pod>(&self, gpa: Gpa) -> Result<T, MemError> {
        let mut b = T::ZERO;
        self.read_into(gpa, T::bytes_mut(&mut b))?;
        Ok(T::from_le(b))
    }

    /// Writes `v` little-endian at `gpa` (any alignment).
    pub fn write_obj<T: Pod>(&self, gpa: Gpa, v: &T) -> Result<(), MemError> {
        self.write(gpa, T::bytes(&v.to_le()))
    }

    /// Zeroes all guest RAM (before a restart).
    pub fn zero(&self) {
        for r in &self.ranges {
            // SAFETY: the range is this guest's RAM.
            unsafe { core::ptr::write_bytes(r.host.as_mut_ptr::<u8>(), 0, r.size as usize) };
        }
    }
}

/// What a virtio device reaches of the guest: copies in and out of its RAM,
/// each checked against the RAM ranges (a buffer outside them is an error
/// value for the device, never an access).
impl devices::virtio::GuestMem for GuestMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), devices::virtio::MemError> {
        self.read_into(Gpa(gpa), buf)
            .map_err(|_| devices::virtio::MemError {
                gpa,
                len: buf.len() as u64,
            })
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), devices::virtio::MemError> {
        GuestMemory::write(self, Gpa(gpa), data).map_err(|_| devices::virtio::MemError {
            gpa,
            len: data.len() as u64,
        })
    }
    fn contains(&self, gpa: u64, len: u64) -> bool {
        self.host_range(Gpa(gpa), len).is_ok()
    }
}

impl loader::e820::GuestRam for GuestMemory {
    fn write(&self, gpa: u64, data: &[u8]) -> Option<()> {
        GuestMemory::write(self, Gpa(gpa), data).ok()
    }
    fn size(&self) -> u64 {
        GuestMemory::size(self)
    }
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|r| (r.gpa.0, r.size)).collect()
    }
}

// Host unit tests build guest memory over their own buffers.
#[cfg(not(test))]
impl Drop for GuestMemory {
    fn drop(&mut self) {
        // Scrub guest RAM before the frames can go to anyone else.
        for r in &self.ranges {
            mm::free_zeroed(r.host, r.size);
        }
        for &t in &self.tables {
            mm::free_zeroed(t, mm::PAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    /// Guest RAM [0, 0x3000) and [0x10000, 0x11000) over two host buffers.
    struct Ram {
        low: Vec<u8>,
        high: Vec<u8>,
        mem: GuestMemory,
    }

    fn ram() -> Ram {
        let mut low = vec![0u8; 0x3000];
        let mut high = vec![0u8; 0x1000];
        let mem = GuestMemory::over_host(vec![
            RamRange {
                gpa: Gpa(0),
                size: 0x3000,
                host: Hpa(low.as_mut_ptr() as u64),
            },
            RamRange {
                gpa: Gpa(0x10000),
                size: 0x1000,
                host: Hpa(high.as_mut_ptr() as u64),
            },
        ]);
        Ram { low, high, mem }
    }

    #[test]
    fn copies_reach_the_right_host_bytes() {
        let r = ram();
        r.mem.write(Gpa(0x10), &[1, 2, 3]).unwrap();
        r.mem.write(Gpa(0x10ffe), &[7, 8]).unwrap();
        let mut b = [0u8; 3];
        r.mem.read_into(Gpa(0x10), &mut b).unwrap();
        assert_eq!(b, [1, 2, 3]);
        assert_eq!(&r.low[0x10..0x13], &[1, 2, 3]);
        assert_eq!(&r.high[0xffe..], &[7, 8]);
        assert_eq!(
            r.mem.host_range(Gpa(0x10800), 0x10),
            Ok(Hpa(r.high.as_ptr() as u64 + 0x800))
        );
        assert_eq!(r.mem.size(), 0x4000);
        assert!(r.mem.is_ram(Gpa(0x2fff)));
        assert!(!r.mem.is_ram(Gpa(0x3000)));
        assert!(r.mem.is_ram(Gpa(0x10000)));
        assert!(!r.mem.is_ram(Gpa(0x11000)));
    }

    #[test]
    fn crossing_the_end_of_ram_fails_whole() {
        let r = ram();
        r.mem.write(Gpa(0x2ff8), &[0xAA; 8]).unwrap();
        // Four bytes in RAM, four past its end: nothing is written.
        let e = r.mem.write(Gpa(0x2ffc), &[0x55; 8]);
        assert_eq!(
            e,
            Err(MemError::CrossesEnd {
                gpa: Gpa(0x2ffc),
                len: 8,
                end: Gpa(0x3000)
            })
        );
        assert_eq!(&r.low[0x2ff8..], &[0xAA; 8]);
        // Nor is anything read into the buffer.
        let mut b = [0x11u8; 8];
        assert!(r.mem.read_into(Gpa(0x2ffc), &mut b).is_err());
        assert_eq!(b, [0x11; 8]);
        // The last RAM byte of the high range, one past it.
        assert_eq!(
            r.mem.read_obj::<u16>(Gpa(0x10fff)),
            Err(MemError::CrossesEnd {
                gpa: Gpa(0x10fff),
                len: 2,
                end: Gpa(0x11000)
            })
        );
        assert_eq!(r.mem.read_obj::<u8>(Gpa(0x10fff)), Ok(0));
    }

    #[test]
    fn outside_ram_and_wrapping_fail() {
        let r = ram();
        assert_eq!(
            r.mem.read_obj::<u32>(Gpa(0x5000)),
            Err(MemError::NotRam {
                gpa: Gpa(0x5000),
                len: 4
            })
        );
        assert_eq!(
            r.mem.write_obj(Gpa(u64::MAX - 3), &0u64),
            Err(MemError::Wraps {
                gpa: Gpa(u64::MAX - 3),
                len: 8
            })
        );
        // Ending exactly at 2^64 wraps too (the end isn't a u64).
        assert_eq!(
            r.mem.host_range(Gpa(u64::MAX - 7), 8),
            Err(MemError::Wraps {
                gpa: Gpa(u64::MAX - 7),
                len: 8
            })
        );
        // A range covering both RAM ranges and the hole between them.
        let mut big = vec![0u8; 0x11000];
        assert!(matches!(
            r.mem.read_into(Gpa(0), &mut big),
            Err(MemError::CrossesEnd { .. })
        ));
        // Empty accesses: fine inside or at the end of a range, not in the hole.
        assert_eq!(r.mem.write(Gpa(0x3000), &[]), Ok(()));
        assert_eq!(
            r.mem.write(Gpa(0x4000), &[]),
            Err(MemError::NotRam {
                gpa: Gpa(0x4000),
                len: 0
            })
        );
    }

    #[test]
    fn objects_are_little_endian_at_any_alignment() {
        let r = ram();
        r.mem
            .write_obj(Gpa(0x101), &0x1122_3344_5566_7788u64)
            .unwrap();
        assert_eq!(
            &r.low[0x101..0x109],
            &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
        assert_eq!(r.mem.read_obj::<u64>(Gpa(0x101)), Ok(0x1122_3344_5566_7788));
        assert_eq!(r.mem.read_obj::<u32>(Gpa(0x103)), Ok(0x3344_5566));
        assert_eq!(r.mem.read_obj::<u16>(Gpa(0x107)), Ok(0x1122));
        assert_eq!(r.mem.read_obj::<u8>(Gpa(0x108)), Ok(0x11));
        assert_eq!(r.mem.read_obj::<i16>(Gpa(0x107)), Ok(0x1122));
        r.mem.write_obj(Gpa(0x200), &-2i32).unwrap();
        assert_eq!(r.mem.read_obj::<u32>(Gpa(0x200)), Ok(0xFFFF_FFFE));
        assert_eq!(
            r.mem.read_obj::<[u8; 3]>(Gpa(0x200)),
            Ok([0xFE, 0xFF, 0xFF])
        );
        // Four PDPTEs as one object (a PAE CR3 load).
        let pdptes = [0x1001u64, 0x2001, 0, u64::MAX];
        r.mem.write_obj(Gpa(0x10fe0), &pdptes).unwrap();
        assert_eq!(r.mem.read_obj::<[u64; 4]>(Gpa(0x10fe0)), Ok(pdptes));
        assert_eq!(&r.high[0xfe0..0xfe8], &0x1001u64.to_le_bytes());
        assert_eq!(r.mem.read_obj::<[u16; 2]>(Gpa(0x10fe0)), Ok([0x1001, 0]));
        assert_eq!(r.mem.read_obj::<[u32; 2]>(Gpa(0x10ff8)), Ok([u32::MAX; 2]));
        assert!(r.mem.read_obj::<[u64; 4]>(Gpa(0x10fe8)).is_err());
        assert_eq!(r.mem.read_obj::<[u8; 0]>(Gpa(0x10fff)), Ok([]));
    }

    /// The host-physical page `gpa` maps to and its size, walking the EPT.
    fn ept_lookup(pml4: Hpa, gpa: Gpa) -> Option<(Hpa, u64)> {
        let mut table = pml4;
        for level in (1..=4).rev() {
            // SAFETY: the tables are host memory this test handed the frame
            // allocator; they stay allocated (the test memory is not dropped).
            let e = unsafe { table.as_ptr::<u64>().add(ept::index(gpa, level)).read() };
            if e & ept::RWX == 0 {
                return None;
            }
            if level == 1 || e & ept::LARGE != 0 {
                assert_eq!(e & ept::RWX, ept::RWX);
                assert_eq!((e >> ept::MEMTYPE_SHIFT) & 7, MemType::WriteBack as u64);
                let size = 1u64 << (12 + 9 * (level - 1));
                return Some((ept::entry_addr(e), size));
            }
            table = ept::entry_addr(e);
        }
        None
    }

    #[test]
    fn ept_maps_each_ram_page_to_its_own_backing() {
        // Host memory for the frame allocator, which GuestMemory::new uses.
        let pool = vec![0u8; 24 << 20].leak();
        mm::FRAMES
            .lock()
            .add_free(Hpa(pool.as_mut_ptr() as u64), pool.len() as u64)
            .unwrap();
        let size = (4 << 20) + 0x3000;
        let m = GuestMemory::new(size).unwrap();
        assert_eq!(m.size(), size);
        assert_eq!(m.eptp() & 0xFFF, 0x1E);
        let pml4 = ept::entry_addr(m.eptp());
        let r = m.ranges[0];
        assert_eq!(r.gpa, Gpa(0));
        assert!(r.host.is_aligned(TWO_MIB));
        let mut gpa = Gpa(0);
        while gpa.0 < size {
            let (page, len) = ept_lookup(pml4, gpa).unwrap();
            let off = gpa.offset_from(r.gpa).unwrap();
            // 2 MiB pages where the whole 2 MiB is RAM, else 4 KiB.
            let block = off & !(TWO_MIB - 1);
            let want = if block + TWO_MIB <= size {
                TWO_MIB
            } else {
                0x1000
            };
            assert_eq!(len, want, "page size at {gpa:?}");
            assert_eq!(page, r.host.checked_add(off).unwrap().align_down(len));
            gpa = gpa.checked_add(0x1000).unwrap();
        }
        // Nothing beyond the end of RAM, and guest writes reach the backing.
        assert_eq!(ept_lookup(pml4, Gpa(size)), None);
        assert_eq!(ept_lookup(pml4, Gpa(0xFEE0_0000)), None);
        m.write_obj(Gpa(size - 8), &0xAB_u64).unwrap();
        // SAFETY: inside the guest's backing, which the test keeps alive.
        let raw = unsafe { r.host.as_ptr::<u64>().add(((size - 8) / 8) as usize).read() };
        assert_eq!(raw, 0xAB);
        assert_eq!(m.ept_bytes(), 4 * 0x1000);

        // Fragmented host memory: a page is taken at both ends of every 4 MiB block, so no
        // free run holds an aligned 2 MiB block. A 3 MiB guest still gets one 4 KiB-aligned
        // run, mapped with 4 KiB pages; an 8 MiB one is refused, naming the largest run.
        const FOUR_MIB: u64 = 4 << 20;
        {
            let mut f = mm::FRAMES.lock();
            let free: Vec<(u64, u64)> = f.free_ranges().collect();
            for (s, e) in free {
                let mut a = s & !(FOUR_MIB - 1);
                while a < e {
                    for p in [a, a + FOUR_MIB - 0x1000] {
                        if p >= s && p + 0x1000 <= e {
                            f.reserve(Hpa(p), 0x1000).unwrap();
                        }
                    }
                    a += FOUR_MIB;
                }
            }
        }
        let small = GuestMemory::new(3 << 20).unwrap();
        let r = small.ranges[0];
        let pml4 = ept::entry_addr(small.eptp());
        let mut gpa = Gpa(0);
        while gpa.0 < 3 << 20 {
            let (page, len) = ept_lookup(pml4, gpa).unwrap();
            assert_eq!(len, 0x1000, "page size at {gpa:?}");
            assert_eq!(page, r.host.checked_add(gpa.0).unwrap());
            gpa = gpa.checked_add(0x1000).unwrap();
        }
        match GuestMemory::new(8 << 20) {
            Err(
                e @ MemError::OutOfMemory {
                    wanted,
                    free,
                    largest,
                },
            ) => {
                assert_eq!(wanted, 8 << 20);
                assert!(free >= wanted, "the pool has {free} bytes free");
                assert_eq!(largest, FOUR_MIB - 0x2000);
                assert!(
                    e.to_string()
                        .ends_with(" but the largest free run is 4088 KiB"),
                    "{e}"
                );
            }
            other => panic!("8 MiB on fragmented memory: {:?}", other.map(|m| m.size())),
        }
    }

    #[test]
    fn errors_say_where_and_why() {
        let e = MemError::CrossesEnd {
            gpa: Gpa(0xbffffffc),
            len: 8,
            end: Gpa(0xc0000000),
        };
        assert_eq!(
            e.to_string(),
            "guest-physical 0xbffffffc+0x8: runs past the end of guest RAM at 0xc0000000"
        );
        assert_eq!(
            MemError::NotRam {
                gpa: Gpa(0xfee00000),
                len: 4
            }
            .to_string(),
            "guest-physical 0xfee00000+0x4: not guest RAM"
        );
        assert_eq!(
            MemError::Wraps {
                gpa: Gpa(u64::MAX),
                len: 2
            }
            .to_string(),
            "guest-physical 0xffffffffffffffff+0x2: the range wraps past 2^64"
        );
        assert_eq!(
            MemError::OutOfMemory {
                wanted: 16 << 20,
                free: 8 << 20,
                largest: 2 << 20
            }
            .to_string(),
            "not enough host memory: wanted 16384 KiB in one piece, 8192 KiB free"
        );
    }
}
