//! Device models. Each model owns some I/O ports of one guest and talks to the
//! core only through [`PortDevice`]: a request in, a value and an [`Action`]
//! out. No model touches the VMCS, the EPT or another guest's memory: this
//! crate has no `unsafe` and reaches the core only through its parameters
//! (the time, the bytes written) and what it returns.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

extern crate alloc;

pub mod debug_exit;
pub mod i8042;
pub mod ioapic;
pub mod lapic;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod pm;
pub mod post;
pub mod rtc;
pub mod uart;

use alloc::boxed::Box;
use alloc::vec::Vec;

/// What the core should do after a device access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// The guest asked to end with this exit code.
    Exit(u32),
    /// The guest asked for a platform reset (i8042 pulse, reset register, ...).
    Reset,
    /// The guest asked to power off (ACPI S5).
    PowerOff,
}

/// Interrupt request lines a device drives (ISA IRQ numbers 0..15).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqState {
    /// Lines currently asserted (level).
    pub level: u16,
    /// Lines that had a rising edge since the last poll.
    pub pulse: u16,
}

/// A device model reached through I/O ports. Time is guest time in
/// nanoseconds since the VM started (`now_ns`), monotonic.
pub trait PortDevice: Send {
    fn name(&self) -> &'static str;
    /// Port ranges as (first port, count).
    fn ports(&self) -> &'static [(u16, u16)];
    fn read(&mut self, port: u16, size: u8) -> u32;
    fn write(&mut self, port: u16, size: u8, value: u32) -> Action;
    /// Pushes out buffered output (a partial console line) when the guest ends.
    fn flush(&mut self) {}
    /// Brings time-driven state up to `now_ns` and reports the IRQ lines.
    fn poll(&mut self, _now_ns: u64) -> IrqState {
        IrqState::default()
    }
    /// The next time (ns) at which `poll` would report something new, if any.
    fn next_event_ns(&self) -> Option<u64> {
        None
    }
    /// Brings time-driven state up to `now_ns` before an access.
    fn set_time(&mut self, _now_ns: u64) {}
    /// Takes a byte typed for this guest (the console device); false if the
    /// device doesn't take input.
    fn input(&mut self, _byte: u8) -> bool {
        false
    }
    /// Takes console output written by hypercall (the console device); false
    /// if the device isn't the console.
    fn console_write(&mut self, _bytes: &[u8]) -> bool {
        false
    }
}

/// A guest's I/O port space.
#[derive(Default)]
pub struct IoBus {
    devices: Vec<Box<dyn PortDevice>>,
    /// Each device's IRQ lines as last polled.
    irqs: Vec<IrqState>,
    /// Index of the device that served the last access (accesses cluster).
    last: usize,
    /// Accesses to ports nobody claims (reads give all-ones, writes are dropped).
    pub unclaimed_reads: u64,
    pub unclaimed_writes: u64,
}

fn claims(d: &dyn PortDevice, port: u16) -> bool {
    d.ports()
        .iter()
        .any(|&(first, n)| port.checked_sub(first).is_some_and(|off| off < n))
}

impl IoBus {
    pub fn register(&mut self, dev: Box<dyn PortDevice>) {
        self.devices.push(dev);
        self.irqs.push(IrqState::default());
    }

    fn find(&mut self, port: u16) -> Option<usize> {
        if self
            .devices
            .get(self.last)
            .is_some_and(|d| claims(d.as_ref(), port))
        {
            return Some(self.last);
        }
        let i = self.devices.iter().position(|d| claims(d.as_ref(), port))?;
        self.last = i;
        Some(i)
    }

    /// Reads a port. Also returns the serving device's index and whether the
    /// access moved its next timer event (for [`IoBus::poll_one`] and re-arming).
    pub fn read(&mut self, port: u16, size: u8, now_ns: u64) -> (u32, Option<(usize, bool)>) {
        let found = self.find(port);
        match found.and_then(|i| Some((i, self.devices.get_mut(i)?))) {
            Some((i, d)) => {
                d.set_time(now_ns);
                let before = d.next_event_ns();
                let v = d.read(port, size);
                (v, Some((i, d.next_event_ns() != before)))
            }
            None => {
                // A counter: wrapping after 2^64 accesses is harmless.
                self.unclaimed_reads = self.unclaimed_reads.wrapping_add(1);
                (all_ones(size), None)
            }
        }
    }

    pub fn write(
        &mut self,
        port: u16,
        size: u8,
        value: u32,
        now_ns: u64,
    ) -> (Action, Option<(usize, bool)>) {
        let found = self.find(port);
        match found.and_then(|i| Some((i, self.devices.get_mut(i)?))) {
            Some((i, d)) => {
                d.set_time(now_ns);
                let before = d.next_event_ns();
                let a = d.write(port, size, value & all_ones(size));
                (a, Some((i, d.next_event_ns() != before)))
            }
            None => {
                self.unclaimed_writes = self.unclaimed_writes.wrapping_add(1);
                (Action::None, None)
            }
        }
    }

    fn combined(&self, pulse: u16) -> IrqState {
        let level = self.irqs.iter().fold(0, |a, s| a | s.level);
        IrqState { level, pulse }
    }

    /// Hands a typed byte to the device that takes input; returns its index.
    pub fn input(&mut self, byte: u8) -> Option<usize> {
        self.devices.iter_mut().position(|d| d.input(byte))
    }

    /// Hands hypercall console output to the console device.
    pub fn console_write(&mut self, bytes: &[u8]) -> bool {
        self.devices.iter_mut().any(|d| d.console_write(bytes))
    }

    /// Re-polls one device (after an access to it); returns all lines, or
    /// None when that device's lines didn't change.
    pub fn poll_one(&mut self, i: usize, now_ns: u64) -> Option<IrqState> {
        let s = self.devices.get_mut(i)?.poll(now_ns);
        let last = self.irqs.get_mut(i)?;
        if s == *last && s.pulse == 0 {
            return None;
        }
        *last = s;
        Some(self.combined(s.pulse))
    }

    /// Polls every device; returns the combined IRQ lines.
    pub fn poll(&mut self, now_ns: u64) -> IrqState {
        let mut pulse = 0;
        for (d, last) in self.devices.iter_mut().zip(self.irqs.iter_mut()) {
            let s = d.poll(now_ns);
            pulse |= s.pulse;
            *last = s;
        }
        self.combined(pulse)
    }

    /// Device `i`'s next event (ns), if any.
    pub fn device_next_event(&self, i: usize) -> Option<u64> {
        self.devices.get(i)?.next_event_ns()
    }

    /// The earliest next event (ns) of any device.
    pub fn next_event(&self) -> Option<u64> {
        self.devices.iter().filter_map(|d| d.next_event_ns()).min()
    }

    pub fn flush_all(&mut self) {
        for d in &mut self.devices {
            d.flush();
        }
    }
}

pub fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unclaimed_ports_read_all_ones_and_count() {
        let mut bus = IoBus::default();
        assert_eq!(bus.read(0x1234, 1, 0).0, 0xFF);
        assert_eq!(bus.read(0x1234, 2, 0).0, 0xFFFF);
        assert_eq!(bus.read(0x1234, 4, 0).0, 0xFFFF_FFFF);
        assert_eq!(bus.write(0x1234, 1, 5, 0).0, Action::None);
        assert_eq!((bus.unclaimed_reads, bus.unclaimed_writes), (3, 1));
        assert!(
            bus.write(0x1234, 1, 0, 0).1.is_none(),
            "no device served it"
        );
        bus.register(Box::new(debug_exit::DebugExit));
        assert_eq!(bus.write(0xF4, 1, 3, 0).0, Action::Exit(3));
    }
}
