//! CPU-bound worker for the fairness benchmark: repeats a fixed unit of work
//! (an LCG run 10 000 times) until `cycles` TSC ticks have passed since
//! entry, then prints how many units it finished. The loop causes no VM
//! exits of its own (RDTSC does not exit under ferrovisor).
//!
//! Command line: `cycles=<n>` (decimal, or hex with 0x; default 20 000 000).
//! Exits 0, or 3 on a bad command line.
#![no_std]
#![no_main]

use core::hint::black_box;
use guest_rt::cpu::rdtsc;
use guest_rt::{cmdline, println};

guest_rt::entry!(main);

const DEFAULT_CYCLES: u64 = 20_000_000;
const STEPS_PER_UNIT: u32 = 10_000;

/// One unit of work: `STEPS_PER_UNIT` steps of a 64-bit LCG.
fn unit(mut x: u64) -> u64 {
    for _ in 0..STEPS_PER_UNIT {
        x = black_box(x)
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
    }
    x
}

fn main(cmd: &'static str, _ram_size: u64) -> i32 {
    let start = rdtsc();
    let Some(cycles) = cmdline::number(cmd, "cycles", DEFAULT_CYCLES) else {
        println!("spinner: FAIL bad cycles= argument");
        return 3;
    };
    let mut units: u64 = 0;
    let mut x = start;
    while rdtsc().wrapping_sub(start) < cycles {
        x = unit(x);
        units += 1;
    }
    black_box(x);
    println!("spinner: units={}", units);
    0
}
