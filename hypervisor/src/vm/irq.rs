//! Interrupt routing inside one VM: IPIs between its vCPUs' local APICs, I/O
//! APIC deliveries, NMI/INIT/SIPI, and kicking a vCPU that must notice a new
//! interrupt (SDM Vol. 3A 11.6, 11.11; 82093AA data sheet).
use super::Vm;
use crate::devices::ioapic::Delivery;
use crate::devices::lapic::{DeliveryMode, Ipi, LapicEffect, Shorthand};
use crate::{lapic, percpu};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};

/// `Mailbox::stuck`: the vCPU can run again only by another vCPU's signal.
pub const RUNNABLE: u8 = 0;
/// Waiting for a start-up IPI (SDM Vol. 3A 9.4.4).
pub const WAIT_SIPI: u8 = 1;
/// HLT with interrupts disabled: only NMI or INIT end it.
pub const HALT_NOIRQ: u8 = 2;

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
                    lapic::send_ipi(c.apic_id, u32::from(lapic::WAKE_VECTOR));
                }
            }
        } else {
            crate::sched::notify();
        }
    }

    /// Acts on what a local APIC register write asked for.
    pub fn lapic_effect(&self, src: usize, e: LapicEffect) {
        match e {
            LapicEffect::None => {}
            LapicEffect::Eoi { vector, level } => {
                if level {
                    let d = self.shared.lock().ioapic.eoi(vector);
                    self.ioapic_deliver(&d);
                }
            }
            LapicEffect::Ipi(ipi) => self.route_ipi(src, &ipi),
        }
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

    /// Delivers an IPI from vCPU `src`.
    pub fn route_ipi(&self, src: usize, ipi: &Ipi) {
        let targets: alloc::vec::Vec<usize> = self
            .targets(
                src,
                ipi.dest_shorthand,
                ipi.dest,
                ipi.dest_mode_logical,
                ipi.x2apic,
            )
            .collect();
        let targets = if ipi.delivery == DeliveryMode::LowestPriority {
            &targets[..targets.len().min(1)]
        } else {
            &targets[..]
        };
        for &i in targets {
            self.deliver_to(i, ipi.delivery, ipi.vector, ipi.trigger_level);
        }
    }

    /// Delivers I/O APIC messages (physical or logical xAPIC destinations).
    pub fn ioapic_deliver(&self, ds: &[Delivery]) {
        for d in ds {
            let targets: alloc::vec::Vec<usize> = self
                .targets(
                    usize::MAX,
                    Shorthand::None,
                    u32::from(d.dest),
                    d.logical,
                    false,
                )
                .collect();
            let targets = if d.mode == DeliveryMode::LowestPriority {
                &targets[..targets.len().min(1)]
            } else {
                &targets[..]
            };
            for &i in targets {
                self.deliver_to(i, d.mode, d.vector, d.level_triggered);
            }
        }
    }
}
