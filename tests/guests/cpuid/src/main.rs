//! Checks the CPUID view the hypervisor presents. Exits 0 on PASS, 1 on FAIL.
#![no_std]
#![no_main]

use core::arch::x86_64::{__cpuid, CpuidResult};
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

    if pass {
        println!("cpuid: PASS");
        0
    } else {
        println!("cpuid: FAIL");
        1
    }
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
