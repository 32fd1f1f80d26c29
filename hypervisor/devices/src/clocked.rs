//! The port-access protocol of the devices whose interrupt line follows a
//! clock (the PIT and the RTC): catch up to `now`, access, report the line
//! and, when it moved, the next deadline.

use super::{Effects, IrqState};

/// A clock-driven port device with one ISA interrupt line.
pub(crate) trait Clocked {
    /// Its ISA IRQ.
    const IRQ: u8;
    fn set_time(&mut self, now: u64);
    fn read(&mut self, port: u16, size: u8) -> u32;
    fn write(&mut self, port: u16, size: u8, value: u32);
    fn poll(&mut self, now: u64) -> IrqState;
    fn next_deadline(&self) -> Option<u64>;
}

/// [`crate::PortDevice::io_read`] of a [`Clocked`] device.
pub(crate) fn io_read<D: Clocked>(d: &mut D, port: u16, size: u8, now: u64) -> Effects {
    d.set_time(now);
    let before = d.next_deadline();
    let fx = Effects::read(u64::from(d.read(port, size)));
    let lines = d.poll(now).lines(1 << D::IRQ);
    fx.with_lines(lines)
        .with_deadline(before, d.next_deadline())
}

/// [`crate::PortDevice::io_write`] of a [`Clocked`] device.
pub(crate) fn io_write<D: Clocked>(
    d: &mut D,
    port: u16,
    size: u8,
    value: u32,
    now: u64,
) -> Effects {
    d.set_time(now);
    let before = d.next_deadline();
    d.write(port, size, value);
    let lines = d.poll(now).lines(1 << D::IRQ);
    Effects::none()
        .with_lines(lines)
        .with_deadline(before, d.next_deadline())
}

/// [`crate::PortDevice::advance`] of a [`Clocked`] device.
pub(crate) fn advance<D: Clocked>(d: &mut D, now: u64) -> Effects {
    let lines = d.poll(now).lines(1 << D::IRQ);
    Effects {
        deadline: Some(d.next_deadline()),
        ..Effects::none().with_lines(lines)
    }
}
