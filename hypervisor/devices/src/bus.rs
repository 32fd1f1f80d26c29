//! One bus for a guest's port I/O and MMIO. Every range (the 8259s, PIT,
//! RTC, UART, PCI, PM, ..., the I/O APIC page) is registered when the VM is
//! created, checked for overlaps, and kept in a table sorted by address that
//! is searched by bisection (O(log n)); an address nobody claims costs the
//! same lookup as a claimed one and reads all-ones.
//!
//! The local APIC page is the one range that differs per vCPU: each vCPU's
//! xAPIC page sits where its own IA32_APIC_BASE puts it (SDM Vol. 3A
//! 11.4.5), decodes for that vCPU only, and the old address no longer
//! reaches the APIC. The bus registers it as a *local window* (its power-on
//! page, overlap-checked like any range) and [`AddressMap::mmio`] takes the
//! accessing vCPU's current page: an access there goes to that vCPU's local
//! APIC, which shadows whatever else is mapped at that address for that vCPU
//! (the APIC takes accesses to its page before the system bus sees them).
//!
//! The bus also routes the ISA IRQ lines its devices report to the 8259 pair
//! and the I/O APIC (ISA IRQ 0 is I/O APIC pin 2, as the MADT's interrupt
//! source override says), so an [`Effects`] that leaves the bus carries the
//! resulting interrupt messages and 8259 output change, not raw lines.
use crate::effects::{Effects, Request};
use crate::ioapic::IoApic;
use crate::pic::{self, Pic};
use crate::virtio::attach::{NoMem, PciSlot};
use crate::virtio::pci::Effects as VEffects;
use crate::virtio::GuestMem;
use crate::{all_ones, all_ones64, mmio_rmw, IrqState, MmioDevice, PortDevice};
use alloc::boxed::Box;
use alloc::vec::Vec;

/// An address space: I/O ports (16-bit) or guest-physical addresses.
pub trait Address: Copy + Ord + core::fmt::Debug {
    /// The last address of `count` from `first`, if that is a range of the space.
    fn last_of(first: Self, count: Self) -> Option<Self>;
    fn widen(self) -> u64;
}

impl Address for u16 {
    fn last_of(first: u16, count: u16) -> Option<u16> {
        first.checked_add(count.checked_sub(1)?)
    }
    fn widen(self) -> u64 {
        u64::from(self)
    }
}

impl Address for u64 {
    fn last_of(first: u64, count: u64) -> Option<u64> {
        first.checked_add(count.checked_sub(1)?)
    }
    fn widen(self) -> u64 {
        self
    }
}

/// Which address space a [`BusError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Port,
    Mmio,
}

/// A range that can't be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// `new` wants an address (`at`) that `old` already has.
    Overlap {
        space: Space,
        at: u64,
        new: &'static str,
        old: &'static str,
    },
    /// A range of nothing, or one that runs past the end of the space.
    BadRange {
        space: Space,
        first: u64,
        count: u64,
        name: &'static str,
    },
    /// `new` drives an ISA IRQ line that `old` already drives.
    SharedIrq {
        irq: u8,
        new: &'static str,
        old: &'static str,
    },
    /// A PCI function at a device number that is taken (or a bridge's).
    PciDevice { device: u8, name: &'static str },
    /// Every IRQ line for PCI functions is taken.
    NoIrqLeft { name: &'static str },
}

impl core::fmt::Display for BusError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let what = |s: &Space| match s {
            Space::Port => "port",
            Space::Mmio => "address",
        };
        match self {
            BusError::Overlap {
                space,
                at,
                new,
                old,
            } => write!(f, "{} {at:#x} of {new} is already {old}'s", what(space)),
            BusError::BadRange {
                space: Space::Port,
                first,
                count,
                name,
            } => write!(
                f,
                "{name}: {count} ports from {first:#x} is not a range of the I/O space"
            ),
            BusError::BadRange {
                space: Space::Mmio,
                first,
                count,
                name,
            } => write!(
                f,
                "{name}: {count:#x} bytes from {first:#x} is not a range of the physical address space"
            ),
            BusError::SharedIrq { irq, new, old } => {
                write!(f, "IRQ {irq} of {new} is already {old}'s")
            }
            BusError::PciDevice { device, name } => {
                write!(f, "PCI device 00:{device:02x}.0 of {name} is taken")
            }
            BusError::NoIrqLeft { name } => write!(
                f,
                "{name}: at most {} virtio devices per guest (one IRQ line each)",
                crate::virtio::attach::IRQS.len()
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range<A, T> {
    first: A,
    last: A,
    target: T,
    name: &'static str,
}

/// Non-overlapping ranges sorted by their first address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeMap<A, T> {
    space: Space,
    ranges: Vec<Range<A, T>>,
}

impl<A: Address, T: Copy> RangeMap<A, T> {
    pub fn new(space: Space) -> Self {
        RangeMap {
            space,
            ranges: Vec::new(),
        }
    }

    /// The range `first..first+count` (or what it overlaps) is checked
    /// against the table without being added.
    fn check(&self, first: A, count: A, name: &'static str) -> Result<(usize, A), BusError> {
        let bad = BusError::BadRange {
            space: self.space,
            first: first.widen(),
            count: count.widen(),
            name,
        };
        let last = A::last_of(first, count).ok_or(bad)?;
        let at = self.ranges.partition_point(|r| r.first < first);
        let overlap = |r: &Range<A, T>| BusError::Overlap {
            space: self.space,
            at: first.max(r.first).widen(),
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
        Ok((at, last))
    }

    /// Adds `count` addresses from `first` for `target`, or says what is in the way.
    pub fn claim(
        &mut self,
        first: A,
        count: A,
        target: T,
        name: &'static str,
    ) -> Result<(), BusError> {
        let (at, last) = self.check(first, count, name)?;
        self.ranges.insert(
            at,
            Range {
                first,
                last,
                target,
                name,
            },
        );
        Ok(())
    }

    /// The owner of `a` and the first address of its range: the last range
    /// starting at or below `a`, if `a` is inside it.
    pub fn lookup(&self, a: A) -> Option<(T, A)> {
        let i = self.ranges.partition_point(|r| r.first <= a);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (a <= r.last).then_some((r.target, r.first))
    }

    /// The name of the range holding `a`.
    pub fn owner(&self, a: A) -> Option<&'static str> {
        let i = self.ranges.partition_point(|r| r.first <= a);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (a <= r.last).then_some(r.name)
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// Who serves an address on the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Port device `i` of the bus.
    Device(usize),
    /// MMIO device `i` of the bus.
    Mmio(usize),
    /// The 8259 pair.
    Pic,
    /// The I/O APIC.
    IoApic,
}

/// Who serves an MMIO access of one vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioTarget {
    /// The accessing vCPU's own local APIC (its xAPIC page).
    LocalApic,
    /// A device of the bus, with the first address of its range.
    Bus(Target, u64),
}

/// The decode of every address of a guest: fixed once the VM is created,
/// so the core can keep a copy and decode MMIO without taking the bus lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressMap {
    ports: RangeMap<u16, Target>,
    mmio: RangeMap<u64, Target>,
    /// Size of the per-vCPU local APIC window (0: none).
    local_size: u64,
    /// Its power-on page: no shared range may be registered there.
    local_home: Option<(u64, u64)>,
}

impl AddressMap {
    pub fn new() -> Self {
        AddressMap {
            ports: RangeMap::new(Space::Port),
            mmio: RangeMap::new(Space::Mmio),
            local_size: 0,
            local_home: None,
        }
    }

    /// The owner of `port`.
    pub fn port(&self, port: u16) -> Option<Target> {
        self.ports.lookup(port).map(|(t, _)| t)
    }

    /// The owner of guest-physical `gpa` for a vCPU whose local APIC page is
    /// at `local_page` (`None` when its xAPIC page doesn't decode: APIC
    /// disabled or in x2APIC mode, SDM Vol. 3A 11.12.1.2).
    pub fn mmio(&self, gpa: u64, local_page: Option<u64>) -> Option<MmioTarget> {
        if let Some(base) = local_page {
            if gpa.wrapping_sub(base) < self.local_size {
                return Some(MmioTarget::LocalApic);
            }
        }
        self.mmio
            .lookup(gpa)
            .map(|(t, first)| MmioTarget::Bus(t, first))
    }

    /// The name of the range at `port`, for diagnostics and tests.
    pub fn port_owner(&self, port: u16) -> Option<&'static str> {
        self.ports.owner(port)
    }

    pub fn mmio_owner(&self, gpa: u64) -> Option<&'static str> {
        self.mmio.owner(gpa)
    }
}

impl Default for AddressMap {
    fn default() -> Self {
        Self::new()
    }
}

/// A guest's devices behind its [`AddressMap`]. Accesses return one
/// [`Effects`] each, with IRQ lines already routed to the 8259s and the I/O
/// APIC and the platform's next deadline (the earliest of every device's)
/// reported only when it moved.
pub struct Bus {
    map: AddressMap,
    devices: Vec<Box<dyn PortDevice>>,
    mmio_devices: Vec<Box<dyn MmioDevice + Send>>,
    /// Each port device's deadline as last reported.
    deadlines: Vec<Option<u64>>,
    /// The earliest of `deadlines`.
    next: Option<u64>,
    /// The 8259 pair; the core acknowledges its vectors.
    pub pic: Pic,
    pub ioapic: IoApic,
    /// ISA IRQ lines as routed (bit n = IRQ n asserted).
    lines: u16,
    /// Lines some device drives, and by whom.
    irq_owner: [Option<&'static str>; 16],
    /// Accesses to addresses nobody claims (reads give all-ones, writes are dropped).
    pub unclaimed_reads: u64,
    pub unclaimed_writes: u64,
    /// Attached virtio PCI functions (their BARs decode where the guest
    /// puts them, below the fixed ranges: a fixed device wins a port).
    slots: Vec<PciSlot>,
    /// ISA lines the slots drive.
    slot_lines: u16,
    /// The port device that is the PCI host (CONFIG_ADDRESS/DATA).
    pci_host: Option<usize>,
    /// When left-over virtio work is served next (a budget ran out).
    slot_deadline: Option<u64>,
}

/// Guest TSC ticks between a virtio queue's budget running out and the next
/// round of it: the guest runs in between.
pub const VIRTIO_RETRY_TICKS: u64 = 20_000;

/// The I/O APIC's register window (IOREGSEL at 0x00, IOWIN at 0x10; the
/// rest of its page reads 0).
pub const IOAPIC_SIZE: u64 = 0x1000;
/// The xAPIC page.
pub const LAPIC_SIZE: u64 = 0x1000;

impl Bus {
    /// A bus with the 8259 pair (ports 0x20, 0xA0, 0x4D0), `ioapic` at
    /// [`crate::ioapic::BASE`] and the local APIC window at its power-on
    /// page, all in their power-on state, and nothing else.
    pub fn new(ioapic: IoApic) -> Self {
        let mut bus = Bus {
            map: AddressMap::new(),
            devices: Vec::new(),
            mmio_devices: Vec::new(),
            deadlines: Vec::new(),
            next: None,
            pic: Pic::new(),
            ioapic,
            lines: 0,
            irq_owner: [None; 16],
            unclaimed_reads: 0,
            unclaimed_writes: 0,
            slots: Vec::new(),
            slot_lines: 0,
            pci_host: None,
            slot_deadline: None,
        };
        for &(first, count) in bus.pic.ports() {
            // The PIC's three ranges are disjoint and the table is empty.
            let _ = bus.map.ports.claim(first, count, Target::Pic, "pic");
        }
        let _ = bus
            .map
            .mmio
            .claim(crate::ioapic::BASE, IOAPIC_SIZE, Target::IoApic, "ioapic");
        let _ = bus.claim_local_window(crate::lapic::DEFAULT_BASE, LAPIC_SIZE);
        bus
    }

    /// The per-vCPU window (the local APIC page) at its power-on address:
    /// checked against the shared ranges like any range.
    fn claim_local_window(&mut self, base: u64, size: u64) -> Result<(), BusError> {
        self.map.mmio.check(base, size, "lapic")?;
        self.map.local_size = size;
        self.map.local_home = Some((base, size));
        Ok(())
    }

    pub fn map(&self) -> &AddressMap {
        &self.map
    }

    /// Adds `dev` with all of its port ranges and IRQ lines, or none of them
    /// if one overlaps what is already registered (or is malformed).
    pub fn register(&mut self, dev: Box<dyn PortDevice>) -> Result<(), BusError> {
        let index = self.devices.len();
        let lines = dev.irq_lines();
        for irq in 0..16u8 {
            if lines & (1 << irq) != 0 {
                if let Some(old) = self.irq_owner.get(usize::from(irq)).copied().flatten() {
                    return Err(BusError::SharedIrq {
                        irq,
                        new: dev.name(),
                        old,
                    });
                }
            }
        }
        let saved = self.map.ports.clone();
        for &(first, count) in dev.ports() {
            if let Err(e) = self
                .map
                .ports
                .claim(first, count, Target::Device(index), dev.name())
            {
                self.map.ports = saved;
                return Err(e);
            }
        }
        for (irq, owner) in self.irq_owner.iter_mut().enumerate() {
            if lines & (1 << irq) != 0 {
                *owner = Some(dev.name());
            }
        }
        let cfg = crate::pci::CONFIG_DATA;
        if dev
            .ports()
            .iter()
            .any(|&(first, count)| cfg.wrapping_sub(first) < count)
        {
            self.pci_host = Some(index);
        }
        self.deadlines.push(dev.deadline());
        self.devices.push(dev);
        self.next = self.earliest();
        Ok(())
    }

    /// Adds an MMIO device at `first..first+size`.
    pub fn register_mmio(
        &mut self,
        first: u64,
        size: u64,
        name: &'static str,
        dev: Box<dyn MmioDevice + Send>,
    ) -> Result<(), BusError> {
        let index = self.mmio_devices.len();
        if let Some((base, lsize)) = self.map.local_home {
            let mut home = RangeMap::<u64, ()>::new(Space::Mmio);
            home.claim(base, lsize, (), "lapic")?;
            home.check(first, size, name)?;
        }
        self.map
            .mmio
            .claim(first, size, Target::Mmio(index), name)?;
        self.mmio_devices.push(dev);
        Ok(())
    }

    /// Reads a port.
    pub fn io_read(&mut self, port: u16, size: u8, now: u64) -> Effects {
        let target = self.map.port(port);
        if !self.slots.is_empty() {
            if let Some(fx) = self.slot_read(target, port, size, now) {
                return fx;
            }
        }
        let mut fx = match target {
            Some(Target::Device(i)) => match self.devices.get_mut(i) {
                Some(d) => {
                    let fx = d.io_read(port, size, now);
                    self.settle(i, fx)
                }
                None => return self.unclaimed_read(size),
            },
            Some(Target::Pic) => self.pic.io_read(port, size, now),
            _ => return self.unclaimed_read(size),
        };
        fx.value &= u64::from(all_ones(size));
        fx
    }

    fn unclaimed_read(&mut self, size: u8) -> Effects {
        // A counter: wrapping after 2^64 accesses is harmless.
        self.unclaimed_reads = self.unclaimed_reads.wrapping_add(1);
        Effects::read(u64::from(all_ones(size)))
    }

    /// Writes a port (the value masked to `size` bytes). Virtio devices get
    /// no guest memory this way: [`Bus::io_write_mem`] is the core's path.
    pub fn io_write(&mut self, port: u16, size: u8, value: u32, now: u64) -> Effects {
        self.io_write_mem(port, size, value, now, &NoMem)
    }

    /// Writes a port; a virtio device reaches the guest's RAM through `mem`.
    pub fn io_write_mem(
        &mut self,
        port: u16,
        size: u8,
        value: u32,
        now: u64,
        mem: &dyn GuestMem,
    ) -> Effects {
        let value = value & all_ones(size);
        let target = self.map.port(port);
        if !self.slots.is_empty() {
            if let Some(fx) = self.slot_write(target, port, size, value, now, mem) {
                return fx;
            }
        }
        match target {
            Some(Target::Device(i)) => match self.devices.get_mut(i) {
                Some(d) => {
                    let fx = d.io_write_mem(port, size, value, now, mem);
                    self.settle(i, fx)
                }
                None => self.unclaimed_write(),
            },
            Some(Target::Pic) => self.pic.io_write(port, size, value, now),
            _ => self.unclaimed_write(),
        }
    }

    fn unclaimed_write(&mut self) -> Effects {
        self.unclaimed_writes = self.unclaimed_writes.wrapping_add(1);
        Effects::none()
    }

    /// Attaches a virtio PCI function: its device number must be free and
    /// its IRQ line driven by nobody else. Returns its index in
    /// [`Bus::slots`].
    pub fn attach_virtio(&mut self, slot: PciSlot) -> Result<usize, BusError> {
        let taken = slot.device < 2
            || slot.device > 31
            || self.pci_host.is_none()
            || self.slots.iter().any(|s| s.device == slot.device);
        if taken {
            return Err(BusError::PciDevice {
                device: slot.device,
                name: slot.name,
            });
        }
        let owner = self
            .irq_owner
            .get_mut(usize::from(slot.irq))
            .filter(|_| slot.irq != pic::CASCADE_IR)
            .ok_or(BusError::SharedIrq {
                irq: slot.irq,
                new: slot.name,
                old: "the platform",
            })?;
        if let Some(old) = *owner {
            return Err(BusError::SharedIrq {
                irq: slot.irq,
                new: slot.name,
                old,
            });
        }
        *owner = Some(slot.name);
        self.slot_lines |= 1 << slot.irq;
        self.slots.push(slot);
        Ok(self.slots.len().saturating_sub(1))
    }

    /// Attaches `transport` as the next virtio function: PCI device
    /// [`FIRST_DEVICE`](crate::virtio::attach::FIRST_DEVICE) + n, the n-th
    /// line of [`IRQS`](crate::virtio::attach::IRQS), BAR0 at
    /// [`FIRST_BAR`](crate::virtio::attach::FIRST_BAR) + n * 0x100.
    pub fn attach_next(
        &mut self,
        transport: alloc::boxed::Box<dyn crate::virtio::attach::Transport>,
        name: &'static str,
    ) -> Result<usize, BusError> {
        use crate::virtio::attach::{FIRST_BAR, FIRST_DEVICE, IRQS};
        let n = self.slots.len();
        let irq = *IRQS.get(n).ok_or(BusError::NoIrqLeft { name })?;
        // n < 8: these can't overflow.
        let device = FIRST_DEVICE.saturating_add(n as u8);
        let bar = FIRST_BAR.saturating_add((n as u16).saturating_mul(0x100));
        self.attach_virtio(PciSlot::new(transport, name, device, irq, bar))
    }

    /// Runs `f` on slot `i`'s transport outside a guest access (a frame
    /// arrived for a NIC, a backend finished): what it changed is recorded
    /// on the slot and routed like an access (INTx lines, the retry of
    /// left-over work). `None` if there is no slot `i`.
    pub fn slot_kick(
        &mut self,
        i: usize,
        now: u64,
        mem: &dyn GuestMem,
        f: impl FnOnce(&mut dyn crate::virtio::attach::Transport, &dyn GuestMem) -> VEffects,
    ) -> Option<Effects> {
        let e = self.slots.get_mut(i)?.kick(mem, f);
        Some(self.settle_slots(e, 0, now))
    }

    /// The attached virtio functions.
    pub fn slots(&self) -> &[PciSlot] {
        &self.slots
    }

    pub fn slots_mut(&mut self) -> &mut [PciSlot] {
        &mut self.slots
    }

    /// The slot whose configuration space CONFIG_DATA + `port & 3` reaches
    /// now, and the offset there; `Err` for another function of its device
    /// (absent: all-ones).
    fn slot_config(
        &self,
        target: Option<Target>,
        port: u16,
        size: u8,
    ) -> Option<Result<(usize, usize), ()>> {
        let Some(Target::Device(i)) = target else {
            return None;
        };
        if Some(i) != self.pci_host || port < crate::pci::CONFIG_DATA {
            return None;
        }
        let (bus, device, function, off) = self.devices.get(i)?.config_target(port, size)?;
        let slot = self
            .slots
            .iter()
            .position(|s| bus == 0 && s.device == device)?;
        Some(if function == 0 {
            Ok((slot, off))
        } else {
            Err(())
        })
    }

    /// The slot whose BAR0 decodes `port` for a `size`-byte access, where
    /// no fixed device claims it.
    fn slot_bar(&self, target: Option<Target>, port: u16, size: u8) -> Option<(usize, u16)> {
        if target.is_some() {
            return None;
        }
        self.slots
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.bar_offset(port, size).map(|off| (i, off)))
    }

    fn slot_read(
        &mut self,
        target: Option<Target>,
        port: u16,
        size: u8,
        now: u64,
    ) -> Option<Effects> {
        let (value, e) = if let Some(c) = self.slot_config(target, port, size) {
            match c {
                Ok((i, off)) => self.slots.get_mut(i)?.config_read(off, size),
                Err(()) => return Some(Effects::read(u64::from(all_ones(size)))),
            }
        } else {
            let (i, off) = self.slot_bar(target, port, size)?;
            self.slots.get_mut(i)?.bar_read(off, size)
        };
        Some(self.settle_slots(e, value, now))
    }

    fn slot_write(
        &mut self,
        target: Option<Target>,
        port: u16,
        size: u8,
        value: u32,
        now: u64,
        mem: &dyn GuestMem,
    ) -> Option<Effects> {
        let e = if let Some(c) = self.slot_config(target, port, size) {
            match c {
                Ok((i, off)) => self.slots.get_mut(i)?.config_write(off, size, value, mem),
                Err(()) => return Some(Effects::none()),
            }
        } else {
            let (i, off) = self.slot_bar(target, port, size)?;
            self.slots.get_mut(i)?.bar_write(off, size, value, mem)
        };
        Some(self.settle_slots(e, 0, now))
    }

    /// After a slot access: the slots' lines routed (the INTx levels with
    /// each command register's Interrupt Disable bit applied) and the retry
    /// of left-over work scheduled.
    fn settle_slots(&mut self, _e: VEffects, value: u32, now: u64) -> Effects {
        let mut fx = Effects::read(u64::from(value));
        fx.lines = self.slot_levels();
        self.route(&mut fx);
        let want = self.slots.iter().any(|s| s.work_left);
        let d = match (want, self.slot_deadline) {
            (false, _) => None,
            (true, Some(d)) => Some(d),
            (true, None) => Some(now.saturating_add(VIRTIO_RETRY_TICKS)),
        };
        if d != self.slot_deadline {
            self.slot_deadline = d;
            let next = self.earliest();
            if next != self.next {
                fx.deadline = Some(next);
                self.next = next;
            }
        }
        fx
    }

    fn slot_levels(&self) -> crate::effects::Lines {
        let level = self.slots.iter().filter(|s| s.intx()).fold(0u16, |l, s| {
            l | 1u16.checked_shl(u32::from(s.irq)).unwrap_or(0)
        });
        crate::effects::Lines {
            mask: self.slot_lines,
            level,
            pulse: 0,
        }
    }

    /// [`Bus::advance`], and the virtio functions' left-over work and
    /// asynchronous completions served with `mem`.
    pub fn advance_mem(&mut self, now: u64, mem: &dyn GuestMem) -> Effects {
        if self.slots.is_empty() {
            return self.advance(now);
        }
        for s in &mut self.slots {
            let _ = s.poll(mem);
        }
        self.slot_deadline = self
            .slots
            .iter()
            .any(|s| s.work_left)
            .then(|| now.saturating_add(VIRTIO_RETRY_TICKS));
        let mut fx = Effects::none();
        fx.lines = self.slot_levels();
        self.route(&mut fx);
        fx.merge(self.advance(now));
        fx
    }

    /// The earliest deadline of the port devices and the virtio retry.
    fn earliest(&self) -> Option<u64> {
        self.deadlines
            .iter()
            .flatten()
            .copied()
            .chain(self.slot_deadline)
            .min()
    }

    /// One MMIO read-modify-write (see [`mmio_rmw`]) at `gpa` on bus device
    /// `target` whose range starts at `first`, as [`AddressMap::mmio`] found.
    pub fn mmio_rmw(
        &mut self,
        target: Target,
        first: u64,
        gpa: u64,
        size: u8,
        now: u64,
        f: impl FnOnce(&mut dyn FnMut() -> u64) -> Option<u64>,
    ) -> Effects {
        let off = gpa.wrapping_sub(first);
        let dev: &mut dyn MmioDevice = match target {
            Target::IoApic => &mut self.ioapic,
            Target::Mmio(i) => match self.mmio_devices.get_mut(i) {
                Some(d) => &mut **d,
                None => return self.mmio_unclaimed(size, f),
            },
            Target::Device(_) | Target::Pic => return self.mmio_unclaimed(size, f),
        };
        mmio_rmw(dev, off, size, now, f)
    }

    fn mmio_unclaimed(
        &mut self,
        size: u8,
        f: impl FnOnce(&mut dyn FnMut() -> u64) -> Option<u64>,
    ) -> Effects {
        let _ = f(&mut || all_ones64(size));
        Effects::none()
    }

    /// A local APIC's EOI for a level-triggered vector, broadcast to the I/O
    /// APIC: the messages of entries whose line is still asserted.
    pub fn eoi(&mut self, vector: u8) -> Effects {
        Effects {
            messages: self.ioapic.eoi(vector),
            ..Effects::none()
        }
    }

    /// Brings every device's time to `now` and routes what changed; the
    /// deadline (the earliest of all devices') is always reported.
    pub fn advance(&mut self, now: u64) -> Effects {
        let mut all = Effects::none();
        let mut level = 0;
        let mut mask = 0;
        let mut pulse = 0;
        for (d, dl) in self.devices.iter_mut().zip(self.deadlines.iter_mut()) {
            let fx = d.advance(now);
            mask |= fx.lines.mask;
            level |= fx.lines.level & fx.lines.mask;
            pulse |= fx.lines.pulse;
            if let Some(n) = fx.deadline {
                *dl = n;
            }
            if all.request == Request::None {
                all.request = fx.request;
            }
            all.messages.extend(fx.messages);
        }
        all.lines = crate::effects::Lines { mask, level, pulse };
        self.route(&mut all);
        self.next = self.earliest();
        all.deadline = Some(self.next);
        all
    }

    /// The earliest deadline of any device (guest TSC), if any.
    pub fn next_deadline(&self) -> Option<u64> {
        self.next
    }

    /// Hands a typed byte to the device that takes input.
    pub fn input(&mut self, byte: u8, now: u64) -> Option<Effects> {
        let (i, fx) = self
            .devices
            .iter_mut()
            .enumerate()
            .find_map(|(i, d)| d.input(byte, now).map(|fx| (i, fx)))?;
        Some(self.settle(i, fx))
    }

    /// Hands hypercall console output to the console device.
    pub fn console_write(&mut self, bytes: &[u8]) -> bool {
        self.devices.iter_mut().any(|d| d.console_write(bytes))
    }

    pub fn flush_all(&mut self) {
        for d in &mut self.devices {
            d.flush();
        }
    }

    /// After port device `i` served an access: its lines are routed and its
    /// deadline folded into the platform's.
    fn settle(&mut self, i: usize, mut fx: Effects) -> Effects {
        self.route(&mut fx);
        if let Some(d) = fx.deadline {
            if let Some(slot) = self.deadlines.get_mut(i) {
                *slot = d;
            }
            let next = self.earliest();
            fx.deadline = (next != self.next).then_some(next);
            self.next = next;
        }
        fx
    }

    /// Feeds the lines `fx` reports to the 8259s and the I/O APIC; adds the
    /// I/O APIC's messages and the 8259 output change to `fx`.
    /// The lines are consumed: what leaves the bus are their results.
    fn route(&mut self, fx: &mut Effects) {
        let l = core::mem::take(&mut fx.lines);
        if l.is_empty() {
            return;
        }
        let changed = ((l.level ^ self.lines) & l.mask) | l.pulse;
        self.lines = (self.lines & !l.mask) | (l.level & l.mask);
        if changed == 0 {
            return;
        }
        let before = self.pic.pending();
        let st = IrqState {
            level: self.lines,
            pulse: l.pulse,
        };
        self.pic.apply(st, changed & !(1 << pic::CASCADE_IR));
        for irq in 0..16u8 {
            let m = 1u16 << irq;
            if irq == pic::CASCADE_IR || changed & m == 0 {
                continue;
            }
            let gsi = isa_gsi(irq);
            if l.pulse & m != 0 {
                fx.messages.extend(self.ioapic.set_irq(gsi, true));
            }
            fx.messages
                .extend(self.ioapic.set_irq(gsi, self.lines & m != 0));
        }
        let after = self.pic.pending();
        if after != before {
            fx.intr = Some(after);
        }
    }
}

impl Bus {
    /// The states of the bus's devices: the 8259 pair first, then the port
    /// devices in registration order, then the I/O APIC.
    pub fn states(&self) -> Vec<&dyn crate::state::Stateful> {
        let mut out: Vec<&dyn crate::state::Stateful> = Vec::new();
        out.push(&self.pic);
        out.extend(
            self.devices
                .iter()
                .map(|d| &**d as &dyn crate::state::Stateful),
        );
        out.push(&self.ioapic);
        out
    }

    /// [`Bus::states`], to restore or reset.
    pub fn states_mut(&mut self) -> Vec<&mut dyn crate::state::Stateful> {
        let mut out: Vec<&mut dyn crate::state::Stateful> = Vec::new();
        out.push(&mut self.pic);
        out.extend(
            self.devices
                .iter_mut()
                .map(|d| &mut **d as &mut dyn crate::state::Stateful),
        );
        out.push(&mut self.ioapic);
        out
    }

    /// Every device back to its power-on state, as after a power cycle: no
    /// IRQ line is asserted any more and no deadline is pending.
    pub fn reset(&mut self) {
        for d in self.states_mut() {
            d.reset_state();
        }
        crate::snapshot::reset_ioapic(&mut self.ioapic);
        for s in &mut self.slots {
            s.power_on();
        }
        self.forget_lines();
    }

    /// The ISA IRQ lines as routed (bit n = IRQ n asserted).
    pub fn lines(&self) -> u16 {
        self.lines
    }

    /// The lines and deadlines as last reported are no longer what the
    /// devices drive (after a reset or a restore).
    pub fn forget_lines(&mut self) {
        self.lines = 0;
        for d in &mut self.deadlines {
            *d = None;
        }
        self.slot_deadline = None;
        self.next = None;
    }
}

/// The I/O APIC pin an ISA IRQ arrives on.
pub fn isa_gsi(irq: u8) -> u32 {
    if irq == 0 {
        2
    } else {
        u32::from(irq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::{Lines, Message};
    use crate::lapic::{DeliveryMode, DEFAULT_BASE};
    use crate::{debug_exit, i8042, ioapic, pci, pit, pm, post, rtc, uart, NS_CLOCK};

    fn no_line(_: usize, _: &str) {}
    fn no_raw(_: usize, _: &[u8]) {}
    fn yes(_: usize) -> bool {
        true
    }
    fn no(_: usize) -> bool {
        false
    }

    /// The PC platform of every VM, as the core registers it.
    fn platform() -> Bus {
        let mut bus = Bus::new(IoApic::new(1));
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
            Box::new(uart::Uart::new(console, NS_CLOCK)),
            Box::new(debug_exit::DebugExit),
            Box::new(pit::Pit::new(NS_CLOCK)),
            Box::new(rtc::Rtc::new(date, 0, NS_CLOCK)),
            Box::new(pci::Pci::new()),
            Box::new(i8042::I8042::new()),
            Box::new(pm::Pm::new(0x600, NS_CLOCK)),
            Box::new(post::PostCode::new()),
        ];
        for d in devs {
            let name = d.name();
            bus.register(d).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        bus
    }

    #[test]
    fn unclaimed_ports_read_all_ones_and_count() {
        let mut bus = Bus::new(IoApic::new(0));
        assert_eq!(bus.io_read(0x1234, 1, 0), Effects::read(0xFF));
        assert_eq!(bus.io_read(0x1234, 2, 0).value, 0xFFFF);
        assert_eq!(bus.io_read(0x1234, 4, 0).value, 0xFFFF_FFFF);
        assert_eq!(bus.io_write(0x1234, 1, 5, 0), Effects::none());
        assert_eq!((bus.unclaimed_reads, bus.unclaimed_writes), (3, 1));
        bus.register(Box::new(debug_exit::DebugExit)).unwrap();
        assert_eq!(bus.io_write(0xF4, 1, 3, 0).request, Request::Exit(3));
        // Claimed ports don't count as unclaimed.
        assert_eq!((bus.unclaimed_reads, bus.unclaimed_writes), (3, 1));
    }

    #[test]
    fn the_platform_devices_do_not_overlap_and_every_port_finds_its_owner() {
        let bus = platform();
        for w in bus.map.ports.ranges.windows(2) {
            assert!(w[0].last < w[1].first, "{:?} {:?}", w[0], w[1]);
        }
        // Every claimed port (each end of each range and one inside) goes
        // to the range's owner; the ports around them to nobody else.
        for r in &bus.map.ports.ranges {
            for p in [r.first, r.last, r.first + (r.last - r.first) / 2] {
                assert_eq!(bus.map.port(p), Some(r.target), "port {p:#x}");
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
            assert_eq!(bus.map.port_owner(port), owner, "port {port:#x}");
        }
    }

    struct Fake(&'static [(u16, u16)], &'static str, u16);

    /// The fakes keep no state.
    impl crate::state::Stateful for Fake {
        fn kind(&self) -> crate::state::Kind {
            crate::state::Kind::PostCode
        }
        fn layout_version(&self) -> u32 {
            1
        }
        fn save_bytes(&self, _out: &mut Vec<u8>) -> Result<(), crate::state::BytesError> {
            Ok(())
        }
        fn restore_bytes(&mut self, _v: u32, _b: &[u8]) -> Result<(), crate::state::BytesError> {
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
        fn irq_lines(&self) -> u16 {
            self.2
        }
        fn io_read(&mut self, port: u16, _size: u8, _now: u64) -> Effects {
            Effects::read(u64::from(port))
        }
        fn io_write(&mut self, _port: u16, _size: u8, value: u32, _now: u64) -> Effects {
            // Drives its lines to the value written; asks for a reset on 0xFF.
            let mut fx = Effects::none().with_lines(Lines {
                mask: self.2,
                level: value as u16 & self.2,
                pulse: 0,
            });
            if value == 0xFF {
                fx.request = Request::Reset;
            }
            fx
        }
    }

    #[test]
    fn overlapping_and_malformed_ranges_are_refused_whole() {
        let mut bus = Bus::new(IoApic::new(0));
        bus.register(Box::new(Fake(&[(0x100, 0x10)], "a", 0)))
            .unwrap();
        let e = bus.register(Box::new(Fake(&[(0x200, 4), (0x10F, 2)], "b", 0)));
        assert_eq!(
            e,
            Err(BusError::Overlap {
                space: Space::Port,
                at: 0x10F,
                new: "b",
                old: "a"
            })
        );
        // Nothing of the refused device stays: 0x200 is still free.
        assert_eq!(bus.map.port(0x200), None);
        assert_eq!(bus.io_read(0x200, 1, 0).value, 0xFF);
        let e = bus.register(Box::new(Fake(&[(0xF8, 9)], "c", 0)));
        assert!(matches!(e, Err(BusError::Overlap { at: 0x100, .. })));
        let e = bus.register(Box::new(Fake(&[(0x21, 1)], "d", 0)));
        assert!(matches!(e, Err(BusError::Overlap { old: "pic", .. })));
        for bad in [&[(0xFFFF, 2)][..], &[(0x300, 0)][..]] {
            let e = bus.register(Box::new(Fake(bad, "e", 0)));
            assert!(matches!(e, Err(BusError::BadRange { .. })), "{e:?}");
        }
        // Touching ranges are fine, up to the last port.
        bus.register(Box::new(Fake(&[(0xF8, 8), (0x110, 1)], "f", 0)))
            .unwrap();
        bus.register(Box::new(Fake(&[(0xFFFF, 1)], "g", 0)))
            .unwrap();
        assert_eq!(bus.io_read(0xFFFF, 1, 0).value, 0xFFFF & 0xFF);
        assert_eq!(bus.io_read(0xFF, 1, 0).value, 0xFF);
        assert_eq!(bus.io_read(0x110, 2, 0).value, 0x110);
        assert_eq!(bus.map.port(0x111), None);
        // Two devices may not drive one IRQ line.
        bus.register(Box::new(Fake(&[(0x500, 1)], "h", 1 << 5)))
            .unwrap();
        let e = bus.register(Box::new(Fake(&[(0x501, 1)], "i", 1 << 5)));
        assert_eq!(
            e,
            Err(BusError::SharedIrq {
                irq: 5,
                new: "i",
                old: "h"
            })
        );
        assert_eq!(bus.map.port(0x501), None, "refused whole");
    }

    #[test]
    fn the_pic_is_served_on_the_bus() {
        let mut bus = platform();
        // OCW1 to the master's data port: the mask reads back.
        assert_eq!(bus.io_write(0x21, 1, 0xFB, 0), Effects::none());
        assert_eq!(bus.io_read(0x21, 1, 0), Effects::read(0xFB));
        assert_eq!(bus.pic.read(0x21, 1), 0xFB);
    }

    #[test]
    fn mmio_ranges_are_overlap_checked_and_found_by_bisection() {
        struct Regs(u64);
        impl MmioDevice for Regs {
            fn mmio_read(&mut self, offset: u64, _size: u8, _now: u64) -> Effects {
                Effects::read(self.0 + offset)
            }
            fn mmio_write(&mut self, _offset: u64, _size: u8, value: u64, _now: u64) -> Effects {
                self.0 = value;
                Effects::none()
            }
        }
        let mut bus = Bus::new(IoApic::new(0));
        bus.register_mmio(0xD000_0000, 0x1000, "a", Box::new(Regs(0)))
            .unwrap();
        bus.register_mmio(0xD000_2000, 0x2000, "b", Box::new(Regs(0x100)))
            .unwrap();
        // Over another device, the I/O APIC, the local APIC's home page, or
        // off the end of the address space: refused.
        for (first, size) in [
            (0xD000_0FFF, 2),
            (0xD000_3FFF, 1),
            (0xCFFF_F000, 0x1001),
            (ioapic::BASE + 0x10, 4),
            (DEFAULT_BASE + 0xFF0, 0x20),
        ] {
            let e = bus.register_mmio(first, size, "x", Box::new(Regs(0)));
            assert!(
                matches!(e, Err(BusError::Overlap { .. })),
                "{first:#x}: {e:?}"
            );
        }
        let e = bus.register_mmio(u64::MAX, 2, "x", Box::new(Regs(0)));
        assert!(matches!(e, Err(BusError::BadRange { .. })));
        let e = bus.register_mmio(0xE000_0000, 0, "x", Box::new(Regs(0)));
        assert!(matches!(e, Err(BusError::BadRange { .. })));
        let map = bus.map().clone();
        let local = Some(DEFAULT_BASE);
        assert_eq!(
            map.mmio(0xD000_0000, local),
            Some(MmioTarget::Bus(Target::Mmio(0), 0xD000_0000))
        );
        assert_eq!(
            map.mmio(0xD000_0FFF, local),
            Some(MmioTarget::Bus(Target::Mmio(0), 0xD000_0000))
        );
        assert_eq!(map.mmio(0xD000_1000, local), None);
        assert_eq!(
            map.mmio(0xD000_3FFF, local),
            Some(MmioTarget::Bus(Target::Mmio(1), 0xD000_2000))
        );
        assert_eq!(map.mmio(0xD000_4000, local), None);
        assert_eq!(
            map.mmio(ioapic::BASE, local),
            Some(MmioTarget::Bus(Target::IoApic, ioapic::BASE))
        );
        assert_eq!(map.mmio_owner(ioapic::BASE + 0xFFF), Some("ioapic"));
        assert_eq!(map.mmio(0, local), None);
        assert_eq!(map.mmio(u64::MAX, local), None);
        // Offsets are from the range's start; writes reach the device.
        let f = |read: &mut dyn FnMut() -> u64| {
            assert_eq!(read(), 0x100 + 0x10);
            Some(7)
        };
        let fx = bus.mmio_rmw(Target::Mmio(1), 0xD000_2000, 0xD000_2010, 4, 0, f);
        assert_eq!(fx.value, 0x110);
        let fx = bus.mmio_rmw(Target::Mmio(1), 0xD000_2000, 0xD000_2000, 4, 0, |r| {
            r();
            None
        });
        assert_eq!(fx.value, 7);
    }

    #[test]
    fn lapic_page_follows_apic_base() {
        // Each vCPU's xAPIC page is where its IA32_APIC_BASE puts it
        // (SDM Vol. 3A 11.4.5): the new page decodes, the old one is
        // unclaimed for that vCPU, and other vCPUs still see theirs.
        let map = Bus::new(IoApic::new(0)).map().clone();
        let default = DEFAULT_BASE;
        assert_eq!(
            map.mmio(default, Some(default)),
            Some(MmioTarget::LocalApic)
        );
        assert_eq!(
            map.mmio(default + 0xFFF, Some(default)),
            Some(MmioTarget::LocalApic)
        );
        assert_eq!(
            map.mmio(ioapic::BASE, Some(default)),
            Some(MmioTarget::Bus(Target::IoApic, ioapic::BASE))
        );
        assert_eq!(
            map.mmio(0xFED0_0000, Some(0xFED0_0000)),
            Some(MmioTarget::LocalApic)
        );
        assert_eq!(map.mmio(default, Some(0xFED0_0000)), None);
        assert_eq!(map.mmio(0xFED0_1000, Some(0xFED0_0000)), None);
        assert_eq!(map.mmio(default + 0x1000, Some(default)), None);
        // Moved over the I/O APIC: this vCPU's APIC shadows it there.
        assert_eq!(
            map.mmio(ioapic::BASE, Some(ioapic::BASE)),
            Some(MmioTarget::LocalApic)
        );
        // No xAPIC page at all: the default page is nobody's.
        assert_eq!(map.mmio(default, None), None);
    }

    #[test]
    fn device_lines_are_routed_to_the_pic_and_the_ioapic() {
        let mut bus = Bus::new(IoApic::new(0));
        bus.register(Box::new(Fake(&[(0x500, 1)], "f", 1 << 5)))
            .unwrap();
        // I/O APIC pin 5 unmasked, fixed, vector 0x35, level-triggered, to APIC 0.
        let _ = bus.ioapic.write_mmio(0, 4, 0x10 + 2 * 5);
        let _ = bus.ioapic.write_mmio(0x10, 4, 0x0000_8035);
        // 8259: Linux-style init, vector base 0x30, IRQ 5 unmasked, level (ELCR).
        for (p, v) in [
            (0x20, 0x11),
            (0x21, 0x30),
            (0x21, 4),
            (0x21, 1),
            (0x21, 0xDF),
        ] {
            bus.pic.write(p, 1, v);
        }
        bus.pic.write(0x4D0, 1, 1 << 5);
        let fx = bus.io_write(0x500, 1, 1 << 5, 0);
        assert_eq!(
            fx.messages,
            [Message::ioapic(0x35, 0, false, DeliveryMode::Fixed, true)]
        );
        assert_eq!(fx.intr, Some(true), "the 8259 raises INTR");
        // Held: nothing new.
        let fx = bus.io_write(0x500, 1, 1 << 5, 0);
        assert!(fx.messages.is_empty() && fx.intr.is_none(), "{fx:?}");
        // The EOI while the line is still asserted sends again.
        assert_eq!(
            bus.eoi(0x35).messages,
            [Message::ioapic(0x35, 0, false, DeliveryMode::Fixed, true)]
        );
        // Lowered: the level-sensed 8259 input drops INTR.
        let fx = bus.io_write(0x500, 1, 0, 0);
        assert_eq!(fx.intr, Some(false));
        assert!(fx.messages.is_empty());
        assert_eq!(bus.io_write(0x500, 1, 0xFF, 0).request, Request::Reset);
    }

    #[test]
    fn the_platform_deadline_is_the_earliest_device_deadline() {
        let mut bus = platform();
        assert_eq!(bus.next_deadline(), None);
        // PIT counter 0, mode 2, count 1000 at t = 0: OUT0 rises at tick 1000.
        let _ = bus.io_write(0x43, 1, 0x34, 0);
        let _ = bus.io_write(0x40, 1, 1000 & 0xFF, 0);
        let fx = bus.io_write(0x40, 1, 1000 >> 8, 0);
        let pit = NS_CLOCK.at(1001, pit::PIT_HZ);
        assert_eq!(fx.deadline, Some(Some(pit)));
        assert_eq!(bus.next_deadline(), Some(pit));
        // RTC periodic interrupt at 2 Hz (register A RS = 15, then B PIE):
        // later than the PIT's, so the platform's deadline does not move.
        let _ = bus.io_write(0x70, 1, 0x0A, 0);
        assert_eq!(bus.io_write(0x71, 1, 0x2F, 0).deadline, None);
        let _ = bus.io_write(0x70, 1, 0x0B, 0);
        let fx = bus.io_write(0x71, 1, 0x42, 0);
        assert_eq!(fx.deadline, None, "{fx:?}");
        // Advancing past the PIT's edge pulses IRQ 0 and reports the next one.
        let fx = bus.advance(pit);
        assert_eq!(fx.deadline, Some(Some(NS_CLOCK.at(2001, pit::PIT_HZ))));
    }
}
