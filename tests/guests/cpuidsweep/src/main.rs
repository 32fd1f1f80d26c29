//! Sweeps CPUID: every basic leaf (with subleaves 0..63 where leaves have
//! them), the hypervisor leaves 0x40000000..=0x40000010 and the extended
//! leaves, checking that VMX, SMX, SGX and Intel PT stay hidden, that the
//! hypervisor bit is set and that the hypervisor signature is there.
//! Exits 0 on PASS, 1 on FAIL.
#![no_std]
#![no_main]

use core::arch::x86_64::{__cpuid_count, CpuidResult};
use guest_rt::println;

guest_rt::entry!(main);

/// Leaves with subleaves (ECX).
const SUBLEAF_LEAVES: [u32; 11] = [4, 7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1F];
const SUBLEAVES: u32 = 64;
const HV_BASE: u32 = 0x4000_0000;
const HV_LAST: u32 = 0x4000_0010;
const EXT_BASE: u32 = 0x8000_0000;
/// Bound on the extended leaves swept (real CPUs stop near 0x80000008..0x80000026).
const EXT_MAX_SWEPT: u32 = EXT_BASE + 0x40;
/// Bound on the basic leaves swept.
const BASIC_MAX_SWEPT: u32 = 0x40;
const SIGNATURE: &[u8; 12] = b"FerroVisorHV";

struct Sweep {
    queried: u32,
    failures: u32,
}

impl Sweep {
    fn fail(&mut self, what: core::fmt::Arguments<'_>) {
        if self.failures < 8 {
            println!("cpuidsweep: FAIL {}", what);
        }
        self.failures += 1;
    }

    fn check(&mut self, leaf: u32, sub: u32, r: CpuidResult) {
        self.queried += 1;
        let all = [r.eax, r.ebx, r.ecx, r.edx];
        match (leaf, sub) {
            (1, _) => {
                if r.ecx & (1 << 5) != 0 {
                    self.fail(format_args!("VMX visible (leaf 1 ecx={:#010x})", r.ecx));
                }
                if r.ecx & (1 << 6) != 0 {
                    self.fail(format_args!("SMX visible (leaf 1 ecx={:#010x})", r.ecx));
                }
                if r.ecx & (1 << 31) == 0 {
                    self.fail(format_args!(
                        "hypervisor bit clear (leaf 1 ecx={:#010x})",
                        r.ecx
                    ));
                }
            }
            (7, 0) => {
                if r.ebx & (1 << 2) != 0 {
                    self.fail(format_args!("SGX visible (leaf 7 ebx={:#010x})", r.ebx));
                }
                if r.ebx & (1 << 25) != 0 {
                    self.fail(format_args!(
                        "Intel PT visible (leaf 7 ebx={:#010x})",
                        r.ebx
                    ));
                }
            }
            (0x12 | 0x14, _) if all != [0; 4] => self.fail(format_args!(
                "leaf {:#x}.{} not zero: {:#x} {:#x} {:#x} {:#x}",
                leaf, sub, r.eax, r.ebx, r.ecx, r.edx
            )),
            (HV_BASE, _) => {
                let mut sig = [0u8; 12];
                sig[0..4].copy_from_slice(&r.ebx.to_le_bytes());
                sig[4..8].copy_from_slice(&r.ecx.to_le_bytes());
                sig[8..12].copy_from_slice(&r.edx.to_le_bytes());
                if &sig != SIGNATURE {
                    self.fail(format_args!(
                        "no FerroVisorHV signature at {:#x} (ebx={:#x} ecx={:#x} edx={:#x})",
                        HV_BASE, r.ebx, r.ecx, r.edx
                    ));
                }
                if r.eax < HV_BASE + 1 {
                    self.fail(format_args!("hypervisor max leaf {:#x}", r.eax));
                }
            }
            _ => {}
        }
    }

    fn leaf(&mut self, leaf: u32) {
        let subs = if SUBLEAF_LEAVES.contains(&leaf) {
            SUBLEAVES
        } else {
            1
        };
        for sub in 0..subs {
            self.check(leaf, sub, __cpuid_count(leaf, sub));
        }
    }
}

fn main(_cmdline: &'static str, _ram_size: u64) -> i32 {
    let mut s = Sweep {
        queried: 0,
        failures: 0,
    };
    let max_basic = __cpuid_count(0, 0).eax;
    let max_ext = __cpuid_count(EXT_BASE, 0).eax;
    for leaf in 0..=max_basic.min(BASIC_MAX_SWEPT) {
        s.leaf(leaf);
    }
    for leaf in HV_BASE..=HV_LAST {
        s.leaf(leaf);
    }
    if (EXT_BASE..=EXT_MAX_SWEPT).contains(&max_ext) {
        for leaf in EXT_BASE..=max_ext {
            s.leaf(leaf);
        }
    } else {
        s.fail(format_args!(
            "max extended leaf {:#x} out of range",
            max_ext
        ));
    }
    // Leaf 1 again, after everything else.
    s.leaf(1);
    println!(
        "cpuidsweep: max basic {:#x}, max extended {:#x}, {} queries",
        max_basic, max_ext, s.queried
    );
    if s.failures == 0 {
        println!("cpuidsweep: PASS");
        0
    } else {
        println!("cpuidsweep: FAIL {} checks", s.failures);
        1
    }
}
