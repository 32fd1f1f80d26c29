//! Hostile guest: RDMSR across the architectural, extended, hypervisor and
//! some reserved MSR ranges, where every read must either return a value or
//! raise #GP; checks the values of the virtualized MSRs; then WRMSRs with
//! invalid values that must raise #GP, and harmless write-backs that must
//! not. Exits 0 on PASS, 1 on FAIL.
#![no_std]
#![no_main]

use guest_rt::idt::Fault;
use guest_rt::{println, probe};

guest_rt::entry!(main);

const GP: u8 = 13;

const TSC: u32 = 0x10;
const APIC_BASE: u32 = 0x1B;
const FEATURE_CONTROL: u32 = 0x3A;
const SYSENTER_CS: u32 = 0x174;
const SYSENTER_ESP: u32 = 0x175;
const SYSENTER_EIP: u32 = 0x176;
const MISC_ENABLE: u32 = 0x1A0;
const DEBUGCTL: u32 = 0x1D9;
const PAT: u32 = 0x277;
const EFER: u32 = 0xC000_0080;
const STAR: u32 = 0xC000_0081;
const LSTAR: u32 = 0xC000_0082;
const CSTAR: u32 = 0xC000_0083;
const FMASK: u32 = 0xC000_0084;
const FS_BASE: u32 = 0xC000_0100;
const GS_BASE: u32 = 0xC000_0101;
const KERNEL_GS_BASE: u32 = 0xC000_0102;

/// Swept ranges `[start, end)`.
const RANGES: [(u32, u32); 3] = [
    (0x0, 0x2000),
    (0xC000_0000, 0xC000_2000),
    (0x4000_0000, 0x4000_0100),
];
/// Reserved or unusual indices outside the ranges.
const ODD: [u32; 10] = [
    0x2000_0000,
    0x8000_0000,
    0xC001_0000,
    0xC001_0015,
    0xDEAD_BEEF,
    0x1234_5678,
    0xFFFF_FFFF,
    0x4000_1000,
    0x0001_0000,
    0xBFFF_FFFF,
];
/// MSRs every vCPU must be able to read.
const MUST_READ: [u32; 19] = [
    TSC,
    APIC_BASE,
    FEATURE_CONTROL,
    0x17,
    0x8B,
    SYSENTER_CS,
    SYSENTER_ESP,
    SYSENTER_EIP,
    MISC_ENABLE,
    DEBUGCTL,
    PAT,
    EFER,
    STAR,
    LSTAR,
    CSTAR,
    FMASK,
    FS_BASE,
    GS_BASE,
    KERNEL_GS_BASE,
];

fn rdmsr(msr: u32) -> Result<u64, Fault> {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR only reads an MSR or faults; the probe catches faults.
    let fault = unsafe { probe!("rdmsr"; in("ecx") msr, out("eax") lo, out("edx") hi) };
    match fault {
        None => Ok((u64::from(hi) << 32) | u64::from(lo)),
        Some(f) => Err(f),
    }
}

/// WRMSR.
///
/// # Safety
/// Writing `value` to `msr`, if it does not fault, must not break the guest.
unsafe fn wrmsr(msr: u32, value: u64) -> Option<Fault> {
    // SAFETY: per the caller; the probe catches faults.
    unsafe {
        probe!("wrmsr"; in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32)
    }
}

#[derive(Default)]
struct Tally {
    readable: u32,
    gp: u32,
    failures: u32,
}

impl Tally {
    fn fail(&mut self, what: core::fmt::Arguments<'_>) {
        // Keep the output short if something is systematically wrong.
        if self.failures < 8 {
            println!("msrsweep: FAIL {}", what);
        }
        self.failures += 1;
    }

    fn read(&mut self, msr: u32) -> Option<u64> {
        match rdmsr(msr) {
            Ok(v) => {
                self.readable += 1;
                Some(v)
            }
            Err(f) if f.vector == GP => {
                self.gp += 1;
                None
            }
            Err(f) => {
                self.fail(format_args!(
                    "rdmsr {:#x} raised vector {} (error {:#x})",
                    msr, f.vector, f.error
                ));
                None
            }
        }
    }
}

fn check_values(t: &mut Tally) {
    for msr in MUST_READ {
        if let Err(f) = rdmsr(msr) {
            t.fail(format_args!("rdmsr {:#x} raised vector {}", msr, f.vector));
        }
    }
    if let Ok(v) = rdmsr(FEATURE_CONTROL)
        && v != 1
    {
        t.fail(format_args!("FEATURE_CONTROL = {:#x}, want 0x1", v));
    }
    if let Ok(v) = rdmsr(APIC_BASE)
        && (v & (1 << 11) == 0 || v & 0xF_FFFF_FFFF_F000 != 0xFEE0_0000)
    {
        t.fail(format_args!(
            "APIC_BASE = {:#x}, want enabled at 0xfee00000",
            v
        ));
    }
    if let Ok(v) = rdmsr(MISC_ENABLE)
        && v & 1 == 0
    {
        t.fail(format_args!("MISC_ENABLE = {:#x}, want bit 0 set", v));
    }
}

fn check_writes(t: &mut Tally) {
    let efer = rdmsr(EFER).unwrap_or(0);
    let pat = rdmsr(PAT).unwrap_or(0x0007_0406_0007_0406);
    // Invalid values: each must raise #GP (and so change nothing).
    let bad: [(&str, u32, u64); 4] = [
        ("EFER with bit 63", EFER, efer | (1 << 63)),
        ("PAT with type 2", PAT, (pat & !0xFF) | 2),
        ("DEBUGCTL = 1", DEBUGCTL, 1),
        ("FEATURE_CONTROL = 5", FEATURE_CONTROL, 5),
    ];
    for (what, msr, value) in bad {
        // SAFETY: each value is invalid for its MSR and must fault; were it
        // accepted, none breaks this guest (reserved EFER bits and PAT type 2
        // are rejected by any CPU, LBRs and VMX enables are unused here).
        match unsafe { wrmsr(msr, value) } {
            Some(f) if f.vector == GP => {}
            Some(f) => t.fail(format_args!("wrmsr {} raised vector {}", what, f.vector)),
            None => t.fail(format_args!("wrmsr {} did not raise #GP", what)),
        }
    }
    // Valid writes of the current values must not fault.
    let good: [(&str, u32, u64); 3] = [
        ("EFER (unchanged)", EFER, efer),
        ("PAT (unchanged)", PAT, pat),
        ("DEBUGCTL = 0", DEBUGCTL, 0),
    ];
    for (what, msr, value) in good {
        // SAFETY: rewrites the value the MSR already has (DEBUGCTL: the reset
        // value), which changes nothing.
        if let Some(f) = unsafe { wrmsr(msr, value) } {
            t.fail(format_args!("wrmsr {} raised vector {}", what, f.vector));
        }
    }
    if rdmsr(EFER).ok() != Some(efer) || rdmsr(PAT).ok() != Some(pat) {
        t.fail(format_args!("EFER or PAT changed by the writes"));
    }
}

fn main(_cmdline: &'static str, _ram_size: u64) -> i32 {
    let mut t = Tally::default();
    for (start, end) in RANGES {
        for msr in start..end {
            t.read(msr);
        }
    }
    for msr in ODD {
        t.read(msr);
    }
    println!("msrsweep: {} readable, {} #GP", t.readable, t.gp);
    check_values(&mut t);
    check_writes(&mut t);
    if t.failures == 0 {
        println!("msrsweep: PASS");
        0
    } else {
        println!("msrsweep: FAIL {} checks", t.failures);
        1
    }
}
