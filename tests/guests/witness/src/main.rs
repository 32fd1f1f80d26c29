//! Well-behaved guest that runs beside hostile ones: plants the foreign-data
//! marker in its free RAM, ticks five times and exits 0.
#![no_std]
#![no_main]

use guest_rt::{image, marker, println};

guest_rt::entry!(main);

const LOW_START: u64 = 0x10000;
/// Busy-loop iterations between ticks (a few million instructions).
const SPIN: u64 = 1_000_000;

fn main(_cmdline: &'static str, ram_size: u64) -> i32 {
    let ram_end = image::ram_end(ram_size);
    // SAFETY: free RAM below and above the image that nothing here uses.
    unsafe {
        marker::plant(LOW_START, image::image_start().min(ram_end));
        marker::plant(image::image_end(), ram_end);
    }
    for n in 1..=5 {
        let mut i = 0;
        while i < SPIN {
            i = core::hint::black_box(i) + 1;
        }
        println!("witness: tick {}", n);
    }
    println!("witness: done");
    0
}
