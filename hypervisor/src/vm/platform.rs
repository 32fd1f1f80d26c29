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
        let khz = u128::from(crate::time::tsc_khz());
        (u128::from(self.guest_tsc()) * 1_000_000 / khz) as u64
    }

    /// Host TSC at guest time `ns`.
    fn host_tsc_at_ns(&self, ns: u64) -> u64 {
        let ticks = (u128::from(ns) * u128::from(crate::time::tsc_khz()) / 1_000_000) as u64;
        self.host_tsc(ticks)
    }

    pub fn io_read(&self, port: u16, size: u8) -> u32 {
        let now = self.guest_ns();
        let (val, d) = {
            let mut s = self.shared.lock();
            let v = if is_pic_port(port) {
                s.pic.read(port, size)
            } else {
                s.io.read(port, size, now)
            };
            (v, Self::update_irqs(&mut s, now))
        };
        self.ioapic_deliver(&d);
        val
    }

    pub fn io_write(&self, port: u16, size: u8, value: u32) -> Action {
        let now = self.guest_ns();
        let (action, d) = {
            let mut s = self.shared.lock();
            let a = if is_pic_port(port) {
                s.pic.write(port, size, value)
            } else {
                s.io.write(port, size, value, now)
            };
            (a, Self::update_irqs(&mut s, now))
        };
        self.ioapic_deliver(&d);
        action
    }

    /// Brings device time up to date and routes IRQs; returns the host TSC of
    /// the next device event.
    pub fn poll_devices(&self) -> Option<u64> {
        let now = self.guest_ns();
        let (next, d) = {
            let mut s = self.shared.lock();
            let d = Self::update_irqs(&mut s, now);
            (s.io.poll(now).1, d)
        };
        self.ioapic_deliver(&d);
        next.map(|ns| self.host_tsc_at_ns(ns))
    }

    fn update_irqs(s: &mut VmShared, now: u64) -> Vec<Delivery> {
        let (st, _) = s.io.poll(now);
        Self::route(s, st)
    }

    fn route(s: &mut VmShared, st: IrqState) -> Vec<Delivery> {
        s.pic.apply(st, !(1 << pic::CASCADE_IR));
        let mut out = Vec::new();
        for irq in 0..16u8 {
            let m = 1u16 << irq;
            if irq == pic::CASCADE_IR {
                continue;
            }
            let gsi = isa_gsi(irq);
            if st.pulse & m != 0 {
                out.extend(s.ioapic.set_irq(gsi, true));
                out.extend(s.ioapic.set_irq(gsi, st.level & m != 0));
            } else {
                out.extend(s.ioapic.set_irq(gsi, st.level & m != 0));
            }
        }
        out
    }

    /// Host TSC of the next device event, without advancing anything.
    pub fn next_device_event(&self) -> Option<u64> {
        let next = {
            let s = self.shared.lock();
            s.io.next_event()
        };
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
