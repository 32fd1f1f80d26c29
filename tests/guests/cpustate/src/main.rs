//! Conformance guest for per-vCPU architectural state (SDM Vol. 3A 10.1.1
//! Table 10-1, 18.2, 18.3; Vol. 3C 27.3.2.1, 28.3.1):
//!
//! 1. Power-on state: DR0-DR3 = 0, DR6 = 0xFFFF0FF0, DR7 = 0x400, CR2 = 0,
//!    FCW = 0x37F, MXCSR = 0x1F80, and the device registers a PC resets
//!    (printed, so that a restarted guest can be compared with its first run).
//! 2. Isolation: DR0-DR3, DR6, DR7 and CR2 get a pattern of this instance,
//!    then the guest yields many times (other guests run on the same CPUs)
//!    and checks after each yield that every register still holds it.
//! 3. A data breakpoint armed before an exit still fires after it (DR7 kept
//!    across exits), with DR6.B0 set.
//! 4. A fault the hypervisor injects (#GP from a MOV to CR4 with a reserved
//!    bit, #UD from VMXON) has RF set in the saved RFLAGS, as a fault raised
//!    by the CPU itself does (SDM Vol. 3A 18.3.1.1).
//! 5. With `dirty=1` it then leaves every register and device in a different
//!    state and exits: a restart must not show any of it, except the date
//!    it sets the RTC to (2001): the clock is battery-backed, a restart
//!    shows that year (printed on every run).
//!
//! Command line: `pattern=<hex>` (default 1), `iterations=<n>` (default 200),
//! `dirty=1`. Exits 0 on PASS, 1 on FAIL.
#![no_std]
#![no_main]

use core::arch::asm;
use core::ptr::addr_of_mut;
use guest_rt::cpu::{self, CR0_EM, CR0_MP, CR0_TS, CR4_OSFXSR, CR4_OSXMMEXCPT};
use guest_rt::hypercall::yield_now;
use guest_rt::io::{inb, inw, outb, outw};
use guest_rt::{cmdline, println, probe};

guest_rt::entry!(main);

const DB: u8 = 1;
const UD: u8 = 6;
const GP: u8 = 13;
const RF: u64 = 1 << 16;
const PM1_EN: u16 = 0x600 + 2;

macro_rules! dr {
    (read $n:literal) => {{
        let v: u64;
        // SAFETY: reading a debug register has no side effects (DR7.GD is clear).
        unsafe { asm!(concat!("mov {}, dr", $n), out(reg) v, options(nomem, nostack)) };
        v
    }};
    (write $n:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: the values written arm breakpoints only on addresses this
        // guest chose (and DR6/DR7 reserved bits are kept as the SDM says).
        unsafe { asm!(concat!("mov dr", $n, ", {}"), in(reg) v, options(nomem, nostack)) };
    }};
}

fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reads CR2 only.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn write_cr2(v: u64) {
    // SAFETY: CR2 is only a record of the last page-fault address.
    unsafe { asm!("mov cr2, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
}

fn fcw() -> u16 {
    let mut v: u16 = 0;
    // SAFETY: FNSTCW stores 2 bytes into `v`; CR0.EM/TS are clear.
    unsafe { asm!("fnstcw [{}]", in(reg) &mut v, options(nostack)) };
    v
}

fn mxcsr() -> u32 {
    let mut v: u32 = 0;
    // SAFETY: STMXCSR stores 4 bytes into `v`; CR4.OSFXSR is set.
    unsafe { asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack)) };
    v
}

struct Checks {
    failures: u32,
}

impl Checks {
    fn eq(&mut self, what: &str, got: u64, want: u64) -> bool {
        if got != want {
            println!("cpustate: FAIL {}: {:#x}, want {:#x}", what, got, want);
            self.failures += 1;
            return false;
        }
        true
    }
}

/// The RTC's year (BCD, the power-on format), century byte at CMOS 0x32.
fn rtc_year_line() {
    let bcd = |b: u8| u32::from(b >> 4) * 10 + u32::from(b & 0xF);
    outb(0x70, 0x09);
    let yy = inb(0x71);
    outb(0x70, 0x32);
    let cc = inb(0x71);
    println!("cpustate: rtc year {}", bcd(cc) * 100 + bcd(yy));
}

/// The device state a PC resets at power-on, as one line.
fn device_line() {
    let imr = (inb(0x21), inb(0xA1));
    outb(0x70, 0x0B);
    let rtc_b = inb(0x71);
    let uart = (inb(0x3F9), inb(0x3FC), inb(0x3FF));
    let pm1_en = inw(PM1_EN);
    println!(
        "cpustate: devices pic-imr={:#x}/{:#x} rtc-b={:#x} uart-ier/mcr/scr={:#x}/{:#x}/{:#x} pm1-en={:#x}",
        imr.0, imr.1, rtc_b, uart.0, uart.1, uart.2, pm1_en
    );
}

static mut WATCHED: u32 = 0;

fn main(cmd: &'static str, _ram_size: u64) -> i32 {
    let pattern = cmdline::get(cmd, "pattern")
        .and_then(cmdline::parse_hex)
        .unwrap_or(1)
        & 0xFF;
    let iterations = cmdline::number(cmd, "iterations", 200).unwrap_or(200);
    let mut c = Checks { failures: 0 };

    // SAFETY: enabling x87/SSE only changes which instructions may run.
    unsafe {
        cpu::write_cr0((cpu::read_cr0() & !(CR0_EM | CR0_TS)) | CR0_MP);
        cpu::write_cr4(cpu::read_cr4() | CR4_OSFXSR | CR4_OSXMMEXCPT);
    }
    // 1. Power-on state.
    let before = c.failures;
    for (what, got, want) in [
        ("power-on dr0", dr!(read 0), 0),
        ("power-on dr1", dr!(read 1), 0),
        ("power-on dr2", dr!(read 2), 0),
        ("power-on dr3", dr!(read 3), 0),
        ("power-on dr6", dr!(read 6), 0xFFFF_0FF0),
        ("power-on dr7", dr!(read 7), 0x400),
        ("power-on cr2", read_cr2(), 0),
        ("power-on fcw", u64::from(fcw()), 0x37F),
        ("power-on mxcsr", u64::from(mxcsr()), 0x1F80),
    ] {
        c.eq(what, got, want);
    }
    if c.failures == before {
        println!("cpustate: power-on state ok");
    }
    device_line();
    rtc_year_line();

    // 2. Isolation across yields. Breakpoints on addresses nobody touches
    // (L0-L3, write, 4 bytes), so that they never fire.
    let base = 0x4000_0000 + (pattern << 16);
    let drs = [base, base + 0x1000, base + 0x2000, base + 0x3000];
    let dr6 = 0xFFFF_0FF0 | (pattern & 0xF);
    let dr7 = 0x400 | 0x55 | 0xDDDD_0000;
    let cr2 = 0x7000_0000_0000 | (pattern << 24) | 0xABC;
    dr!(write 0, drs[0]);
    dr!(write 1, drs[1]);
    dr!(write 2, drs[2]);
    dr!(write 3, drs[3]);
    dr!(write 6, dr6);
    dr!(write 7, dr7);
    write_cr2(cr2);
    let mut bad = 0;
    for i in 0..iterations {
        yield_now();
        let got = [
            dr!(read 0),
            dr!(read 1),
            dr!(read 2),
            dr!(read 3),
            dr!(read 6),
            dr!(read 7),
            read_cr2(),
        ];
        let want = [drs[0], drs[1], drs[2], drs[3], dr6, dr7, cr2];
        if got != want && bad < 3 {
            println!(
                "cpustate: FAIL after yield {}: dr0-3,6,7,cr2 = {:x?}, want {:x?}",
                i, got, want
            );
            bad += 1;
        }
    }
    if bad == 0 {
        println!("cpustate: registers kept over {} yields", iterations);
    }
    c.failures += bad;

    // 3. A data breakpoint armed before an exit fires after it. First without
    // an exit in between: an emulator without data breakpoints is said so.
    let watched = addr_of_mut!(WATCHED) as u64;
    let breakpoint = |exit_first: bool| {
        dr!(write 7, 0x400);
        dr!(write 6, 0xFFFF_0FF0);
        dr!(write 0, watched);
        dr!(write 7, 0x400 | 0x1 | (0b1101 << 16)); // L0, write, 4 bytes
        if exit_first {
            yield_now();
        }
        // SAFETY: a write to WATCHED, which raises #DB (a trap: the probe
        // resumes after the write).
        let f = unsafe { probe!("mov dword ptr [{w}], 1"; w = in(reg) watched) };
        let dr6 = dr!(read 6);
        dr!(write 7, 0x400);
        (f.is_some_and(|f| f.vector == DB), dr6)
    };
    match (breakpoint(false), breakpoint(true)) {
        ((false, _), _) => println!("cpustate: no data breakpoints on this CPU: skipped"),
        (_, (true, dr6)) if dr6 & 1 != 0 => println!("cpustate: breakpoint across exits ok"),
        (_, (hit, dr6)) => {
            println!(
                "cpustate: FAIL data breakpoint across exits: #DB {}, dr6 {:#x}",
                hit, dr6
            );
            c.failures += 1;
        }
    }

    // 4. RF in the frame of injected faults.
    // SAFETY: CR4 bit 31 is reserved: the write must raise #GP and change nothing.
    let gp = unsafe { probe!("mov cr4, {v}"; v = in(reg) cpu::read_cr4() | (1 << 31)) };
    // SAFETY: VMX is hidden from guests: VMXON must raise #UD.
    let ud = unsafe { probe!("vmxon [{p}]"; p = in(reg) 0x1000u64) };
    for (what, f, vector) in [("#GP from MOV to CR4", gp, GP), ("#UD from VMXON", ud, UD)] {
        match f {
            Some(f) if f.vector == vector && f.rflags & RF != 0 => {
                println!("cpustate: {} has RF set: ok", what)
            }
            other => {
                println!(
                    "cpustate: FAIL {}: {:?}",
                    what,
                    other.map(|f| (f.vector, f.rflags))
                );
                c.failures += 1;
            }
        }
    }

    if cmdline::flag(cmd, "dirty") {
        // 5. Leave everything different from its power-on state.
        dr!(write 0, 0xDEAD_0000);
        dr!(write 6, 0xFFFF_0FF5);
        write_cr2(0xBAD_C0DE);
        let m: u32 = 0x1F00;
        let w: u16 = 0x27F;
        // SAFETY: valid MXCSR (invalid-operation unmasked) and FCW values; no
        // floating-point arithmetic follows.
        unsafe { asm!("ldmxcsr [{}]", "fldcw [{}]", in(reg) &m, in(reg) &w, options(nostack)) };
        outb(0x21, 0xAB);
        outb(0xA1, 0xCD);
        // The clock set the way an OS sets it (SET, binary format):
        // it is battery-backed, so the restart must still show that year.
        // 2001-06-01 12:00:00, every field in the new format.
        outb(0x70, 0x0B);
        outb(0x71, 0x86);
        for (reg, v) in [(0, 0), (2, 0), (4, 12), (7, 1), (8, 6), (9, 1), (0x32, 20)] {
            outb(0x70, reg);
            outb(0x71, v);
        }
        outb(0x70, 0x0B);
        outb(0x71, 0x06);
        outb(0x3FF, 0x5A);
        outb(0x3FC, 0x03);
        outw(PM1_EN, 0x0100);
        println!("cpustate: dirtied");
    }
    if c.failures == 0 {
        println!("cpustate: PASS");
        0
    } else {
        println!("cpustate: FAIL {} checks", c.failures);
        1
    }
}
