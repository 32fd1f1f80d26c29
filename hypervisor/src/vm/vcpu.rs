//! Virtual CPUs: each owns a VMCS, its saved registers and FPU/XSAVE state.
//! A vCPU runs on one physical CPU at a time; between time slices its VMCS is
//! VMCLEARed so that any CPU may load it next (SDM Vol. 3C 25.11.1).
use super::{irq, Vm, VmEnd};
use crate::vmx::run::GuestRegs;
use crate::{exits, mm, vmx};
use alloc::format;
use alloc::sync::Arc;
use arch::vmx::vmcs::bits;

/// A VMWRITE in VMCS set-up; a failure returns the error naming the field
/// from the enclosing function.
macro_rules! w {
    ($f:expr, $v:expr) => {
        // SAFETY: the vCPU's VMCS is current on this CPU (checked by callers).
        unsafe { $f.write($v) }.map_err(|fail| crate::exits::vmexit::VmcsError {
            write: true,
            field: stringify!($f),
            fail,
        })?
    };
}

#[path = "inject.rs"]
mod inject;
#[path = "run_loop.rs"]
mod run_loop;
#[path = "start_state.rs"]
pub mod start_state;
#[path = "vcpu_state.rs"]
pub mod vcpu_state;
#[path = "vmcs_setup.rs"]
mod vmcs_setup;

pub use inject::{is_fault, Event};
pub use run_loop::{fast_path_exit, irqoff_timeout_tsc, Flow, SliceEnd};
use vmcs_setup::{alloc_vpid, free_vpid, SWITCHED_MSRS};
pub use vmcs_setup::{init_msr_bitmap, msr_bitmap, preemption_timer_value, PASSTHROUGH_MSRS};

/// The power-on values of the debug registers (SDM Vol. 3A 10.1.1, Table 10-1).
pub const DR6_INIT: u64 = 0xFFFF_0FF0;
pub const DR7_INIT: u64 = 0x400;

pub struct Vcpu {
    pub vm: Arc<Vm>,
    pub index: usize,
    vmcs: u64,
    pub regs: GuestRegs,
    launched: bool,
    configured: bool,
    pub vpid: u16,
    xsave_area: u64,
    pub xcr0: u64,
    /// MSRs kept outside the VMCS (IA32_MISC_ENABLE). CR8 is the local
    /// APIC's TPR, kept there.
    pub msrs: exits::msr::MsrState,
    /// Event to inject at the next VM entry.
    pub pending_event: Option<Event>,
    /// DR0-DR3 and DR6: not in the VMCS, so switched with the vCPU (DR7 and
    /// IA32_DEBUGCTL are, through the debug-controls entry/exit controls).
    debug_regs: [u64; 5],
    /// CR2 is not in the VMCS either; the guest writes it without an exit.
    cr2: u64,
    /// The physical CPU this vCPU last ran on: its TLB entries (tagged with
    /// the VPID and EPTP) there may be stale once it has run elsewhere.
    last_cpu: Option<usize>,
    /// CR2 for a #PF being injected, loaded right before the entry that
    /// delivers the fault.
    pub pending_cr2: Option<u64>,
    switched_msrs: [u64; SWITCHED_MSRS.len()],
    /// The CPU whose VMCS cache holds this vCPU's VMCS (it is "active" there).
    active_on: Option<usize>,
    /// Weighted run time: TSC ticks used × 100 / weight (the scheduler's key).
    pub vruntime: u64,
    /// TSC ticks in a row spent with interrupts disabled and no exit but the
    /// preemption timer: a guest spinning with IF = 0.
    spin_tsc: u64,
    /// An application processor waiting for a start-up IPI (SDM 9.4.4).
    pub wait_sipi: bool,
    /// Halted with interrupts disabled: only NMI or INIT wake it.
    pub halted_noirq: bool,
    /// The CPU offers virtual NMIs (and NMI-window exiting) for this vCPU.
    virtual_nmis: bool,
    /// The state to start from instead of the VM's boot state (after a SIPI).
    start_state: Option<loader::EntryState>,
    /// CR0 as the guest saw it when the last INIT arrived (as after RESET
    /// before any): INIT keeps its CD and NW (SDM Vol. 3A Table 10-1).
    pub(super) init_cr0: u64,
    /// Host TSC at which a timer of this vCPU (or the BSP's devices) is due.
    next_timer: u64,
    /// Timer state may have changed (a timer register or device was written).
    pub timers_dirty: bool,
    /// The exit saves the preemption timer's value (see `FAST_TIMER_REUSE`).
    pub(super) timer_saved: bool,
    /// The longest exit of this vCPU (TSC ticks from VM exit to VM entry).
    longest_exit: u64,
    /// Counted in its VM's `runnable` (in a run queue or running).
    pub counted_runnable: bool,
    /// Pushed to another CPU's queue by the balancer and not run since.
    pub moved: bool,
    /// Restored state for the VMCS, written at the next slice (snapshots).
    staged: Option<alloc::boxed::Box<vcpu_state::Staged>>,
    /// Restored in HLT: the scheduler starts it asleep.
    pub start_halted: bool,
}

impl Vcpu {
    pub fn new(vm: Arc<Vm>, index: usize) -> Self {
        let vmcs = mm::alloc_zeroed_page().expect("memory for a VMCS").0;
        // SAFETY: fresh page; the first dword is the VMCS revision identifier.
        unsafe { (vmcs as *mut u32).write(vmx::caps().basic.revision_id) };
        let xsave_area = mm::alloc_zeroed(2 * mm::PAGE, mm::PAGE)
            .expect("memory for XSAVE state")
            .0;
        // Power-on FPU/SSE state (SDM Vol. 1 13.6, Vol. 3A Table 10-1): with
        // XSTATE_BV = 0 XRSTOR gives every component its initial state (FCW
        // 0x37F), but MXCSR always comes from the legacy area.
        // SAFETY: the area is this vCPU's fresh, zeroed, 4 KiB-aligned allocation.
        unsafe {
            (xsave_area as *mut u16).write(0x37F);
            ((xsave_area + 24) as *mut u32).write(0x1F80);
        }
        let virtual_nmis = vmx::caps().pin.allowed1 & bits::pin::VIRTUAL_NMIS != 0
            && vmx::caps().primary.allowed1 & bits::primary::NMI_WINDOW_EXITING != 0;
        Vcpu {
            vm,
            index,
            vmcs,
            regs: GuestRegs::default(),
            launched: false,
            configured: false,
            vpid: alloc_vpid(),
            xsave_area,
            xcr0: 1,
            msrs: exits::msr::MsrState::default(),
            pending_event: None,
            debug_regs: [0, 0, 0, 0, DR6_INIT],
            cr2: 0,
            last_cpu: None,
            virtual_nmis,
            pending_cr2: None,
            switched_msrs: [0; SWITCHED_MSRS.len()],
            active_on: None,
            vruntime: 0,
            spin_tsc: 0,
            wait_sipi: index != 0,
            halted_noirq: false,
            start_state: None,
            init_cr0: start_state::CR0_RESET,
            next_timer: 0,
            timers_dirty: true,
            timer_saved: false,
            longest_exit: 0,
            counted_runnable: false,
            moved: false,
            staged: None,
            start_halted: false,
        }
    }

    /// The guest's end when no vCPU of it can run again (called by a vCPU
    /// that just became stuck: the last one to do so sees all of them).
    pub fn end_if_dead(&self) -> Option<VmEnd> {
        self.vm.no_vcpu_can_run().then(|| {
            VmEnd::Crashed(format!(
                "hung: no vCPU can run again ({})",
                self.vm.stuck_states()
            ))
        })
    }

    /// Whether a halted vCPU should run again: an interrupt is pending for it
    /// or one of its timers is due.
    pub fn wants_to_run(&self, now_tsc: u64) -> bool {
        if self.index == 0 && self.vm.net_rx.load(core::sync::atomic::Ordering::Acquire) != 0 {
            // Received frames may raise a NIC's interrupt: that wakes it.
            self.vm.drain_nics();
        }
        if self.index == 0
            && self
                .vm
                .disk_done
                .load(core::sync::atomic::Ordering::Acquire)
                != 0
        {
            // Finished NBD requests raise their disk's interrupt: that wakes it.
            self.vm.drain_disks();
        }
        self.interrupt_pending() || self.next_event_tsc().is_some_and(|t| t <= now_tsc)
    }

    /// When this vCPU's next timer event is due (host TSC), if any.
    pub fn next_event_tsc(&self) -> Option<u64> {
        if self.wait_sipi || self.halted_noirq {
            return None;
        }
        let lapic = self.vm.lapics[self.index]
            .lock()
            .next_timer_deadline()
            .map(|g| self.vm.host_tsc(g));
        let dev = if self.index == 0 {
            self.vm.next_device_event()
        } else {
            None
        };
        lapic.into_iter().chain(dev).min()
    }

    /// The host TSC of this vCPU's next timer as of its last exit (u64::MAX:
    /// none), for the scheduler: cheap, no lock.
    pub fn cached_next_timer(&self) -> u64 {
        if self.wait_sipi || self.halted_noirq {
            u64::MAX
        } else {
            self.next_timer
        }
    }

    /// Whether this (runnable, waiting) vCPU's timer is due at `now`.
    pub fn timer_due(&self, now: u64) -> bool {
        self.cached_next_timer() <= now
    }

    pub fn weight(&self) -> u64 {
        u64::from(self.vm.config.weight.max(1))
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        self.release();
        mm::free_zeroed(mm::Hpa(self.vmcs), mm::PAGE);
        mm::free_zeroed(mm::Hpa(self.xsave_area), 2 * mm::PAGE);
        free_vpid(self.vpid);
    }
}
