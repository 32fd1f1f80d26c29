//! Checks the CPUID view the hypervisor presents. Exits 0 on PASS, 1 on FAIL.
#![no_std]
#![no_main]

use core::arch::x86_64::{__cpuid, CpuidResult};
use guest_rt::cpu::rdtsc_ordered;
use guest_rt::io::{inb, outb};
use guest_rt::println;

guest_rt::entry!(main);

const HV_BASE: u32 = 0x4000_0000;
const HV_ABI: u32 = 0x4000_0001;
const SIGNATURE: &[u8; 12] = b"FerroVisorHV";

fn cpuid(leaf: u32) -> CpuidResult {
    __cpuid(leaf)
}

fn check(name: &str, ok: bool, detail: core::fmt::Arguments<'_>) -> bool {
    if ok {
        println!("cpuid: {}: ok", name);
    } else {
        println!("cpuid: {}: FAIL {}", name, detail);
    }
    ok
}

fn main(_cmdline: &'static str, _ram_size: u64) -> i32 {
    let mut pass = true;

    let l1 = cpuid(1);
    pass &= check(
        "vmx hidden",
        l1.ecx & (1 << 5) == 0,
        format_args!("(leaf 1 ecx={:#010x})", l1.ecx),
    );
    pass &= check(
        "hypervisor bit",
        l1.ecx & (1 << 31) != 0,
        format_args!("(leaf 1 ecx={:#010x})", l1.ecx),
    );

    let base = cpuid(HV_BASE);
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&base.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&base.ecx.to_le_bytes());
    sig[8..12].copy_from_slice(&base.edx.to_le_bytes());
    pass &= check(
        "signature",
        &sig == SIGNATURE,
        format_args!("(got {:?})", Ascii(&sig)),
    );

    let abi = cpuid(HV_ABI);
    pass &= check(
        "abi version",
        abi.eax == 1,
        format_args!("(leaf {:#x} eax={:#x})", HV_ABI, abi.eax),
    );
    pass &= check(
        "max leaf",
        base.eax >= HV_ABI,
        format_args!("(leaf {:#x} eax={:#x})", HV_BASE, base.eax),
    );

    pass &= check_tsc_leaves();

    if pass {
        println!("cpuid: PASS");
        0
    } else {
        println!("cpuid: FAIL");
        1
    }
}

/// TSC ticks during `ticks` counts of PIT channel 2 (mode 0, gated on through
/// port 0x61; OUT2, bit 5 of port 0x61, rises at terminal count), or None if
/// OUT2 never rises.
fn tsc_per_pit(ticks: u16) -> Option<u64> {
    let gate = inb(0x61);
    outb(0x61, (gate & !0x02) | 0x01);
    outb(0x43, 0b1011_0000);
    let [lo, hi] = ticks.to_le_bytes();
    outb(0x42, lo);
    outb(0x42, hi);
    let start = rdtsc_ordered();
    let mut spins = 0u64;
    while inb(0x61) & 0x20 == 0 {
        spins += 1;
        if spins > 10_000_000 {
            return None;
        }
    }
    let end = rdtsc_ordered();
    outb(0x61, gate);
    Some(end - start)
}

/// Leaves 15H/16H give the rate the guest's TSC really runs at (measured
/// against the PIT), as Linux computes it: crystal kHz × EBX / EAX.
fn check_tsc_leaves() -> bool {
    let max = cpuid(0).eax;
    let l15 = cpuid(0x15);
    let l16 = cpuid(0x16);
    let khz = if max >= 0x15 && l15.eax != 0 {
        u64::from(l15.ecx / 1000) * u64::from(l15.ebx) / u64::from(l15.eax)
    } else {
        0
    };
    // 20 ms of PIT time (1.193182 MHz).
    let measured = tsc_per_pit(23_864).map_or(0, |t| t / 20);
    let close = |a: u64, b: u64| a.abs_diff(b) * 50 <= b.max(1);
    let mut ok = check(
        "tsc frequency",
        khz != 0 && l15.ecx != 0 && close(khz, measured),
        format_args!(
            "(max leaf {:#x}, leaf 15h eax={} ebx={} ecx={}: {} kHz, measured {} kHz)",
            max, l15.eax, l15.ebx, l15.ecx, khz, measured
        ),
    );
    ok &= check(
        "base frequency",
        max >= 0x16 && u64::from(l16.eax & 0xFFFF) == khz / 1000,
        format_args!("(leaf 16h eax={}, {} kHz)", l16.eax, khz),
    );
    ok
}

/// Shows bytes as a quoted string, escaping non-printables.
struct Ascii<'a>(&'a [u8]);

impl core::fmt::Debug for Ascii<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{:02x}", b)?;
            }
        }
        f.write_str("\"")
    }
}
