//! The VM's PC platform glue: port accesses with the guest's clock, and the
//! routing of device IRQ lines to the 8259 PICs and the I/O APIC (ISA IRQ 0
//! is I/O APIC pin 2, as the MADT's interrupt source override says).
use super::{Vm, VmShared};
use crate::devices::ioapic::Delivery;
use crate::devices::{pic, Action, IrqState, Served};
use alloc::vec::Vec;

/// The I/O APIC pin an ISA IRQ arrives on.
pub fn isa_gsi(irq: u8) -> u32 {
    if irq == 0 {
        2
    } else {
        u32::from(irq)
    }
}

/// What a device access changed, to act on after the VM lock is dropped.
struct Followup {
    /// I/O APIC messages for local APICs.
    deliveries: Vec<Delivery>,
    /// The 8259's output to the BSP may have changed.
    pic: bool,
    /// A device's next timer event moved.
    timer: bool,
}

impl Vm {
    /// Guest time in nanoseconds since the VM started.
    pub fn guest_ns(&self) -> u64 {
        crate::time::tsc_to_ns(self.guest_tsc())
    }

    /// Host TSC at guest time `ns`.
    fn host_tsc_at_ns(&self, ns: u64) -> u64 {
        self.host_tsc(crate::time::ns_to_tsc(ns))
    }

    /// One port access; `f` performs it on the bus. Afterwards only what the
    /// access can have changed is followed up (see [`Followup`]).
    fn port_access<T>(&self, f: impl FnOnce(&mut VmShared, u64) -> (T, Served)) -> T {
        let now = self.guest_ns();
        let (val, fu) = {
            let mut s = self.shared.lock();
            let (v, served) = f(&mut s, now);
            let fu = match served {
                Served::Device { index, timer_moved } => {
                    Self::device_followup(&mut s, index, timer_moved, now)
                }
                Served::Pic | Served::Unclaimed => Followup {
                    deliveries: Vec::new(),
                    pic: served == Served::Pic,
                    timer: false,
                },
            };
            (v, fu)
        };
        self.follow_up(fu);
        val
    }

    /// After device `i` served an access: its IRQ lines are re-polled and
    /// routed only if they changed; `timer` says whether its next event moved.
    fn device_followup(s: &mut VmShared, i: usize, timer: bool, now: u64) -> Followup {
        match s.io.poll_one(i, now) {
            None => Followup {
                deliveries: Vec::new(),
                pic: false,
                timer,
            },
            Some(st) => {
                let pic_before = s.io.pic.pending();
                let deliveries = Self::route(s, st);
                Followup {
                    pic: s.io.pic.pending() != pic_before,
                    deliveries,
                    timer,
                }
            }
        }
    }

    /// Acts on a [`Followup`] once the VM lock is dropped: I/O APIC messages
    /// are delivered, and the BSP re-checks the 8259 or its timer deadline.
    fn follow_up(&self, fu: Followup) {
        use core::sync::atomic::Ordering;
        if !fu.deliveries.is_empty() {
            self.ioapic_deliver(&fu.deliveries);
        }
        if fu.pic {
            self.mailbox[0].check_irq.store(true, Ordering::Release);
        }
        if fu.timer {
            self.mailbox[0].timers_dirty.store(true, Ordering::Release);
        }
        if (fu.pic || fu.timer) && self.mailbox[0].running_on.load(Ordering::Acquire) == 0 {
            self.kick(0);
        }
    }

    pub fn io_read(&self, port: u16, size: u8) -> u32 {
        self.port_access(|s, now| s.io.read(port, size, now))
    }

    pub fn io_write(&self, port: u16, size: u8, value: u32) -> Action {
        self.port_access(|s, now| s.io.write(port, size, value, now))
    }

    /// A byte typed on the hypervisor console for this guest's UART.
    pub fn console_input(&self, byte: u8) {
        let now = self.guest_ns();
        let fu = {
            let mut s = self.shared.lock();
            match s.io.input(byte) {
                Some(i) => Self::device_followup(&mut s, i, false, now),
                None => Followup {
                    deliveries: Vec::new(),
                    pic: false,
                    timer: false,
                },
            }
        };
        self.follow_up(fu);
        self.kick(0);
    }

    /// Brings device time up to date and routes IRQs; returns the host TSC of
    /// the next device event.
    pub fn poll_devices(&self) -> Option<u64> {
        let now = self.guest_ns();
        let (next, d) = {
            let mut s = self.shared.lock();
            let st = s.io.poll(now);
            let d = Self::route(&mut s, st);
            (s.io.next_event(), d)
        };
        self.ioapic_deliver(&d);
        next.map(|ns| self.host_tsc_at_ns(ns))
    }

    /// Feeds changed lines (and pulses) to the 8259s and the I/O APIC.
    fn route(s: &mut VmShared, st: IrqState) -> Vec<Delivery> {
        let changed = (st.level ^ s.lines) | st.pulse;
        s.lines = st.level;
        let mut out = Vec::new();
        if changed == 0 {
            return out;
        }
        s.io.pic.apply(st, changed & !(1 << pic::CASCADE_IR));
        for irq in 0..16u8 {
            let m = 1u16 << irq;
            if irq == pic::CASCADE_IR || changed & m == 0 {
                continue;
            }
            let gsi = isa_gsi(irq);
            if st.pulse & m != 0 {
                out.extend(s.ioapic.set_irq(gsi, true));
            }
            out.extend(s.ioapic.set_irq(gsi, st.level & m != 0));
        }
        out
    }

    /// Host TSC of the next device event, without advancing anything.
    pub fn next_device_event(&self) -> Option<u64> {
        let next = self.shared.lock().io.next_event();
        next.map(|ns| self.host_tsc_at_ns(ns))
    }

    /// The 8259's vector for vCPU 0 (LINT0 in ExtINT mode), if one is pending.
    pub fn pic_pending(&self) -> bool {
        self.shared.lock().io.pic.pending()
    }

    pub fn pic_acknowledge(&self) -> Option<u8> {
        self.shared.lock().io.pic.acknowledge()
    }
}
