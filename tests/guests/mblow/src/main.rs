//! `mbkernel` linked at guest-physical 0x8000 (build.rs): a Multiboot image below 64 KiB, as
//! the a.out kludge allows (Multiboot 0.6.96 §3.1.3 sets no floor on load_addr). The image
//! with its 64 KiB stack (BSS) spans 0x8000 to about 0x1B000, over the places a loader likes
//! for its own structures (0x9000, 0x10000); the loader must put the information structure,
//! memory map, strings and boot GDT elsewhere and leave these bytes alone. The same checks as
//! `mbkernel` run (same source), and its `loaded at` line shows the address.
#![no_std]
#![no_main]

core::arch::global_asm!(
    include_str!("../../mbkernel/src/boot.s"),
    options(att_syntax)
);

/// Never reached: there is no Rust code to panic.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
