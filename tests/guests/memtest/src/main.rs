//! Writes and verifies all RAM the guest does not occupy. Exits 0 on PASS,
//! 1 on the first mismatch.
#![no_std]
#![no_main]

use core::ptr;
use guest_rt::{image, println};

guest_rt::entry!(main);

/// Low RAM below the legacy hole, above the loader's area.
const LOW_START: u64 = 0x10000;
const LOW_END: u64 = 0x9F000;
const PAGE: u64 = 4096;
const KEY: u64 = 0x5AA5_C33C_96E1_0FF0;

/// Word pattern; `invert` gives the complement pass.
fn word(addr: u64, invert: bool) -> u64 {
    let w = addr ^ KEY.rotate_left((addr >> 12) as u32);
    if invert { !w } else { w }
}

fn byte(addr: u64, invert: bool) -> u8 {
    let b = (addr as u8) ^ ((addr >> 8) as u8) ^ 0x3C;
    if invert { !b } else { b }
}

/// Fills `[start, end)` (8-byte aligned) with the word pattern.
fn fill(start: u64, end: u64, invert: bool) {
    let mut a = start;
    while a < end {
        // SAFETY: `a` lies in RAM the guest does not use (see `main`).
        unsafe { ptr::write_volatile(a as *mut u64, word(a, invert)) };
        a += 8;
    }
}

/// Verifies the word pattern in `[start, end)`; the address of the first
/// mismatch is the error.
fn verify(start: u64, end: u64, invert: bool) -> Result<(), u64> {
    let mut a = start;
    while a < end {
        // SAFETY: as in `fill`.
        if unsafe { ptr::read_volatile(a as *const u64) } != word(a, invert) {
            return Err(a);
        }
        a += 8;
    }
    Ok(())
}

/// Byte-granular write/verify of `[start, end)`, both polarities.
fn bytes(start: u64, end: u64) -> Result<(), u64> {
    for invert in [false, true] {
        for a in start..end {
            // SAFETY: as in `fill`.
            unsafe { ptr::write_volatile(a as *mut u8, byte(a, invert)) };
        }
        for a in start..end {
            // SAFETY: as in `fill`.
            if unsafe { ptr::read_volatile(a as *const u8) } != byte(a, invert) {
                return Err(a);
            }
        }
    }
    Ok(())
}

fn test_range(start: u64, end: u64) -> Result<(), u64> {
    fill(start, end, false);
    verify(start, end, false)?;
    fill(start, end, true);
    verify(start, end, true)?;
    // Byte pass on the first and last page.
    let first = end.min(start + PAGE);
    bytes(start, first)?;
    bytes(end.saturating_sub(PAGE).max(first), end)
}

fn main(_cmdline: &'static str, ram_size: u64) -> i32 {
    let ram_end = image::ram_end(ram_size);
    let ranges = [
        (LOW_START, LOW_END.min(ram_end)),
        (image::image_end(), ram_end),
    ];
    let mut tested = 0;
    for (start, end) in ranges {
        if start >= end {
            continue;
        }
        if let Err(addr) = test_range(start, end) {
            println!("memtest: FAIL at {:#x}", addr);
            return 1;
        }
        tested += end - start;
    }
    println!("memtest: tested {} bytes", tested);
    println!("memtest: PASS");
    0
}
