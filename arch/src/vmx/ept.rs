//! EPT paging-structure entries and the EPT pointer (SDM Vol. 3C 29.3.2, 25.6.11).
use crate::addr::{Gpa, Hpa};

pub const READ: u64 = 1 << 0;
pub const WRITE: u64 = 1 << 1;
pub const EXECUTE: u64 = 1 << 2;
pub const RWX: u64 = READ | WRITE | EXECUTE;
/// Memory type field, bits 5:3 of a leaf entry.
pub const MEMTYPE_SHIFT: u64 = 3;
pub const IGNORE_PAT: u64 = 1 << 6;
/// Bit 7: the entry maps a 1 GiB (PDPTE) or 2 MiB (PDE) page.
pub const LARGE: u64 = 1 << 7;
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// EPT memory types (SDM 29.3.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum MemType {
    Uncacheable = 0,
    WriteCombining = 1,
    WriteThrough = 4,
    WriteProtected = 5,
    WriteBack = 6,
}

/// Page sizes an EPT leaf can map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    Size4K,
    Size2M,
    Size1G,
}

impl PageSize {
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 0x1000,
            PageSize::Size2M => 0x20_0000,
            PageSize::Size1G => 0x4000_0000,
        }
    }
}

/// A non-leaf entry pointing to the next table with full permissions.
pub const fn table_entry(next_table: Hpa) -> u64 {
    (next_table.0 & ADDR_MASK) | RWX
}

/// A leaf entry mapping `host` with permissions and memory type.
pub fn leaf_entry(host: Hpa, perms: u64, mt: MemType, size: PageSize) -> u64 {
    let large = if size == PageSize::Size4K { 0 } else { LARGE };
    (host.0 & ADDR_MASK) | (perms & RWX) | ((mt as u64) << MEMTYPE_SHIFT) | IGNORE_PAT | large
}

/// The host-physical address an entry points to (the next table or, in a
/// leaf, the page; SDM Vol. 3C Tables 29-1..29-6, bits 51:12).
pub const fn entry_addr(entry: u64) -> Hpa {
    Hpa(entry & ADDR_MASK)
}

/// The EPT pointer: write-back paging structures, 4-level walk (SDM 25.6.11).
pub const fn eptp(pml4: Hpa) -> u64 {
    (pml4.0 & ADDR_MASK) | 6 | ((4 - 1) << 3)
}

/// Index of `gpa` in the table at `level` (4 = PML4 .. 1 = PT).
pub const fn index(gpa: Gpa, level: u32) -> usize {
    ((gpa.0 >> (12 + 9 * (level - 1))) & 0x1FF) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_encode() {
        assert_eq!(eptp(Hpa(0x1234_5000)), 0x1234_501E);
        let e = leaf_entry(Hpa(0x20_0000), RWX, MemType::WriteBack, PageSize::Size2M);
        assert_eq!(e, 0x20_0000 | 7 | (6 << 3) | (1 << 6) | (1 << 7));
        assert_eq!(entry_addr(e), Hpa(0x20_0000));
        assert_eq!(
            entry_addr(table_entry(Hpa(0xF_FFFF_FFFF_F000))),
            Hpa(0xF_FFFF_FFFF_F000)
        );
        let g = Gpa(0x4020_3000);
        assert_eq!(index(g, 4), 0);
        assert_eq!(index(g, 3), 1);
        assert_eq!(index(g, 2), 1);
        assert_eq!(index(g, 1), 3);
        assert_eq!(index(Gpa(0xFF80_0000_0000), 4), 0x1FF);
    }
}
