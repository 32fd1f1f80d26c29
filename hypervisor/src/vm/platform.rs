//! The VM's PC platform glue: port accesses with the guest's clock, and the
//! routing of device IRQ lines to the 8259 PICs and the I/O APIC (ISA IRQ 0
//! is I/O APIC pin 2, as the MADT's interrupt source override says).
use super::{Vm, VmShared};
use crate::devices::ioapic::Delivery;
use crate::devices::{pic, Action, IrqState, PortDevice};
use alloc::vec::Vec;

fn is_pic_port(port: u16) -> bool {
    matches!(
        port,
        pic::MASTER_CMD
            | pic::MASTER_DATA
            | pic::SLAVE_CMD
            | pic::SLAVE_DATA
            | pic::ELCR1
            | pic::ELCR2
    )
}

/// The I/O APIC pin an ISA IRQ arrives on.
pub fn isa_gsi(irq: u8) -> u32 {
    if irq == 0 {
        2
    } else {
        u32::from(irq)
    }
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
    /// access can have changed is followed up: IRQ lines of the device that
    /// served it (routed only when they changed), the 8259 after a PIC access,
    /// and the BSP's timer deadline when the device's next event moved.
    fn port_access<T>(
        &self,
        port: u16,
        f: impl FnOnce(&mut VmShared, u64) -> (T, Option<(usize, bool)>),
    ) -> T {
        let now = self.guest_ns();
        let (val, d, pic, timer) = {
            let mut s = self.shared.lock();
            let (v, dev) = f(&mut s, now);
            match dev {
                // A PIC access (the closure reports no device for it).
                None if is_pic_port(port) => (v, Vec::new(), true, false),
                None => (v, Vec::new(), false, false),
                Some((i, timer)) => match s.io.poll_one(i, now) {
                    None => (v, Vec::new(), false, timer),
                    Some(st) => {
                        let pic_before = s.pic.pending();
                        let d = Self::route(&mut s, st);
                        let pic = s.pic.pending() != pic_before;
                        (v, d, pic, timer)
                    }
                },
            }
        };
        if !d.is_empty() {
            self.ioapic_deliver(&d);
        }
        if pic {
            self.mailbox[0]
                .check_irq
                .store(true, core::sync::atomic::Ordering::Release);
        }
        if timer {
            self.mailbox[0]
                .timers_dirty
                .store(true, core::sync::atomic::Ordering::Release);
        }
        if (pic || timer)
            && self.mailbox[0]
                .running_on
                .load(core::sync::atomic::Ordering::Acquire)
                == 0
        {
            self.kick(0);
        }
        val
    }

    pub fn io_read(&self, port: u16, size: u8) -> u32 {
        self.port_access(port, |s, now| {
            if is_pic_port(port) {
                (s.pic.read(port, size), None)
            } else {
                s.io.read(port, size, now)
            }
        })
    }

    pub fn io_write(&self, port: u16, size: u8, value: u32) -> Action {
        self.port_access(port, |s, now| {
            if is_pic_port(port) {
                (s.pic.write(port, size, value), None)
            } else {
                s.io.write(port, size, value, now)
            }
        })
    }

    /// After a device access outside the exit path: deliver I/O APIC
    /// messages and make the BSP look at the 8259.
    fn after_io(&self, d: &[Delivery]) {
        self.ioapic_deliver(d);
        self.mailbox[0]
            .check_irq
            .store(true, core::sync::atomic::Ordering::Release);
    }

    /// A byte typed on the hypervisor console for this guest's UART.
    pub fn console_input(&self, byte: u8) {
        let now = self.guest_ns();
        let d = {
            let mut s = self.shared.lock();
            match s.io.input(byte) {
                Some(i) => match s.io.poll_one(i, now) {
                    Some(st) => Self::route(&mut s, st),
                    None => Vec::new(),
                },
                None => Vec::new(),
            }
        };
        self.after_io(&d);
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
        s.pic.apply(st, changed & !(1 << pic::CASCADE_IR));
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
        self.shared.lock().pic.pending()
    }

    pub fn pic_acknowledge(&self) -> Option<u8> {
        self.shared.lock().pic.acknowledge()
    }
}
