//! Guest memory: guest-physical RAM ranges backed by host frames that belong
//! to one guest alone, and the EPT that maps exactly those ranges (SDM Vol. 3C
//! 29.3). Nothing else — not the hypervisor, not another guest — is reachable.
use crate::mm;
use alloc::vec::Vec;
use arch::vmx::ept::{self, MemType, PageSize};

pub use loader::layout::{layout, FOUR_GIB, MMIO_HOLE_START};
const TWO_MIB: u64 = 0x20_0000;

/// One contiguous guest-physical RAM range and its host backing.
#[derive(Clone, Copy, Debug)]
pub struct RamRange {
    pub gpa: u64,
    pub size: u64,
    pub host: u64,
}

pub struct GuestMemory {
    pub ranges: Vec<RamRange>,
    /// EPT paging structures (all owned by this guest).
    tables: Vec<u64>,
    pml4: u64,
}

#[derive(Debug)]
pub enum MemError {
    OutOfMemory { wanted: u64, free: u64 },
}

impl core::fmt::Display for MemError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MemError::OutOfMemory { wanted, free } => {
                write!(
                    f,
                    "not enough host memory: wanted {} KiB, {} KiB free",
                    wanted >> 10,
                    free >> 10
                )
            }
        }
    }
}

impl GuestMemory {
    /// Allocates and zeroes `size` bytes of guest RAM and builds its EPT.
    pub fn new(size: u64) -> Result<Self, MemError> {
        let mut me = GuestMemory {
            ranges: Vec::new(),
            tables: Vec::new(),
            pml4: 0,
        };
        let oom = |wanted| MemError::OutOfMemory {
            wanted,
            free: mm::free_bytes(),
        };
        for (gpa, len) in layout(size) {
            // 2 MiB-aligned backing lets the EPT use 2 MiB pages.
            let host = mm::alloc_zeroed(len, if len >= TWO_MIB { TWO_MIB } else { mm::PAGE })
                .ok_or_else(|| oom(len))?;
            me.ranges.push(RamRange {
                gpa,
                size: len,
                host,
            });
        }
        me.pml4 = me.new_table().ok_or_else(|| oom(4096))?;
        for r in me.ranges.clone() {
            let mut off = 0;
            while off < r.size {
                let (gpa, hpa) = (r.gpa + off, r.host + off);
                let big = gpa % TWO_MIB == 0 && hpa % TWO_MIB == 0 && r.size - off >= TWO_MIB;
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

    fn new_table(&mut self) -> Option<u64> {
        let t = mm::alloc_zeroed_page()?;
        self.tables.push(t);
        Some(t)
    }

    fn map(&mut self, gpa: u64, hpa: u64, size: PageSize) -> Option<()> {
        let leaf_level = match size {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        };
        let mut table = self.pml4;
        let mut level = 4;
        while level > leaf_level {
            let slot = (table + 8 * ept::index(gpa, level) as u64) as *mut u64;
            // SAFETY: `table` is one of this guest's EPT pages (identity-mapped).
            let entry = unsafe { slot.read() };
            table = if entry & ept::RWX == 0 {
                let next = self.new_table()?;
                // SAFETY: as above.
                unsafe { slot.write(ept::table_entry(next)) };
                next
            } else {
                entry & ept::ADDR_MASK
            };
            level -= 1;
        }
        let slot = (table + 8 * ept::index(gpa, level) as u64) as *mut u64;
        // SAFETY: as above.
        unsafe { slot.write(ept::leaf_entry(hpa, ept::RWX, MemType::WriteBack, size)) };
        Some(())
    }

    pub fn eptp(&self) -> u64 {
        ept::eptp(self.pml4)
    }

    pub fn size(&self) -> u64 {
        self.ranges.iter().map(|r| r.size).sum()
    }

    /// Bytes of EPT paging structures.
    pub fn ept_bytes(&self) -> u64 {
        self.tables.len() as u64 * mm::PAGE
    }

    /// The host address of `[gpa, gpa + len)` if it lies entirely in one RAM range.
    pub fn host_range(&self, gpa: u64, len: u64) -> Option<u64> {
        let end = gpa.checked_add(len)?;
        self.ranges
            .iter()
            .find(|r| gpa >= r.gpa && end <= r.gpa + r.size)
            .map(|r| r.host + (gpa - r.gpa))
    }

    pub fn is_ram(&self, gpa: u64) -> bool {
        self.host_range(gpa, 1).is_some()
    }

    /// Copies guest RAM at `gpa` into `buf` (no slice of guest memory, which
    /// another vCPU may be writing, is ever formed).
    pub fn read_into(&self, gpa: u64, buf: &mut [u8]) -> Option<()> {
        let h = self.host_range(gpa, buf.len() as u64)?;
        // SAFETY: the source is inside this guest's RAM; `buf` is ours.
        unsafe { core::ptr::copy_nonoverlapping(h as *const u8, buf.as_mut_ptr(), buf.len()) };
        Some(())
    }

    /// Copies `data` into guest RAM at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Option<()> {
        let h = self.host_range(gpa, data.len() as u64)?;
        // SAFETY: the destination is inside this guest's RAM.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), h as *mut u8, data.len()) };
        Some(())
    }

    pub fn write_u64(&self, gpa: u64, v: u64) -> Option<()> {
        self.write(gpa, &v.to_le_bytes())
    }

    pub fn read_u64(&self, gpa: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read_into(gpa, &mut b)?;
        Some(u64::from_le_bytes(b))
    }

    /// Zeroes all guest RAM (before a restart).
    pub fn zero(&self) {
        for r in &self.ranges {
            // SAFETY: the range is this guest's RAM.
            unsafe { core::ptr::write_bytes(r.host as *mut u8, 0, r.size as usize) };
        }
    }
}

impl loader::e820::GuestRam for GuestMemory {
    fn write(&self, gpa: u64, data: &[u8]) -> Option<()> {
        GuestMemory::write(self, gpa, data)
    }
    fn size(&self) -> u64 {
        GuestMemory::size(self)
    }
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|r| (r.gpa, r.size)).collect()
    }
}

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
