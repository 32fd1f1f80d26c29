//! The VMM core. Pure logic here is unit-tested on the host with `cargo test`;
//! hardware paths only run inside the UEFI image.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod acpi;
pub mod loader;
pub mod manifest;
pub mod mm;
