//! Hostile guest: halts with interrupts disabled, which nothing can end. The
//! hypervisor must stop it as hung.
#![no_std]
#![no_main]

use guest_rt::{halt_forever, println};

guest_rt::entry!(main);

fn main(_cmdline: &'static str, _ram_size: u64) -> i32 {
    println!("hlt_cli: halting");
    // `cli; hlt` in a loop.
    halt_forever()
}
