//! A software replay of the guest-state checks that VM entry performs (SDM
//! Vol. 3C 27.3.1; the same section is 26.3.1 in editions before 2023).
//!
//! When VM entry fails with "invalid guest state" (exit reason 33 with bit 31
//! set, SDM 27.8) the processor does not say which check failed. [`check`]
//! runs the checks of 27.3.1.1 to 27.3.1.5 that a hypervisor bug or a hostile
//! guest could plausibly trip, in the SDM's order, and names the first one
//! that fails: the field, the rule and the value. [`check_all`] lists every
//! rule that fails.
//!
//! Left out, because the inputs are not captured here or no guest can reach
//! them: IA32_SYSENTER_ESP/EIP, the CET, PKRS, BNDCFGS, RTIT and
//! PERF_GLOBAL_CTRL MSR fields, the PDPTEs (27.3.1.6), activity states that
//! IA32_VMX_MISC does not report, the SMM and enclave cases, the
//! virtual-NMI blocking rule, and the VMCS-link-pointer rules that need
//! memory (revision identifier, shadow bit).
//!
//! The pure part ([`check`], [`check_all`], the types) has no `unsafe` and is
//! tested on the host; [`GuestState::read_current`] and
//! [`EntryContext::read_current`] need VMX operation.
use alloc::vec::Vec;
use core::fmt;
use core::ops::ControlFlow;

const S1: &str = "27.3.1.1";
const S2: &str = "27.3.1.2";
const S3: &str = "27.3.1.3";
const S4: &str = "27.3.1.4";
const S5: &str = "27.3.1.5";

/// Segment access-rights bits as the VMCS holds them (SDM 25.4.1, Table 25-2).
pub mod ar {
    pub const TYPE: u32 = 0xF;
    pub const S: u32 = 1 << 4;
    pub const DPL_SHIFT: u32 = 5;
    pub const DPL: u32 = 3 << DPL_SHIFT;
    pub const P: u32 = 1 << 7;
    pub const RESERVED_11_8: u32 = 0xF00;
    pub const AVL: u32 = 1 << 12;
    pub const L: u32 = 1 << 13;
    pub const DB: u32 = 1 << 14;
    pub const G: u32 = 1 << 15;
    pub const UNUSABLE: u32 = 1 << 16;
    pub const RESERVED_31_17: u32 = 0xFFFE_0000;
}

/// Control and register bits the checks look at.
mod bit {
    pub const CR0_PE: u64 = 1 << 0;
    pub const CR0_WP: u64 = 1 << 16;
    pub const CR0_NW: u64 = 1 << 29;
    pub const CR0_CD: u64 = 1 << 30;
    pub const CR0_PG: u64 = 1 << 31;
    pub const CR4_PAE: u64 = 1 << 5;
    pub const CR4_PCIDE: u64 = 1 << 17;
    pub const CR4_CET: u64 = 1 << 23;
    /// CR3 bits 62:61 hold the LAM enables on processors with LAM; VM entry
    /// accepts them there, so they are not reported as reserved.
    pub const CR3_LAM: u64 = 3 << 61;
    pub const EFER_VALID: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11);
    pub const EFER_LME: u64 = 1 << 8;
    pub const EFER_LMA: u64 = 1 << 10;
    /// IA32_DEBUGCTL bits architecturally reserved (5:3 and 63:16; bit 2 is
    /// bus-lock detection on newer processors). Model-specific reservations
    /// are not known here.
    pub const DEBUGCTL_RESERVED: u64 = (0x7 << 3) | !0xFFFF;
    pub const DEBUGCTL_BTF: u64 = 1 << 1;
    pub const RFLAGS_TF: u64 = 1 << 8;
    pub const RFLAGS_IF: u64 = 1 << 9;
    pub const RFLAGS_VM: u64 = 1 << 17;
    pub const RFLAGS_RESERVED: u64 = !0x3F_FFFF | (1 << 15) | (1 << 5) | (1 << 3);
    pub const RFLAGS_FIXED1: u64 = 1 << 1;
    pub const ENTRY_LOAD_DEBUG: u32 = 1 << 2;
    pub const ENTRY_IA32E: u32 = 1 << 9;
    pub const ENTRY_LOAD_PAT: u32 = 1 << 14;
    pub const ENTRY_LOAD_EFER: u32 = 1 << 15;
    pub const SECONDARY_UNRESTRICTED: u32 = 1 << 7;
    pub const INTR_STI: u32 = 1 << 0;
    pub const INTR_MOV_SS: u32 = 1 << 1;
    pub const INTR_SMI: u32 = 1 << 2;
    /// Interruptibility bits 31:5 (bit 4 is the SGX enclave-interruption bit).
    pub const INTR_RESERVED: u32 = !0x1F;
    pub const DBG_BS: u64 = 1 << 14;
    pub const DBG_ENABLED_BP: u64 = 1 << 12;
    pub const DBG_RTM: u64 = 1 << 16;
    pub const DBG_RESERVED: u64 = (0xFF << 4) | (1 << 13) | (1 << 15) | !0x1_FFFF;
    pub const EVENT_VALID: u32 = 1 << 31;
    pub const LINK_PTR_NONE: u64 = u64::MAX;
}

/// Guest activity states (SDM 25.4.2).
pub mod activity {
    pub const ACTIVE: u32 = 0;
    pub const HLT: u32 = 1;
    pub const SHUTDOWN: u32 = 2;
    pub const WAIT_FOR_SIPI: u32 = 3;
}

/// Interruption types of the VM-entry interruption-information field
/// (SDM 25.8.3).
mod event {
    pub const EXTERNAL: u32 = 0;
    pub const NMI: u32 = 2;
    pub const HW_EXCEPTION: u32 = 3;
    pub const OTHER: u32 = 7;
}

/// One segment register as the VMCS guest-state area holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seg {
    pub sel: u16,
    pub base: u64,
    pub limit: u32,
    pub ar: u32,
}

impl Seg {
    pub const fn usable(&self) -> bool {
        self.ar & ar::UNUSABLE == 0
    }
    pub const fn seg_type(&self) -> u32 {
        self.ar & ar::TYPE
    }
    pub const fn dpl(&self) -> u32 {
        (self.ar & ar::DPL) >> ar::DPL_SHIFT
    }
    pub const fn rpl(&self) -> u16 {
        self.sel & 3
    }
    const fn has(&self, bits: u32) -> bool {
        self.ar & bits != 0
    }
}

/// The segment registers in VMCS encoding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegReg {
    Es = 0,
    Cs = 1,
    Ss = 2,
    Ds = 3,
    Fs = 4,
    Gs = 5,
    Ldtr = 6,
    Tr = 7,
}

impl SegReg {
    pub const ALL: [SegReg; 8] = [
        SegReg::Es,
        SegReg::Cs,
        SegReg::Ss,
        SegReg::Ds,
        SegReg::Fs,
        SegReg::Gs,
        SegReg::Ldtr,
        SegReg::Tr,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            SegReg::Es => "ES",
            SegReg::Cs => "CS",
            SegReg::Ss => "SS",
            SegReg::Ds => "DS",
            SegReg::Fs => "FS",
            SegReg::Gs => "GS",
            SegReg::Ldtr => "LDTR",
            SegReg::Tr => "TR",
        }
    }
}

impl fmt::Display for SegReg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// GDTR or IDTR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescTable {
    Gdtr,
    Idtr,
}

impl fmt::Display for DescTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DescTable::Gdtr => "GDTR",
            DescTable::Idtr => "IDTR",
        })
    }
}

/// The guest-state fields VM entry checks, plus the VM-entry
/// interruption-information field, which some of those checks consult.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub dr7: u64,
    pub rsp: u64,
    pub rip: u64,
    pub rflags: u64,
    pub efer: u64,
    pub pat: u64,
    pub debugctl: u64,
    /// ES, CS, SS, DS, FS, GS, LDTR, TR (VMCS order; index with [`SegReg`]).
    pub segs: [Seg; 8],
    pub gdtr_base: u64,
    pub idtr_base: u64,
    pub gdtr_limit: u32,
    pub idtr_limit: u32,
    pub activity: u32,
    pub interruptibility: u32,
    pub pending_dbg: u64,
    pub link_ptr: u64,
    pub entry_intr_info: u32,
}

impl GuestState {
    pub const fn seg(&self, r: SegReg) -> &Seg {
        &self.segs[r as usize]
    }
    pub fn seg_mut(&mut self, r: SegReg) -> &mut Seg {
        &mut self.segs[r as usize]
    }
}

/// What the checks need besides the guest state: the controls and what the
/// processor supports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryContext {
    pub entry_controls: u32,
    /// The secondary processor-based controls as in effect: 0 when the
    /// primary "activate secondary controls" bit is 0.
    pub secondary_controls: u32,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
    /// Physical-address width (CPUID 0x8000_0008 EAX[7:0]).
    pub maxphyaddr: u8,
    /// Linear-address width (CPUID 0x8000_0008 EAX[15:8]; 57 with 5-level
    /// paging). VM entry tests canonical form against this width; 0 is taken
    /// as 48.
    pub linear_width: u8,
}

/// A guest-state check of SDM 27.3.1 that the state fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestStateError {
    // 27.3.1.1: control registers, debug registers, MSRs.
    /// Bits (`bad`) differ from IA32_VMX_CR0_FIXED0/1.
    Cr0Fixed {
        cr0: u64,
        bad: u64,
    },
    Cr0PgWithoutPe {
        cr0: u64,
    },
    /// Bits (`bad`) differ from IA32_VMX_CR4_FIXED0/1.
    Cr4Fixed {
        cr4: u64,
        bad: u64,
    },
    Cr4CetWithoutWp {
        cr4: u64,
        cr0: u64,
    },
    DebugctlReserved {
        debugctl: u64,
    },
    Ia32eWithoutPg {
        cr0: u64,
    },
    Ia32eWithoutPae {
        cr4: u64,
    },
    PcideOutsideIa32e {
        cr4: u64,
    },
    Cr3Reserved {
        cr3: u64,
        maxphyaddr: u8,
    },
    Dr7Upper {
        dr7: u64,
    },
    /// Entry `index` of the PAT holds a memory type that doesn't exist.
    PatInvalid {
        pat: u64,
        index: u8,
    },
    EferReserved {
        efer: u64,
    },
    EferLmaMismatch {
        efer: u64,
        ia32e: bool,
    },
    EferLmeMismatch {
        efer: u64,
    },

    // 27.3.1.2: segment registers.
    TrSelectorTi {
        sel: u16,
    },
    LdtrSelectorTi {
        sel: u16,
    },
    SsRplMismatch {
        ss_sel: u16,
        cs_sel: u16,
    },
    V86Base {
        seg: SegReg,
        sel: u16,
        base: u64,
    },
    BaseNotCanonical {
        seg: SegReg,
        base: u64,
    },
    BaseUpperBits {
        seg: SegReg,
        base: u64,
    },
    V86Limit {
        seg: SegReg,
        limit: u32,
    },
    V86AccessRights {
        seg: SegReg,
        ar: u32,
    },
    CsType {
        ar: u32,
        unrestricted: bool,
    },
    SsType {
        ar: u32,
    },
    NotAccessed {
        seg: SegReg,
        ar: u32,
    },
    CodeNotReadable {
        seg: SegReg,
        ar: u32,
    },
    /// S must be 1 (a code or data segment).
    NotCodeOrData {
        seg: SegReg,
        ar: u32,
    },
    CsDplWithType3 {
        ar: u32,
    },
    CsDplNotSsDpl {
        cs_ar: u32,
        ss_ar: u32,
    },
    CsDplAboveSsDpl {
        cs_ar: u32,
        ss_ar: u32,
    },
    SsDplNotRpl {
        sel: u16,
        ar: u32,
    },
    SsDplWithCsType3 {
        ar: u32,
    },
    SsDplWithoutPe {
        ar: u32,
        cr0: u64,
    },
    DplBelowRpl {
        seg: SegReg,
        sel: u16,
        ar: u32,
    },
    NotPresent {
        seg: SegReg,
        ar: u32,
    },
    ArReserved11To8 {
        seg: SegReg,
        ar: u32,
    },
    CsLongWithDefaultBig {
        ar: u32,
    },
    Granularity {
        seg: SegReg,
        limit: u32,
        ar: u32,
    },
    ArReserved31To17 {
        seg: SegReg,
        ar: u32,
    },
    TrType {
        ar: u32,
        ia32e: bool,
    },
    /// S must be 0 (a system segment) for TR and LDTR.
    NotSystem {
        seg: SegReg,
        ar: u32,
    },
    TrUnusable {
        ar: u32,
    },
    LdtrType {
        ar: u32,
    },

    // 27.3.1.3: descriptor-table registers.
    TableBaseNotCanonical {
        table: DescTable,
        base: u64,
    },
    TableLimit {
        table: DescTable,
        limit: u32,
    },

    // 27.3.1.4: RIP and RFLAGS.
    RipUpperBits {
        rip: u64,
    },
    RipNotCanonical {
        rip: u64,
    },
    RflagsReserved {
        rflags: u64,
    },
    RflagsVmInIa32e {
        rflags: u64,
    },
    RflagsVmWithoutPe {
        rflags: u64,
        cr0: u64,
    },
    IfClearForExternalInterrupt {
        rflags: u64,
        intr_info: u32,
    },

    // 27.3.1.5: non-register state.
    ActivityInvalid {
        activity: u32,
    },
    HltWithSsDpl {
        ss_ar: u32,
    },
    InactiveWithBlocking {
        activity: u32,
        interruptibility: u32,
    },
    InjectionBlockedByActivity {
        activity: u32,
        intr_info: u32,
    },
    InterruptibilityReserved {
        value: u32,
    },
    StiAndMovSs {
        value: u32,
    },
    StiWithoutIf {
        value: u32,
        rflags: u64,
    },
    BlockingWithExternalInterrupt {
        value: u32,
        intr_info: u32,
    },
    MovSsWithNmi {
        value: u32,
        intr_info: u32,
    },
    SmiBlockingOutsideSmm {
        value: u32,
    },
    PendingDbgReserved {
        value: u64,
    },
    PendingDbgBsMissing {
        value: u64,
        rflags: u64,
        debugctl: u64,
    },
    PendingDbgBsSpurious {
        value: u64,
        rflags: u64,
        debugctl: u64,
    },
    PendingDbgRtm {
        value: u64,
    },
    PendingDbgRtmWithMovSs {
        value: u64,
        interruptibility: u32,
    },
    LinkPtrUnaligned {
        ptr: u64,
    },
    LinkPtrBeyondMaxphyaddr {
        ptr: u64,
        maxphyaddr: u8,
    },
}

impl GuestStateError {
    /// The SDM section holding the rule.
    pub const fn section(&self) -> &'static str {
        use GuestStateError::*;
        match self {
            Cr0Fixed { .. }
            | Cr0PgWithoutPe { .. }
            | Cr4Fixed { .. }
            | Cr4CetWithoutWp { .. }
            | DebugctlReserved { .. }
            | Ia32eWithoutPg { .. }
            | Ia32eWithoutPae { .. }
            | PcideOutsideIa32e { .. }
            | Cr3Reserved { .. }
            | Dr7Upper { .. }
            | PatInvalid { .. }
            | EferReserved { .. }
            | EferLmaMismatch { .. }
            | EferLmeMismatch { .. } => S1,
            TrSelectorTi { .. }
            | LdtrSelectorTi { .. }
            | SsRplMismatch { .. }
            | V86Base { .. }
            | BaseNotCanonical { .. }
            | BaseUpperBits { .. }
            | V86Limit { .. }
            | V86AccessRights { .. }
            | CsType { .. }
            | SsType { .. }
            | NotAccessed { .. }
            | CodeNotReadable { .. }
            | NotCodeOrData { .. }
            | CsDplWithType3 { .. }
            | CsDplNotSsDpl { .. }
            | CsDplAboveSsDpl { .. }
            | SsDplNotRpl { .. }
            | SsDplWithCsType3 { .. }
            | SsDplWithoutPe { .. }
            | DplBelowRpl { .. }
            | NotPresent { .. }
            | ArReserved11To8 { .. }
            | CsLongWithDefaultBig { .. }
            | Granularity { .. }
            | ArReserved31To17 { .. }
            | TrType { .. }
            | NotSystem { .. }
            | TrUnusable { .. }
            | LdtrType { .. } => S2,
            TableBaseNotCanonical { .. } | TableLimit { .. } => S3,
            RipUpperBits { .. }
            | RipNotCanonical { .. }
            | RflagsReserved { .. }
            | RflagsVmInIa32e { .. }
            | RflagsVmWithoutPe { .. }
            | IfClearForExternalInterrupt { .. } => S4,
            ActivityInvalid { .. }
            | HltWithSsDpl { .. }
            | InactiveWithBlocking { .. }
            | InjectionBlockedByActivity { .. }
            | InterruptibilityReserved { .. }
            | StiAndMovSs { .. }
            | StiWithoutIf { .. }
            | BlockingWithExternalInterrupt { .. }
            | MovSsWithNmi { .. }
            | SmiBlockingOutsideSmm { .. }
            | PendingDbgReserved { .. }
            | PendingDbgBsMissing { .. }
            | PendingDbgBsSpurious { .. }
            | PendingDbgRtm { .. }
            | PendingDbgRtmWithMovSs { .. }
            | LinkPtrUnaligned { .. }
            | LinkPtrBeyondMaxphyaddr { .. } => S5,
        }
    }
}

impl fmt::Display for GuestStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GuestStateError::*;
        match *self {
            Cr0Fixed { cr0, bad } => write!(
                f,
                "guest CR0 {cr0:#x}: bits {bad:#x} must match IA32_VMX_CR0_FIXED0/FIXED1 (PE and PG exempt with unrestricted guest; NW, CD never checked)"
            ),
            Cr0PgWithoutPe { cr0 } => write!(f, "guest CR0 {cr0:#x}: PG=1 requires PE=1"),
            Cr4Fixed { cr4, bad } => write!(
                f,
                "guest CR4 {cr4:#x}: bits {bad:#x} must match IA32_VMX_CR4_FIXED0/FIXED1"
            ),
            Cr4CetWithoutWp { cr4, cr0 } => write!(
                f,
                "guest CR4 {cr4:#x}: CET=1 requires CR0.WP=1 (CR0 {cr0:#x})"
            ),
            DebugctlReserved { debugctl } => write!(
                f,
                "guest IA32_DEBUGCTL {debugctl:#x}: with \"load debug controls\", reserved bits 5:3 and 63:16 must be 0"
            ),
            Ia32eWithoutPg { cr0 } => write!(
                f,
                "guest CR0 {cr0:#x}: an IA-32e mode guest requires CR0.PG=1"
            ),
            Ia32eWithoutPae { cr4 } => write!(
                f,
                "guest CR4 {cr4:#x}: an IA-32e mode guest requires CR4.PAE=1"
            ),
            PcideOutsideIa32e { cr4 } => write!(
                f,
                "guest CR4 {cr4:#x}: CR4.PCIDE must be 0 unless the guest is in IA-32e mode"
            ),
            Cr3Reserved { cr3, maxphyaddr } => write!(
                f,
                "guest CR3 {cr3:#x}: bits 63:52 and those at or above MAXPHYADDR ({maxphyaddr}) must be 0"
            ),
            Dr7Upper { dr7 } => write!(
                f,
                "guest DR7 {dr7:#x}: with \"load debug controls\", bits 63:32 must be 0"
            ),
            PatInvalid { pat, index } => write!(
                f,
                "guest IA32_PAT {pat:#x}: with \"load IA32_PAT\", entry {index} must be 0, 1, 4, 5, 6 or 7"
            ),
            EferReserved { efer } => write!(
                f,
                "guest IA32_EFER {efer:#x}: with \"load IA32_EFER\", reserved bits (all but 0, 8, 10, 11) must be 0"
            ),
            EferLmaMismatch { efer, ia32e } => write!(
                f,
                "guest IA32_EFER {efer:#x}: with \"load IA32_EFER\", LMA must equal the IA-32e mode guest control ({})",
                u8::from(ia32e)
            ),
            EferLmeMismatch { efer } => write!(
                f,
                "guest IA32_EFER {efer:#x}: with \"load IA32_EFER\" and CR0.PG=1, LME must equal LMA"
            ),
            TrSelectorTi { sel } => write!(f, "guest TR selector {sel:#x}: TI must be 0"),
            LdtrSelectorTi { sel } => {
                write!(f, "guest LDTR selector {sel:#x}: TI must be 0 when usable")
            }
            SsRplMismatch { ss_sel, cs_sel } => write!(
                f,
                "guest SS selector {ss_sel:#x}: RPL must equal CS.RPL (CS selector {cs_sel:#x}) unless virtual-8086 or unrestricted guest"
            ),
            V86Base { seg, sel, base } => write!(
                f,
                "guest {seg} base {base:#x}: in virtual-8086 mode must be selector {sel:#x} << 4"
            ),
            BaseNotCanonical { seg, base } => {
                write!(f, "guest {seg} base {base:#x}: must be canonical")
            }
            BaseUpperBits { seg, base } => {
                write!(f, "guest {seg} base {base:#x}: bits 63:32 must be 0")
            }
            V86Limit { seg, limit } => write!(
                f,
                "guest {seg} limit {limit:#x}: in virtual-8086 mode must be 0xffff"
            ),
            V86AccessRights { seg, ar } => write!(
                f,
                "guest {seg} access rights {ar:#x}: in virtual-8086 mode must be 0xf3"
            ),
            CsType { ar, unrestricted } => write!(
                f,
                "guest CS access rights {ar:#x}: type must be 9, 11, 13 or 15{}",
                if unrestricted {
                    " (or 3 with unrestricted guest)"
                } else {
                    " (3 only with unrestricted guest)"
                }
            ),
            SsType { ar } => write!(
                f,
                "guest SS access rights {ar:#x}: type must be 3 or 7 when usable"
            ),
            NotAccessed { seg, ar } => write!(
                f,
                "guest {seg} access rights {ar:#x}: type must have the accessed bit when usable"
            ),
            CodeNotReadable { seg, ar } => write!(
                f,
                "guest {seg} access rights {ar:#x}: a usable code segment must be readable"
            ),
            NotCodeOrData { seg, ar } => write!(
                f,
                "guest {seg} access rights {ar:#x}: S must be 1{}",
                if seg == SegReg::Cs { "" } else { " when usable" }
            ),
            CsDplWithType3 { ar } => write!(
                f,
                "guest CS access rights {ar:#x}: with type 3, DPL must be 0"
            ),
            CsDplNotSsDpl { cs_ar, ss_ar } => write!(
                f,
                "guest CS access rights {cs_ar:#x}: a non-conforming code segment's DPL must equal SS.DPL (SS access rights {ss_ar:#x})"
            ),
            CsDplAboveSsDpl { cs_ar, ss_ar } => write!(
                f,
                "guest CS access rights {cs_ar:#x}: a conforming code segment's DPL must not exceed SS.DPL (SS access rights {ss_ar:#x})"
            ),
            SsDplNotRpl { sel, ar } => write!(
                f,
                "guest SS access rights {ar:#x}: DPL must equal the selector's RPL (selector {sel:#x}) unless unrestricted guest"
            ),
            SsDplWithCsType3 { ar } => write!(
                f,
                "guest SS access rights {ar:#x}: DPL must be 0 when CS type is 3"
            ),
            SsDplWithoutPe { ar, cr0 } => write!(
                f,
                "guest SS access rights {ar:#x}: DPL must be 0 when CR0.PE=0 (CR0 {cr0:#x})"
            ),
            DplBelowRpl { seg, sel, ar } => write!(
                f,
                "guest {seg} access rights {ar:#x}: DPL must not be below the selector's RPL (selector {sel:#x}) for a usable data or non-conforming code segment unless unrestricted guest"
            ),
            NotPresent { seg, ar } => write!(
                f,
                "guest {seg} access rights {ar:#x}: P must be 1{}",
                match seg {
                    SegReg::Cs | SegReg::Tr => "",
                    _ => " when usable",
                }
            ),
            ArReserved11To8 { seg, ar } => write!(
                f,
                "guest {seg} access rights {ar:#x}: reserved bits 11:8 must be 0"
            ),
            CsLongWithDefaultBig { ar } => write!(
                f,
                "guest CS access rights {ar:#x}: in IA-32e mode with L=1, D must be 0"
            ),
            Granularity { seg, limit, ar } => write!(
                f,
                "guest {seg} access rights {ar:#x}: G must be 0 if any of limit bits 11:0 is 0 and 1 if any of limit bits 31:20 is 1 (limit {limit:#x})"
            ),
            ArReserved31To17 { seg, ar } => write!(
                f,
                "guest {seg} access rights {ar:#x}: reserved bits 31:17 must be 0"
            ),
            TrType { ar, ia32e } => write!(
                f,
                "guest TR access rights {ar:#x}: type must be {}",
                if ia32e {
                    "11 (busy 64-bit TSS) in IA-32e mode"
                } else {
                    "3 or 11 (busy TSS) outside IA-32e mode"
                }
            ),
            NotSystem { seg, ar } => write!(
                f,
                "guest {seg} access rights {ar:#x}: S must be 0{}",
                if seg == SegReg::Ldtr {
                    " when usable"
                } else {
                    ""
                }
            ),
            TrUnusable { ar } => write!(
                f,
                "guest TR access rights {ar:#x}: TR must be usable (bit 16 = 0)"
            ),
            LdtrType { ar } => write!(
                f,
                "guest LDTR access rights {ar:#x}: type must be 2 when usable"
            ),
            TableBaseNotCanonical { table, base } => {
                write!(f, "guest {table} base {base:#x}: must be canonical")
            }
            TableLimit { table, limit } => write!(
                f,
                "guest {table} limit {limit:#x}: bits 31:16 must be 0"
            ),
            RipUpperBits { rip } => write!(
                f,
                "guest RIP {rip:#x}: bits 63:32 must be 0 unless IA-32e mode with CS.L=1"
            ),
            RipNotCanonical { rip } => write!(
                f,
                "guest RIP {rip:#x}: must be canonical in IA-32e mode with CS.L=1"
            ),
            RflagsReserved { rflags } => write!(
                f,
                "guest RFLAGS {rflags:#x}: bits 63:22, 15, 5 and 3 must be 0 and bit 1 must be 1"
            ),
            RflagsVmInIa32e { rflags } => write!(
                f,
                "guest RFLAGS {rflags:#x}: VM must be 0 in IA-32e mode"
            ),
            RflagsVmWithoutPe { rflags, cr0 } => write!(
                f,
                "guest RFLAGS {rflags:#x}: VM must be 0 when CR0.PE=0 (CR0 {cr0:#x})"
            ),
            IfClearForExternalInterrupt { rflags, intr_info } => write!(
                f,
                "guest RFLAGS {rflags:#x}: IF must be 1 when injecting an external interrupt (interruption info {intr_info:#x})"
            ),
            ActivityInvalid { activity } => write!(
                f,
                "guest activity state {activity}: must be 0 (active), 1 (HLT), 2 (shutdown) or 3 (wait-for-SIPI)"
            ),
            HltWithSsDpl { ss_ar } => write!(
                f,
                "guest activity state 1 (HLT): SS.DPL must be 0 (SS access rights {ss_ar:#x})"
            ),
            InactiveWithBlocking {
                activity,
                interruptibility,
            } => write!(
                f,
                "guest activity state {activity}: must be active while blocking by STI or MOV SS is set (interruptibility {interruptibility:#x})"
            ),
            InjectionBlockedByActivity {
                activity,
                intr_info,
            } => write!(
                f,
                "guest activity state {activity}: the event being injected (interruption info {intr_info:#x}) is blocked in that state"
            ),
            InterruptibilityReserved { value } => write!(
                f,
                "guest interruptibility state {value:#x}: reserved bits 31:5 must be 0"
            ),
            StiAndMovSs { value } => write!(
                f,
                "guest interruptibility state {value:#x}: blocking by STI and by MOV SS must not both be set"
            ),
            StiWithoutIf { value, rflags } => write!(
                f,
                "guest interruptibility state {value:#x}: blocking by STI requires RFLAGS.IF=1 (RFLAGS {rflags:#x})"
            ),
            BlockingWithExternalInterrupt { value, intr_info } => write!(
                f,
                "guest interruptibility state {value:#x}: no STI or MOV SS blocking when injecting an external interrupt (interruption info {intr_info:#x})"
            ),
            MovSsWithNmi { value, intr_info } => write!(
                f,
                "guest interruptibility state {value:#x}: no MOV SS blocking when injecting an NMI (interruption info {intr_info:#x})"
            ),
            SmiBlockingOutsideSmm { value } => write!(
                f,
                "guest interruptibility state {value:#x}: blocking by SMI (bit 2) must be 0 outside SMM"
            ),
            PendingDbgReserved { value } => write!(
                f,
                "guest pending debug exceptions {value:#x}: bits 11:4, 13, 15 and 63:17 must be 0"
            ),
            PendingDbgBsMissing {
                value,
                rflags,
                debugctl,
            } => write!(
                f,
                "guest pending debug exceptions {value:#x}: with STI/MOV SS blocking or HLT, BS must be 1 when RFLAGS.TF=1 and DEBUGCTL.BTF=0 (RFLAGS {rflags:#x}, DEBUGCTL {debugctl:#x})"
            ),
            PendingDbgBsSpurious {
                value,
                rflags,
                debugctl,
            } => write!(
                f,
                "guest pending debug exceptions {value:#x}: with STI/MOV SS blocking or HLT, BS must be 0 when RFLAGS.TF=0 or DEBUGCTL.BTF=1 (RFLAGS {rflags:#x}, DEBUGCTL {debugctl:#x})"
            ),
            PendingDbgRtm { value } => write!(
                f,
                "guest pending debug exceptions {value:#x}: with RTM=1, bits 11:0 and 15:13 must be 0 and bit 12 must be 1"
            ),
            PendingDbgRtmWithMovSs {
                value,
                interruptibility,
            } => write!(
                f,
                "guest pending debug exceptions {value:#x}: with RTM=1, blocking by MOV SS must be 0 (interruptibility {interruptibility:#x})"
            ),
            LinkPtrUnaligned { ptr } => write!(
                f,
                "guest VMCS link pointer {ptr:#x}: must be all ones or 4-KByte aligned (bits 11:0 = 0)"
            ),
            LinkPtrBeyondMaxphyaddr { ptr, maxphyaddr } => write!(
                f,
                "guest VMCS link pointer {ptr:#x}: must be all ones or have no bits at or above MAXPHYADDR ({maxphyaddr})"
            ),
        }?;
        write!(f, " (SDM {})", self.section())
    }
}

/// Runs the guest-state checks in the SDM's order; stops at the first failure.
pub fn check(s: &GuestState, c: &EntryContext) -> Result<(), GuestStateError> {
    match Checker::new(s, c).run(&mut ControlFlow::Break) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(e) => Err(e),
    }
}

/// Runs every check and returns all that fail, in the SDM's order. Later
/// entries may follow from earlier ones (one bad field can break two rules).
pub fn check_all(s: &GuestState, c: &EntryContext) -> Vec<GuestStateError> {
    let mut all = Vec::new();
    let _ = Checker::new(s, c).run(&mut |e| -> ControlFlow<GuestStateError> {
        all.push(e);
        ControlFlow::Continue(())
    });
    all
}

/// Bits at or above `width`.
const fn bits_from(width: u8) -> u64 {
    if width >= 64 {
        0
    } else {
        !0u64 << width
    }
}

fn canonical(v: u64, width: u8) -> bool {
    if width >= 64 {
        return true;
    }
    let shift = 64 - u32::from(width);
    (((v << shift) as i64) >> shift) as u64 == v
}

/// G must be 0 if limit bits 11:0 aren't all 1; G must be 1 if any of limit
/// bits 31:20 is 1.
fn granularity_ok(seg: &Seg) -> bool {
    let g = seg.has(ar::G);
    !((seg.limit & 0xFFF != 0xFFF && g) || (seg.limit & 0xFFF0_0000 != 0 && !g))
}

/// Whether an event of this interruption type and vector may be injected
/// with the guest in `activity` (SDM 27.3.1.5).
fn injectable_in(activity: u32, kind: u32, vector: u32) -> bool {
    match activity {
        activity::HLT => match kind {
            event::EXTERNAL | event::NMI => true,
            event::HW_EXCEPTION => vector == 1 || vector == 18,
            event::OTHER => vector == 0,
            _ => false,
        },
        activity::SHUTDOWN => kind == event::NMI || (kind == event::HW_EXCEPTION && vector == 18),
        activity::WAIT_FOR_SIPI => false,
        _ => true,
    }
}

type Report<'r> = dyn FnMut(GuestStateError) -> ControlFlow<GuestStateError> + 'r;

struct Checker<'a> {
    s: &'a GuestState,
    c: &'a EntryContext,
    ia32e: bool,
    unrestricted: bool,
    v86: bool,
    pe: bool,
    width: u8,
    /// Valid event being injected: (type, vector).
    event: Option<(u32, u32)>,
}

impl<'a> Checker<'a> {
    fn new(s: &'a GuestState, c: &'a EntryContext) -> Self {
        let info = s.entry_intr_info;
        Checker {
            s,
            c,
            ia32e: c.entry_controls & bit::ENTRY_IA32E != 0,
            unrestricted: c.secondary_controls & bit::SECONDARY_UNRESTRICTED != 0,
            v86: s.rflags & bit::RFLAGS_VM != 0,
            pe: s.cr0 & bit::CR0_PE != 0,
            width: if c.linear_width == 0 {
                48
            } else {
                c.linear_width
            },
            event: (info & bit::EVENT_VALID != 0).then_some(((info >> 8) & 7, info & 0xFF)),
        }
    }

    fn seg(&self, r: SegReg) -> &'a Seg {
        &self.s.segs[r as usize]
    }

    fn run(&self, report: &mut Report<'_>) -> ControlFlow<GuestStateError> {
        self.control_registers(report)?;
        self.segment_registers(report)?;
        self.descriptor_tables(report)?;
        self.rip_rflags(report)?;
        self.non_register_state(report)
    }

    /// SDM 27.3.1.1.
    fn control_registers(&self, report: &mut Report<'_>) -> ControlFlow<GuestStateError> {
        let (s, c) = (self.s, self.c);
        let mut exempt = bit::CR0_NW | bit::CR0_CD;
        if self.unrestricted {
            exempt |= bit::CR0_PE | bit::CR0_PG;
        }
        let bad = ((!s.cr0 & c.cr0_fixed0) | (s.cr0 & !c.cr0_fixed1)) & !exempt;
        if bad != 0 {
            report(GuestStateError::Cr0Fixed { cr0: s.cr0, bad })?;
        }
        if s.cr0 & bit::CR0_PG != 0 && s.cr0 & bit::CR0_PE == 0 {
            report(GuestStateError::Cr0PgWithoutPe { cr0: s.cr0 })?;
        }
        let bad = (!s.cr4 & c.cr4_fixed0) | (s.cr4 & !c.cr4_fixed1);
        if bad != 0 {
            report(GuestStateError::Cr4Fixed { cr4: s.cr4, bad })?;
        }
        if s.cr4 & bit::CR4_CET != 0 && s.cr0 & bit::CR0_WP == 0 {
            report(GuestStateError::Cr4CetWithoutWp {
                cr4: s.cr4,
                cr0: s.cr0,
            })?;
        }
        let load_debug = c.entry_controls & bit::ENTRY_LOAD_DEBUG != 0;
        if load_debug && s.debugctl & bit::DEBUGCTL_RESERVED != 0 {
            report(GuestStateError::DebugctlReserved {
                debugctl: s.debugctl,
            })?;
        }
        if self.ia32e {
            if s.cr0 & bit::CR0_PG == 0 {
                report(GuestStateError::Ia32eWithoutPg { cr0: s.cr0 })?;
            }
            if s.cr4 & bit::CR4_PAE == 0 {
                report(GuestStateError::Ia32eWithoutPae { cr4: s.cr4 })?;
            }
        } else if s.cr4 & bit::CR4_PCIDE != 0 {
            report(GuestStateError::PcideOutsideIa32e { cr4: s.cr4 })?;
        }
        if s.cr3 & bits_from(c.maxphyaddr.min(52)) & !bit::CR3_LAM != 0 {
            report(GuestStateError::Cr3Reserved {
                cr3: s.cr3,
                maxphyaddr: c.maxphyaddr,
            })?;
        }
        if load_debug && s.dr7 >> 32 != 0 {
            report(GuestStateError::Dr7Upper { dr7: s.dr7 })?;
        }
        if c.entry_controls & bit::ENTRY_LOAD_PAT != 0 {
            if let Some(index) =
                (0..8u8).find(|i| !matches!((s.pat >> (i * 8)) & 0xFF, 0 | 1 | 4..=7))
            {
                report(GuestStateError::PatInvalid { pat: s.pat, index })?;
            }
        }
        if c.entry_controls & bit::ENTRY_LOAD_EFER != 0 {
            let efer = s.efer;
            if efer & !bit::EFER_VALID != 0 {
                report(GuestStateError::EferReserved { efer })?;
            }
            let lma = efer & bit::EFER_LMA != 0;
            if lma != self.ia32e {
                report(GuestStateError::EferLmaMismatch {
                    efer,
                    ia32e: self.ia32e,
                })?;
            }
            if s.cr0 & bit::CR0_PG != 0 && (efer & bit::EFER_LME != 0) != lma {
                report(GuestStateError::EferLmeMismatch { efer })?;
            }
        }
        ControlFlow::Continue(())
    }

    /// SDM 27.3.1.2.
    fn segment_registers(&self, report: &mut Report<'_>) -> ControlFlow<GuestStateError> {
        use GuestStateError as E;
        use SegReg::*;
        const SIX: [SegReg; 6] = [Cs, Ss, Ds, Es, Fs, Gs];
        const DATA: [SegReg; 4] = [Ds, Es, Fs, Gs];
        let (cs, ss, tr, ldtr) = (self.seg(Cs), self.seg(Ss), self.seg(Tr), self.seg(Ldtr));

        // Selectors.
        if tr.sel & 4 != 0 {
            report(E::TrSelectorTi { sel: tr.sel })?;
        }
        if ldtr.usable() && ldtr.sel & 4 != 0 {
            report(E::LdtrSelectorTi { sel: ldtr.sel })?;
        }
        if !self.v86 && !self.unrestricted && ss.rpl() != cs.rpl() {
            report(E::SsRplMismatch {
                ss_sel: ss.sel,
                cs_sel: cs.sel,
            })?;
        }

        // Bases.
        if self.v86 {
            for r in SIX {
                let g = self.seg(r);
                if g.base != u64::from(g.sel) << 4 {
                    report(E::V86Base {
                        seg: r,
                        sel: g.sel,
                        base: g.base,
                    })?;
                }
            }
        }
        for r in [Tr, Fs, Gs, Ldtr] {
            let g = self.seg(r);
            if (r != Ldtr || g.usable()) && !canonical(g.base, self.width) {
                report(E::BaseNotCanonical {
                    seg: r,
                    base: g.base,
                })?;
            }
        }
        for r in [Cs, Ss, Ds, Es] {
            let g = self.seg(r);
            if (r == Cs || g.usable()) && g.base >> 32 != 0 {
                report(E::BaseUpperBits {
                    seg: r,
                    base: g.base,
                })?;
            }
        }

        // Limits and access rights of CS, SS, DS, ES, FS, GS.
        if self.v86 {
            for r in SIX {
                let limit = self.seg(r).limit;
                if limit != 0xFFFF {
                    report(E::V86Limit { seg: r, limit })?;
                }
            }
            for r in SIX {
                let a = self.seg(r).ar;
                if a != 0xF3 {
                    report(E::V86AccessRights { seg: r, ar: a })?;
                }
            }
        } else {
            // Type.
            let cs_type = cs.seg_type();
            if !(matches!(cs_type, 9 | 11 | 13 | 15) || (self.unrestricted && cs_type == 3)) {
                report(E::CsType {
                    ar: cs.ar,
                    unrestricted: self.unrestricted,
                })?;
            }
            if ss.usable() && !matches!(ss.seg_type(), 3 | 7) {
                report(E::SsType { ar: ss.ar })?;
            }
            for r in DATA {
                let g = self.seg(r);
                if !g.usable() {
                    continue;
                }
                if g.seg_type() & 1 == 0 {
                    report(E::NotAccessed { seg: r, ar: g.ar })?;
                }
                if g.seg_type() & 0b1010 == 0b1000 {
                    report(E::CodeNotReadable { seg: r, ar: g.ar })?;
                }
            }
            // S.
            for r in SIX {
                let g = self.seg(r);
                if (r == Cs || g.usable()) && !g.has(ar::S) {
                    report(E::NotCodeOrData { seg: r, ar: g.ar })?;
                }
            }
            // DPL.
            match cs_type {
                3 if cs.dpl() != 0 => report(E::CsDplWithType3 { ar: cs.ar })?,
                9 | 11 if cs.dpl() != ss.dpl() => report(E::CsDplNotSsDpl {
                    cs_ar: cs.ar,
                    ss_ar: ss.ar,
                })?,
                13 | 15 if cs.dpl() > ss.dpl() => report(E::CsDplAboveSsDpl {
                    cs_ar: cs.ar,
                    ss_ar: ss.ar,
                })?,
                _ => {}
            }
            if !self.unrestricted && ss.dpl() != u32::from(ss.rpl()) {
                report(E::SsDplNotRpl {
                    sel: ss.sel,
                    ar: ss.ar,
                })?;
            }
            if ss.dpl() != 0 {
                if cs_type == 3 {
                    report(E::SsDplWithCsType3 { ar: ss.ar })?;
                }
                if !self.pe {
                    report(E::SsDplWithoutPe {
                        ar: ss.ar,
                        cr0: self.s.cr0,
                    })?;
                }
            }
            if !self.unrestricted {
                for r in DATA {
                    let g = self.seg(r);
                    if g.usable() && g.seg_type() <= 11 && g.dpl() < u32::from(g.rpl()) {
                        report(E::DplBelowRpl {
                            seg: r,
                            sel: g.sel,
                            ar: g.ar,
                        })?;
                    }
                }
            }
            // P, reserved bits 11:8, D/B, G, reserved bits 31:17.
            for r in SIX {
                let g = self.seg(r);
                if (r == Cs || g.usable()) && !g.has(ar::P) {
                    report(E::NotPresent { seg: r, ar: g.ar })?;
                }
            }
            for r in SIX {
                let g = self.seg(r);
                if (r == Cs || g.usable()) && g.has(ar::RESERVED_11_8) {
                    report(E::ArReserved11To8 { seg: r, ar: g.ar })?;
                }
            }
            if self.ia32e && cs.has(ar::L) && cs.has(ar::DB) {
                report(E::CsLongWithDefaultBig { ar: cs.ar })?;
            }
            for r in SIX {
                let g = self.seg(r);
                if (r == Cs || g.usable()) && !granularity_ok(g) {
                    report(E::Granularity {
                        seg: r,
                        limit: g.limit,
                        ar: g.ar,
                    })?;
                }
            }
            for r in SIX {
                let g = self.seg(r);
                if (r == Cs || g.usable()) && g.has(ar::RESERVED_31_17) {
                    report(E::ArReserved31To17 { seg: r, ar: g.ar })?;
                }
            }
        }

        // TR.
        let tr_ok = if self.ia32e {
            tr.seg_type() == 11
        } else {
            matches!(tr.seg_type(), 3 | 11)
        };
        if !tr_ok {
            report(E::TrType {
                ar: tr.ar,
                ia32e: self.ia32e,
            })?;
        }
        if tr.has(ar::S) {
            report(E::NotSystem { seg: Tr, ar: tr.ar })?;
        }
        if !tr.has(ar::P) {
            report(E::NotPresent { seg: Tr, ar: tr.ar })?;
        }
        if tr.has(ar::RESERVED_11_8) {
            report(E::ArReserved11To8 { seg: Tr, ar: tr.ar })?;
        }
        if !granularity_ok(tr) {
            report(E::Granularity {
                seg: Tr,
                limit: tr.limit,
                ar: tr.ar,
            })?;
        }
        if !tr.usable() {
            report(E::TrUnusable { ar: tr.ar })?;
        }
        if tr.has(ar::RESERVED_31_17) {
            report(E::ArReserved31To17 { seg: Tr, ar: tr.ar })?;
        }

        // LDTR.
        if ldtr.usable() {
            let a = ldtr.ar;
            if ldtr.seg_type() != 2 {
                report(E::LdtrType { ar: a })?;
            }
            if ldtr.has(ar::S) {
                report(E::NotSystem { seg: Ldtr, ar: a })?;
            }
            if !ldtr.has(ar::P) {
                report(E::NotPresent { seg: Ldtr, ar: a })?;
            }
            if ldtr.has(ar::RESERVED_11_8) {
                report(E::ArReserved11To8 { seg: Ldtr, ar: a })?;
            }
            if !granularity_ok(ldtr) {
                report(E::Granularity {
                    seg: Ldtr,
                    limit: ldtr.limit,
                    ar: a,
                })?;
            }
            if ldtr.has(ar::RESERVED_31_17) {
                report(E::ArReserved31To17 { seg: Ldtr, ar: a })?;
            }
        }
        ControlFlow::Continue(())
    }

    /// SDM 27.3.1.3.
    fn descriptor_tables(&self, report: &mut Report<'_>) -> ControlFlow<GuestStateError> {
        let s = self.s;
        for (table, base) in [
            (DescTable::Gdtr, s.gdtr_base),
            (DescTable::Idtr, s.idtr_base),
        ] {
            if !canonical(base, self.width) {
                report(GuestStateError::TableBaseNotCanonical { table, base })?;
            }
        }
        for (table, limit) in [
            (DescTable::Gdtr, s.gdtr_limit),
            (DescTable::Idtr, s.idtr_limit),
        ] {
            if limit >> 16 != 0 {
                report(GuestStateError::TableLimit { table, limit })?;
            }
        }
        ControlFlow::Continue(())
    }

    /// SDM 27.3.1.4.
    fn rip_rflags(&self, report: &mut Report<'_>) -> ControlFlow<GuestStateError> {
        let s = self.s;
        let long = self.ia32e && self.seg(SegReg::Cs).has(ar::L);
        if !long && s.rip >> 32 != 0 {
            report(GuestStateError::RipUpperBits { rip: s.rip })?;
        }
        if long && !canonical(s.rip, self.width) {
            report(GuestStateError::RipNotCanonical { rip: s.rip })?;
        }
        let rflags = s.rflags;
        if rflags & bit::RFLAGS_RESERVED != 0 || rflags & bit::RFLAGS_FIXED1 == 0 {
            report(GuestStateError::RflagsReserved { rflags })?;
        }
        if self.v86 {
            if self.ia32e {
                report(GuestStateError::RflagsVmInIa32e { rflags })?;
            }
            if !self.pe {
                report(GuestStateError::RflagsVmWithoutPe { rflags, cr0: s.cr0 })?;
            }
        }
        if matches!(self.event, Some((event::EXTERNAL, _))) && rflags & bit::RFLAGS_IF == 0 {
            report(GuestStateError::IfClearForExternalInterrupt {
                rflags,
                intr_info: s.entry_intr_info,
            })?;
        }
        ControlFlow::Continue(())
    }

    /// SDM 27.3.1.5.
    fn non_register_state(&self, report: &mut Report<'_>) -> ControlFlow<GuestStateError> {
        use GuestStateError as E;
        let s = self.s;
        let (act, intr, info) = (s.activity, s.interruptibility, s.entry_intr_info);
        let blocking = intr & (bit::INTR_STI | bit::INTR_MOV_SS);

        // Activity state.
        if act > activity::WAIT_FOR_SIPI {
            report(E::ActivityInvalid { activity: act })?;
        }
        let ss = self.seg(SegReg::Ss);
        if act == activity::HLT && ss.dpl() != 0 {
            report(E::HltWithSsDpl { ss_ar: ss.ar })?;
        }
        if act != activity::ACTIVE && blocking != 0 {
            report(E::InactiveWithBlocking {
                activity: act,
                interruptibility: intr,
            })?;
        }
        if let Some((kind, vector)) = self.event {
            if !injectable_in(act, kind, vector) {
                report(E::InjectionBlockedByActivity {
                    activity: act,
                    intr_info: info,
                })?;
            }
        }

        // Interruptibility state.
        if intr & bit::INTR_RESERVED != 0 {
            report(E::InterruptibilityReserved { value: intr })?;
        }
        if blocking == bit::INTR_STI | bit::INTR_MOV_SS {
            report(E::StiAndMovSs { value: intr })?;
        }
        if intr & bit::INTR_STI != 0 && s.rflags & bit::RFLAGS_IF == 0 {
            report(E::StiWithoutIf {
                value: intr,
                rflags: s.rflags,
            })?;
        }
        match self.event {
            Some((event::EXTERNAL, _)) if blocking != 0 => {
                report(E::BlockingWithExternalInterrupt {
                    value: intr,
                    intr_info: info,
                })?
            }
            Some((event::NMI, _)) if intr & bit::INTR_MOV_SS != 0 => report(E::MovSsWithNmi {
                value: intr,
                intr_info: info,
            })?,
            _ => {}
        }
        if intr & bit::INTR_SMI != 0 {
            report(E::SmiBlockingOutsideSmm { value: intr })?;
        }

        // Pending debug exceptions.
        let dbg = s.pending_dbg;
        if dbg & bit::DBG_RESERVED != 0 {
            report(E::PendingDbgReserved { value: dbg })?;
        }
        if blocking != 0 || act == activity::HLT {
            let single_step = s.rflags & bit::RFLAGS_TF != 0 && s.debugctl & bit::DEBUGCTL_BTF == 0;
            let bs = dbg & bit::DBG_BS != 0;
            if single_step && !bs {
                report(E::PendingDbgBsMissing {
                    value: dbg,
                    rflags: s.rflags,
                    debugctl: s.debugctl,
                })?;
            }
            if !single_step && bs {
                report(E::PendingDbgBsSpurious {
                    value: dbg,
                    rflags: s.rflags,
                    debugctl: s.debugctl,
                })?;
            }
        }
        if dbg & bit::DBG_RTM != 0 {
            if dbg & 0xEFFF != 0 || dbg & bit::DBG_ENABLED_BP == 0 {
                report(E::PendingDbgRtm { value: dbg })?;
            }
            if intr & bit::INTR_MOV_SS != 0 {
                report(E::PendingDbgRtmWithMovSs {
                    value: dbg,
                    interruptibility: intr,
                })?;
            }
        }

        // VMCS link pointer.
        let ptr = s.link_ptr;
        if ptr != bit::LINK_PTR_NONE {
            if ptr & 0xFFF != 0 {
                report(E::LinkPtrUnaligned { ptr })?;
            }
            if ptr & bits_from(self.c.maxphyaddr) != 0 {
                report(E::LinkPtrBeyondMaxphyaddr {
                    ptr,
                    maxphyaddr: self.c.maxphyaddr,
                })?;
            }
        }
        ControlFlow::Continue(())
    }
}

use crate::exits::vmexit::{rd, VmcsError};

impl GuestState {
    /// Reads the guest-state fields (and the VM-entry interruption
    /// information) of the current VMCS; a field VMREAD can't read is an
    /// error naming it. Needs VMX operation with a current VMCS.
    pub fn read_current() -> Result<Self, VmcsError> {
        use arch::vmx::vmcs::{ctrl, guest as g};
        macro_rules! seg {
            ($sel:path, $base:path, $limit:path, $ar:path $(,)?) => {
                Seg {
                    sel: rd!($sel),
                    base: rd!($base),
                    limit: rd!($limit),
                    ar: rd!($ar),
                }
            };
        }
        Ok(GuestState {
            cr0: rd!(g::CR0),
            cr3: rd!(g::CR3),
            cr4: rd!(g::CR4),
            dr7: rd!(g::DR7),
            rsp: rd!(g::RSP),
            rip: rd!(g::RIP),
            rflags: rd!(g::RFLAGS),
            efer: rd!(g::IA32_EFER),
            pat: rd!(g::IA32_PAT),
            debugctl: rd!(g::IA32_DEBUGCTL),
            segs: [
                seg!(g::ES_SEL, g::ES_BASE, g::ES_LIMIT, g::ES_ACCESS_RIGHTS),
                seg!(g::CS_SEL, g::CS_BASE, g::CS_LIMIT, g::CS_ACCESS_RIGHTS),
                seg!(g::SS_SEL, g::SS_BASE, g::SS_LIMIT, g::SS_ACCESS_RIGHTS),
                seg!(g::DS_SEL, g::DS_BASE, g::DS_LIMIT, g::DS_ACCESS_RIGHTS),
                seg!(g::FS_SEL, g::FS_BASE, g::FS_LIMIT, g::FS_ACCESS_RIGHTS),
                seg!(g::GS_SEL, g::GS_BASE, g::GS_LIMIT, g::GS_ACCESS_RIGHTS),
                seg!(
                    g::LDTR_SEL,
                    g::LDTR_BASE,
                    g::LDTR_LIMIT,
                    g::LDTR_ACCESS_RIGHTS,
                ),
                seg!(g::TR_SEL, g::TR_BASE, g::TR_LIMIT, g::TR_ACCESS_RIGHTS),
            ],
            gdtr_base: rd!(g::GDTR_BASE),
            idtr_base: rd!(g::IDTR_BASE),
            gdtr_limit: rd!(g::GDTR_LIMIT),
            idtr_limit: rd!(g::IDTR_LIMIT),
            activity: rd!(g::ACTIVITY_STATE),
            interruptibility: rd!(g::INTERRUPTIBILITY_STATE),
            pending_dbg: rd!(g::PENDING_DBG_EXCEPTIONS),
            link_ptr: rd!(g::VMCS_LINK_PTR),
            entry_intr_info: rd!(ctrl::VMENTRY_INTERRUPTION_INFO),
        })
    }
}

impl EntryContext {
    /// Reads the VM-entry and secondary controls of the current VMCS, the
    /// VMX fixed-bit MSRs and the address widths. Needs VMX operation with a
    /// current VMCS.
    pub fn read_current() -> Result<Self, VmcsError> {
        use arch::msr::{self, rdmsr};
        use arch::vmx::vmcs::{bits::primary, ctrl};
        let primary_ctl = rd!(ctrl::PRIMARY_PROCBASED_EXEC_CONTROLS);
        let secondary_controls = if primary_ctl & primary::ACTIVATE_SECONDARY_CONTROLS != 0 {
            rd!(ctrl::SECONDARY_PROCBASED_EXEC_CONTROLS)
        } else {
            0
        };
        // SAFETY: the fixed-bit MSRs exist on every processor with VMX
        // (SDM Appendix A.7, A.8), and reading them has no side effects.
        let (cr0_fixed0, cr0_fixed1, cr4_fixed0, cr4_fixed1) = unsafe {
            (
                rdmsr(msr::IA32_VMX_CR0_FIXED0),
                rdmsr(msr::IA32_VMX_CR0_FIXED1),
                rdmsr(msr::IA32_VMX_CR4_FIXED0),
                rdmsr(msr::IA32_VMX_CR4_FIXED1),
            )
        };
        let widths = arch::cpuid::cpuid(0x8000_0008, 0).eax;
        Ok(EntryContext {
            entry_controls: rd!(ctrl::VMENTRY_CONTROLS),
            secondary_controls,
            cr0_fixed0,
            cr0_fixed1,
            cr4_fixed0,
            cr4_fixed1,
            maxphyaddr: widths as u8,
            linear_width: (widths >> 8) as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GuestStateError as E;
    use SegReg::*;

    const ENTRY_64: u32 =
        bit::ENTRY_LOAD_DEBUG | bit::ENTRY_IA32E | bit::ENTRY_LOAD_PAT | bit::ENTRY_LOAD_EFER;
    const ENTRY_32: u32 = bit::ENTRY_LOAD_DEBUG | bit::ENTRY_LOAD_PAT | bit::ENTRY_LOAD_EFER;
    const PAT: u64 = 0x0007_0406_0007_0406;
    const UNUSABLE: Seg = Seg {
        sel: 0,
        base: 0,
        limit: 0,
        ar: ar::UNUSABLE,
    };

    /// Typical fixed-bit MSRs: PE, NE, PG and VMXE fixed to 1.
    fn ctx(entry_controls: u32, secondary_controls: u32) -> EntryContext {
        EntryContext {
            entry_controls,
            secondary_controls,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xFFFF_FFFF,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x00FF_7FFF,
            maxphyaddr: 39,
            linear_width: 48,
        }
    }

    fn seg(sel: u16, base: u64, limit: u32, ar: u32) -> Seg {
        Seg {
            sel,
            base,
            limit,
            ar,
        }
    }

    fn common(cr0: u64, cr4: u64, efer: u64, segs: [Seg; 8]) -> GuestState {
        GuestState {
            cr0,
            cr3: 0x10_0000,
            cr4,
            dr7: 0x400,
            rsp: 0x7000,
            rip: 0x10_0000,
            rflags: 0x2,
            efer,
            pat: PAT,
            debugctl: 0,
            segs,
            gdtr_base: 0x1000,
            idtr_base: 0x2000,
            gdtr_limit: 0x27,
            idtr_limit: 0xFFF,
            activity: 0,
            interruptibility: 0,
            pending_dbg: 0,
            link_ptr: u64::MAX,
            entry_intr_info: 0,
        }
    }

    /// 64-bit long mode: CS.L=1, flat data, FS/GS/LDTR unusable.
    fn long64() -> (GuestState, EntryContext) {
        let data = seg(0x10, 0, 0xFFFF_FFFF, 0xC093);
        let mut s = common(
            0x8001_0033,
            0x2020,
            0xD01,
            [
                data,
                seg(0x08, 0, 0xFFFF_FFFF, 0xA09B),
                data,
                data,
                Seg {
                    base: 0xFFFF_8000_0000_0000,
                    ..UNUSABLE
                },
                UNUSABLE,
                UNUSABLE,
                seg(0x18, 0xFFFF_8000_0001_0000, 0x67, 0x8B),
            ],
        );
        s.rip = 0xFFFF_FFFF_8000_1000;
        s.rflags = 0x202;
        s.gdtr_base = 0xFFFF_8000_0000_1000;
        (s, ctx(ENTRY_64, 0))
    }

    /// 32-bit protected mode with paging, without unrestricted guest.
    fn prot32() -> (GuestState, EntryContext) {
        let data = seg(0x10, 0, 0xFFFF_FFFF, 0xC093);
        let s = common(
            0x8000_0031,
            0x2010,
            0,
            [
                data,
                seg(0x08, 0, 0xFFFF_FFFF, 0xC09B),
                data,
                data,
                data,
                data,
                UNUSABLE,
                seg(0x18, 0x3000, 0x67, 0x8B),
            ],
        );
        (s, ctx(ENTRY_32, 0))
    }

    /// Real mode under unrestricted guest, at the reset vector.
    fn real() -> (GuestState, EntryContext) {
        let data = seg(0, 0, 0xFFFF, 0x93);
        let mut s = common(
            0x30,
            0x2000,
            0,
            [
                data,
                seg(0xF000, 0xFFFF_0000, 0xFFFF, 0x9B),
                data,
                data,
                data,
                data,
                seg(0, 0, 0xFFFF, 0x82),
                seg(0, 0, 0xFFFF, 0x8B),
            ],
        );
        s.rip = 0xFFF0;
        s.cr3 = 0;
        s.gdtr_base = 0;
        s.gdtr_limit = 0xFFFF;
        s.idtr_base = 0;
        s.idtr_limit = 0xFFFF;
        (s, ctx(ENTRY_32, bit::SECONDARY_UNRESTRICTED))
    }

    /// Virtual-8086 mode inside 32-bit protected mode.
    fn v86() -> (GuestState, EntryContext) {
        let (mut s, c) = prot32();
        for r in [Es, Cs, Ss, Ds, Fs, Gs] {
            let sel = 0x1000 + r as u16;
            *s.seg_mut(r) = seg(sel, u64::from(sel) << 4, 0xFFFF, 0xF3);
        }
        s.rflags = 0x2_0202;
        (s, c)
    }

    #[test]
    fn valid_long_mode() {
        let (s, c) = long64();
        assert_eq!(check(&s, &c), Ok(()));
        assert!(check_all(&s, &c).is_empty());
    }

    #[test]
    fn valid_protected_32() {
        let (s, c) = prot32();
        assert_eq!(check(&s, &c), Ok(()));
    }

    #[test]
    fn valid_real_mode_unrestricted() {
        let (s, c) = real();
        assert_eq!(check(&s, &c), Ok(()));
    }

    #[test]
    fn valid_virtual_8086() {
        let (s, c) = v86();
        assert_eq!(check(&s, &c), Ok(()));
    }

    #[test]
    fn valid_real_mode_with_data_segment_cs() {
        let (mut s, c) = real();
        s.seg_mut(Cs).ar = 0x93;
        assert_eq!(check(&s, &c), Ok(()));
    }

    #[test]
    fn valid_with_pending_single_step_under_sti_blocking() {
        let (mut s, c) = long64();
        s.rflags |= bit::RFLAGS_TF;
        s.interruptibility = bit::INTR_STI;
        s.pending_dbg = bit::DBG_BS;
        assert_eq!(check(&s, &c), Ok(()));
    }

    #[test]
    fn valid_hlt_with_interrupt_injection() {
        let (mut s, c) = long64();
        s.activity = activity::HLT;
        s.entry_intr_info = bit::EVENT_VALID | 0x20;
        assert_eq!(check(&s, &c), Ok(()));
    }

    /// The unrestricted-guest exemptions: PE and PG are not checked against
    /// the fixed bits, but without the control they are.
    #[test]
    fn unrestricted_guest_exempts_pe_pg_only() {
        let (mut s, mut c) = real();
        c.secondary_controls = 0;
        assert_eq!(
            check(&s, &c),
            Err(E::Cr0Fixed {
                cr0: 0x30,
                bad: 0x8000_0001
            })
        );
        c.secondary_controls = bit::SECONDARY_UNRESTRICTED;
        s.cr0 |= bit::CR0_CD | bit::CR0_NW;
        assert_eq!(check(&s, &c), Ok(()));
    }

    #[test]
    fn display_names_field_rule_value_and_section() {
        let (mut s, c) = long64();
        s.seg_mut(Cs).ar = 0x409B | ar::L;
        let e = check(&s, &c).unwrap_err();
        assert_eq!(
            e.to_string(),
            "guest CS access rights 0x609b: in IA-32e mode with L=1, D must be 0 (SDM 27.3.1.2)"
        );
    }

    #[test]
    fn check_all_lists_every_failure_in_order() {
        let (mut s, c) = long64();
        s.cr3 = 1 << 45;
        s.rflags |= 1 << 3;
        s.link_ptr = 0x1234;
        let all = check_all(&s, &c);
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(all[0], check(&s, &c).unwrap_err());
        assert_eq!(
            all.iter().map(|e| e.section()).collect::<Vec<_>>(),
            [S1, S4, S5]
        );
        assert!(matches!(all[2], E::LinkPtrUnaligned { ptr: 0x1234 }));
    }

    /// Every error's message cites its section and ends the same way.
    #[test]
    fn every_message_cites_the_sdm() {
        let (mut s, c) = long64();
        s.cr0 = 0;
        s.seg_mut(Cs).ar = 0x1_0000;
        s.rip = 1 << 62;
        s.activity = 7;
        let all = check_all(&s, &c);
        assert!(all.len() > 5);
        for e in all {
            let m = e.to_string();
            assert!(m.starts_with("guest "), "{m}");
            assert!(m.ends_with(&format!(" (SDM {})", e.section())), "{m}");
        }
    }

    /// One test per check: start from a valid state, apply one mutation, and
    /// require that exactly the expected check fails first.
    macro_rules! trips {
        ($($name:ident: $base:ident, |$s:ident, $c:ident| $mutate:block => $pat:pat,)*) => {$(
            #[test]
            fn $name() {
                #[allow(unused_mut)]
                let (mut $s, mut $c) = $base();
                $mutate
                let got = check(&$s, &$c);
                assert!(matches!(got, Err($pat)), "got {got:?}");
                let e = got.unwrap_err();
                assert!(e.to_string().contains(e.section()));
            }
        )*};
    }

    trips! {
        // 27.3.1.1
        cr0_fixed0_bit_clear: long64, |s, c| { s.cr0 &= !(1 << 5); } => E::Cr0Fixed { bad: 0x20, .. },
        cr0_fixed1_bit_set: long64, |s, c| { c.cr0_fixed1 = 0xFFFF_FFFE_FFFF_FFFF; s.cr0 |= 1 << 32; }
            => E::Cr0Fixed { bad: 0x1_0000_0000, .. },
        cr0_pg_without_pe: real, |s, c| { s.cr0 |= bit::CR0_PG; } => E::Cr0PgWithoutPe { .. },
        cr4_fixed0_vmxe_clear: prot32, |s, c| { s.cr4 &= !0x2000; } => E::Cr4Fixed { bad: 0x2000, .. },
        cr4_fixed1_bit_set: prot32, |s, c| { s.cr4 |= 1 << 15; } => E::Cr4Fixed { bad: 0x8000, .. },
        cr4_cet_without_wp: prot32, |s, c| { s.cr4 |= bit::CR4_CET; } => E::Cr4CetWithoutWp { .. },
        debugctl_reserved: long64, |s, c| { s.debugctl = 1 << 20; } => E::DebugctlReserved { .. },
        ia32e_without_pg: long64, |s, c| { c.secondary_controls = bit::SECONDARY_UNRESTRICTED; s.cr0 &= !bit::CR0_PG; }
            => E::Ia32eWithoutPg { .. },
        ia32e_without_pae: long64, |s, c| { s.cr4 &= !bit::CR4_PAE; } => E::Ia32eWithoutPae { .. },
        pcide_outside_ia32e: prot32, |s, c| { s.cr4 |= bit::CR4_PCIDE; } => E::PcideOutsideIa32e { .. },
        cr3_beyond_maxphyaddr: long64, |s, c| { s.cr3 |= 1 << 39; } => E::Cr3Reserved { maxphyaddr: 39, .. },
        cr3_bit_63: long64, |s, c| { c.maxphyaddr = 52; s.cr3 |= 1 << 63; } => E::Cr3Reserved { .. },
        dr7_upper: long64, |s, c| { s.dr7 |= 1 << 32; } => E::Dr7Upper { .. },
        pat_invalid_type: long64, |s, c| { s.pat = PAT | (2 << 24); } => E::PatInvalid { index: 3, .. },
        efer_reserved: long64, |s, c| { s.efer |= 1 << 14; } => E::EferReserved { .. },
        efer_lma_without_ia32e: long64, |s, c| { c.entry_controls &= !bit::ENTRY_IA32E; s.cr4 &= !bit::CR4_PCIDE; }
            => E::EferLmaMismatch { ia32e: false, .. },
        efer_lma_missing: long64, |s, c| { s.efer &= !bit::EFER_LMA; } => E::EferLmaMismatch { ia32e: true, .. },
        efer_lme_not_lma: long64, |s, c| { s.efer &= !bit::EFER_LME; } => E::EferLmeMismatch { .. },

        // 27.3.1.2 selectors
        tr_selector_ti: long64, |s, c| { s.seg_mut(Tr).sel |= 4; } => E::TrSelectorTi { .. },
        ldtr_selector_ti: prot32, |s, c| { *s.seg_mut(Ldtr) = seg(0x24, 0x5000, 0xFF, 0x82); } => E::LdtrSelectorTi { .. },
        ss_rpl_not_cs_rpl: prot32, |s, c| { s.seg_mut(Ss).sel |= 3; } => E::SsRplMismatch { .. },
        // bases
        v86_base: v86, |s, c| { s.seg_mut(Ds).base += 1; } => E::V86Base { seg: Ds, .. },
        tr_base_not_canonical: long64, |s, c| { s.seg_mut(Tr).base = 0x0000_8000_0000_0000; }
            => E::BaseNotCanonical { seg: Tr, .. },
        unusable_fs_base_not_canonical: long64, |s, c| { s.seg_mut(Fs).base = 0x1234_0000_0000_0000; }
            => E::BaseNotCanonical { seg: Fs, .. },
        cs_base_upper_bits: long64, |s, c| { s.seg_mut(Cs).base = 1 << 32; } => E::BaseUpperBits { seg: Cs, .. },
        ds_base_upper_bits: long64, |s, c| { s.seg_mut(Ds).base = 1 << 40; } => E::BaseUpperBits { seg: Ds, .. },
        // limits, access rights in virtual-8086 mode
        v86_limit: v86, |s, c| { s.seg_mut(Gs).limit = 0xFFFFF; } => E::V86Limit { seg: Gs, .. },
        v86_access_rights: v86, |s, c| { s.seg_mut(Ss).ar = 0x93; } => E::V86AccessRights { seg: Ss, .. },
        // type
        cs_type_data_without_unrestricted: prot32, |s, c| { s.seg_mut(Cs).ar = 0xC093; }
            => E::CsType { unrestricted: false, .. },
        cs_type_not_accessed: long64, |s, c| { s.seg_mut(Cs).ar &= !1; } => E::CsType { .. },
        ss_type_code: prot32, |s, c| { s.seg_mut(Ss).ar = 0xC09B; } => E::SsType { .. },
        ds_not_accessed: prot32, |s, c| { s.seg_mut(Ds).ar = 0xC092; } => E::NotAccessed { seg: Ds, .. },
        es_code_not_readable: prot32, |s, c| { s.seg_mut(Es).ar = 0xC099; } => E::CodeNotReadable { seg: Es, .. },
        // S
        cs_system_segment: prot32, |s, c| { s.seg_mut(Cs).ar &= !ar::S; } => E::NotCodeOrData { seg: Cs, .. },
        // DPL
        cs_type3_dpl: real, |s, c| { s.seg_mut(Cs).ar = 0xB3; } => E::CsDplWithType3 { .. },
        cs_dpl_not_ss_dpl: prot32, |s, c| { s.seg_mut(Cs).ar |= 3 << 5; s.seg_mut(Cs).sel |= 3; s.seg_mut(Ss).sel |= 3; }
            => E::CsDplNotSsDpl { .. },
        conforming_cs_dpl_above_ss: prot32, |s, c| { s.seg_mut(Cs).ar = 0xC0FF; } => E::CsDplAboveSsDpl { .. },
        ss_dpl_not_rpl: prot32, |s, c| { s.seg_mut(Ss).ar |= 3 << 5; s.seg_mut(Cs).ar = 0xC0FF; } => E::SsDplNotRpl { .. },
        ss_dpl_with_cs_type3: real, |s, c| { s.cr0 |= bit::CR0_PE; s.seg_mut(Cs).ar = 0x93; s.seg_mut(Ss).ar = 0xF3; }
            => E::SsDplWithCsType3 { .. },
        ss_dpl_in_real_mode: real, |s, c| { s.seg_mut(Ss).ar = 0xF3; s.seg_mut(Cs).ar = 0xFF; } => E::SsDplWithoutPe { .. },
        ds_dpl_below_rpl: prot32, |s, c| { s.seg_mut(Ds).sel |= 3; } => E::DplBelowRpl { seg: Ds, .. },
        // P, reserved bits, L/D, G
        cs_not_present: prot32, |s, c| { s.seg_mut(Cs).ar &= !ar::P; } => E::NotPresent { seg: Cs, .. },
        fs_not_present: prot32, |s, c| { s.seg_mut(Fs).ar &= !ar::P; } => E::NotPresent { seg: Fs, .. },
        gs_reserved_11_8: prot32, |s, c| { s.seg_mut(Gs).ar |= 0x100; } => E::ArReserved11To8 { seg: Gs, .. },
        cs_long_and_default_big: long64, |s, c| { s.seg_mut(Cs).ar |= ar::DB; } => E::CsLongWithDefaultBig { .. },
        ss_granularity_big_limit: prot32, |s, c| { s.seg_mut(Ss).ar &= !ar::G; } => E::Granularity { seg: Ss, .. },
        cs_granularity_small_limit: real, |s, c| { s.seg_mut(Cs).ar |= ar::G; s.seg_mut(Cs).limit = 0xFFFE; } => E::Granularity { seg: Cs, .. },
        es_reserved_31_17: prot32, |s, c| { s.seg_mut(Es).ar |= 1 << 20; } => E::ArReserved31To17 { seg: Es, .. },
        // TR
        tr_16bit_in_ia32e: long64, |s, c| { s.seg_mut(Tr).ar = 0x83; } => E::TrType { ia32e: true, .. },
        tr_available_tss: prot32, |s, c| { s.seg_mut(Tr).ar = 0x89; } => E::TrType { ia32e: false, .. },
        tr_s_bit: long64, |s, c| { s.seg_mut(Tr).ar |= ar::S; } => E::NotSystem { seg: Tr, .. },
        tr_not_present: long64, |s, c| { s.seg_mut(Tr).ar &= !ar::P; } => E::NotPresent { seg: Tr, .. },
        tr_reserved_11_8: long64, |s, c| { s.seg_mut(Tr).ar |= 0x800; } => E::ArReserved11To8 { seg: Tr, .. },
        tr_granularity: long64, |s, c| { s.seg_mut(Tr).ar |= ar::G; } => E::Granularity { seg: Tr, .. },
        tr_unusable: long64, |s, c| { s.seg_mut(Tr).ar |= ar::UNUSABLE; } => E::TrUnusable { .. },
        tr_reserved_31_17: long64, |s, c| { s.seg_mut(Tr).ar |= 1 << 31; } => E::ArReserved31To17 { seg: Tr, .. },
        // LDTR
        ldtr_type: real, |s, c| { s.seg_mut(Ldtr).ar = 0x83; } => E::LdtrType { .. },
        ldtr_s_bit: real, |s, c| { s.seg_mut(Ldtr).ar |= ar::S; } => E::NotSystem { seg: Ldtr, .. },
        ldtr_not_present: real, |s, c| { s.seg_mut(Ldtr).ar &= !ar::P; } => E::NotPresent { seg: Ldtr, .. },
        ldtr_granularity: real, |s, c| { s.seg_mut(Ldtr).limit = 0x10_0000; } => E::Granularity { seg: Ldtr, .. },

        // 27.3.1.3
        gdtr_base_not_canonical: long64, |s, c| { s.gdtr_base = 0x0001_0000_0000_0000; }
            => E::TableBaseNotCanonical { table: DescTable::Gdtr, .. },
        idtr_base_five_level_ok_four_level_not: long64, |s, c| { s.idtr_base = 0xFF00_0000_0000_0000; c.linear_width = 48; }
            => E::TableBaseNotCanonical { table: DescTable::Idtr, .. },
        idtr_limit: prot32, |s, c| { s.idtr_limit = 0x1_0000; } => E::TableLimit { table: DescTable::Idtr, .. },

        // 27.3.1.4
        rip_upper_bits_in_compat_mode: long64, |s, c| { s.seg_mut(Cs).ar = 0xC09B; } => E::RipUpperBits { .. },
        rip_not_canonical: long64, |s, c| { s.rip = 0x0000_8000_0000_0000; } => E::RipNotCanonical { .. },
        rflags_bit1_clear: prot32, |s, c| { s.rflags = 0; } => E::RflagsReserved { .. },
        rflags_bit15_set: prot32, |s, c| { s.rflags |= 1 << 15; } => E::RflagsReserved { .. },
        rflags_vm_in_ia32e: long64, |s, c| {
            s.rflags |= bit::RFLAGS_VM;
            s.rip = 0x1000;
            for r in [Es, Cs, Ss, Ds, Fs, Gs] { *s.seg_mut(r) = seg(0, 0, 0xFFFF, 0xF3); }
        } => E::RflagsVmInIa32e { .. },
        rflags_vm_without_pe: real, |s, c| {
            s.rflags |= bit::RFLAGS_VM;
            for r in [Es, Cs, Ss, Ds, Fs, Gs] { *s.seg_mut(r) = seg(0, 0, 0xFFFF, 0xF3); }
        } => E::RflagsVmWithoutPe { .. },
        if_clear_injecting_external_interrupt: long64, |s, c| { s.rflags = 0x2; s.entry_intr_info = bit::EVENT_VALID | 0x30; }
            => E::IfClearForExternalInterrupt { .. },

        // 27.3.1.5
        activity_out_of_range: long64, |s, c| { s.activity = 4; } => E::ActivityInvalid { activity: 4 },
        hlt_at_cpl3: prot32, |s, c| {
            s.activity = activity::HLT;
            s.seg_mut(Cs).ar |= 3 << 5; s.seg_mut(Cs).sel |= 3;
            s.seg_mut(Ss).ar |= 3 << 5; s.seg_mut(Ss).sel |= 3;
        } => E::HltWithSsDpl { .. },
        hlt_with_sti_blocking: long64, |s, c| { s.activity = activity::HLT; s.interruptibility = bit::INTR_STI; }
            => E::InactiveWithBlocking { .. },
        hlt_injecting_page_fault: long64, |s, c| { s.activity = activity::HLT; s.entry_intr_info = bit::EVENT_VALID | 0x30E; }
            => E::InjectionBlockedByActivity { .. },
        wait_for_sipi_injecting_nmi: real, |s, c| { s.activity = activity::WAIT_FOR_SIPI; s.entry_intr_info = bit::EVENT_VALID | 0x202; }
            => E::InjectionBlockedByActivity { activity: 3, .. },
        interruptibility_reserved: long64, |s, c| { s.interruptibility = 1 << 5; } => E::InterruptibilityReserved { .. },
        sti_and_mov_ss: long64, |s, c| { s.interruptibility = 3; } => E::StiAndMovSs { .. },
        sti_without_if: long64, |s, c| { s.rflags = 0x2; s.interruptibility = bit::INTR_STI; } => E::StiWithoutIf { .. },
        sti_blocking_with_external_interrupt: long64, |s, c| { s.interruptibility = bit::INTR_STI; s.entry_intr_info = bit::EVENT_VALID | 0x30; }
            => E::BlockingWithExternalInterrupt { .. },
        mov_ss_blocking_with_nmi: long64, |s, c| { s.interruptibility = bit::INTR_MOV_SS; s.entry_intr_info = bit::EVENT_VALID | 0x202; }
            => E::MovSsWithNmi { .. },
        smi_blocking: long64, |s, c| { s.interruptibility = bit::INTR_SMI; } => E::SmiBlockingOutsideSmm { .. },
        pending_dbg_reserved: long64, |s, c| { s.pending_dbg = 1 << 13; } => E::PendingDbgReserved { .. },
        pending_dbg_bs_missing: long64, |s, c| { s.rflags |= bit::RFLAGS_TF; s.interruptibility = bit::INTR_MOV_SS; }
            => E::PendingDbgBsMissing { .. },
        pending_dbg_bs_with_btf: long64, |s, c| {
            s.rflags |= bit::RFLAGS_TF; s.debugctl = bit::DEBUGCTL_BTF;
            s.activity = activity::HLT; s.pending_dbg = bit::DBG_BS;
        } => E::PendingDbgBsSpurious { .. },
        pending_dbg_rtm_without_enabled_bp: long64, |s, c| { s.pending_dbg = bit::DBG_RTM; } => E::PendingDbgRtm { .. },
        pending_dbg_rtm_with_mov_ss: long64, |s, c| {
            s.pending_dbg = bit::DBG_RTM | bit::DBG_ENABLED_BP; s.interruptibility = bit::INTR_MOV_SS;
        } => E::PendingDbgRtmWithMovSs { .. },
        link_ptr_unaligned: long64, |s, c| { s.link_ptr = 0x1008; } => E::LinkPtrUnaligned { .. },
        link_ptr_beyond_maxphyaddr: long64, |s, c| { s.link_ptr = 1 << 40; } => E::LinkPtrBeyondMaxphyaddr { .. },
    }

    #[test]
    fn five_level_width_accepts_57_bit_canonical() {
        let (mut s, mut c) = long64();
        s.idtr_base = 0xFF00_0000_0000_0000;
        c.linear_width = 57;
        assert_eq!(check(&s, &c), Ok(()));
    }

    #[test]
    fn unusable_segments_skip_their_checks() {
        let (mut s, c) = prot32();
        *s.seg_mut(Ds) = Seg {
            sel: 3,
            base: 1 << 40,
            limit: 0x1234_5678,
            ar: ar::UNUSABLE | 0x1F00,
        };
        assert_eq!(check(&s, &c), Ok(()));
    }
}
