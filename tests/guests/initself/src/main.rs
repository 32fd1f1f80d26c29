//! Liveness conformance guest: sends INIT to itself through the local APIC
//! (`mode=self`: destination = its own APIC ID; `mode=all`: the "all
//! including self" shorthand). INIT puts a vCPU into the wait-for-SIPI state
//! (SDM Vol. 3A 11.6.1, 9.4.4); with no other vCPU to send a SIPI, nothing
//! can ever run again, and the hypervisor must end the guest rather than
//! keep it forever. Never exits by itself.
#![no_std]
#![no_main]

use guest_rt::{cmdline, println};

guest_rt::entry!(main);

const APIC: u64 = 0xFEE0_0000;
/// Delivery mode INIT (101b), level assert.
const ICR_INIT: u32 = (0b101 << 8) | (1 << 14);
/// Destination shorthand "all including self".
const ALL_INCLUDING_SELF: u32 = 0b10 << 18;

fn main(cmd: &'static str, _ram_size: u64) -> i32 {
    let all = cmdline::get(cmd, "mode") == Some("all");
    // SAFETY: the local APIC page is mapped; ICR writes send an INIT IPI.
    unsafe {
        let id = ((APIC + 0x20) as *const u32).read_volatile() & 0xFF00_0000;
        ((APIC + 0x310) as *mut u32).write_volatile(id);
        println!(
            "initself: sending INIT ({})",
            if all { "all including self" } else { "self" }
        );
        let low = if all {
            ICR_INIT | ALL_INCLUDING_SELF
        } else {
            ICR_INIT
        };
        ((APIC + 0x300) as *mut u32).write_volatile(low);
    }
    loop {
        core::hint::spin_loop();
    }
}
