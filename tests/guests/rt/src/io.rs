//! Port I/O. In a guest, port accesses only reach the hypervisor's device
//! models and cannot touch guest memory, so these functions are safe.

use core::arch::asm;

/// 8-bit OUT.
#[inline]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no effect on memory the compiler knows about.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
    }
}

/// 16-bit OUT.
#[inline]
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags));
    }
}

/// 32-bit OUT.
#[inline]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags));
    }
}

/// 8-bit IN.
#[inline]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags));
    }
    value
}

/// 16-bit IN.
#[inline]
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack, preserves_flags));
    }
    value
}

/// 32-bit IN.
#[inline]
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags));
    }
    value
}
