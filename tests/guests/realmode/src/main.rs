//! A legacy 16-bit real-mode guest: the whole guest is the assembly in `boot.s`.
//!
//! xtask turns the linked ELF into the flat image `realmode.bin`, meant to be loaded and entered
//! at 0x7C00 (manifest `kind = "flat"`, `load = 0x7c00`, `mode = "real16"`). The code only uses
//! addresses relative to its own start, with CS = DS = 0x07C0, so the link address (1 MiB, from
//! the guests' shared link.ld) does not matter. The image is also a valid BIOS boot sector
//! (0x55 0xAA at offset 510).
//!
//! It prints a greeting on COM1, checks segment:offset aliasing, a counted loop and a
//! cross-segment `rep movsb`, prints `realmode: PASS` and writes 0 to the debug-exit port 0xF4
//! (1 after a failed check).
#![no_std]
#![no_main]

core::arch::global_asm!(include_str!("boot.s"), options(att_syntax));

/// Never reached: there is no Rust code to panic.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
