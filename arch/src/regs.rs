//! Control registers, segment registers, descriptor-table registers and port I/O.
use core::arch::asm;

pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const EM: u64 = 1 << 2;
    pub const TS: u64 = 1 << 3;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
}

pub mod cr4 {
    pub const VME: u64 = 1 << 0;
    pub const PSE: u64 = 1 << 4;
    pub const PAE: u64 = 1 << 5;
    pub const PGE: u64 = 1 << 7;
    pub const OSFXSR: u64 = 1 << 9;
    pub const OSXMMEXCPT: u64 = 1 << 10;
    pub const VMXE: u64 = 1 << 13;
    pub const SMXE: u64 = 1 << 14;
    pub const FSGSBASE: u64 = 1 << 16;
    pub const PCIDE: u64 = 1 << 17;
    pub const OSXSAVE: u64 = 1 << 18;
    pub const SMEP: u64 = 1 << 20;
    pub const SMAP: u64 = 1 << 21;
    pub const PKE: u64 = 1 << 22;
}

macro_rules! cr_rw {
    ($read:ident, $write:ident, $reg:literal) => {
        #[inline]
        pub fn $read() -> u64 {
            let v: u64;
            // SAFETY: reading a control register has no side effects in ring 0.
            unsafe { asm!(concat!("mov {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
        /// # Safety
        /// The value must keep the CPU in a consistent mode (paging, protection).
        #[inline]
        pub unsafe fn $write(v: u64) {
            // SAFETY: the caller guarantees the value is valid.
            unsafe { asm!(concat!("mov ", $reg, ", {}"), in(reg) v, options(nostack, preserves_flags)) };
        }
    };
}
cr_rw!(read_cr0, write_cr0, "cr0");
cr_rw!(read_cr2, write_cr2, "cr2");
cr_rw!(read_cr3, write_cr3, "cr3");
cr_rw!(read_cr4, write_cr4, "cr4");
// Debug registers: the host uses none of them; they hold the running guest's values.
cr_rw!(read_dr0, write_dr0, "dr0");
cr_rw!(read_dr1, write_dr1, "dr1");
cr_rw!(read_dr2, write_dr2, "dr2");
cr_rw!(read_dr3, write_dr3, "dr3");
cr_rw!(read_dr6, write_dr6, "dr6");

macro_rules! seg_read {
    ($name:ident, $reg:literal) => {
        #[inline]
        pub fn $name() -> u16 {
            let v: u16;
            // SAFETY: reading a segment register has no side effects.
            unsafe { asm!(concat!("mov {0:x}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}
seg_read!(read_cs, "cs");
seg_read!(read_ss, "ss");
seg_read!(read_ds, "ds");
seg_read!(read_es, "es");
seg_read!(read_fs, "fs");
seg_read!(read_gs, "gs");

#[inline]
pub fn read_tr() -> u16 {
    let v: u16;
    // SAFETY: STR has no side effects.
    unsafe { asm!("str {0:x}", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

#[inline]
pub fn read_rflags() -> u64 {
    let v: u64;
    // SAFETY: pushfq/pop only touches the stack slot it pushes.
    unsafe { asm!("pushfq", "pop {}", out(reg) v, options(nomem, preserves_flags)) };
    v
}

/// A descriptor-table register image (for LGDT/LIDT/SGDT/SIDT).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DescriptorTablePointer {
    pub limit: u16,
    pub base: u64,
}

#[inline]
pub fn sgdt() -> DescriptorTablePointer {
    let mut p = DescriptorTablePointer::default();
    // SAFETY: SGDT stores 10 bytes into the provided structure.
    unsafe { asm!("sgdt [{}]", in(reg) &mut p, options(nostack, preserves_flags)) };
    p
}

#[inline]
pub fn sidt() -> DescriptorTablePointer {
    let mut p = DescriptorTablePointer::default();
    // SAFETY: SIDT stores 10 bytes into the provided structure.
    unsafe { asm!("sidt [{}]", in(reg) &mut p, options(nostack, preserves_flags)) };
    p
}

#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC is unprivileged unless CR4.TSD, and has no side effects.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// # Safety
/// Port I/O can have arbitrary device side effects.
#[inline]
pub unsafe fn outb(port: u16, v: u8) {
    // SAFETY: caller guarantees the port write is intended.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

/// # Safety
/// Port I/O can have arbitrary device side effects.
#[inline]
pub unsafe fn outw(port: u16, v: u16) {
    // SAFETY: caller guarantees the port write is intended.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    };
}

/// # Safety
/// Port I/O can have arbitrary device side effects.
#[inline]
pub unsafe fn outl(port: u16, v: u32) {
    // SAFETY: caller guarantees the port write is intended.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    };
}

/// # Safety
/// Port I/O can have arbitrary device side effects.
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: caller guarantees the port read is intended.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// # Safety
/// Port I/O can have arbitrary device side effects.
#[inline]
pub unsafe fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: caller guarantees the port read is intended.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Halts until the next interrupt.
#[inline]
pub fn hlt() {
    // SAFETY: HLT only waits for an interrupt.
    unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
}

/// Disables interrupts and halts forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: masking interrupts and halting cannot break memory safety.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Reads XCR0.
///
/// # Safety
/// CR4.OSXSAVE must be set.
#[inline]
pub unsafe fn xgetbv(index: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: caller guarantees XSAVE is enabled.
    unsafe {
        asm!("xgetbv", in("ecx") index, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes XCR0.
///
/// # Safety
/// CR4.OSXSAVE must be set and the value valid (SDM Vol. 1 13.3).
#[inline]
pub unsafe fn xsetbv(index: u32, v: u64) {
    // SAFETY: caller guarantees the value is valid.
    unsafe {
        asm!("xsetbv", in("ecx") index, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nomem, nostack, preserves_flags))
    };
}
