//! Bounds of the loaded guest image (from link.ld) and of usable RAM.

/// End of the loader's identity map (guest-physical 0..4 GiB).
pub const IDENTITY_MAP_END: u64 = 4 << 30;

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// Guest-physical address of the first byte of the image.
pub fn image_start() -> u64 {
    (&raw const __image_start) as u64
}

/// Guest-physical end of the image including .bss and the stack (4 KiB aligned).
pub fn image_end() -> u64 {
    (&raw const __image_end) as u64
}

/// End of the RAM the guest can address: `ram_size` capped at the identity
/// map, rounded down to 16 bytes.
pub fn ram_end(ram_size: u64) -> u64 {
    ram_size.min(IDENTITY_MAP_END) & !15
}
