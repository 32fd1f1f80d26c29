//! Conformance guest: control registers, CR8/TPR, XSAVE enumeration and the
//! virtualized MSRs behave as the SDM says, checked from inside:
//! - CPUID leaf 0DH describes exactly the XCR0 components XSETBV accepts, its
//!   sizes match the sub-leaves (standard and compacted) and what XSAVEC
//!   really writes; CPUID.1:ECX.OSXSAVE follows CR4; leaf 1/7 features whose
//!   state isn't offered are hidden.
//! - MOV to CR0/CR4/CR8 that the SDM forbids raise #GP(0) (clearing PG in
//!   64-bit mode, PCIDE with CR3[11:0] != 0, clearing PAE in IA-32e mode,
//!   CR8 bits 63:4, features CPUID hides).
//! - CR8 is the local APIC's TPR (xAPIC MMIO 0x80, x2APIC MSR 0x808) in both
//!   directions, and it masks interrupt delivery.
//! - IA32_MISC_ENABLE, IA32_MCG_CAP/STATUS, IA32_APIC_BASE (reserved bits,
//!   CPUID.1:EDX.APIC, relocating the xAPIC page), SYSENTER_ESP/EIP.
//!
//! Prints `crmsr: PASS` and exits 0, or a `crmsr: FAIL ...` line per failed
//! check and exits 1.
#![no_std]
#![no_main]

use core::arch::x86_64::{__cpuid_count, CpuidResult};
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::cpu::{self, CR4_OSXSAVE};
use guest_rt::idt::{self, Fault};
use guest_rt::{println, probe};

guest_rt::entry!(main);

const GP: u8 = 13;

const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_VMXE: u64 = 1 << 13;
const CR4_PCIDE: u64 = 1 << 17;
const CR4_PKE: u64 = 1 << 22;

const APIC_BASE: u32 = 0x1B;
const MCG_CAP: u32 = 0x179;
const MCG_STATUS: u32 = 0x17A;
const SYSENTER_CS: u32 = 0x174;
const SYSENTER_ESP: u32 = 0x175;
const SYSENTER_EIP: u32 = 0x176;
const MISC_ENABLE: u32 = 0x1A0;
const PAT: u32 = 0x277;
const EFER: u32 = 0xC000_0080;
const X2APIC_TPR: u32 = 0x808;

const BASE_BSP: u64 = 1 << 8;
const BASE_EXTD: u64 = 1 << 10;
const BASE_EN: u64 = 1 << 11;
const XAPIC: u64 = 0xFEE0_0000;
/// Where the xAPIC page is moved to: in the MMIO hole, no other device.
const RELOCATED: u64 = 0xFEB0_0000;
const TPR: u64 = 0x80;
const VERSION: u64 = 0x30;
const SVR: u64 = 0xF0;
const ICR_LOW: u64 = 0x300;

/// Priority classes 4 and 6.
const VEC_LOW: u8 = 0x45;
const VEC_HIGH: u8 = 0x65;

static IRQS: AtomicU64 = AtomicU64::new(0);

// Counts an interrupt and ends it at the xAPIC (EOI at 0xFEE000B0).
global_asm!(
    ".global crmsr_irq",
    "crmsr_irq:",
    "push rax",
    "push rcx",
    "lock inc qword ptr [rip + {count}]",
    "mov rax, 0xFEE000B0",
    "xor ecx, ecx",
    "mov dword ptr [rax], ecx",
    "pop rcx",
    "pop rax",
    "iretq",
    count = sym IRQS,
);

unsafe extern "C" {
    fn crmsr_irq();
}

#[repr(C, align(64))]
struct Area([u8; 8192]);
static mut AREA: Area = Area([0; 8192]);

struct Checks {
    failures: u32,
}

impl Checks {
    fn check(&mut self, what: &str, ok: bool) {
        if !ok {
            println!("crmsr: FAIL {}", what);
            self.failures += 1;
        }
    }

    fn eq(&mut self, what: &str, got: u64, want: u64) {
        if got != want {
            println!("crmsr: FAIL {}: got {:#x}, want {:#x}", what, got, want);
            self.failures += 1;
        }
    }

    /// The instruction must have raised #GP(0).
    fn gp(&mut self, what: &str, f: Option<Fault>) {
        match f {
            Some(f) if f.vector == GP && f.error == 0 => {}
            Some(f) => {
                println!(
                    "crmsr: FAIL {}: vector {} error {:#x}, want #GP(0)",
                    what, f.vector, f.error
                );
                self.failures += 1;
            }
            None => {
                println!("crmsr: FAIL {}: no #GP", what);
                self.failures += 1;
            }
        }
    }

    /// The instruction must have completed.
    fn none(&mut self, what: &str, f: Option<Fault>) {
        if let Some(f) = f {
            println!(
                "crmsr: FAIL {}: vector {} error {:#x}",
                what, f.vector, f.error
            );
            self.failures += 1;
        }
    }
}

fn cpuid(leaf: u32, sub: u32) -> CpuidResult {
    __cpuid_count(leaf, sub)
}

fn rdmsr(msr: u32) -> Result<u64, Fault> {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR only reads an MSR or faults; the probe catches faults.
    let f = unsafe { probe!("rdmsr"; in("ecx") msr, out("eax") lo, out("edx") hi) };
    match f {
        None => Ok((u64::from(hi) << 32) | u64::from(lo)),
        Some(f) => Err(f),
    }
}

/// # Safety
/// If it does not fault, writing `value` must not break the guest.
unsafe fn wrmsr(msr: u32, value: u64) -> Option<Fault> {
    // SAFETY: per the caller; the probe catches faults.
    unsafe {
        probe!("wrmsr"; in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32)
    }
}

/// # Safety
/// If it does not fault, the new XCR0 must not break the guest (it uses no
/// vector state of its own: the target is soft-float).
unsafe fn xsetbv(value: u64) -> Option<Fault> {
    // SAFETY: per the caller.
    unsafe { probe!("xsetbv"; in("ecx") 0, in("eax") value as u32, in("edx") (value >> 32) as u32) }
}

/// # Safety
/// If it does not fault, the value must keep paging and protection working.
unsafe fn mov_cr0(v: u64) -> Option<Fault> {
    // SAFETY: per the caller.
    unsafe { probe!("mov cr0, {v}"; v = in(reg) v) }
}

/// # Safety
/// As for `mov_cr0`.
unsafe fn mov_cr4(v: u64) -> Option<Fault> {
    // SAFETY: per the caller.
    unsafe { probe!("mov cr4, {v}"; v = in(reg) v) }
}

fn mov_cr8(v: u64) -> Option<Fault> {
    // SAFETY: CR8 only sets the task priority (or faults).
    unsafe { probe!("mov cr8, {v}"; v = in(reg) v) }
}

fn read_cr8() -> u64 {
    let v: u64;
    // SAFETY: reads the task priority.
    unsafe { asm!("mov {}, cr8", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reads CR3.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// # Safety
/// `v` must address the current page tables.
unsafe fn write_cr3(v: u64) {
    // SAFETY: per the caller.
    unsafe { asm!("mov cr3, {}", in(reg) v, options(nostack, preserves_flags)) };
}

fn mmio_read(addr: u64) -> u32 {
    // SAFETY: an identity-mapped local APIC register.
    unsafe { (addr as *const u32).read_volatile() }
}

fn mmio_write(addr: u64, v: u32) {
    // SAFETY: an identity-mapped local APIC register.
    unsafe { (addr as *mut u32).write_volatile(v) }
}

/// Opens an interrupt window of a few instructions.
fn window() {
    // SAFETY: interrupts arrive only at vectors with gates (the self-IPIs).
    unsafe {
        asm!(
            "sti", "nop", "nop", "nop", "nop", "nop", "nop", "nop", "nop", "cli"
        )
    };
}

fn self_ipi(vector: u8) {
    mmio_write(XAPIC + ICR_LOW, (1 << 18) | u32::from(vector));
}

fn xsave_checks(c: &mut Checks) {
    let l1 = cpuid(1, 0);
    if l1.ecx & (1 << 26) == 0 {
        c.check("CPUID reports XSAVE", false);
        return;
    }
    let osxsave = cpu::read_cr4() & CR4_OSXSAVE != 0;
    c.eq(
        "CPUID.1:ECX.OSXSAVE before = CR4.OSXSAVE",
        u64::from(l1.ecx >> 27 & 1),
        u64::from(osxsave),
    );
    // SAFETY: XSAVE is supported; OSXSAVE only enables XSETBV/XGETBV/XSAVE*.
    unsafe { cpu::write_cr4(cpu::read_cr4() | CR4_OSXSAVE) };
    c.eq(
        "CPUID.1:ECX.OSXSAVE with CR4.OSXSAVE set",
        u64::from(cpuid(1, 0).ecx >> 27 & 1),
        1,
    );

    let d0 = cpuid(0xD, 0);
    let offered = u64::from(d0.eax) | (u64::from(d0.edx) << 32);
    println!("crmsr: xcr0 components offered {:#x}", offered);
    c.eq("x87 and SSE offered", offered & 3, 3);
    // Every offered component has a geometry, every other sub-leaf is zero.
    let mut std_end = 576u32;
    for i in 2..63u32 {
        let s = cpuid(0xD, i);
        if offered & (1 << i) != 0 {
            let ok = s.eax != 0 && s.ebx >= 576 && s.ecx & 1 == 0;
            if !ok {
                println!(
                    "crmsr: FAIL component {} offered but sub-leaf is {:#x} {:#x} {:#x}",
                    i, s.eax, s.ebx, s.ecx
                );
                c.failures += 1;
            }
            std_end = std_end.max(s.ebx + s.eax);
        } else if s.eax | s.ebx | s.ecx | s.edx != 0 {
            println!(
                "crmsr: FAIL sub-leaf {} of a component not offered is not 0",
                i
            );
            c.failures += 1;
        }
    }
    // SAFETY: the offered components; this guest uses no vector state.
    c.none("xsetbv of every offered component", unsafe {
        xsetbv(offered)
    });
    let d0 = cpuid(0xD, 0);
    c.eq(
        "leaf 0DH.0 EBX for the full XCR0",
        u64::from(d0.ebx),
        u64::from(std_end),
    );
    c.eq("leaf 0DH.0 ECX", u64::from(d0.ecx), u64::from(std_end));
    // SAFETY: x87 | SSE is always valid.
    c.none("xsetbv 3", unsafe { xsetbv(3) });
    c.eq(
        "leaf 0DH.0 EBX for XCR0 = 3",
        u64::from(cpuid(0xD, 0).ebx),
        576,
    );
    // Components not offered can't be enabled.
    for bits in [0x18u64, 1 << 8, 1 << 9, 0xE0, 1 << 17 | 1 << 18, 1 << 62] {
        if offered & bits != bits {
            let v = if bits & 0xE0 != 0 { bits | 7 } else { bits | 3 };
            // SAFETY: must fault; were it accepted, nothing here uses that state.
            c.gp("xsetbv of a component not offered", unsafe { xsetbv(v) });
        }
    }
    // Features whose state isn't offered aren't reported.
    let l7 = cpuid(7, 0);
    if l1.ecx & (1 << 28) != 0 || l7.ebx & (1 << 5) != 0 {
        c.eq("AVX/AVX2 reported: AVX state offered", offered & 4, 4);
    }
    if l7.ebx & (1 << 16) != 0 {
        c.eq("AVX-512F reported: its state offered", offered & 0xE0, 0xE0);
    }
    if l7.ecx & (1 << 3) != 0 {
        c.eq("PKU reported: PKRU offered", offered & 0x200, 0x200);
    }
    if l7.ebx & (1 << 14) != 0 {
        c.eq("MPX reported: its state offered", offered & 0x18, 0x18);
    }
    let d1 = cpuid(0xD, 1);
    if d1.eax & (1 << 3) == 0 {
        c.eq(
            "no XSAVES: no IA32_XSS components",
            u64::from(d1.ecx | d1.edx),
            0,
        );
    }
    if d1.eax & (1 << 1) != 0 {
        xsavec_checks(c, offered);
    }
    // SAFETY: every offered component, as a kernel would leave it.
    c.none("xsetbv of every offered component", unsafe {
        xsetbv(offered)
    });
}

/// What XSAVEC writes matches the compacted size leaf 0DH.1:EBX reports.
fn xsavec_checks(c: &mut Checks, offered: u64) {
    let l7 = cpuid(7, 0);
    let avx512 = offered & 0xE0 == 0xE0 && l7.ebx & (1 << 16) != 0;
    let xcr0 = offered & if avx512 { 0xE7 } else { 7 };
    // SAFETY: offered components; no vector state of this guest's own.
    c.none("xsetbv for XSAVEC", unsafe { xsetbv(xcr0) });
    let mut size = 576u32;
    for i in 2..63u32 {
        if xcr0 & (1 << i) != 0 {
            let s = cpuid(0xD, i);
            if s.ecx & 2 != 0 {
                size = size.next_multiple_of(64);
            }
            size += s.eax;
        }
    }
    let ebx = cpuid(0xD, 1).ebx;
    c.eq(
        "leaf 0DH.1 EBX = compacted size from the sub-leaves",
        u64::from(ebx),
        u64::from(size),
    );
    // Put every component in use, the last one with all ones.
    if xcr0 & 4 != 0 {
        // SAFETY: AVX state is enabled; the guest keeps nothing in vector registers.
        unsafe { asm!("vpcmpeqb ymm0, ymm0, ymm0", "vpcmpeqb ymm15, ymm15, ymm15") };
    }
    if avx512 {
        // SAFETY: AVX-512 state is enabled; as above.
        unsafe {
            asm!(
                "kxnorw k1, k1, k1",
                "vpternlogd zmm0, zmm0, zmm0, 0xff",
                "vpternlogd zmm31, zmm31, zmm31, 0xff"
            )
        };
    }
    let area = &raw mut AREA;
    // SAFETY: single vCPU; nothing else uses the area.
    unsafe { (*area).0.fill(0xAA) };
    // SAFETY: the area is 64-byte aligned and 8 KiB, more than any size here.
    unsafe { asm!("xsavec64 [{}]", in(reg) area, in("eax") !0u32, in("edx") !0u32) };
    // SAFETY: written by XSAVEC above, read only here.
    let a = unsafe { &(*area).0 };
    let xcomp = u64::from_le_bytes(a[520..528].try_into().unwrap_or([0; 8]));
    c.eq("XSAVEC XCOMP_BV", xcomp, (1 << 63) | xcr0);
    let n = (ebx as usize).min(a.len());
    c.check(
        "XSAVEC wrote up to the reported size",
        n > 576 && a[n - 1] != 0xAA,
    );
    c.check(
        "XSAVEC wrote nothing beyond the reported size",
        a[n..].iter().all(|&b| b == 0xAA),
    );
}

fn cr_checks(c: &mut Checks) {
    let cr0 = cpu::read_cr0();
    let cr4 = cpu::read_cr4();
    // SAFETY: must fault (clearing PG in 64-bit mode); were it accepted the
    // guest would be gone either way.
    c.gp("clear CR0.PG in 64-bit mode", unsafe {
        mov_cr0(cr0 & !CR0_PG)
    });
    // SAFETY: must fault (reserved bit 32).
    c.gp("CR0 bit 32", unsafe { mov_cr0(cr0 | 1 << 32) });
    // SAFETY: must fault (leaving IA-32e mode by clearing PAE).
    c.gp("clear CR4.PAE in IA-32e mode", unsafe {
        mov_cr4(cr4 & !CR4_PAE)
    });
    // SAFETY: must fault (VMX is hidden).
    c.gp("set CR4.VMXE", unsafe { mov_cr4(cr4 | CR4_VMXE) });
    if cr4 & CR4_PCIDE == 0 {
        let cr3 = read_cr3();
        // SAFETY: PWT on the top-level table changes no translation.
        unsafe { write_cr3(cr3 | 0x8) };
        // SAFETY: must fault: CR3[11:0] != 0 (or no PCID at all).
        c.gp("set CR4.PCIDE with CR3[11:0] != 0", unsafe {
            mov_cr4(cr4 | CR4_PCIDE)
        });
        // SAFETY: the same tables.
        unsafe { write_cr3(cr3) };
    }
    if cpuid(7, 0).ecx & (1 << 3) == 0 {
        // SAFETY: must fault: CPUID reports no PKU.
        c.gp("set CR4.PKE without PKU", unsafe { mov_cr4(cr4 | CR4_PKE) });
    } else {
        // SAFETY: PKRU is 0 at reset: every key allows everything.
        c.none("set CR4.PKE", unsafe { mov_cr4(cr4 | CR4_PKE) });
        c.eq(
            "OSPKE follows CR4.PKE",
            u64::from(cpuid(7, 0).ecx >> 4 & 1),
            1,
        );
        // SAFETY: back to the original value.
        c.none("clear CR4.PKE", unsafe { mov_cr4(cr4) });
    }
    c.gp("CR8 bit 4", mov_cr8(0x10));
    c.gp("CR8 bit 63", mov_cr8(1 << 63));
    c.eq("CR0 unchanged", cpu::read_cr0(), cr0);
    c.eq("CR4 unchanged", cpu::read_cr4(), cr4);
}

fn tpr_checks(c: &mut Checks) {
    // SAFETY: the handler saves what it uses and returns with IRETQ; no
    // interrupt is pending at these vectors yet.
    unsafe {
        idt::set_gate(VEC_LOW, crmsr_irq as *const () as u64);
        idt::set_gate(VEC_HIGH, crmsr_irq as *const () as u64);
    }
    mmio_write(XAPIC + SVR, 0x1FF);
    c.none("mov cr8, 5", mov_cr8(5));
    c.eq("CR8 = 5", read_cr8(), 5);
    c.eq(
        "xAPIC TPR after mov cr8, 5",
        u64::from(mmio_read(XAPIC + TPR)),
        0x50,
    );
    mmio_write(XAPIC + TPR, 0x3C);
    c.eq("CR8 after TPR = 0x3c", read_cr8(), 3);

    // Masking: TPR class 5 holds back class 4, not class 6.
    IRQS.store(0, Ordering::SeqCst);
    c.none("mov cr8, 5", mov_cr8(5));
    self_ipi(VEC_LOW);
    window();
    c.eq(
        "class-4 interrupt held back by CR8 = 5",
        IRQS.load(Ordering::SeqCst),
        0,
    );
    self_ipi(VEC_HIGH);
    window();
    c.eq(
        "class-6 interrupt delivered over CR8 = 5",
        IRQS.load(Ordering::SeqCst),
        1,
    );
    c.none("mov cr8, 0", mov_cr8(0));
    window();
    c.eq(
        "class-4 interrupt delivered after CR8 = 0",
        IRQS.load(Ordering::SeqCst),
        2,
    );
    // The same through the MMIO TPR.
    mmio_write(XAPIC + TPR, 0x50);
    self_ipi(VEC_LOW);
    window();
    c.eq(
        "class-4 interrupt held back by TPR = 0x50",
        IRQS.load(Ordering::SeqCst),
        2,
    );
    c.eq("CR8 after TPR = 0x50", read_cr8(), 5);
    c.none("mov cr8, 0", mov_cr8(0));
    window();
    c.eq(
        "class-4 interrupt delivered after CR8 = 0",
        IRQS.load(Ordering::SeqCst),
        3,
    );
}

fn apic_base_checks(c: &mut Checks) {
    let base = match rdmsr(APIC_BASE) {
        Ok(b) => b,
        Err(_) => {
            c.check("rdmsr IA32_APIC_BASE", false);
            return;
        }
    };
    c.eq(
        "APIC base enabled BSP at 0xfee00000",
        base,
        XAPIC | BASE_EN | BASE_BSP,
    );
    c.eq(
        "CPUID.1:EDX.APIC with the APIC enabled",
        u64::from(cpuid(1, 0).edx >> 9 & 1),
        1,
    );
    let maxphy = (cpuid(0x8000_0008, 0).eax & 0xFF).clamp(36, 52);
    // SAFETY: each must fault; were one accepted the APIC would move out of reach only.
    unsafe {
        c.gp(
            "APIC base above MAXPHYADDR",
            wrmsr(APIC_BASE, base | 1 << maxphy),
        );
        c.gp("APIC base bit 9", wrmsr(APIC_BASE, base | 1 << 9));
        c.gp("APIC base bit 0", wrmsr(APIC_BASE, base | 1));
    }
    // Relocation: the page answers at the new base.
    c.none("mov cr8, 2", mov_cr8(2));
    // SAFETY: moves the xAPIC page; nothing here touches it at the old base
    // until it is moved back.
    c.none("relocate the APIC", unsafe {
        wrmsr(APIC_BASE, RELOCATED | BASE_EN | BASE_BSP)
    });
    c.eq(
        "APIC base reads back relocated",
        rdmsr(APIC_BASE).unwrap_or(0),
        RELOCATED | BASE_EN | BASE_BSP,
    );
    c.eq(
        "relocated page: version",
        u64::from(mmio_read(RELOCATED + VERSION) & 0xFF),
        0x14,
    );
    c.eq(
        "relocated page: TPR = CR8 << 4",
        u64::from(mmio_read(RELOCATED + TPR)),
        0x20,
    );
    mmio_write(RELOCATED + TPR, 0x40);
    c.eq("CR8 after a TPR write at the relocated page", read_cr8(), 4);
    // SAFETY: back to the default.
    c.none("APIC back to 0xfee00000", unsafe { wrmsr(APIC_BASE, base) });
    c.eq(
        "TPR at the default page again",
        u64::from(mmio_read(XAPIC + TPR)),
        0x40,
    );
    c.none("mov cr8, 0", mov_cr8(0));

    // Disabled globally: CPUID stops reporting an APIC.
    // SAFETY: no interrupts are expected while it is off.
    c.none("disable the APIC", unsafe {
        wrmsr(APIC_BASE, base & !BASE_EN)
    });
    c.eq(
        "CPUID.1:EDX.APIC with the APIC disabled",
        u64::from(cpuid(1, 0).edx >> 9 & 1),
        0,
    );
    // SAFETY: back on (xAPIC mode).
    c.none("enable the APIC", unsafe { wrmsr(APIC_BASE, base) });
    c.eq(
        "CPUID.1:EDX.APIC enabled again",
        u64::from(cpuid(1, 0).edx >> 9 & 1),
        1,
    );

    // x2APIC: TPR MSR 0x808 and CR8 are the same register.
    if cpuid(1, 0).ecx & (1 << 21) != 0 {
        // SAFETY: xAPIC -> x2APIC is allowed; the xAPIC page isn't used after.
        c.none("enter x2APIC mode", unsafe {
            wrmsr(APIC_BASE, base | BASE_EXTD)
        });
        // SAFETY: the TPR only masks interrupts (none are expected).
        c.none("x2APIC TPR = 0x70", unsafe { wrmsr(X2APIC_TPR, 0x70) });
        c.eq("CR8 after x2APIC TPR = 0x70", read_cr8(), 7);
        c.none("mov cr8, 2", mov_cr8(2));
        c.eq(
            "x2APIC TPR after mov cr8, 2",
            rdmsr(X2APIC_TPR).unwrap_or(!0),
            0x20,
        );
        c.none("mov cr8, 0", mov_cr8(0));
    }
}

fn msr_checks(c: &mut Checks) {
    match rdmsr(MISC_ENABLE) {
        Ok(v) => {
            c.eq(
                "MISC_ENABLE fast strings, no BTS/PEBS, no PMU",
                v & 0x1881,
                0x1801,
            );
            let max = cpuid(0, 0).eax;
            // SAFETY: limit CPUID maxval only changes CPUID.0:EAX.
            c.none("MISC_ENABLE limit CPUID maxval", unsafe {
                wrmsr(MISC_ENABLE, v | 1 << 22)
            });
            c.eq(
                "MISC_ENABLE bit 22 reads back",
                rdmsr(MISC_ENABLE).unwrap_or(0) >> 22 & 1,
                1,
            );
            c.check("CPUID.0:EAX limited to 2", cpuid(0, 0).eax <= 2);
            // SAFETY: fast strings off only slows REP MOVS/STOS.
            c.none("MISC_ENABLE fast strings off", unsafe {
                wrmsr(MISC_ENABLE, v & !1)
            });
            c.eq(
                "MISC_ENABLE fast strings off reads back",
                rdmsr(MISC_ENABLE).unwrap_or(!0),
                v & !1,
            );
            c.eq(
                "CPUID.0:EAX again",
                u64::from(cpuid(0, 0).eax),
                u64::from(max),
            );
            // SAFETY: must fault (reserved bits).
            unsafe {
                c.gp("MISC_ENABLE bit 1", wrmsr(MISC_ENABLE, v | 1 << 1));
                c.gp("MISC_ENABLE bit 63", wrmsr(MISC_ENABLE, v | 1 << 63));
            }
            // SAFETY: the original value.
            c.none("MISC_ENABLE restored", unsafe { wrmsr(MISC_ENABLE, v) });
            c.eq(
                "MISC_ENABLE restored reads back",
                rdmsr(MISC_ENABLE).unwrap_or(0),
                v,
            );
        }
        Err(_) => c.check("rdmsr MISC_ENABLE", false),
    }
    c.eq(
        "MCG_CAP reads 0 (no banks)",
        rdmsr(MCG_CAP).unwrap_or(!0),
        0,
    );
    c.eq("MCG_STATUS reads 0", rdmsr(MCG_STATUS).unwrap_or(!0), 0);
    // SAFETY: 0 is the value it has; the others must fault.
    unsafe {
        c.none("MCG_STATUS = 0", wrmsr(MCG_STATUS, 0));
        c.gp("MCG_STATUS = 1", wrmsr(MCG_STATUS, 1));
        c.gp("MCG_CAP is read-only", wrmsr(MCG_CAP, 0));
    }
    // SAFETY: SYSENTER is unused in 64-bit mode by this guest; the
    // non-canonical values must fault.
    unsafe {
        c.gp(
            "SYSENTER_ESP non-canonical",
            wrmsr(SYSENTER_ESP, 0x8000_0000_0000_0000),
        );
        c.gp(
            "SYSENTER_EIP non-canonical",
            wrmsr(SYSENTER_EIP, 0x0000_8000_0000_0000),
        );
        c.none(
            "SYSENTER_EIP canonical",
            wrmsr(SYSENTER_EIP, 0xFFFF_8000_0000_1000),
        );
    }
    c.eq(
        "SYSENTER_EIP reads back",
        rdmsr(SYSENTER_EIP).unwrap_or(0),
        0xFFFF_8000_0000_1000,
    );
    vmcs_msr_checks(c);
}

/// MSRs the VMCS holds (PAT, SYSENTER_CS/ESP, EFER): what a write puts
/// there is what a read gives back, and an invalid write leaves it alone.
fn vmcs_msr_checks(c: &mut Checks) {
    // SAFETY: SYSENTER is unused by this 64-bit guest.
    unsafe {
        c.none("SYSENTER_CS = 0x10", wrmsr(SYSENTER_CS, 0x10));
        c.none(
            "SYSENTER_ESP canonical",
            wrmsr(SYSENTER_ESP, 0xFFFF_8000_0000_2000),
        );
    }
    c.eq(
        "SYSENTER_CS reads back",
        rdmsr(SYSENTER_CS).unwrap_or(0),
        0x10,
    );
    c.eq(
        "SYSENTER_ESP reads back",
        rdmsr(SYSENTER_ESP).unwrap_or(0),
        0xFFFF_8000_0000_2000,
    );
    let pat = rdmsr(PAT).unwrap_or(0);
    c.eq("PAT power-on value", pat, 0x0007_0406_0007_0406);
    // PA1 = WC (1) instead of WT (4): no page of this guest uses PAT entry 1.
    let wc = (pat & !0xFF00) | 0x0100;
    // SAFETY: see above; the old value is restored.
    unsafe {
        c.none("PAT with WC", wrmsr(PAT, wc));
        c.eq("PAT reads back", rdmsr(PAT).unwrap_or(0), wc);
        c.gp("PAT type 2 is reserved", wrmsr(PAT, (pat & !0xFF) | 0x02));
        c.gp("PAT type 8 is reserved", wrmsr(PAT, (pat & !0xFF) | 0x08));
        c.eq("PAT unchanged by #GP", rdmsr(PAT).unwrap_or(0), wc);
        c.none("PAT restored", wrmsr(PAT, pat));
    }
    c.eq("PAT restored reads back", rdmsr(PAT).unwrap_or(0), pat);
    // 64-bit mode: LME and LMA set (SDM Vol. 3A 10.8.5).
    let efer = rdmsr(EFER).unwrap_or(0);
    c.eq("EFER.LME and LMA", efer & 0x500, 0x500);
    // SAFETY: must fault: clearing LME with paging on; bit 12 reserved.
    unsafe {
        c.gp(
            "EFER.LME cleared with paging on",
            wrmsr(EFER, efer & !0x100),
        );
        c.gp("EFER bit 12", wrmsr(EFER, efer | 1 << 12));
        // Writing the same value (LMA is ignored on write) is fine.
        c.none("EFER rewritten", wrmsr(EFER, efer & !0x400));
    }
    c.eq("EFER unchanged", rdmsr(EFER).unwrap_or(0), efer);
}

fn main(_cmdline: &'static str, _ram_size: u64) -> i32 {
    let mut c = Checks { failures: 0 };
    xsave_checks(&mut c);
    cr_checks(&mut c);
    tpr_checks(&mut c);
    msr_checks(&mut c);
    apic_base_checks(&mut c);
    if c.failures == 0 {
        println!("crmsr: PASS");
        0
    } else {
        println!("crmsr: FAIL {} checks", c.failures);
        1
    }
}
