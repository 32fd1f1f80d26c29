//! Device models and the bus that reaches them. Each model owns some I/O
//! ports or MMIO ranges of one guest and talks to the core only through the
//! [`PortDevice`] / [`MmioDevice`] traits: a request in, one [`Effects`]
//! value out that says everything the access changed. No model touches the
//! VMCS, the EPT or another guest's memory: this crate has no `unsafe` and
//! reaches the core only through its parameters (the time, the bytes
//! written) and what it returns.
//!
//! # Time
//! Every model counts time in one unit: **guest TSC ticks** (the value the
//! guest reads with RDTSC, which starts at 0 at power-on). Models that run at
//! another rate (the PIT's 1.193182 MHz, the ACPI PM timer's 3.579545 MHz,
//! the RTC's 32.768 kHz divider chain) convert with the [`Clock`] given to
//! them at construction, which holds the TSC frequency. Deadlines in
//! [`Effects::deadline`] and [`PortDevice::deadline`] are guest TSC values
//! too; the core turns them into host TSC values by the VM's TSC offset and
//! does no other conversion.
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

pub mod bus;
mod clocked;
pub mod debug_exit;
pub mod effects;
pub mod fw_cfg;
pub mod i8042;
pub mod ioapic;
pub mod lapic;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod pm;
pub mod post;
pub mod rtc;
pub mod snapshot;
pub mod state;
pub mod switch;
pub mod uart;
pub mod virtio;

pub use bus::{AddressMap, Bus, BusError, MmioTarget, Target};
pub use effects::{Effects, Lines, Message, Request};

/// The TSC frequency: the one conversion between guest TSC ticks (the time
/// unit of every model) and the rates devices count at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Clock {
    /// TSC ticks per second (at least 1).
    hz: u64,
}

impl Clock {
    pub const fn new(tsc_hz: u64) -> Self {
        Clock {
            hz: if tsc_hz == 0 { 1 } else { tsc_hz },
        }
    }

    pub fn hz(&self) -> u64 {
        self.hz
    }

    /// How many periods of a `rate_hz` clock have started by TSC `tsc`
    /// (rounded down).
    pub fn count(&self, tsc: u64, rate_hz: u64) -> u64 {
        let n = u128::from(tsc)
            .saturating_mul(u128::from(rate_hz))
            .checked_div(u128::from(self.hz))
            .unwrap_or(0);
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// The first TSC at which [`Clock::count`] reaches `n` (rounded up).
    pub fn at(&self, n: u64, rate_hz: u64) -> u64 {
        let num = u128::from(n).saturating_mul(u128::from(self.hz));
        let r = u128::from(rate_hz.max(1));
        let q = num.checked_div(r).unwrap_or(0);
        let t = if num.checked_rem(r) == Some(0) {
            q
        } else {
            q.saturating_add(1)
        };
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// TSC ticks in `ns` nanoseconds (rounded up, so that a wait is never short).
    pub fn from_ns(&self, ns: u64) -> u64 {
        self.at(ns, 1_000_000_000)
    }
}

/// A 1 GHz TSC for tests: one tick is one nanosecond.
#[cfg(test)]
pub(crate) const NS_CLOCK: Clock = Clock::new(1_000_000_000);

/// Interrupt request lines a device drives (ISA IRQ numbers 0..15), as a
/// model reports them from [`PortDevice::advance`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqState {
    /// Lines currently asserted (level).
    pub level: u16,
    /// Lines that had a rising edge since the last report.
    pub pulse: u16,
}

impl IrqState {
    /// As the [`Lines`] of a device that owns the lines in `mask`.
    pub fn lines(self, mask: u16) -> Lines {
        Lines {
            mask,
            level: self.level & mask,
            pulse: self.pulse & mask,
        }
    }
}

/// A device model reached through I/O ports. `now` is guest TSC ticks
/// (monotonic). Every access returns one [`Effects`]: the value read, the
/// model's IRQ lines where the access can have changed them, its next
/// deadline where it moved, and what the guest asked the platform to do.
/// Every model's state can be saved, restored and reset as bytes
/// ([`state::Stateful`]).
pub trait PortDevice: Send + state::Stateful {
    fn name(&self) -> &'static str;
    /// Port ranges as (first port, count).
    fn ports(&self) -> &'static [(u16, u16)];
    /// The ISA IRQ lines this model drives (bit n = IRQ n); no two models
    /// on one bus drive the same line.
    fn irq_lines(&self) -> u16 {
        0
    }
    fn io_read(&mut self, port: u16, size: u8, now: u64) -> Effects;
    /// `value` is already masked to `size` bytes.
    fn io_write(&mut self, port: u16, size: u8, value: u32, now: u64) -> Effects;
    /// [`PortDevice::io_write`] for a model that copies to or from guest
    /// RAM on a write (fw_cfg's DMA); the others ignore `mem`.
    fn io_write_mem(
        &mut self,
        port: u16,
        size: u8,
        value: u32,
        now: u64,
        _mem: &dyn virtio::GuestMem,
    ) -> Effects {
        self.io_write(port, size, value, now)
    }
    /// Brings time-driven state up to `now`: the lines and the deadline as
    /// they are then (both always reported).
    fn advance(&mut self, _now: u64) -> Effects {
        Effects::none()
    }
    /// The next time (guest TSC) at which [`PortDevice::advance`] would
    /// report something new, if any.
    fn deadline(&self) -> Option<u64> {
        None
    }
    /// Pushes out buffered output (a partial console line) when the guest ends.
    fn flush(&mut self) {}
    /// Takes a byte typed for this guest (the console device); `None` if the
    /// device doesn't take input.
    fn input(&mut self, _byte: u8, _now: u64) -> Option<Effects> {
        None
    }
    /// Takes console output written by hypercall (the console device); false
    /// if the device isn't the console.
    fn console_write(&mut self, _bytes: &[u8]) -> bool {
        false
    }
    /// The PCI host: the (bus, device, function, register offset) a
    /// `size`-byte access of CONFIG_DATA port `port` reaches now, if any.
    fn config_target(&self, _port: u16, _size: u8) -> Option<(u8, u8, u8, usize)> {
        None
    }
}

/// A device model reached through guest-physical addresses. `offset` is
/// from the start of the range it was registered at; `size` is 1, 2, 4 or 8.
pub trait MmioDevice {
    fn mmio_read(&mut self, offset: u64, size: u8, now: u64) -> Effects;
    fn mmio_write(&mut self, offset: u64, size: u8, value: u64, now: u64) -> Effects;
}

/// One read-modify-write of an MMIO register under the caller's lock (the
/// atomic form of XCHG, LOCKed and ALU instructions): `f` gets a reader
/// (call it at most once) and returns what to write back, if anything. The
/// read's and the write's effects come back merged, with the value read.
pub fn mmio_rmw(
    dev: &mut dyn MmioDevice,
    offset: u64,
    size: u8,
    now: u64,
    f: impl FnOnce(&mut dyn FnMut() -> u64) -> Option<u64>,
) -> Effects {
    let mut read = Effects::none();
    let w = f(&mut || {
        read = dev.mmio_read(offset, size, now);
        read.value
    });
    if let Some(v) = w {
        read.merge(dev.mmio_write(offset, size, v, now));
    }
    read
}

pub fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

/// All-ones of `size` bytes (1..8), 64 bits wide.
pub fn all_ones64(size: u8) -> u64 {
    match size {
        0 => 0,
        1..=7 => u64::MAX >> (u32::from(8u8.saturating_sub(size)).saturating_mul(8)),
        _ => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_conversions_round_the_safe_way() {
        // A 2.5 GHz TSC and the PIT's 1.193182 MHz input clock.
        let c = Clock::new(2_500_000_000);
        let pit = 1_193_182;
        assert_eq!(c.count(2_500_000_000, pit), pit, "one second");
        for n in [0, 1, 2, 1193, 65_536, 1_000_000_007] {
            let t = c.at(n, pit);
            assert_eq!(c.count(t, pit), n, "the first tick at which {n} is reached");
            assert!(t == 0 || c.count(t - 1, pit) < n);
        }
        assert_eq!(c.from_ns(1_000), 2_500);
        assert_eq!(c.from_ns(1), 3, "rounded up");
        // No overflow at the ends of the range, and no division by zero.
        assert_eq!(c.at(u64::MAX, 1), u64::MAX);
        assert_eq!(Clock::new(0).hz(), 1);
        assert_eq!(all_ones64(3), 0xFF_FFFF);
        assert_eq!(all_ones64(8), u64::MAX);
    }
}
