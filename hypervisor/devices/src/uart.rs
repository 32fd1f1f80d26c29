//! A 16550A UART (National Semiconductor PC16550D data sheet): the guest's
//! console at 0x3F8. Output goes to the hypervisor console one line at a time,
//! prefixed with the guest's name, and into a per-guest history buffer.
//!
//! The console queues lines and sends them at the host serial port's pace;
//! while this guest's queue is nearly full the transmitter reads busy
//! (LSR.THRE = TEMT = 0) and a THRE interrupt follows once it has room, as a
//! real UART behaves when its line is slower than the guest. A guest that
//! writes regardless loses its oldest queued lines (the console counts them).
use super::{Clock, Effects, IrqState, PortDevice};
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

/// How often a guest waiting for room in its console queue is re-checked
/// (nanoseconds; converted with the model's clock).
const ROOM_POLL_NS: u64 = 1_000_000;

/// The console the output goes to: the core's (or a test's) functions, given
/// the guest's console source number.
#[derive(Clone, Copy)]
pub struct ConsolePort {
    pub source: usize,
    /// A finished line.
    pub line: fn(usize, &str),
    /// Bytes as they come (the guest with the keyboard).
    pub raw: fn(usize, &[u8]),
    /// Whether the queue takes another line without dropping.
    pub room: fn(usize) -> bool,
    /// Whether this guest has the keyboard (its output streams unbuffered).
    pub focused: fn(usize) -> bool,
}

/// Keystrokes queued for the guest at most.
const RX_CAPACITY: usize = 4096;

pub struct Uart {
    console: ConsolePort,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fcr: u8,
    /// A THR-empty interrupt is pending until IIR is read or THR written.
    thre_pending: bool,
    /// THR reads busy (the console queue is full): when it has room, THRE
    /// interrupts again. Re-checked at `wait_until` (guest TSC).
    thre_wait: bool,
    wait_until: u64,
    /// Guest TSC as last set.
    now: u64,
    clock: Clock,
    rx: VecDeque<u8>,
    line: String,
    pub history: VecDeque<u8>,
}

impl Uart {
    pub fn new(console: ConsolePort, clock: Clock) -> Self {
        Self {
            console,
            ier: 0,
            lcr: 0x03,
            mcr: 0,
            scr: 0,
            dll: 1,
            dlm: 0,
            fcr: 0,
            thre_pending: false,
            thre_wait: false,
            wait_until: 0,
            now: 0,
            clock,
            rx: VecDeque::new(),
            line: String::new(),
            history: VecDeque::new(),
        }
    }

    /// Queues input bytes (keystrokes) for the guest.
    pub fn push_input(&mut self, b: u8) {
        if self.rx.len() < RX_CAPACITY {
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

    fn room(&self) -> bool {
        (self.console.room)(self.console.source)
    }

    /// THR was written or its interrupt enabled: it is empty again at once
    /// if the console has room, else once it has.
    fn thr_taken(&mut self) {
        if self.room() {
            self.thre_pending = true;
        } else if !self.thre_wait {
            self.thre_wait = true;
            self.wait_until = self.now.saturating_add(self.clock.from_ns(ROOM_POLL_NS));
        }
    }

    /// Console output of the CONSOLE_WRITE hypercall: the same path as THR
    /// writes, without the register side effects.
    pub fn write_console(&mut self, bytes: &[u8]) {
        let keep = bytes
            .get(bytes.len().saturating_sub(HISTORY)..)
            .unwrap_or_default();
        let over = self
            .history
            .len()
            .saturating_add(keep.len())
            .saturating_sub(HISTORY);
        self.history.drain(..over);
        self.history.extend(keep);
        let src = self.console.source;
        if (self.console.focused)(src) {
            if !self.line.is_empty() {
                let pending = core::mem::take(&mut self.line);
                (self.console.raw)(src, pending.as_bytes());
            }
            (self.console.raw)(src, bytes);
            return;
        }
        for &b in bytes {
            self.line_byte(b);
        }
    }

    fn output(&mut self, b: u8) {
        if self.history.len() >= HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(b);
        let src = self.console.source;
        if (self.console.focused)(src) {
            // The guest with the keyboard: stream bytes, prompts and echo included.
            if !self.line.is_empty() {
                let pending = core::mem::take(&mut self.line);
                (self.console.raw)(src, pending.as_bytes());
            }
            (self.console.raw)(src, &[b]);
            return;
        }
        self.line_byte(b);
    }

    /// One byte into the line being assembled (unfocused output).
    fn line_byte(&mut self, b: u8) {
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
        (self.console.line)(self.console.source, &self.line);
        self.line.clear();
    }

    pub fn has_partial_line(&self) -> bool {
        !self.line.is_empty()
    }
}

/// Register-level access (the bus goes through [`PortDevice`]).
impl Uart {
    pub fn read(&mut self, port: u16, _size: u8) -> u32 {
        let dlab = self.lcr & LCR_DLAB != 0;
        // The bus sends only 0x3F8..0x3FF here.
        u32::from(match port.wrapping_sub(0x3F8) {
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
            5 => {
                let tx = if self.room() { LSR_THRE | LSR_TEMT } else { 0 };
                tx | if self.rx.is_empty() { 0 } else { LSR_DR }
            }
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

    pub fn write(&mut self, port: u16, _size: u8, value: u32) {
        let v = value as u8;
        let dlab = self.lcr & LCR_DLAB != 0;
        match port.wrapping_sub(0x3F8) {
            0 if dlab => self.dll = v,
            0 => {
                if self.mcr & MCR_LOOP != 0 {
                    self.push_input(v);
                } else {
                    self.output(v);
                }
                self.thr_taken();
            }
            1 if dlab => self.dlm = v,
            1 => {
                // Enabling the THRE interrupt with THR empty raises it at once.
                if v & IER_THRE != 0 && self.ier & IER_THRE == 0 {
                    self.thr_taken();
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
    }

    pub fn set_time(&mut self, now: u64) {
        self.now = now;
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.thre_wait.then_some(self.wait_until)
    }

    /// IRQ 4, gated by MCR.OUT2 as on PC serial ports.
    pub fn poll(&mut self, now: u64) -> IrqState {
        self.now = now;
        if self.thre_wait {
            if self.room() {
                self.thre_wait = false;
                self.thre_pending = true;
            } else if now >= self.wait_until {
                self.wait_until = now.saturating_add(self.clock.from_ns(ROOM_POLL_NS));
            }
        }
        let level = if self.irq_pending() && self.mcr & 0x08 != 0 {
            1 << 4
        } else {
            0
        };
        IrqState { level, pulse: 0 }
    }

    pub fn flush(&mut self) {
        if !self.line.is_empty() {
            self.flush_line();
        }
    }
}

/// Every access reports the IRQ line (`1 << 4`) and, when it moved, the
/// next deadline; time-driven changes come from [`PortDevice::advance`].
impl PortDevice for Uart {
    fn name(&self) -> &'static str {
        "uart"
    }
    fn ports(&self) -> &'static [(u16, u16)] {
        &[(0x3F8, 8)]
    }
    fn irq_lines(&self) -> u16 {
        1 << 4
    }
    fn io_read(&mut self, port: u16, size: u8, now: u64) -> Effects {
        self.set_time(now);
        let before = self.next_deadline();
        let fx = Effects::read(u64::from(self.read(port, size)));
        let lines = self.poll(now).lines(1 << 4);
        fx.with_lines(lines)
            .with_deadline(before, self.next_deadline())
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32, now: u64) -> Effects {
        self.set_time(now);
        let before = self.next_deadline();
        self.write(port, size, value);
        let fx = Effects::none();
        let lines = self.poll(now).lines(1 << 4);
        fx.with_lines(lines)
            .with_deadline(before, self.next_deadline())
    }
    fn advance(&mut self, now: u64) -> Effects {
        let lines = self.poll(now).lines(1 << 4);
        Effects {
            deadline: Some(self.next_deadline()),
            ..Effects::none().with_lines(lines)
        }
    }
    fn deadline(&self) -> Option<u64> {
        self.next_deadline()
    }
    fn input(&mut self, byte: u8, now: u64) -> Option<Effects> {
        self.push_input(byte);
        Some(Effects::none().with_lines(self.poll(now).lines(1 << 4)))
    }
    fn console_write(&mut self, bytes: &[u8]) -> bool {
        self.write_console(bytes);
        true
    }
    fn flush(&mut self) {
        Uart::flush(self);
    }
}

/// The UART's registers, its receive queue and the console line being
/// assembled. The console hooks are the platform's wiring, and the
/// hypervisor console's history of the guest's output is host-side, so
/// neither is part of it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UartState {
    pub ier: u8,
    pub lcr: u8,
    pub mcr: u8,
    pub scr: u8,
    pub dll: u8,
    pub dlm: u8,
    pub fcr: u8,
    pub thre_pending: bool,
    pub thre_wait: bool,
    pub wait_until: u64,
    /// Guest TSC.
    pub now: u64,
    pub rx: VecDeque<u8>,
    pub line: String,
}

impl crate::state::DeviceState for Uart {
    type Data = UartState;
    const VERSION: u32 = 1;
    fn save(&self) -> crate::state::State<UartState> {
        crate::state::State {
            version: 1,
            data: UartState {
                ier: self.ier,
                lcr: self.lcr,
                mcr: self.mcr,
                scr: self.scr,
                dll: self.dll,
                dlm: self.dlm,
                fcr: self.fcr,
                thre_pending: self.thre_pending,
                thre_wait: self.thre_wait,
                wait_until: self.wait_until,
                now: self.now,
                rx: self.rx.clone(),
                line: self.line.clone(),
            },
        }
    }
    fn restore(
        &mut self,
        state: &crate::state::State<UartState>,
    ) -> Result<(), crate::state::StateError> {
        crate::state::check_version(state.version, 1)?;
        let s = &state.data;
        if s.rx.len() > RX_CAPACITY {
            return Err(crate::state::StateError::Invalid("receive queue length"));
        }
        crate::state::ensure(s.line.len() <= MAX_LINE, "console line length")?;
        self.ier = s.ier;
        self.lcr = s.lcr;
        self.mcr = s.mcr;
        self.scr = s.scr;
        self.dll = s.dll;
        self.dlm = s.dlm;
        self.fcr = s.fcr;
        self.thre_pending = s.thre_pending;
        self.thre_wait = s.thre_wait;
        self.wait_until = s.wait_until;
        self.now = s.now;
        self.rx = s.rx.clone();
        self.line = s.line.clone();
        Ok(())
    }
    fn reset(&mut self) {
        let history = core::mem::take(&mut self.history);
        *self = Uart::new(self.console, self.clock);
        self.history = history;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    static LINES: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    /// Whether source 9's console queue has room (the backpressure test).
    static ROOM9: AtomicBool = AtomicBool::new(true);

    fn line(g: usize, l: &str) {
        LINES.lock().unwrap().push((g, l.into()));
    }
    fn raw(_: usize, _: &[u8]) {}
    fn room(g: usize) -> bool {
        g != 9 || ROOM9.load(Ordering::SeqCst)
    }
    fn unfocused(_: usize) -> bool {
        false
    }

    fn uart(source: usize) -> Uart {
        Uart::new(
            ConsolePort {
                source,
                line,
                raw,
                room,
                focused: unfocused,
            },
            crate::NS_CLOCK,
        )
    }

    fn lines_of(g: usize) -> Vec<String> {
        LINES
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s == g)
            .map(|(_, l)| l.clone())
            .collect()
    }

    #[test]
    fn lines_go_out_with_guest_name_and_history() {
        let mut u = uart(1);
        for &b in b"hi there\r\nsecond" {
            u.write(0x3F8, 1, b.into());
        }
        assert_eq!(lines_of(1), vec!["hi there".to_string()]);
        assert!(u.has_partial_line());
        assert_eq!(u.history.len(), 16);
        assert_eq!(u.read(0x3FD, 1) & 0x60, 0x60);
    }

    #[test]
    fn hypercall_output_takes_the_same_path() {
        let mut u = uart(4);
        u.write_console(b"one\ntwo\x07\n");
        assert_eq!(lines_of(4), vec!["one".to_string(), "two.".to_string()]);
        assert_eq!(u.history.len(), 9);
    }

    #[test]
    fn full_console_reads_busy_and_interrupts_when_room_returns() {
        let mut u = uart(9);
        u.write(0x3FC, 1, 0x08); // OUT2: IRQ 4 reaches the PIC
        u.write(0x3F9, 1, u32::from(IER_THRE));
        assert_eq!(u.read(0x3FA, 1), 0x02);
        ROOM9.store(false, Ordering::SeqCst);
        u.set_time(1000);
        u.write(0x3F8, 1, u32::from(b'a'));
        // Busy: no THRE/TEMT, no interrupt, and a re-check is scheduled.
        assert_eq!(u.read(0x3FD, 1) & 0x60, 0);
        assert_eq!(u.read(0x3FA, 1), 0x01);
        assert_eq!(u.poll(2000).level, 0);
        assert_eq!(u.next_deadline(), Some(1000 + ROOM_POLL_NS));
        ROOM9.store(true, Ordering::SeqCst);
        assert_eq!(u.read(0x3FD, 1) & 0x60, 0x60);
        assert_eq!(u.poll(1000 + ROOM_POLL_NS).level, 1 << 4);
        assert_eq!(u.next_deadline(), None);
        assert_eq!(u.read(0x3FA, 1), 0x02);
    }

    #[test]
    fn divisor_latch_scratch_and_loopback() {
        let mut u = uart(2);
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
        let mut u = uart(3);
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
