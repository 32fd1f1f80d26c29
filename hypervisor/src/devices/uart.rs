//! A 16550A UART (National Semiconductor PC16550D data sheet): the guest's
//! console at 0x3F8. Output goes to the hypervisor console one line at a time,
//! prefixed with the guest's name, and into a per-guest history buffer.
use super::{Action, PortDevice};
use alloc::collections::VecDeque;
use alloc::string::String;

const IER_RX: u8 = 1 << 0;
const IER_THRE: u8 = 1 << 1;
const LCR_DLAB: u8 = 1 << 7;
const MCR_LOOP: u8 = 1 << 4;
const LSR_DR: u8 = 1 << 0;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;
/// Bytes of console history kept per guest.
pub const HISTORY: usize = 16 * 1024;
const MAX_LINE: usize = 240;

/// Where finished output lines go.
pub type LineSink = fn(guest: &str, line: &str);

pub struct Uart {
    guest: String,
    sink: LineSink,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fcr: u8,
    /// A THR-empty interrupt is pending until IIR is read or THR written.
    thre_pending: bool,
    rx: VecDeque<u8>,
    line: String,
    pub history: VecDeque<u8>,
}

impl Uart {
    pub fn new(guest: &str, sink: LineSink) -> Self {
        Self {
            guest: String::from(guest),
            sink,
            ier: 0,
            lcr: 0x03,
            mcr: 0,
            scr: 0,
            dll: 1,
            dlm: 0,
            fcr: 0,
            thre_pending: false,
            rx: VecDeque::new(),
            line: String::new(),
            history: VecDeque::new(),
        }
    }

    /// Queues input bytes (keystrokes) for the guest.
    pub fn push_input(&mut self, b: u8) {
        if self.rx.len() < 4096 {
            self.rx.push_back(b);
        }
    }

    /// Whether the UART's interrupt output (IRQ 4) is asserted.
    pub fn irq_pending(&self) -> bool {
        self.iir() & 1 == 0
    }

    fn iir(&self) -> u8 {
        let fifo = if self.fcr & 1 != 0 { 0xC0 } else { 0 };
        let id = if self.ier & IER_RX != 0 && !self.rx.is_empty() {
            0x04
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            0x02
        } else {
            0x01
        };
        fifo | id
    }

    fn output(&mut self, b: u8) {
        if self.history.len() >= HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(b);
        if crate::console::is_focused(&self.guest) {
            // The guest with the keyboard: stream bytes, prompts and echo included.
            if !self.line.is_empty() {
                let pending = core::mem::take(&mut self.line);
                crate::console::guest_raw(&self.guest, pending.as_bytes());
            }
            crate::console::guest_raw(&self.guest, &[b]);
            return;
        }
        match b {
            b'\n' => self.flush_line(),
            b'\r' => {}
            _ => {
                self.line
                    .push(if b.is_ascii_graphic() || b == b' ' || b == b'\t' {
                        b as char
                    } else {
                        '.'
                    });
                if self.line.len() >= MAX_LINE {
                    self.flush_line();
                }
            }
        }
    }

    fn flush_line(&mut self) {
        (self.sink)(&self.guest, &self.line);
        self.line.clear();
    }

    pub fn has_partial_line(&self) -> bool {
        !self.line.is_empty()
    }
}

impl PortDevice for Uart {
    fn name(&self) -> &'static str {
        "uart"
    }

    fn ports(&self) -> &'static [(u16, u16)] {
        &[(0x3F8, 8)]
    }

    fn read(&mut self, port: u16, _size: u8) -> u32 {
        let dlab = self.lcr & LCR_DLAB != 0;
        u32::from(match port - 0x3F8 {
            0 if dlab => self.dll,
            0 => self.rx.pop_front().unwrap_or(0),
            1 if dlab => self.dlm,
            1 => self.ier,
            2 => {
                let v = self.iir();
                if v & 0x0F == 0x02 {
                    self.thre_pending = false;
                }
                v
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => LSR_THRE | LSR_TEMT | if self.rx.is_empty() { 0 } else { LSR_DR },
            6 => {
                if self.mcr & MCR_LOOP != 0 {
                    // Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
                    let m = self.mcr;
                    ((m & 1) << 5) | ((m & 2) << 3) | ((m & 4) << 4) | ((m & 8) << 4)
                } else {
                    0xB0 // DCD, DSR, CTS: a terminal is attached
                }
            }
            _ => self.scr,
        })
    }

    fn write(&mut self, port: u16, _size: u8, value: u32) -> Action {
        let v = value as u8;
        let dlab = self.lcr & LCR_DLAB != 0;
        match port - 0x3F8 {
            0 if dlab => self.dll = v,
            0 => {
                if self.mcr & MCR_LOOP != 0 {
                    self.push_input(v);
                } else {
                    self.output(v);
                }
                self.thre_pending = true;
            }
            1 if dlab => self.dlm = v,
            1 => {
                // Enabling the THRE interrupt with THR empty raises it at once.
                if v & IER_THRE != 0 && self.ier & IER_THRE == 0 {
                    self.thre_pending = true;
                }
                self.ier = v & 0x0F;
            }
            2 => {
                self.fcr = v & 0xC9;
                if v & 2 != 0 {
                    self.rx.clear();
                }
            }
            3 => self.lcr = v,
            4 => self.mcr = v & 0x1F,
            7 => self.scr = v,
            _ => {}
        }
        Action::None
    }

    fn input(&mut self, byte: u8) -> bool {
        self.push_input(byte);
        true
    }

    /// IRQ 4, gated by MCR.OUT2 as on PC serial ports.
    fn poll(&mut self, _now_ns: u64) -> super::IrqState {
        let level = if self.irq_pending() && self.mcr & 0x08 != 0 {
            1 << 4
        } else {
            0
        };
        super::IrqState { level, pulse: 0 }
    }

    fn flush(&mut self) {
        if !self.line.is_empty() {
            self.flush_line();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static LINES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

    fn sink(g: &str, l: &str) {
        LINES.lock().unwrap().push((g.into(), l.into()));
    }

    #[test]
    fn lines_go_out_with_guest_name_and_history() {
        let mut u = Uart::new("t1", sink);
        for &b in b"hi there\r\nsecond" {
            u.write(0x3F8, 1, b.into());
        }
        let got: Vec<_> = LINES
            .lock()
            .unwrap()
            .iter()
            .filter(|(g, _)| g == "t1")
            .cloned()
            .collect();
        assert_eq!(got, vec![("t1".to_string(), "hi there".to_string())]);
        assert!(u.has_partial_line());
        assert_eq!(u.history.len(), 16);
        assert_eq!(u.read(0x3FD, 1) & 0x60, 0x60);
    }

    #[test]
    fn divisor_latch_scratch_and_loopback() {
        let mut u = Uart::new("t2", sink);
        u.write(0x3FB, 1, 0x83);
        u.write(0x3F8, 1, 0x01);
        u.write(0x3F9, 1, 0x00);
        assert_eq!(u.read(0x3F8, 1), 1);
        u.write(0x3FB, 1, 0x03);
        u.write(0x3FF, 1, 0x5A);
        assert_eq!(u.read(0x3FF, 1), 0x5A);
        // Loopback: a byte written comes back, and MSR mirrors MCR.
        u.write(0x3FC, 1, 0x1F);
        u.write(0x3F8, 1, b'x'.into());
        assert_eq!(u.read(0x3FD, 1) & 1, 1);
        assert_eq!(u.read(0x3F8, 1), u32::from(b'x'));
        assert_eq!(u.read(0x3FE, 1) & 0xF0, 0xF0);
    }

    #[test]
    fn interrupt_identification() {
        let mut u = Uart::new("t3", sink);
        assert_eq!(u.read(0x3FA, 1), 0x01);
        u.write(0x3F9, 1, u32::from(IER_THRE));
        assert!(u.irq_pending());
        assert_eq!(u.read(0x3FA, 1), 0x02);
        assert!(!u.irq_pending());
        u.write(0x3F9, 1, u32::from(IER_RX));
        u.push_input(b'a');
        assert_eq!(u.read(0x3FA, 1), 0x04);
        assert_eq!(u.read(0x3F8, 1), u32::from(b'a'));
        assert_eq!(u.read(0x3FA, 1), 0x01);
    }
}
