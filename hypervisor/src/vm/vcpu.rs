//! Virtual CPUs: each owns a VMCS, its saved registers and FPU/XSAVE state.
//! A vCPU runs on one physical CPU at a time; between time slices its VMCS is
//! VMCLEARed so that any CPU may load it next (SDM Vol. 3C 25.11.1).
use super::{Vm, VmEnd};
use crate::loader::setup::Mode;
use crate::vmx::run::{self, GuestRegs};
use crate::{exits, interrupts, mm, percpu, vmx};
use alloc::format;
use alloc::sync::Arc;
use arch::msr;
use arch::regs::{self, rdtsc};
use arch::vmx::exit::EXIT_REASON_ENTRY_FAILURE;
use arch::vmx::instr::{self, VmFail};
use arch::vmx::vmcs::{bits, ctrl, guest, host, ro};
use core::sync::atomic::Ordering;

/// VPIDs in use (bit n = VPID n; 0 is the host's). A freed VPID may still
/// tag TLB entries on some CPU: every first run on a CPU flushes it there.
static VPIDS: spin::Mutex<[u64; 1024]> = spin::Mutex::new({
    let mut map = [0; 1024];
    map[0] = 1;
    map
});

/// The lowest free VPID (65535 live vCPUs would need far more memory than
/// their VMCSs and guests can have, so running out is a hypervisor bug).
fn alloc_vpid() -> u16 {
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

fn free_vpid(vpid: u16) {
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
const SWITCHED_MSRS: [u32; 6] = [
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

/// Whether a raw exit reason (SDM Vol. 3C 28.2.1) is one the run loop's fast
/// path finishes: CPUID, VMCALL and RDMSR, which the core handles by itself,
/// and port I/O, whose device accesses report timer and interrupt changes
/// through the mailbox flags that [`Vcpu::quiet`] checks. All four are
/// instruction exits, never taken during event delivery (SDM Vol. 3C
/// 28.2.4); a VM-entry failure (bit 31) or any other bit set is not one.
pub fn fast_path_exit(reason: u32) -> bool {
    use arch::vmx::exit::ExitReason as R;
    const CPUID: u32 = R::Cpuid as u32;
    const VMCALL: u32 = R::Vmcall as u32;
    const RDMSR: u32 = R::Rdmsr as u32;
    const IO: u32 = R::IoInstruction as u32;
    matches!(reason, CPUID | VMCALL | RDMSR | IO)
}

/// Brings a local APIC's timer up to guest TSC `now`, noting in the VM's
/// lateness figures how long after its deadline an expiry was seen.
fn poll_lapic_timer(vm: &Vm, l: &mut crate::devices::lapic::VLapic, now: u64) {
    let due = l.next_timer_deadline();
    if l.poll_timer(now) {
        if let Some(d) = due.filter(|&d| d <= now) {
            vm.timer_lateness
                .record(crate::time::tsc_to_ns(now - d) / 1000);
        }
    }
}

/// Why a time slice ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SliceEnd {
    Preempted,
    Yielded,
    Halted,
    VmEnded,
}

/// What an exit handler tells the run loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Yield,
    Halt,
    End(VmEnd),
}

/// An event for VM entry to deliver (SDM Vol. 3C 25.8.3, 27.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// VM-entry interruption-information field.
    pub info: u32,
    pub error_code: u32,
    /// Instruction length, for software interrupts and exceptions.
    pub len: u32,
}

/// Whether an exception vector is fault-class: the saved RFLAGS must then
/// have RF set, as delivery by the CPU itself would (SDM Vol. 3A 6.15, 18.3.1.1).
pub fn is_fault(vector: u8) -> bool {
    matches!(
        vector,
        0 | 5 | 6 | 7 | 10 | 11 | 12 | 13 | 14 | 16 | 17 | 19 | 20 | 21
    )
}

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
    start_state: Option<crate::loader::EntryState>,
    /// Host TSC at which a timer of this vCPU (or the BSP's devices) is due.
    next_timer: u64,
    /// Timer state may have changed (a timer register or device was written).
    pub timers_dirty: bool,
    /// The longest exit of this vCPU (TSC ticks from VM exit to VM entry).
    longest_exit: u64,
    /// Counted in its VM's `runnable` (in a run queue or running).
    pub counted_runnable: bool,
    /// Pushed to another CPU's queue by the balancer and not run since.
    pub moved: bool,
}

/// TSC ticks a vCPU may spend with interrupts off and no other exit before
/// its guest counts as hung (the manifest's `irqoff_timeout_s`; None = never).
pub fn irqoff_timeout_tsc(seconds: u32) -> Option<u64> {
    (seconds > 0).then(|| crate::time::us_to_tsc(u64::from(seconds) * 1_000_000))
}

fn vmw<T>(r: Result<T, VmFail>, what: &str) {
    if let Err(e) = r {
        log::error!("hv: vmwrite {what}: {e}");
    }
}

macro_rules! w {
    ($f:expr, $v:expr) => {
        // SAFETY: the vCPU's VMCS is current on this CPU (checked by callers).
        vmw(unsafe { $f.write($v) }, stringify!($f))
    };
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
            next_timer: 0,
            timers_dirty: true,
            longest_exit: 0,
            counted_runnable: false,
            moved: false,
        }
    }

    /// Runs the vCPU on this CPU for up to `slice` TSC ticks.
    pub fn run_slice(&mut self, slice: u64) -> SliceEnd {
        let me = percpu::current_index();
        if self.active_on.is_some_and(|c| c != me) {
            // The scheduler releases a vCPU before moving it; this is a bug, not a guest's doing.
            panic!(
                "vm {}: vcpu {} still active on cpu{:?}",
                self.vm.name, self.index, self.active_on
            );
        }
        // SAFETY: the VMCS belongs to this vCPU, which runs on no other CPU now
        // (the scheduler hands each vCPU to one CPU at a time).
        if let Err(e) = unsafe { instr::vmptrld(self.vmcs) } {
            self.vm.end(VmEnd::Crashed(format!("VMPTRLD failed: {e}")));
            return SliceEnd::VmEnded;
        }
        if self.active_on.is_none() {
            self.active_on = Some(me);
            self.launched = false;
            self.load_host_state();
            if self.last_cpu != Some(me) {
                // Moved here: entries this VPID/EPTP left on this CPU on an
                // earlier visit (or another vCPU's, before it was freed) may
                // be stale, as INVLPGs since ran elsewhere (SDM Vol. 3C 29.4.3).
                self.flush_tlb();
                self.last_cpu = Some(me);
            }
        }
        if let Some(end) = self.take_signals() {
            return end;
        }
        if !self.configured {
            if let Err(e) = self.configure() {
                self.vm.end(VmEnd::Crashed(e));
                return SliceEnd::VmEnded;
            }
            self.configured = true;
        }
        self.vm.mailbox[self.index]
            .running_on
            .store(me + 1, Ordering::Release);
        self.switch_in();
        let deadline = rdtsc().wrapping_add(slice);
        let rate = vmx::caps().misc.preemption_timer_rate;
        // When the last exit happened and its basic reason (0: none yet).
        let mut exit_tsc = 0u64;
        let mut exit_reason = 0u32;
        // The host TSC the preemption timer of the last entry counted to, and
        // whether the last exit was finished on the fast path (`fast_exit`):
        // then nothing the full path looks at before an entry has changed,
        // and only the timer is set again.
        let mut entry_deadline = 0u64;
        let mut fast = false;
        // Held for the slice: the fast path reads the VM's flags directly.
        let vm = self.vm.clone();
        let mb = &vm.mailbox[self.index];
        let mut now;
        let end = loop {
            if fast {
                fast = false;
                now = rdtsc();
                w!(
                    guest::VMX_PREEMPTION_TIMER_VALUE,
                    preemption_timer_value(entry_deadline.saturating_sub(now), rate)
                );
            } else {
                if self.vm.ended() || interrupts::STOPPING.load(Ordering::Relaxed) {
                    break SliceEnd::VmEnded;
                }
                now = rdtsc();
                // Console output waits in queues; feed the serial port when its
                // transmitter can take more (one atomic load otherwise).
                if crate::console::pump_due(now) {
                    crate::console::pump(now);
                    now = rdtsc();
                }
                let left = deadline.saturating_sub(now);
                if left == 0 {
                    break SliceEnd::Preempted;
                }
                if self.vm.mailbox[self.index].init.load(Ordering::Acquire) {
                    break SliceEnd::Yielded;
                }
                // Timers first, so that an interrupt due now is injected now.            // Polling costs; it is done only when something is due or changed.
                if self.timers_dirty
                    || now >= self.next_timer
                    || self.vm.mailbox[self.index]
                        .timers_dirty
                        .swap(false, Ordering::AcqRel)
                {
                    self.next_timer = self.poll_timers().unwrap_or(u64::MAX);
                    self.timers_dirty = false;
                    self.vm.mailbox[self.index]
                        .check_irq
                        .store(true, Ordering::Release);
                }
                let mut left = left.min(self.next_timer.saturating_sub(now).max(1));
                if let Some(t) = crate::console::next_pump_tsc() {
                    // Back in time to feed the serial port again.
                    left = left.min(t.saturating_sub(now).max(1));
                }
                entry_deadline = now.saturating_add(left);
                w!(
                    guest::VMX_PREEMPTION_TIMER_VALUE,
                    preemption_timer_value(left, rate)
                );
                if self.pending_event.is_none()
                    && self.vm.mailbox[self.index]
                        .check_irq
                        .swap(false, Ordering::AcqRel)
                    && self.inject_interrupts()
                {
                    self.vm.mailbox[self.index]
                        .check_irq
                        .store(true, Ordering::Release);
                }
                if let Some(ev) = self.pending_event.take() {
                    if let Some(cr2) = self.pending_cr2.take() {
                        // SAFETY: CR2 only reports page-fault addresses; the host
                        // takes no page faults before this entry (and CR2 is the
                        // guest's while it is switched in).
                        unsafe { regs::write_cr2(cr2) };
                    }
                    w!(ctrl::VMENTRY_INTERRUPTION_INFO, ev.info);
                    w!(ctrl::VMENTRY_EXCEPTION_ERR_CODE, ev.error_code);
                    w!(ctrl::VMENTRY_INSTRUCTION_LEN, ev.len);
                }
                if exit_tsc != 0 {
                    let t = rdtsc().saturating_sub(exit_tsc);
                    if t > self.longest_exit {
                        self.longest_exit = t;
                        self.vm.note_exit_time(t, exit_reason);
                    }
                }
            }
            // SAFETY: the VMCS is current and fully configured for this CPU.
            let entered = unsafe { run::enter(&mut self.regs, self.launched) };
            exit_tsc = rdtsc();
            if entered.is_err() {
                let err = instr::vmread(ro::VM_INSTRUCTION_ERROR.0).unwrap_or(0) as u32;
                let e = arch::vmx::instr::VmInstructionError::from_number(err);
                self.vm.end(VmEnd::Crashed(format!(
                    "VM entry failed: VM-instruction error {err} ({})",
                    e.description()
                )));
                break SliceEnd::VmEnded;
            }
            self.launched = true;
            let reason = ro::EXIT_REASON.read().unwrap_or(0);
            exit_reason = reason & 0xFFFF;
            match self.fast_exit(reason, entry_deadline, &vm, mb) {
                None => {}
                Some(None) => {
                    fast = true;
                    continue;
                }
                Some(Some(flow)) => match flow {
                    Flow::Continue => continue,
                    Flow::Yield => break SliceEnd::Yielded,
                    Flow::Halt => break SliceEnd::Halted,
                    Flow::End(how) => {
                        self.vm.end(how);
                        break SliceEnd::VmEnded;
                    }
                },
            }
            if reason & 0xFFFF == 52 && guest::RFLAGS.read().unwrap_or(0) & (1 << 9) == 0 {
                self.spin_tsc += rdtsc().saturating_sub(now);
                let limit = irqoff_timeout_tsc(self.vm.config.irqoff_timeout_s);
                if limit.is_some_and(|l| self.spin_tsc > l) {
                    let rip = self.rip();
                    self.vm.end(VmEnd::Crashed(format!(
                        "hung: spinning with interrupts disabled for {} s at rip {rip:#x} (irqoff_timeout_s)",
                        self.vm.config.irqoff_timeout_s
                    )));
                    break SliceEnd::VmEnded;
                }
            } else {
                self.spin_tsc = 0;
            }
            if reason & EXIT_REASON_ENTRY_FAILURE == 0 {
                if let Some(end) = self.requeue_vectored_event(reason) {
                    self.vm.end(end);
                    break SliceEnd::VmEnded;
                }
            }
            if reason & EXIT_REASON_ENTRY_FAILURE != 0 {
                let q = ro::EXIT_QUALIFICATION.read().unwrap_or(0);
                let mut what = crate::exits::entry_failure_reason(reason, q);
                if reason & 0xFFFF == 33 {
                    // The CPU doesn't say which check failed; find it in software.
                    use crate::vmx::entry_check::{check_all, EntryContext, GuestState};
                    let errs =
                        check_all(&GuestState::read_current(), &EntryContext::read_current());
                    for e in errs.iter().take(3) {
                        what.push_str(&format!("; {e}"));
                    }
                }
                self.vm.end(VmEnd::Crashed(what));
                break SliceEnd::VmEnded;
            }
            match exits::handle(self, reason) {
                Flow::Continue => {}
                Flow::Yield => break SliceEnd::Yielded,
                Flow::Halt => break SliceEnd::Halted,
                Flow::End(how) => {
                    self.vm.end(how);
                    break SliceEnd::VmEnded;
                }
            }
        };
        if exit_tsc != 0 {
            // The exit that ended the slice, up to giving the CPU back.
            let t = rdtsc().saturating_sub(exit_tsc);
            if t > self.longest_exit {
                self.longest_exit = t;
                self.vm.note_exit_time(t, exit_reason);
            }
        }
        self.vm.mailbox[self.index]
            .running_on
            .store(0, Ordering::Release);
        self.switch_out();
        end
    }

    /// The fast path of the exits in [`fast_path_exit`]. They are instruction
    /// exits, so there is no IDT-vectoring information to requeue (SDM Vol.
    /// 3C 28.2.4) and no entry failure.
    /// None: not such an exit. Some(None): handled, and nothing the full path
    /// checks before an entry has changed (timers, signals, events to inject,
    /// the console: see [`Self::quiet`]), so the next entry only sets the
    /// preemption timer again. Some(Some(flow)): handled; the full path runs
    /// before the next entry.
    fn fast_exit(
        &mut self,
        reason: u32,
        entry_deadline: u64,
        vm: &Vm,
        mb: &super::irq::Mailbox,
    ) -> Option<Option<Flow>> {
        if !fast_path_exit(reason) {
            return None;
        }
        self.spin_tsc = 0;
        #[cfg(feature = "bench")]
        if reason == arch::vmx::exit::ExitReason::Vmcall as u32
            && self.regs.gpr[run::RAX] == 0xFFFF_0000
        {
            // The benchmark floor: the least a handled exit can cost.
            let len = ro::VMEXIT_INSTRUCTION_LEN.read().unwrap_or(0);
            w!(guest::RIP, self.rip().wrapping_add(u64::from(len)));
            return Some(if self.quiet(entry_deadline, vm, mb) {
                None
            } else {
                Some(Flow::Continue)
            });
        }
        match exits::handle(self, reason) {
            Flow::Continue if self.quiet(entry_deadline, vm, mb) => Some(None),
            flow => Some(Some(flow)),
        }
    }

    /// Whether the next entry can skip the full path: the timer the last
    /// entry armed isn't due, no event is queued, and no other CPU has left a
    /// signal, a timer change or a reason to look at interrupts (those that
    /// come with a kick IPI would also end the next entry at once), and the
    /// console queues need no feeding before that timer (a hypercall may just
    /// have filled them).
    fn quiet(&self, entry_deadline: u64, vm: &Vm, mb: &super::irq::Mailbox) -> bool {
        let now = rdtsc();
        self.pending_event.is_none()
            && !self.timers_dirty
            && now < entry_deadline
            && crate::console::next_pump_tsc().is_none_or(|t| t >= entry_deadline)
            && !mb.check_irq.load(Ordering::Acquire)
            && !mb.timers_dirty.load(Ordering::Acquire)
            && !mb.init.load(Ordering::Acquire)
            && !mb.nmi.load(Ordering::Acquire)
            && !vm.ended()
            && !interrupts::STOPPING.load(Ordering::Relaxed)
    }

    /// INIT, SIPI and NMI signals left by other vCPUs (SDM 9.4.4, 11.6.1).
    /// Returns how the slice ends if the vCPU can't run now.
    fn take_signals(&mut self) -> Option<SliceEnd> {
        use super::irq::{RUNNABLE, WAIT_SIPI};
        let vm = self.vm.clone();
        let mb = &vm.mailbox[self.index];
        if self.halted_noirq && (mb.nmi.load(Ordering::SeqCst) || mb.init.load(Ordering::SeqCst)) {
            // Runnable again before the signal is consumed (see Mailbox::stuck).
            self.set_halted_noirq(false);
        }
        if mb.init.swap(false, Ordering::AcqRel) {
            // INIT: back to the wait-for-SIPI state with a fresh APIC and the
            // INIT values of the debug registers and CR2 (SDM Vol. 3A Table
            // 10-1; x87/SSE state is kept).
            vm.lapics[self.index].lock().reset_on_init();
            self.wait_sipi = true;
            self.configured = false;
            self.launched = false;
            self.pending_event = None;
            self.debug_regs = [0, 0, 0, 0, DR6_INIT];
            self.cr2 = 0;
        }
        if self.wait_sipi {
            mb.stuck.store(RUNNABLE, Ordering::SeqCst);
            let sipi = mb.sipi.swap(0, Ordering::AcqRel);
            if sipi == 0 {
                mb.stuck.store(WAIT_SIPI, Ordering::SeqCst);
                if let Some(end) = self.end_if_dead() {
                    vm.end(end);
                    return Some(SliceEnd::VmEnded);
                }
                return Some(SliceEnd::Halted);
            }
            // Start in real mode at vector:0000 (SDM 9.4.4.2).
            let vector = u64::from(sipi & 0xFF);
            let mut st = crate::loader::setup::real16(0);
            st.cs = crate::loader::setup::Seg {
                sel: (vector << 8) as u16,
                base: vector << 12,
                limit: 0xFFFF,
                ar: 0x9B,
            };
            st.rip = 0;
            self.start_state = Some(st);
            self.regs = GuestRegs::default();
            self.wait_sipi = false;
            self.configured = false;
            self.launched = false;
        }
        None
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

    /// An exit that interrupted the delivery of an event (IDT-vectoring
    /// information valid, SDM Vol. 3C 28.2.4) must not lose it: it is
    /// delivered again at the next entry (SDM Vol. 3C 27.6).
    fn requeue_vectored_event(&mut self, reason: u32) -> Option<VmEnd> {
        let info = ro::IDT_VECTORING_INFO.read().unwrap_or(0);
        if info & (1 << 31) == 0 {
            return None;
        }
        if reason & 0xFFFF == arch::vmx::exit::ExitReason::EptViolation as u32 {
            // Delivery touched memory with no RAM behind it (an IDT, GDT or
            // stack outside RAM): nothing sensible can be delivered.
            return Some(VmEnd::Crashed(format!(
                "event delivery (vector {}) touched guest-physical {:#x}, which is not RAM ({})",
                info & 0xFF,
                ro::GUEST_PHYSICAL_ADDR.read().unwrap_or(0),
                exits::guest_state(self)
            )));
        }
        let kind = (info >> 8) & 7;
        let error_code = if info & (1 << 11) != 0 {
            ro::IDT_VECTORING_ERR_CODE.read().unwrap_or(0)
        } else {
            0
        };
        // Software interrupts and exceptions (INT n, INT3, INTO, INT1) need
        // their instruction length again.
        let len = if matches!(kind, 4..=6) {
            ro::VMEXIT_INSTRUCTION_LEN.read().unwrap_or(0)
        } else {
            0
        };
        // Bit 12 is undefined here; bits 30:12 of the entry field are reserved.
        self.pending_event = Some(Event {
            info: info & 0x8000_0FFF,
            error_code,
            len,
        });
        None
    }

    /// Drops this vCPU's cached translations on the current CPU.
    fn flush_tlb(&self) {
        // SAFETY: in VMX root operation; INVEPT/INVVPID single-context are
        // supported (checked when VMX was probed); the VPID is this vCPU's.
        unsafe {
            let _ = instr::invept(instr::InveptType::SingleContext, self.vm.mem.eptp());
            if self.vpid != 0 && vmx::caps().vpid {
                let _ = instr::invvpid(instr::InvvpidType::SingleContext, self.vpid, 0);
            }
        }
    }

    pub fn set_halted_noirq(&mut self, on: bool) {
        use super::irq::{HALT_NOIRQ, RUNNABLE};
        self.halted_noirq = on;
        self.vm.mailbox[self.index]
            .stuck
            .store(if on { HALT_NOIRQ } else { RUNNABLE }, Ordering::SeqCst);
    }

    /// Brings this vCPU's timers up to date; returns the next host-TSC deadline.
    fn poll_timers(&mut self) -> Option<u64> {
        let vm = self.vm.clone();
        // The BSP keeps the platform's devices (PIT, RTC, ...) up to date.
        let dev = if self.index == 0 {
            vm.poll_devices()
        } else {
            None
        };
        let now = vm.guest_tsc();
        let mut l = vm.lapics[self.index].lock();
        poll_lapic_timer(&vm, &mut l, now);
        let lapic = l.next_timer_deadline().map(|g| vm.host_tsc(g));
        lapic.into_iter().chain(dev).min()
    }

    /// Whether the 8259 can interrupt this vCPU: only the BSP, through
    /// LINT0 programmed for ExtINT (virtual-wire mode, MP spec 3.6.2.2).
    fn pic_wired(&self) -> bool {
        use crate::devices::lapic::DeliveryMode;
        self.index == 0
            && self.vm.lapics[0]
                .lock()
                .lint(0)
                .is_some_and(|l| l.mode == DeliveryMode::ExtInt)
    }

    /// Sets or clears window-exiting bits of the primary controls.
    fn set_window_exits(&mut self, bits: u32, on: bool) {
        let p = ctrl::PRIMARY_PROCBASED_EXEC_CONTROLS.read().unwrap_or(0);
        let n = if on { p | bits } else { p & !bits };
        if n != p {
            w!(ctrl::PRIMARY_PROCBASED_EXEC_CONTROLS, n);
        }
    }

    /// Injects the highest-priority deliverable event (NMI before external
    /// interrupts), or asks for an NMI- or interrupt-window exit when the
    /// guest can't take it yet (SDM Vol. 3C 26.3, 27.6, 28.1).
    /// Returns whether more may be pending (check again before the next entry).
    fn inject_interrupts(&mut self) -> bool {
        use arch::vmx::vmcs::bits::primary::{INTERRUPT_WINDOW_EXITING, NMI_WINDOW_EXITING};
        let blocking = guest::INTERRUPTIBILITY_STATE.read().unwrap_or(0);
        let mb = &self.vm.mailbox[self.index];
        let nmi = mb.nmi.load(Ordering::Acquire);
        if nmi {
            // Blocked by STI, MOV SS or an NMI handler that hasn't IRETed yet
            // (virtual-NMI blocking, bit 3).
            if blocking & 0xB == 0 {
                mb.nmi.store(false, Ordering::Release);
                self.pending_event = Some(Event {
                    info: 2 | (2 << 8) | (1 << 31),
                    error_code: 0,
                    len: 0,
                });
                if self.virtual_nmis {
                    self.set_window_exits(NMI_WINDOW_EXITING, false);
                }
                return true;
            }
            if self.virtual_nmis {
                // The exit comes right after the handler's IRET.
                self.set_window_exits(NMI_WINDOW_EXITING, true);
            }
        } else if self.virtual_nmis {
            self.set_window_exits(NMI_WINDOW_EXITING, false);
        }
        let vector = self.vm.lapics[self.index].lock().pending();
        let pic = vector.is_none() && self.pic_wired() && self.vm.pic_pending();
        if vector.is_none() && !pic {
            self.set_window_exits(INTERRUPT_WINDOW_EXITING, false);
            // Without NMI-window exits, look again at every exit.
            return nmi && !self.virtual_nmis;
        }
        let rflags = guest::RFLAGS.read().unwrap_or(0);
        if rflags & (1 << 9) == 0 || blocking & 3 != 0 {
            // The interrupt-window exit brings us back here.
            self.set_window_exits(INTERRUPT_WINDOW_EXITING, true);
            return nmi && !self.virtual_nmis;
        }
        let vector = match vector {
            Some(v) => {
                self.vm.lapics[self.index].lock().ack(v);
                Some(v)
            }
            None => self.vm.pic_acknowledge(),
        };
        if let Some(v) = vector {
            self.pending_event = Some(Event {
                info: arch::vmx::exit::external_interrupt(v),
                error_code: 0,
                len: 0,
            });
        }
        self.set_window_exits(INTERRUPT_WINDOW_EXITING, false);
        true
    }

    /// Whether an interrupt could be delivered to this vCPU now or soon.
    pub fn interrupt_pending(&self) -> bool {
        let mb = &self.vm.mailbox[self.index];
        if mb.nmi.load(Ordering::Acquire) || mb.init.load(Ordering::Acquire) {
            return true;
        }
        if self.wait_sipi {
            return mb.sipi.load(Ordering::Acquire) != 0;
        }
        if self.halted_noirq {
            return false;
        }
        {
            let mut l = self.vm.lapics[self.index].lock();
            poll_lapic_timer(&self.vm, &mut l, self.vm.guest_tsc());
            if l.pending().is_some() {
                return true;
            }
        }
        self.pic_wired() && self.vm.pic_pending()
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

    /// Whether a halted vCPU should run again: an interrupt is pending for it
    /// or one of its timers is due.
    pub fn wants_to_run(&self, now_tsc: u64) -> bool {
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

    /// Loads guest FPU/XSAVE state and the MSRs the VMCS doesn't switch.
    fn switch_in(&mut self) {
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

    fn switch_out(&mut self) {
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
    fn load_host_state(&mut self) {
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
    }

    /// Control and guest-state fields for a fresh start (SDM 25.6-25.8, 27.3).
    fn configure(&mut self) -> Result<(), alloc::string::String> {
        let caps = vmx::caps();
        let vm = self.vm.clone();
        let entry = self.start_state.unwrap_or_else(|| *vm.entry.lock());
        let err = |e: arch::vmx::caps::ControlError| format!("cannot configure VMX controls: {e}");
        // Virtual NMIs: the CPU tracks the guest's NMI blocking until its
        // IRET, so that every NMI is delivered once the previous one is handled.
        let pin = caps
            .pin
            .adjust(
                if self.virtual_nmis {
                    bits::pin::VIRTUAL_NMIS
                } else {
                    0
                },
                bits::pin::EXTERNAL_INTERRUPT_EXITING
                    | bits::pin::NMI_EXITING
                    | bits::pin::PREEMPTION_TIMER,
            )
            .map_err(err)?;
        use bits::primary as p;
        let primary = caps
            .primary
            .adjust(
                p::MWAIT_EXITING | p::MONITOR_EXITING | p::RDPMC_EXITING | p::USE_TSC_OFFSETTING,
                p::HLT_EXITING
                    | p::USE_IO_BITMAPS
                    | p::USE_MSR_BITMAPS
                    | p::ACTIVATE_SECONDARY_CONTROLS
                    | p::CR8_LOAD_EXITING
                    | p::CR8_STORE_EXITING,
            )
            .map_err(err)?
            & !(p::CR3_LOAD_EXITING | p::CR3_STORE_EXITING | p::INVLPG_EXITING | p::RDTSC_EXITING)
            | (caps.primary.allowed0
                & (p::CR3_LOAD_EXITING | p::CR3_STORE_EXITING | p::INVLPG_EXITING));
        use bits::secondary as s;
        // XSAVES stays off (and hidden in CPUID): IA32_XSS isn't switched per vCPU.
        let mut want2 = s::ENABLE_RDTSCP | s::ENABLE_INVPCID;
        if caps.vpid {
            want2 |= s::ENABLE_VPID;
        }
        let secondary = caps
            .secondary
            .adjust(want2, s::ENABLE_EPT | s::UNRESTRICTED_GUEST)
            .map_err(err)?;
        use bits::exit as x;
        let exit = caps
            .exit
            .adjust(
                x::SAVE_IA32_PAT | x::LOAD_IA32_PAT,
                x::HOST_ADDRESS_SPACE_SIZE
                    | x::SAVE_DEBUG_CONTROLS
                    | x::SAVE_IA32_EFER
                    | x::LOAD_IA32_EFER
                    | x::ACK_INTERRUPT_ON_EXIT,
            )
            .map_err(err)?;
        use bits::entry as n;
        let mut entry_ctl = caps
            .entry
            .adjust(n::LOAD_IA32_PAT, n::LOAD_IA32_EFER | n::LOAD_DEBUG_CONTROLS)
            .map_err(err)?;
        if entry.mode == Mode::Long64 {
            entry_ctl |= n::IA32E_MODE_GUEST;
        } else {
            entry_ctl &= !n::IA32E_MODE_GUEST;
        }
        w!(ctrl::PINBASED_EXEC_CONTROLS, pin);
        w!(ctrl::PRIMARY_PROCBASED_EXEC_CONTROLS, primary);
        w!(ctrl::SECONDARY_PROCBASED_EXEC_CONTROLS, secondary);
        w!(ctrl::VMEXIT_CONTROLS, exit);
        w!(ctrl::VMENTRY_CONTROLS, entry_ctl);
        w!(ctrl::EXCEPTION_BITMAP, 0);
        w!(ctrl::PAGE_FAULT_ERR_CODE_MASK, 0);
        w!(ctrl::PAGE_FAULT_ERR_CODE_MATCH, 0);
        w!(ctrl::CR3_TARGET_COUNT, 0);
        w!(ctrl::VMEXIT_MSR_STORE_COUNT, 0);
        w!(ctrl::VMEXIT_MSR_LOAD_COUNT, 0);
        w!(ctrl::VMENTRY_MSR_LOAD_COUNT, 0);
        w!(ctrl::VMENTRY_INTERRUPTION_INFO, 0);
        w!(ctrl::IO_BITMAP_A, vm.io_bitmaps);
        w!(ctrl::IO_BITMAP_B, vm.io_bitmaps + mm::PAGE);
        w!(ctrl::MSR_BITMAPS, vm.msr_bitmap);
        w!(ctrl::TSC_OFFSET, vm.tsc_offset.load(Ordering::Relaxed));
        w!(ctrl::EPT_POINTER, vm.mem.eptp());
        if secondary & s::ENABLE_VPID != 0 {
            w!(ctrl::VPID, self.vpid);
        }
        // CR0.NE and CR4.VMXE are fixed to 1 in VMX operation; the guest sees
        // its own values through the read shadows. CR0.PG exits so that the
        // IA-32e mode entry control follows EFER.LMA.
        let cr0_mask =
            arch::regs::cr0::NE | arch::regs::cr0::PG | arch::regs::cr0::CD | arch::regs::cr0::NW;
        w!(ctrl::CR0_GUEST_HOST_MASK, cr0_mask);
        w!(ctrl::CR0_READ_SHADOW, entry.cr0);
        w!(ctrl::CR4_GUEST_HOST_MASK, crate::exits::cr::cr4_mask());
        w!(ctrl::CR4_READ_SHADOW, entry.cr4);
        w!(guest::CR0, crate::exits::cr::real_cr0(entry.cr0));
        w!(guest::CR3, entry.cr3);
        w!(guest::CR4, crate::exits::cr::real_cr4(entry.cr4));
        // DR7 and IA32_DEBUGCTL travel in the VMCS (debug-controls entry and
        // exit controls), so a breakpoint survives exits.
        w!(guest::DR7, DR7_INIT);
        w!(guest::RSP, entry.rsp);
        w!(guest::RIP, entry.rip);
        w!(guest::RFLAGS, 0x2);
        let ds = entry.ds;
        for (sel, base, limit, ar) in [
            (
                guest::ES_SEL,
                guest::ES_BASE,
                guest::ES_LIMIT,
                guest::ES_ACCESS_RIGHTS,
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
        ] {
            w!(sel, ds.sel);
            w!(base, ds.base);
            w!(limit, ds.limit);
            w!(ar, ds.ar);
        }
        w!(guest::CS_SEL, entry.cs.sel);
        w!(guest::CS_BASE, entry.cs.base);
        w!(guest::CS_LIMIT, entry.cs.limit);
        w!(guest::CS_ACCESS_RIGHTS, entry.cs.ar);
        w!(guest::LDTR_SEL, 0);
        w!(guest::LDTR_BASE, 0);
        w!(guest::LDTR_LIMIT, 0);
        w!(guest::LDTR_ACCESS_RIGHTS, 0x1_0000); // unusable
        w!(guest::TR_SEL, 0);
        w!(guest::TR_BASE, 0);
        w!(guest::TR_LIMIT, 0xFFFF);
        w!(guest::TR_ACCESS_RIGHTS, 0x8B); // present, busy TSS
        w!(guest::GDTR_BASE, entry.gdt_base);
        w!(guest::GDTR_LIMIT, entry.gdt_limit);
        w!(guest::IDTR_BASE, 0);
        w!(guest::IDTR_LIMIT, 0xFFFF);
        w!(guest::IA32_EFER, entry.efer);
        w!(guest::IA32_PAT, 0x0007_0406_0007_0406);
        w!(guest::IA32_DEBUGCTL, 0);
        w!(guest::IA32_SYSENTER_CS, 0);
        w!(guest::IA32_SYSENTER_ESP, 0);
        w!(guest::IA32_SYSENTER_EIP, 0);
        w!(guest::INTERRUPTIBILITY_STATE, 0);
        w!(guest::ACTIVITY_STATE, 0);
        w!(guest::PENDING_DBG_EXCEPTIONS, 0);
        w!(guest::VMCS_LINK_PTR, u64::MAX);
        self.regs.gpr[run::RDI] = entry.rdi;
        self.regs.gpr[run::RSI] = entry.rsi;
        self.regs.gpr[run::RBX] = entry.rbx;
        self.regs.gpr[run::RAX] = entry.rax;
        // Fresh mappings for this VPID/EPT: drop anything a previous user left.
        // SAFETY: in VMX root operation with INVEPT supported (checked in probe).
        unsafe {
            let _ = instr::invept(instr::InveptType::SingleContext, vm.mem.eptp());
            if secondary & s::ENABLE_VPID != 0 {
                let _ = instr::invvpid(instr::InvvpidType::SingleContext, self.vpid, 0);
            }
        }
        Ok(())
    }

    // ---- helpers for exit handlers -------------------------------------

    pub fn rip(&self) -> u64 {
        guest::RIP.read().unwrap_or(0)
    }

    /// Skips the instruction that caused the exit.
    pub fn advance_rip(&mut self) {
        let len = ro::VMEXIT_INSTRUCTION_LEN.read().unwrap_or(0) as u64;
        w!(guest::RIP, self.rip().wrapping_add(len));
        // Blocking by STI / MOV SS ends with the instruction (SDM 26.4.2? 24.4.2).
        let st = guest::INTERRUPTIBILITY_STATE.read().unwrap_or(0);
        if st & 3 != 0 {
            w!(guest::INTERRUPTIBILITY_STATE, st & !3);
        }
    }

    /// Queues a hardware exception for the next VM entry.
    pub fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        self.pending_cr2 = None;
        let info = arch::vmx::exit::hw_exception(vector, error_code.is_some());
        self.pending_event = Some(Event {
            info,
            error_code: error_code.unwrap_or(0),
            len: 0,
        });
        if is_fault(vector) {
            let rflags = guest::RFLAGS.read().unwrap_or(0);
            w!(guest::RFLAGS, rflags | (1 << 16));
        }
    }

    /// Queues a page fault at linear address `cr2` (SDM Vol. 3A 6.15, #PF).
    pub fn inject_page_fault(&mut self, cr2: u64, error_code: u32) {
        self.inject_exception(14, Some(error_code));
        self.pending_cr2 = Some(cr2);
    }

    /// The guest's current privilege level (SS.DPL, SDM 5.5 / 27.3.1.5).
    pub fn cpl(&self) -> u8 {
        ((guest::SS_ACCESS_RIGHTS.read().unwrap_or(0) >> 5) & 3) as u8
    }

    pub fn set_entry_ia32e(&mut self, on: bool) {
        let v = ctrl::VMENTRY_CONTROLS.read().unwrap_or(0);
        let v = if on {
            v | bits::entry::IA32E_MODE_GUEST
        } else {
            v & !bits::entry::IA32E_MODE_GUEST
        };
        w!(ctrl::VMENTRY_CONTROLS, v);
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
    fn only_core_instruction_exits_take_the_fast_path() {
        for r in [10, 18, 30, 31] {
            assert!(fast_path_exit(r), "{r}");
            // A VM-entry failure with the same basic reason is not one.
            assert!(!fast_path_exit(r | EXIT_REASON_ENTRY_FAILURE));
        }
        // WRMSR, EPT violations (APIC writes), HLT, CR accesses, the
        // preemption timer, interrupts and windows: they change timers or
        // interrupt state without the mailbox flags, or carry IDT-vectoring
        // information.
        for r in [0, 1, 7, 12, 28, 32, 48, 52] {
            assert!(!fast_path_exit(r), "{r}");
        }
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
