//! Console on the 16550 UART at 0x3F8 (polled, no interrupts).

use crate::io::{inb, outb};
use core::fmt;

const COM1: u16 = 0x3F8;
const LSR: u16 = COM1 + 5;
const LSR_THRE: u8 = 1 << 5;
/// Give up waiting for THRE after this many polls and send anyway.
const MAX_POLLS: u32 = 100_000;

/// Writes one byte to the UART.
pub fn write_byte(byte: u8) {
    let mut polls = 0;
    while inb(LSR) & LSR_THRE == 0 && polls < MAX_POLLS {
        polls += 1;
    }
    outb(COM1, byte);
}

/// Writes raw bytes to the UART.
pub fn write_bytes(bytes: &[u8]) {
    bytes.iter().copied().for_each(write_byte);
}

/// `fmt::Write` sink for the UART.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _ = fmt::Write::write_fmt(&mut Console, args);
}

/// Prints to the UART console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!($($arg)*))
    };
}

/// Prints a line to the UART console.
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::_print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
