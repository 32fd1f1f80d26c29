//! Hostile guest: XSETBV with invalid XCR0 values (and an invalid XCR index)
//! must each raise #GP; a valid value must take effect and read back through
//! XGETBV. Without XSAVE, XSETBV must raise #UD instead.
//! Exits 0 on PASS, 1 on FAIL.
#![no_std]
#![no_main]

use core::arch::x86_64::__cpuid_count;
use guest_rt::cpu::{self, CR4_OSXSAVE};
use guest_rt::idt::Fault;
use guest_rt::{println, probe};

guest_rt::entry!(main);

const UD: u8 = 6;
const GP: u8 = 13;
const XSAVE: u32 = 1 << 26;
const AVX: u32 = 1 << 28;

/// XSETBV of `value` into XCR `index`.
///
/// # Safety
/// CR4.OSXSAVE must be set, or the probe sees #UD. If it does not fault, the
/// new XCR0 must keep x87 and SSE state enabled (nothing here uses AVX).
unsafe fn xsetbv(index: u32, value: u64) -> Option<Fault> {
    // SAFETY: per the caller; the probe catches faults.
    unsafe {
        probe!("xsetbv"; in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32)
    }
}

struct Checks {
    failures: u32,
}

impl Checks {
    fn expect(&mut self, what: &str, got: Option<Fault>, want: Option<u8>) {
        match (got, want) {
            (None, None) => println!("xsetbv: {}: ok", what),
            (Some(f), Some(v)) if f.vector == v => println!("xsetbv: {}: ok (vector {})", what, v),
            (Some(f), _) => {
                println!(
                    "xsetbv: FAIL {}: vector {} (error {:#x})",
                    what, f.vector, f.error
                );
                self.failures += 1;
            }
            (None, Some(v)) => {
                println!("xsetbv: FAIL {}: no vector {}", what, v);
                self.failures += 1;
            }
        }
    }
}

fn main(_cmdline: &'static str, _ram_size: u64) -> i32 {
    let mut c = Checks { failures: 0 };
    let l1 = __cpuid_count(1, 0);
    if l1.ecx & XSAVE == 0 {
        println!("xsetbv: no XSAVE; XSETBV must raise #UD");
        // SAFETY: without XSAVE this can only fault.
        c.expect("xsetbv without XSAVE", unsafe { xsetbv(0, 1) }, Some(UD));
    } else {
        // SAFETY: CPUID reports XSAVE; OSXSAVE only enables XGETBV/XSETBV
        // and the XSAVE family.
        unsafe { cpu::write_cr4(cpu::read_cr4() | CR4_OSXSAVE) };
        let invalid: [(&str, u32, u64); 6] = [
            ("xcr0 = 0", 0, 0),
            ("xcr0 = 2 (no x87)", 0, 2),
            ("xcr0 = 5 (avx without sse)", 0, 5),
            ("xcr0 bit 63", 0, (1 << 63) | 3),
            ("xcr0 bit 62", 0, (1 << 62) | 3),
            ("xcr1 = 3", 1, 3),
        ];
        for (what, index, value) in invalid {
            // SAFETY: each value or index is invalid and must fault; were one
            // accepted, x87 and SSE state can't be needed by this guest
            // (nothing in it uses them).
            c.expect(what, unsafe { xsetbv(index, value) }, Some(GP));
        }
        let valid = if l1.ecx & AVX != 0 { 7 } else { 3 };
        // SAFETY: x87 | SSE (| AVX where CPUID reports it) is valid.
        c.expect("valid xcr0", unsafe { xsetbv(0, valid) }, None);
        // SAFETY: OSXSAVE is set; XCR0 always exists.
        let now = unsafe { cpu::xgetbv(0) };
        if now == valid {
            println!("xsetbv: xgetbv = {:#x}: ok", now);
        } else {
            println!("xsetbv: FAIL xgetbv = {:#x}, want {:#x}", now, valid);
            c.failures += 1;
        }
    }
    if c.failures == 0 {
        println!("xsetbv: PASS");
        0
    } else {
        println!("xsetbv: FAIL {} checks", c.failures);
        1
    }
}
