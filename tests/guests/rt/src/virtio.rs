//! What the virtio test guests share: the modern PCI transport's common
//! configuration offsets (virtio 1.2 4.1.4.3), device status bits (2.1),
//! descriptor flags (2.7.5), PCI configuration mechanism #1 on bus 0, and
//! volatile access to identity-mapped guest RAM.
use crate::io::{inl, outl};

pub const DEVICE_FEATURE_SELECT: u16 = 0x00;
pub const DEVICE_FEATURE: u16 = 0x04;
pub const DRIVER_FEATURE_SELECT: u16 = 0x08;
pub const DRIVER_FEATURE: u16 = 0x0C;
pub const DEVICE_STATUS: u16 = 0x14;
pub const QUEUE_SELECT: u16 = 0x16;
pub const QUEUE_SIZE: u16 = 0x18;
pub const QUEUE_ENABLE: u16 = 0x1C;
pub const QUEUE_DESC: u16 = 0x20;
pub const QUEUE_DRIVER: u16 = 0x28;
pub const QUEUE_DEVICE: u16 = 0x30;

pub const ACKNOWLEDGE: u8 = 1;
pub const DRIVER: u8 = 2;
pub const DRIVER_OK: u8 = 4;
pub const FEATURES_OK: u8 = 8;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// A register of bus 0, device `dev`, function 0.
pub fn cfg_read(dev: u32, off: u32) -> u32 {
    outl(0xcf8, 0x8000_0000 | (dev << 11) | off);
    inl(0xcfc)
}

pub fn cfg_write(dev: u32, off: u32, v: u32) {
    outl(0xcf8, 0x8000_0000 | (dev << 11) | off);
    outl(0xcfc, v);
}

/// Stores `v` at guest-physical `gpa`, which must be in the guest's own
/// identity-mapped RAM, outside its image and stack.
pub fn put<T>(gpa: u64, v: T) {
    // SAFETY: the caller names scratch RAM (see above).
    unsafe { core::ptr::write_volatile(gpa as *mut T, v) }
}

/// Loads a `T` from guest-physical `gpa` (as for [`put`]).
pub fn get<T>(gpa: u64) -> T {
    // SAFETY: as for `put`.
    unsafe { core::ptr::read_volatile(gpa as *const T) }
}
