//! The guest-physical address map every guest gets: RAM below the MMIO hole,
//! the rest from 4 GiB up. The core builds the EPT to this layout; the
//! loaders and the E820 map describe it to the guest.
use alloc::vec::Vec;

/// Guest-physical addresses from here up to 4 GiB are kept free of RAM (the
/// PCI/MMIO hole: I/O APIC, local APIC, firmware).
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// The guest's page size for loader-built structures.
pub const PAGE: u64 = 4096;

/// The guest-physical RAM layout for `size` bytes: below the MMIO hole, and
/// the rest from 4 GiB up.
pub fn layout(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_HOLE_START {
        alloc::vec![(0, size)]
    } else {
        alloc::vec![
            (0, MMIO_HOLE_START),
            (FOUR_GIB, size.saturating_sub(MMIO_HOLE_START))
        ]
    }
}
