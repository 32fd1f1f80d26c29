//! 8042-compatible keyboard controller at 0x60 (data) / 0x64 (status and
//! command), as described in the IBM PC AT Technical Reference ("Keyboard
//! Controller") and the PS/2 extensions (auxiliary port commands A7h-A9h,
//! D2h-D4h). There is no real keyboard or mouse behind it: an AT keyboard that
//! acknowledges its commands (IBM "Keyboard Commands") is emulated so Linux's
//! atkbd probe completes, and the auxiliary port has no device, so commands
//! sent to it time out the way a PS/2 controller reports it.
//!
//! Also the platform reset line: pulsing output-port bit 0 (command FEh, or
//! any F0h-FFh with bit 0 clear) or writing it 0 with D1h resets the machine.
//!
//! IRQ 1 (keyboard byte in the output buffer) and IRQ 12 (auxiliary byte) are
//! reported by `poll`: `level` is the controller's output (OBF with the
//! interrupt enabled in the command byte), `pulse` each rise since the last
//! poll. The core should poll this device after every access.
use super::{Effects, IrqState, PortDevice, Request};
use alloc::collections::VecDeque;

pub const PORT_DATA: u16 = 0x60;
pub const PORT_STATUS: u16 = 0x64;
pub const IRQ_KBD: u8 = 1;
pub const IRQ_AUX: u8 = 12;

// Status register.
const ST_OBF: u8 = 1 << 0;
const ST_SYS: u8 = 1 << 2;
const ST_CMD: u8 = 1 << 3;
/// Keyboard not inhibited (keylock open).
const ST_UNLOCKED: u8 = 1 << 4;
const ST_AUXB: u8 = 1 << 5;
const ST_TIMEOUT: u8 = 1 << 6;

// Controller command byte.
const CCB_KBD_INT: u8 = 1 << 0;
const CCB_AUX_INT: u8 = 1 << 1;
const CCB_SYS: u8 = 1 << 2;
const CCB_KBD_DISABLE: u8 = 1 << 4;
const CCB_AUX_DISABLE: u8 = 1 << 5;
const CCB_XLATE: u8 = 1 << 6;

// Output port.
const OP_RESET: u8 = 1 << 0;
const OP_A20: u8 = 1 << 1;
const OP_IRQ1: u8 = 1 << 4;
const OP_IRQ12: u8 = 1 << 5;

// Keyboard replies.
const KBD_ACK: u8 = 0xFA;
const KBD_RESEND: u8 = 0xFE;
const KBD_BAT_OK: u8 = 0xAA;
const KBD_ECHO: u8 = 0xEE;

/// At most this many bytes wait for the guest (a keyboard's own buffer).
const QUEUE: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct OutByte {
    value: u8,
    aux: bool,
    timeout: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042 {
    ccb: u8,
    output_port: u8,
    /// Status bit 3: the last write went to 0x64.
    last_was_command: bool,
    sys: bool,
    queue: VecDeque<OutByte>,
    /// What a data read returns when nothing is waiting.
    last_read: u8,
    /// A controller command waiting for its data byte (60h-7Fh, D1h-D4h).
    pending_command: Option<u8>,
    /// A keyboard command waiting for its parameter (EDh, F0h, F3h).
    pending_kbd: Option<u8>,
    /// The keyboard's last reply (for its Resend command).
    kbd_last_sent: u8,
    kbd_scanning: bool,
    scan_set: u8,
    leds: u8,
    irq_level: u16,
    irq_pulse: u16,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    /// State after the controller's power-on self test and a BIOS-like
    /// command byte: translation on, system flag set, keyboard interrupt
    /// enabled, auxiliary port disabled; A20 enabled, reset inactive.
    pub fn new() -> Self {
        Self {
            ccb: CCB_XLATE | CCB_AUX_DISABLE | CCB_SYS | CCB_KBD_INT,
            output_port: OP_RESET | OP_A20,
            last_was_command: false,
            sys: true,
            queue: VecDeque::new(),
            last_read: 0,
            pending_command: None,
            pending_kbd: None,
            kbd_last_sent: 0,
            kbd_scanning: true,
            scan_set: 2,
            leds: 0,
            irq_level: 0,
            irq_pulse: 0,
        }
    }

    /// Output-port A20 gate (bit 1). The core cannot mask address line 20 in
    /// a VMX guest; this only reports what the guest asked for.
    pub fn a20(&self) -> bool {
        self.output_port & OP_A20 != 0
    }

    /// The keyboard LEDs as last set (bit 0 scroll, 1 num, 2 caps lock).
    pub fn leds(&self) -> u8 {
        self.leds
    }

    fn push(&mut self, value: u8, aux: bool, timeout: bool) {
        if self.queue.len() < QUEUE {
            self.queue.push_back(OutByte {
                value,
                aux,
                timeout,
            });
        }
        self.update_irq();
    }

    fn push_ctl(&mut self, value: u8) {
        self.push(value, false, false);
    }

    fn push_kbd(&mut self, value: u8) {
        self.kbd_last_sent = value;
        self.push(value, false, false);
    }

    /// IRQ outputs: OBF with the matching interrupt enable.
    fn levels(&self) -> u16 {
        match self.queue.front() {
            Some(b) if b.aux && self.ccb & CCB_AUX_INT != 0 => 1 << IRQ_AUX,
            Some(b) if !b.aux && self.ccb & CCB_KBD_INT != 0 => 1 << IRQ_KBD,
            _ => 0,
        }
    }

    fn update_irq(&mut self) {
        let new = self.levels();
        self.irq_pulse |= new & !self.irq_level;
        self.irq_level = new;
    }

    fn status(&self) -> u8 {
        let mut s = ST_UNLOCKED;
        if let Some(b) = self.queue.front() {
            s |= ST_OBF;
            if b.aux {
                s |= ST_AUXB;
            }
            if b.timeout {
                s |= ST_TIMEOUT;
            }
        }
        if self.sys {
            s |= ST_SYS;
        }
        if self.last_was_command {
            s |= ST_CMD;
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        if let Some(b) = self.queue.pop_front() {
            self.last_read = b.value;
            // The IRQ line falls with OBF; a following byte raises it again.
            self.irq_level = 0;
            self.update_irq();
        }
        self.last_read
    }

    fn set_ccb(&mut self, v: u8) {
        self.ccb = v;
        self.sys = v & CCB_SYS != 0;
        self.update_irq();
    }

    fn write_output_port(&mut self, v: u8) -> Request {
        self.output_port = v;
        if v & OP_RESET == 0 {
            return Request::Reset;
        }
        Request::None
    }

    fn command(&mut self, cmd: u8) -> Request {
        self.pending_command = None;
        match cmd {
            0x20 => self.push_ctl(self.ccb),
            // Read controller RAM: nothing kept there.
            0x21..=0x3F => self.push_ctl(0),
            0x60..=0x7F | 0xD1..=0xD4 => self.pending_command = Some(cmd),
            0xA7 => self.set_ccb(self.ccb | CCB_AUX_DISABLE),
            0xA8 => self.set_ccb(self.ccb & !CCB_AUX_DISABLE),
            // Interface tests: 00h = no error.
            0xA9 | 0xAB => self.push_ctl(0x00),
            // Self test: 55h, and the system flag is set.
            0xAA => {
                self.sys = true;
                self.push_ctl(0x55);
            }
            0xAD => self.set_ccb(self.ccb | CCB_KBD_DISABLE),
            0xAE => self.set_ccb(self.ccb & !CCB_KBD_DISABLE),
            // Input port: keyboard not inhibited.
            0xC0 => self.push_ctl(0x80),
            0xD0 => {
                let irq = self.levels();
                let mut v = self.output_port & !(OP_IRQ1 | OP_IRQ12);
                if irq & (1 << IRQ_KBD) != 0 {
                    v |= OP_IRQ1;
                }
                if irq & (1 << IRQ_AUX) != 0 {
                    v |= OP_IRQ12;
                }
                self.push_ctl(v);
            }
            0xDD => self.output_port &= !OP_A20,
            0xDF => self.output_port |= OP_A20,
            // Test inputs.
            0xE0 => self.push_ctl(0x00),
            // Pulse output port bits 3-0 low where the command bit is 0;
            // bit 0 is the reset line.
            0xF0..=0xFF if cmd & 1 == 0 => return Request::Reset,
            _ => {}
        }
        Request::None
    }

    fn command_data(&mut self, cmd: u8, v: u8) -> Request {
        match cmd {
            0x60 => self.set_ccb(v),
            0x61..=0x7F => {}
            0xD1 => return self.write_output_port(v),
            0xD2 => self.push(v, false, false),
            0xD3 => self.push(v, true, false),
            // To the auxiliary device: none attached, so the transmission
            // times out and the controller returns FEh with the timeout bit.
            _ => self.push(0xFE, true, true),
        }
        Request::None
    }

    /// A byte for the keyboard (data port write outside a controller
    /// command).
    fn keyboard(&mut self, v: u8) {
        if let Some(cmd) = self.pending_kbd.take() {
            self.push_kbd(KBD_ACK);
            match cmd {
                0xED => self.leds = v & 7,
                0xF0 if v == 0 => self.push_kbd(self.scan_set),
                0xF0 if (1..=3).contains(&v) => self.scan_set = v,
                _ => {} // typematic rate: nothing to do
            }
            return;
        }
        match v {
            0xED | 0xF0 | 0xF3 => {
                self.pending_kbd = Some(v);
                self.push_kbd(KBD_ACK);
            }
            0xEE => self.push_kbd(KBD_ECHO),
            0xF2 => {
                // MF2 keyboard ID ABh 83h; 83h reaches the host as 41h when
                // the controller translates.
                self.push_kbd(KBD_ACK);
                self.push_kbd(0xAB);
                self.push_kbd(if self.ccb & CCB_XLATE != 0 {
                    0x41
                } else {
                    0x83
                });
            }
            0xF4 => {
                self.kbd_scanning = true;
                self.push_kbd(KBD_ACK);
            }
            0xF5 | 0xF6 => {
                self.kbd_scanning = v == 0xF6;
                self.scan_set = 2;
                self.push_kbd(KBD_ACK);
            }
            0xF7..=0xFD => self.push_kbd(KBD_ACK),
            0xFE => self.push_kbd(self.kbd_last_sent),
            0xFF => {
                self.kbd_scanning = true;
                self.scan_set = 2;
                self.leds = 0;
                self.push_kbd(KBD_ACK);
                self.push_kbd(KBD_BAT_OK);
            }
            _ => self.push_kbd(KBD_RESEND),
        }
    }

    fn write_data(&mut self, v: u8) -> Request {
        self.last_was_command = false;
        match self.pending_command.take() {
            Some(cmd) => self.command_data(cmd, v),
            None => {
                self.keyboard(v);
                Request::None
            }
        }
    }
}

/// Register-level access (the bus goes through [`PortDevice`]).
impl I8042 {
    pub fn read(&mut self, port: u16, _size: u8) -> u32 {
        u32::from(match port {
            PORT_DATA => self.read_data(),
            _ => self.status(),
        })
    }

    pub fn write(&mut self, port: u16, _size: u8, value: u32) -> Request {
        let v = value as u8;
        match port {
            PORT_DATA => self.write_data(v),
            _ => {
                self.last_was_command = true;
                self.command(v)
            }
        }
    }

    pub fn poll(&mut self, _now: u64) -> IrqState {
        let st = IrqState {
            level: self.irq_level,
            pulse: self.irq_pulse,
        };
        self.irq_pulse = 0;
        st
    }
}

const IRQ_LINES: u16 = (1 << IRQ_KBD) | (1 << IRQ_AUX);

/// IRQ 1 and 12 are reported with every access (reading the output buffer
/// lowers them, a command's reply raises them); a reset pulse comes back
/// as [`Request::Reset`].
impl PortDevice for I8042 {
    fn name(&self) -> &'static str {
        "i8042"
    }
    fn ports(&self) -> &'static [(u16, u16)] {
        &[(PORT_DATA, 1), (PORT_STATUS, 1)]
    }
    fn irq_lines(&self) -> u16 {
        IRQ_LINES
    }
    fn io_read(&mut self, port: u16, size: u8, now: u64) -> Effects {
        let v = self.read(port, size);
        Effects::read(u64::from(v)).with_lines(self.poll(now).lines(IRQ_LINES))
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32, now: u64) -> Effects {
        let r = self.write(port, size, value);
        Effects::request(r).with_lines(self.poll(now).lines(IRQ_LINES))
    }
    fn advance(&mut self, now: u64) -> Effects {
        Effects::none().with_lines(self.poll(now).lines(IRQ_LINES))
    }
}

crate::state::plain_state!(I8042, 1, |_me| I8042::new());

impl crate::state::Check for I8042 {
    fn check(&self) -> Result<(), crate::state::StateError> {
        use crate::state::ensure;
        let lines = 1 << IRQ_KBD | 1 << IRQ_AUX;
        ensure(self.queue.len() <= QUEUE, "i8042 output queue length")?;
        ensure((1..=3).contains(&self.scan_set), "keyboard scan code set")?;
        ensure(
            (self.irq_level | self.irq_pulse) & !lines == 0,
            "i8042 IRQ lines",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(k: &mut I8042, c: u8) -> Request {
        k.write(0x64, 1, u32::from(c))
    }

    fn data(k: &mut I8042, v: u8) -> Request {
        k.write(0x60, 1, u32::from(v))
    }

    fn status(k: &mut I8042) -> u8 {
        k.read(0x64, 1) as u8
    }

    fn take(k: &mut I8042) -> Option<u8> {
        (status(k) & ST_OBF != 0).then(|| k.read(0x60, 1) as u8)
    }

    /// Linux's i8042_command(): a command, optional parameter, replies.
    fn command(k: &mut I8042, c: u8, param: Option<u8>) -> Option<u8> {
        cmd(k, c);
        if let Some(p) = param {
            data(k, p);
        }
        take(k)
    }

    #[test]
    fn empty_controller_flushes_and_status_is_sane() {
        let mut k = I8042::new();
        let s = status(&mut k);
        assert_eq!(s & (ST_OBF | 0x02), 0, "no data, input buffer empty");
        assert_eq!(s & ST_SYS, ST_SYS);
        assert_eq!(take(&mut k), None);
        assert_eq!(k.poll(0), IrqState::default());
    }

    #[test]
    fn linux_controller_probe() {
        let mut k = I8042::new();
        assert_eq!(command(&mut k, 0xAA, None), Some(0x55));
        // Read CTR twice; then write it back with ports disabled.
        let ctr = command(&mut k, 0x20, None).unwrap();
        assert_eq!(command(&mut k, 0x20, None), Some(ctr));
        assert_eq!(ctr & CCB_XLATE, CCB_XLATE);
        let new = (ctr | CCB_KBD_DISABLE | CCB_AUX_DISABLE) & !(CCB_KBD_INT | CCB_AUX_INT);
        assert_eq!(command(&mut k, 0x60, Some(new)), None);
        assert_eq!(command(&mut k, 0x20, None), Some(new));
        assert_eq!(command(&mut k, 0xAB, None), Some(0x00));
    }

    #[test]
    fn status_command_bit_tracks_last_write() {
        let mut k = I8042::new();
        cmd(&mut k, 0xAD);
        assert_eq!(status(&mut k) & ST_CMD, ST_CMD);
        data(&mut k, 0xF4);
        assert_eq!(status(&mut k) & ST_CMD, 0);
    }

    #[test]
    fn data_read_when_empty_returns_last_byte() {
        let mut k = I8042::new();
        assert_eq!(command(&mut k, 0xAA, None), Some(0x55));
        assert_eq!(k.read(0x60, 1), 0x55);
        assert_eq!(status(&mut k) & ST_OBF, 0);
    }

    #[test]
    fn aux_loopback_and_irq12() {
        let mut k = I8042::new();
        // Loop without the AUX interrupt: data with AUXB, no IRQ.
        cmd(&mut k, 0xD3);
        data(&mut k, 0x5A);
        assert_eq!(status(&mut k) & (ST_OBF | ST_AUXB), ST_OBF | ST_AUXB);
        assert_eq!(k.poll(0).level, 0);
        assert_eq!(take(&mut k), Some(0x5A));
        // Enable the AUX port and its interrupt, loop A5h: IRQ 12.
        cmd(&mut k, 0xA8);
        let ctr = command(&mut k, 0x20, None).unwrap();
        assert_eq!(ctr & CCB_AUX_DISABLE, 0);
        command(&mut k, 0x60, Some(ctr | CCB_AUX_INT));
        // The CTR reply itself was a keyboard-side byte: IRQ 1.
        assert_eq!(k.poll(0).pulse, 1 << 1);
        cmd(&mut k, 0xD3);
        data(&mut k, 0xA5);
        let st = k.poll(0);
        assert_eq!(st.level, 1 << 12);
        assert_eq!(st.pulse, 1 << 12);
        assert_eq!(take(&mut k), Some(0xA5));
        assert_eq!(k.poll(0), IrqState::default());
        cmd(&mut k, 0xA7);
        assert_eq!(
            command(&mut k, 0x20, None).unwrap() & CCB_AUX_DISABLE,
            CCB_AUX_DISABLE
        );
        assert_eq!(command(&mut k, 0xA9, None), Some(0x00));
    }

    #[test]
    fn aux_device_absent_times_out() {
        let mut k = I8042::new();
        cmd(&mut k, 0xD4);
        data(&mut k, 0xF2);
        let s = status(&mut k);
        assert_eq!(
            s & (ST_OBF | ST_AUXB | ST_TIMEOUT),
            ST_OBF | ST_AUXB | ST_TIMEOUT
        );
        assert_eq!(take(&mut k), Some(0xFE));
        assert_eq!(status(&mut k) & ST_TIMEOUT, 0);
    }

    #[test]
    fn atkbd_probe_sequence() {
        let mut k = I8042::new();
        // Reset with BAT.
        data(&mut k, 0xFF);
        assert_eq!(take(&mut k), Some(0xFA));
        assert_eq!(take(&mut k), Some(0xAA));
        // Identify (translated).
        data(&mut k, 0xF2);
        assert_eq!(take(&mut k), Some(0xFA));
        assert_eq!(take(&mut k), Some(0xAB));
        assert_eq!(take(&mut k), Some(0x41));
        // Deactivate, LEDs, typematic, activate.
        data(&mut k, 0xF5);
        assert_eq!(take(&mut k), Some(0xFA));
        data(&mut k, 0xED);
        assert_eq!(take(&mut k), Some(0xFA));
        data(&mut k, 0x02);
        assert_eq!(take(&mut k), Some(0xFA));
        assert_eq!(k.leds(), 2);
        data(&mut k, 0xF3);
        assert_eq!(take(&mut k), Some(0xFA));
        data(&mut k, 0x20);
        assert_eq!(take(&mut k), Some(0xFA));
        data(&mut k, 0xF4);
        assert_eq!(take(&mut k), Some(0xFA));
        assert_eq!(take(&mut k), None);
    }

    #[test]
    fn untranslated_id_and_scan_set_query() {
        let mut k = I8042::new();
        command(&mut k, 0x60, Some(CCB_SYS));
        data(&mut k, 0xF2);
        assert_eq!(take(&mut k), Some(0xFA));
        assert_eq!(take(&mut k), Some(0xAB));
        assert_eq!(take(&mut k), Some(0x83));
        data(&mut k, 0xF0);
        data(&mut k, 0x03);
        data(&mut k, 0xF0);
        data(&mut k, 0x00);
        let got: [Option<u8>; 4] = core::array::from_fn(|_| take(&mut k));
        assert_eq!(got, [Some(0xFA), Some(0xFA), Some(0xFA), Some(0xFA)]);
        assert_eq!(take(&mut k), Some(0x03));
        data(&mut k, 0xEE);
        assert_eq!(take(&mut k), Some(0xEE));
        data(&mut k, 0xFE);
        assert_eq!(take(&mut k), Some(0xEE), "resend repeats the last reply");
        data(&mut k, 0x12);
        assert_eq!(take(&mut k), Some(0xFE), "unknown command");
    }

    #[test]
    fn keyboard_replies_raise_irq1_one_byte_at_a_time() {
        let mut k = I8042::new();
        data(&mut k, 0xFF);
        let st = k.poll(0);
        assert_eq!(st.level, 1 << 1);
        assert_eq!(st.pulse, 1 << 1);
        assert_eq!(k.poll(0).pulse, 0);
        // Reading FAh drops the line and AAh raises it again.
        assert_eq!(take(&mut k), Some(0xFA));
        let st = k.poll(0);
        assert_eq!((st.level, st.pulse), (1 << 1, 1 << 1));
        assert_eq!(take(&mut k), Some(0xAA));
        assert_eq!(k.poll(0).level, 0);
    }

    #[test]
    fn disabled_interrupt_means_no_irq() {
        let mut k = I8042::new();
        command(&mut k, 0x60, Some(CCB_SYS | CCB_XLATE));
        data(&mut k, 0xF4);
        assert_eq!(k.poll(0), IrqState::default());
        // Enabling the interrupt with a byte waiting raises it.
        command(&mut k, 0x60, Some(CCB_SYS | CCB_XLATE | CCB_KBD_INT));
        assert_eq!(k.poll(0).pulse, 1 << 1);
    }

    #[test]
    fn enable_disable_keyboard_interface() {
        let mut k = I8042::new();
        cmd(&mut k, 0xAD);
        assert_eq!(
            command(&mut k, 0x20, None).unwrap() & CCB_KBD_DISABLE,
            CCB_KBD_DISABLE
        );
        cmd(&mut k, 0xAE);
        assert_eq!(command(&mut k, 0x20, None).unwrap() & CCB_KBD_DISABLE, 0);
    }

    #[test]
    fn reset_by_pulse_command() {
        let mut k = I8042::new();
        assert_eq!(cmd(&mut k, 0xFE), Request::Reset);
        assert_eq!(cmd(&mut k, 0xF0), Request::Reset);
        assert_eq!(cmd(&mut k, 0xFF), Request::None, "no bit pulsed");
        assert_eq!(cmd(&mut k, 0xFD), Request::None, "bit 0 not pulsed");
    }

    #[test]
    fn reset_by_output_port_write() {
        let mut k = I8042::new();
        cmd(&mut k, 0xD1);
        assert_eq!(data(&mut k, 0x03), Request::None);
        cmd(&mut k, 0xD1);
        assert_eq!(data(&mut k, 0x02), Request::Reset);
    }

    #[test]
    fn a20_commands_and_output_port_read() {
        let mut k = I8042::new();
        assert!(k.a20());
        cmd(&mut k, 0xDD);
        assert!(!k.a20());
        assert_eq!(command(&mut k, 0xD0, None), Some(OP_RESET));
        cmd(&mut k, 0xDF);
        assert!(k.a20());
        cmd(&mut k, 0xD1);
        data(&mut k, 0xDD);
        assert!(!k.a20());
        // D0h with a keyboard byte pending reports the IRQ1 bit.
        cmd(&mut k, 0xD1);
        data(&mut k, 0x03);
        cmd(&mut k, 0xD2);
        data(&mut k, 0x1C);
        cmd(&mut k, 0xD0);
        assert_eq!(take(&mut k), Some(0x1C));
        assert_eq!(take(&mut k), Some(OP_RESET | OP_A20 | OP_IRQ1));
    }

    #[test]
    fn queue_is_bounded() {
        let mut k = I8042::new();
        for _ in 0..100 {
            data(&mut k, 0xEE);
        }
        let mut n = 0;
        while take(&mut k).is_some() {
            n += 1;
        }
        assert_eq!(n, QUEUE);
    }

    #[test]
    fn ram_reads_and_writes() {
        let mut k = I8042::new();
        assert_eq!(command(&mut k, 0x21, None), Some(0));
        cmd(&mut k, 0x61);
        assert_eq!(data(&mut k, 0x55), Request::None);
        assert_eq!(take(&mut k), None, "the byte went to RAM, not the keyboard");
        assert_eq!(command(&mut k, 0xC0, None), Some(0x80));
        assert_eq!(command(&mut k, 0xE0, None), Some(0x00));
    }
}
