//! The architectural state a guest starts in, per entry mode, and the
//! structures in guest RAM that mode needs (GDT, identity page tables).
use super::e820::GuestRam;

pub const PML4_GPA: u64 = 0x1000;
pub const PDPT_GPA: u64 = 0x2000;
pub const PD_GPA: u64 = 0x3000; // four PDs: 0x3000..0x7000
pub const GDT_GPA: u64 = 0x7000;
pub const CMDLINE_GPA: u64 = 0x8000;
pub const INITIAL_RSP: u64 = 0x8_0000;

/// Guest GDT: null, 64-bit code, data, 32-bit code.
pub const GDT: [u64; 4] = [
    0,
    0x00AF_9B00_0000_FFFF,
    0x00CF_9300_0000_FFFF,
    0x00CF_9B00_0000_FFFF,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Real16,
    Prot32,
    Long64,
}

/// One segment register as the VMCS holds it.
#[derive(Clone, Copy, Debug)]
pub struct Seg {
    pub sel: u16,
    pub base: u64,
    pub limit: u32,
    pub ar: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct EntryState {
    pub mode: Mode,
    pub rip: u64,
    pub rsp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbx: u64,
    pub rax: u64,
    /// RDX: 0 from the loaders; the processor signature after INIT-SIPI.
    pub rdx: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cs: Seg,
    pub ds: Seg,
    pub gdt_base: u64,
    pub gdt_limit: u32,
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;

fn put_u64(mem: &impl GuestRam, gpa: u64, v: u64) {
    let _ = mem.write(gpa, &v.to_le_bytes());
}

/// Writes `entries` as consecutive little-endian u64s from `gpa`.
fn put_table(mem: &impl GuestRam, gpa: u64, entries: &[u64]) {
    for (d, at) in entries.iter().zip((gpa..).step_by(8)) {
        put_u64(mem, at, *d);
    }
}

/// GDTR limits of the loader's 4-entry GDTs.
const GDT_LIMIT: u32 = (GDT.len() * 8 - 1) as u32;
const GDT64_LIMIT: u32 = (super::bzimage::GDT64.len() * 8 - 1) as u32;
const GDT32_LIMIT: u32 = (super::bzimage::GDT32.len() * 8 - 1) as u32;

fn write_gdt(mem: &impl GuestRam) {
    put_table(mem, GDT_GPA, &GDT);
}

fn write_cmdline(mem: &impl GuestRam, cmdline: &str) {
    let _ = mem.write(CMDLINE_GPA, cmdline.as_bytes());
    let _ = mem.write(CMDLINE_GPA.saturating_add(cmdline.len() as u64), &[0]);
}

/// 64-bit long mode with an identity map of the low 4 GiB (2 MiB pages).
pub fn long64(mem: &impl GuestRam, entry: u64, cmdline: &str) -> EntryState {
    put_u64(mem, PML4_GPA, PDPT_GPA | 3);
    // Four page directories after PD_GPA, each mapping 1 GiB.
    let dirs = (PD_GPA..).step_by(0x1000).zip((PDPT_GPA..).step_by(8));
    for (g, (pd, pdpte)) in (0..4u64).zip(dirs) {
        put_u64(mem, pdpte, pd | 3);
        for (i, pde) in (0..512u64).zip((pd..).step_by(8)) {
            put_u64(mem, pde, (g << 30) | (i << 21) | 0x83);
        }
    }
    write_gdt(mem);
    write_cmdline(mem, cmdline);
    EntryState {
        mode: Mode::Long64,
        rip: entry,
        rsp: INITIAL_RSP,
        rdi: CMDLINE_GPA,
        rsi: mem.size(),
        rbx: 0,
        rax: 0,
        rdx: 0,
        cr0: CR0_PE | CR0_ET | CR0_NE | CR0_PG,
        cr3: PML4_GPA,
        cr4: 1 << 5,                // PAE
        efer: (1 << 8) | (1 << 10), // LME | LMA
        cs: Seg {
            sel: 0x08,
            base: 0,
            limit: 0xFFFF_FFFF,
            ar: 0xA09B,
        },
        ds: Seg {
            sel: 0x10,
            base: 0,
            limit: 0xFFFF_FFFF,
            ar: 0xC093,
        },
        gdt_base: GDT_GPA,
        gdt_limit: GDT_LIMIT,
    }
}

/// 32-bit protected mode, flat segments, paging off.
pub fn prot32(mem: &impl GuestRam, entry: u64, cmdline: &str) -> EntryState {
    write_gdt(mem);
    write_cmdline(mem, cmdline);
    prot32_state(mem.size(), entry, GDT_GPA)
}

/// The state of [`prot32`] with [`GDT`] already at `gdt_gpa`; writes
/// nothing (for loaders that place their own structures, e.g. Multiboot).
pub fn prot32_state(ram: u64, entry: u64, gdt_gpa: u64) -> EntryState {
    EntryState {
        mode: Mode::Prot32,
        rip: entry,
        rsp: INITIAL_RSP,
        rdi: CMDLINE_GPA,
        rsi: ram.min(u64::from(u32::MAX)),
        rbx: 0,
        rax: 0,
        rdx: 0,
        cr0: CR0_PE | CR0_ET | CR0_NE,
        cr3: 0,
        cr4: 0,
        efer: 0,
        cs: Seg {
            sel: 0x18,
            base: 0,
            limit: 0xFFFF_FFFF,
            ar: 0xC09B,
        },
        ds: Seg {
            sel: 0x10,
            base: 0,
            limit: 0xFFFF_FFFF,
            ar: 0xC093,
        },
        gdt_base: gdt_gpa,
        gdt_limit: GDT_LIMIT,
    }
}

/// 16-bit real mode: CS:IP reaches `entry`; other segments 0.
pub fn real16(entry: u64) -> EntryState {
    let cs_base = entry & 0xF_0000;
    EntryState {
        mode: Mode::Real16,
        // entry - cs_base: clears the bits cs_base holds.
        rip: entry & !0xF_0000,
        rsp: 0x7000,
        rdi: 0,
        rsi: 0,
        rbx: 0,
        rax: 0,
        rdx: 0,
        cr0: CR0_ET | CR0_NE,
        cr3: 0,
        cr4: 0,
        efer: 0,
        cs: Seg {
            sel: (cs_base >> 4) as u16,
            base: cs_base,
            limit: 0xFFFF,
            ar: 0x9B,
        },
        ds: Seg {
            sel: 0,
            base: 0,
            limit: 0xFFFF,
            ar: 0x93,
        },
        gdt_base: 0,
        gdt_limit: 0xFFFF,
    }
}

/// Linux's 64-bit boot protocol: long mode, identity map, `__BOOT_CS` = 0x10
/// and `__BOOT_DS` = 0x18, RSI = the zero page (boot.rst "64-bit BOOT PROTOCOL").
pub fn linux64(mem: &impl GuestRam, entry: u64, boot_params: u64) -> EntryState {
    let mut st = long64(mem, entry, "");
    put_table(mem, GDT_GPA, &super::bzimage::GDT64);
    st.cs = Seg {
        sel: super::bzimage::BOOT_CS,
        base: 0,
        limit: 0xFFFF_FFFF,
        ar: 0xA09B,
    };
    st.ds = Seg {
        sel: super::bzimage::BOOT_DS,
        base: 0,
        limit: 0xFFFF_FFFF,
        ar: 0xC093,
    };
    st.gdt_limit = GDT64_LIMIT;
    st.rsi = boot_params;
    st.rdi = 0;
    st
}

/// Linux's 32-bit boot protocol (boot.rst "32-bit BOOT PROTOCOL"):
/// protected mode, paging off, a GDT with flat 4 GiB `__BOOT_CS` = 0x10
/// (execute/read) and `__BOOT_DS` = 0x18 (read/write), CS = `__BOOT_CS`,
/// DS/ES/SS = `__BOOT_DS`, interrupts off, ESI = the zero page, EBP, EDI
/// and EBX zero; entered at code32_start (the load address).
pub fn linux32(mem: &impl GuestRam, entry: u64, boot_params: u64) -> EntryState {
    put_table(mem, GDT_GPA, &super::bzimage::GDT32);
    let mut st = prot32_state(mem.size(), entry, GDT_GPA);
    st.cs = Seg {
        sel: super::bzimage::BOOT_CS,
        base: 0,
        limit: 0xFFFF_FFFF,
        ar: 0xC09B,
    };
    st.ds = Seg {
        sel: super::bzimage::BOOT_DS,
        base: 0,
        limit: 0xFFFF_FFFF,
        ar: 0xC093,
    };
    st.gdt_limit = GDT32_LIMIT;
    st.rsi = boot_params;
    st.rdi = 0;
    st.rbx = 0;
    st.rax = 0;
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_mode_entry_splits_cs_ip() {
        let s = real16(0x7C00);
        assert_eq!((s.cs.sel, s.cs.base, s.rip), (0, 0, 0x7C00));
        let s = real16(0x9_1234);
        assert_eq!((s.cs.sel, s.cs.base, s.rip), (0x9000, 0x9_0000, 0x1234));
    }
}
