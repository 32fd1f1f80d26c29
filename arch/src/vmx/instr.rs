//! VMX instructions returning `Result` with the failure decoded (SDM Vol. 3C 31.2, 31.4).
use core::arch::asm;
use core::fmt;

/// VM-instruction error numbers (SDM Vol. 3C 31.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmInstructionError {
    VmcallInVmxRoot,
    VmclearInvalidAddress,
    VmclearVmxonPointer,
    VmlaunchNonClearVmcs,
    VmresumeNonLaunchedVmcs,
    VmresumeAfterVmxoff,
    EntryInvalidControlFields,
    EntryInvalidHostStateFields,
    VmptrldInvalidAddress,
    VmptrldVmxonPointer,
    VmptrldIncorrectRevision,
    UnsupportedVmcsComponent,
    VmwriteReadOnlyComponent,
    VmxonInVmxRoot,
    EntryInvalidExecutiveVmcs,
    EntryNonLaunchedExecutiveVmcs,
    EntryExecutiveVmcsNotVmxon,
    VmcallNonClearVmcs,
    VmcallInvalidExitControls,
    VmcallIncorrectMsegRevision,
    VmxoffUnderDualMonitor,
    VmcallInvalidSmmMonitorFeatures,
    EntryInvalidExecControlsInExecutiveVmcs,
    EntryEventsBlockedByMovSs,
    InvalidOperandToInveptInvvpid,
    Unknown(u32),
}

impl VmInstructionError {
    pub fn from_number(n: u32) -> Self {
        use VmInstructionError::*;
        match n {
            1 => VmcallInVmxRoot,
            2 => VmclearInvalidAddress,
            3 => VmclearVmxonPointer,
            4 => VmlaunchNonClearVmcs,
            5 => VmresumeNonLaunchedVmcs,
            6 => VmresumeAfterVmxoff,
            7 => EntryInvalidControlFields,
            8 => EntryInvalidHostStateFields,
            9 => VmptrldInvalidAddress,
            10 => VmptrldVmxonPointer,
            11 => VmptrldIncorrectRevision,
            12 => UnsupportedVmcsComponent,
            13 => VmwriteReadOnlyComponent,
            15 => VmxonInVmxRoot,
            16 => EntryInvalidExecutiveVmcs,
            17 => EntryNonLaunchedExecutiveVmcs,
            18 => EntryExecutiveVmcsNotVmxon,
            19 => VmcallNonClearVmcs,
            20 => VmcallInvalidExitControls,
            22 => VmcallIncorrectMsegRevision,
            23 => VmxoffUnderDualMonitor,
            24 => VmcallInvalidSmmMonitorFeatures,
            25 => EntryInvalidExecControlsInExecutiveVmcs,
            26 => EntryEventsBlockedByMovSs,
            28 => InvalidOperandToInveptInvvpid,
            n => Unknown(n),
        }
    }

    pub fn description(&self) -> &'static str {
        use VmInstructionError::*;
        match self {
            VmcallInVmxRoot => "VMCALL executed in VMX root operation",
            VmclearInvalidAddress => "VMCLEAR with invalid physical address",
            VmclearVmxonPointer => "VMCLEAR with VMXON pointer",
            VmlaunchNonClearVmcs => "VMLAUNCH with non-clear VMCS",
            VmresumeNonLaunchedVmcs => "VMRESUME with non-launched VMCS",
            VmresumeAfterVmxoff => "VMRESUME after VMXOFF",
            EntryInvalidControlFields => "VM entry with invalid control field(s)",
            EntryInvalidHostStateFields => "VM entry with invalid host-state field(s)",
            VmptrldInvalidAddress => "VMPTRLD with invalid physical address",
            VmptrldVmxonPointer => "VMPTRLD with VMXON pointer",
            VmptrldIncorrectRevision => "VMPTRLD with incorrect VMCS revision identifier",
            UnsupportedVmcsComponent => "VMREAD/VMWRITE from/to unsupported VMCS component",
            VmwriteReadOnlyComponent => "VMWRITE to read-only VMCS component",
            VmxonInVmxRoot => "VMXON executed in VMX root operation",
            EntryInvalidExecutiveVmcs => "VM entry with invalid executive-VMCS pointer",
            EntryNonLaunchedExecutiveVmcs => "VM entry with non-launched executive VMCS",
            EntryExecutiveVmcsNotVmxon => "VM entry with executive-VMCS pointer not VMXON pointer",
            VmcallNonClearVmcs => "VMCALL with non-clear VMCS",
            VmcallInvalidExitControls => "VMCALL with invalid VM-exit control fields",
            VmcallIncorrectMsegRevision => "VMCALL with incorrect MSEG revision identifier",
            VmxoffUnderDualMonitor => "VMXOFF under dual-monitor treatment",
            VmcallInvalidSmmMonitorFeatures => "VMCALL with invalid SMM-monitor features",
            EntryInvalidExecControlsInExecutiveVmcs => {
                "VM entry with invalid VM-execution controls in executive VMCS"
            }
            EntryEventsBlockedByMovSs => "VM entry with events blocked by MOV SS",
            InvalidOperandToInveptInvvpid => "invalid operand to INVEPT/INVVPID",
            Unknown(_) => "unknown VM-instruction error",
        }
    }
}

/// Why a VMX instruction failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFail {
    /// VMfailInvalid (CF = 1): no current VMCS to hold an error number.
    Invalid,
    /// VMfailValid (ZF = 1) with the decoded VM-instruction error field.
    Valid(VmInstructionError),
}

impl fmt::Display for VmFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmFail::Invalid => write!(f, "VMfailInvalid (no current VMCS)"),
            VmFail::Valid(VmInstructionError::Unknown(n)) => write!(f, "VMfailValid: error {n}"),
            VmFail::Valid(e) => write!(f, "VMfailValid: {}", e.description()),
        }
    }
}

/// Turns RFLAGS after a VMX instruction into a result (SDM 31.2).
#[cold]
fn check(rflags: u64) -> Result<(), VmFail> {
    if rflags & 1 != 0 {
        Err(VmFail::Invalid)
    } else if rflags & (1 << 6) != 0 {
        let n = vmread(super::vmcs::ro::VM_INSTRUCTION_ERROR.0).unwrap_or(0) as u32;
        Err(VmFail::Valid(VmInstructionError::from_number(n)))
    } else {
        Ok(())
    }
}

/// # Safety
/// CR4.VMXE must be set, the region must be a 4 KiB aligned, dedicated page holding the revision ID.
pub unsafe fn vmxon(region_phys: u64) -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: caller guarantees the preconditions.
    unsafe { asm!("vmxon [{}]", "pushfq", "pop {}", in(reg) &region_phys, lateout(reg) rflags) };
    check(rflags)
}

/// # Safety
/// Must be in VMX root operation; afterwards no VMCS may be used.
pub unsafe fn vmxoff() -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: caller guarantees the preconditions.
    unsafe { asm!("vmxoff", "pushfq", "pop {}", lateout(reg) rflags) };
    check(rflags)
}

/// # Safety
/// `vmcs_phys` must be a VMCS region owned by the caller.
pub unsafe fn vmclear(vmcs_phys: u64) -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: caller guarantees the preconditions.
    unsafe { asm!("vmclear [{}]", "pushfq", "pop {}", in(reg) &vmcs_phys, lateout(reg) rflags) };
    check(rflags)
}

/// # Safety
/// `vmcs_phys` must be a VMCS region owned by the caller and not current on another CPU.
pub unsafe fn vmptrld(vmcs_phys: u64) -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: caller guarantees the preconditions.
    unsafe { asm!("vmptrld [{}]", "pushfq", "pop {}", in(reg) &vmcs_phys, lateout(reg) rflags) };
    check(rflags)
}

/// Reads a VMCS field of the current VMCS.
#[inline]
pub fn vmread(field: u32) -> Result<u64, VmFail> {
    let value: u64;
    let failed: u8;
    // SAFETY: VMREAD only reads the current VMCS; outside VMX operation it raises #UD,
    // which the hypervisor never does (it only calls this after VMXON).
    // SETBE: CF (VMfailInvalid) or ZF (VMfailValid); cheaper on the exit path
    // than PUSHFQ/POP of RFLAGS.
    unsafe {
        asm!(
            "vmread {v}, {f}",
            "setbe {e}",
            v = lateout(reg) value,
            f = in(reg) u64::from(field),
            e = lateout(reg_byte) failed,
            options(nostack),
        )
    };
    if failed != 0 {
        return Err(vmread_failed());
    }
    Ok(value)
}

/// Which failure a failed VMREAD was, without reading the error field (no
/// recursion): VMfailInvalid exactly when no VMCS is current (VMPTRST stores
/// all-ones), else VMfailValid, which VMREAD gives only for an unsupported
/// field (SDM Vol. 3C 31.3, VMREAD).
#[cold]
#[inline(never)]
fn vmread_failed() -> VmFail {
    let mut ptr: u64 = 0;
    // SAFETY: VMPTRST stores the current-VMCS pointer into the local; in VMX
    // operation (where VMREAD just ran) it can't fail.
    unsafe { asm!("vmptrst [{}]", in(reg) &mut ptr, options(nostack)) };
    if ptr == u64::MAX {
        VmFail::Invalid
    } else {
        VmFail::Valid(VmInstructionError::UnsupportedVmcsComponent)
    }
}

/// Writes a VMCS field of the current VMCS.
///
/// # Safety
/// Changes guest, host or control state of the current VMCS.
#[inline]
pub unsafe fn vmwrite(field: u32, value: u64) -> Result<(), VmFail> {
    // SAFETY: caller guarantees the write is intended. On the exit path:
    // the success test is one JBE (CF or ZF set: failed); the error is
    // decoded out of line.
    unsafe {
        asm!(
            "vmwrite {f}, {v}",
            "jbe {fail}",
            f = in(reg) u64::from(field),
            v = in(reg) value,
            fail = label {
                return Err(vmwrite_failed());
            },
            options(nostack),
        )
    };
    Ok(())
}

/// Which failure a failed VMWRITE was: VMfailValid leaves its number in the
/// VM-instruction error field of the current VMCS; VMfailInvalid means no
/// VMCS is current, and then that VMREAD fails too (SDM Vol. 3C 31.2, 31.4).
#[cold]
#[inline(never)]
fn vmwrite_failed() -> VmFail {
    match vmread(super::vmcs::ro::VM_INSTRUCTION_ERROR.0) {
        Ok(n) => VmFail::Valid(VmInstructionError::from_number(n as u32)),
        Err(_) => VmFail::Invalid,
    }
}

/// INVEPT type (SDM 31.3).
#[derive(Clone, Copy, Debug)]
pub enum InveptType {
    SingleContext = 1,
    AllContext = 2,
}

/// # Safety
/// Must be in VMX root operation with INVEPT supported.
pub unsafe fn invept(kind: InveptType, eptp: u64) -> Result<(), VmFail> {
    let desc: [u64; 2] = [eptp, 0];
    let rflags: u64;
    // SAFETY: caller guarantees the preconditions.
    unsafe {
        asm!("invept {}, [{}]", "pushfq", "pop {}", in(reg) kind as u64, in(reg) &desc, lateout(reg) rflags)
    };
    check(rflags)
}

/// INVVPID type (SDM 31.3).
#[derive(Clone, Copy, Debug)]
pub enum InvvpidType {
    IndividualAddress = 0,
    SingleContext = 1,
    AllContext = 2,
    SingleContextRetainingGlobals = 3,
}

/// # Safety
/// Must be in VMX root operation with INVVPID supported.
pub unsafe fn invvpid(kind: InvvpidType, vpid: u16, addr: u64) -> Result<(), VmFail> {
    let desc: [u64; 2] = [u64::from(vpid), addr];
    let rflags: u64;
    // SAFETY: caller guarantees the preconditions.
    unsafe {
        asm!("invvpid {}, [{}]", "pushfq", "pop {}", in(reg) kind as u64, in(reg) &desc, lateout(reg) rflags)
    };
    check(rflags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_instruction_errors() {
        assert_eq!(
            VmInstructionError::from_number(7),
            VmInstructionError::EntryInvalidControlFields
        );
        assert_eq!(
            VmInstructionError::from_number(8),
            VmInstructionError::EntryInvalidHostStateFields
        );
        assert_eq!(
            VmInstructionError::from_number(99),
            VmInstructionError::Unknown(99)
        );
        let s = alloc_fmt(VmFail::Valid(VmInstructionError::from_number(8)));
        assert!(s.contains("host-state"));
    }

    fn alloc_fmt(f: VmFail) -> String {
        format!("{f}")
    }
}
