//! Event injection: exceptions, NMIs and external interrupts delivered at
//! VM entry, events requeued after an exit during delivery, and halting.
use super::run_loop::poll_lapic_timer;
use super::*;
use crate::exits;
use crate::exits::vmexit::{rd, wr, VmcsError};
use alloc::format;
use arch::vmx::vmcs::{ctrl, guest, ro};
use core::sync::atomic::Ordering;

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

impl Vcpu {
    /// An exit that interrupted the delivery of an event (IDT-vectoring
    /// information valid, SDM Vol. 3C 28.2.4) must not lose it: it is
    /// delivered again at the next entry (SDM Vol. 3C 27.6).
    pub(super) fn requeue_vectored_event(
        &mut self,
        reason: u32,
    ) -> Result<Option<VmEnd>, VmcsError> {
        let info = rd!(ro::IDT_VECTORING_INFO);
        if info & (1 << 31) == 0 {
            return Ok(None);
        }
        if reason & 0xFFFF == arch::vmx::exit::ExitReason::EptViolation as u32 {
            // Delivery touched memory with no RAM behind it (an IDT, GDT or
            // stack outside RAM): nothing sensible can be delivered.
            return Ok(Some(VmEnd::Crashed(format!(
                "event delivery (vector {}) touched guest-physical {:#x}, which is not RAM ({})",
                info & 0xFF,
                rd!(ro::GUEST_PHYSICAL_ADDR),
                exits::vmexit::guest_state(self)
            ))));
        }
        let kind = (info >> 8) & 7;
        let error_code = if info & (1 << 11) != 0 {
            rd!(ro::IDT_VECTORING_ERR_CODE)
        } else {
            0
        };
        // Software interrupts and exceptions (INT n, INT3, INTO, INT1) need
        // their instruction length again.
        let len = if matches!(kind, 4..=6) {
            rd!(ro::VMEXIT_INSTRUCTION_LEN)
        } else {
            0
        };
        // Bit 12 is undefined here; bits 30:12 of the entry field are reserved.
        self.pending_event = Some(Event {
            info: info & 0x8000_0FFF,
            error_code,
            len,
        });
        Ok(None)
    }

    pub fn set_halted_noirq(&mut self, on: bool) {
        use super::irq::{HALT_NOIRQ, RUNNABLE};
        self.halted_noirq = on;
        self.vm.mailbox[self.index]
            .stuck
            .store(if on { HALT_NOIRQ } else { RUNNABLE }, Ordering::SeqCst);
    }

    /// Whether the 8259 can interrupt this vCPU: only the BSP, through
    /// LINT0 programmed for ExtINT (virtual-wire mode, MP spec 3.6.2.2).
    pub(super) fn pic_wired(&self) -> bool {
        use devices::lapic::DeliveryMode;
        self.index == 0
            && self.vm.lapics[0]
                .lock()
                .lint(0)
                .is_some_and(|l| l.mode == DeliveryMode::ExtInt)
    }

    /// Sets or clears window-exiting bits of the primary controls.
    pub(super) fn set_window_exits(&mut self, bits: u32, on: bool) -> Result<(), VmcsError> {
        let p = rd!(ctrl::PRIMARY_PROCBASED_EXEC_CONTROLS);
        let n = if on { p | bits } else { p & !bits };
        if n != p {
            wr!(ctrl::PRIMARY_PROCBASED_EXEC_CONTROLS, n);
        }
        Ok(())
    }

    /// Injects the highest-priority deliverable event (NMI before external
    /// interrupts), or asks for an NMI- or interrupt-window exit when the
    /// guest can't take it yet (SDM Vol. 3C 26.3, 27.6, 28.1).
    /// Returns whether more may be pending (check again before the next entry).
    pub(super) fn inject_interrupts(&mut self) -> Result<bool, VmcsError> {
        use arch::vmx::vmcs::bits::primary::{INTERRUPT_WINDOW_EXITING, NMI_WINDOW_EXITING};
        let blocking = rd!(guest::INTERRUPTIBILITY_STATE);
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
                    self.set_window_exits(NMI_WINDOW_EXITING, false)?;
                }
                return Ok(true);
            }
            if self.virtual_nmis {
                // The exit comes right after the handler's IRET.
                self.set_window_exits(NMI_WINDOW_EXITING, true)?;
            }
        } else if self.virtual_nmis {
            self.set_window_exits(NMI_WINDOW_EXITING, false)?;
        }
        let vector = self.vm.lapics[self.index].lock().pending();
        let pic = vector.is_none() && self.pic_wired() && self.vm.pic_pending();
        if vector.is_none() && !pic {
            self.set_window_exits(INTERRUPT_WINDOW_EXITING, false)?;
            // Without NMI-window exits, look again at every exit.
            return Ok(nmi && !self.virtual_nmis);
        }
        let rflags = rd!(guest::RFLAGS);
        if rflags & (1 << 9) == 0 || blocking & 3 != 0 {
            // The interrupt-window exit brings us back here.
            self.set_window_exits(INTERRUPT_WINDOW_EXITING, true)?;
            return Ok(nmi && !self.virtual_nmis);
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
        self.set_window_exits(INTERRUPT_WINDOW_EXITING, false)?;
        Ok(true)
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

    /// Queues a hardware exception for the next VM entry, with CR2 for a
    /// page fault (the apply step sets RFLAGS.RF for faults).
    pub fn queue_exception(&mut self, vector: u8, error_code: Option<u32>, cr2: Option<u64>) {
        self.pending_cr2 = cr2;
        let info = arch::vmx::exit::hw_exception(vector, error_code.is_some());
        self.pending_event = Some(Event {
            info,
            error_code: error_code.unwrap_or(0),
            len: 0,
        });
    }
}
