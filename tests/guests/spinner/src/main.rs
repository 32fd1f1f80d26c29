//! CPU-bound worker for the fairness benchmark: repeats a fixed unit of work
//! (an LCG run 10 000 times) until `cycles` TSC ticks have passed since
//! entry, then prints how many units it finished. The loop causes no VM
//! exits of its own (RDTSC does not exit under ferrovisor).
//!
//! With `aps=1` the guest (given 2 vCPUs) also starts its second vCPU
//! (INIT-SIPI-SIPI), which does the same work until the same TSC; the line
//! then gives both vCPUs' units together, the VM's share of the CPUs.
//!
//! Command line: `cycles=<n>` (decimal, or hex with 0x; default 20 000 000),
//! `aps=0|1`. Exits 0, or 3 on a bad command line.
#![no_std]
#![no_main]

use core::hint::black_box;
use core::sync::atomic::{AtomicU64, Ordering};
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

/// Units until `START + CYCLES`.
fn spin_until(start: u64, cycles: u64) -> u64 {
    let mut units: u64 = 0;
    let mut x = start;
    while rdtsc().wrapping_sub(start) < cycles {
        x = unit(x);
        units += 1;
    }
    black_box(x);
    units
}

static START: AtomicU64 = AtomicU64::new(0);
static CYCLES: AtomicU64 = AtomicU64::new(0);
/// The AP's units plus one, once it has finished (0 before).
static AP_UNITS: AtomicU64 = AtomicU64::new(0);

#[repr(C, align(16))]
struct Stack([u8; 16384]);
static mut AP_STACK: Stack = Stack([0; 16384]);

extern "C" fn ap_main() -> ! {
    let units = spin_until(
        START.load(Ordering::Acquire),
        CYCLES.load(Ordering::Acquire),
    );
    AP_UNITS.store(units + 1, Ordering::Release);
    guest_rt::halt_forever()
}

fn main(cmd: &'static str, _ram_size: u64) -> i32 {
    let start = rdtsc();
    let (Some(cycles), Some(aps)) = (
        cmdline::number(cmd, "cycles", DEFAULT_CYCLES),
        cmdline::number(cmd, "aps", 0),
    ) else {
        println!("spinner: FAIL bad cycles= or aps= argument");
        return 3;
    };
    START.store(start, Ordering::Release);
    CYCLES.store(cycles, Ordering::Release);
    if aps > 0 {
        let top = (&raw const AP_STACK) as u64 + core::mem::size_of::<Stack>() as u64;
        // SAFETY: the trampoline page is unused low RAM; the stack is the
        // AP's alone; `ap_main` never returns.
        unsafe { guest_rt::smp::start_ap(1, ap_main, top) };
    }
    let mut units = spin_until(start, cycles);
    if aps > 0 {
        // The AP stops at the same TSC; give it as long again at most.
        let wait = rdtsc();
        while AP_UNITS.load(Ordering::Acquire) == 0 && rdtsc().wrapping_sub(wait) < cycles {
            core::hint::spin_loop();
        }
        match AP_UNITS.load(Ordering::Acquire) {
            0 => println!("spinner: the second vCPU did not finish"),
            n => units += n - 1,
        }
    }
    println!("spinner: units={}", units);
    0
}
