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
            if is_pic_port(port) {
                let v = s.pic.read(port, size);
                (v, Vec::new())
            } else {
                let (v, dev) = s.io.read(port, size, now);
                let d = match dev {
                    Some(i) => {
                        let st = s.io.poll_one(i, now);
                        Self::route(&mut s, st)
                    }
                    None => Vec::new(),
                };
                (v, d)
            }
        };
        self.after_io(&d);
        val
    }

    pub fn io_write(&self, port: u16, size: u8, value: u32) -> Action {
        let now = self.guest_ns();
        let (action, d) = {
            let mut s = self.shared.lock();
            if is_pic_port(port) {
                (s.pic.write(port, size, value), Vec::new())
            } else {
                let (a, dev) = s.io.write(port, size, value, now);
                let d = match dev {
                    Some(i) => {
                        let st = s.io.poll_one(i, now);
                        Self::route(&mut s, st)
                    }
                    None => Vec::new(),
                };
                (a, d)
            }
        };
        self.after_io(&d);
        action
    }

    /// After a device access: deliver I/O APIC messages, and make the BSP
    /// look at the 8259 (its state may have changed).
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
                Some(i) => {
                    let st = s.io.poll_one(i, now);
                    Self::route(&mut s, st)
                }
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
