//! VMCS field encodings by width (SDM Vol. 3D Appendix B) with typed accessors.
use super::instr::{vmread, vmwrite, VmFail};

macro_rules! field_type {
    ($name:ident, $ty:ty) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name(pub u32);
        impl $name {
            /// Reads this field of the current VMCS.
            #[inline]
            pub fn read(self) -> Result<$ty, VmFail> {
                vmread(self.0).map(|v| v as $ty)
            }
            /// Writes this field of the current VMCS.
            ///
            /// # Safety
            /// Changes the state of the current VMCS.
            #[inline]
            pub unsafe fn write(self, v: $ty) -> Result<(), VmFail> {
                // SAFETY: forwarded to the caller.
                unsafe { vmwrite(self.0, v as u64) }
            }
        }
    };
}
field_type!(Field16, u16);
field_type!(Field32, u32);
field_type!(Field64, u64);
field_type!(FieldNat, u64);

/// Control fields.
pub mod ctrl {
    use super::*;
    pub const VPID: Field16 = Field16(0x0000);
    pub const IO_BITMAP_A: Field64 = Field64(0x2000);
    pub const IO_BITMAP_B: Field64 = Field64(0x2002);
    pub const MSR_BITMAPS: Field64 = Field64(0x2004);
    pub const VMEXIT_MSR_STORE_ADDR: Field64 = Field64(0x2006);
    pub const VMEXIT_MSR_LOAD_ADDR: Field64 = Field64(0x2008);
    pub const VMENTRY_MSR_LOAD_ADDR: Field64 = Field64(0x200A);
    pub const TSC_OFFSET: Field64 = Field64(0x2010);
    pub const VIRTUAL_APIC_ADDR: Field64 = Field64(0x2012);
    pub const APIC_ACCESS_ADDR: Field64 = Field64(0x2014);
    pub const EPT_POINTER: Field64 = Field64(0x201A);
    pub const XSS_EXITING_BITMAP: Field64 = Field64(0x202C);
    pub const PINBASED_EXEC_CONTROLS: Field32 = Field32(0x4000);
    pub const PRIMARY_PROCBASED_EXEC_CONTROLS: Field32 = Field32(0x4002);
    pub const EXCEPTION_BITMAP: Field32 = Field32(0x4004);
    pub const PAGE_FAULT_ERR_CODE_MASK: Field32 = Field32(0x4006);
    pub const PAGE_FAULT_ERR_CODE_MATCH: Field32 = Field32(0x4008);
    pub const CR3_TARGET_COUNT: Field32 = Field32(0x400A);
    pub const VMEXIT_CONTROLS: Field32 = Field32(0x400C);
    pub const VMEXIT_MSR_STORE_COUNT: Field32 = Field32(0x400E);
    pub const VMEXIT_MSR_LOAD_COUNT: Field32 = Field32(0x4010);
    pub const VMENTRY_CONTROLS: Field32 = Field32(0x4012);
    pub const VMENTRY_MSR_LOAD_COUNT: Field32 = Field32(0x4014);
    pub const VMENTRY_INTERRUPTION_INFO: Field32 = Field32(0x4016);
    pub const VMENTRY_EXCEPTION_ERR_CODE: Field32 = Field32(0x4018);
    pub const VMENTRY_INSTRUCTION_LEN: Field32 = Field32(0x401A);
    pub const TPR_THRESHOLD: Field32 = Field32(0x401C);
    pub const SECONDARY_PROCBASED_EXEC_CONTROLS: Field32 = Field32(0x401E);
    pub const CR0_GUEST_HOST_MASK: FieldNat = FieldNat(0x6000);
    pub const CR4_GUEST_HOST_MASK: FieldNat = FieldNat(0x6002);
    pub const CR0_READ_SHADOW: FieldNat = FieldNat(0x6004);
    pub const CR4_READ_SHADOW: FieldNat = FieldNat(0x6006);
}

/// Guest-state fields.
pub mod guest {
    use super::*;
    pub const ES_SEL: Field16 = Field16(0x0800);
    pub const CS_SEL: Field16 = Field16(0x0802);
    pub const SS_SEL: Field16 = Field16(0x0804);
    pub const DS_SEL: Field16 = Field16(0x0806);
    pub const FS_SEL: Field16 = Field16(0x0808);
    pub const GS_SEL: Field16 = Field16(0x080A);
    pub const LDTR_SEL: Field16 = Field16(0x080C);
    pub const TR_SEL: Field16 = Field16(0x080E);
    pub const VMCS_LINK_PTR: Field64 = Field64(0x2800);
    pub const IA32_DEBUGCTL: Field64 = Field64(0x2802);
    pub const IA32_PAT: Field64 = Field64(0x2804);
    pub const IA32_EFER: Field64 = Field64(0x2806);
    pub const PDPTE0: Field64 = Field64(0x280A);
    pub const PDPTE1: Field64 = Field64(0x280C);
    pub const PDPTE2: Field64 = Field64(0x280E);
    pub const PDPTE3: Field64 = Field64(0x2810);
    pub const ES_LIMIT: Field32 = Field32(0x4800);
    pub const CS_LIMIT: Field32 = Field32(0x4802);
    pub const SS_LIMIT: Field32 = Field32(0x4804);
    pub const DS_LIMIT: Field32 = Field32(0x4806);
    pub const FS_LIMIT: Field32 = Field32(0x4808);
    pub const GS_LIMIT: Field32 = Field32(0x480A);
    pub const LDTR_LIMIT: Field32 = Field32(0x480C);
    pub const TR_LIMIT: Field32 = Field32(0x480E);
    pub const GDTR_LIMIT: Field32 = Field32(0x4810);
    pub const IDTR_LIMIT: Field32 = Field32(0x4812);
    pub const ES_ACCESS_RIGHTS: Field32 = Field32(0x4814);
    pub const CS_ACCESS_RIGHTS: Field32 = Field32(0x4816);
    pub const SS_ACCESS_RIGHTS: Field32 = Field32(0x4818);
    pub const DS_ACCESS_RIGHTS: Field32 = Field32(0x481A);
    pub const FS_ACCESS_RIGHTS: Field32 = Field32(0x481C);
    pub const GS_ACCESS_RIGHTS: Field32 = Field32(0x481E);
    pub const LDTR_ACCESS_RIGHTS: Field32 = Field32(0x4820);
    pub const TR_ACCESS_RIGHTS: Field32 = Field32(0x4822);
    pub const INTERRUPTIBILITY_STATE: Field32 = Field32(0x4824);
    pub const ACTIVITY_STATE: Field32 = Field32(0x4826);
    pub const SMBASE: Field32 = Field32(0x4828);
    pub const IA32_SYSENTER_CS: Field32 = Field32(0x482A);
    pub const VMX_PREEMPTION_TIMER_VALUE: Field32 = Field32(0x482E);
    pub const CR0: FieldNat = FieldNat(0x6800);
    pub const CR3: FieldNat = FieldNat(0x6802);
    pub const CR4: FieldNat = FieldNat(0x6804);
    pub const ES_BASE: FieldNat = FieldNat(0x6806);
    pub const CS_BASE: FieldNat = FieldNat(0x6808);
    pub const SS_BASE: FieldNat = FieldNat(0x680A);
    pub const DS_BASE: FieldNat = FieldNat(0x680C);
    pub const FS_BASE: FieldNat = FieldNat(0x680E);
    pub const GS_BASE: FieldNat = FieldNat(0x6810);
    pub const LDTR_BASE: FieldNat = FieldNat(0x6812);
    pub const TR_BASE: FieldNat = FieldNat(0x6814);
    pub const GDTR_BASE: FieldNat = FieldNat(0x6816);
    pub const IDTR_BASE: FieldNat = FieldNat(0x6818);
    pub const DR7: FieldNat = FieldNat(0x681A);
    pub const RSP: FieldNat = FieldNat(0x681C);
    pub const RIP: FieldNat = FieldNat(0x681E);
    pub const RFLAGS: FieldNat = FieldNat(0x6820);
    pub const PENDING_DBG_EXCEPTIONS: FieldNat = FieldNat(0x6822);
    pub const IA32_SYSENTER_ESP: FieldNat = FieldNat(0x6824);
    pub const IA32_SYSENTER_EIP: FieldNat = FieldNat(0x6826);
}

/// Host-state fields.
pub mod host {
    use super::*;
    pub const ES_SEL: Field16 = Field16(0x0C00);
    pub const CS_SEL: Field16 = Field16(0x0C02);
    pub const SS_SEL: Field16 = Field16(0x0C04);
    pub const DS_SEL: Field16 = Field16(0x0C06);
    pub const FS_SEL: Field16 = Field16(0x0C08);
    pub const GS_SEL: Field16 = Field16(0x0C0A);
    pub const TR_SEL: Field16 = Field16(0x0C0C);
    pub const IA32_PAT: Field64 = Field64(0x2C00);
    pub const IA32_EFER: Field64 = Field64(0x2C02);
    pub const IA32_SYSENTER_CS: Field32 = Field32(0x4C00);
    pub const CR0: FieldNat = FieldNat(0x6C00);
    pub const CR3: FieldNat = FieldNat(0x6C02);
    pub const CR4: FieldNat = FieldNat(0x6C04);
    pub const FS_BASE: FieldNat = FieldNat(0x6C06);
    pub const GS_BASE: FieldNat = FieldNat(0x6C08);
    pub const TR_BASE: FieldNat = FieldNat(0x6C0A);
    pub const GDTR_BASE: FieldNat = FieldNat(0x6C0C);
    pub const IDTR_BASE: FieldNat = FieldNat(0x6C0E);
    pub const IA32_SYSENTER_ESP: FieldNat = FieldNat(0x6C10);
    pub const IA32_SYSENTER_EIP: FieldNat = FieldNat(0x6C12);
    pub const RSP: FieldNat = FieldNat(0x6C14);
    pub const RIP: FieldNat = FieldNat(0x6C16);
}

/// Read-only data fields.
pub mod ro {
    use super::*;
    pub const GUEST_PHYSICAL_ADDR: Field64 = Field64(0x2400);
    pub const VM_INSTRUCTION_ERROR: Field32 = Field32(0x4400);
    pub const EXIT_REASON: Field32 = Field32(0x4402);
    pub const VMEXIT_INTERRUPTION_INFO: Field32 = Field32(0x4404);
    pub const VMEXIT_INTERRUPTION_ERR_CODE: Field32 = Field32(0x4406);
    pub const IDT_VECTORING_INFO: Field32 = Field32(0x4408);
    pub const IDT_VECTORING_ERR_CODE: Field32 = Field32(0x440A);
    pub const VMEXIT_INSTRUCTION_LEN: Field32 = Field32(0x440C);
    pub const VMEXIT_INSTRUCTION_INFO: Field32 = Field32(0x440E);
    pub const EXIT_QUALIFICATION: FieldNat = FieldNat(0x6400);
    pub const GUEST_LINEAR_ADDR: FieldNat = FieldNat(0x640A);
}

/// Control bits used by the hypervisor (SDM Vol. 3C 25.6, 25.7, 25.8).
pub mod bits {
    pub mod pin {
        pub const EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
        pub const NMI_EXITING: u32 = 1 << 3;
        pub const VIRTUAL_NMIS: u32 = 1 << 5;
        pub const PREEMPTION_TIMER: u32 = 1 << 6;
    }
    pub mod primary {
        pub const INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
        pub const USE_TSC_OFFSETTING: u32 = 1 << 3;
        pub const HLT_EXITING: u32 = 1 << 7;
        pub const INVLPG_EXITING: u32 = 1 << 9;
        pub const MWAIT_EXITING: u32 = 1 << 10;
        pub const RDPMC_EXITING: u32 = 1 << 11;
        pub const RDTSC_EXITING: u32 = 1 << 12;
        pub const CR3_LOAD_EXITING: u32 = 1 << 15;
        pub const CR3_STORE_EXITING: u32 = 1 << 16;
        pub const CR8_LOAD_EXITING: u32 = 1 << 19;
        pub const CR8_STORE_EXITING: u32 = 1 << 20;
        pub const USE_TPR_SHADOW: u32 = 1 << 21;
        pub const NMI_WINDOW_EXITING: u32 = 1 << 22;
        pub const MOV_DR_EXITING: u32 = 1 << 23;
        pub const UNCONDITIONAL_IO_EXITING: u32 = 1 << 24;
        pub const USE_IO_BITMAPS: u32 = 1 << 25;
        pub const MONITOR_TRAP_FLAG: u32 = 1 << 27;
        pub const USE_MSR_BITMAPS: u32 = 1 << 28;
        pub const MONITOR_EXITING: u32 = 1 << 29;
        pub const PAUSE_EXITING: u32 = 1 << 30;
        pub const ACTIVATE_SECONDARY_CONTROLS: u32 = 1 << 31;
    }
    pub mod secondary {
        pub const VIRTUALIZE_APIC_ACCESSES: u32 = 1 << 0;
        pub const ENABLE_EPT: u32 = 1 << 1;
        pub const DESCRIPTOR_TABLE_EXITING: u32 = 1 << 2;
        pub const ENABLE_RDTSCP: u32 = 1 << 3;
        pub const VIRTUALIZE_X2APIC_MODE: u32 = 1 << 4;
        pub const ENABLE_VPID: u32 = 1 << 5;
        pub const WBINVD_EXITING: u32 = 1 << 6;
        pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
        pub const ENABLE_INVPCID: u32 = 1 << 12;
        pub const ENABLE_XSAVES: u32 = 1 << 20;
    }
    pub mod exit {
        pub const SAVE_DEBUG_CONTROLS: u32 = 1 << 2;
        pub const HOST_ADDRESS_SPACE_SIZE: u32 = 1 << 9;
        pub const ACK_INTERRUPT_ON_EXIT: u32 = 1 << 15;
        pub const SAVE_IA32_PAT: u32 = 1 << 18;
        pub const LOAD_IA32_PAT: u32 = 1 << 19;
        pub const SAVE_IA32_EFER: u32 = 1 << 20;
        pub const LOAD_IA32_EFER: u32 = 1 << 21;
        pub const SAVE_PREEMPTION_TIMER: u32 = 1 << 22;
    }
    pub mod entry {
        pub const LOAD_DEBUG_CONTROLS: u32 = 1 << 2;
        pub const IA32E_MODE_GUEST: u32 = 1 << 9;
        pub const LOAD_IA32_PAT: u32 = 1 << 14;
        pub const LOAD_IA32_EFER: u32 = 1 << 15;
    }
}
