//! The virtio 1.x modern PCI transport (virtio 1.2 4.1) with every
//! structure in one I/O-port BAR (BAR0): common configuration, notification,
//! ISR status and device configuration, each found through a vendor-specific
//! capability (4.1.4). Interrupts are INTx (pin A), level-triggered: the line
//! is high while the ISR is non-zero and a read of the ISR lowers it; there is
//! no MSI-X, so the vector fields read NO_VECTOR. The bus owns the
//! function's [`ConfigSpace`]; it calls [`VirtioPci::pci_cfg_before_read`]
//! and [`VirtioPci::pci_cfg_after_write`] around configuration accesses of
//! the function so the VIRTIO_PCI_CAP_PCI_CFG window (4.1.4.9) reaches BAR0,
//! and drives the pin from [`VirtioPci::intx_line`] (which applies the
//! command register's Interrupt Disable bit).
//!
//! Accesses return [`Effects`]: the INTx line change, whether notified work
//! is left over (the per-call [`Budget`] ran out: call [`VirtioPci::process`]
//! again later, after the guest had its turn) and whether the device just
//! broke (DEVICE_NEEDS_RESET) and why.
use super::queue::{Chain, QueueError, QueueFeatures, SplitQueue};
use super::{status, GuestMem, VirtioDevice};
use super::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use crate::pci::{ConfigSpace, PciFunction, COMMAND, INTERRUPT_LINE, INTERRUPT_PIN, STATUS};
use crate::state::{check_version, DeviceState, State, StateError};
use alloc::vec::Vec;

pub const VENDOR_ID: u16 = 0x1AF4;
/// Modern device IDs are 0x1040 + the virtio device ID (4.1.2).
pub const DEVICE_ID_BASE: u16 = 0x1040;
pub const NO_VECTOR: u16 = 0xFFFF;

// Capability types (4.1.4).
pub const CAP_COMMON_CFG: u8 = 1;
pub const CAP_NOTIFY_CFG: u8 = 2;
pub const CAP_ISR_CFG: u8 = 3;
pub const CAP_DEVICE_CFG: u8 = 4;
pub const CAP_PCI_CFG: u8 = 5;
/// Where the VIRTIO_PCI_CAP_PCI_CFG capability sits in configuration space
/// (the last of the list), and its pci_cfg_data window.
pub const PCI_CFG_CAP_OFF: usize = 0x84;
const PCI_CFG_DATA: usize = PCI_CFG_CAP_OFF + 16;
const CAP_VENDOR: u8 = 0x09;
const CAPABILITIES_PTR: usize = 0x34;
const STATUS_CAP_LIST: u16 = 1 << 4;
const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const SUBSYSTEM_VENDOR_ID: usize = 0x2C;
const SUBSYSTEM_ID: usize = 0x2E;

// BAR0 layout (I/O space, 256 bytes).
pub const BAR_SIZE: u32 = 0x100;
pub const COMMON_OFF: u16 = 0x00;
pub const COMMON_LEN: u16 = 0x40;
/// One notify address for every queue: notify_off_multiplier 0 (4.1.4.4).
pub const NOTIFY_OFF: u16 = 0x40;
pub const NOTIFY_LEN: u16 = 4;
pub const ISR_OFF: u16 = 0x44;
pub const ISR_LEN: u16 = 1;
pub const DEVICE_OFF: u16 = 0x80;
pub const DEVICE_MAX_LEN: u16 = 0x80;

// Common configuration registers (4.1.4.3).
pub const DEVICE_FEATURE_SELECT: u16 = 0x00;
pub const DEVICE_FEATURE: u16 = 0x04;
pub const DRIVER_FEATURE_SELECT: u16 = 0x08;
pub const DRIVER_FEATURE: u16 = 0x0C;
pub const MSIX_CONFIG: u16 = 0x10;
pub const NUM_QUEUES: u16 = 0x12;
pub const DEVICE_STATUS: u16 = 0x14;
pub const CONFIG_GENERATION: u16 = 0x15;
pub const QUEUE_SELECT: u16 = 0x16;
pub const QUEUE_SIZE: u16 = 0x18;
pub const QUEUE_MSIX_VECTOR: u16 = 0x1A;
pub const QUEUE_ENABLE: u16 = 0x1C;
pub const QUEUE_NOTIFY_OFF: u16 = 0x1E;
pub const QUEUE_DESC: u16 = 0x20;
pub const QUEUE_DRIVER: u16 = 0x28;
pub const QUEUE_DEVICE: u16 = 0x30;

// ISR bits (4.1.4.5).
pub const ISR_QUEUE: u8 = 1;
pub const ISR_CONFIG: u8 = 2;

/// At most this many queues (the notified set is a 64-bit mask).
const MAX_QUEUES: u16 = 64;

/// Work done per call at most: chains, and bytes they carry. One chain is
/// always served, so a call makes progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub chains: u32,
    pub bytes: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            chains: 64,
            bytes: 4 << 20,
        }
    }
}

/// Why the device entered DEVICE_NEEDS_RESET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The queue of this index was misconfigured or gave a malformed chain.
    Queue(u16, QueueError),
    /// DRIVER_OK set without FEATURES_OK accepted (3.1.1 order).
    DriverOkWithoutFeatures,
}

/// What a transport access changed, for the core to act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// The INTx line's new level, when it changed.
    pub intx: Option<bool>,
    /// Notified chains are still waiting (the budget ran out).
    pub work_left: bool,
    /// The device has just been marked DEVICE_NEEDS_RESET.
    pub broke: Option<Fault>,
}

/// Whether the driver's feature set may be accepted: a subset of what was
/// offered, with VIRTIO_F_VERSION_1 (6.2: the device may refuse to work
/// without it, and this one does).
pub fn features_acceptable(offered: u64, driver: u64) -> bool {
    driver & !offered == 0 && driver & VIRTIO_F_VERSION_1 != 0
}

/// A virtio device behind the modern PCI transport.
pub struct VirtioPci<D: VirtioDevice> {
    pub dev: D,
    queues: Vec<SplitQueue>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    isr: u8,
    intx: bool,
    /// Queues notified and not yet drained (bit per queue).
    notified: u64,
    budget: Budget,
    chain: Chain,
}

impl<D: VirtioDevice> VirtioPci<D> {
    pub fn new(dev: D) -> Self {
        let n = dev.num_queues().min(MAX_QUEUES);
        let max = dev.queue_max_size().min(super::queue::MAX_QUEUE_SIZE);
        Self {
            queues: (0..n).map(|_| SplitQueue::new(max)).collect(),
            dev,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            isr: 0,
            intx: false,
            notified: 0,
            budget: Budget::default(),
            chain: Chain::with_capacity(max),
        }
    }

    pub fn set_budget(&mut self, budget: Budget) {
        self.budget = budget;
    }

    /// Features offered: the device's and the transport's.
    pub fn offered_features(&self) -> u64 {
        self.dev.features() | VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX
    }

    /// Features in force once FEATURES_OK was accepted, else 0.
    pub fn negotiated_features(&self) -> u64 {
        if self.status & status::FEATURES_OK != 0 {
            self.driver_features
        } else {
            0
        }
    }

    pub fn status(&self) -> u8 {
        self.status
    }

    pub fn intx_asserted(&self) -> bool {
        self.intx
    }

    /// The level on the INTx pin given the function's command register: the
    /// Interrupt Disable bit (PCI 3.0 6.2.2, bit 10) holds it low.
    pub fn intx_line(&self, command: u16) -> bool {
        self.intx && command & COMMAND_INTX_DISABLE == 0
    }

    pub fn queue(&self, index: u16) -> Option<&SplitQueue> {
        self.queues.get(usize::from(index))
    }

    /// The PCI function at `device` on bus 0: IDs, BAR0 (I/O, [`BAR_SIZE`]
    /// bytes), INTx pin A and the capability list (4.1.4).
    pub fn pci_function(&self, device: u8) -> PciFunction {
        let class = self.dev.pci_class();
        let id = DEVICE_ID_BASE.saturating_add(self.dev.device_id());
        // Revision 1: a non-transitional device (4.1.2.1).
        let mut c = ConfigSpace::new(VENDOR_ID, id, class, 1, 0);
        // I/O space, bus master and INTx disable writable.
        c.set_writable(COMMAND, 2, 0x0005 | u32::from(COMMAND_INTX_DISABLE));
        c.set_u16(STATUS, STATUS_CAP_LIST);
        c.set_bar(0, BAR_SIZE, true);
        c.set_u16(SUBSYSTEM_VENDOR_ID, VENDOR_ID);
        // 4.1.2.1: subsystem device ID 0x40 or higher.
        c.set_u16(SUBSYSTEM_ID, 0x40);
        c.set_u8(INTERRUPT_PIN, 1);
        c.set_writable(INTERRUPT_LINE, 1, 0xFF);
        let dev_len = u16::try_from(self.dev.config_len())
            .unwrap_or(u16::MAX)
            .min(DEVICE_MAX_LEN);
        // The PCI configuration access capability's BAR, offset and length
        // are the driver's to set (4.1.4.9).
        let caps: [(u8, u16, u16); 5] = [
            (CAP_COMMON_CFG, COMMON_OFF, COMMON_LEN),
            (CAP_NOTIFY_CFG, NOTIFY_OFF, NOTIFY_LEN),
            (CAP_ISR_CFG, ISR_OFF, ISR_LEN),
            (CAP_DEVICE_CFG, DEVICE_OFF, dev_len),
            (CAP_PCI_CFG, 0, 0),
        ];
        let mut at: usize = 0x40;
        c.set_u8(CAPABILITIES_PTR, at as u8);
        for (i, &(kind, off, len)) in caps.iter().enumerate() {
            // struct virtio_pci_cap is 16 bytes; the notify one adds
            // notify_off_multiplier.
            // struct virtio_pci_notify_cap and virtio_pci_cfg_cap add 4 bytes.
            let cap_len: usize = if kind == CAP_NOTIFY_CFG || kind == CAP_PCI_CFG {
                20
            } else {
                16
            };
            let next = if i.saturating_add(1) < caps.len() {
                at.saturating_add(cap_len)
            } else {
                0
            };
            c.set_u8(at, CAP_VENDOR);
            c.set_u8(at.saturating_add(1), next as u8);
            c.set_u8(at.saturating_add(2), cap_len as u8);
            c.set_u8(at.saturating_add(3), kind);
            c.set_u8(at.saturating_add(4), 0); // BAR0
            c.set_u32(at.saturating_add(8), u32::from(off));
            c.set_u32(at.saturating_add(12), u32::from(len));
            if kind == CAP_NOTIFY_CFG {
                c.set_u32(at.saturating_add(16), 0);
            }
            if kind == CAP_PCI_CFG {
                c.set_writable(at.saturating_add(4), 1, 0xFF);
                c.set_writable(at.saturating_add(8), 4, 0xFFFF_FFFF);
                c.set_writable(at.saturating_add(12), 4, 0xFFFF_FFFF);
                c.set_writable(at.saturating_add(16), 4, 0xFFFF_FFFF);
            }
            at = next;
        }
        PciFunction {
            bus: 0,
            device,
            function: 0,
            config: c,
        }
    }

    /// The BAR0 access the PCI configuration access capability selects:
    /// (offset, length), when cap.bar, cap.offset and cap.length describe a
    /// valid aligned access (4.1.4.9.1).
    fn pci_cfg_window(config: &ConfigSpace) -> Option<(u16, u8)> {
        let bar = config.read(PCI_CFG_CAP_OFF.saturating_add(4), 1);
        let off = config.read(PCI_CFG_CAP_OFF.saturating_add(8), 4);
        let len = config.read(PCI_CFG_CAP_OFF.saturating_add(12), 4);
        let aligned = off & len.wrapping_sub(1) == 0;
        let inside = off.checked_add(len).is_some_and(|end| end <= BAR_SIZE);
        if bar != 0 || !matches!(len, 1 | 2 | 4) || !aligned || !inside {
            return None;
        }
        Some((off as u16, len as u8))
    }

    fn touches_pci_cfg_data(off: usize, size: u8) -> bool {
        off < PCI_CFG_DATA.saturating_add(4) && off.saturating_add(usize::from(size)) > PCI_CFG_DATA
    }

    /// For the bus, before a configuration read of this function at `off`:
    /// a read that touches pci_cfg_data performs the BAR0 read the
    /// capability selects and leaves its bytes there (4.1.4.9.2).
    pub fn pci_cfg_before_read(
        &mut self,
        config: &mut ConfigSpace,
        off: usize,
        size: u8,
    ) -> Effects {
        if !Self::touches_pci_cfg_data(off, size) {
            return Effects::default();
        }
        let Some((bar_off, len)) = Self::pci_cfg_window(config) else {
            return Effects::default();
        };
        let (value, e) = self.read(bar_off, len);
        let bytes = value.to_le_bytes();
        for (i, &b) in bytes.iter().enumerate().take(usize::from(len)) {
            config.set_u8(PCI_CFG_DATA.saturating_add(i), b);
        }
        e
    }

    /// For the bus, after a configuration write of this function at `off`:
    /// a write that touched pci_cfg_data performs the BAR0 write of its
    /// first cap.length bytes (4.1.4.9.2).
    pub fn pci_cfg_after_write(
        &mut self,
        config: &ConfigSpace,
        off: usize,
        size: u8,
        mem: &dyn GuestMem,
    ) -> Effects {
        if !Self::touches_pci_cfg_data(off, size) {
            return Effects::default();
        }
        let Some((bar_off, len)) = Self::pci_cfg_window(config) else {
            return Effects::default();
        };
        let value = config.read(PCI_CFG_DATA, usize::from(len));
        self.write(bar_off, len, value, mem)
    }

    /// A read of BAR0 at `offset` (`size` 1, 2 or 4 bytes).
    pub fn read(&mut self, offset: u16, size: u8) -> (u32, Effects) {
        let mut e = Effects::default();
        let size = usize::from(size.min(4));
        let mut bytes = [0u8; 4];
        let buf = bytes.get_mut(..size).unwrap_or(&mut []);
        if offset < COMMON_OFF.saturating_add(COMMON_LEN) {
            let image = self.common_image();
            for (d, &b) in buf.iter_mut().zip(image.iter().skip(usize::from(offset))) {
                *d = b;
            }
        } else if offset == ISR_OFF {
            // Read-to-clear; the line follows (4.1.4.5).
            if let Some(b) = buf.first_mut() {
                *b = self.isr;
            }
            self.isr = 0;
            self.sync_intx(&mut e);
        } else if (DEVICE_OFF..DEVICE_OFF.saturating_add(DEVICE_MAX_LEN)).contains(&offset) {
            self.dev
                .read_config(usize::from(offset.saturating_sub(DEVICE_OFF)), buf);
        }
        (u32::from_le_bytes(bytes), e)
    }

    /// A write of BAR0 at `offset`. A queue notification is served at once,
    /// within the budget.
    pub fn write(&mut self, offset: u16, size: u8, value: u32, mem: &dyn GuestMem) -> Effects {
        if offset < COMMON_OFF.saturating_add(COMMON_LEN) {
            return self.common_write(offset, size, value, mem);
        }
        if offset == NOTIFY_OFF && (size == 2 || size == 4) {
            let q = value as u16;
            if q < self.num_queues() {
                self.notified |= 1u64 << q;
            }
            // Before DRIVER_OK nothing is consumed (3.1.1); the notification
            // is kept and served when the driver sets it.
            return self.process(mem);
        }
        if (DEVICE_OFF..DEVICE_OFF.saturating_add(DEVICE_MAX_LEN)).contains(&offset) {
            let bytes = value.to_le_bytes();
            let data = bytes.get(..usize::from(size.min(4))).unwrap_or(&[]);
            self.dev
                .write_config(usize::from(offset.saturating_sub(DEVICE_OFF)), data);
        }
        Effects::default()
    }

    fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    fn common_image(&self) -> [u8; COMMON_LEN as usize] {
        let mut c = [0u8; COMMON_LEN as usize];
        let mut put = |off: u16, bytes: &[u8]| {
            for (d, &b) in c.iter_mut().skip(usize::from(off)).zip(bytes) {
                *d = b;
            }
        };
        let features = self.offered_features();
        let dev_feature = match self.device_feature_select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        let drv_feature = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        put(
            DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(DEVICE_FEATURE, &dev_feature.to_le_bytes());
        put(
            DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        put(DRIVER_FEATURE, &drv_feature.to_le_bytes());
        put(MSIX_CONFIG, &NO_VECTOR.to_le_bytes());
        put(NUM_QUEUES, &self.num_queues().to_le_bytes());
        put(DEVICE_STATUS, &[self.status]);
        put(CONFIG_GENERATION, &[self.config_generation]);
        put(QUEUE_SELECT, &self.queue_select.to_le_bytes());
        // A queue that doesn't exist reads size 0 (4.1.4.3).
        if let Some(q) = self.queues.get(usize::from(self.queue_select)) {
            put(QUEUE_SIZE, &q.size.to_le_bytes());
            put(QUEUE_MSIX_VECTOR, &NO_VECTOR.to_le_bytes());
            put(QUEUE_ENABLE, &u16::from(q.enabled).to_le_bytes());
            put(QUEUE_NOTIFY_OFF, &0u16.to_le_bytes());
            put(QUEUE_DESC, &q.desc.to_le_bytes());
            put(QUEUE_DRIVER, &q.driver.to_le_bytes());
            put(QUEUE_DEVICE, &q.device.to_le_bytes());
        } else {
            put(QUEUE_MSIX_VECTOR, &NO_VECTOR.to_le_bytes());
        }
        c
    }

    /// Common configuration writes, each with its natural width (4.1.3.1);
    /// other widths and read-only fields are ignored.
    fn common_write(&mut self, offset: u16, size: u8, value: u32, mem: &dyn GuestMem) -> Effects {
        let sel = usize::from(self.queue_select);
        let features_locked = self.status & status::FEATURES_OK != 0;
        match (offset, size) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = value,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = value,
            (DRIVER_FEATURE, 4) if !features_locked => match self.driver_feature_select {
                0 => {
                    self.driver_features = (self.driver_features & !0xFFFF_FFFF) | u64::from(value);
                }
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xFFFF_FFFF) | u64::from(value) << 32;
                }
                _ => {}
            },
            (DEVICE_STATUS, 1) => return self.write_status(value as u8, mem),
            (QUEUE_SELECT, 2) => self.queue_select = value as u16,
            (QUEUE_SIZE, 2) => {
                if let Some(q) = self.queues.get_mut(sel).filter(|q| !q.enabled) {
                    q.size = value as u16;
                }
            }
            (QUEUE_ENABLE, 2) if value == 1 => {
                // Writing 0 is not allowed to the driver (4.1.4.3.2): ignored.
                if let Some(q) = self.queues.get_mut(sel).filter(|q| !q.enabled) {
                    if let Err(err) = q.enable(mem) {
                        return self.fail(Fault::Queue(sel as u16, err));
                    }
                }
            }
            (QUEUE_DESC..=0x37, 4) => {
                if let Some(q) = self.queues.get_mut(sel).filter(|q| !q.enabled) {
                    let field = match offset & !7 {
                        QUEUE_DESC => &mut q.desc,
                        QUEUE_DRIVER => &mut q.driver,
                        _ => &mut q.device,
                    };
                    *field = if offset & 4 == 0 {
                        (*field & !0xFFFF_FFFF) | u64::from(value)
                    } else {
                        (*field & 0xFFFF_FFFF) | u64::from(value) << 32
                    };
                }
            }
            // MSI-X vectors (no MSI-X: they stay NO_VECTOR), read-only
            // fields, wrong widths.
            _ => {}
        }
        Effects::default()
    }

    /// The device status register (2.1, 3.1.1): 0 resets; FEATURES_OK is
    /// refused for a feature set the device can't accept (2.2.2); the
    /// driver can't clear bits or set DEVICE_NEEDS_RESET.
    fn write_status(&mut self, value: u8, mem: &dyn GuestMem) -> Effects {
        if value == 0 {
            let mut e = Effects::default();
            self.device_reset();
            self.sync_intx(&mut e);
            return e;
        }
        let old = self.status;
        let mut new = (value & !status::DEVICE_NEEDS_RESET) | old;
        if new & status::FEATURES_OK != 0
            && old & status::FEATURES_OK == 0
            && !features_acceptable(self.offered_features(), self.driver_features)
        {
            new &= !status::FEATURES_OK;
        }
        self.status = new;
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            if new & status::FEATURES_OK == 0 {
                return self.fail(Fault::DriverOkWithoutFeatures);
            }
            self.dev.activate(self.driver_features);
            return self.process(mem);
        }
        Effects::default()
    }

    /// Device reset (2.4): everything the driver set up is forgotten (the
    /// INTx line follows the cleared ISR on the caller's `sync_intx`).
    pub fn device_reset(&mut self) {
        self.dev.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
        self.isr = 0;
        self.notified = 0;
    }

    /// The device's configuration changed (capacity, ...): a new generation
    /// and a configuration change notification.
    pub fn config_changed(&mut self) -> Effects {
        let mut e = Effects::default();
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.isr |= ISR_CONFIG;
            self.sync_intx(&mut e);
        }
        e
    }

    /// Enters DEVICE_NEEDS_RESET; after DRIVER_OK the driver gets a
    /// configuration change notification (2.1.2).
    fn fail(&mut self, fault: Fault) -> Effects {
        let mut e = Effects {
            broke: Some(fault),
            ..Effects::default()
        };
        self.status |= status::DEVICE_NEEDS_RESET;
        self.notified = 0;
        if self.status & status::DRIVER_OK != 0 {
            self.isr |= ISR_CONFIG;
        }
        self.sync_intx(&mut e);
        e
    }

    fn sync_intx(&mut self, e: &mut Effects) {
        let level = self.isr != 0;
        if level != self.intx {
            self.intx = level;
            e.intx = Some(level);
        }
    }

    fn live(&self) -> bool {
        let s = self.status;
        s & status::DRIVER_OK != 0 && s & (status::DEVICE_NEEDS_RESET | status::FAILED) == 0
    }

    /// Serves notified queues, up to the budget.
    pub fn process(&mut self, mem: &dyn GuestMem) -> Effects {
        let mut e = Effects::default();
        if !self.live() {
            return e;
        }
        let features = self.negotiated_features();
        let qf = QueueFeatures {
            indirect: features & VIRTIO_F_INDIRECT_DESC != 0,
            event_idx: features & VIRTIO_F_EVENT_IDX != 0,
        };
        let mut budget = self.budget;
        let mut notify = false;
        for (i, q) in self.queues.iter_mut().enumerate() {
            let bit = 1u64 << i;
            if self.notified & bit == 0 {
                continue;
            }
            let index = i as u16;
            match serve(
                &mut self.dev,
                index,
                q,
                &mut self.chain,
                mem,
                qf,
                &mut budget,
            ) {
                Ok((more, n)) => {
                    notify |= n;
                    if !more {
                        self.notified &= !bit;
                    }
                }
                Err(err) => return self.fail(Fault::Queue(index, err)),
            }
        }
        if notify {
            self.isr |= ISR_QUEUE;
            self.sync_intx(&mut e);
        }
        e.work_left = self.notified != 0;
        e
    }
}

impl<D: VirtioDevice> VirtioPci<D> {
    /// Delivers chains the device finished after `handle` returned (a
    /// network disk's replies): used ring entries, then a used buffer
    /// notification where due. Called from the core's poll of the backend.
    pub fn complete(&mut self, mem: &dyn GuestMem) -> Effects {
        let mut e = Effects::default();
        // Broken or not running: completions wait in the backend, and a
        // reset makes the device drop them.
        if !self.live() {
            return e;
        }
        let event_idx = self.negotiated_features() & VIRTIO_F_EVENT_IDX != 0;
        let queues = &mut self.queues;
        let mut touched = 0u64;
        let r = self.dev.poll_done(mem, &mut |index, head, used| {
            let q = queues
                .get_mut(usize::from(index))
                .ok_or(QueueError::HeadOutOfRange(index))?;
            q.push_used(mem, head, used)?;
            touched |= 1u64.checked_shl(u32::from(index)).unwrap_or(0);
            Ok(())
        });
        if let Err(err) = r {
            return self.fail(Fault::Queue(0, err));
        }
        let mut notify = false;
        for (i, q) in self.queues.iter_mut().enumerate() {
            if touched & 1u64.checked_shl(i as u32).unwrap_or(0) == 0 {
                continue;
            }
            match q.needs_notification(mem, event_idx) {
                Ok(n) => notify |= n,
                Err(err) => return self.fail(Fault::Queue(i as u16, err)),
            }
        }
        if notify {
            self.isr |= ISR_QUEUE;
            self.sync_intx(&mut e);
        }
        e
    }
}

/// The transport's complete state (the device's negotiated features are
/// derived from it; disk contents belong to the backend, not to it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    pub driver_features: u64,
    pub status: u8,
    pub config_generation: u8,
    pub queue_select: u16,
    pub isr: u8,
    pub intx: bool,
    pub notified: u64,
    pub queues: Vec<SplitQueue>,
}

/// Status bits with no meaning (virtio 1.2 2.1).
const STATUS_RESERVED: u8 = 0x30;

impl<D: VirtioDevice> VirtioPci<D> {
    /// Whether `s` is a state this transport can be in (changes nothing).
    pub fn check_state(&self, s: &TransportState) -> Result<(), StateError> {
        use crate::state::ensure;
        ensure(s.queues.len() == self.queues.len(), "queue count")?;
        ensure(s.status & STATUS_RESERVED == 0, "device status bits")?;
        if s.status & status::FEATURES_OK != 0 {
            ensure(
                features_acceptable(self.offered_features(), s.driver_features),
                "negotiated features",
            )?;
        }
        ensure(
            s.status & status::DRIVER_OK == 0 || s.status & status::FEATURES_OK != 0,
            "DRIVER_OK without FEATURES_OK",
        )?;
        let live = s.status & status::DRIVER_OK != 0
            && s.status & (status::DEVICE_NEEDS_RESET | status::FAILED) == 0;
        let max = self.dev.queue_max_size().min(super::queue::MAX_QUEUE_SIZE);
        for q in &s.queues {
            q.check_saved(max, live)?;
        }
        let all = 1u64
            .checked_shl(self.queues.len() as u32)
            .map_or(u64::MAX, |b| b.wrapping_sub(1));
        ensure(s.notified & !all == 0, "notified queues")?;
        ensure(s.isr & !(ISR_QUEUE | ISR_CONFIG) == 0, "ISR bits")?;
        ensure(s.intx == (s.isr != 0), "INTx level")?;
        Ok(())
    }

    /// Takes a checked state: the device is reset (it holds no request:
    /// a state is saved only without any) and activated again with the
    /// negotiated features.
    fn apply_state(&mut self, s: &TransportState) {
        self.device_feature_select = s.device_feature_select;
        self.driver_feature_select = s.driver_feature_select;
        self.driver_features = s.driver_features;
        self.status = s.status;
        self.config_generation = s.config_generation;
        self.queue_select = s.queue_select;
        self.isr = s.isr;
        self.intx = s.intx;
        self.notified = s.notified;
        self.queues.clone_from(&s.queues);
        self.dev.reset();
        if s.status & status::DRIVER_OK != 0 {
            self.dev.activate(self.negotiated_features());
        }
    }

    /// Takes the transport's state and the device's identity state whole,
    /// or changes nothing and says why (another kind of device, another
    /// disk, an impossible queue).
    pub fn restore_with(
        &mut self,
        s: &TransportState,
        identity: &super::Identity,
    ) -> Result<(), StateError> {
        self.check_state(s)?;
        self.dev.take_identity(identity)?;
        self.apply_state(s);
        Ok(())
    }
}

impl<D: VirtioDevice> DeviceState for VirtioPci<D> {
    type Data = TransportState;
    const VERSION: u32 = 1;

    fn save(&self) -> State<TransportState> {
        State {
            version: Self::VERSION,
            data: TransportState {
                device_feature_select: self.device_feature_select,
                driver_feature_select: self.driver_feature_select,
                driver_features: self.driver_features,
                status: self.status,
                config_generation: self.config_generation,
                queue_select: self.queue_select,
                isr: self.isr,
                intx: self.intx,
                notified: self.notified,
                queues: self.queues.clone(),
            },
        }
    }

    fn restore(&mut self, state: &State<TransportState>) -> Result<(), StateError> {
        check_version(state.version, Self::VERSION)?;
        self.check_state(&state.data)?;
        self.apply_state(&state.data);
        Ok(())
    }

    fn reset(&mut self) {
        self.device_reset();
        self.config_generation = 0;
        self.intx = false;
    }
}

/// Serves one queue until it is empty or the budget is spent; returns
/// whether chains are left and whether the driver is to be notified.
fn serve<D: VirtioDevice>(
    dev: &mut D,
    index: u16,
    q: &mut SplitQueue,
    chain: &mut Chain,
    mem: &dyn GuestMem,
    qf: QueueFeatures,
    budget: &mut Budget,
) -> Result<(bool, bool), QueueError> {
    let mut more = false;
    if q.enabled {
        loop {
            if budget.chains == 0 || budget.bytes == 0 {
                more = dev.can_serve(index) && q.has_work(mem)?;
                break;
            }
            if !dev.can_serve(index) {
                break;
            }
            if !q.pop(mem, qf, chain)? {
                if !qf.event_idx {
                    break;
                }
                // Ask for the next notification, then look again: the
                // driver may have added a chain before seeing it (2.7.10).
                q.publish_avail_event(mem)?;
                if !q.has_work(mem)? {
                    break;
                }
                continue;
            }
            let cost = u64::from(chain.readable_len())
                .saturating_add(u64::from(chain.writable_len()))
                .max(1);
            // A chain the device finishes later reaches the used ring
            // through `complete`.
            if let Some(used) = dev.handle(index, chain, mem)? {
                q.push_used(mem, chain.head, used)?;
            }
            budget.chains = budget.chains.saturating_sub(1);
            budget.bytes = budget.bytes.saturating_sub(cost);
        }
    }
    let notify = q.needs_notification(mem, qf.event_idx)?;
    Ok((more, notify))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::blk::{self, Blk};
    use crate::virtio::block::MemDisk;
    use crate::virtio::queue::tests::{desc, offer, AVAIL, DESC, USED};
    use crate::virtio::queue::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
    use crate::virtio::status::*;
    use crate::virtio::testmem::TestMem;

    type Dev = VirtioPci<Blk<MemDisk>>;

    fn dev(ro: bool) -> Dev {
        let data = (0..64 * 512).map(|i| (i % 251) as u8).collect();
        VirtioPci::new(Blk::new(MemDisk::new(data, ro).unwrap(), b"serial"))
    }

    fn w<D: VirtioDevice>(
        d: &mut VirtioPci<D>,
        mem: &TestMem,
        off: u16,
        size: u8,
        v: u32,
    ) -> Effects {
        d.write(off, size, v, mem)
    }
    fn r<D: VirtioDevice>(d: &mut VirtioPci<D>, off: u16, size: u8) -> u32 {
        d.read(off, size).0
    }

    /// Linux's order (3.1.1): reset, ACKNOWLEDGE, DRIVER, features,
    /// FEATURES_OK, queue set-up, DRIVER_OK.
    fn bring_up<D: VirtioDevice>(
        d: &mut VirtioPci<D>,
        mem: &TestMem,
        features: u64,
        size: u16,
    ) -> Effects {
        w(d, mem, DEVICE_STATUS, 1, 0);
        w(d, mem, DEVICE_STATUS, 1, u32::from(ACKNOWLEDGE));
        w(d, mem, DEVICE_STATUS, 1, u32::from(ACKNOWLEDGE | DRIVER));
        w(d, mem, DRIVER_FEATURE_SELECT, 4, 0);
        w(d, mem, DRIVER_FEATURE, 4, features as u32);
        w(d, mem, DRIVER_FEATURE_SELECT, 4, 1);
        w(d, mem, DRIVER_FEATURE, 4, (features >> 32) as u32);
        w(
            d,
            mem,
            DEVICE_STATUS,
            1,
            u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
        );
        assert_ne!(r(d, DEVICE_STATUS, 1) as u8 & FEATURES_OK, 0);
        w(d, mem, QUEUE_SELECT, 2, 0);
        w(d, mem, QUEUE_SIZE, 2, u32::from(size));
        w(d, mem, QUEUE_DESC, 4, DESC as u32);
        w(d, mem, QUEUE_DESC + 4, 4, 0);
        w(d, mem, QUEUE_DRIVER, 4, AVAIL as u32);
        w(d, mem, QUEUE_DRIVER + 4, 4, 0);
        w(d, mem, QUEUE_DEVICE, 4, USED as u32);
        w(d, mem, QUEUE_DEVICE + 4, 4, 0);
        w(d, mem, QUEUE_ENABLE, 2, 1);
        w(
            d,
            mem,
            DEVICE_STATUS,
            1,
            u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
        )
    }

    const FEATS: u64 = VIRTIO_F_VERSION_1 | blk::F_FLUSH;

    /// A read request of sector `sector` into 0x20000 + 0x1000 * slot with
    /// descriptors 3 * slot ..: header at 0x8000 + 16 * slot, status at
    /// 0x9000 + slot.
    fn read_req(mem: &TestMem, slot: u16, sector: u64) -> u16 {
        let h = 0x8000 + 16 * u64::from(slot);
        let mut hdr = vec![0u8; 16];
        hdr[8..].copy_from_slice(&sector.to_le_bytes());
        mem.put(h, &hdr);
        let d0 = 3 * slot;
        desc(mem, DESC, d0, h, 16, DESC_F_NEXT, d0 + 1);
        desc(
            mem,
            DESC,
            d0 + 1,
            0x20000 + 0x1000 * u64::from(slot),
            512,
            DESC_F_NEXT | DESC_F_WRITE,
            d0 + 2,
        );
        desc(
            mem,
            DESC,
            d0 + 2,
            0x9000 + u64::from(slot),
            1,
            DESC_F_WRITE,
            0,
        );
        d0
    }

    #[test]
    fn capabilities_describe_the_io_bar() {
        let d = dev(false);
        let f = d.pci_function(4);
        let c = &f.config;
        assert_eq!(c.read(0, 4), 0x1042_1AF4);
        assert_eq!(c.read(0x08, 1), 1, "revision 1");
        assert_eq!(c.read(0x0B, 1), 0x01);
        assert_eq!(c.read(0x2E, 2), 0x40);
        assert_ne!(c.read(STATUS, 2) & 0x10, 0);
        assert_eq!(c.read(0x3D, 1), 1, "INTA");
        let mut cfg = c.clone();
        cfg.write(0x10, 4, 0xFFFF_FFFF);
        assert_eq!(cfg.read(0x10, 4), 0xFFFF_FF01, "256-byte I/O BAR");
        let mut at = c.read(0x34, 1) as usize;
        let mut found = Vec::new();
        while at != 0 {
            assert_eq!(c.read(at, 1), 0x09);
            let kind = c.read(at + 3, 1) as u8;
            assert_eq!(c.read(at + 4, 1), 0, "BAR0");
            found.push((
                kind,
                c.read(at + 8, 4),
                c.read(at + 12, 4),
                c.read(at + 2, 1),
            ));
            at = c.read(at + 1, 1) as usize;
        }
        assert_eq!(
            found,
            [
                (CAP_COMMON_CFG, 0x00, 0x40, 16),
                (CAP_NOTIFY_CFG, 0x40, 4, 20),
                (CAP_ISR_CFG, 0x44, 1, 16),
                (CAP_DEVICE_CFG, 0x80, blk::CONFIG_LEN as u32, 16),
                (CAP_PCI_CFG, 0, 0, 20),
            ]
        );
        // notify_off_multiplier 0: one notify address.
        assert_eq!(c.read(0x50 + 16, 4), 0);
    }

    #[test]
    fn common_config_registers() {
        let mem = TestMem::new(0x40000);
        let mut d = dev(true);
        w(&mut d, &mem, DEVICE_FEATURE_SELECT, 4, 0);
        let lo = r(&mut d, DEVICE_FEATURE, 4);
        assert_ne!(lo & (1 << 28), 0, "INDIRECT_DESC");
        assert_ne!(lo & (1 << 29), 0, "EVENT_IDX");
        assert_ne!(lo & (1 << 5), 0, "RO");
        w(&mut d, &mem, DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(r(&mut d, DEVICE_FEATURE, 4), 1, "VERSION_1");
        w(&mut d, &mem, DEVICE_FEATURE_SELECT, 4, 2);
        assert_eq!(r(&mut d, DEVICE_FEATURE, 4), 0);
        assert_eq!(r(&mut d, NUM_QUEUES, 2), 1);
        assert_eq!(r(&mut d, MSIX_CONFIG, 2), 0xFFFF);
        w(&mut d, &mem, MSIX_CONFIG, 2, 0);
        assert_eq!(r(&mut d, MSIX_CONFIG, 2), 0xFFFF, "no MSI-X");
        assert_eq!(r(&mut d, QUEUE_MSIX_VECTOR, 2), 0xFFFF);
        assert_eq!(r(&mut d, QUEUE_SIZE, 2), 256);
        w(&mut d, &mem, QUEUE_SELECT, 2, 1);
        assert_eq!(r(&mut d, QUEUE_SIZE, 2), 0, "no queue 1");
        w(&mut d, &mem, QUEUE_SELECT, 2, 0);
        w(&mut d, &mem, QUEUE_DESC, 4, 0x1234_5000);
        w(&mut d, &mem, QUEUE_DESC + 4, 4, 0xAB);
        assert_eq!(r(&mut d, QUEUE_DESC, 4), 0x1234_5000);
        assert_eq!(r(&mut d, QUEUE_DESC + 4, 4), 0xAB);
        assert_eq!(d.queue(0).unwrap().desc, 0xAB_1234_5000);
        // Wrong width: ignored.
        w(&mut d, &mem, QUEUE_SIZE, 4, 16);
        assert_eq!(r(&mut d, QUEUE_SIZE, 2), 256);
        // Device config through the BAR: capacity 64 sectors.
        assert_eq!(r(&mut d, DEVICE_OFF, 4), 64);
        assert_eq!(r(&mut d, DEVICE_OFF + 4, 4), 0);
        assert_eq!(r(&mut d, DEVICE_OFF + 12, 2), 254);
    }

    #[test]
    fn feature_negotiation() {
        let mem = TestMem::new(0x40000);
        let offered = dev(false).offered_features();
        assert!(features_acceptable(offered, VIRTIO_F_VERSION_1));
        assert!(!features_acceptable(offered, 0), "VERSION_1 required");
        assert!(!features_acceptable(offered, VIRTIO_F_VERSION_1 | 1 << 34));
        assert!(!features_acceptable(
            offered,
            VIRTIO_F_VERSION_1 | blk::F_RO
        ));
        for bad in [
            blk::F_FLUSH,
            VIRTIO_F_VERSION_1 | 1 << 0,
            VIRTIO_F_VERSION_1 | 1 << 33,
        ] {
            let mut d = dev(false);
            w(&mut d, &mem, DRIVER_FEATURE_SELECT, 4, 0);
            w(&mut d, &mem, DRIVER_FEATURE, 4, bad as u32);
            w(&mut d, &mem, DRIVER_FEATURE_SELECT, 4, 1);
            w(&mut d, &mem, DRIVER_FEATURE, 4, (bad >> 32) as u32);
            w(
                &mut d,
                &mem,
                DEVICE_STATUS,
                1,
                u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
            );
            assert_eq!(
                r(&mut d, DEVICE_STATUS, 1),
                u32::from(ACKNOWLEDGE | DRIVER),
                "{bad:#x}"
            );
            assert_eq!(d.negotiated_features(), 0);
            // DRIVER_OK without FEATURES_OK: broken.
            let e = w(
                &mut d,
                &mem,
                DEVICE_STATUS,
                1,
                u32::from(ACKNOWLEDGE | DRIVER | DRIVER_OK),
            );
            assert_eq!(e.broke, Some(Fault::DriverOkWithoutFeatures));
            assert_ne!(d.status() & DEVICE_NEEDS_RESET, 0);
        }
        let mut d = dev(false);
        bring_up(&mut d, &mem, FEATS | VIRTIO_F_EVENT_IDX, 8);
        assert_eq!(d.negotiated_features(), FEATS | VIRTIO_F_EVENT_IDX);
        // Locked after FEATURES_OK.
        w(&mut d, &mem, DRIVER_FEATURE_SELECT, 4, 0);
        w(&mut d, &mem, DRIVER_FEATURE, 4, 0);
        assert_eq!(d.negotiated_features(), FEATS | VIRTIO_F_EVENT_IDX);
    }

    #[test]
    fn request_interrupt_and_isr_read_to_clear() {
        let mem = TestMem::new(0x40000);
        let mut d = dev(false);
        mem.put(USED, &[0xFF, 0xFF]);
        let e = bring_up(&mut d, &mem, FEATS, 8);
        assert_eq!(e, Effects::default());
        assert_eq!(mem.get(USED, 2), [0, 0], "used flags 0 (2.7.10)");
        let head = read_req(&mem, 0, 3);
        offer(&mem, 8, &[head]);
        let e = w(&mut d, &mem, NOTIFY_OFF, 2, 0);
        assert_eq!(e.intx, Some(true));
        assert!(!e.work_left);
        assert!(d.intx_asserted());
        assert!(d.intx_line(0x0005));
        assert!(!d.intx_line(0x0405), "Interrupt Disable");
        assert_eq!(mem.get(0x9000, 1), [blk::S_OK]);
        assert_eq!(mem.get(0x20000, 512), d.dev.backend().data()[1536..2048]);
        // Used ring: idx 1, element {0, 513}.
        assert_eq!(mem.get(USED + 2, 2), [1, 0]);
        assert_eq!(mem.get(USED + 4, 8), [0, 0, 0, 0, 1, 2, 0, 0]);
        let (isr, e) = d.read(ISR_OFF, 1);
        assert_eq!(isr, u32::from(ISR_QUEUE));
        assert_eq!(e.intx, Some(false));
        assert_eq!(d.read(ISR_OFF, 1), (0, Effects::default()));
    }

    /// A backend that answers later: the used entry and the interrupt come
    /// with `complete`, not with the notify; after a reset a late answer
    /// changes nothing.
    #[test]
    fn late_completion_then_interrupt() {
        use crate::virtio::blk::slow::SlowDisk;
        let mem = TestMem::new(0x40000);
        let mut d = VirtioPci::new(Blk::new(SlowDisk::new(64), b"slow"));
        bring_up(&mut d, &mem, FEATS, 8);
        let head = read_req(&mem, 0, 3);
        offer(&mem, 8, &[head]);
        let e = w(&mut d, &mem, NOTIFY_OFF, 2, 0);
        assert_eq!(e.intx, None, "nothing finished yet");
        assert_eq!(mem.get(USED + 2, 2), [0, 0]);
        assert_eq!(d.complete(&mem), Effects::default());
        d.dev.backend_mut().finish(0, false);
        let e = d.complete(&mem);
        assert_eq!(e.intx, Some(true));
        assert_eq!(mem.get(0x9000, 1), [blk::S_OK]);
        assert_eq!(mem.get(USED + 2, 2), [1, 0]);
        assert_eq!(mem.get(USED + 4, 8), [0, 0, 0, 0, 1, 2, 0, 0]);
        let want: Vec<u8> = (1536..2048).map(|i| (i % 253) as u8).collect();
        assert_eq!(mem.get(0x20000, 512), want);
        assert_eq!(d.read(ISR_OFF, 1).0, u32::from(ISR_QUEUE));

        // In flight across a device reset: dropped.
        let head = read_req(&mem, 1, 4);
        offer(&mem, 8, &[head]);
        w(&mut d, &mem, NOTIFY_OFF, 2, 0);
        w(&mut d, &mem, DEVICE_STATUS, 1, 0);
        // The driver sets its rings up afresh and reuses the buffers.
        mem.put(USED, &[0; 12]);
        mem.put(0x9001, &[0x77]);
        d.dev.backend_mut().finish(0, false);
        bring_up(&mut d, &mem, FEATS, 8);
        assert_eq!(d.complete(&mem), Effects::default());
        assert_eq!(mem.get(0x9001, 1), [0x77], "no status after the reset");
        assert_eq!(mem.get(USED + 2, 2), [0, 0], "no used entry");
    }

    #[test]
    fn no_interrupt_flag_and_event_idx() {
        let mem = TestMem::new(0x40000);
        let mut d = dev(false);
        bring_up(&mut d, &mem, FEATS, 8);
        mem.put(AVAIL, &1u16.to_le_bytes()); // VIRTQ_AVAIL_F_NO_INTERRUPT
        offer(&mem, 8, &[read_req(&mem, 0, 0)]);
        let e = w(&mut d, &mem, NOTIFY_OFF, 2, 0);
        assert_eq!(e.intx, None);
        assert_eq!(mem.get(USED + 2, 2), [1, 0], "served all the same");

        let mem = TestMem::new(0x40000);
        let mut d = dev(false);
        bring_up(&mut d, &mem, FEATS | VIRTIO_F_EVENT_IDX, 8);
        let used_event = AVAIL + 4 + 2 * 8;
        let avail_event = USED + 4 + 8 * 8;
        // used_event 1: no interrupt for the first completion.
        mem.put(used_event, &1u16.to_le_bytes());
        offer(&mem, 8, &[read_req(&mem, 0, 0)]);
        let e = w(&mut d, &mem, NOTIFY_OFF, 2, 0);
        assert_eq!(e.intx, None);
        assert_eq!(mem.get(avail_event, 2), [1, 0], "notify me at avail 1");
        offer(&mem, 8, &[read_req(&mem, 1, 1)]);
        let e = w(&mut d, &mem, NOTIFY_OFF, 2, 0);
        assert_eq!(e.intx, Some(true));
        assert_eq!(mem.get(avail_event, 2), [2, 0]);
    }

    #[test]
    fn notification_before_driver_ok_waits() {
        let mem = TestMem::new(0x40000);
        let mut d = dev(false);
        w(
            &mut d,
            &mem,
            DEVICE_STATUS,
            1,
            u32::from(ACKNOWLEDGE | DRIVER),
        );
        w(&mut d, &mem, DRIVER_FEATURE_SELECT, 4, 1);
        w(&mut d, &mem, DRIVER_FEATURE, 4, 1);
        w(
            &mut d,
            &mem,
            DEVICE_STATUS,
            1,
            u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
        );
        w(&mut d, &mem, QUEUE_SIZE, 2, 8);
        w(&mut d, &mem, QUEUE_DESC, 4, DESC as u32);
        w(&mut d, &mem, QUEUE_DRIVER, 4, AVAIL as u32);
        w(&mut d, &mem, QUEUE_DEVICE, 4, USED as u32);
        w(&mut d, &mem, QUEUE_ENABLE, 2, 1);
        offer(&mem, 8, &[read_req(&mem, 0, 0)]);
        let e = w(&mut d, &mem, NOTIFY_OFF, 2, 0);
        assert_eq!(e, Effects::default());
        assert_eq!(mem.get(USED + 2, 2), [0, 0], "nothing consumed (3.1.1)");
        assert_eq!(mem.get(0x9000, 1), [0]);
        let e = w(
            &mut d,
            &mem,
            DEVICE_STATUS,
            1,
            u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
        );
        assert_eq!(e.intx, Some(true));
        assert_eq!(mem.get(USED + 2, 2), [1, 0]);
    }

    #[test]
    fn bad_queue_size_marks_needs_reset() {
        let mem = TestMem::new(0x40000);
        for size in [0u16, 6, 512] {
            let mut d = dev(false);
            w(
                &mut d,
                &mem,
                DEVICE_STATUS,
                1,
                u32::from(ACKNOWLEDGE | DRIVER),
            );
            w(&mut d, &mem, DRIVER_FEATURE_SELECT, 4, 1);
            w(&mut d, &mem, DRIVER_FEATURE, 4, 1);
            w(
                &mut d,
                &mem,
                DEVICE_STATUS,
                1,
                u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
            );
            w(&mut d, &mem, QUEUE_SIZE, 2, u32::from(size));
            w(&mut d, &mem, QUEUE_DESC, 4, DESC as u32);
            w(&mut d, &mem, QUEUE_DRIVER, 4, AVAIL as u32);
            w(&mut d, &mem, QUEUE_DEVICE, 4, USED as u32);
            let e = w(&mut d, &mem, QUEUE_ENABLE, 2, 1);
            assert_eq!(e.broke, Some(Fault::Queue(0, QueueError::BadSize(size))));
            assert_eq!(e.intx, None, "before DRIVER_OK: no config interrupt");
            assert_ne!(r(&mut d, DEVICE_STATUS, 1) as u8 & DEVICE_NEEDS_RESET, 0);
            assert_eq!(r(&mut d, QUEUE_ENABLE, 2), 0);
            // Reset clears it.
            w(&mut d, &mem, DEVICE_STATUS, 1, 0);
            assert_eq!(r(&mut d, DEVICE_STATUS, 1), 0);
            assert_eq!(r(&mut d, QUEUE_SIZE, 2), 256);
        }
    }

    #[test]
    fn hostile_chain_breaks_device_and_stops_processing() {
        let mem = TestMem::new(0x40000);
        let mut d = dev(false);
        bring_up(&mut d, &mem, FEATS, 8);
        // A loop: 0 -> 1 -> 0.
        desc(&mem, DESC, 0, 0x8000, 16, DESC_F_NEXT, 1);
        desc(&mem, DESC, 1, 0x8000, 16, DESC_F_NEXT, 0);
        offer(&mem, 8, &[0]);
        let e = w(&mut d, &mem, NOTIFY_OFF, 2, 0);
        assert_eq!(e.broke, Some(Fault::Queue(0, QueueError::ChainTooLong)));
        assert_eq!(e.intx, Some(true), "config change notification (2.1.2)");
        assert_eq!(d.read(ISR_OFF, 1).0, u32::from(ISR_CONFIG));
        assert_ne!(d.status() & DEVICE_NEEDS_RESET, 0);
        // The driver can't clear NEEDS_RESET by writing status.
        w(&mut d, &mem, DEVICE_STATUS, 1, 0x0F);
        assert_ne!(d.status() & DEVICE_NEEDS_RESET, 0);
        // Nothing more is served until reset.
        offer(&mem, 8, &[read_req(&mem, 1, 0)]);
        assert_eq!(w(&mut d, &mem, NOTIFY_OFF, 2, 0), Effects::default());
        assert_eq!(mem.get(USED + 2, 2), [0, 0]);
        // After a reset and a new set-up the device works again.
        for i in 0..8 {
            mem.put(AVAIL + 2 * i, &[0, 0]);
        }
        bring_up(&mut d, &mem, FEATS, 8);
        offer(&mem, 8, &[read_req(&mem, 0, 0)]);
        let e = w(&mut d, &mem, NOTIFY_OFF, 2, 0);
        assert_eq!(e.broke, None);
        assert_eq!(mem.get(0x9000, 1), [blk::S_OK]);
    }

    #[test]
    fn indirect_needs_negotiation() {
        let mem = TestMem::new(0x40000);
        // Negotiated: served.
        let mut d = dev(false);
        bring_up(&mut d, &mem, FEATS | VIRTIO_F_INDIRECT_DESC, 8);
        read_req(&mem, 0, 2);
        // Copy descriptors 0..3 into an indirect table at 0xA000.
        let t = mem.get(DESC, 48);
        mem.put(0xA000, &t);
        desc(&mem, DESC, 5, 0xA000, 48, DESC_F_INDIRECT, 0);
        offer(&mem, 8, &[5]);
        let e = w(&mut d, &mem, NOTIFY_OFF, 2, 0);
        assert_eq!(e.broke, None);
        assert_eq!(mem.get(USED + 4, 4), [5, 0, 0, 0]);
        // Not negotiated: broken.
        let mem2 = TestMem::new(0x40000);
        mem2.put(0, &mem.get(0, 0x40000));
        mem2.put(AVAIL + 2, &[0, 0]);
        offer(&mem2, 8, &[5]);
        let mut d = dev(false);
        bring_up(&mut d, &mem2, FEATS, 8);
        let e = w(&mut d, &mem2, NOTIFY_OFF, 2, 0);
        assert_eq!(
            e.broke,
            Some(Fault::Queue(0, QueueError::IndirectNotNegotiated))
        );
    }

    #[test]
    fn flooding_is_bounded_by_the_budget() {
        let mem = TestMem::new(0x80000);
        let mut d = dev(false);
        d.set_budget(Budget {
            chains: 3,
            bytes: u64::MAX,
        });
        bring_up(&mut d, &mem, FEATS, 16);
        let heads: Vec<u16> = (0..5).map(|s| read_req(&mem, s, u64::from(s))).collect();
        offer(&mem, 16, &heads);
        let e = w(&mut d, &mem, NOTIFY_OFF, 2, 0);
        assert!(e.work_left);
        assert_eq!(mem.get(USED + 2, 2), [3, 0], "three served");
        let e = d.process(&mem);
        assert!(!e.work_left);
        assert_eq!(mem.get(USED + 2, 2), [5, 0]);
        // A byte budget: one chain at least per call.
        d.set_budget(Budget {
            chains: 100,
            bytes: 1,
        });
        let heads: Vec<u16> = (0..2).map(|s| read_req(&mem, s, 0)).collect();
        offer(&mem, 16, &heads);
        assert!(w(&mut d, &mem, NOTIFY_OFF, 2, 0).work_left);
        assert_eq!(mem.get(USED + 2, 2), [6, 0]);
        assert!(!d.process(&mem).work_left);
        assert_eq!(mem.get(USED + 2, 2), [7, 0]);
    }

    #[test]
    fn queue_outside_ram_and_bad_notify() {
        let mem = TestMem::new(0x40000);
        let mut d = dev(false);
        bring_up(&mut d, &mem, FEATS, 8);
        // Notify of a queue that doesn't exist: nothing.
        assert_eq!(w(&mut d, &mem, NOTIFY_OFF, 2, 7), Effects::default());
        // A ring outside RAM is refused at enable.
        let mut d = dev(false);
        w(
            &mut d,
            &mem,
            DEVICE_STATUS,
            1,
            u32::from(ACKNOWLEDGE | DRIVER),
        );
        w(&mut d, &mem, QUEUE_SIZE, 2, 8);
        w(&mut d, &mem, QUEUE_DESC, 4, 0x1000);
        w(&mut d, &mem, QUEUE_DESC + 4, 4, 1);
        let e = w(&mut d, &mem, QUEUE_ENABLE, 2, 1);
        assert_eq!(e.broke, Some(Fault::Queue(0, QueueError::RingOutsideRam)));
    }

    #[test]
    fn state_round_trip() {
        let mem = TestMem::new(0x40000);
        let mut busy = dev(false);
        bring_up(&mut busy, &mem, FEATS | VIRTIO_F_EVENT_IDX, 8);
        offer(&mem, 8, &[read_req(&mem, 0, 0)]);
        w(&mut busy, &mem, NOTIFY_OFF, 2, 0);
        assert!(busy.intx_asserted());
        crate::state::tests::round_trip_values(&mut busy, dev(false));
        // A restored device carries on: its queue position and features.
        let mem = TestMem::new(0x40000);
        let mut a = dev(false);
        bring_up(&mut a, &mem, FEATS, 8);
        offer(&mem, 8, &[read_req(&mem, 0, 0)]);
        w(&mut a, &mem, NOTIFY_OFF, 2, 0);
        a.read(ISR_OFF, 1);
        let saved = a.save();
        let mut b = dev(false);
        b.restore(&saved).unwrap();
        offer(&mem, 8, &[read_req(&mem, 1, 0)]);
        let e = w(&mut b, &mem, NOTIFY_OFF, 2, 0);
        assert_eq!(e.broke, None);
        assert_eq!(mem.get(USED + 2, 2), [2, 0]);
        // Refused: a queue size the device can't have, a line that
        // disagrees with the ISR.
        let mut bad = saved.clone();
        bad.data.queues[0].size = 6;
        assert_eq!(b.restore(&bad), Err(StateError::Invalid("queue size")));
        let mut bad = saved.clone();
        bad.data.intx = true;
        assert_eq!(b.restore(&bad), Err(StateError::Invalid("INTx level")));
        let mut bad = saved;
        bad.data.notified = 2;
        assert_eq!(b.restore(&bad), Err(StateError::Invalid("notified queues")));
    }

    #[test]
    fn pci_configuration_access_window() {
        let mem = TestMem::new(0x40000);
        let mut d = dev(false);
        let mut cfg = d.pci_function(4).config;
        let cap = PCI_CFG_CAP_OFF;
        assert_eq!(cfg.read(cap + 3, 1), u32::from(CAP_PCI_CFG));
        let set = |cfg: &mut ConfigSpace, off: u32, len: u32| {
            cfg.write(cap + 4, 1, 0);
            cfg.write(cap + 8, 4, off);
            cfg.write(cap + 12, 4, len);
        };
        // Read device_feature (select 1) through the window.
        set(&mut cfg, u32::from(DEVICE_FEATURE_SELECT), 4);
        cfg.write(cap + 16, 4, 1);
        assert_eq!(
            d.pci_cfg_after_write(&cfg, cap + 16, 4, &mem),
            Effects::default()
        );
        set(&mut cfg, u32::from(DEVICE_FEATURE), 4);
        d.pci_cfg_before_read(&mut cfg, cap + 16, 4);
        assert_eq!(cfg.read(cap + 16, 4), 1, "VERSION_1");
        // Write the status byte, read it back.
        set(&mut cfg, u32::from(DEVICE_STATUS), 1);
        cfg.write(cap + 16, 1, u32::from(ACKNOWLEDGE));
        d.pci_cfg_after_write(&cfg, cap + 16, 1, &mem);
        assert_eq!(d.status(), ACKNOWLEDGE);
        // An ISR read through the window clears it and lowers the line.
        bring_up(&mut d, &mem, FEATS, 8);
        offer(&mem, 8, &[read_req(&mem, 0, 0)]);
        assert_eq!(w(&mut d, &mem, NOTIFY_OFF, 2, 0).intx, Some(true));
        set(&mut cfg, u32::from(ISR_OFF), 1);
        let e = d.pci_cfg_before_read(&mut cfg, cap + 16, 1);
        assert_eq!(e.intx, Some(false));
        assert_eq!(cfg.read(cap + 16, 1), u32::from(ISR_QUEUE));
        // Misaligned, wrong length, another BAR, outside the BAR: no access.
        for (bar, off, len) in [(0, 0x15, 2), (0, 0x14, 3), (1, 0x14, 1), (0, 0x100, 1)] {
            cfg.write(cap + 4, 1, bar);
            cfg.write(cap + 8, 4, off);
            cfg.write(cap + 12, 4, len);
            cfg.write(cap + 16, 4, 0);
            assert_eq!(
                d.pci_cfg_after_write(&cfg, cap + 16, 4, &mem),
                Effects::default()
            );
            assert_ne!(d.status(), 0, "no reset through a bad window");
        }
        // Accesses elsewhere in config space do nothing here.
        set(&mut cfg, u32::from(DEVICE_STATUS), 1);
        cfg.write(cap + 16, 1, 0);
        d.pci_cfg_after_write(&cfg, 0x04, 2, &mem);
        assert_ne!(d.status(), 0);
        d.pci_cfg_after_write(&cfg, cap + 16, 1, &mem);
        assert_eq!(d.status(), 0, "status 0 written: reset");
    }

    /// xorshift64*: a fixed sequence, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn random_rings_never_reach_outside_ram() {
        // Random descriptor tables, indirect tables, driver rings and request
        // headers: whatever happens, no access leaves guest RAM (the
        // checks come first) and nothing panics.
        const RAM: u64 = 0x40000;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut broke, mut served) = (0u32, 0u32);
        for round in 0..2000 {
            let mem = TestMem::new(RAM as usize);
            let mut d = dev(round % 5 == 0);
            d.set_budget(Budget {
                chains: 8,
                bytes: 1 << 20,
            });
            let mut feats = FEATS;
            if rng.below(2) == 0 {
                feats |= VIRTIO_F_INDIRECT_DESC;
            }
            if rng.below(2) == 0 {
                feats |= VIRTIO_F_EVENT_IDX;
            }
            let size = [4u16, 8, 16][rng.below(3) as usize];
            bring_up(&mut d, &mem, feats, size);
            let addr = |rng: &mut Rng| match rng.below(8) {
                0 => rng.next(),
                1 => RAM - rng.below(64),
                _ => 0x8000 + rng.below(0x30000),
            };
            let len = |rng: &mut Rng| match rng.below(8) {
                0 => rng.next() as u32,
                1 => 0,
                2 => 16 * (1 + rng.below(20) as u32),
                _ => rng.below(0x2000) as u32,
            };
            let flags = |rng: &mut Rng| match rng.below(4) {
                0 => rng.next() as u16,
                _ => rng.below(8) as u16,
            };
            let table = |rng: &mut Rng, base: u64, n: u16| {
                for i in 0..n {
                    let next = rng.below(u64::from(n) + 2) as u16;
                    desc(&mem, base, i, addr(rng), len(rng), flags(rng), next);
                }
            };
            table(&mut rng, DESC, size);
            for t in 0..4 {
                table(&mut rng, 0x10000 + 0x1000 * t, 24);
            }
            // Request headers where buffers tend to point.
            for _ in 0..64 {
                let at = 0x8000 + rng.below(0x30000);
                let kind = [
                    blk::T_IN,
                    blk::T_OUT,
                    blk::T_FLUSH,
                    blk::T_GET_ID,
                    blk::T_DISCARD,
                ][rng.below(5) as usize];
                let mut h = kind.to_le_bytes().to_vec();
                h.extend_from_slice(&0u32.to_le_bytes());
                h.extend_from_slice(&rng.below(80).to_le_bytes());
                mem.put(at, &h);
            }
            let heads: Vec<u16> = if rng.below(2) == 0 {
                (0..rng.below(u64::from(size) + 1))
                    .map(|_| rng.below(u64::from(size) + 1) as u16)
                    .collect()
            } else {
                // Well-formed reads, then a few random bytes changed in the
                // descriptor table.
                let heads: Vec<u16> = (0..size / 3)
                    .map(|slot| read_req(&mem, slot, rng.below(80)))
                    .collect();
                for _ in 0..rng.below(4) {
                    let at = DESC + rng.below(16 * u64::from(size));
                    mem.put(at, &[rng.next() as u8]);
                }
                heads
            };
            offer(&mem, size, &heads);
            if rng.below(8) == 0 {
                mem.put(AVAIL + 2, &(rng.next() as u16).to_le_bytes());
            }
            let mut e = w(&mut d, &mem, NOTIFY_OFF, 2, 0);
            let mut calls = 0;
            while e.work_left {
                e = d.process(&mem);
                calls += 1;
                assert!(calls <= 4, "bounded work per notification");
            }
            assert_eq!(mem.refused.get(), 0, "round {round}");
            if d.status() & DEVICE_NEEDS_RESET != 0 {
                broke += 1;
            }
            if mem.get(USED + 2, 2) != [0, 0] {
                served += 1;
            }
        }
        // Both outcomes happen: the generator reaches the good paths too.
        assert!(
            broke > 500 && served > 500,
            "broke {broke}, served {served}"
        );
    }
}
