//! Exercises every hypercall, then ends via SHUTDOWN(0). Exits 1 on failure.
#![no_std]
#![no_main]

use guest_rt::hypercall::{self as hc, EFAULT, EINVAL, ENOSYS};
use guest_rt::{exit, image, println};

guest_rt::entry!(main);

const MESSAGE: &[u8] = b"hypercall: console write works\n";
const TAIL: &[u8] = b"hypercall: console write from the top of ram works\n";

fn expect(what: &str, got: i64, want: i64) -> Result<(), ()> {
    if got == want {
        println!("hypercall: {}: ok", what);
        Ok(())
    } else {
        println!("hypercall: FAIL {} (got {}, want {})", what, got, want);
        Err(())
    }
}

fn run(ram_size: u64) -> Result<(), ()> {
    expect("abi version", hc::abi_version(), 1)?;
    expect(
        "console write",
        hc::console_write(MESSAGE),
        MESSAGE.len() as i64,
    )?;
    expect(
        "console write past end of ram",
        hc::console_write_raw(ram_size.wrapping_sub(2), 100),
        EFAULT,
    )?;
    // The last bytes of RAM are RAM: a copy that ends exactly there works.
    let at = image::ram_end(ram_size) - TAIL.len() as u64;
    for (i, &c) in TAIL.iter().enumerate() {
        // SAFETY: above the image and its stack, below the end of RAM; the
        // guest uses nothing else there.
        unsafe { ((at + i as u64) as *mut u8).write_volatile(c) };
    }
    expect(
        "console write ending at the last byte of ram",
        hc::console_write_raw(at, TAIL.len() as u64),
        TAIL.len() as i64,
    )?;
    // One byte further is not RAM: all or nothing.
    expect(
        "console write one byte past the end of ram",
        hc::console_write_raw(at + 1, TAIL.len() as u64),
        EFAULT,
    )?;
    // A range whose end wraps past 2^64, and one ending exactly at 2^64.
    expect(
        "console write wrapping past 2^64",
        hc::console_write_raw(u64::MAX - 7, 16),
        EFAULT,
    )?;
    expect(
        "console write ending at 2^64",
        hc::console_write_raw(0u64.wrapping_sub(16), 16),
        EFAULT,
    )?;
    expect(
        "console write at 0xffffffffffff0000",
        hc::console_write_raw(0xFFFF_FFFF_FFFF_0000, 16),
        EFAULT,
    )?;
    // The start of the image: the 1 MB range lies in RAM if RAM allows.
    expect(
        "console write of 1000000 bytes",
        hc::console_write_raw(image::image_start(), 1_000_000),
        EINVAL,
    )?;
    expect(
        "unknown call 0xdead",
        hc::hypercall(0xdead, 0, 0, 0) as i64,
        ENOSYS,
    )?;
    expect("yield", hc::yield_now(), 0)?;
    Ok(())
}

fn main(_cmdline: &'static str, ram_size: u64) -> i32 {
    if run(ram_size).is_err() {
        return 1;
    }
    println!("hypercall: PASS");
    hc::hypercall(hc::SHUTDOWN, 0, 0, 0);
    println!("hypercall: FAIL shutdown returned");
    exit(1)
}
