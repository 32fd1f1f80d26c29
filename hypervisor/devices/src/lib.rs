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
pub mod snapshot;
pub mod state;
pub mod switch;
pub mod uart;
pub mod virtio;

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
/// Every model's state can be saved, restored and reset as bytes
/// ([`state::Stateful`]).
pub trait PortDevice: Send + state::Stateful {
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

/// Who serves a range of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// `IoBus::devices[i]`.
    Device(usize),
    /// The 8259 pair ([`IoBus::pic`]).
    Pic,
}

/// Ports `first..=last`, served by `target`.
#[derive(Clone, Copy, Debug)]
struct PortRange {
    first: u16,
    last: u16,
    target: Target,
    name: &'static str,
}

/// A port range that can't be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// `new` wants a port that `old` already has.
    Overlap {
        port: u16,
        new: &'static str,
        old: &'static str,
    },
    /// A range of no ports, or one that runs past port 0xFFFF.
    BadRange {
        first: u16,
        count: u16,
        name: &'static str,
    },
}

impl core::fmt::Display for BusError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BusError::Overlap { port, new, old } => {
                write!(f, "port {port:#x} of {new} is already {old}'s")
            }
            BusError::BadRange { first, count, name } => write!(
                f,
                "{name}: {count} ports from {first:#x} is not a range of the I/O space"
            ),
        }
    }
}

/// Which device served an access (what the core follows up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Device `index` of the bus; `timer_moved` says whether its next timer
    /// event changed (for [`IoBus::poll_one`] and re-arming).
    Device { index: usize, timer_moved: bool },
    /// The 8259s: their output to the BSP may have changed.
    Pic,
    /// Nobody claims the port: reads give all-ones, writes are dropped.
    Unclaimed,
}

/// A guest's I/O port space: every device's ranges in one sorted table,
/// checked for overlaps when registered and searched by bisection, so an
/// unclaimed port costs the same lookup as a claimed one.
pub struct IoBus {
    devices: Vec<Box<dyn PortDevice>>,
    /// Each device's IRQ lines as last polled.
    irqs: Vec<IrqState>,
    /// Sorted by `first`, non-overlapping.
    ranges: Vec<PortRange>,
    /// The 8259 pair, on the bus like any device and kept typed because the
    /// interrupt routing drives its inputs and acknowledges its vectors.
    pub pic: pic::Pic,
    /// Accesses to ports nobody claims (reads give all-ones, writes are dropped).
    pub unclaimed_reads: u64,
    pub unclaimed_writes: u64,
}

impl Default for IoBus {
    fn default() -> Self {
        Self::new()
    }
}

impl IoBus {
    /// A bus with the 8259 pair (in its power-on state) and nothing else.
    pub fn new() -> Self {
        let mut bus = IoBus {
            devices: Vec::new(),
            irqs: Vec::new(),
            ranges: Vec::new(),
            pic: pic::Pic::new(),
            unclaimed_reads: 0,
            unclaimed_writes: 0,
        };
        let ports = bus.pic.ports();
        for &(first, count) in ports {
            // The PIC's three ranges are disjoint and the table is empty.
            let _ = bus.claim(first, count, Target::Pic, "pic");
        }
        bus
    }

    /// Adds `dev` with all of its ranges, or none of them if one overlaps a
    /// range already registered (or is malformed).
    pub fn register(&mut self, dev: Box<dyn PortDevice>) -> Result<(), BusError> {
        let index = self.devices.len();
        let saved = self.ranges.clone();
        for &(first, count) in dev.ports() {
            if let Err(e) = self.claim(first, count, Target::Device(index), dev.name()) {
                self.ranges = saved;
                return Err(e);
            }
        }
        self.devices.push(dev);
        self.irqs.push(IrqState::default());
        Ok(())
    }

    fn claim(
        &mut self,
        first: u16,
        count: u16,
        target: Target,
        name: &'static str,
    ) -> Result<(), BusError> {
        let bad = BusError::BadRange { first, count, name };
        let last = count
            .checked_sub(1)
            .and_then(|n| first.checked_add(n))
            .ok_or(bad)?;
        let at = self.ranges.partition_point(|r| r.first < first);
        let overlap = |r: &PortRange| BusError::Overlap {
            port: first.max(r.first),
            new: name,
            old: r.name,
        };
        // Only the neighbours can overlap: the table is sorted and disjoint.
        if let Some(prev) = at.checked_sub(1).and_then(|i| self.ranges.get(i)) {
            if prev.last >= first {
                return Err(overlap(prev));
            }
        }
        if let Some(next) = self.ranges.get(at) {
            if next.first <= last {
                return Err(overlap(next));
            }
        }
        self.ranges.insert(
            at,
            PortRange {
                first,
                last,
                target,
                name,
            },
        );
        Ok(())
    }

    /// The range holding `port`: the last one starting at or below it.
    fn lookup(&self, port: u16) -> Option<Target> {
        let i = self.ranges.partition_point(|r| r.first <= port);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (port <= r.last).then_some(r.target)
    }

    /// Reads a port; says who served it.
    pub fn read(&mut self, port: u16, size: u8, now_ns: u64) -> (u32, Served) {
        match self.lookup(port) {
            Some(Target::Device(index)) => match self.devices.get_mut(index) {
                Some(d) => {
                    d.set_time(now_ns);
                    let before = d.next_event_ns();
                    let v = d.read(port, size);
                    let timer_moved = d.next_event_ns() != before;
                    (v, Served::Device { index, timer_moved })
                }
                None => self.unclaimed_read(size),
            },
            Some(Target::Pic) => (self.pic.read(port, size), Served::Pic),
            None => self.unclaimed_read(size),
        }
    }

    fn unclaimed_read(&mut self, size: u8) -> (u32, Served) {
        // A counter: wrapping after 2^64 accesses is harmless.
        self.unclaimed_reads = self.unclaimed_reads.wrapping_add(1);
        (all_ones(size), Served::Unclaimed)
    }

    /// Writes a port (the value masked to `size` bytes); says who served it.
    pub fn write(&mut self, port: u16, size: u8, value: u32, now_ns: u64) -> (Action, Served) {
        let value = value & all_ones(size);
        match self.lookup(port) {
            Some(Target::Device(index)) => match self.devices.get_mut(index) {
                Some(d) => {
                    d.set_time(now_ns);
                    let before = d.next_event_ns();
                    let a = d.write(port, size, value);
                    let timer_moved = d.next_event_ns() != before;
                    (a, Served::Device { index, timer_moved })
                }
                None => self.unclaimed_write(),
            },
            Some(Target::Pic) => (self.pic.write(port, size, value), Served::Pic),
            None => self.unclaimed_write(),
        }
    }

    fn unclaimed_write(&mut self) -> (Action, Served) {
        self.unclaimed_writes = self.unclaimed_writes.wrapping_add(1);
        (Action::None, Served::Unclaimed)
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
        assert_eq!(
            bus.write(0x1234, 1, 0, 0).1,
            Served::Unclaimed,
            "no device served it"
        );
        bus.register(Box::new(debug_exit::DebugExit)).unwrap();
        assert_eq!(bus.write(0xF4, 1, 3, 0).0, Action::Exit(3));
    }

    fn no_line(_: usize, _: &str) {}
    fn no_raw(_: usize, _: &[u8]) {}
    fn yes(_: usize) -> bool {
        true
    }
    fn no(_: usize) -> bool {
        false
    }

    /// The PC platform of every VM, as the core registers it.
    fn platform() -> IoBus {
        let mut bus = IoBus::new();
        let console = uart::ConsolePort {
            source: 0,
            line: no_line,
            raw: no_raw,
            room: yes,
            focused: no,
        };
        let date = rtc::DateTime {
            year: 2026,
            month: 12,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
        };
        let devs: [Box<dyn PortDevice>; 8] = [
            Box::new(uart::Uart::new(console)),
            Box::new(debug_exit::DebugExit),
            Box::new(pit::Pit::new()),
            Box::new(rtc::Rtc::new(date, 0)),
            Box::new(pci::Pci::new()),
            Box::new(i8042::I8042::new()),
            Box::new(pm::Pm::new(0x600)),
            Box::new(post::PostCode::new()),
        ];
        for d in devs {
            let name = d.name();
            bus.register(d).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        bus
    }

    #[test]
    fn the_platform_devices_do_not_overlap_and_every_port_finds_its_owner() {
        let bus = platform();
        for w in bus.ranges.windows(2) {
            assert!(w[0].last < w[1].first, "{:?} {:?}", w[0], w[1]);
        }
        // Every claimed port (each end of each range and one inside) goes
        // to the range's owner; the ports around them to nobody else.
        for r in &bus.ranges {
            for p in [r.first, r.last, r.first + (r.last - r.first) / 2] {
                assert_eq!(bus.lookup(p), Some(r.target), "port {p:#x}");
            }
        }
        for (port, owner) in [
            (0x20, Some("pic")),
            (0xA1, Some("pic")),
            (0x4D1, Some("pic")),
            (0x40, Some("pit")),
            (0x43, Some("pit")),
            (0x61, Some("pit")),
            (0x70, Some("rtc")),
            (0x3F8, Some("uart")),
            (0x3FF, Some("uart")),
            (0xCF9, Some("pci")),
            (0xCFF, Some("pci")),
            (0xF4, Some("debug-exit")),
            (0x1F, None),
            (0x22, None),
            (0x44, None),
            (0x3F7, None),
            (0x400, None),
            (0xD00, None),
            (0xFFFF, None),
            (0, None),
        ] {
            let got = bus.lookup(port).map(|t| match t {
                Target::Pic => "pic",
                Target::Device(i) => bus.devices[i].name(),
            });
            assert_eq!(got, owner, "port {port:#x}");
        }
    }

    struct Fake(&'static [(u16, u16)], &'static str);

    /// The fakes keep no state.
    impl state::Stateful for Fake {
        fn kind(&self) -> state::Kind {
            state::Kind::PostCode
        }
        fn layout_version(&self) -> u32 {
            1
        }
        fn save_bytes(&self, _out: &mut Vec<u8>) -> Result<(), state::BytesError> {
            Ok(())
        }
        fn restore_bytes(&mut self, _v: u32, _b: &[u8]) -> Result<(), state::BytesError> {
            Ok(())
        }
        fn reset_state(&mut self) {}
    }

    impl PortDevice for Fake {
        fn name(&self) -> &'static str {
            self.1
        }
        fn ports(&self) -> &'static [(u16, u16)] {
            self.0
        }
        fn read(&mut self, port: u16, _size: u8) -> u32 {
            u32::from(port)
        }
        fn write(&mut self, _port: u16, _size: u8, _value: u32) -> Action {
            Action::None
        }
    }

    #[test]
    fn overlapping_and_malformed_ranges_are_refused_whole() {
        let mut bus = IoBus::new();
        bus.register(Box::new(Fake(&[(0x100, 0x10)], "a"))).unwrap();
        let e = bus.register(Box::new(Fake(&[(0x200, 4), (0x10F, 2)], "b")));
        assert_eq!(
            e,
            Err(BusError::Overlap {
                port: 0x10F,
                new: "b",
                old: "a"
            })
        );
        // Nothing of the refused device stays: 0x200 is still free.
        assert_eq!(bus.read(0x200, 1, 0).1, Served::Unclaimed);
        let e = bus.register(Box::new(Fake(&[(0xF8, 9)], "c")));
        assert!(matches!(e, Err(BusError::Overlap { port: 0x100, .. })));
        let e = bus.register(Box::new(Fake(&[(0x21, 1)], "d")));
        assert!(matches!(e, Err(BusError::Overlap { old: "pic", .. })));
        for bad in [&[(0xFFFF, 2)][..], &[(0x300, 0)][..]] {
            let e = bus.register(Box::new(Fake(bad, "e")));
            assert!(matches!(e, Err(BusError::BadRange { .. })), "{e:?}");
        }
        // Touching ranges are fine, up to the last port.
        bus.register(Box::new(Fake(&[(0xF8, 8), (0x110, 1)], "f")))
            .unwrap();
        bus.register(Box::new(Fake(&[(0xFFFF, 1)], "g"))).unwrap();
        assert_eq!(bus.read(0xFFFF, 1, 0).0, 0xFFFF);
        assert_eq!(bus.read(0xFF, 1, 0).0, 0xFF);
        assert_eq!(bus.read(0x110, 1, 0).0, 0x110);
        assert_eq!(bus.read(0x111, 1, 0).1, Served::Unclaimed);
    }

    #[test]
    fn the_pic_is_served_on_the_bus() {
        let mut bus = platform();
        // OCW1 to the master's data port: the mask reads back.
        assert_eq!(bus.write(0x21, 1, 0xFB, 0).1, Served::Pic);
        assert_eq!(bus.read(0x21, 1, 0), (0xFB, Served::Pic));
        assert_eq!(bus.pic.read(0x21, 1), 0xFB);
    }
}
