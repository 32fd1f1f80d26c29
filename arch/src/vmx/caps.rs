//! VMX capability MSRs and their decoding (Intel SDM Vol. 3D, Appendix A).
//!
//! Everything here is pure: callers read the MSRs and hand the raw values in,
//! so the decoding is unit-tested on the host.

use core::fmt;

use crate::msr::{
    IA32_VMX_BASIC, IA32_VMX_CR0_FIXED0, IA32_VMX_CR0_FIXED1, IA32_VMX_CR4_FIXED0,
    IA32_VMX_CR4_FIXED1, IA32_VMX_ENTRY_CTLS, IA32_VMX_EPT_VPID_CAP, IA32_VMX_EXIT_CTLS,
    IA32_VMX_MISC, IA32_VMX_PINBASED_CTLS, IA32_VMX_PROCBASED_CTLS, IA32_VMX_PROCBASED_CTLS2,
    IA32_VMX_TRUE_ENTRY_CTLS, IA32_VMX_TRUE_EXIT_CTLS, IA32_VMX_TRUE_PINBASED_CTLS,
    IA32_VMX_TRUE_PROCBASED_CTLS,
};

const fn bit(value: u64, n: u32) -> bool {
    value & (1 << n) != 0
}

// ---------------------------------------------------------------------------
// IA32_VMX_BASIC
// ---------------------------------------------------------------------------

/// Memory type the processor uses to access the VMCS and related structures
/// (IA32_VMX_BASIC bits 53:50, SDM A.1; encodings from Table A-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmcsMemoryType {
    /// 0: uncacheable.
    Uncacheable,
    /// 6: write-back.
    WriteBack,
    /// Any other encoding (reserved by the SDM).
    Reserved(u8),
}

/// Decoded IA32_VMX_BASIC (MSR 0x480, SDM A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxBasic {
    /// Bits 30:0: VMCS revision identifier, written to the first dword of
    /// the VMXON region and of every VMCS.
    pub revision_id: u32,
    /// Bits 44:32: bytes to allocate for the VMXON region and each VMCS
    /// (at most 4096).
    pub vmcs_size: u32,
    /// Bit 48: VMXON/VMCS/bitmap addresses are limited to 32 bits.
    pub phys_addr_32bit: bool,
    /// Bit 49: dual-monitor treatment of SMIs and SMM is supported.
    pub dual_monitor: bool,
    /// Bits 53:50: memory type for VMCS accesses.
    pub memory_type: VmcsMemoryType,
    /// Bit 54: VM exits due to INS/OUTS report instruction information.
    pub ins_outs_info: bool,
    /// Bit 55: the IA32_VMX_TRUE_*_CTLS MSRs exist and must be used to learn
    /// which default1 controls may be cleared (SDM A.2).
    pub true_controls: bool,
    /// Bit 56: VM entry may deliver a hardware exception with or without an
    /// error code regardless of vector.
    pub no_err_code_check: bool,
}

impl VmxBasic {
    /// The MSR this is decoded from.
    pub const MSR: u32 = IA32_VMX_BASIC;

    /// Decodes the raw MSR value.
    pub const fn from_msr(value: u64) -> Self {
        let mt = ((value >> 50) & 0xF) as u8;
        Self {
            revision_id: (value & 0x7FFF_FFFF) as u32,
            vmcs_size: ((value >> 32) & 0x1FFF) as u32,
            phys_addr_32bit: bit(value, 48),
            dual_monitor: bit(value, 49),
            memory_type: match mt {
                0 => VmcsMemoryType::Uncacheable,
                6 => VmcsMemoryType::WriteBack,
                other => VmcsMemoryType::Reserved(other),
            },
            ins_outs_info: bit(value, 54),
            true_controls: bit(value, 55),
            no_err_code_check: bit(value, 56),
        }
    }

    /// The MSR to read for `kind`'s capabilities: the TRUE variant when bit 55
    /// says it exists (SDM A.2), else the legacy one.
    pub const fn control_msr(&self, kind: ControlKind) -> u32 {
        match (self.true_controls, kind.true_msr()) {
            (true, Some(msr)) => msr,
            _ => kind.msr(),
        }
    }
}

// ---------------------------------------------------------------------------
// VM-execution, VM-exit and VM-entry controls
// ---------------------------------------------------------------------------

/// The 32-bit VMX control fields whose capabilities are reported as an
/// allowed-0/allowed-1 pair (SDM A.3 to A.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    /// Pin-based VM-execution controls (SDM A.3.1).
    PinBased,
    /// Primary processor-based VM-execution controls (SDM A.3.2).
    PrimaryProcBased,
    /// Secondary processor-based VM-execution controls (SDM A.3.3).
    SecondaryProcBased,
    /// Primary VM-exit controls (SDM A.4.1).
    Exit,
    /// VM-entry controls (SDM A.5).
    Entry,
}

impl ControlKind {
    /// All kinds, in VMCS-setup order.
    pub const ALL: [ControlKind; 5] = [
        ControlKind::PinBased,
        ControlKind::PrimaryProcBased,
        ControlKind::SecondaryProcBased,
        ControlKind::Exit,
        ControlKind::Entry,
    ];

    /// Human name used in errors.
    pub const fn name(self) -> &'static str {
        match self {
            ControlKind::PinBased => "pin-based",
            ControlKind::PrimaryProcBased => "primary processor-based",
            ControlKind::SecondaryProcBased => "secondary processor-based",
            ControlKind::Exit => "VM-exit",
            ControlKind::Entry => "VM-entry",
        }
    }

    /// The legacy capability MSR.
    pub const fn msr(self) -> u32 {
        match self {
            ControlKind::PinBased => IA32_VMX_PINBASED_CTLS,
            ControlKind::PrimaryProcBased => IA32_VMX_PROCBASED_CTLS,
            ControlKind::SecondaryProcBased => IA32_VMX_PROCBASED_CTLS2,
            ControlKind::Exit => IA32_VMX_EXIT_CTLS,
            ControlKind::Entry => IA32_VMX_ENTRY_CTLS,
        }
    }

    /// The TRUE capability MSR, if this kind has one (SDM A.2: the secondary
    /// controls have no default1 bits, hence no TRUE MSR).
    pub const fn true_msr(self) -> Option<u32> {
        match self {
            ControlKind::PinBased => Some(IA32_VMX_TRUE_PINBASED_CTLS),
            ControlKind::PrimaryProcBased => Some(IA32_VMX_TRUE_PROCBASED_CTLS),
            ControlKind::SecondaryProcBased => None,
            ControlKind::Exit => Some(IA32_VMX_TRUE_EXIT_CTLS),
            ControlKind::Entry => Some(IA32_VMX_TRUE_ENTRY_CTLS),
        }
    }

    /// Name of a control bit, for the well-known ones (SDM Vol. 3C §25.6.1,
    /// §25.6.2, §25.7.1, §25.8.1).
    pub const fn bit_name(self, bit: u32) -> Option<&'static str> {
        let name = match self {
            ControlKind::PinBased => match bit {
                0 => "external-interrupt exiting",
                3 => "NMI exiting",
                5 => "virtual NMIs",
                6 => "activate VMX-preemption timer",
                7 => "process posted interrupts",
                _ => return None,
            },
            ControlKind::PrimaryProcBased => match bit {
                2 => "interrupt-window exiting",
                3 => "use TSC offsetting",
                7 => "HLT exiting",
                9 => "INVLPG exiting",
                10 => "MWAIT exiting",
                11 => "RDPMC exiting",
                12 => "RDTSC exiting",
                15 => "CR3-load exiting",
                16 => "CR3-store exiting",
                17 => "activate tertiary controls",
                19 => "CR8-load exiting",
                20 => "CR8-store exiting",
                21 => "use TPR shadow",
                22 => "NMI-window exiting",
                23 => "MOV-DR exiting",
                24 => "unconditional I/O exiting",
                25 => "use I/O bitmaps",
                27 => "monitor trap flag",
                28 => "use MSR bitmaps",
                29 => "MONITOR exiting",
                30 => "PAUSE exiting",
                31 => "activate secondary controls",
                _ => return None,
            },
            ControlKind::SecondaryProcBased => match bit {
                0 => "virtualize APIC accesses",
                1 => "enable EPT",
                2 => "descriptor-table exiting",
                3 => "enable RDTSCP",
                4 => "virtualize x2APIC mode",
                5 => "enable VPID",
                6 => "WBINVD exiting",
                7 => "unrestricted guest",
                8 => "APIC-register virtualization",
                9 => "virtual-interrupt delivery",
                10 => "PAUSE-loop exiting",
                11 => "RDRAND exiting",
                12 => "enable INVPCID",
                13 => "enable VM functions",
                14 => "VMCS shadowing",
                15 => "enable ENCLS exiting",
                16 => "RDSEED exiting",
                17 => "enable PML",
                18 => "EPT-violation #VE",
                19 => "conceal VMX from PT",
                20 => "enable XSAVES/XRSTORS",
                22 => "mode-based execute control for EPT",
                23 => "sub-page write permissions for EPT",
                24 => "Intel PT uses guest physical addresses",
                25 => "use TSC scaling",
                26 => "enable user wait and pause",
                27 => "enable PCONFIG",
                28 => "enable ENCLV exiting",
                _ => return None,
            },
            ControlKind::Exit => match bit {
                2 => "save debug controls",
                9 => "host address-space size",
                12 => "load IA32_PERF_GLOBAL_CTRL",
                15 => "acknowledge interrupt on exit",
                18 => "save IA32_PAT",
                19 => "load IA32_PAT",
                20 => "save IA32_EFER",
                21 => "load IA32_EFER",
                22 => "save VMX-preemption timer value",
                23 => "clear IA32_BNDCFGS",
                24 => "conceal VMX from PT",
                25 => "clear IA32_RTIT_CTL",
                26 => "clear IA32_LBR_CTL",
                28 => "load CET state",
                29 => "load PKRS",
                31 => "activate secondary controls",
                _ => return None,
            },
            ControlKind::Entry => match bit {
                2 => "load debug controls",
                9 => "IA-32e mode guest",
                10 => "entry to SMM",
                11 => "deactivate dual-monitor treatment",
                13 => "load IA32_PERF_GLOBAL_CTRL",
                14 => "load IA32_PAT",
                15 => "load IA32_EFER",
                16 => "load IA32_BNDCFGS",
                17 => "conceal VMX from PT",
                18 => "load IA32_RTIT_CTL",
                20 => "load CET state",
                21 => "load guest IA32_LBR_CTL",
                22 => "load PKRS",
                _ => return None,
            },
        };
        Some(name)
    }
}

impl fmt::Display for ControlKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Capabilities of one control field, from its capability MSR (SDM A.3-A.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlCaps {
    /// Which control field these describe (used to name errors).
    pub kind: ControlKind,
    /// Bits 31:0: allowed 0-settings. A 1 here means the control must be 1.
    pub allowed0: u32,
    /// Bits 63:32: allowed 1-settings. A 0 here means the control must be 0.
    pub allowed1: u32,
}

/// A control the caller requires but the processor cannot set to 1, or a
/// capability MSR that contradicts itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlError {
    /// Control field name, e.g. "secondary processor-based".
    pub control: &'static str,
    /// The offending bit number.
    pub bit: u32,
    /// Name of that bit when it is a well-known one.
    pub bit_name: Option<&'static str>,
    /// What is wrong with it.
    pub reason: ControlErrorReason,
}

/// Why a control bit could not be provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlErrorReason {
    /// Required by the caller, but allowed-1 is 0 (not supported).
    Unsupported,
    /// The MSR reports the bit as both must-be-1 and must-be-0.
    Contradictory,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} control bit {}", self.control, self.bit)?;
        if let Some(name) = self.bit_name {
            write!(f, " ({name})")?;
        }
        match self.reason {
            ControlErrorReason::Unsupported => f.write_str(" is required but not supported"),
            ControlErrorReason::Contradictory => {
                f.write_str(" is reported as both must-be-1 and must-be-0")
            }
        }
    }
}

impl ControlCaps {
    /// Splits a capability MSR value (SDM A.3.1: low dword allowed-0, high
    /// dword allowed-1).
    pub const fn from_msr(kind: ControlKind, value: u64) -> Self {
        Self {
            kind,
            allowed0: value as u32,
            allowed1: (value >> 32) as u32,
        }
    }

    /// True if every bit in `mask` may be set to 1.
    pub const fn supports(&self, mask: u32) -> bool {
        self.allowed1 & mask == mask
    }

    /// True if every bit in `mask` must be 1.
    pub const fn requires(&self, mask: u32) -> bool {
        self.allowed0 & mask == mask
    }

    /// Computes the value to write: `wanted | required`, plus the must-be-1
    /// bits, minus the bits that must be 0 (SDM A.2, A.3). Bits in `wanted`
    /// that cannot be set are dropped; the lowest bit of `required` that
    /// cannot be set is an error.
    pub fn adjust(&self, wanted: u32, required: u32) -> Result<u32, ControlError> {
        let contradictory = self.allowed0 & !self.allowed1;
        if contradictory != 0 {
            return Err(self.error(contradictory, ControlErrorReason::Contradictory));
        }
        let missing = required & !self.allowed1;
        if missing != 0 {
            return Err(self.error(missing, ControlErrorReason::Unsupported));
        }
        Ok(((wanted | required) | self.allowed0) & self.allowed1)
    }

    fn error(&self, mask: u32, reason: ControlErrorReason) -> ControlError {
        let bit = mask.trailing_zeros();
        ControlError {
            control: self.kind.name(),
            bit,
            bit_name: self.kind.bit_name(bit),
            reason,
        }
    }
}

// ---------------------------------------------------------------------------
// IA32_VMX_MISC
// ---------------------------------------------------------------------------

/// Decoded IA32_VMX_MISC (MSR 0x485, SDM A.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxMisc {
    /// Bits 4:0: the VMX-preemption timer counts down by 1 every time TSC
    /// bit `preemption_timer_rate` changes (rate = TSC / 2^X).
    pub preemption_timer_rate: u8,
    /// Bit 5: VM exits store IA32_EFER.LMA into the "IA-32e mode guest"
    /// entry control (1 whenever unrestricted guest is supported).
    pub stores_efer_lma: bool,
    /// Bit 6: activity state HLT supported.
    pub activity_hlt: bool,
    /// Bit 7: activity state shutdown supported.
    pub activity_shutdown: bool,
    /// Bit 8: activity state wait-for-SIPI supported.
    pub activity_wait_for_sipi: bool,
    /// Bit 14: Intel PT may be used in VMX operation.
    pub intel_pt: bool,
    /// Bit 15: RDMSR can read IA32_SMBASE in SMM.
    pub smbase_readable: bool,
    /// Bits 24:16: number of CR3-target values supported.
    pub cr3_target_count: u16,
    /// Bits 27:25: recommended maximum MSRs in each MSR-load/store list is
    /// 512 * (N + 1); this is that product.
    pub max_msr_list: u32,
    /// Bit 29: VMWRITE may write any VMCS field, including exit-information.
    pub vmwrite_any_field: bool,
    /// Bit 30: VM entry may inject software interrupts/exceptions with an
    /// instruction length of 0.
    pub zero_length_injection: bool,
    /// Bits 63:32: MSEG revision identifier.
    pub mseg_revision: u32,
}

impl VmxMisc {
    /// The MSR this is decoded from.
    pub const MSR: u32 = IA32_VMX_MISC;

    /// Decodes the raw MSR value.
    pub const fn from_msr(value: u64) -> Self {
        Self {
            preemption_timer_rate: (value & 0x1F) as u8,
            stores_efer_lma: bit(value, 5),
            activity_hlt: bit(value, 6),
            activity_shutdown: bit(value, 7),
            activity_wait_for_sipi: bit(value, 8),
            intel_pt: bit(value, 14),
            smbase_readable: bit(value, 15),
            cr3_target_count: ((value >> 16) & 0x1FF) as u16,
            max_msr_list: 512 * (((value >> 25) & 0x7) as u32 + 1),
            vmwrite_any_field: bit(value, 29),
            zero_length_injection: bit(value, 30),
            mseg_revision: (value >> 32) as u32,
        }
    }

    /// TSC ticks per preemption-timer tick.
    pub const fn tsc_ticks_per_timer_tick(&self) -> u64 {
        1 << self.preemption_timer_rate
    }
}

// ---------------------------------------------------------------------------
// IA32_VMX_EPT_VPID_CAP
// ---------------------------------------------------------------------------

/// Decoded IA32_VMX_EPT_VPID_CAP (MSR 0x48C, SDM A.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EptVpidCap {
    /// Bit 0: execute-only EPT translations.
    pub execute_only: bool,
    /// Bit 6: page-walk length of 4.
    pub page_walk_4: bool,
    /// Bit 7: page-walk length of 5.
    pub page_walk_5: bool,
    /// Bit 8: EPT paging structures may be uncacheable.
    pub memory_type_uc: bool,
    /// Bit 14: EPT paging structures may be write-back.
    pub memory_type_wb: bool,
    /// Bit 16: 2-MiB pages (EPT PDE with bit 7 set).
    pub pages_2m: bool,
    /// Bit 17: 1-GiB pages (EPT PDPTE with bit 7 set).
    pub pages_1g: bool,
    /// Bit 20: INVEPT is supported.
    pub invept: bool,
    /// Bit 21: accessed and dirty flags for EPT.
    pub accessed_dirty: bool,
    /// Bit 22: advanced VM-exit information for EPT violations.
    pub advanced_exit_info: bool,
    /// Bit 25: single-context INVEPT.
    pub invept_single_context: bool,
    /// Bit 26: all-context INVEPT.
    pub invept_all_context: bool,
    /// Bit 32: INVVPID is supported.
    pub invvpid: bool,
    /// Bit 40: individual-address INVVPID.
    pub invvpid_individual_address: bool,
    /// Bit 41: single-context INVVPID.
    pub invvpid_single_context: bool,
    /// Bit 42: all-context INVVPID.
    pub invvpid_all_context: bool,
    /// Bit 43: single-context-retaining-globals INVVPID.
    pub invvpid_single_context_retaining_globals: bool,
}

impl EptVpidCap {
    /// The MSR this is decoded from.
    pub const MSR: u32 = IA32_VMX_EPT_VPID_CAP;

    /// Decodes the raw MSR value.
    pub const fn from_msr(value: u64) -> Self {
        Self {
            execute_only: bit(value, 0),
            page_walk_4: bit(value, 6),
            page_walk_5: bit(value, 7),
            memory_type_uc: bit(value, 8),
            memory_type_wb: bit(value, 14),
            pages_2m: bit(value, 16),
            pages_1g: bit(value, 17),
            invept: bit(value, 20),
            accessed_dirty: bit(value, 21),
            advanced_exit_info: bit(value, 22),
            invept_single_context: bit(value, 25),
            invept_all_context: bit(value, 26),
            invvpid: bit(value, 32),
            invvpid_individual_address: bit(value, 40),
            invvpid_single_context: bit(value, 41),
            invvpid_all_context: bit(value, 42),
            invvpid_single_context_retaining_globals: bit(value, 43),
        }
    }
}

// ---------------------------------------------------------------------------
// CR0 / CR4 fixed bits
// ---------------------------------------------------------------------------

/// Which control register a fixed-bit pair applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixedReg {
    /// CR0 (IA32_VMX_CR0_FIXED0/1, SDM A.7).
    Cr0,
    /// CR4 (IA32_VMX_CR4_FIXED0/1, SDM A.8).
    Cr4,
}

impl FixedReg {
    /// "CR0" or "CR4".
    pub const fn name(self) -> &'static str {
        match self {
            FixedReg::Cr0 => "CR0",
            FixedReg::Cr4 => "CR4",
        }
    }

    /// Architectural name of a bit (SDM Vol. 3A §2.5).
    pub const fn bit_name(self, bit: u32) -> Option<&'static str> {
        let name = match self {
            FixedReg::Cr0 => match bit {
                0 => "PE",
                1 => "MP",
                2 => "EM",
                3 => "TS",
                4 => "ET",
                5 => "NE",
                16 => "WP",
                18 => "AM",
                29 => "NW",
                30 => "CD",
                31 => "PG",
                _ => return None,
            },
            FixedReg::Cr4 => match bit {
                0 => "VME",
                1 => "PVI",
                2 => "TSD",
                3 => "DE",
                4 => "PSE",
                5 => "PAE",
                6 => "MCE",
                7 => "PGE",
                8 => "PCE",
                9 => "OSFXSR",
                10 => "OSXMMEXCPT",
                11 => "UMIP",
                12 => "LA57",
                13 => "VMXE",
                14 => "SMXE",
                16 => "FSGSBASE",
                17 => "PCIDE",
                18 => "OSXSAVE",
                19 => "KL",
                20 => "SMEP",
                21 => "SMAP",
                22 => "PKE",
                23 => "CET",
                24 => "PKS",
                25 => "UINTR",
                _ => return None,
            },
        };
        Some(name)
    }

    /// The (FIXED0, FIXED1) MSR pair for this register.
    pub const fn msrs(self) -> (u32, u32) {
        match self {
            FixedReg::Cr0 => (IA32_VMX_CR0_FIXED0, IA32_VMX_CR0_FIXED1),
            FixedReg::Cr4 => (IA32_VMX_CR4_FIXED0, IA32_VMX_CR4_FIXED1),
        }
    }
}

/// A control-register value that breaks the VMX fixed-bit rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedBitError {
    /// Which register.
    pub register: FixedReg,
    /// The lowest offending bit.
    pub bit: u32,
    /// The value that bit must have.
    pub must_be: bool,
}

impl fmt::Display for FixedBitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bit {}", self.register.name(), self.bit)?;
        if let Some(name) = self.register.bit_name(self.bit) {
            write!(f, " ({name})")?;
        }
        write!(f, " must be {} in VMX operation", u8::from(self.must_be))
    }
}

/// Forces `value` to satisfy the fixed bits (SDM A.7/A.8): bits set in
/// `fixed0` become 1, bits clear in `fixed1` become 0.
pub const fn fixed_bits(fixed0: u64, fixed1: u64, value: u64) -> u64 {
    (value | fixed0) & fixed1
}

/// Checks `value` against the fixed bits (SDM A.7/A.8) and names the lowest
/// bit that violates them.
pub fn check_fixed_bits(
    register: FixedReg,
    fixed0: u64,
    fixed1: u64,
    value: u64,
) -> Result<(), FixedBitError> {
    let missing = fixed0 & !value;
    let forbidden = value & !fixed1;
    let bad = missing | forbidden;
    if bad == 0 {
        return Ok(());
    }
    let bit = bad.trailing_zeros();
    Err(FixedBitError {
        register,
        bit,
        must_be: missing & (1 << bit) != 0,
    })
}

/// CR0.PE (bit 0) and CR0.PG (bit 31): with "unrestricted guest" these may
/// be 0 in the guest even though IA32_VMX_CR0_FIXED0 reports them as 1
/// (SDM A.7, SDM Vol. 3C §27.3.1.1).
pub const CR0_UNRESTRICTED_EXEMPT: u64 = (1 << 0) | (1 << 31);

/// The guest CR0 FIXED0 mask when "unrestricted guest" is enabled.
pub const fn guest_cr0_fixed0(fixed0: u64, unrestricted_guest: bool) -> u64 {
    if unrestricted_guest {
        fixed0 & !CR0_UNRESTRICTED_EXEMPT
    } else {
        fixed0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bochs 2.7, `cpu: model=corei7_skylake_x` (ENVIRONMENT.md).
    const BOCHS_PROCBASED_CTLS2: u64 = 0x0217_7fff_0000_0000;
    const BOCHS_EPT_VPID_CAP: u64 = 0xf01_0633_4141;

    #[test]
    fn basic_decodes_all_fields() {
        // revision 4, size 0x1000, WB, INS/OUTS info, true controls.
        let v: u64 = 4 | (0x1000 << 32) | (6 << 50) | (1 << 54) | (1 << 55);
        let b = VmxBasic::from_msr(v);
        assert_eq!(b.revision_id, 4);
        assert_eq!(b.vmcs_size, 0x1000);
        assert_eq!(b.memory_type, VmcsMemoryType::WriteBack);
        assert!(b.ins_outs_info);
        assert!(b.true_controls);
        assert!(!b.phys_addr_32bit);
        assert!(!b.dual_monitor);
        assert!(!b.no_err_code_check);
    }

    #[test]
    fn basic_revision_ignores_bit_31_and_reserved_memory_type() {
        let v: u64 = 0xFFFF_FFFF | (1 << 48) | (3 << 50);
        let b = VmxBasic::from_msr(v);
        assert_eq!(b.revision_id, 0x7FFF_FFFF);
        assert_eq!(b.memory_type, VmcsMemoryType::Reserved(3));
        assert!(b.phys_addr_32bit);
        assert!(!b.true_controls);
    }

    #[test]
    fn basic_picks_true_msr_only_when_reported() {
        let with = VmxBasic::from_msr(1 << 55);
        let without = VmxBasic::from_msr(0);
        assert_eq!(
            with.control_msr(ControlKind::PinBased),
            IA32_VMX_TRUE_PINBASED_CTLS
        );
        assert_eq!(
            with.control_msr(ControlKind::Entry),
            IA32_VMX_TRUE_ENTRY_CTLS
        );
        assert_eq!(
            with.control_msr(ControlKind::SecondaryProcBased),
            IA32_VMX_PROCBASED_CTLS2
        );
        assert_eq!(
            without.control_msr(ControlKind::PrimaryProcBased),
            IA32_VMX_PROCBASED_CTLS
        );
    }

    #[test]
    fn control_caps_split_bochs_secondary() {
        let c = ControlCaps::from_msr(ControlKind::SecondaryProcBased, BOCHS_PROCBASED_CTLS2);
        assert_eq!(c.allowed0, 0);
        assert_eq!(c.allowed1, 0x0217_7fff);
        // EPT, VPID, unrestricted guest, PML all available under Bochs.
        assert!(c.supports((1 << 1) | (1 << 5) | (1 << 7) | (1 << 17)));
        // 0x7fff covers bits 0..=14, so bit 15 (ENCLS exiting) is absent.
        assert!(!c.supports(1 << 15));
        assert!(!c.requires(1 << 1));
    }

    #[test]
    fn adjust_keeps_supported_required_bits() {
        let c = ControlCaps::from_msr(ControlKind::SecondaryProcBased, BOCHS_PROCBASED_CTLS2);
        let req = (1 << 1) | (1 << 5) | (1 << 7);
        assert_eq!(c.adjust(0, req), Ok(req));
    }

    #[test]
    fn adjust_drops_unsupported_wanted_bits() {
        let c = ControlCaps::from_msr(ControlKind::SecondaryProcBased, BOCHS_PROCBASED_CTLS2);
        // Bit 15 and 28 not allowed: dropped silently because only wanted.
        assert_eq!(c.adjust((1 << 15) | (1 << 28) | (1 << 1), 0), Ok(1 << 1));
    }

    #[test]
    fn adjust_names_first_missing_required_bit() {
        let c = ControlCaps::from_msr(ControlKind::SecondaryProcBased, BOCHS_PROCBASED_CTLS2);
        let err = c.adjust(0, (1 << 28) | (1 << 15) | (1 << 1)).unwrap_err();
        assert_eq!(err.control, "secondary processor-based");
        assert_eq!(err.bit, 15);
        assert_eq!(err.bit_name, Some("enable ENCLS exiting"));
        assert_eq!(err.reason, ControlErrorReason::Unsupported);
    }

    #[test]
    fn adjust_ors_must_be_one_bits() {
        // Typical legacy pin-based MSR: bits 1, 2, 4 default1 (must be 1).
        let c = ControlCaps::from_msr(ControlKind::PinBased, 0x0000_007f_0000_0016);
        assert_eq!(c.adjust(1 << 6, 0), Ok(0x16 | (1 << 6)));
        assert!(c.requires(0x16));
    }

    #[test]
    fn adjust_reports_contradictory_msr() {
        let c = ControlCaps::from_msr(ControlKind::Exit, 0x0000_0000_0000_0200);
        let err = c.adjust(0, 0).unwrap_err();
        assert_eq!(err.bit, 9);
        assert_eq!(err.reason, ControlErrorReason::Contradictory);
    }

    #[test]
    fn control_error_display_names_field_and_bit() {
        let c = ControlCaps::from_msr(ControlKind::PinBased, 0);
        let e = c.adjust(0, 1 << 6).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pin-based control bit 6 (activate VMX-preemption timer) is required but not supported"
        );
        let c = ControlCaps::from_msr(ControlKind::Entry, 0);
        let e = c.adjust(0, 1 << 30).unwrap_err();
        assert_eq!(
            e.to_string(),
            "VM-entry control bit 30 is required but not supported"
        );
    }

    #[test]
    fn bit_name_table_spot_checks() {
        use ControlKind::*;
        assert_eq!(SecondaryProcBased.bit_name(1), Some("enable EPT"));
        assert_eq!(SecondaryProcBased.bit_name(5), Some("enable VPID"));
        assert_eq!(SecondaryProcBased.bit_name(7), Some("unrestricted guest"));
        assert_eq!(PinBased.bit_name(6), Some("activate VMX-preemption timer"));
        assert_eq!(
            PrimaryProcBased.bit_name(31),
            Some("activate secondary controls")
        );
        assert_eq!(PrimaryProcBased.bit_name(28), Some("use MSR bitmaps"));
        assert_eq!(PrimaryProcBased.bit_name(25), Some("use I/O bitmaps"));
        assert_eq!(PrimaryProcBased.bit_name(7), Some("HLT exiting"));
        assert_eq!(Exit.bit_name(9), Some("host address-space size"));
        assert_eq!(Entry.bit_name(9), Some("IA-32e mode guest"));
        assert_eq!(Entry.bit_name(1), None);
        for k in ControlKind::ALL {
            assert!(!k.name().is_empty());
            assert_eq!(k.to_string(), k.name());
        }
    }

    #[test]
    fn misc_decodes_fields() {
        // rate 5, LMA store, HLT+shutdown+SIPI, 4 CR3 targets, N=1, VMWRITE any.
        let v: u64 = 5 | (1 << 5) | (0b111 << 6) | (4 << 16) | (1 << 25) | (1 << 29);
        let m = VmxMisc::from_msr(v);
        assert_eq!(m.preemption_timer_rate, 5);
        assert_eq!(m.tsc_ticks_per_timer_tick(), 32);
        assert!(m.stores_efer_lma);
        assert!(m.activity_hlt && m.activity_shutdown && m.activity_wait_for_sipi);
        assert_eq!(m.cr3_target_count, 4);
        assert_eq!(m.max_msr_list, 1024);
        assert!(m.vmwrite_any_field);
        assert!(!m.zero_length_injection);
        assert!(!m.intel_pt);
        assert_eq!(m.mseg_revision, 0);
    }

    #[test]
    fn ept_vpid_cap_bochs() {
        let e = EptVpidCap::from_msr(BOCHS_EPT_VPID_CAP);
        assert!(e.execute_only);
        assert!(e.page_walk_4);
        assert!(!e.page_walk_5);
        assert!(e.memory_type_uc);
        assert!(e.memory_type_wb);
        assert!(e.pages_2m);
        assert!(e.pages_1g);
        assert!(e.invept);
        assert!(e.accessed_dirty);
        assert!(!e.advanced_exit_info);
        assert!(e.invept_single_context);
        assert!(e.invept_all_context);
        assert!(e.invvpid);
        assert!(e.invvpid_individual_address);
        assert!(e.invvpid_single_context);
        assert!(e.invvpid_all_context);
        assert!(e.invvpid_single_context_retaining_globals);
    }

    #[test]
    fn ept_vpid_cap_zero_is_nothing() {
        let e = EptVpidCap::from_msr(0);
        assert!(!e.page_walk_4 && !e.memory_type_wb && !e.invept && !e.invvpid);
    }

    // Typical values on Intel hardware: CR0 FIXED0 = PE|NE|PG, FIXED1 = all
    // low 32 bits; CR4 FIXED0 = VMXE.
    const CR0_F0: u64 = 0x8000_0021;
    const CR0_F1: u64 = 0xFFFF_FFFF;
    const CR4_F0: u64 = 0x2000;
    const CR4_F1: u64 = 0x003F_FFFF;

    #[test]
    fn fixed_bits_forces_ones_and_zeros() {
        assert_eq!(fixed_bits(CR0_F0, CR0_F1, 0), 0x8000_0021);
        assert_eq!(fixed_bits(CR0_F0, CR0_F1, 1 << 40), 0x8000_0021);
        assert_eq!(fixed_bits(CR4_F0, CR4_F1, 0x20), 0x2020);
        assert_eq!(fixed_bits(CR4_F0, CR4_F1, 1 << 23), 0x2000);
    }

    #[test]
    fn check_fixed_bits_reports_violations() {
        assert_eq!(
            check_fixed_bits(FixedReg::Cr0, CR0_F0, CR0_F1, 0x8000_0031),
            Ok(())
        );
        let e = check_fixed_bits(FixedReg::Cr0, CR0_F0, CR0_F1, 0x8000_0001).unwrap_err();
        assert_eq!((e.bit, e.must_be), (5, true));
        assert_eq!(e.to_string(), "CR0 bit 5 (NE) must be 1 in VMX operation");

        let e = check_fixed_bits(FixedReg::Cr4, CR4_F0, CR4_F1, 0x2000 | (1 << 23)).unwrap_err();
        assert_eq!((e.bit, e.must_be), (23, false));
        assert_eq!(e.to_string(), "CR4 bit 23 (CET) must be 0 in VMX operation");

        let e = check_fixed_bits(FixedReg::Cr4, CR4_F0, CR4_F1, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "CR4 bit 13 (VMXE) must be 1 in VMX operation"
        );
    }

    #[test]
    fn unrestricted_guest_relaxes_pe_pg() {
        let f0 = guest_cr0_fixed0(CR0_F0, true);
        assert_eq!(f0, 0x20);
        assert_eq!(check_fixed_bits(FixedReg::Cr0, f0, CR0_F1, 0x30), Ok(()));
        assert_eq!(guest_cr0_fixed0(CR0_F0, false), CR0_F0);
        assert_eq!(FixedReg::Cr4.msrs(), (0x488, 0x489));
    }
}
