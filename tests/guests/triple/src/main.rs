//! Hostile guest: loads an empty IDT and executes UD2. #UD, the #GP for its
//! missing gate and the #DF for that one all find no gate: a triple fault,
//! which the hypervisor must turn into stopping the guest.
#![no_std]
#![no_main]

use core::arch::asm;
use guest_rt::println;

guest_rt::entry!(main);

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

fn main(_cmdline: &'static str, _ram_size: u64) -> i32 {
    println!("triple: faulting");
    let empty = Pointer { limit: 0, base: 0 };
    // SAFETY: deliberately leaves no usable gate and raises #UD: the vCPU
    // shuts down (triple fault) and never comes back here.
    unsafe {
        asm!(
            "lidt [{0}]",
            "ud2",
            in(reg) &raw const empty,
            options(noreturn, readonly, nostack),
        )
    }
}
