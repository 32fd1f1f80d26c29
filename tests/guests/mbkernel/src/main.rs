//! A Multiboot (version 1) kernel: the whole guest is 32-bit assembly in `boot.s`.
//!
//! xtask turns the linked ELF into the flat image `mbkernel.bin` (file offset 0 = guest-physical
//! 1 MiB). Its Multiboot header, at the very start, sets flag 16 (the a.out kludge), so a loader
//! takes the load and entry addresses from the header and never looks at the ELF64 container;
//! GRUB and QEMU's `-kernel` boot the same file.
//!
//! It checks EAX = 0x2BADB002, reads the information structure EBX points to (memory sizes,
//! command line, memory map, boot loader name), prints what it found on COM1 and ends through
//! the debug-exit port 0xF4: 0 when every check passed, 1 otherwise.
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
