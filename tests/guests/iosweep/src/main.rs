//! Hostile guest: IN and OUT at every port 0..=0xFFFF at widths 1, 2 and 4.
//! Each OUT writes back what the IN at that port and width returned. Writes
//! that could end or reset this guest (console, debug exit, PCI, PIC, PIT,
//! keyboard controller, RTC, reset registers, ACPI PM block) are skipped.
//! Reads of unclaimed ports give all-ones, but claimed ones may give anything,
//! so the all-ones reads are only counted. Exits 0 (PASS) when done, 3 on a bad command line.
//!
//! Command line: `skip=<hex>-<hex>` leaves out a port range entirely (for
//! platforms where some device can't take every access width).
#![no_std]
#![no_main]

use core::ops::RangeInclusive;
use guest_rt::io::{inb, inl, inw, outb, outl, outw};
use guest_rt::{cmdline, println};

guest_rt::entry!(main);

/// Ports no OUT may touch (any byte of the access).
const NO_WRITE: [RangeInclusive<u32>; 12] = [
    0x20..=0x21,   // master PIC
    0x40..=0x43,   // PIT
    0x60..=0x60,   // keyboard controller data
    0x64..=0x64,   // keyboard controller command (reset pulse)
    0x70..=0x71,   // RTC / CMOS, NMI mask
    0x92..=0x92,   // system control port A (fast reset)
    0xA0..=0xA1,   // slave PIC
    0xF4..=0xF4,   // debug exit
    0x3F8..=0x3FF, // console UART
    0x600..=0x63F, // ACPI PM block (sleep/power off)
    0xCF8..=0xCFF, // PCI configuration, reset control 0xCF9
    // Where firmware puts the PIIX4 ACPI PM block on QEMU (smoke tests).
    0xB000..=0xB03F,
];

fn write_allowed(port: u16, width: u32) -> bool {
    let first = u32::from(port);
    let last = first + width - 1;
    !NO_WRITE
        .iter()
        .any(|r| first <= *r.end() && last >= *r.start())
}

/// Parses `<hex>-<hex>`.
fn parse_range(arg: &str) -> Option<RangeInclusive<u32>> {
    let (a, b) = arg.split_once('-')?;
    let (a, b) = (cmdline::parse_hex(a)?, cmdline::parse_hex(b)?);
    Some(u32::try_from(a).ok()?..=u32::try_from(b).ok()?)
}

fn main(cmd: &'static str, _ram_size: u64) -> i32 {
    let skip = match cmdline::get(cmd, "skip").map(parse_range) {
        None => None,
        Some(Some(r)) => Some(r),
        Some(None) => {
            println!("iosweep: FAIL bad skip= argument");
            return 3;
        }
    };
    println!("iosweep: sweeping 65536 ports at widths 1, 2, 4");
    let mut all_ones = 0u32;
    let mut reads = 0u32;
    let mut writes = 0u32;
    for port in 0..=u16::MAX {
        if skip.as_ref().is_some_and(|r| r.contains(&u32::from(port))) {
            continue;
        }
        let b = inb(port);
        let w = inw(port);
        let l = inl(port);
        reads += 3;
        if b == u8::MAX && w == u16::MAX && l == u32::MAX {
            all_ones += 1;
        }
        if write_allowed(port, 1) {
            outb(port, b);
            writes += 1;
        }
        if write_allowed(port, 2) {
            outw(port, w);
            writes += 1;
        }
        if write_allowed(port, 4) {
            outl(port, l);
            writes += 1;
        }
    }
    println!("iosweep: {} reads, {} writes", reads, writes);
    println!("iosweep: {} ports read all-ones", all_ones);
    println!("iosweep: PASS");
    0
}
