//! Basic exit reasons and exit qualifications (SDM Vol. 3D Appendix C, Vol. 3C 28.2).

/// Basic exit reasons (bits 15:0 of the exit-reason field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ExitReason {
    ExceptionOrNmi = 0,
    ExternalInterrupt = 1,
    TripleFault = 2,
    Init = 3,
    Sipi = 4,
    IoSmi = 5,
    OtherSmi = 6,
    InterruptWindow = 7,
    NmiWindow = 8,
    TaskSwitch = 9,
    Cpuid = 10,
    Getsec = 11,
    Hlt = 12,
    Invd = 13,
    Invlpg = 14,
    Rdpmc = 15,
    Rdtsc = 16,
    Rsm = 17,
    Vmcall = 18,
    Vmclear = 19,
    Vmlaunch = 20,
    Vmptrld = 21,
    Vmptrst = 22,
    Vmread = 23,
    Vmresume = 24,
    Vmwrite = 25,
    Vmxoff = 26,
    Vmxon = 27,
    CrAccess = 28,
    DrAccess = 29,
    IoInstruction = 30,
    Rdmsr = 31,
    Wrmsr = 32,
    EntryFailGuestState = 33,
    EntryFailMsrLoading = 34,
    Mwait = 36,
    MonitorTrapFlag = 37,
    Monitor = 39,
    Pause = 40,
    EntryFailMachineCheck = 41,
    TprBelowThreshold = 43,
    ApicAccess = 44,
    VirtualizedEoi = 45,
    GdtrIdtrAccess = 46,
    LdtrTrAccess = 47,
    EptViolation = 48,
    EptMisconfig = 49,
    Invept = 50,
    Rdtscp = 51,
    PreemptionTimer = 52,
    Invvpid = 53,
    Wbinvd = 54,
    Xsetbv = 55,
    ApicWrite = 56,
    Rdrand = 57,
    Invpcid = 58,
    Vmfunc = 59,
    Encls = 60,
    Rdseed = 61,
    PmlFull = 62,
    Xsaves = 63,
    Xrstors = 64,
    Umwait = 67,
    Tpause = 68,
}

impl ExitReason {
    pub fn from_raw(raw: u32) -> Option<Self> {
        use ExitReason::*;
        const TABLE: [Option<ExitReason>; 69] = {
            let mut t: [Option<ExitReason>; 69] = [None; 69];
            let all = [
                ExceptionOrNmi,
                ExternalInterrupt,
                TripleFault,
                Init,
                Sipi,
                IoSmi,
                OtherSmi,
                InterruptWindow,
                NmiWindow,
                TaskSwitch,
                Cpuid,
                Getsec,
                Hlt,
                Invd,
                Invlpg,
                Rdpmc,
                Rdtsc,
                Rsm,
                Vmcall,
                Vmclear,
                Vmlaunch,
                Vmptrld,
                Vmptrst,
                Vmread,
                Vmresume,
                Vmwrite,
                Vmxoff,
                Vmxon,
                CrAccess,
                DrAccess,
                IoInstruction,
                Rdmsr,
                Wrmsr,
                EntryFailGuestState,
                EntryFailMsrLoading,
                Mwait,
                MonitorTrapFlag,
                Monitor,
                Pause,
                EntryFailMachineCheck,
                TprBelowThreshold,
                ApicAccess,
                VirtualizedEoi,
                GdtrIdtrAccess,
                LdtrTrAccess,
                EptViolation,
                EptMisconfig,
                Invept,
                Rdtscp,
                PreemptionTimer,
                Invvpid,
                Wbinvd,
                Xsetbv,
                ApicWrite,
                Rdrand,
                Invpcid,
                Vmfunc,
                Encls,
                Rdseed,
                PmlFull,
                Xsaves,
                Xrstors,
                Umwait,
                Tpause,
            ];
            let mut i = 0;
            while i < all.len() {
                t[all[i] as usize] = Some(all[i]);
                i += 1;
            }
            t
        };
        TABLE.get((raw & 0xFFFF) as usize).copied().flatten()
    }
}

/// Bit 31 of the exit-reason field: the VM entry failed (SDM 28.2.1).
pub const EXIT_REASON_ENTRY_FAILURE: u32 = 1 << 31;

/// Exit qualification of an I/O instruction (SDM Table 28-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoQualification {
    pub size: u8,
    pub is_in: bool,
    pub string: bool,
    pub rep: bool,
    pub port: u16,
}

impl IoQualification {
    pub fn decode(q: u64) -> Self {
        Self {
            size: (q & 7) as u8 + 1,
            is_in: q & (1 << 3) != 0,
            string: q & (1 << 4) != 0,
            rep: q & (1 << 5) != 0,
            port: (q >> 16) as u16,
        }
    }
}

/// Kind of control-register access (SDM Table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccessType {
    MovToCr,
    MovFromCr,
    Clts,
    Lmsw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrQualification {
    pub cr: u8,
    pub access: CrAccessType,
    /// General-purpose register number (0 = RAX ... 15 = R15).
    pub gpr: u8,
    pub lmsw_source: u16,
}

impl CrQualification {
    pub fn decode(q: u64) -> Self {
        let access = match (q >> 4) & 3 {
            0 => CrAccessType::MovToCr,
            1 => CrAccessType::MovFromCr,
            2 => CrAccessType::Clts,
            _ => CrAccessType::Lmsw,
        };
        Self {
            cr: (q & 0xF) as u8,
            access,
            gpr: ((q >> 8) & 0xF) as u8,
            lmsw_source: (q >> 16) as u16,
        }
    }
}

/// Exit qualification of an EPT violation (SDM Table 28-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptViolation {
    pub read: bool,
    pub write: bool,
    pub fetch: bool,
    /// The guest-physical address was readable / writable / executable.
    pub was_readable: bool,
    pub was_writable: bool,
    pub was_executable: bool,
    pub linear_valid: bool,
}

impl EptViolation {
    pub fn decode(q: u64) -> Self {
        Self {
            read: q & 1 != 0,
            write: q & 2 != 0,
            fetch: q & 4 != 0,
            was_readable: q & 8 != 0,
            was_writable: q & 0x10 != 0,
            was_executable: q & 0x20 != 0,
            linear_valid: q & 0x80 != 0,
        }
    }

    pub fn access(&self) -> &'static str {
        if self.write {
            "write"
        } else if self.fetch {
            "execute"
        } else {
            "read"
        }
    }
}

/// VM-exit interruption information / IDT-vectoring information (SDM 25.9.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptionInfo {
    pub vector: u8,
    /// 0 external interrupt, 2 NMI, 3 hardware exception, 4 software interrupt, 6 software exception.
    pub kind: u8,
    pub error_code_valid: bool,
    pub valid: bool,
}

impl InterruptionInfo {
    pub fn decode(v: u32) -> Self {
        Self {
            vector: v as u8,
            kind: ((v >> 8) & 7) as u8,
            error_code_valid: v & (1 << 11) != 0,
            valid: v & (1 << 31) != 0,
        }
    }
}

/// Builds a VM-entry interruption-information value for a hardware exception (SDM 25.8.3).
pub fn hw_exception(vector: u8, has_error_code: bool) -> u32 {
    u32::from(vector) | (3 << 8) | (u32::from(has_error_code) << 11) | (1 << 31)
}

/// Builds a VM-entry interruption-information value for an external interrupt.
pub fn external_interrupt(vector: u8) -> u32 {
    u32::from(vector) | (1 << 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_round_trip() {
        assert_eq!(ExitReason::from_raw(10), Some(ExitReason::Cpuid));
        assert_eq!(ExitReason::from_raw(48), Some(ExitReason::EptViolation));
        assert_eq!(
            ExitReason::from_raw(0x8000_0021),
            Some(ExitReason::EntryFailGuestState)
        );
        assert_eq!(ExitReason::from_raw(35), None);
        assert_eq!(ExitReason::from_raw(1000), None);
    }

    #[test]
    fn io_qualification() {
        // OUT DX, AL to port 0x3F8.
        let q = IoQualification::decode(0x03F8_0000);
        assert_eq!(
            q,
            IoQualification {
                size: 1,
                is_in: false,
                string: false,
                rep: false,
                port: 0x3F8
            }
        );
        // REP INSD from port 0x1F0.
        let q = IoQualification::decode(0x01F0_0000 | 3 | 8 | 16 | 32);
        assert!(q.is_in && q.string && q.rep);
        assert_eq!(q.size, 4);
    }

    #[test]
    fn cr_and_ept_qualifications() {
        let q = CrQualification::decode(0x0300 | 0x04); // mov cr4, rbx
        assert_eq!((q.cr, q.access, q.gpr), (4, CrAccessType::MovToCr, 3));
        let e = EptViolation::decode(0x2 | 0x80);
        assert_eq!(e.access(), "write");
        assert!(!e.was_readable);
        assert_eq!(hw_exception(13, true), 0x80000b0d);
        assert_eq!(hw_exception(6, false), 0x80000306);
    }
}
