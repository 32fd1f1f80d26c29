//! An 82093AA-style I/O APIC (Intel 82093AA I/O APIC datasheet): 24
//! redirection entries behind an index/data pair at [`BASE`] (IOREGSEL at
//! offset 0x00, IOWIN at 0x10). Registers: ID (0x00), version (0x01, reads
//! [`VERSION`]), arbitration ID (0x02), redirection entry n at 0x10 + 2n
//! (low half) and 0x11 + 2n (high half).
//!
//! Pure state: the caller routes what comes out.
//! - MMIO: [`IoApic::read_mmio`] / [`IoApic::write_mmio`] with the offset in
//!   the page and the access size (1, 2 or 4).
//! - Device lines: [`IoApic::set_irq`]`(gsi, asserted)`; `asserted` is the
//!   logical state of the line (the entry's polarity bit is not applied).
//! - Local APIC EOIs for level-triggered vectors: [`IoApic::eoi`].
//!
//! Each returns the interrupt messages to send as [`Message`] values: the
//! caller finds the target local APICs with `VLapic::matches_destination(dest,
//! logical, false)` and calls `VLapic::accept(vector, level_triggered)` for
//! fixed ones. Edge-triggered entries send on a rising edge; level-triggered
//! ones send while the line is asserted and Remote IRR is clear, set Remote
//! IRR, and send again after the EOI if the line is still asserted. Masked
//! entries send nothing; unmasking an asserted level-triggered entry sends.
use super::all_ones;
pub use super::lapic::DeliveryMode;
use crate::effects::{Effects, Message};
use alloc::vec::Vec;

/// The default MMIO base address.
pub const BASE: u64 = 0xFEC0_0000;
/// Redirection entries (input pins).
pub const PINS: usize = 24;
/// Version register: version 0x11, maximum redirection entry 23.
pub const VERSION: u32 = 0x0017_0011;

const IOREGSEL: u32 = 0x00;
const IOWIN: u32 = 0x10;
const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARB: u8 = 0x02;
const REG_RTE0: u8 = 0x10;

// Redirection entry bits (82093AA datasheet 3.2.4).
const RTE_LOW_WRITABLE: u32 = 0x0001_AFFF;
const RTE_DEST: u32 = 0xFF00_0000;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;

/// The I/O APIC. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoApic {
    id: u8,
    sel: u8,
    rte: [u64; PINS],
    /// Bit n: line n is asserted.
    lines: u32,
}

impl IoApic {
    /// An I/O APIC after reset, with APIC ID `id` (4 bits): every entry masked.
    pub fn new(id: u8) -> Self {
        Self {
            id: id & 0xF,
            sel: 0,
            rte: [RTE_MASKED; PINS],
            lines: 0,
        }
    }

    /// Back to the reset state; the ID and the line levels are kept.
    pub fn reset(&mut self) {
        self.sel = 0;
        self.rte = [RTE_MASKED; PINS];
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// Redirection entry `pin` as the guest would read it (64 bits).
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.rte.get(pin).copied()
    }

    fn reg(&self, index: u8) -> u32 {
        match index {
            REG_ID | REG_ARB => u32::from(self.id) << 24,
            REG_VERSION => VERSION,
            _ => match Self::rte_index(index) {
                Some((pin, false)) => self.rte.get(pin).map_or(0, |&e| e as u32),
                Some((pin, true)) => self.rte.get(pin).map_or(0, |&e| (e >> 32) as u32),
                None => 0,
            },
        }
    }

    /// (pin, high half) for a redirection-table register index.
    fn rte_index(index: u8) -> Option<(usize, bool)> {
        let i = usize::from(index.checked_sub(REG_RTE0)?);
        (i < 2 * PINS).then_some((i / 2, i % 2 == 1))
    }

    /// A read of `size` bytes (1, 2 or 4) at `offset` in the page. IOREGSEL
    /// reads back the selected index; IOWIN reads the selected register.
    /// Other offsets read 0.
    pub fn read_mmio(&self, offset: u32, size: u8) -> u32 {
        let shift = (offset & 3) << 3;
        let v = match offset & !3 {
            IOREGSEL => u32::from(self.sel),
            IOWIN => self.reg(self.sel),
            _ => 0,
        };
        (v >> shift) & all_ones(size)
    }

    /// A write of `size` bytes at `offset`. Writes to IOWIN narrower than
    /// 4 bytes change only those bytes of the selected register. Returns what
    /// an unmasked, asserted level-triggered entry sends.
    pub fn write_mmio(&mut self, offset: u32, size: u8, value: u32) -> Vec<Message> {
        let shift = (offset & 3) << 3;
        let mask = all_ones(size).checked_shl(shift).unwrap_or(0);
        let value = value.checked_shl(shift).unwrap_or(0) & mask;
        match offset & !3 {
            IOREGSEL => {
                if mask & 0xFF != 0 {
                    self.sel = value as u8;
                }
                Vec::new()
            }
            IOWIN => {
                let index = self.sel;
                let v = (self.reg(index) & !mask) | value;
                self.write_reg(index, v)
            }
            _ => Vec::new(),
        }
    }

    fn write_reg(&mut self, index: u8, v: u32) -> Vec<Message> {
        match index {
            REG_ID => self.id = ((v >> 24) & 0xF) as u8,
            // Version and arbitration ID are read-only.
            REG_VERSION | REG_ARB => {}
            _ => match Self::rte_index(index) {
                Some((pin, false)) => {
                    let Some(entry) = self.rte.get_mut(pin) else {
                        return Vec::new();
                    };
                    let keep = *entry & !u64::from(RTE_LOW_WRITABLE);
                    let mut e = keep | u64::from(v & RTE_LOW_WRITABLE);
                    // Remote IRR means nothing for edge entries: drop a stale one.
                    if !is_level(e) {
                        e &= !RTE_REMOTE_IRR;
                    }
                    *entry = e;
                    return self.level_check(pin);
                }
                Some((pin, true)) => {
                    if let Some(entry) = self.rte.get_mut(pin) {
                        *entry = (*entry & 0xFFFF_FFFF) | (u64::from(v & RTE_DEST) << 32);
                    }
                }
                None => {}
            },
        }
        Vec::new()
    }

    /// Drives input `gsi` (0..23; others are ignored). Edge-triggered entries
    /// send on a rising edge, level-triggered ones while asserted and Remote
    /// IRR is clear.
    pub fn set_irq(&mut self, gsi: u32, asserted: bool) -> Vec<Message> {
        let pin = gsi as usize;
        let Some(&e) = self.rte.get(pin) else {
            return Vec::new();
        };
        let was = self.lines & (1 << pin) != 0;
        if asserted {
            self.lines |= 1 << pin;
        } else {
            self.lines &= !(1 << pin);
        }
        if is_level(e) {
            return self.level_check(pin);
        }
        if asserted && !was && e & RTE_MASKED == 0 {
            return self.send(pin).into_iter().collect();
        }
        Vec::new()
    }

    /// A local APIC ended `vector`: clears Remote IRR of the level-triggered
    /// entries with that vector and sends again for those whose line is still
    /// asserted.
    pub fn eoi(&mut self, vector: u8) -> Vec<Message> {
        let mut out = Vec::new();
        for pin in 0..PINS {
            let Some(e) = self.rte.get_mut(pin) else {
                continue;
            };
            if *e as u8 == vector && *e & RTE_REMOTE_IRR != 0 {
                *e &= !RTE_REMOTE_IRR;
                out.extend(self.level_check(pin));
            }
        }
        out
    }

    /// Sends a level-triggered entry if it is unmasked, asserted and not
    /// waiting for an EOI.
    fn level_check(&mut self, pin: usize) -> Vec<Message> {
        let Some(&e) = self.rte.get(pin) else {
            return Vec::new();
        };
        if is_level(e) && self.lines & (1 << pin) != 0 && e & (RTE_MASKED | RTE_REMOTE_IRR) == 0 {
            return self.send(pin).into_iter().collect();
        }
        Vec::new()
    }

    /// The message for entry `pin`; sets Remote IRR for level-triggered ones.
    /// Reserved delivery modes (011b, 110b) send nothing.
    fn send(&mut self, pin: usize) -> Option<Message> {
        let e = *self.rte.get(pin)?;
        let mode = match DeliveryMode::from_bits((e >> 8) as u32)? {
            DeliveryMode::Startup => return None,
            m => m,
        };
        let level_triggered = is_level(e);
        if level_triggered {
            if let Some(entry) = self.rte.get_mut(pin) {
                *entry |= RTE_REMOTE_IRR;
            }
        }
        Some(Message::ioapic(
            e as u8,
            (e >> 56) as u8,
            e & (1 << 11) != 0,
            mode,
            level_triggered,
        ))
    }
}

/// Whether an entry behaves as level-triggered: SMI, NMI, INIT and ExtINT
/// are always edge-triggered (82093AA datasheet 3.2.4).
fn is_level(e: u64) -> bool {
    e & RTE_LEVEL != 0 && (e >> 8) & 7 <= 1
}

// Power-on keeps the APIC ID (set by the platform) and the input lines
// (driven from outside).
/// The page at [`BASE`]: accesses wider than 4 bytes act on the low 4.
impl crate::MmioDevice for IoApic {
    fn mmio_read(&mut self, offset: u64, size: u8, _now: u64) -> Effects {
        let off = (offset & 0xFFF) as u32;
        Effects::read(u64::from(self.read_mmio(off, size.min(4))))
    }

    fn mmio_write(&mut self, offset: u64, size: u8, value: u64, _now: u64) -> Effects {
        let off = (offset & 0xFFF) as u32;
        Effects {
            messages: self.write_mmio(off, size.min(4), value as u32),
            ..Effects::none()
        }
    }
}

crate::state::plain_state!(IoApic, 1, |me| {
    let mut fresh = me.clone();
    fresh.reset();
    fresh
});

impl crate::state::Check for IoApic {
    fn check(&self) -> Result<(), crate::state::StateError> {
        use crate::state::ensure;
        ensure(self.id <= 0xF, "I/O APIC ID")?;
        ensure(self.lines >> PINS == 0, "I/O APIC input lines")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_rte(io: &mut IoApic, pin: u8, v: u64) -> Vec<Message> {
        assert!(io.write_mmio(0, 4, u32::from(0x11 + 2 * pin)).is_empty());
        assert!(io.write_mmio(0x10, 4, (v >> 32) as u32).is_empty());
        let _ = io.write_mmio(0, 4, u32::from(0x10 + 2 * pin));
        io.write_mmio(0x10, 4, v as u32)
    }

    fn read_reg(io: &mut IoApic, index: u8) -> u32 {
        let _ = io.write_mmio(0, 1, u32::from(index));
        io.read_mmio(0x10, 4)
    }

    fn fixed(vector: u8, dest: u8, level: bool) -> Message {
        Message::ioapic(vector, dest, false, DeliveryMode::Fixed, level)
    }

    #[test]
    fn id_version_arbitration() {
        let mut io = IoApic::new(2);
        assert_eq!(read_reg(&mut io, 0), 0x0200_0000);
        assert_eq!(read_reg(&mut io, 1), 0x0017_0011);
        assert_eq!(read_reg(&mut io, 2), 0x0200_0000);
        let _ = io.write_mmio(0x10, 4, 0xFFFF_FFFF);
        let _ = io.write_mmio(0, 1, 0);
        let _ = io.write_mmio(0x10, 4, 0x0500_0000);
        assert_eq!(io.id(), 5);
        assert_eq!(read_reg(&mut io, 0), 0x0500_0000);
        // Version is read-only.
        let _ = io.write_mmio(0, 1, 1);
        let _ = io.write_mmio(0x10, 4, 0);
        assert_eq!(io.read_mmio(0x10, 4), VERSION);
        // IOREGSEL reads back; bytes of IOWIN; unknown registers and offsets.
        assert_eq!(io.read_mmio(0, 1), 1);
        assert_eq!(io.read_mmio(0x12, 1), 0x17);
        assert_eq!(io.read_mmio(0x10, 2), 0x0011);
        assert_eq!(read_reg(&mut io, 0x40), 0);
        assert_eq!(read_reg(&mut io, 0x03), 0);
        assert_eq!(io.read_mmio(0x20, 4), 0);
    }

    #[test]
    fn redirection_entries_reset_masked_and_keep_writable_bits() {
        let mut io = IoApic::new(0);
        for pin in 0..PINS {
            assert_eq!(io.entry(pin), Some(RTE_MASKED));
        }
        assert_eq!(io.entry(PINS), None);
        assert_eq!(read_reg(&mut io, 0x10 + 46), RTE_MASKED as u32);
        let _ = write_rte(&mut io, 23, 0xFFFF_FFFF_FFFF_FFFF);
        // Delivery status (12) and Remote IRR (14) are read-only.
        assert_eq!(io.entry(23), Some(0xFF00_0000_0001_AFFF));
        assert_eq!(read_reg(&mut io, 0x10 + 47), 0xFF00_0000);
        // A byte write changes just that byte.
        let _ = io.write_mmio(0, 1, 0x10 + 46);
        let _ = io.write_mmio(0x10, 1, 0x42);
        assert_eq!(io.entry(23), Some(0xFF00_0000_0001_AF42));
        io.reset();
        assert_eq!(io.entry(23), Some(RTE_MASKED));
    }

    #[test]
    fn edge_triggered_delivers_on_rising_edge() {
        let mut io = IoApic::new(0);
        assert!(write_rte(&mut io, 4, (3u64 << 56) | 0x24).is_empty());
        assert_eq!(io.set_irq(4, true), [fixed(0x24, 3, false)]);
        assert!(io.set_irq(4, true).is_empty(), "no edge while held");
        assert!(io.set_irq(4, false).is_empty());
        assert_eq!(io.set_irq(4, true), [fixed(0x24, 3, false)]);
        // Edge entries never wait for an EOI.
        assert!(io.eoi(0x24).is_empty());
        assert_eq!(io.entry(4).unwrap() & RTE_REMOTE_IRR, 0);
    }

    #[test]
    fn level_triggered_waits_for_eoi() {
        let mut io = IoApic::new(0);
        let _ = write_rte(&mut io, 9, (1u64 << 56) | RTE_LEVEL | 0x39);
        assert_eq!(io.set_irq(9, true), [fixed(0x39, 1, true)]);
        assert_ne!(io.entry(9).unwrap() & RTE_REMOTE_IRR, 0);
        assert!(io.set_irq(9, true).is_empty(), "Remote IRR set");
        // Another vector's EOI does nothing.
        assert!(io.eoi(0x38).is_empty());
        // Still asserted at EOI: sent again.
        assert_eq!(io.eoi(0x39), [fixed(0x39, 1, true)]);
        // Deasserted before the EOI: Remote IRR clears, nothing sent.
        assert!(io.set_irq(9, false).is_empty());
        assert!(io.eoi(0x39).is_empty());
        assert_eq!(io.entry(9).unwrap() & RTE_REMOTE_IRR, 0);
        assert_eq!(io.set_irq(9, true), [fixed(0x39, 1, true)]);
    }

    #[test]
    fn masked_entries_never_deliver() {
        let mut io = IoApic::new(0);
        let _ = write_rte(&mut io, 1, RTE_MASKED | 0x31);
        let _ = write_rte(&mut io, 2, RTE_MASKED | RTE_LEVEL | 0x32);
        assert!(io.set_irq(1, true).is_empty());
        assert!(io.set_irq(2, true).is_empty());
        assert!(io.eoi(0x32).is_empty());
        // Unmasking: the edge was lost, the asserted level line sends now.
        assert!(write_rte(&mut io, 1, 0x31).is_empty());
        assert_eq!(
            write_rte(&mut io, 2, RTE_LEVEL | 0x32),
            [fixed(0x32, 0, true)]
        );
    }

    #[test]
    fn nmi_and_extint_are_edge_even_if_level_is_set() {
        let mut io = IoApic::new(0);
        let _ = write_rte(
            &mut io,
            5,
            RTE_LEVEL | (4 << 8) | (1 << 11) | (0x0Fu64 << 56),
        );
        let nmi = Message::ioapic(0, 0x0F, true, DeliveryMode::Nmi, false);
        assert_eq!(io.set_irq(5, true), [nmi]);
        assert!(io.set_irq(5, true).is_empty());
        assert_eq!(io.entry(5).unwrap() & RTE_REMOTE_IRR, 0);
        let _ = write_rte(&mut io, 0, 7 << 8);
        assert_eq!(io.set_irq(0, true)[0].delivery, DeliveryMode::ExtInt);
        // Reserved delivery modes send nothing.
        let _ = write_rte(&mut io, 6, (3 << 8) | 0x40);
        let _ = write_rte(&mut io, 7, (6 << 8) | 0x40);
        assert!(io.set_irq(6, true).is_empty());
        assert!(io.set_irq(7, true).is_empty());
    }

    #[test]
    fn eoi_clears_every_matching_entry() {
        let mut io = IoApic::new(0);
        let _ = write_rte(&mut io, 10, RTE_LEVEL | 0x50);
        let _ = write_rte(&mut io, 11, RTE_LEVEL | 0x50);
        assert_eq!(io.set_irq(10, true).len(), 1);
        assert_eq!(io.set_irq(11, true).len(), 1);
        let _ = io.set_irq(10, false);
        assert_eq!(io.eoi(0x50), [fixed(0x50, 0, true)]);
        assert_eq!(io.entry(10).unwrap() & RTE_REMOTE_IRR, 0);
        assert_ne!(io.entry(11).unwrap() & RTE_REMOTE_IRR, 0);
    }

    #[test]
    fn switching_to_edge_drops_remote_irr() {
        let mut io = IoApic::new(0);
        let _ = write_rte(&mut io, 3, RTE_LEVEL | 0x33);
        assert_eq!(io.set_irq(3, true).len(), 1);
        let _ = write_rte(&mut io, 3, 0x33);
        assert_eq!(io.entry(3).unwrap() & RTE_REMOTE_IRR, 0);
    }

    #[test]
    fn out_of_range_lines_are_ignored() {
        let mut io = IoApic::new(0);
        assert!(io.set_irq(24, true).is_empty());
        assert!(io.set_irq(u32::MAX, true).is_empty());
    }

    #[test]
    fn logical_lowest_priority_message() {
        let mut io = IoApic::new(0);
        let _ = write_rte(&mut io, 12, (0x0Fu64 << 56) | (1 << 11) | (1 << 8) | 0x61);
        assert_eq!(
            io.set_irq(12, true),
            [Message::ioapic(
                0x61,
                0x0F,
                true,
                DeliveryMode::LowestPriority,
                false
            )]
        );
    }
}
