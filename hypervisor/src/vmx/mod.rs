//! VMX operation on the host side: the capability check that decides whether
//! the hypervisor can run at all, and VMXON on each CPU (SDM Vol. 3C 24.7, 24.8).
pub mod entry_check;
pub mod run;

use crate::mm;
use arch::cpuid::{cpuid, leaf1_ecx};
use arch::msr::{self, feature_control as fc, rdmsr, wrmsr};
use arch::regs::{self, cr4};
use arch::vmx::caps::{ControlCaps, ControlKind, EptVpidCap, VmxBasic, VmxMisc};
use arch::vmx::vmcs::bits;
use core::fmt;

/// Everything the hypervisor needs to know about this CPU's VT-x.
#[derive(Clone, Copy, Debug)]
pub struct VmxCaps {
    pub basic: VmxBasic,
    pub pin: ControlCaps,
    pub primary: ControlCaps,
    pub secondary: ControlCaps,
    pub exit: ControlCaps,
    pub entry: ControlCaps,
    pub misc: VmxMisc,
    pub ept: EptVpidCap,
    pub feature_control: u64,
    pub vpid: bool,
}

/// Why VT-x can't be used: each a clear, specific message for the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {
    NotIntel([u8; 12]),
    NoVmx,
    LockedOff(u64),
    NoSecondaryControls,
    NoEpt,
    NoUnrestrictedGuest,
    NoPreemptionTimer,
    EptFeatures(&'static str),
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsupported::NotIntel(v) => write!(
                f,
                "VT-x (VMX) is not supported by this CPU (vendor {}; CPUID.1:ECX.VMX[bit 5] = 0); ferrovisor needs Intel VT-x with EPT",
                core::str::from_utf8(v).unwrap_or("?")
            ),
            Unsupported::NoVmx => write!(
                f,
                "VT-x (VMX) is not supported by this CPU (CPUID.1:ECX.VMX[bit 5] = 0); enable it in the firmware setup or, when nested, pass -cpu host,+vmx"
            ),
            Unsupported::LockedOff(v) => write!(
                f,
                "VT-x is disabled and locked by the firmware (IA32_FEATURE_CONTROL = {v:#x}: lock bit set, VMX-outside-SMX clear); enable VT-x in the firmware setup"
            ),
            Unsupported::NoSecondaryControls => write!(f, "this CPU's VT-x has no secondary processor-based controls, so no EPT"),
            Unsupported::NoEpt => write!(f, "this CPU's VT-x lacks EPT (extended page tables), which guest isolation requires"),
            Unsupported::NoUnrestrictedGuest => write!(f, "this CPU's VT-x lacks unrestricted guest, needed to run real-mode guests"),
            Unsupported::NoPreemptionTimer => write!(f, "this CPU's VT-x lacks the VMX-preemption timer, which the scheduler uses"),
            Unsupported::EptFeatures(what) => write!(f, "this CPU's EPT lacks {what}"),
        }
    }
}

fn read_control(basic: &VmxBasic, kind: ControlKind) -> ControlCaps {
    // SAFETY: the VMX capability MSRs exist whenever CPUID reports VMX.
    ControlCaps::from_msr(kind, unsafe { rdmsr(basic.control_msr(kind)) })
}

/// Reads and checks this CPU's VT-x capabilities.
pub fn probe() -> Result<VmxCaps, Unsupported> {
    let vendor = arch::cpuid::vendor();
    if cpuid(1, 0).ecx & leaf1_ecx::VMX == 0 {
        return Err(if &vendor == b"GenuineIntel" {
            Unsupported::NoVmx
        } else {
            Unsupported::NotIntel(vendor)
        });
    }
    // SAFETY: all MSRs below exist when CPUID reports VMX (SDM Appendix A).
    let (feature_control, basic, misc) = unsafe {
        (
            rdmsr(msr::IA32_FEATURE_CONTROL),
            VmxBasic::from_msr(rdmsr(msr::IA32_VMX_BASIC)),
            VmxMisc::from_msr(rdmsr(msr::IA32_VMX_MISC)),
        )
    };
    if feature_control & fc::LOCK != 0 && feature_control & fc::VMX_OUTSIDE_SMX == 0 {
        return Err(Unsupported::LockedOff(feature_control));
    }
    let pin = read_control(&basic, ControlKind::PinBased);
    let primary = read_control(&basic, ControlKind::PrimaryProcBased);
    if !primary.supports(bits::primary::ACTIVATE_SECONDARY_CONTROLS) {
        return Err(Unsupported::NoSecondaryControls);
    }
    let secondary = read_control(&basic, ControlKind::SecondaryProcBased);
    if !secondary.supports(bits::secondary::ENABLE_EPT) {
        return Err(Unsupported::NoEpt);
    }
    if !secondary.supports(bits::secondary::UNRESTRICTED_GUEST) {
        return Err(Unsupported::NoUnrestrictedGuest);
    }
    if !pin.supports(bits::pin::PREEMPTION_TIMER) {
        return Err(Unsupported::NoPreemptionTimer);
    }
    // SAFETY: IA32_VMX_EPT_VPID_CAP exists when EPT is supported (SDM A.10).
    let ept = EptVpidCap::from_msr(unsafe { rdmsr(msr::IA32_VMX_EPT_VPID_CAP) });
    if !ept.page_walk_4 {
        return Err(Unsupported::EptFeatures("4-level page walks"));
    }
    if !ept.memory_type_wb {
        return Err(Unsupported::EptFeatures(
            "write-back paging-structure memory type",
        ));
    }
    if !ept.invept || !ept.invept_single_context {
        return Err(Unsupported::EptFeatures("INVEPT single-context"));
    }
    let vpid = secondary.supports(bits::secondary::ENABLE_VPID)
        && ept.invvpid
        && ept.invvpid_single_context;
    Ok(VmxCaps {
        basic,
        pin,
        primary,
        secondary,
        exit: read_control(&basic, ControlKind::Exit),
        entry: read_control(&basic, ControlKind::Entry),
        misc,
        ept,
        feature_control,
        vpid,
    })
}

static CAPS: spin::Once<VmxCaps> = spin::Once::new();

pub fn set_caps(c: VmxCaps) {
    CAPS.call_once(|| c);
}

pub fn caps() -> &'static VmxCaps {
    CAPS.get()
        .expect("VMX capabilities probed on the BSP first")
}

/// Why VMXON failed on a CPU.
#[derive(Debug)]
pub enum EnableError {
    LockedOff(u64),
    Fixed(arch::vmx::caps::FixedBitError),
    NoMemory,
    Vmxon(arch::vmx::instr::VmFail),
}

impl fmt::Display for EnableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnableError::LockedOff(v) => {
                write!(f, "IA32_FEATURE_CONTROL = {v:#x} is locked with VMX off")
            }
            EnableError::Fixed(e) => write!(f, "{e}"),
            EnableError::NoMemory => write!(f, "no memory for the VMXON region"),
            EnableError::Vmxon(e) => write!(f, "VMXON failed: {e}"),
        }
    }
}

/// Enters VMX root operation on the executing CPU; returns the VMXON region.
pub fn enable_on_this_cpu() -> Result<u64, EnableError> {
    let caps = caps();
    // SAFETY: IA32_FEATURE_CONTROL exists on VMX-capable CPUs. Firmware that
    // leaves it unlocked (Bochs' OVMF does) expects the OS to set and lock it.
    unsafe {
        let v = rdmsr(msr::IA32_FEATURE_CONTROL);
        if v & fc::LOCK == 0 {
            wrmsr(
                msr::IA32_FEATURE_CONTROL,
                v | fc::LOCK | fc::VMX_OUTSIDE_SMX,
            );
        } else if v & fc::VMX_OUTSIDE_SMX == 0 {
            return Err(EnableError::LockedOff(v));
        }
    }
    // CR0/CR4 must satisfy the fixed-bit MSRs in VMX operation (SDM A.7, A.8).
    // SAFETY: the fixed-bit MSRs exist; setting CR4.VMXE and the fixed bits
    // keeps paging and protection as they are.
    unsafe {
        let c4 = regs::read_cr4() | cr4::VMXE;
        let (f0, f1) = (
            rdmsr(msr::IA32_VMX_CR4_FIXED0),
            rdmsr(msr::IA32_VMX_CR4_FIXED1),
        );
        regs::write_cr4(arch::vmx::caps::fixed_bits(f0, f1, c4));
        let (f0, f1) = (
            rdmsr(msr::IA32_VMX_CR0_FIXED0),
            rdmsr(msr::IA32_VMX_CR0_FIXED1),
        );
        let c0 = arch::vmx::caps::fixed_bits(f0, f1, regs::read_cr0());
        regs::write_cr0(c0);
    }
    let region = mm::alloc_zeroed_page().ok_or(EnableError::NoMemory)?.0;
    // SAFETY: the page was just allocated for this purpose; the first dword
    // holds the VMCS revision identifier (SDM 25.11.5).
    unsafe {
        (region as *mut u32).write_volatile(caps.basic.revision_id);
        arch::vmx::instr::vmxon(region).map_err(EnableError::Vmxon)?;
    }
    Ok(region)
}
