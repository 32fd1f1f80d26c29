//! Conformance guest: string I/O (INS/OUTS) as the SDM defines it (Vol. 2
//! "INS/INSB/INSW/INSD", "OUTS/OUTSB/OUTSW/OUTSD", "REP"), every form the
//! hypervisor must emulate after an I/O exit:
//! - `rep outsb` of a line to the console UART (the line must appear),
//!   with DF = 1 (a reversed string printed forwards), with an FS override
//!   and with a 32-bit address size (0x67);
//! - `insb`, `rep insw`, `rep insd` with DF = 1, and `rep insb` with 0x67,
//!   from an unclaimed port: all-ones in memory, exact register updates,
//!   no byte written outside the buffer; a long `rep insb` (many chunks);
//! - faults: #PF (CR2 and error code) on a page the guest didn't map, after
//!   the iterations before it completed; #GP for non-canonical addresses
//!   (also with an SS override, which 64-bit mode ignores, and through an
//!   FS base).
//!
//! Prints `strio: PASS` and exits 0, or `strio: FAIL ...` lines and exits 1.
#![no_std]
#![no_main]

use core::arch::asm;
use guest_rt::{println, probe};

guest_rt::entry!(main);

/// No device claims this port: reads give all-ones.
const EMPTY_PORT: u16 = 0x7A0;
const UART: u16 = 0x3F8;
const IA32_FS_BASE: u32 = 0xC000_0100;

static mut BUF: [u8; 256] = [0; 256];
static mut BIG: [u8; 5000] = [0; 5000];

static mut FAILS: u32 = 0;

fn check(what: &str, got: u64, want: u64) {
    if got != want {
        println!("strio: FAIL {}: got {:#x}, want {:#x}", what, got, want);
        // SAFETY: single vCPU.
        unsafe { FAILS += 1 };
    }
}

fn buf() -> *mut u8 {
    (&raw mut BUF).cast()
}

fn clear() {
    // SAFETY: BUF is this guest's own; nothing else uses it now.
    unsafe { core::ptr::write_bytes(buf(), 0, 256) };
}

fn byte(i: usize) -> u8 {
    // SAFETY: inside BUF.
    unsafe { buf().add(i).read_volatile() }
}

/// Bytes of BUF equal to 0xFF, and the range they span.
fn ones() -> (usize, usize, usize) {
    let (mut n, mut lo, mut hi) = (0, usize::MAX, 0);
    for i in 0..256 {
        if byte(i) == 0xFF {
            n += 1;
            lo = lo.min(i);
            hi = hi.max(i);
        }
    }
    (n, lo, hi)
}

fn wrmsr(msr: u32, v: u64) {
    // SAFETY: FS base only changes FS-relative addressing, which nothing here uses
    // except the probed instructions.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack))
    };
}

fn outs_to_console() {
    // Forwards.
    let line = b"strio: rep outsb reached the console\n";
    let (mut rsi, mut rcx) = (line.as_ptr() as u64, line.len() as u64);
    let start = rsi;
    // SAFETY: reads the line, writes the UART.
    unsafe {
        asm!("rep outsb", inout("rsi") rsi, inout("rcx") rcx, in("dx") UART, options(nostack, readonly))
    };
    check("rep outsb rsi", rsi, start + line.len() as u64);
    check("rep outsb rcx", rcx, 0);

    // DF = 1: the last byte first.
    let rev = b"\nesrever ni ,1=FD htiw bstuo per :oirts";
    let (mut rsi, mut rcx) = (rev.as_ptr() as u64 + rev.len() as u64 - 1, rev.len() as u64);
    let start = rsi;
    // SAFETY: as above; DF is cleared again before the block ends.
    unsafe {
        asm!("std", "rep outsb", "cld", inout("rsi") rsi, inout("rcx") rcx, in("dx") UART, options(nostack, readonly))
    };
    check(
        "std rep outsb rsi",
        rsi,
        start.wrapping_sub(rev.len() as u64),
    );
    check("std rep outsb rcx", rcx, 0);

    // FS override: the string is at FS base + RSI.
    let fsline = b"strio: rep outsb with an FS override\n";
    let base = fsline.as_ptr() as u64 - 0x1000;
    wrmsr(IA32_FS_BASE, base);
    let (mut rsi, mut rcx) = (0x1000u64, fsline.len() as u64);
    // SAFETY: as above.
    unsafe {
        asm!(".byte 0x64", "rep outsb", inout("rsi") rsi, inout("rcx") rcx, in("dx") UART, options(nostack, readonly))
    };
    wrmsr(IA32_FS_BASE, 0);
    check("fs rep outsb rsi", rsi, 0x1000 + fsline.len() as u64);
    check("fs rep outsb rcx", rcx, 0);

    // 32-bit address size: ESI/ECX only, upper halves ignored and cleared.
    let a32 = b"strio: rep outsb with 32-bit addresses\n";
    let p = a32.as_ptr() as u64;
    if p >> 32 != 0 {
        println!("strio: FAIL image above 4 GiB");
        return;
    }
    let (mut rsi, mut rcx) = (p | 0xFFFF_0000_0000_0000, a32.len() as u64 | (7 << 32));
    // SAFETY: as above; the address used is ESI, inside the image.
    unsafe {
        asm!(".byte 0x67", "rep outsb", inout("rsi") rsi, inout("rcx") rcx, in("dx") UART, options(nostack, readonly))
    };
    check("addr32 rep outsb rsi", rsi, p + a32.len() as u64);
    check("addr32 rep outsb rcx", rcx, 0);
}

fn ins_from_empty_port() {
    use guest_rt::io::inb;
    check("inb from the empty port", u64::from(inb(EMPTY_PORT)), 0xFF);
    let b = buf() as u64;

    // insb, no REP: one byte, RCX untouched.
    clear();
    let (mut rdi, mut rcx) = (b + 10, 5u64);
    // SAFETY: writes one byte of BUF.
    unsafe {
        asm!("insb", inout("rdi") rdi, inout("rcx") rcx, in("dx") EMPTY_PORT, options(nostack))
    };
    check("insb rdi", rdi, b + 11);
    check("insb rcx", rcx, 5);
    check("insb bytes", ones().0 as u64, 1);
    check("insb at", ones().1 as u64, 10);

    // rep insw: 4 words.
    clear();
    let (mut rdi, mut rcx) = (b + 16, 4u64);
    // SAFETY: writes 8 bytes of BUF.
    unsafe {
        asm!("rep insw", inout("rdi") rdi, inout("rcx") rcx, in("dx") EMPTY_PORT, options(nostack))
    };
    check("rep insw rdi", rdi, b + 24);
    check("rep insw rcx", rcx, 0);
    check("rep insw bytes", ones().0 as u64, 8);
    check("rep insw first", ones().1 as u64, 16);
    check("rep insw last", ones().2 as u64, 23);

    // rep insd with DF = 1: 3 dwords at 100, 96, 92.
    clear();
    let (mut rdi, mut rcx) = (b + 100, 3u64);
    // SAFETY: writes 12 bytes of BUF; DF cleared before the block ends.
    unsafe {
        asm!("std", "rep insd", "cld", inout("rdi") rdi, inout("rcx") rcx, in("dx") EMPTY_PORT, options(nostack))
    };
    check("std rep insd rdi", rdi, b + 88);
    check("std rep insd rcx", rcx, 0);
    check("std rep insd bytes", ones().0 as u64, 12);
    check("std rep insd first", ones().1 as u64, 92);
    check("std rep insd last", ones().2 as u64, 103);

    // 0x67 rep insb: EDI/ECX.
    clear();
    let (mut rdi, mut rcx) = ((b + 200) | 0xABCD_0000_0000_0000, 3 | (0x1234u64 << 32));
    // SAFETY: writes 3 bytes of BUF at EDI.
    unsafe {
        asm!(".byte 0x67", "rep insb", inout("rdi") rdi, inout("rcx") rcx, in("dx") EMPTY_PORT, options(nostack))
    };
    check("addr32 rep insb rdi", rdi, b + 203);
    check("addr32 rep insb rcx", rcx, 0);
    check("addr32 rep insb bytes", ones().0 as u64, 3);
    check("addr32 rep insb first", ones().1 as u64, 200);

    // A long REP: many chunks, every byte written, nothing beyond.
    let big = (&raw mut BIG).cast::<u8>();
    let (mut rdi, mut rcx) = (big as u64, 4999u64);
    // SAFETY: writes 4999 bytes of BIG.
    unsafe {
        asm!("rep insb", inout("rdi") rdi, inout("rcx") rcx, in("dx") EMPTY_PORT, options(nostack))
    };
    check("long rep insb rcx", rcx, 0);
    check("long rep insb rdi", rdi, big as u64 + 4999);
    // SAFETY: inside BIG.
    let (first, last, after) = unsafe {
        (
            big.read_volatile(),
            big.add(4998).read_volatile(),
            big.add(4999).read_volatile(),
        )
    };
    check(
        "long rep insb bytes",
        u64::from(first) << 16 | u64::from(last) << 8 | u64::from(after),
        0xFFFF00,
    );
}

fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reads CR2 only.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn faults() {
    // rep insb running from mapped memory into the first page above 4 GiB, which
    // this guest's page tables don't map: two bytes land (in the empty MMIO hole,
    // where writes are dropped), then #PF at 4 GiB with RCX/RDI as they stood.
    let (mut rdi, mut rcx) = (0xFFFF_FFFEu64, 4u64);
    // SAFETY: the writes go to unmapped memory or fault; the probe catches the fault.
    let f = unsafe { probe!("rep insb"; inout("rdi") rdi, inout("rcx") rcx, in("dx") EMPTY_PORT) };
    match f {
        Some(f) => {
            check("#PF vector", u64::from(f.vector), 14);
            check("#PF error code (write, not present)", f.error, 0b010);
            check("#PF cr2", cr2(), 0x1_0000_0000);
            check("#PF rdi", rdi, 0x1_0000_0000);
            check("#PF rcx", rcx, 2);
        }
        None => {
            println!("strio: FAIL rep insb into an unmapped page did not fault");
            // SAFETY: single vCPU.
            unsafe { FAILS += 1 };
        }
    }

    // outsb from a non-canonical address: #GP(0), RSI unchanged.
    let mut rsi = 0x8000_0000_0000_0000u64;
    // SAFETY: faults before reading anything.
    let f = unsafe { probe!("outsb"; inout("rsi") rsi, in("dx") EMPTY_PORT) };
    check(
        "non-canonical outsb vector",
        f.map_or(0, |f| u64::from(f.vector)),
        13,
    );
    check("non-canonical outsb error", f.map_or(1, |f| f.error), 0);
    check("non-canonical outsb rsi", rsi, 0x8000_0000_0000_0000);

    // 64-bit mode ignores an SS override (SDM Vol. 1 3.3.7.1): still DS, so #GP(0), not #SS.
    let mut rsi = 0x0000_9000_0000_0000u64;
    // SAFETY: as above.
    let f = unsafe { probe!(".byte 0x36", "outsb"; inout("rsi") rsi, in("dx") EMPTY_PORT) };
    check(
        "ss: non-canonical outsb vector",
        f.map_or(0, |f| u64::from(f.vector)),
        13,
    );
    check("ss: non-canonical outsb rsi", rsi, 0x0000_9000_0000_0000);

    // An FS override with a base that makes the address non-canonical: #GP(0).
    wrmsr(IA32_FS_BASE, 0x0000_7FFF_FFFF_F000);
    let mut rsi = 0x2000u64;
    // SAFETY: as above; FS base is restored below.
    let f = unsafe { probe!(".byte 0x64", "outsb"; inout("rsi") rsi, in("dx") EMPTY_PORT) };
    wrmsr(IA32_FS_BASE, 0);
    check(
        "fs: non-canonical outsb vector",
        f.map_or(0, |f| u64::from(f.vector)),
        13,
    );
    check("fs: non-canonical outsb rsi", rsi, 0x2000);
}

fn main(_cmd: &'static str, _ram: u64) -> i32 {
    outs_to_console();
    ins_from_empty_port();
    faults();
    // SAFETY: single vCPU.
    let fails = unsafe { FAILS };
    if fails == 0 {
        println!("strio: PASS");
        0
    } else {
        println!("strio: FAIL ({} checks)", fails);
        1
    }
}
