//! virtio 1.x devices (OASIS virtio 1.2, cited as "virtio 1.2 x.y"): split
//! virtqueues ([`queue`]), the modern PCI transport over an I/O-port BAR
//! ([`pci`]), virtio-blk ([`blk`]) and its block backends ([`block`]).
//!
//! Guest memory is reached only through [`GuestMem`], by copy and bounds
//! checked by the implementor: a descriptor that names memory outside the
//! guest's RAM is an error value, never an access. Nothing here is wired to a
//! running guest yet.

pub mod attach;
pub mod blk;
pub mod block;
pub mod net;
pub mod pci;
pub mod queue;

use queue::{Chain, QueueError};

/// A guest-physical range that is not (wholly) guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemError {
    pub gpa: u64,
    pub len: u64,
}

/// The guest's RAM as a device sees it: copies in and out, each access
/// checked against the RAM's bounds by the implementor (the core implements
/// it on its guest memory; tests on a `Vec`).
pub trait GuestMem {
    /// Copies `buf.len()` bytes at `gpa` into `buf`, or changes nothing.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Copies `data` to `gpa`, or changes nothing.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError>;
    /// Whether `len` bytes at `gpa` are all guest RAM (checked before a
    /// request has any effect, so a bad buffer fails it up front).
    fn contains(&self, gpa: u64, len: u64) -> bool;
}

pub(crate) fn read_u16(mem: &dyn GuestMem, gpa: u64) -> Result<u16, MemError> {
    let mut b = [0; 2];
    mem.read(gpa, &mut b)?;
    Ok(u16::from_le_bytes(b))
}

pub(crate) fn write_u16(mem: &dyn GuestMem, gpa: u64, v: u16) -> Result<(), MemError> {
    mem.write(gpa, &v.to_le_bytes())
}

// Reserved feature bits (virtio 1.2 6).
pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_F_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device status bits (virtio 1.2 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// What a device type keeps of its own in a saved state (beside the
/// transport's): what identifies it to the driver, and the little state it
/// has besides its queues.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Identity {
    /// virtio-blk: what the driver read at probe. A state of another disk
    /// (another size, read-only flag or serial) is refused.
    Blk {
        capacity: u64,
        read_only: bool,
        serial: [u8; blk::ID_BYTES],
    },
    /// virtio-net: its MAC as the driver read it, the link and counters.
    /// The MAC is the NIC's own (its switch port's) and is not taken from
    /// a state: a clone keeps the MAC of its new name.
    Net {
        mac: crate::switch::Mac,
        link_up: bool,
        counters: net::NetCounters,
    },
    /// Any other device type: only its device ID.
    Other { device_id: u16 },
}

/// What the transport needs from one virtio device type.
pub trait VirtioDevice {
    /// The virtio device ID (virtio 1.2 5): 2 for a block device.
    fn device_id(&self) -> u16;
    /// PCI class code (base, sub-class, programming interface).
    fn pci_class(&self) -> [u8; 3];
    /// Device-type feature bits offered (the transport adds VERSION_1,
    /// INDIRECT_DESC and EVENT_IDX).
    fn features(&self) -> u64;
    fn num_queues(&self) -> u16;
    /// The largest queue size the device supports (a power of two).
    fn queue_max_size(&self) -> u16;
    /// Length of the device-specific configuration structure.
    fn config_len(&self) -> usize;
    /// Reads the configuration structure at `offset`; bytes past its end
    /// read 0.
    fn read_config(&self, offset: usize, data: &mut [u8]);
    /// Writes to the configuration structure (most fields are read-only).
    fn write_config(&mut self, _offset: usize, _data: &[u8]) {}
    /// The driver set DRIVER_OK with these features negotiated.
    fn activate(&mut self, _features: u64) {}
    /// Serves one descriptor chain of queue `queue`; returns the number of
    /// bytes written into its device-writable part (the used length), or
    /// `None` when it finishes later (through [`VirtioDevice::poll_done`]).
    /// An error marks the device broken (DEVICE_NEEDS_RESET).
    fn handle(
        &mut self,
        queue: u16,
        chain: &Chain,
        mem: &dyn GuestMem,
    ) -> Result<Option<u32>, QueueError>;
    /// Finishes chains that `handle` left for later: for each, `done(queue,
    /// head, used length)` puts it in the used ring.
    fn poll_done(
        &mut self,
        _mem: &dyn GuestMem,
        _done: &mut dyn FnMut(u16, u16, u32) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        Ok(())
    }
    /// Whether the device can serve a chain of `queue` now. A network
    /// device's receive queue holds the driver's buffers until a frame
    /// arrives (the core notifies the queue again then).
    fn can_serve(&self, _queue: u16) -> bool {
        true
    }
    /// Back to the state of a fresh device (a device reset, virtio 1.2 2.4).
    fn reset(&mut self);
    /// The device's part of a saved state.
    fn identity(&self) -> Identity {
        Identity::Other {
            device_id: self.device_id(),
        }
    }
    /// Takes the device's part of a saved state, or changes nothing and
    /// says why (a state of another device).
    fn take_identity(&mut self, id: &Identity) -> Result<(), crate::state::StateError> {
        crate::state::ensure(*id == self.identity(), "virtio device identity")
    }
    /// Why the device's state can't be saved now (requests its backend
    /// still works on), or None.
    fn busy(&self) -> Option<&'static str> {
        None
    }
}

#[cfg(test)]
pub(crate) mod testmem {
    //! A `Vec`-backed guest RAM for the tests.
    use super::{GuestMem, MemError};
    use core::cell::RefCell;

    pub struct TestMem {
        pub ram: RefCell<Vec<u8>>,
        /// Reads and writes that were refused for leaving RAM.
        pub refused: core::cell::Cell<u32>,
    }

    impl TestMem {
        pub fn new(size: usize) -> Self {
            Self {
                ram: RefCell::new(vec![0; size]),
                refused: core::cell::Cell::new(0),
            }
        }
        fn access(&self, gpa: u64, len: usize) -> Result<core::ops::Range<usize>, MemError> {
            let r = self.range(gpa, len);
            if r.is_err() {
                self.refused.set(self.refused.get() + 1);
            }
            r
        }
        fn range(&self, gpa: u64, len: usize) -> Result<core::ops::Range<usize>, MemError> {
            let err = MemError {
                gpa,
                len: len as u64,
            };
            let start = usize::try_from(gpa).map_err(|_| err)?;
            let end = start.checked_add(len).ok_or(err)?;
            if end > self.ram.borrow().len() {
                return Err(err);
            }
            Ok(start..end)
        }
        pub fn put(&self, gpa: u64, data: &[u8]) {
            self.write(gpa, data).unwrap();
        }
        pub fn get(&self, gpa: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0; len];
            self.read(gpa, &mut v).unwrap();
            v
        }
    }

    impl GuestMem for TestMem {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
            let r = self.access(gpa, buf.len())?;
            buf.copy_from_slice(&self.ram.borrow()[r]);
            Ok(())
        }
        fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
            let r = self.access(gpa, data.len())?;
            self.ram.borrow_mut()[r].copy_from_slice(data);
            Ok(())
        }
        fn contains(&self, gpa: u64, len: u64) -> bool {
            usize::try_from(len)
                .ok()
                .is_some_and(|l| self.range(gpa, l).is_ok())
        }
    }
}
