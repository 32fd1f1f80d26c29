//! VMCS set-up of a vCPU: controls, host and guest state, the MSR bitmap,
//! VPIDs, and the state switched by software around a time slice.
use super::*;
use crate::percpu;
use crate::vmx::entry_check::{GuestState, SegReg};
use crate::vmx::run;
use alloc::format;
use arch::msr;
use arch::regs;
use arch::vmx::instr;
use arch::vmx::instr::VmFail;
use arch::vmx::vmcs::{bits, ctrl, guest, host};
use core::sync::atomic::Ordering;

/// A VMWRITE whose failure is reported, with the field's name: the fields
/// and values are the hypervisor's own, so a failure is a hypervisor bug.
macro_rules! wc {
    ($f:expr, $v:expr) => {
        // SAFETY: the vCPU's VMCS is current on this CPU (checked by callers).
        checked(unsafe { $f.write($v) }, &stringify!($f))?
    };
}

fn checked(
    r: Result<(), VmFail>,
    field: &dyn core::fmt::Display,
) -> Result<(), alloc::string::String> {
    r.map_err(|e| format!("VMWRITE of {field} failed: {e}"))
}

/// Writes every field of `s` to the current VMCS (SDM Vol. 3C 25.4); the
/// first VMWRITE that fails is returned, with the field's name.
pub(super) fn write_guest_state(s: &GuestState) -> Result<(), alloc::string::String> {
    use arch::vmx::vmcs::{Field16, Field32, FieldNat};
    const SEGS: [(Field16, FieldNat, Field32, Field32); 8] = [
        (
            guest::ES_SEL,
            guest::ES_BASE,
            guest::ES_LIMIT,
            guest::ES_ACCESS_RIGHTS,
        ),
        (
            guest::CS_SEL,
            guest::CS_BASE,
            guest::CS_LIMIT,
            guest::CS_ACCESS_RIGHTS,
        ),
        (
            guest::SS_SEL,
            guest::SS_BASE,
            guest::SS_LIMIT,
            guest::SS_ACCESS_RIGHTS,
        ),
        (
            guest::DS_SEL,
            guest::DS_BASE,
            guest::DS_LIMIT,
            guest::DS_ACCESS_RIGHTS,
        ),
        (
            guest::FS_SEL,
            guest::FS_BASE,
            guest::FS_LIMIT,
            guest::FS_ACCESS_RIGHTS,
        ),
        (
            guest::GS_SEL,
            guest::GS_BASE,
            guest::GS_LIMIT,
            guest::GS_ACCESS_RIGHTS,
        ),
        (
            guest::LDTR_SEL,
            guest::LDTR_BASE,
            guest::LDTR_LIMIT,
            guest::LDTR_ACCESS_RIGHTS,
        ),
        (
            guest::TR_SEL,
            guest::TR_BASE,
            guest::TR_LIMIT,
            guest::TR_ACCESS_RIGHTS,
        ),
    ];
    for (r, (sel, base, limit, ar)) in SegReg::ALL.into_iter().zip(SEGS) {
        let g = s.seg(r);
        let name = r.name();
        // SAFETY: as in `wc!`.
        unsafe {
            checked(sel.write(g.sel), &format_args!("guest {name} selector"))?;
            checked(base.write(g.base), &format_args!("guest {name} base"))?;
            checked(limit.write(g.limit), &format_args!("guest {name} limit"))?;
            checked(ar.write(g.ar), &format_args!("guest {name} access rights"))?;
        }
    }
    wc!(guest::CR0, s.cr0);
    wc!(guest::CR3, s.cr3);
    wc!(guest::CR4, s.cr4);
    wc!(guest::DR7, s.dr7);
    wc!(guest::RSP, s.rsp);
    wc!(guest::RIP, s.rip);
    wc!(guest::RFLAGS, s.rflags);
    wc!(guest::IA32_EFER, s.efer);
    wc!(guest::IA32_PAT, s.pat);
    wc!(guest::IA32_DEBUGCTL, s.debugctl);
    wc!(guest::GDTR_BASE, s.gdtr_base);
    wc!(guest::GDTR_LIMIT, s.gdtr_limit);
    wc!(guest::IDTR_BASE, s.idtr_base);
    wc!(guest::IDTR_LIMIT, s.idtr_limit);
    wc!(guest::ACTIVITY_STATE, s.activity);
    wc!(guest::INTERRUPTIBILITY_STATE, s.interruptibility);
    wc!(guest::PENDING_DBG_EXCEPTIONS, s.pending_dbg);
    wc!(guest::VMCS_LINK_PTR, s.link_ptr);
    wc!(ctrl::VMENTRY_INTERRUPTION_INFO, s.entry_intr_info);
    Ok(())
}

/// VPIDs in use (bit n = VPID n; 0 is the host's). A freed VPID may still
/// tag TLB entries on some CPU: every first run on a CPU flushes it there.
static VPIDS: spin::Mutex<[u64; 1024]> = spin::Mutex::new({
    let mut map = [0; 1024];
    map[0] = 1;
    map
});

/// The lowest free VPID (65535 live vCPUs would need far more memory than
/// their VMCSs and guests can have, so running out is a hypervisor bug).
pub(super) fn alloc_vpid() -> u16 {
    let mut map = VPIDS.lock();
    for (i, word) in map.iter_mut().enumerate() {
        if *word != u64::MAX {
            let bit = (!*word).trailing_zeros();
            *word |= 1 << bit;
            return (i * 64) as u16 + bit as u16;
        }
    }
    panic!("no free VPID");
}

pub(super) fn free_vpid(vpid: u16) {
    if vpid != 0 {
        VPIDS.lock()[usize::from(vpid / 64)] &= !(1u64 << (vpid % 64));
    }
}

/// MSRs the guest reads and writes directly: they are not part of the VMCS
/// and the host never uses them, so they are switched with the vCPU.
pub const PASSTHROUGH_MSRS: [u32; 8] = [
    msr::IA32_FS_BASE,
    msr::IA32_GS_BASE,
    msr::IA32_KERNEL_GS_BASE,
    msr::IA32_STAR,
    msr::IA32_LSTAR,
    msr::IA32_CSTAR,
    msr::IA32_FMASK,
    msr::IA32_TSC_AUX,
];
/// Of those, the ones the VMCS does not switch.
pub(super) const SWITCHED_MSRS: [u32; 6] = [
    msr::IA32_KERNEL_GS_BASE,
    msr::IA32_STAR,
    msr::IA32_LSTAR,
    msr::IA32_CSTAR,
    msr::IA32_FMASK,
    msr::IA32_TSC_AUX,
];

/// The MSR bitmap (SDM Vol. 3C 25.6.9): read bitmaps for low (0..0x1FFF) and
/// high (0xC0000000..0xC0001FFF) MSRs at 0 and 0x400, write bitmaps at 0x800
/// and 0xC00; a set bit makes the access exit. Every MSR exits but `passthrough`.
pub fn msr_bitmap(passthrough: &[u32]) -> [u8; 4096] {
    let mut page = [0xFF; 4096];
    for &m in passthrough {
        let (base, bit) = match m {
            0..=0x1FFF => (0, m),
            0xC000_0000..=0xC000_1FFF => (0x400, m - 0xC000_0000),
            // Outside both ranges every access exits anyway.
            _ => continue,
        };
        for off in [base, base + 0x800] {
            page[off + (bit / 8) as usize] &= !(1 << (bit % 8));
        }
    }
    page
}

/// Fills a VM's MSR bitmap page.
pub fn init_msr_bitmap(page: u64) {
    let bitmap = msr_bitmap(&PASSTHROUGH_MSRS);
    // SAFETY: `page` is a 4 KiB page owned by the VM being built.
    unsafe { core::ptr::copy_nonoverlapping(bitmap.as_ptr(), page as *mut u8, 4096) };
}

/// The VMX-preemption timer value for `tsc` ticks when it counts down once
/// every 2^`rate` ticks (SDM Vol. 3C 26.5.1), rounded up so that the exit
/// never comes before the deadline, and at most what the field holds.
pub fn preemption_timer_value(tsc: u64, rate: u8) -> u32 {
    let rate = u32::from(rate.min(63));
    let ticks = (tsc >> rate) + u64::from(tsc & ((1u64 << rate) - 1) != 0);
    ticks.min(u64::from(u32::MAX)) as u32
}

impl Vcpu {
    /// Drops this vCPU's cached translations on the current CPU.
    pub(super) fn flush_tlb(&self) {
        // SAFETY: in VMX root operation; INVEPT/INVVPID single-context are
        // supported (checked when VMX was probed); the VPID is this vCPU's.
        unsafe {
            let _ = instr::invept(instr::InveptType::SingleContext, self.vm.mem.eptp());
            if self.vpid != 0 && vmx::caps().vpid {
                let _ = instr::invvpid(instr::InvvpidType::SingleContext, self.vpid, 0);
            }
        }
    }

    /// VMCLEARs the VMCS on the CPU where it is active, so that any CPU may
    /// load it next (SDM 25.11.1). Must run on that CPU.
    pub fn release(&mut self) {
        if let Some(c) = self.active_on.take() {
            debug_assert_eq!(c, percpu::current_index());
            // SAFETY: the VMCS is this vCPU's and is active on this CPU.
            if let Err(e) = unsafe { instr::vmclear(self.vmcs) } {
                log::error!("hv: vm {}: VMCLEAR failed: {e}", self.vm.name);
            }
        }
        self.launched = false;
    }

    /// Loads guest FPU/XSAVE state and the MSRs the VMCS doesn't switch.
    pub(super) fn switch_in(&mut self) {
        let full = crate::xsave::host_mask();
        // SAFETY: XSAVE is enabled in the host CR4 (checked at start-up) and
        // the area is this vCPU's, 64-byte aligned, large enough for `full`.
        unsafe {
            regs::xsetbv(0, full);
            core::arch::asm!("xrstor64 [{}]", in(reg) self.xsave_area, in("eax") full as u32, in("edx") (full >> 32) as u32);
            regs::xsetbv(0, self.xcr0);
            for (i, &m) in SWITCHED_MSRS.iter().enumerate() {
                msr::wrmsr(m, self.switched_msrs[i]);
            }
            let [d0, d1, d2, d3, d6] = self.debug_regs;
            regs::write_dr0(d0);
            regs::write_dr1(d1);
            regs::write_dr2(d2);
            regs::write_dr3(d3);
            regs::write_dr6(d6);
            regs::write_cr2(self.cr2);
        }
    }

    pub(super) fn switch_out(&mut self) {
        let full = crate::xsave::host_mask();
        // SAFETY: as in `switch_in`.
        unsafe {
            regs::xsetbv(0, full);
            core::arch::asm!("xsave64 [{}]", in(reg) self.xsave_area, in("eax") full as u32, in("edx") (full >> 32) as u32);
            for (i, &m) in SWITCHED_MSRS.iter().enumerate() {
                self.switched_msrs[i] = msr::rdmsr(m);
                msr::wrmsr(m, 0);
            }
            self.debug_regs = [
                regs::read_dr0(),
                regs::read_dr1(),
                regs::read_dr2(),
                regs::read_dr3(),
                regs::read_dr6(),
            ];
            self.cr2 = regs::read_cr2();
            // Nothing of this guest stays behind for the next one to read.
            for w in [
                regs::write_dr0,
                regs::write_dr1,
                regs::write_dr2,
                regs::write_dr3,
            ] {
                w(0);
            }
            regs::write_dr6(DR6_INIT);
            regs::write_cr2(0);
        }
    }

    /// Host-state fields: they differ per physical CPU (SDM 25.5).
    pub(super) fn load_host_state(&mut self) -> Result<(), crate::exits::VmcsError> {
        let cpu = percpu::current();
        let gdt = &cpu.gdt;
        w!(host::CR0, regs::read_cr0());
        w!(host::CR3, regs::read_cr3());
        w!(host::CR4, regs::read_cr4());
        w!(host::CS_SEL, arch::desc::KERNEL_CS);
        w!(host::SS_SEL, arch::desc::KERNEL_DS);
        w!(host::DS_SEL, arch::desc::KERNEL_DS);
        w!(host::ES_SEL, arch::desc::KERNEL_DS);
        w!(host::FS_SEL, 0);
        w!(host::GS_SEL, 0);
        w!(host::TR_SEL, arch::desc::TSS_SEL);
        w!(host::FS_BASE, 0);
        // SAFETY: IA32_GS_BASE, EFER and PAT exist on every x86-64 CPU.
        let (gs, efer, pat) = unsafe {
            (
                msr::rdmsr(msr::IA32_GS_BASE),
                msr::rdmsr(msr::IA32_EFER),
                msr::rdmsr(msr::IA32_PAT),
            )
        };
        w!(host::GS_BASE, gs);
        w!(
            host::TR_BASE,
            arch::desc::descriptor_base(gdt, arch::desc::TSS_SEL)
        );
        w!(host::GDTR_BASE, gdt.as_ptr() as u64);
        w!(host::IDTR_BASE, crate::interrupts::idt_base());
        w!(host::IA32_SYSENTER_CS, 0);
        w!(host::IA32_SYSENTER_ESP, 0);
        w!(host::IA32_SYSENTER_EIP, 0);
        w!(host::IA32_EFER, efer);
        w!(host::IA32_PAT, pat);
        w!(host::RIP, run::exit_rip());
        Ok(())
    }

    /// Control and guest-state fields for a fresh start (SDM 25.6-25.8, 27.3):
    /// the values of [`start_state`], every VMWRITE checked (a failure is a
    /// hypervisor bug, reported with the field's name).
    pub(super) fn configure(&mut self) -> Result<(), alloc::string::String> {
        let caps = vmx::caps();
        let vm = self.vm.clone();
        let entry = self.start_state.unwrap_or_else(|| *vm.entry.lock());
        let ctl = start_state::controls(caps, self.virtual_nmis, entry.mode)
            .map_err(|e| format!("cannot configure VMX controls: {e}"))?;
        // SAFETY: the fixed-bit MSRs exist in VMX operation (SDM Vol. 3D A.7, A.8).
        let (cr0_fixed0, cr4_fixed0) = unsafe {
            (
                msr::rdmsr(msr::IA32_VMX_CR0_FIXED0),
                msr::rdmsr(msr::IA32_VMX_CR4_FIXED0),
            )
        };
        let state = start_state::guest_state(&entry, cr0_fixed0, cr4_fixed0);
        use bits::secondary as s;
        wc!(ctrl::PINBASED_EXEC_CONTROLS, ctl.pin);
        wc!(ctrl::PRIMARY_PROCBASED_EXEC_CONTROLS, ctl.primary);
        wc!(ctrl::SECONDARY_PROCBASED_EXEC_CONTROLS, ctl.secondary);
        wc!(ctrl::VMEXIT_CONTROLS, ctl.exit);
        self.timer_saved = ctl.exit & bits::exit::SAVE_PREEMPTION_TIMER != 0;
        wc!(ctrl::VMENTRY_CONTROLS, ctl.entry);
        wc!(ctrl::EXCEPTION_BITMAP, 0);
        wc!(ctrl::PAGE_FAULT_ERR_CODE_MASK, 0);
        wc!(ctrl::PAGE_FAULT_ERR_CODE_MATCH, 0);
        wc!(ctrl::CR3_TARGET_COUNT, 0);
        wc!(ctrl::VMEXIT_MSR_STORE_COUNT, 0);
        wc!(ctrl::VMEXIT_MSR_LOAD_COUNT, 0);
        wc!(ctrl::VMENTRY_MSR_LOAD_COUNT, 0);
        wc!(ctrl::IO_BITMAP_A, vm.io_bitmaps);
        wc!(ctrl::IO_BITMAP_B, vm.io_bitmaps + mm::PAGE);
        wc!(ctrl::MSR_BITMAPS, vm.msr_bitmap);
        wc!(ctrl::TSC_OFFSET, vm.tsc_offset.load(Ordering::Relaxed));
        wc!(ctrl::EPT_POINTER, vm.mem.eptp());
        if ctl.secondary & s::ENABLE_VPID != 0 {
            wc!(ctrl::VPID, self.vpid);
        }
        // CR0.NE and CR4.VMXE are fixed to 1 in VMX operation; the guest sees
        // its own values through the read shadows. CR0.PG exits so that the
        // IA-32e mode entry control follows EFER.LMA.
        let cr0_mask =
            arch::regs::cr0::NE | arch::regs::cr0::PG | arch::regs::cr0::CD | arch::regs::cr0::NW;
        wc!(ctrl::CR0_GUEST_HOST_MASK, cr0_mask);
        wc!(ctrl::CR0_READ_SHADOW, entry.cr0);
        wc!(ctrl::CR4_GUEST_HOST_MASK, crate::exits::cr::cr4_mask());
        wc!(ctrl::CR4_READ_SHADOW, entry.cr4);
        write_guest_state(&state)?;
        // Not among the fields VM entry checks (SDM Vol. 3C 27.3.1.1 only
        // asks for canonical addresses, and 0 is).
        wc!(guest::IA32_SYSENTER_CS, 0);
        wc!(guest::IA32_SYSENTER_ESP, 0);
        wc!(guest::IA32_SYSENTER_EIP, 0);
        self.regs.gpr[run::RDI] = entry.rdi;
        self.regs.gpr[run::RSI] = entry.rsi;
        self.regs.gpr[run::RBX] = entry.rbx;
        self.regs.gpr[run::RAX] = entry.rax;
        self.regs.gpr[run::RDX] = entry.rdx;
        // Fresh mappings for this VPID/EPT: drop anything a previous user left.
        // SAFETY: in VMX root operation with INVEPT supported (checked in probe).
        unsafe {
            let _ = instr::invept(instr::InveptType::SingleContext, vm.mem.eptp());
            if ctl.secondary & s::ENABLE_VPID != 0 {
                let _ = instr::invvpid(instr::InvvpidType::SingleContext, self.vpid, 0);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exits(page: &[u8; 4096], base: usize, bit: u32) -> bool {
        page[base + (bit / 8) as usize] & (1 << (bit % 8)) != 0
    }

    #[test]
    fn msr_bitmap_passes_only_the_listed_msrs() {
        let page = msr_bitmap(&PASSTHROUGH_MSRS);
        for m in PASSTHROUGH_MSRS {
            let (base, bit) = if m >= 0xC000_0000 {
                (0x400, m - 0xC000_0000)
            } else {
                (0, m)
            };
            assert!(!exits(&page, base, bit), "read of {m:#x}");
            assert!(!exits(&page, base + 0x800, bit), "write of {m:#x}");
        }
        // Everything else exits, reads and writes, e.g. EFER, APIC_BASE, TSC, SYSENTER.
        for (base, bit) in [(0x400, 0x80), (0, 0x1B), (0, 0x10), (0, 0x174), (0, 0x1FFF)] {
            assert!(exits(&page, base, bit) && exits(&page, base + 0x800, bit));
        }
        let clear: u32 = page.iter().map(|b| b.count_zeros()).sum();
        assert_eq!(clear as usize, 2 * PASSTHROUGH_MSRS.len());
        // MSRs outside both ranges can't be passed through.
        assert_eq!(msr_bitmap(&[0x4000_0000]), [0xFF; 4096]);
    }

    #[test]
    fn preemption_timer_rounds_up() {
        assert_eq!(preemption_timer_value(0, 5), 0);
        assert_eq!(preemption_timer_value(1, 5), 1);
        assert_eq!(preemption_timer_value(32, 5), 1);
        assert_eq!(preemption_timer_value(33, 5), 2);
        assert_eq!(preemption_timer_value(1000, 0), 1000);
        assert_eq!(preemption_timer_value(u64::MAX, 0), u32::MAX);
        assert_eq!(preemption_timer_value(u64::MAX, 63), 2);
    }
}
