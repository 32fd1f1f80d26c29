//! Port I/O. In a guest, port accesses only reach the hypervisor's device
//! models and cannot touch guest memory.

use core::arch::asm;

#[inline]
pub(crate) fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no effect on memory the compiler knows about.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
    }
}

#[inline]
pub(crate) fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags));
    }
    value
}
