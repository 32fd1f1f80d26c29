//! Prints a greeting and its command line, exits 0.
#![no_std]
#![no_main]

use guest_rt::println;

guest_rt::entry!(main);

fn main(cmdline: &'static str, _ram_size: u64) -> i32 {
    println!("hello from a ferrovisor guest");
    println!("cmdline: {}", cmdline);
    0
}
