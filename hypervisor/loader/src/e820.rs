//! The guest's physical memory map in the BIOS INT 15h/E820 form, which both
//! the Linux zero page (`e820_table`, Documentation/arch/x86/zero-page.rst)
//! and the Multiboot `mmap_*` fields (Multiboot 0.6.96 §3.3) carry.
//!
//! Address range types are those of ACPI 6.5 §15.1 (Table 15.1): 1 memory,
//! 2 reserved, 3 ACPI reclaim, 4 ACPI NVS.
//!
//! Also home of [`GuestRam`], the narrow view of guest memory that the image
//! loaders ([`super::bzimage`], [`super::multiboot`]) write through, so they
//! run on the host against a fake.

use crate::layout as memory;
use alloc::vec::Vec;
use core::fmt;

/// Guest RAM as the loaders see it.
pub trait GuestRam {
    /// Copies `data` to guest-physical `gpa`; `None` unless every byte lands
    /// in RAM.
    fn write(&self, gpa: u64, data: &[u8]) -> Option<()>;
    /// Total bytes of RAM.
    fn size(&self) -> u64;
    /// The RAM ranges `(gpa, len)`, ascending; by default the layout
    /// [`memory::layout`] gives for [`GuestRam::size`] (below the MMIO hole,
    /// the rest from 4 GiB).
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        memory::layout(self.size())
    }
    /// Zeroes `[gpa, gpa + len)` (for a loaded image's BSS); `None` unless
    /// it is all RAM.
    fn zero(&self, gpa: u64, len: u64) -> Option<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut off = 0;
        while off < len {
            let n = len.saturating_sub(off).min(ZEROS.len() as u64);
            self.write(gpa.checked_add(off)?, ZEROS.get(..n as usize)?)?;
            off = off.saturating_add(n);
        }
        Some(())
    }
}

/// The end of conventional memory the map reports: 639 KiB, the usual start
/// of the Extended BIOS Data Area.
pub const EBDA_START: u64 = 0x9_FC00;
/// End of the legacy hole (EBDA, VGA window, option and system BIOS ROMs).
pub const HIGH_MEMORY: u64 = 0x10_0000;

/// E820 address range type (ACPI 6.5 Table 15.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    /// AddressRangeMemory: usable RAM.
    Ram = 1,
    /// AddressRangeReserved: not to be used by the OS.
    Reserved = 2,
    /// AddressRangeACPI: ACPI tables; RAM once the OS has read them.
    Acpi = 3,
    /// AddressRangeNVS: must be preserved (e.g. the FACS, ACPI 6.5 §5.2.10).
    Nvs = 4,
}

/// One address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Type,
}

impl E820Entry {
    /// Exclusive end.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }

    /// The 20-byte BIOS layout: base (u64), length (u64), type (u32).
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0; 20];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..20].copy_from_slice(&(self.kind as u32).to_le_bytes());
        b
    }
}

/// What is wrong with a requested range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Error {
    /// `addr + size` overflows 64 bits.
    Overflow { addr: u64, size: u64 },
}

impl fmt::Display for E820Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            E820Error::Overflow { addr, size } => write!(
                f,
                "e820: range of {size:#x} bytes at {addr:#x} runs past the 64-bit address space"
            ),
        }
    }
}

/// A memory map: sorted by address, non-overlapping, no empty entries, and
/// adjacent entries of one type merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct E820Map {
    entries: Vec<E820Entry>,
}

impl E820Map {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn entries(&self) -> &[E820Entry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Marks `[addr, addr + size)` as `kind`, replacing whatever the map said
    /// about those bytes before.
    pub fn set(&mut self, addr: u64, size: u64, kind: E820Type) -> Result<(), E820Error> {
        let end = addr
            .checked_add(size)
            .ok_or(E820Error::Overflow { addr, size })?;
        if size == 0 {
            return Ok(());
        }
        let mut out = Vec::with_capacity(self.entries.len().saturating_add(2));
        for e in &self.entries {
            // Keep the parts of `e` outside the new range.
            if e.addr < addr {
                out.push(E820Entry {
                    size: e.end().min(addr).saturating_sub(e.addr),
                    ..*e
                });
            }
            if e.end() > end {
                let a = e.addr.max(end);
                out.push(E820Entry {
                    addr: a,
                    size: e.end().saturating_sub(a),
                    kind: e.kind,
                });
            }
        }
        out.push(E820Entry { addr, size, kind });
        out.sort_by_key(|e| e.addr);
        // Merge touching entries of one type.
        let mut merged: Vec<E820Entry> = Vec::with_capacity(out.len());
        for e in out {
            match merged.last_mut() {
                Some(last) if last.kind == e.kind && last.end() == e.addr => {
                    last.size = last.size.saturating_add(e.size)
                }
                _ => merged.push(e),
            }
        }
        self.entries = merged;
        Ok(())
    }

    /// The highest RAM byte + 1 below `limit` in one RAM entry that also
    /// contains `[from, ...)`: i.e. the end of the RAM run that `from` is in,
    /// clipped to `limit`. `None` if `from` is not RAM.
    pub fn ram_end_from(&self, from: u64, limit: u64) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.kind == E820Type::Ram && e.addr <= from && from < e.end())
            .map(|e| e.end().min(limit))
    }

    /// True if `[addr, addr + size)` lies inside one RAM entry.
    pub fn is_ram(&self, addr: u64, size: u64) -> bool {
        let Some(end) = addr.checked_add(size) else {
            return false;
        };
        self.entries
            .iter()
            .any(|e| e.kind == E820Type::Ram && e.addr <= addr && end <= e.end())
    }
}

/// The standard PC map for guest RAM `ram` (ranges `(gpa, len)`, as
/// [`GuestRam::ram_ranges`] gives them), with `areas` (e.g. the ACPI tables
/// as [`E820Type::Acpi`], the FACS as [`E820Type::Nvs`]) painted over it:
///
/// - `0 .. 0x9FC00` RAM (conventional memory),
/// - `0x9FC00 .. 0x100000` reserved (EBDA, VGA window, BIOS ROM area) even
///   where guest RAM backs it,
/// - the rest of `ram` as RAM: from 1 MiB up to the MMIO hole at
///   3 GiB, and from 4 GiB up.
///
/// Later entries of `areas` win over earlier ones.
pub fn standard(ram: &[(u64, u64)], areas: &[(u64, u64, E820Type)]) -> Result<E820Map, E820Error> {
    let mut map = E820Map::new();
    for &(gpa, len) in ram {
        map.set(gpa, len, E820Type::Ram)?;
    }
    // The legacy hole is reported reserved whether or not RAM backs it.
    map.set(EBDA_START, HIGH_MEMORY - EBDA_START, E820Type::Reserved)?;
    for &(addr, size, kind) in areas {
        map.set(addr, size, kind)?;
    }
    Ok(map)
}

/// Sparse fake guest RAM for the loaders' host tests.
#[cfg(test)]
pub(crate) mod fake {
    use super::GuestRam;
    use crate::layout as memory;
    use alloc::boxed::Box;
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;
    use core::cell::RefCell;

    const PAGE: u64 = 4096;

    pub struct FakeRam {
        size: u64,
        pages: RefCell<BTreeMap<u64, Box<[u8; PAGE as usize]>>>,
    }

    impl FakeRam {
        pub fn new(size: u64) -> Self {
            Self {
                size,
                pages: RefCell::new(BTreeMap::new()),
            }
        }

        fn in_ram(&self, gpa: u64, len: u64) -> bool {
            let Some(end) = gpa.checked_add(len) else {
                return false;
            };
            memory::layout(self.size)
                .iter()
                .any(|&(a, l)| gpa >= a && end <= a + l)
        }

        /// The bytes at `[gpa, gpa + len)` (unwritten bytes read as zero).
        pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
            assert!(self.in_ram(gpa, len as u64), "read outside RAM");
            let pages = self.pages.borrow();
            (0..len as u64)
                .map(|i| {
                    let a = gpa + i;
                    pages.get(&(a / PAGE)).map_or(0, |p| p[(a % PAGE) as usize])
                })
                .collect()
        }

        pub fn u16(&self, gpa: u64) -> u16 {
            u16::from_le_bytes(self.read(gpa, 2).try_into().unwrap())
        }

        pub fn u32(&self, gpa: u64) -> u32 {
            u32::from_le_bytes(self.read(gpa, 4).try_into().unwrap())
        }

        pub fn u64(&self, gpa: u64) -> u64 {
            u64::from_le_bytes(self.read(gpa, 8).try_into().unwrap())
        }

        /// The NUL-terminated string at `gpa`.
        pub fn cstr(&self, gpa: u64) -> Vec<u8> {
            let mut v = Vec::new();
            let mut a = gpa;
            loop {
                let b = self.read(a, 1)[0];
                if b == 0 {
                    return v;
                }
                v.push(b);
                a += 1;
            }
        }
    }

    impl GuestRam for FakeRam {
        fn write(&self, gpa: u64, data: &[u8]) -> Option<()> {
            if !self.in_ram(gpa, data.len() as u64) {
                return None;
            }
            let mut pages = self.pages.borrow_mut();
            let mut done = 0usize;
            while done < data.len() {
                let a = gpa + done as u64;
                let off = (a % PAGE) as usize;
                let n = (PAGE as usize - off).min(data.len() - done);
                let page = pages
                    .entry(a / PAGE)
                    .or_insert_with(|| Box::new([0; PAGE as usize]));
                page[off..off + n].copy_from_slice(&data[done..done + n]);
                done += n;
            }
            Some(())
        }

        fn size(&self) -> u64 {
            self.size
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{FOUR_GIB, MMIO_HOLE_START};
    use alloc::string::ToString;
    use alloc::vec;

    fn e(addr: u64, size: u64, kind: E820Type) -> E820Entry {
        E820Entry { addr, size, kind }
    }

    fn check_invariants(m: &E820Map) {
        for w in m.entries().windows(2) {
            assert!(w[0].end() <= w[1].addr, "overlap or unsorted: {w:?}");
            assert!(
                !(w[0].end() == w[1].addr && w[0].kind == w[1].kind),
                "unmerged: {w:?}"
            );
        }
        assert!(m.entries().iter().all(|e| e.size > 0));
    }

    #[test]
    fn small_guest_with_acpi_area() {
        let ram = memory::layout(256 << 20);
        let m = standard(
            &ram,
            &[
                (0xE_0000, 0x1000, E820Type::Nvs),
                (0xE_1000, 0x1F000, E820Type::Acpi),
            ],
        )
        .unwrap();
        check_invariants(&m);
        assert_eq!(
            m.entries(),
            &[
                e(0, 0x9_FC00, E820Type::Ram),
                e(0x9_FC00, 0xE_0000 - 0x9_FC00, E820Type::Reserved),
                e(0xE_0000, 0x1000, E820Type::Nvs),
                e(0xE_1000, 0x1F000, E820Type::Acpi),
                e(0x10_0000, (256 << 20) - 0x10_0000, E820Type::Ram),
            ]
        );
    }

    #[test]
    fn big_guest_splits_around_the_mmio_hole() {
        let size = 5u64 << 30;
        let m = standard(&memory::layout(size), &[]).unwrap();
        check_invariants(&m);
        assert_eq!(
            m.entries(),
            &[
                e(0, 0x9_FC00, E820Type::Ram),
                e(0x9_FC00, 0x6_0400, E820Type::Reserved),
                e(0x10_0000, MMIO_HOLE_START - 0x10_0000, E820Type::Ram),
                e(FOUR_GIB, size - MMIO_HOLE_START, E820Type::Ram),
            ]
        );
        let ram: u64 = m
            .entries()
            .iter()
            .filter(|e| e.kind == E820Type::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, size - (HIGH_MEMORY - EBDA_START));
    }

    #[test]
    fn set_splits_merges_and_replaces() {
        let mut m = E820Map::new();
        m.set(0x1000, 0x9000, E820Type::Ram).unwrap();
        m.set(0x3000, 0x1000, E820Type::Reserved).unwrap();
        assert_eq!(
            m.entries(),
            &[
                e(0x1000, 0x2000, E820Type::Ram),
                e(0x3000, 0x1000, E820Type::Reserved),
                e(0x4000, 0x6000, E820Type::Ram),
            ]
        );
        // Painting RAM back merges the three into one.
        m.set(0x3000, 0x1000, E820Type::Ram).unwrap();
        assert_eq!(m.entries(), &[e(0x1000, 0x9000, E820Type::Ram)]);
        // A range covering several entries and a gap.
        m.set(0x2_0000, 0x1000, E820Type::Ram).unwrap();
        m.set(0x800, 0x1_F900, E820Type::Acpi).unwrap();
        check_invariants(&m);
        assert_eq!(
            m.entries(),
            &[
                e(0x800, 0x1_F900, E820Type::Acpi),
                e(0x2_0100, 0xF00, E820Type::Ram),
            ]
        );
        m.set(0, 0, E820Type::Nvs).unwrap();
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn overflow_is_an_error() {
        let err = E820Map::new()
            .set(u64::MAX - 1, 4, E820Type::Ram)
            .unwrap_err();
        assert_eq!(
            err,
            E820Error::Overflow {
                addr: u64::MAX - 1,
                size: 4
            }
        );
        assert!(err
            .to_string()
            .contains("runs past the 64-bit address space"));
    }

    #[test]
    fn ram_queries() {
        let m = standard(&memory::layout(64 << 20), &[]).unwrap();
        assert!(m.is_ram(0x1_0000, 0x1000));
        assert!(!m.is_ram(0x9_F000, 0x1000));
        assert!(m.is_ram(0x10_0000, (64 << 20) - 0x10_0000));
        assert!(!m.is_ram(0x10_0000, 64 << 20));
        assert!(!m.is_ram(u64::MAX, 2));
        assert_eq!(m.ram_end_from(0x20_0000, u64::MAX), Some(64 << 20));
        assert_eq!(m.ram_end_from(0x20_0000, 0x30_0000), Some(0x30_0000));
        assert_eq!(m.ram_end_from(0xA_0000, u64::MAX), None);
    }

    #[test]
    fn entry_bytes() {
        let b = e(0x10_0000, 0x20_0000, E820Type::Acpi).to_bytes();
        assert_eq!(
            b,
            [0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 3, 0, 0, 0]
        );
    }

    #[test]
    fn default_zero_fills() {
        struct Rec(core::cell::RefCell<Vec<(u64, usize)>>);
        impl GuestRam for Rec {
            fn write(&self, gpa: u64, data: &[u8]) -> Option<()> {
                assert!(data.iter().all(|&b| b == 0));
                self.0.borrow_mut().push((gpa, data.len()));
                Some(())
            }
            fn size(&self) -> u64 {
                1 << 20
            }
        }
        let r = Rec(core::cell::RefCell::new(vec![]));
        r.zero(0x1000, 0x1801).unwrap();
        assert_eq!(*r.0.borrow(), vec![(0x1000, 0x1000), (0x2000, 0x801)]);
        assert_eq!(r.ram_ranges(), vec![(0, 1 << 20)]);
    }
}
