//! Prints `ticker: tick N` every `interval` TSC ticks, up to `ticks` lines, then exits 0:
//! a guest whose output shows at a glance whether it runs (the management console's pause,
//! resume, restart and stop are checked against it).
//!
//! Command line: `interval=<n>` (default 10 000 000), `ticks=<n>` (default 1000).
#![no_std]
#![no_main]

use guest_rt::cpu::rdtsc;
use guest_rt::{cmdline, println};

guest_rt::entry!(main);

fn main(cmd: &'static str, _ram_size: u64) -> i32 {
    let (Some(interval), Some(ticks)) = (
        cmdline::number(cmd, "interval", 10_000_000),
        cmdline::number(cmd, "ticks", 1000),
    ) else {
        println!("ticker: bad command line `{cmd}`");
        return 3;
    };
    let mut next = rdtsc().wrapping_add(interval);
    for n in 1..=ticks {
        while (rdtsc().wrapping_sub(next) as i64) < 0 {
            core::hint::spin_loop();
        }
        next = next.wrapping_add(interval);
        println!("ticker: tick {n}");
    }
    println!("ticker: done");
    0
}
