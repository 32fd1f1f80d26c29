//! RDMSR/WRMSR: a short list of virtualized MSRs; everything else injects
//! #GP, so a guest never sees or changes a host value (SDM Vol. 4).
use super::outcome::{Inject, Rip, Write};
use super::vmexit::{Exit, Info};
use super::{Guest, Outcome};
use crate::vmx::run::{RAX, RCX, RDX};
use arch::msr as m;

/// EFER bits a guest may set: SCE, LME, LMA (ignored on write), NXE.
const EFER_ALLOWED: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11);
const EFER_NXE: u64 = 1 << 11;
const IA32_MCG_CAP: u32 = 0x179;
const IA32_MCG_STATUS: u32 = 0x17A;

/// IA32_MISC_ENABLE (SDM Vol. 4 Table 2-2) as a vCPU without thermal
/// monitoring, EST, MONITOR/MWAIT, turbo or a PMU has it.
pub mod misc {
    pub const FAST_STRINGS: u64 = 1 << 0;
    pub const AUTO_THERMAL: u64 = 1 << 3;
    /// Read-only: performance monitoring available (0: no PMU is offered).
    pub const PERFMON: u64 = 1 << 7;
    /// Read-only 1: BTS and PEBS unavailable.
    pub const BTS_UNAVAILABLE: u64 = 1 << 11;
    pub const PEBS_UNAVAILABLE: u64 = 1 << 12;
    /// R/W only where CPUID.1:ECX.MONITOR can be 1; guests never get it, so
    /// this reads 0 and setting it is #GP, as on a CPU without MONITOR.
    pub const MONITOR_FSM: u64 = 1 << 18;
    pub const LIMIT_CPUID_MAXVAL: u64 = 1 << 22;
    pub const XTPR_DISABLE: u64 = 1 << 23;
    pub const XD_DISABLE: u64 = 1 << 34;
    /// Bits software may change.
    pub const RW: u64 =
        FAST_STRINGS | AUTO_THERMAL | LIMIT_CPUID_MAXVAL | XTPR_DISABLE | XD_DISABLE;
    /// Read-only bits: a write leaves them as they are.
    pub const RO: u64 = PERFMON | BTS_UNAVAILABLE | PEBS_UNAVAILABLE;
    /// Power-up value: fast strings and automatic thermal control on.
    pub const RESET: u64 = FAST_STRINGS | AUTO_THERMAL | BTS_UNAVAILABLE | PEBS_UNAVAILABLE;

    /// The new value of a WRMSR, or None for #GP (a reserved bit set).
    pub fn write(old: u64, value: u64) -> Option<u64> {
        if value & !(RW | RO) != 0 {
            return None;
        }
        Some((old & !RW) | (value & RW))
    }
}

/// MSR state the VMCS doesn't hold, per vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrState {
    pub misc_enable: u64,
}

impl Default for MsrState {
    fn default() -> Self {
        MsrState {
            misc_enable: misc::RESET,
        }
    }
}

/// Whether `v` is canonical for `width` linear-address bits.
pub fn canonical(v: u64, width: u8) -> bool {
    let shift = 64 - u32::from(width.clamp(32, 64));
    ((v << shift) as i64 >> shift) as u64 == v
}

/// The CPU's linear-address width (CPUID.80000008H:EAX[15:8]); WRMSR of an
/// address checks against it (SDM Vol. 2B WRMSR, Vol. 3A 3.3.7.1).
pub(crate) fn linear_width() -> u8 {
    let w = (arch::cpuid::cpuid(0x8000_0008, 0).eax >> 8) as u8;
    if w == 0 {
        48
    } else {
        w
    }
}

/// The guest's MAXPHYADDR (CPUID.80000008H:EAX[7:0], passed through).
pub fn maxphyaddr() -> u8 {
    let w = arch::cpuid::cpuid(0x8000_0008, 0).eax as u8;
    if w == 0 {
        36
    } else {
        w.min(52)
    }
}

/// IA32_APIC_BASE may not set bits at or above MAXPHYADDR (SDM Vol. 3A
/// 11.4.4); the local APIC model checks the others.
pub fn apic_base_within(value: u64, maxphyaddr: u8) -> bool {
    value >> maxphyaddr.min(63) == 0
}

fn valid_pat(v: u64) -> bool {
    (0..8).all(|i| matches!((v >> (8 * i)) & 0xFF, 0 | 1 | 4 | 5 | 6 | 7))
}

/// The value a guest reads, or None for #GP. `vmcs`: the value of an MSR
/// the VMCS holds (the TSC offset for the TSC), as the exit decoded it.
pub fn read<G: Guest>(g: &mut G, msr: u32, vmcs: u64) -> Option<u64> {
    Some(match msr {
        0x10 => arch::regs::rdtsc().wrapping_add(vmcs),
        m::IA32_APIC_BASE => g.lapic().apic_base(),
        m::IA32_TSC_DEADLINE => {
            let now = g.guest_tsc();
            g.lapic().read_tsc_deadline(now)
        }
        0x800..=0x8FF => {
            let now = g.guest_tsc();
            g.lapic().read_msr(msr, now)?
        }
        // Locked with VMX off: guests can't use VT-x.
        m::IA32_FEATURE_CONTROL => m::feature_control::LOCK,
        0x17 | 0x8B => 0,
        m::IA32_MISC_ENABLE => g.msrs().misc_enable,
        // No machine-check banks, nothing logged (CPUID hides MCE/MCA).
        IA32_MCG_CAP | IA32_MCG_STATUS => 0,
        m::IA32_PAT
        | m::IA32_EFER
        | m::IA32_SYSENTER_CS
        | m::IA32_SYSENTER_ESP
        | m::IA32_SYSENTER_EIP => vmcs,
        m::IA32_DEBUGCTL => 0,
        _ => return None,
    })
}

/// A guest write: the VMCS writes it makes, or None for #GP. `cr0` and
/// `efer`: the guest's CR0 and EFER before a write of EFER.
pub fn write<G: Guest>(g: &mut G, msr: u32, value: u64, cr0: u64, efer: u64) -> Option<Outcome> {
    let done = Outcome::resume;
    Some(match msr {
        0x10 => done().write(Write::TscOffset(value.wrapping_sub(arch::regs::rdtsc()))),
        m::IA32_APIC_BASE => {
            if !apic_base_within(value, maxphyaddr()) {
                return None;
            }
            g.lapic().set_apic_base(value).ok()?;
            done()
        }
        m::IA32_TSC_DEADLINE => {
            g.lapic_write_tsc_deadline(value);
            done()
        }
        0x800..=0x8FF => {
            g.lapic_write_msr(msr, value).ok()?;
            done()
        }
        0x8B => done(),
        m::IA32_MISC_ENABLE => {
            let new = misc::write(g.msrs().misc_enable, value)?;
            g.msrs().misc_enable = new;
            done()
        }
        IA32_MCG_STATUS if value == 0 => done(),
        m::IA32_PAT if valid_pat(value) => done().write(Write::Pat(value)),
        m::IA32_EFER => {
            if value & !EFER_ALLOWED != 0 {
                return None;
            }
            // NX is reserved while IA32_MISC_ENABLE.XD_DISABLE is set.
            if value & EFER_NXE != 0 && g.msrs().misc_enable & misc::XD_DISABLE != 0 {
                return None;
            }
            let paging = cr0 & arch::regs::cr0::PG != 0;
            // LME can't change while paging is on (SDM Vol. 3A 10.8.5).
            if paging && (value ^ efer) & (1 << 8) != 0 {
                return None;
            }
            let lma = paging && value & (1 << 8) != 0;
            let new = (value & !(1 << 10)) | if lma { 1 << 10 } else { 0 };
            done().write(Write::EntryIa32e(lma)).write(Write::Efer(new))
        }
        m::IA32_SYSENTER_CS => done().write(Write::SysenterCs(value as u32)),
        // Addresses: a non-canonical one is #GP (SDM Vol. 2B WRMSR), and
        // would fail the next VM entry (SDM Vol. 3C 27.3.1.1).
        m::IA32_SYSENTER_ESP if canonical(value, linear_width()) => {
            done().write(Write::SysenterEsp(value))
        }
        m::IA32_SYSENTER_EIP if canonical(value, linear_width()) => {
            done().write(Write::SysenterEip(value))
        }
        // Debug features are not virtualized: accept "off".
        m::IA32_DEBUGCTL if value == 0 => done(),
        _ => return None,
    })
}

/// RDMSR: EDX:EAX, or #GP (SDM Vol. 2B RDMSR).
// Inlined into its class path of `exits::run`, where the apply step then
// sees the Outcome's constant parts (no writes, the RIP advance).
#[inline(always)]
pub fn rdmsr<G: Guest>(g: &mut G, e: &Exit) -> Outcome {
    let Info::Rdmsr { vmcs } = e.info else {
        return super::wrong_info(e);
    };
    let msr = g.gprs()[RCX] as u32;
    match read(g, msr, vmcs) {
        Some(val) => {
            let gpr = g.gprs();
            gpr[RAX] = val & 0xFFFF_FFFF;
            gpr[RDX] = val >> 32;
            Outcome::advance(e.len)
        }
        None => Outcome::fault(Inject::GP0),
    }
}

/// WRMSR of EDX:EAX, or #GP (SDM Vol. 2B WRMSR).
// Not inlined into the dispatcher: its Outcome is then built in the
// caller's return slot, not copied there.
#[inline(never)]
pub fn wrmsr<G: Guest>(g: &mut G, e: &Exit) -> Outcome {
    let Info::Wrmsr { cr0, efer } = e.info else {
        return super::wrong_info(e);
    };
    let gpr = g.gprs();
    let msr = gpr[RCX] as u32;
    let value = (gpr[RDX] << 32) | (gpr[RAX] & 0xFFFF_FFFF);
    match write(g, msr, value, cr0, efer) {
        Some(o) => o.rip(Rip::Advance(e.len)),
        None => Outcome::fault(Inject::GP0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misc_enable_bits() {
        let r = misc::RESET;
        assert_eq!(r, 0x1809, "fast strings, thermal control, no BTS/PEBS");
        // R/W bits take the written value.
        assert_eq!(misc::write(r, r & !1), Some(r & !1));
        assert_eq!(
            misc::write(r, r | misc::LIMIT_CPUID_MAXVAL | misc::XD_DISABLE),
            Some(r | misc::LIMIT_CPUID_MAXVAL | misc::XD_DISABLE)
        );
        // Read-only bits keep their value whatever is written.
        assert_eq!(misc::write(r, 0), Some(r & misc::RO));
        assert_eq!(misc::write(r, r | misc::PERFMON), Some(r));
        // Reserved (and unsupported-feature) bits are #GP.
        for bit in [1, 2, 9, 16, 18, 38, 63] {
            assert_eq!(misc::write(r, r | (1 << bit)), None, "bit {bit}");
        }
    }

    #[test]
    fn canonical_addresses() {
        assert!(canonical(0x0000_7FFF_FFFF_FFFF, 48));
        assert!(canonical(0xFFFF_8000_0000_0000, 48));
        assert!(!canonical(0x0000_8000_0000_0000, 48));
        assert!(!canonical(0x8000_0000_0000_0000, 48));
        assert!(canonical(0x00FF_FFFF_FFFF_FFFF, 57));
        assert!(!canonical(0x0100_0000_0000_0000, 57));
    }

    #[test]
    fn apic_base_physical_width() {
        assert!(apic_base_within(0xFEE0_0900, 36));
        assert!(apic_base_within(0xF_FEE0_0900, 36));
        assert!(!apic_base_within(0x10_FEE0_0900, 36));
        assert!(apic_base_within(0xF_FFFF_FFFF_F900, 52));
    }

    #[test]
    fn pat_validation() {
        assert!(super::valid_pat(0x0007_0406_0007_0406));
        assert!(!super::valid_pat(0x0007_0406_0007_0402));
        assert!(!super::valid_pat(0x0800_0000_0000_0000));
    }
}
