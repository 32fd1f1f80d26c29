//! Minimal runtime for ferrovisor test guests.
//!
//! Entry contract (set up by the hypervisor's ELF loader): 64-bit mode,
//! identity-mapped guest-physical 0..4 GiB, interrupts off, RDI = pointer to
//! a NUL-terminated command line, RSI = RAM size in bytes. `_start` switches
//! to a stack in .bss, zeroes .bss, installs an IDT and calls the guest's main
//! (registered with [`entry!`]); its return value becomes the exit code.
//! Exceptions print and exit unless caught by a [`probe!`].
//!
//! The hardware parts only exist for `target_os = "none"`; the pure parts
//! (command line parsing, marker pattern) also build on the host for tests.
#![cfg_attr(not(test), no_std)]

pub mod cmdline;
pub mod marker;

#[cfg(target_os = "none")]
pub mod console;
#[cfg(target_os = "none")]
pub mod cpu;
#[cfg(target_os = "none")]
pub mod hypercall;
#[cfg(target_os = "none")]
pub mod idt;
#[cfg(target_os = "none")]
pub mod image;
#[cfg(target_os = "none")]
pub mod io;
#[cfg(target_os = "none")]
pub mod smp;
#[cfg(target_os = "none")]
mod start;
pub mod virtio;

#[cfg(target_os = "none")]
pub use hypercall::exit_hypercall;
#[cfg(target_os = "none")]
pub use start::{exit, halt_forever};

/// Registers the guest's main: `fn(cmdline: &'static str, ram_size: u64) -> i32`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        // SAFETY: the one definition of this symbol, with the signature
        // `_start` declares.
        #[unsafe(no_mangle)]
        fn __guest_main(cmdline: &'static str, ram_size: u64) -> i32 {
            let main: fn(&'static str, u64) -> i32 = $main;
            main(cmdline, ram_size)
        }
    };
}
