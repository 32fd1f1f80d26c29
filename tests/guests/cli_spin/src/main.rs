//! Hostile guest: disables interrupts and spins forever without a single VM
//! exit of its own. Never finishes; the hypervisor's watchdog must stop it as
//! hung (after about 10 s of guest TSC time).
#![no_std]
#![no_main]

use core::arch::asm;
use guest_rt::println;

guest_rt::entry!(main);

fn main(_cmdline: &'static str, _ram_size: u64) -> i32 {
    println!("cli_spin: spinning");
    // SAFETY: CLI and a jump to itself: touches no memory, never returns.
    // Deliberately no PAUSE, which may cause an exit of its own.
    unsafe { asm!("cli", "2:", "jmp 2b", options(noreturn, nomem, nostack)) }
}
