//! Segment descriptors, the TSS and IDT gates (SDM Vol. 3A 3.4.5, 7.2, 6.14).

/// Selectors of the hypervisor's GDT layout (same on every CPU).
pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const TSS_SEL: u16 = 0x18;
/// Entries: null, code64, data, TSS (two slots).
pub const GDT_ENTRIES: usize = 5;

pub const CODE64: u64 = 0x00AF_9B00_0000_FFFF;
pub const DATA: u64 = 0x00CF_9300_0000_FFFF;

/// The two GDT slots of a 64-bit available TSS descriptor.
pub fn tss_descriptor(base: u64, limit: u32) -> [u64; 2] {
    let mut low = u64::from(limit & 0xFFFF);
    low |= (base & 0xFF_FFFF) << 16;
    low |= 0x89 << 40; // present, type 9 (available 64-bit TSS)
    low |= u64::from((limit >> 16) & 0xF) << 48;
    low |= ((base >> 24) & 0xFF) << 56;
    [low, base >> 32]
}

/// The 64-bit TSS (SDM 7.7).
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Tss {
    _reserved0: u32,
    pub rsp: [u64; 3],
    _reserved1: u64,
    /// IST1..IST7.
    pub ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    pub iomap_base: u16,
}

/// A 64-bit interrupt gate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    _reserved: u32,
}

impl IdtEntry {
    /// A present, DPL 0 interrupt gate to `handler` on `ist` (0 = current stack).
    pub fn interrupt_gate(handler: u64, selector: u16, ist: u8) -> Self {
        Self {
            offset_low: handler as u16,
            selector,
            ist: ist & 7,
            type_attr: 0x8E,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            _reserved: 0,
        }
    }

    pub fn handler(&self) -> u64 {
        u64::from(self.offset_low)
            | (u64::from(self.offset_mid) << 16)
            | (u64::from(self.offset_high) << 32)
    }
}

/// Base address of the descriptor `sel` in a GDT (for VMCS host/guest state).
pub fn descriptor_base(gdt: &[u64], sel: u16) -> u64 {
    let i = usize::from(sel >> 3);
    let Some(&d) = gdt.get(i) else { return 0 };
    let mut base = ((d >> 16) & 0xFF_FFFF) | (((d >> 56) & 0xFF) << 24);
    // System descriptors (S = 0) are 16 bytes in long mode.
    if (d >> 44) & 1 == 0 {
        if let Some(&hi) = gdt.get(i + 1) {
            base |= (hi & 0xFFFF_FFFF) << 32;
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tss_descriptor_round_trips_base() {
        let base = 0x1234_5678_9abc_d000;
        let d = tss_descriptor(base, 0x67);
        let gdt = [0, CODE64, DATA, d[0], d[1]];
        assert_eq!(descriptor_base(&gdt, TSS_SEL), base);
        assert_eq!(d[0] & 0xFFFF, 0x67);
        assert_eq!((d[0] >> 40) & 0xFF, 0x89);
    }

    #[test]
    fn idt_gate_encodes_handler() {
        let e = IdtEntry::interrupt_gate(0xffff_8000_1234_5678, KERNEL_CS, 1);
        assert_eq!(e.handler(), 0xffff_8000_1234_5678);
        assert_eq!(core::mem::size_of::<IdtEntry>(), 16);
        assert_eq!(core::mem::size_of::<Tss>(), 104);
    }
}
