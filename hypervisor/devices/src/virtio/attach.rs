//! A virtio device attached to a guest: one PCI function on bus 0 with its
//! own configuration space, BAR0 decoded on the I/O space where the guest
//! programs it (only while the command register's I/O Space bit is set, PCI
//! 3.0 6.2.2), and the transport's INTx pin driving one ISA IRQ line of the
//! bus (the line the function's Interrupt Line register names, as firmware
//! left it: PCI 3.0 6.2.4).
//!
//! The bus owns a [`PciSlot`] per device and turns what the transport says
//! ([`super::pci::Effects`]) into the bus's [`crate::Effects`] in one place
//! ([`Bus::attach_virtio`](crate::Bus::attach_virtio) and the slot accessors
//! there). A new virtio device type only implements
//! [`super::VirtioDevice`]; `VirtioPci<D>` is a [`Transport`] for every `D`.
use super::pci::{Effects as VEffects, Fault, TransportState, VirtioPci, BAR_SIZE};
use super::{GuestMem, Identity, MemError, VirtioDevice};
use crate::pci::{ConfigSpace, BAR0, COMMAND, INTERRUPT_LINE};
use crate::state::{BytesError, DeviceState, Kind, StateError, Stateful};
use alloc::boxed::Box;
use core::any::Any;

/// The transport as the bus drives it: object-safe, so one bus holds
/// devices of several types.
pub trait Transport: Send {
    /// The PCI function's configuration space in its power-on state.
    fn config_space(&self) -> ConfigSpace;
    fn bar_read(&mut self, offset: u16, size: u8) -> (u32, VEffects);
    fn bar_write(&mut self, offset: u16, size: u8, value: u32, mem: &dyn GuestMem) -> VEffects;
    fn cfg_before_read(&mut self, config: &mut ConfigSpace, off: usize, size: u8) -> VEffects;
    fn cfg_after_write(
        &mut self,
        config: &ConfigSpace,
        off: usize,
        size: u8,
        mem: &dyn GuestMem,
    ) -> VEffects;
    /// The INTx level given the command register.
    fn intx_line(&self, command: u16) -> bool;
    /// Serves notified queues left over from an earlier call.
    fn process(&mut self, mem: &dyn GuestMem) -> VEffects;
    /// Notifies queue `queue` as the driver's notification would (a NIC's
    /// receive queue when a frame arrived, 2.7.13).
    fn notify(&mut self, queue: u16, mem: &dyn GuestMem) -> VEffects;
    /// Delivers chains an asynchronous backend finished.
    fn complete(&mut self, mem: &dyn GuestMem) -> VEffects;
    /// Back to the power-on state (a platform reset).
    fn power_on(&mut self);
    /// The device status register (virtio 1.2 2.1).
    fn device_status(&self) -> u8;
    /// The transport's and the device's state.
    fn save_virtio(&self) -> (TransportState, Identity);
    /// Takes both whole, or changes nothing and says why.
    fn restore_virtio(&mut self, s: &TransportState, id: &Identity) -> Result<(), StateError>;
    /// Why the state can't be saved now (requests in flight), or None.
    fn busy(&self) -> Option<&'static str>;
    /// For the core, to reach its backend (disk overlays).
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn as_any(&self) -> &dyn Any;
}

impl<D: VirtioDevice + Send + 'static> Transport for VirtioPci<D> {
    fn config_space(&self) -> ConfigSpace {
        self.pci_function(0).config
    }
    fn bar_read(&mut self, offset: u16, size: u8) -> (u32, VEffects) {
        self.read(offset, size)
    }
    fn bar_write(&mut self, offset: u16, size: u8, value: u32, mem: &dyn GuestMem) -> VEffects {
        self.write(offset, size, value, mem)
    }
    fn cfg_before_read(&mut self, config: &mut ConfigSpace, off: usize, size: u8) -> VEffects {
        self.pci_cfg_before_read(config, off, size)
    }
    fn cfg_after_write(
        &mut self,
        config: &ConfigSpace,
        off: usize,
        size: u8,
        mem: &dyn GuestMem,
    ) -> VEffects {
        self.pci_cfg_after_write(config, off, size, mem)
    }
    fn intx_line(&self, command: u16) -> bool {
        VirtioPci::intx_line(self, command)
    }
    fn process(&mut self, mem: &dyn GuestMem) -> VEffects {
        VirtioPci::process(self, mem)
    }
    fn notify(&mut self, queue: u16, mem: &dyn GuestMem) -> VEffects {
        self.write(super::pci::NOTIFY_OFF, 2, u32::from(queue), mem)
    }
    fn complete(&mut self, mem: &dyn GuestMem) -> VEffects {
        VirtioPci::complete(self, mem)
    }
    fn power_on(&mut self) {
        crate::state::DeviceState::reset(self);
    }
    fn device_status(&self) -> u8 {
        self.status()
    }
    fn save_virtio(&self) -> (TransportState, Identity) {
        (DeviceState::save(self).data, self.dev.identity())
    }
    fn restore_virtio(&mut self, s: &TransportState, id: &Identity) -> Result<(), StateError> {
        self.restore_with(s, id)
    }
    fn busy(&self) -> Option<&'static str> {
        self.dev.busy()
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Guest memory for accesses that come without it (a port access through
/// the plain [`crate::Bus::io_write`]): every access is refused, so a
/// notification served there fails its chains instead of touching anything.
pub struct NoMem;

impl GuestMem for NoMem {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        Err(MemError {
            gpa,
            len: buf.len() as u64,
        })
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        Err(MemError {
            gpa,
            len: data.len() as u64,
        })
    }
    fn contains(&self, _gpa: u64, _len: u64) -> bool {
        false
    }
}

const COMMAND_IO: u16 = 1 << 0;
/// An I/O BAR decodes 16 address bits here (x86 port space): bits 31:16
/// are hardwired to zero, which PCI 3.0 6.2.5.1 allows.
const BAR_IO_MASK: u32 = 0xFFFF & !(BAR_SIZE - 1);

/// One attached virtio function.
pub struct PciSlot {
    pub transport: Box<dyn Transport>,
    /// Its device number on bus 0 (function 0).
    pub device: u8,
    /// The ISA IRQ line its INTx pin drives (its Interrupt Line register).
    pub irq: u8,
    /// Where "firmware" put BAR0 (the power-on programming of the slot).
    pub firmware_bar: u16,
    /// A short name for diagnostics ("virtio-blk").
    pub name: &'static str,
    config: ConfigSpace,
    /// Times the device entered DEVICE_NEEDS_RESET, and the last reason.
    pub faults: u32,
    pub last_fault: Option<Fault>,
    /// Notified chains wait for the next poll (the budget ran out).
    pub work_left: bool,
}

impl PciSlot {
    pub fn new(
        transport: Box<dyn Transport>,
        name: &'static str,
        device: u8,
        irq: u8,
        firmware_bar: u16,
    ) -> Self {
        let mut s = PciSlot {
            config: transport.config_space(),
            transport,
            device,
            irq,
            firmware_bar,
            name,
            faults: 0,
            last_fault: None,
            work_left: false,
        };
        s.power_on();
        s
    }

    /// The power-on state, as firmware leaves it: BAR0 at `firmware_bar`,
    /// Interrupt Line = `irq`, the command register 0 (the driver enables
    /// I/O decoding, PCI 3.0 6.2.2).
    pub fn power_on(&mut self) {
        self.transport.power_on();
        self.config = self.transport.config_space();
        // Writable bits above 16 are cleared, so the BAR can't leave the
        // port space.
        self.config.set_writable(BAR0, 4, BAR_IO_MASK);
        self.config.write(BAR0, 4, u32::from(self.firmware_bar));
        self.config.write(INTERRUPT_LINE, 1, u32::from(self.irq));
        self.work_left = false;
    }

    pub fn command(&self) -> u16 {
        self.config.read(COMMAND, 2) as u16
    }

    /// The first port BAR0 decodes, while I/O decoding is on.
    pub fn io_base(&self) -> Option<u16> {
        if self.command() & COMMAND_IO == 0 {
            return None;
        }
        Some((self.config.read(BAR0, 4) & BAR_IO_MASK) as u16)
    }

    /// The offset of `port` in BAR0 for a `size`-byte access wholly inside it.
    pub fn bar_offset(&self, port: u16, size: u8) -> Option<u16> {
        let off = port.wrapping_sub(self.io_base()?);
        let end = u32::from(off).saturating_add(u32::from(size));
        (end <= BAR_SIZE).then_some(off)
    }

    /// The INTx pin's level (the Interrupt Disable bit applied).
    pub fn intx(&self) -> bool {
        self.transport.intx_line(self.command())
    }

    pub fn config_read(&mut self, off: usize, size: u8) -> (u32, VEffects) {
        let e = self.transport.cfg_before_read(&mut self.config, off, size);
        (self.config.read(off, usize::from(size)), self.note(e))
    }

    pub fn config_write(
        &mut self,
        off: usize,
        size: u8,
        value: u32,
        mem: &dyn GuestMem,
    ) -> VEffects {
        self.config.write(off, usize::from(size), value);
        let e = self.transport.cfg_after_write(&self.config, off, size, mem);
        self.note(e)
    }

    pub fn bar_read(&mut self, off: u16, size: u8) -> (u32, VEffects) {
        let (v, e) = self.transport.bar_read(off, size);
        (v, self.note(e))
    }

    pub fn bar_write(&mut self, off: u16, size: u8, value: u32, mem: &dyn GuestMem) -> VEffects {
        let e = self.transport.bar_write(off, size, value, mem);
        self.note(e)
    }

    /// Runs `f` on the transport and records what it reports.
    pub fn kick(
        &mut self,
        mem: &dyn GuestMem,
        f: impl FnOnce(&mut dyn Transport, &dyn GuestMem) -> VEffects,
    ) -> VEffects {
        let e = f(&mut *self.transport, mem);
        self.note(e)
    }

    /// Serves left-over work and asynchronous completions.
    pub fn poll(&mut self, mem: &dyn GuestMem) -> VEffects {
        let mut e = self.transport.complete(mem);
        if self.work_left {
            let p = self.transport.process(mem);
            e.intx = p.intx.or(e.intx);
            e.broke = p.broke.or(e.broke);
            // What this call left is all that is left.
            self.work_left = p.work_left;
        }
        self.note(e)
    }

    /// Records a fault and left-over work (only calls that served queues
    /// report it; the flag is cleared by the poll that finishes it).
    fn note(&mut self, e: VEffects) -> VEffects {
        if let Some(f) = e.broke {
            self.faults = self.faults.saturating_add(1);
            self.last_fault = Some(f);
            self.work_left = false;
        }
        if e.work_left {
            self.work_left = true;
        }
        e
    }

    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }
}

/// A virtio function's complete state: its PCI configuration space as the
/// guest programmed it (BAR0, command, interrupt line, the configuration
/// access window), the transport (features, selectors, status, ISR,
/// notified queues, each queue), the device's identity state and the
/// slot's own bookkeeping. Its wiring (device number, IRQ line) is saved
/// to refuse a state of another slot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotState {
    pub device: u8,
    pub irq: u8,
    #[serde(with = "crate::state::array")]
    pub config: [u8; 256],
    pub faults: u32,
    pub work_left: bool,
    pub transport: TransportState,
    pub identity: Identity,
}

/// The layout version of [`SlotState`].
pub const SLOT_STATE_VERSION: u32 = 1;

impl PciSlot {
    /// The slot's state; refused while its backend holds requests (they
    /// would be lost: a restore can't give them back to the backend).
    pub fn save_state(&self) -> Result<SlotState, BytesError> {
        if let Some(what) = self.transport.busy() {
            return Err(BytesError::Busy {
                kind: Kind::Virtio,
                what,
            });
        }
        let (transport, identity) = self.transport.save_virtio();
        Ok(SlotState {
            device: self.device,
            irq: self.irq,
            config: *self.config.data(),
            faults: self.faults,
            work_left: self.work_left,
            transport,
            identity,
        })
    }

    /// Takes `s` whole, or changes nothing and says why: a state of another
    /// slot, another kind of device or another disk, read-only
    /// configuration bits that differ, an impossible transport or queue.
    pub fn restore_state(&mut self, s: &SlotState) -> Result<(), StateError> {
        crate::state::ensure(
            s.device == self.device && s.irq == self.irq,
            "virtio slot (PCI device number or IRQ line)",
        )?;
        let mut config = self.config.clone();
        config.take_programmed(&s.config)?;
        self.transport.restore_virtio(&s.transport, &s.identity)?;
        self.config = config;
        self.faults = s.faults;
        self.last_fault = None;
        self.work_left = s.work_left;
        Ok(())
    }

    /// Whether the backend holds requests, and which.
    pub fn busy(&self) -> Option<&'static str> {
        self.transport.busy()
    }
}

impl Stateful for PciSlot {
    fn kind(&self) -> Kind {
        Kind::Virtio
    }
    fn layout_version(&self) -> u32 {
        SLOT_STATE_VERSION
    }
    fn save_bytes(&self, out: &mut alloc::vec::Vec<u8>) -> Result<(), BytesError> {
        let state = self.save_state()?;
        let taken = core::mem::take(out);
        *out = postcard::to_extend(&state, taken).map_err(|_| BytesError::Encode(Kind::Virtio))?;
        Ok(())
    }
    fn restore_bytes(&mut self, version: u32, bytes: &[u8]) -> Result<(), BytesError> {
        crate::state::check_version(version, SLOT_STATE_VERSION)
            .map_err(|e| BytesError::of(Kind::Virtio, e))?;
        let (state, rest) = postcard::take_from_bytes::<SlotState>(bytes)
            .map_err(|_| BytesError::Malformed(Kind::Virtio))?;
        if !rest.is_empty() {
            return Err(BytesError::Trailing {
                kind: Some(Kind::Virtio),
            });
        }
        self.restore_state(&state)
            .map_err(|e| BytesError::of(Kind::Virtio, e))
    }
    fn reset_state(&mut self) {
        self.power_on();
    }
}

/// The ISA IRQ lines (= I/O APIC GSIs) attached virtio functions get, in
/// order: lines no PC platform device of the bus drives (COM2 3, 5, LPT1 7,
/// 10, 11, the IDE channels 14 and 15, 6). The guest's DSDT `_PRT` names
/// the same (`loader::PCI_INTX`); each function gets a line of its own, so
/// the line is its INTx level alone.
pub const IRQS: [u8; 8] = [11, 10, 5, 7, 3, 6, 14, 15];
/// The PCI device number of the first attached function (00:03.0).
pub const FIRST_DEVICE: u8 = 3;
/// BAR0 of the first function, as firmware programs it; the next ones
/// follow at [`BAR_SIZE`] steps.
pub const FIRST_BAR: u16 = 0xC000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::ioapic::IoApic;
    use crate::pci::Pci;
    use crate::virtio::blk::{self, Blk};
    use crate::virtio::block::MemDisk;
    use crate::virtio::pci::*;
    use crate::virtio::queue::tests::{desc, offer, AVAIL, DESC, USED};
    use crate::virtio::queue::{DESC_F_NEXT, DESC_F_WRITE};
    use crate::virtio::status::*;
    use crate::virtio::testmem::TestMem;
    use crate::virtio::VIRTIO_F_VERSION_1;

    fn bus_with_blk() -> Bus {
        let mut bus = Bus::new(IoApic::new(1));
        bus.register(Box::new(Pci::new())).unwrap();
        let data = (0..64 * 512).map(|i| (i % 251) as u8).collect();
        let dev = VirtioPci::new(Blk::new(MemDisk::new(data, false).unwrap(), b"disk-a"));
        assert_eq!(bus.attach_next(Box::new(dev), "virtio-blk"), Ok(0));
        bus
    }

    fn cfg_addr(dev: u8, func: u8, reg: u8) -> u32 {
        0x8000_0000 | u32::from(dev) << 11 | u32::from(func) << 8 | u32::from(reg & 0xFC)
    }
    fn cfg_read(bus: &mut Bus, dev: u8, func: u8, reg: u8, size: u8) -> u32 {
        bus.io_write(0xCF8, 4, cfg_addr(dev, func, reg), 0);
        bus.io_read(0xCFC + u16::from(reg & 3), size, 0).value as u32
    }
    fn cfg_write(bus: &mut Bus, dev: u8, reg: u8, size: u8, v: u32) {
        bus.io_write(0xCF8, 4, cfg_addr(dev, 0, reg), 0);
        bus.io_write(0xCFC + u16::from(reg & 3), size, v, 0);
    }

    #[test]
    fn the_function_is_on_bus_0_with_firmware_bar_and_interrupt_line() {
        let mut bus = bus_with_blk();
        assert_eq!(cfg_read(&mut bus, 3, 0, 0, 4), 0x1042_1AF4);
        assert_eq!(cfg_read(&mut bus, 3, 1, 0, 4), 0xFFFF_FFFF, "no function 1");
        assert_eq!(
            cfg_read(&mut bus, 4, 0, 0, 4),
            0xFFFF_FFFF,
            "nothing at 00:04"
        );
        // The bridges are still there.
        assert_eq!(cfg_read(&mut bus, 0, 0, 0, 4), 0x1237_8086);
        assert_eq!(cfg_read(&mut bus, 3, 0, 0x10, 4), 0xC001);
        assert_eq!(cfg_read(&mut bus, 3, 0, 0x3C, 1), 11, "Interrupt Line");
        assert_eq!(cfg_read(&mut bus, 3, 0, 0x3D, 1), 1, "INTA#");
        assert_eq!(cfg_read(&mut bus, 3, 0, 0x04, 2), 0, "decoding off");
        // The capability list starts at 0x40 with a vendor capability.
        assert_ne!(cfg_read(&mut bus, 3, 0, 0x06, 2) & 0x10, 0);
        assert_eq!(cfg_read(&mut bus, 3, 0, 0x34, 1), 0x40);
        assert_eq!(cfg_read(&mut bus, 3, 0, 0x40, 1), 0x09);
    }

    #[test]
    fn bar_sizing_decoding_and_moving() {
        let mut bus = bus_with_blk();
        // Decoding off: the BAR's ports have nothing behind them.
        assert_eq!(bus.io_read(0xC012, 2, 0).value, 0xFFFF);
        cfg_write(&mut bus, 3, 0x04, 2, 1);
        assert_eq!(bus.io_read(0xC012, 2, 0).value, 1, "num_queues");
        // Sizing (PCI 3.0 6.2.5.1): 256 bytes of I/O, 16 address bits.
        cfg_write(&mut bus, 3, 0x10, 4, 0xFFFF_FFFF);
        assert_eq!(cfg_read(&mut bus, 3, 0, 0x10, 4), 0xFF01);
        cfg_write(&mut bus, 3, 0x10, 4, 0xD000);
        assert_eq!(cfg_read(&mut bus, 3, 0, 0x10, 4), 0xD001);
        assert_eq!(
            bus.io_read(0xC012, 2, 0).value,
            0xFFFF,
            "the old place is empty"
        );
        assert_eq!(bus.io_read(0xD012, 2, 0).value, 1);
        // An access that runs past the BAR reaches nothing.
        assert_eq!(bus.io_read(0xD0FE, 4, 0).value, 0xFFFF_FFFF);
        // A fixed device wins a port: a BAR over COM1 doesn't take it.
        cfg_write(&mut bus, 3, 0x10, 4, 0x0000);
        assert_eq!(
            bus.io_read(0x12, 2, 0).value,
            1,
            "at port 0 (nothing else there)"
        );
        cfg_write(&mut bus, 3, 0x04, 2, 0);
        assert_eq!(bus.io_read(0x12, 2, 0).value, 0xFFFF);
        // A platform reset puts firmware's programming back.
        cfg_write(&mut bus, 3, 0x10, 4, 0xE000);
        bus.reset();
        assert_eq!(cfg_read(&mut bus, 3, 0, 0x10, 4), 0xC001);
        assert_eq!(cfg_read(&mut bus, 3, 0, 0x04, 2), 0);
    }

    /// The driver's set-up through the ports, and one read request whose
    /// completion raises IRQ 11 until the ISR is read.
    #[test]
    fn a_request_through_the_ports_raises_intx_on_irq_11() {
        let mut bus = bus_with_blk();
        let mem = TestMem::new(0x40000);
        cfg_write(&mut bus, 3, 0x04, 2, 1);
        let b = 0xC000u16;
        let w =
            |bus: &mut Bus, off: u16, size: u8, v: u32| bus.io_write_mem(b + off, size, v, 0, &mem);
        w(&mut bus, DEVICE_STATUS, 1, 0);
        w(&mut bus, DEVICE_STATUS, 1, u32::from(ACKNOWLEDGE | DRIVER));
        w(&mut bus, DRIVER_FEATURE_SELECT, 4, 1);
        w(
            &mut bus,
            DRIVER_FEATURE,
            4,
            (VIRTIO_F_VERSION_1 >> 32) as u32,
        );
        w(
            &mut bus,
            DEVICE_STATUS,
            1,
            u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
        );
        w(&mut bus, QUEUE_SELECT, 2, 0);
        w(&mut bus, QUEUE_SIZE, 2, 8);
        w(&mut bus, QUEUE_DESC, 4, DESC as u32);
        w(&mut bus, QUEUE_DRIVER, 4, AVAIL as u32);
        w(&mut bus, QUEUE_DEVICE, 4, USED as u32);
        w(&mut bus, QUEUE_ENABLE, 2, 1);
        let ok = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
        w(&mut bus, DEVICE_STATUS, 1, u32::from(ok));
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&blk::T_IN.to_le_bytes());
        hdr[8..].copy_from_slice(&2u64.to_le_bytes());
        mem.put(0x8000, &hdr);
        desc(&mem, DESC, 0, 0x8000, 16, DESC_F_NEXT, 1);
        desc(&mem, DESC, 1, 0x10000, 512, DESC_F_NEXT | DESC_F_WRITE, 2);
        desc(&mem, DESC, 2, 0x9000, 1, DESC_F_WRITE, 0);
        mem.put(0x9000, &[0xFF]);
        offer(&mem, 8, &[0]);
        assert_eq!(bus.lines() & (1 << 11), 0);
        let fx = w(&mut bus, NOTIFY_OFF, 2, 0);
        assert_eq!(mem.get(0x9000, 1), [blk::S_OK]);
        let want: Vec<u8> = (1024..1028).map(|i| (i % 251) as u8).collect();
        assert_eq!(mem.get(0x10000, 4), want, "sector 2's bytes");
        assert_ne!(bus.lines() & (1 << 11), 0, "INTx high on IRQ 11");
        let _ = fx;
        assert_eq!(bus.io_read(b + ISR_OFF, 1, 0).value, 1, "used buffer");
        assert_eq!(bus.lines() & (1 << 11), 0, "read-to-clear lowers the line");
        // Interrupt Disable holds the pin low (PCI 3.0 6.2.2 bit 10).
        offer(&mem, 8, &[0]);
        cfg_write(&mut bus, 3, 0x04, 2, 1 | 1 << 10);
        bus.io_write_mem(b + NOTIFY_OFF, 2, 0, 0, &mem);
        assert_eq!(bus.lines() & (1 << 11), 0);
        cfg_write(&mut bus, 3, 0x04, 2, 1);
        assert_ne!(bus.lines() & (1 << 11), 0, "the pending interrupt shows");
        assert_eq!(bus.slots()[0].faults, 0);
    }

    #[test]
    fn a_malformed_chain_marks_the_device_and_counts_the_fault() {
        let mut bus = bus_with_blk();
        let mem = TestMem::new(0x40000);
        cfg_write(&mut bus, 3, 0x04, 2, 1);
        let b = 0xC000u16;
        let w =
            |bus: &mut Bus, off: u16, size: u8, v: u32| bus.io_write_mem(b + off, size, v, 0, &mem);
        w(&mut bus, DEVICE_STATUS, 1, u32::from(ACKNOWLEDGE | DRIVER));
        w(&mut bus, DRIVER_FEATURE_SELECT, 4, 1);
        w(&mut bus, DRIVER_FEATURE, 4, 1);
        w(
            &mut bus,
            DEVICE_STATUS,
            1,
            u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
        );
        w(&mut bus, QUEUE_SIZE, 2, 8);
        w(&mut bus, QUEUE_DESC, 4, DESC as u32);
        w(&mut bus, QUEUE_DRIVER, 4, AVAIL as u32);
        w(&mut bus, QUEUE_DEVICE, 4, USED as u32);
        w(&mut bus, QUEUE_ENABLE, 2, 1);
        w(
            &mut bus,
            DEVICE_STATUS,
            1,
            u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
        );
        // A loop: 0 -> 1 -> 0.
        desc(&mem, DESC, 0, 0x8000, 16, DESC_F_NEXT, 1);
        desc(&mem, DESC, 1, 0x8000, 16, DESC_F_NEXT, 0);
        offer(&mem, 8, &[0]);
        w(&mut bus, NOTIFY_OFF, 2, 0);
        let st = bus.io_read(b + DEVICE_STATUS, 1, 0).value as u8;
        assert_ne!(st & DEVICE_NEEDS_RESET, 0);
        assert_eq!(bus.slots()[0].faults, 1);
        assert!(matches!(
            bus.slots()[0].last_fault,
            Some(Fault::Queue(0, _))
        ));
        // Without guest memory (the plain io_write path) nothing is reached.
        assert!(!NoMem.contains(0, 1));
    }

    #[test]
    fn a_kick_outside_an_access_serves_and_routes_the_interrupt() {
        let mut bus = bus_with_blk();
        let mem = TestMem::new(0x40000);
        cfg_write(&mut bus, 3, 0x04, 2, 1);
        let b = 0xC000u16;
        let w =
            |bus: &mut Bus, off: u16, size: u8, v: u32| bus.io_write_mem(b + off, size, v, 0, &mem);
        w(&mut bus, DEVICE_STATUS, 1, u32::from(ACKNOWLEDGE | DRIVER));
        w(&mut bus, DRIVER_FEATURE_SELECT, 4, 1);
        w(&mut bus, DRIVER_FEATURE, 4, 1);
        let feat = ACKNOWLEDGE | DRIVER | FEATURES_OK;
        w(&mut bus, DEVICE_STATUS, 1, u32::from(feat));
        w(&mut bus, QUEUE_SIZE, 2, 8);
        w(&mut bus, QUEUE_DESC, 4, DESC as u32);
        w(&mut bus, QUEUE_DRIVER, 4, AVAIL as u32);
        w(&mut bus, QUEUE_DEVICE, 4, USED as u32);
        w(&mut bus, QUEUE_ENABLE, 2, 1);
        w(&mut bus, DEVICE_STATUS, 1, u32::from(feat | DRIVER_OK));
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&blk::T_IN.to_le_bytes());
        mem.put(0x8000, &hdr);
        desc(&mem, DESC, 0, 0x8000, 16, DESC_F_NEXT, 1);
        desc(&mem, DESC, 1, 0x10000, 512, DESC_F_NEXT | DESC_F_WRITE, 2);
        desc(&mem, DESC, 2, 0x9000, 1, DESC_F_WRITE, 0);
        mem.put(0x9000, &[0xFF]);
        offer(&mem, 8, &[0]);
        assert_eq!(bus.lines() & (1 << 11), 0, "not notified: nothing served");
        assert!(bus.slot_kick(5, 0, &mem, |t, m| t.notify(0, m)).is_none());
        let fx = bus.slot_kick(0, 0, &mem, |t, m| t.notify(0, m)).unwrap();
        assert_eq!(mem.get(0x9000, 1), [blk::S_OK]);
        assert_ne!(bus.lines() & (1 << 11), 0, "the kick raised INTx on IRQ 11");
        assert_eq!(fx.deadline, None, "nothing left over");
    }

    #[test]
    fn attach_refuses_taken_lines_and_runs_out_of_lines() {
        let mut bus = bus_with_blk();
        for n in 1..IRQS.len() {
            let dev = VirtioPci::new(Blk::new(MemDisk::new(vec![0; 512], true).unwrap(), b""));
            assert_eq!(bus.attach_next(Box::new(dev), "virtio-blk"), Ok(n));
        }
        let dev = VirtioPci::new(Blk::new(MemDisk::new(vec![0; 512], true).unwrap(), b""));
        assert!(matches!(
            bus.attach_next(Box::new(dev), "virtio-blk"),
            Err(crate::BusError::NoIrqLeft { .. })
        ));
        let mut bus = Bus::new(IoApic::new(1));
        bus.register(Box::new(Pci::new())).unwrap();
        let dev = VirtioPci::new(Blk::new(MemDisk::new(vec![0; 512], true).unwrap(), b""));
        let slot = PciSlot::new(Box::new(dev), "virtio-blk", 1, 11, 0xC000);
        assert!(matches!(
            bus.attach_virtio(slot),
            Err(crate::BusError::PciDevice { device: 1, .. })
        ));
    }

    // ---- The slot's state as bytes (snapshots) ----

    use crate::state::{BytesError, Kind};

    fn bus_with(dev: Box<dyn Transport>) -> Bus {
        let mut bus = Bus::new(IoApic::new(1));
        bus.register(Box::new(Pci::new())).unwrap();
        bus.attach_next(dev, "virtio").unwrap();
        bus
    }

    fn disk(serial: &[u8], sectors: usize) -> Box<dyn Transport> {
        let data = (0..sectors * 512).map(|i| (i % 251) as u8).collect();
        Box::new(VirtioPci::new(Blk::new(
            MemDisk::new(data, false).unwrap(),
            serial,
        )))
    }

    /// The driver's set-up through the ports, BAR0 moved to `base`, an
    /// 8-entry queue.
    fn drive_up(bus: &mut Bus, mem: &TestMem, base: u16) {
        cfg_write(bus, 3, 0x10, 4, u32::from(base));
        cfg_write(bus, 3, 0x04, 2, 1);
        let w = |bus: &mut Bus, off: u16, size: u8, v: u32| {
            bus.io_write_mem(base + off, size, v, 0, mem);
        };
        w(bus, DEVICE_STATUS, 1, u32::from(ACKNOWLEDGE | DRIVER));
        w(bus, DRIVER_FEATURE_SELECT, 4, 1);
        w(bus, DRIVER_FEATURE, 4, (VIRTIO_F_VERSION_1 >> 32) as u32);
        let feat = ACKNOWLEDGE | DRIVER | FEATURES_OK;
        w(bus, DEVICE_STATUS, 1, u32::from(feat));
        w(bus, QUEUE_SIZE, 2, 8);
        w(bus, QUEUE_DESC, 4, DESC as u32);
        w(bus, QUEUE_DRIVER, 4, AVAIL as u32);
        w(bus, QUEUE_DEVICE, 4, USED as u32);
        w(bus, QUEUE_ENABLE, 2, 1);
        w(bus, DEVICE_STATUS, 1, u32::from(feat | DRIVER_OK));
    }

    /// A read of `sector` into 0x10000 (chain head 3 * `n` % 8 .. + 2),
    /// offered and notified at `base`.
    fn read_sector(bus: &mut Bus, mem: &TestMem, base: u16, n: u16, sector: u64) {
        let head = (3 * n) % 6;
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&blk::T_IN.to_le_bytes());
        hdr[8..].copy_from_slice(&sector.to_le_bytes());
        mem.put(0x8000, &hdr);
        desc(mem, DESC, head, 0x8000, 16, DESC_F_NEXT, head + 1);
        desc(
            mem,
            DESC,
            head + 1,
            0x10000,
            512,
            DESC_F_NEXT | DESC_F_WRITE,
            head + 2,
        );
        desc(mem, DESC, head + 2, 0x9000, 1, DESC_F_WRITE, 0);
        mem.put(0x9000, &[0xFF]);
        offer(mem, 8, &[head]);
        bus.io_write_mem(base + NOTIFY_OFF, 2, 0, 0, mem);
    }

    fn sector_bytes(sector: u64) -> Vec<u8> {
        (0..512u64)
            .map(|i| ((sector * 512 + i) % 251) as u8)
            .collect()
    }

    fn used_idx(mem: &TestMem) -> u16 {
        u16::from_le_bytes(mem.get(USED + 2, 2).try_into().unwrap())
    }

    fn bus_bytes(bus: &Bus) -> Vec<u8> {
        crate::snapshot::save(&bus.states()).unwrap()
    }

    /// A disk the driver set up and that served two requests, saved and
    /// restored onto a fresh bus: the third request is served there with
    /// the right data, the used ring index continues, the BAR decodes where
    /// the guest moved it and the interrupt line follows the ISR.
    #[test]
    fn a_disk_saved_mid_transfer_continues_on_a_fresh_bus() {
        let mem = TestMem::new(0x40000);
        let mut a = bus_with(disk(b"disk-a", 64));
        drive_up(&mut a, &mem, 0xD000);
        read_sector(&mut a, &mem, 0xD000, 0, 2);
        read_sector(&mut a, &mem, 0xD000, 1, 5);
        assert_eq!(used_idx(&mem), 2);
        assert_eq!(mem.get(0x10000, 512), sector_bytes(5));
        assert_ne!(a.lines() & (1 << 11), 0, "ISR set, INTx high");
        let saved = bus_bytes(&a);
        let kinds: Vec<u16> = crate::snapshot::entries(&saved)
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect();
        assert!(kinds.contains(&Kind::Virtio.tag()), "{kinds:?}");

        let mut b = bus_with(disk(b"disk-a", 64));
        assert_eq!(b.io_read(0xD012, 2, 0).value, 0xFFFF, "fresh: decoding off");
        crate::snapshot::restore(&saved, &mut b.states_mut()).unwrap();
        assert_eq!(bus_bytes(&b), saved, "the restored bus saves the same");
        assert_eq!(
            cfg_read(&mut b, 3, 0, 0x10, 4),
            0xD001,
            "BAR0 as programmed"
        );
        assert_eq!(b.io_read(0xD012, 2, 0).value, 1, "decodes at 0xD000");
        let st = b.io_read(0xD000 + DEVICE_STATUS, 1, 0).value as u8;
        assert_eq!(st, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        // The line is re-driven at the next advance, then the ISR read clears it.
        b.advance_mem(0, &mem);
        assert_ne!(b.lines() & (1 << 11), 0);
        assert_eq!(b.io_read(0xD000 + ISR_OFF, 1, 0).value, 1);
        assert_eq!(b.lines() & (1 << 11), 0);
        read_sector(&mut b, &mem, 0xD000, 2, 9);
        assert_eq!(mem.get(0x9000, 1), [blk::S_OK]);
        assert_eq!(mem.get(0x10000, 512), sector_bytes(9));
        assert_eq!(used_idx(&mem), 3, "the used ring continues");
        assert_eq!(b.slots()[0].faults, 0);
        // A platform reset gives firmware's programming back.
        b.reset();
        assert_eq!(cfg_read(&mut b, 3, 0, 0x10, 4), 0xC001);
        assert_eq!(
            b.io_read(0xC000 + DEVICE_STATUS, 1, 0).value,
            0xFF,
            "decoding off"
        );
    }

    /// Every truncation of the saved bytes is refused, and every byte
    /// changed (three ways) is refused without change or gives a state
    /// that runs (a request is served or fails the device): never a panic.
    #[test]
    fn corrupt_virtio_state_is_refused_or_runnable() {
        let mem = TestMem::new(0x40000);
        let mut a = bus_with(disk(b"disk-a", 64));
        drive_up(&mut a, &mem, 0xD000);
        read_sector(&mut a, &mem, 0xD000, 0, 2);
        let saved = bus_bytes(&a);
        let ram = mem.ram.borrow().clone();
        let fresh = bus_bytes(&bus_with(disk(b"disk-a", 64)));
        for n in 0..saved.len() {
            let mut b = bus_with(disk(b"disk-a", 64));
            assert!(crate::snapshot::restore(&saved[..n], &mut b.states_mut()).is_err());
            assert_eq!(bus_bytes(&b), fresh, "truncated to {n}: unchanged");
        }
        let mut refused = 0;
        let mut taken = 0;
        for i in 0..saved.len() {
            for x in [0x01u8, 0x80, 0xFF] {
                let mut bad = saved.clone();
                bad[i] ^= x;
                let mut b = bus_with(disk(b"disk-a", 64));
                match crate::snapshot::restore(&bad, &mut b.states_mut()) {
                    Err(_) => {
                        assert_eq!(bus_bytes(&b), fresh, "byte {i} ^ {x:#x}: unchanged");
                        refused += 1;
                    }
                    Ok(()) => {
                        *mem.ram.borrow_mut() = ram.clone();
                        for base in [0xD000u16, 0xC000] {
                            read_sector(&mut b, &mem, base, 1, 3);
                            b.advance_mem(1, &mem);
                            b.io_read(base + ISR_OFF, 1, 0);
                        }
                        taken += 1;
                    }
                }
            }
        }
        assert!(refused > 0 && taken > 0, "{refused} refused, {taken} taken");
    }

    #[test]
    fn a_save_with_a_request_in_flight_is_refused() {
        use crate::virtio::blk::slow::SlowDisk;
        let mem = TestMem::new(0x40000);
        let mut a = bus_with(Box::new(VirtioPci::new(Blk::new(
            SlowDisk::new(64),
            b"nbd",
        ))));
        drive_up(&mut a, &mem, 0xD000);
        read_sector(&mut a, &mem, 0xD000, 0, 2);
        assert_eq!(used_idx(&mem), 0, "the backend holds the request");
        let err = crate::snapshot::save(&a.states()).unwrap_err();
        assert_eq!(
            err,
            BytesError::Busy {
                kind: Kind::Virtio,
                what: "disk requests in flight on its backend"
            }
        );
        assert!(format!("{err}").contains("in flight"), "{err}");
        assert_eq!(
            a.virtio_busy(),
            Some(("virtio", "disk requests in flight on its backend"))
        );
        let slow = a.slots_mut()[0]
            .transport
            .as_any_mut()
            .downcast_mut::<VirtioPci<Blk<SlowDisk>>>()
            .unwrap();
        slow.dev.backend_mut().finish(0, false);
        a.advance_mem(0, &mem);
        assert_eq!(used_idx(&mem), 1, "drained");
        assert_eq!(a.virtio_busy(), None);
        crate::snapshot::save(&a.states()).unwrap();
    }

    #[test]
    fn another_devices_state_is_refused() {
        struct NoLink;
        impl crate::virtio::net::Uplink for NoLink {
            fn send(&mut self, _frame: &[u8]) {}
            fn pending(&self) -> bool {
                false
            }
            fn recv(&mut self, _buf: &mut [u8]) -> Option<usize> {
                None
            }
        }
        let mem = TestMem::new(0x40000);
        let mut a = bus_with(disk(b"disk-a", 64));
        drive_up(&mut a, &mem, 0xD000);
        let saved = bus_bytes(&a);
        let nic = || -> Box<dyn Transport> {
            Box::new(VirtioPci::new(crate::virtio::net::VirtioNet::new(
                [2, 0, 0, 0, 0, 1],
                NoLink,
            )))
        };
        let cases: [(Box<dyn Transport>, &str); 3] = [
            (nic(), "PCI configuration (read-only bits)"),
            (
                disk(b"disk-a", 32),
                "disk identity (capacity, read-only or serial differ)",
            ),
            (
                disk(b"disk-b", 64),
                "disk identity (capacity, read-only or serial differ)",
            ),
        ];
        for (dev, what) in cases {
            let mut b = bus_with(dev);
            let before = bus_bytes(&b);
            assert_eq!(
                crate::snapshot::restore(&saved, &mut b.states_mut()),
                Err(BytesError::Invalid {
                    kind: Kind::Virtio,
                    what
                })
            );
            assert_eq!(bus_bytes(&b), before, "{what}: unchanged");
        }
        // A bus without the function: the entry has no device.
        let mut none = Bus::new(IoApic::new(1));
        none.register(Box::new(Pci::new())).unwrap();
        assert_eq!(
            crate::snapshot::restore(&saved, &mut none.states_mut()),
            Err(BytesError::NoDevice {
                kind: Kind::Virtio,
                instance: 0
            })
        );
        // A NIC's state taken by a NIC: link and counters, not its MAC.
        let mut n1 = bus_with(nic());
        drive_up(&mut n1, &mem, 0xD000);
        let nb = bus_bytes(&n1);
        let mut n2 = bus_with(Box::new(VirtioPci::new(
            crate::virtio::net::VirtioNet::new([2, 0, 0, 0, 0, 2], NoLink),
        )));
        crate::snapshot::restore(&nb, &mut n2.states_mut()).unwrap();
        assert_eq!(n2.io_read(0xD000 + DEVICE_OFF, 1, 0).value, 2);
        assert_eq!(
            n2.io_read(0xD000 + DEVICE_OFF + 5, 1, 0).value,
            2,
            "own MAC"
        );
    }
}
