//! The run loop of a vCPU: a time slice of VM entries and exits, its fast
//! path, the signals other vCPUs leave, and timer polling.
use super::*;
use crate::exits::vmexit::{rd, wr, VmcsError};
use crate::vmx::run;
use crate::{exits, interrupts, percpu, vmx};
use alloc::format;
use arch::regs::{self, rdtsc};
use arch::vmx::exit::EXIT_REASON_ENTRY_FAILURE;
use arch::vmx::instr;
use arch::vmx::vmcs::{ctrl, guest, ro};
use core::sync::atomic::Ordering;

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
pub(super) fn poll_lapic_timer(vm: &Vm, l: &mut devices::lapic::VLapic, now: u64) {
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

/// TSC ticks a vCPU may spend with interrupts off and no other exit before
/// its guest counts as hung (the manifest's `irqoff_timeout_s`; None = never).
pub fn irqoff_timeout_tsc(seconds: u32) -> Option<u64> {
    (seconds > 0).then(|| crate::time::us_to_tsc(u64::from(seconds) * 1_000_000))
}

/// The run loop's own VMCS accesses; a failure ends the VM (see
/// [`exits::vmcs_failed`]) and the slice.
macro_rules! vmcs {
    ($self:ident, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(err) => {
                let end = exits::vmcs_failed($self, err);
                $self.vm.end(end);
                break SliceEnd::VmEnded;
            }
        }
    };
}

fn set_timer(value: u32) -> Result<(), VmcsError> {
    wr!(guest::VMX_PREEMPTION_TIMER_VALUE, value);
    Ok(())
}

fn read_cr0_shadow() -> Result<u64, VmcsError> {
    Ok(rd!(ctrl::CR0_READ_SHADOW))
}

fn load_event(ev: &Event) -> Result<(), VmcsError> {
    wr!(ctrl::VMENTRY_INTERRUPTION_INFO, ev.info);
    wr!(ctrl::VMENTRY_EXCEPTION_ERR_CODE, ev.error_code);
    wr!(ctrl::VMENTRY_INSTRUCTION_LEN, ev.len);
    Ok(())
}

fn read_exit_reason() -> Result<u32, VmcsError> {
    Ok(rd!(ro::EXIT_REASON))
}

fn read_qualification() -> Result<u64, VmcsError> {
    Ok(rd!(ro::EXIT_QUALIFICATION))
}

fn read_rflags() -> Result<u64, VmcsError> {
    Ok(rd!(guest::RFLAGS))
}

fn read_rip() -> Result<u64, VmcsError> {
    Ok(rd!(guest::RIP))
}

/// Fast entries in a row that keep the preemption timer where the exit saved
/// it (VM-exit control "save VMX-preemption timer value", SDM Vol. 3C
/// 25.5.1) instead of setting it again from the TSC. The timer doesn't count
/// while an exit is handled, so the slice's end moves out by the handling
/// time of these exits (about 64 x 200 instructions at most) before the
/// next full reload; each fast exit still checks the deadline against the
/// TSC (`quiet`).
const FAST_TIMER_REUSE: u32 = 64;

/// RIP past the exiting instruction, nothing else (the benchmark floor).
#[cfg(feature = "bench")]
fn skip_instruction() -> Result<(), VmcsError> {
    let len = rd!(ro::VMEXIT_INSTRUCTION_LEN);
    wr!(guest::RIP, rd!(guest::RIP).wrapping_add(u64::from(len)));
    Ok(())
}

impl Vcpu {
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
            if let Err(e) = self.load_host_state() {
                let end = exits::vmcs_failed(self, e);
                self.vm.end(end);
                return SliceEnd::VmEnded;
            }
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
                log::error!("hv: vm {}: vcpu {}: {e}", self.vm.name, self.index);
                self.vm.end(VmEnd::Crashed(e));
                return SliceEnd::VmEnded;
            }
            self.configured = true;
            if let Err(e) = self.apply_staged() {
                self.vm
                    .end(VmEnd::Crashed(format!("restoring a snapshot: {e}")));
                return SliceEnd::VmEnded;
            }
        }
        self.vm.mailbox[self.index]
            .running_on
            .store(me + 1, Ordering::Release);
        self.vm.stats.last_cpu[self.index].store(me as u32 + 1, Ordering::Relaxed);
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
        // Fast entries since the timer was last set (see FAST_TIMER_REUSE).
        let mut fast_run = 0u32;
        // Held for the slice: the fast path reads the VM's flags directly.
        let vm = self.vm.clone();
        let mb = &vm.mailbox[self.index];
        let stats_row = vm.stats.row(self.index);
        let mut now;
        let end = loop {
            if fast {
                fast = false;
                if self.timer_saved && fast_run < FAST_TIMER_REUSE {
                    // The timer goes on from the value the exit saved; it
                    // stood still only while the exits were handled.
                    fast_run += 1;
                    now = exit_tsc;
                } else {
                    fast_run = 0;
                    now = rdtsc();
                    vmcs!(
                        self,
                        set_timer(preemption_timer_value(
                            entry_deadline.saturating_sub(now),
                            rate
                        ))
                    );
                }
            } else {
                fast_run = 0;
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
                if self.vm.mailbox[self.index].init.load(Ordering::Acquire)
                    || self.vm.pause_requested()
                {
                    // A pause parks it at this instruction boundary (sched).
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
                // Frames other VMs switched to this one's NICs (they only
                // signalled): into the receive queues before interrupts are
                // looked at.
                if self.index == 0 && self.vm.net_rx.load(Ordering::Acquire) != 0 {
                    self.vm.drain_nics();
                }
                // NBD requests the NIC poll saw finish: into the used rings.
                if self.index == 0 && self.vm.disk_done.load(Ordering::Acquire) != 0 {
                    self.vm.drain_disks();
                }
                let mut left = left.min(self.next_timer.saturating_sub(now).max(1));
                if let Some(t) = crate::console::next_pump_tsc() {
                    // Back in time to feed the serial port again.
                    left = left.min(t.saturating_sub(now).max(1));
                }
                entry_deadline = now.saturating_add(left);
                vmcs!(self, set_timer(preemption_timer_value(left, rate)));
                if self.pending_event.is_none()
                    && self.vm.mailbox[self.index]
                        .check_irq
                        .swap(false, Ordering::AcqRel)
                    && vmcs!(self, self.inject_interrupts())
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
                    vmcs!(self, load_event(&ev));
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
                let why = match ro::VM_INSTRUCTION_ERROR.read() {
                    Ok(err) => format!(
                        "VM-instruction error {err} ({})",
                        arch::vmx::instr::VmInstructionError::from_number(err).description()
                    ),
                    Err(e) => format!("VM-instruction error unreadable: {e}"),
                };
                self.vm
                    .end(VmEnd::Crashed(format!("VM entry failed: {why}")));
                break SliceEnd::VmEnded;
            }
            self.launched = true;
            let reason = vmcs!(self, read_exit_reason());
            exit_reason = reason & 0xFFFF;
            if let Some(row) = stats_row {
                row.count(exit_reason);
            }
            match self.fast_exit(reason, exit_tsc, entry_deadline, &vm, mb) {
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
            if reason & 0xFFFF == 52 && vmcs!(self, read_rflags()) & (1 << 9) == 0 {
                self.spin_tsc += rdtsc().saturating_sub(now);
                let limit = irqoff_timeout_tsc(self.vm.config.irqoff_timeout_s);
                if limit.is_some_and(|l| self.spin_tsc > l) {
                    let rip = vmcs!(self, read_rip());
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
                if let Some(end) = vmcs!(self, self.requeue_vectored_event(reason)) {
                    self.vm.end(end);
                    break SliceEnd::VmEnded;
                }
            }
            if reason & EXIT_REASON_ENTRY_FAILURE != 0 {
                let q = vmcs!(self, read_qualification());
                let mut what = crate::exits::entry_failure_reason(reason, q);
                if reason & 0xFFFF == 33 {
                    // The CPU doesn't say which check failed; find it in software.
                    use crate::vmx::entry_check::{check_all, EntryContext, GuestState};
                    match (GuestState::read_current(), EntryContext::read_current()) {
                        (Ok(g), Ok(c)) => {
                            for e in check_all(&g, &c).iter().take(3) {
                                what.push_str(&format!("; {e}"));
                            }
                        }
                        (Err(e), _) | (_, Err(e)) => {
                            what.push_str(&format!("; guest state unreadable ({e})"))
                        }
                    }
                }
                self.vm.end(VmEnd::Crashed(what));
                break SliceEnd::VmEnded;
            }
            match exits::run(self, reason) {
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
    pub(super) fn fast_exit(
        &mut self,
        reason: u32,
        exit_tsc: u64,
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
            if let Err(e) = skip_instruction() {
                return Some(Some(Flow::End(exits::vmcs_failed(self, e))));
            }
            return Some(if self.quiet(exit_tsc, entry_deadline, vm, mb) {
                None
            } else {
                Some(Flow::Continue)
            });
        }
        match exits::run(self, reason) {
            Flow::Continue if self.quiet(exit_tsc, entry_deadline, vm, mb) => Some(None),
            flow => Some(Some(flow)),
        }
    }

    /// Whether the next entry can skip the full path: the timer the last
    /// entry armed isn't due, no event is queued, and no other CPU has left a
    /// signal, a timer change or a reason to look at interrupts (those that
    /// come with a kick IPI would also end the next entry at once), and the
    /// console queues need no feeding before that timer (a hypercall may just
    /// have filled them).
    /// `now`: the exit's TSC (the handling since is short).
    pub(super) fn quiet(
        &self,
        now: u64,
        entry_deadline: u64,
        vm: &Vm,
        mb: &super::irq::Mailbox,
    ) -> bool {
        self.pending_event.is_none()
            && !self.timers_dirty
            && now < entry_deadline
            && crate::console::next_pump_tsc().is_none_or(|t| t >= entry_deadline)
            && !mb.check_irq.load(Ordering::Acquire)
            && !mb.timers_dirty.load(Ordering::Acquire)
            && !mb.init.load(Ordering::Acquire)
            && !mb.nmi.load(Ordering::Acquire)
            && !vm.ended()
            && !vm.pause_requested()
            && !interrupts::STOPPING.load(Ordering::Relaxed)
    }

    /// INIT, SIPI and NMI signals left by other vCPUs (SDM 9.4.4, 11.6.1).
    /// Returns how the slice ends if the vCPU can't run now.
    pub(super) fn take_signals(&mut self) -> Option<SliceEnd> {
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
            if self.configured {
                // CD and NW are host-owned, so the read shadow has the
                // guest's (SDM Vol. 3C 25.6.6); this vCPU's VMCS is current.
                match read_cr0_shadow() {
                    Ok(cr0) => self.init_cr0 = cr0,
                    Err(err) => {
                        let end = exits::vmcs_failed(self, err);
                        vm.end(end);
                        return Some(SliceEnd::VmEnded);
                    }
                }
            }
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
            // RDX: the processor signature, CPUID.01H:EAX, which the guest's
            // CPUID passes through from the host (SDM Vol. 3A 10.1.4).
            let signature = arch::cpuid::cpuid(1, 0).eax;
            self.start_state = Some(start_state::sipi_state(
                (sipi & 0xFF) as u8,
                signature,
                self.init_cr0,
            ));
            self.regs = GuestRegs::default();
            self.wait_sipi = false;
            self.configured = false;
            self.launched = false;
        }
        None
    }

    /// Brings this vCPU's timers up to date; returns the next host-TSC deadline.
    pub(super) fn poll_timers(&mut self) -> Option<u64> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
