//! The BIOS data area (BDA, 0x400-0x4FF) and the extended BIOS data area
//! (EBDA) that a PC's firmware leaves behind, for guests that read them
//! instead of (or besides) a memory map: e.g. Linux's
//! `reserve_bios_regions()` (arch/x86/kernel/ebda.c) takes the EBDA segment
//! at 0x40E and the base memory size at 0x413, and Multiboot hypervisors
//! place their real-mode trampolines below that size.
//!
//! Field offsets are those of the IBM PC/AT BIOS data area (IBM "PC AT
//! Technical Reference", BIOS listing; Ralf Brown's "MEMORY.LST" 40:xx):
//!
//! | offset | size | what |
//! | --- | --- | --- |
//! | 0x400 | 4 words | I/O base of COM1..COM4 (0: absent) |
//! | 0x408 | 3 words | I/O base of LPT1..LPT3 (0: absent) |
//! | 0x40E | word | EBDA segment (EBDA address >> 4) |
//! | 0x410 | word | equipment list (INT 11h) |
//! | 0x413 | word | conventional memory in KiB below the EBDA (INT 12h) |
//!
//! The EBDA is [`EBDA_KIB`] KiB at the top of conventional memory; its
//! first word is its own size in KiB. The base memory size equals the
//! start of the EBDA, which the E820 map ([`super::e820::standard`]) ends
//! conventional RAM at, and which Multiboot's `mem_lower` reports.

use super::e820::{E820Map, E820Type, EBDA_START};

/// Guest-physical address of the BDA.
pub const BDA_GPA: u64 = 0x400;
/// Length of the BDA.
pub const BDA_LEN: usize = 0x100;
const BDA_END: u64 = BDA_GPA + BDA_LEN as u64;
/// Size of the EBDA in KiB.
pub const EBDA_KIB: u16 = 1;
/// End of conventional memory (640 KiB).
const CONVENTIONAL_END: u64 = 0xA_0000;

/// BDA offsets (relative to 0x400).
const COM_BASES: usize = 0x00;
/// Four 2-byte COM port slots.
const COM_BASES_END: usize = COM_BASES + 8;
const EBDA_SEGMENT: usize = 0x0E;
const EQUIPMENT: usize = 0x10;
const BASE_MEMORY_KIB: usize = 0x13;

/// Equipment word bits (INT 11h): bit 1 a math coprocessor; bits 9-11 the
/// number of serial ports; bits 4-5 = 00 (an EGA/VGA-class adapter or none:
/// no CGA/MDA text mode is promised); no floppy, no parallel port.
const EQUIP_FPU: u16 = 1 << 1;
const EQUIP_SERIAL_SHIFT: u16 = 9;

/// What the BDA describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BiosData {
    /// The BDA bytes for 0x400..0x500.
    pub bda: [u8; BDA_LEN],
    /// Where the EBDA starts (also conventional memory's end).
    pub ebda_gpa: u64,
    /// The EBDA's first bytes: its size in KiB.
    pub ebda_head: [u8; 2],
}

/// The BDA and EBDA for a guest whose low RAM ends at `low_ram_end` (the
/// end of the RAM range starting at 0) and whose serial ports are at
/// `com_ports` (at most four, in COM1.. order). The EBDA sits at the top of
/// conventional memory: [`EBDA_START`] when RAM reaches 640 KiB, else just
/// below the end of RAM (KiB-aligned). `None` when RAM is too small for the
/// BDA and an EBDA above it.
pub fn build(low_ram_end: u64, com_ports: &[u16]) -> Option<BiosData> {
    let ebda_kib = u64::from(EBDA_KIB);
    let top = low_ram_end.min(CONVENTIONAL_END) & !0x3FF;
    let ebda_gpa = if top >= CONVENTIONAL_END {
        EBDA_START
    } else {
        top.checked_sub(ebda_kib * 1024)?
    };
    if ebda_gpa < BDA_END {
        return None;
    }
    let mut bda = [0u8; BDA_LEN];
    let com = bda.get_mut(COM_BASES..COM_BASES_END).unwrap_or_default();
    for (slot, port) in com.chunks_exact_mut(2).zip(com_ports.iter().take(4)) {
        slot.copy_from_slice(&port.to_le_bytes());
    }
    bda[EBDA_SEGMENT..EBDA_SEGMENT + 2].copy_from_slice(&((ebda_gpa >> 4) as u16).to_le_bytes());
    let serial = com_ports.len().min(4) as u16;
    let equipment = EQUIP_FPU | (serial << EQUIP_SERIAL_SHIFT);
    bda[EQUIPMENT..EQUIPMENT + 2].copy_from_slice(&equipment.to_le_bytes());
    let base_kib = (ebda_gpa / 1024) as u16;
    bda[BASE_MEMORY_KIB..BASE_MEMORY_KIB + 2].copy_from_slice(&base_kib.to_le_bytes());
    Some(BiosData {
        bda,
        ebda_gpa,
        ebda_head: EBDA_KIB.to_le_bytes(),
    })
}

impl BiosData {
    /// Paints the EBDA (and the rest of the 640 KiB) reserved in `map`, so
    /// the map and the BDA agree on where conventional RAM ends.
    pub fn reserve_in(&self, map: &mut E820Map) -> Result<(), super::e820::E820Error> {
        if self.ebda_gpa < CONVENTIONAL_END {
            map.set(
                self.ebda_gpa,
                CONVENTIONAL_END.saturating_sub(self.ebda_gpa),
                E820Type::Reserved,
            )?;
        }
        Ok(())
    }

    /// Writes the BDA and the EBDA's head into guest RAM.
    pub fn write(&self, mem: &impl super::e820::GuestRam) -> Option<()> {
        mem.write(BDA_GPA, &self.bda)?;
        mem.write(self.ebda_gpa, &self.ebda_head)
    }
}

#[cfg(test)]
mod tests {
    use super::super::e820::{self, fake::FakeRam, GuestRam};
    use super::*;
    use crate::layout as memory;

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }

    #[test]
    fn standard_pc_layout() {
        let d = build(16 << 20, &[0x3F8]).unwrap();
        assert_eq!(d.ebda_gpa, 0x9_FC00);
        assert_eq!(u16_at(&d.bda, 0x00), 0x3F8);
        assert_eq!(u16_at(&d.bda, 0x02), 0);
        assert_eq!(u16_at(&d.bda, 0x08), 0, "no LPT1");
        assert_eq!(u16_at(&d.bda, 0x0E), 0x9FC0);
        // One serial port, a coprocessor, nothing else.
        assert_eq!(u16_at(&d.bda, 0x10), 0x0202);
        assert_eq!(u16_at(&d.bda, 0x13), 639);
        assert_eq!(d.ebda_head, [1, 0]);
        // The EBDA starts where the standard E820 map ends conventional RAM.
        let map = e820::standard(&memory::layout(16 << 20), &[]).unwrap();
        assert_eq!(map.ram_end_from(0, u64::MAX), Some(d.ebda_gpa));
        let mut m2 = map.clone();
        d.reserve_in(&mut m2).unwrap();
        assert_eq!(m2, map);
    }

    #[test]
    fn written_into_guest_ram() {
        let ram = FakeRam::new(1 << 20);
        let d = build(ram.size(), &[0x3F8, 0x2F8]).unwrap();
        d.write(&ram).unwrap();
        assert_eq!(ram.u16(0x400), 0x3F8);
        assert_eq!(ram.u16(0x402), 0x2F8);
        assert_eq!(ram.u16(0x40E), 0x9FC0);
        assert_eq!(ram.u16(0x410), 0x0402);
        assert_eq!(ram.u16(0x413), 639);
        assert_eq!(ram.u16(0x9_FC00), 1);
    }

    #[test]
    fn small_ram_moves_the_ebda_down() {
        let d = build(0x8_0000 + 0x123, &[0x3F8]).unwrap();
        assert_eq!(d.ebda_gpa, 0x7_FC00);
        assert_eq!(u16_at(&d.bda, 0x13), 511);
        assert_eq!(u16_at(&d.bda, 0x0E), 0x7FC0);
        let mut map = e820::E820Map::new();
        map.set(0, 0x8_0123, E820Type::Ram).unwrap();
        d.reserve_in(&mut map).unwrap();
        assert_eq!(map.ram_end_from(0, u64::MAX), Some(0x7_FC00));
        assert!(build(0x800, &[]).is_none());
    }
}
