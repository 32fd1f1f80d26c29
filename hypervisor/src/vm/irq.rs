//! Interrupt routing inside one VM: IPIs between its vCPUs' local APICs, I/O
//! APIC deliveries, NMI/INIT/SIPI, and kicking a vCPU that must notice a new
//! interrupt (SDM Vol. 3A 11.6, 11.11; 82093AA data sheet).
use super::Vm;
use crate::{hostapic, percpu};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use devices::lapic::{DeliveryMode, Shorthand};
use devices::{Effects, Message, Request};

/// `Mailbox::stuck`: the vCPU can run again only by another vCPU's signal.
pub const RUNNABLE: u8 = 0;
/// Waiting for a start-up IPI (SDM Vol. 3A 9.4.4).
pub const WAIT_SIPI: u8 = 1;
/// HLT with interrupts disabled: only NMI or INIT end it.
pub const HALT_NOIRQ: u8 = 2;

/// Where an [`Effects`] came from: the platform bus (its timers are the
/// BSP's to poll) or vCPU `i`'s local APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Platform,
    Vcpu(usize),
}

/// Per-vCPU signals other vCPUs and devices leave for it.
#[derive(Default)]
pub struct Mailbox {
    pub init: AtomicBool,
    /// 0 = none, else 0x100 | start-up vector.
    pub sipi: AtomicU32,
    pub nmi: AtomicBool,
    /// Something may have become deliverable: re-evaluate before the next entry.
    pub check_irq: AtomicBool,
    /// A device timer of the VM changed: the BSP re-polls its deadlines.
    pub timers_dirty: AtomicBool,
    /// 1 + the physical CPU running this vCPU, or 0.
    pub running_on: AtomicUsize,
    /// [`RUNNABLE`], [`WAIT_SIPI`] or [`HALT_NOIRQ`]. A vCPU clears it before
    /// it consumes the signal that frees it, so that a vCPU that finds every
    /// vCPU stuck with no such signal pending knows the guest is dead.
    pub stuck: AtomicU8,
}

impl Vm {
    /// Whether no vCPU of this VM can ever run again: each waits for a
    /// signal that only a running vCPU could send, and none is pending.
    /// (NMIs or INITs that a guest routes through its I/O APIC are not
    /// counted on: a guest waiting for those alone is taken for dead.)
    pub fn no_vcpu_can_run(&self) -> bool {
        self.mailbox
            .iter()
            .all(|m| match m.stuck.load(Ordering::SeqCst) {
                WAIT_SIPI => m.sipi.load(Ordering::SeqCst) == 0,
                HALT_NOIRQ => !m.nmi.load(Ordering::SeqCst) && !m.init.load(Ordering::SeqCst),
                _ => false,
            })
    }

    /// What each vCPU waits for, for the hung-guest diagnostic.
    pub fn stuck_states(&self) -> alloc::string::String {
        let mut out = alloc::string::String::new();
        for (i, m) in self.mailbox.iter().enumerate() {
            let what = match m.stuck.load(Ordering::SeqCst) {
                WAIT_SIPI => "waits for a start-up IPI",
                HALT_NOIRQ => "HLT with interrupts disabled",
                _ => "runnable",
            };
            if !out.is_empty() {
                out.push_str(", ");
            }
            let _ = core::fmt::Write::write_fmt(&mut out, format_args!("vcpu {i} {what}"));
        }
        out
    }

    /// The guest's TSC (all vCPUs of a VM share one TSC offset).
    pub fn guest_tsc(&self) -> u64 {
        arch::regs::rdtsc().wrapping_add(self.tsc_offset.load(Ordering::Relaxed))
    }

    /// Host TSC for a guest TSC value.
    pub fn host_tsc(&self, guest: u64) -> u64 {
        guest.wrapping_sub(self.tsc_offset.load(Ordering::Relaxed))
    }

    /// Makes vCPU `i` look at its interrupts soon: an IPI to the CPU running
    /// it (the exit re-evaluates), or a wake-up of idle CPUs if it sleeps.
    pub fn kick(&self, i: usize) {
        self.mailbox[i].check_irq.store(true, Ordering::Release);
        let on = self.mailbox[i].running_on.load(Ordering::Acquire);
        if on != 0 {
            let cpu = on - 1;
            if cpu != percpu::current_index() {
                if let Some(c) = percpu::get(cpu) {
                    hostapic::send_ipi(c.apic_id, u32::from(hostapic::WAKE_VECTOR));
                }
            }
        } else {
            crate::sched::notify();
        }
    }

    /// Acts on everything a device access changed, once the device's lock
    /// is dropped: interrupt messages go to their local APICs, a
    /// level-triggered EOI to the I/O APIC (whose re-sent messages go out
    /// too), and the vCPU that owns a changed 8259 output or timer looks at
    /// it before its next entry. Returns what the guest asked the platform
    /// to do.
    pub fn apply(&self, src: Source, fx: Effects) -> Request {
        use Ordering::Release;
        let (from, timer_owner) = match src {
            Source::Platform => (usize::MAX, 0),
            Source::Vcpu(i) => (i, i),
        };
        for m in &fx.messages {
            self.deliver(from, m);
        }
        if let Some(vector) = fx.eoi {
            let again = self.shared.lock().io.eoi(vector);
            for m in &again.messages {
                self.deliver(from, m);
            }
        }
        let intr = fx.intr.is_some();
        if intr {
            self.mailbox[0].check_irq.store(true, Release);
        }
        let timer = fx.deadline.is_some();
        if timer {
            if let Some(m) = self.mailbox.get(timer_owner) {
                m.timers_dirty.store(true, Release);
            }
        }
        // A BSP that isn't running must wake up to notice; a running one
        // looks at its mailbox at its next exit.
        if (intr || (timer && timer_owner == 0))
            && self.mailbox[0].running_on.load(Ordering::Acquire) == 0
        {
            self.kick(0);
        }
        fx.request
    }

    fn targets(
        &self,
        src: usize,
        shorthand: Shorthand,
        dest: u32,
        logical: bool,
        x2apic: bool,
    ) -> impl Iterator<Item = usize> + '_ {
        (0..self.lapics.len()).filter(move |&i| match shorthand {
            Shorthand::SelfOnly => i == src,
            Shorthand::AllIncludingSelf => true,
            Shorthand::AllExcludingSelf => i != src,
            Shorthand::None => self.lapics[i]
                .lock()
                .matches_destination(dest, logical, x2apic),
        })
    }

    fn deliver_to(&self, i: usize, mode: DeliveryMode, vector: u8, level_triggered: bool) {
        match mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                if self.lapics[i].lock().accept(vector, level_triggered) {
                    self.kick(i);
                }
            }
            DeliveryMode::Nmi => {
                self.mailbox[i].nmi.store(true, Ordering::Release);
                self.kick(i);
            }
            DeliveryMode::Init => {
                self.mailbox[i].init.store(true, Ordering::Release);
                self.kick(i);
            }
            DeliveryMode::Startup => {
                self.mailbox[i]
                    .sipi
                    .store(0x100 | u32::from(vector), Ordering::Release);
                self.kick(i);
            }
            // SMI and ExtINT are not modelled for IPIs.
            DeliveryMode::Smi | DeliveryMode::ExtInt => {}
        }
    }

    /// Delivers an interrupt message from vCPU `src` (`usize::MAX`: from
    /// the I/O APIC) to the local APICs it addresses; a lowest-priority one
    /// goes to the first of them.
    pub fn deliver(&self, src: usize, m: &Message) {
        let mut targets =
            self.targets(src, m.dest_shorthand, m.dest, m.dest_mode_logical, m.x2apic);
        if m.delivery == DeliveryMode::LowestPriority {
            if let Some(i) = targets.next() {
                self.deliver_to(i, m.delivery, m.vector, m.trigger_level);
            }
            return;
        }
        for i in targets {
            self.deliver_to(i, m.delivery, m.vector, m.trigger_level);
        }
    }
}
