//! Two cascaded 8259A programmable interrupt controllers (Intel 8259A data
//! sheet, order no. 231468) as wired in a PC: the master at 0x20/0x21, the
//! slave at 0xA0/0xA1 with its INT output on the master's IR2, plus the PIIX
//! edge/level control registers ELCR1/ELCR2 at 0x4D0/0x4D1 (Intel 82371SB
//! PIIX3 data sheet, 4.1.10).
//!
//! The core drives ISA IRQ lines with [`Pic::set_irq`] / [`Pic::pulse_irq`],
//! asks [`Pic::pending`] whether INT is raised, and runs the INTA cycle with
//! [`Pic::acknowledge`]. The guest programs the chips through the ports.
//!
//! Power-on state: the data sheet leaves it undefined; here both IMRs are
//! all-ones (everything masked) until the guest's ICW1 clears them, and the
//! vector bases are 0x08/0x70 (what a PC BIOS programs).
use super::{Effects, PortDevice};

pub const MASTER_CMD: u16 = 0x20;
pub const MASTER_DATA: u16 = 0x21;
pub const SLAVE_CMD: u16 = 0xA0;
pub const SLAVE_DATA: u16 = 0xA1;
pub const ELCR1: u16 = 0x4D0;
pub const ELCR2: u16 = 0x4D1;
/// The master input the slave's INT output is wired to.
pub const CASCADE_IR: u8 = 2;

// ICW1 bits (data sheet, "Initialization Command Words").
const ICW1_IC4: u8 = 1 << 0;
const ICW1_SNGL: u8 = 1 << 1;
const ICW1_LTIM: u8 = 1 << 3;
const ICW1_SELECT: u8 = 1 << 4;
// ICW4 bits.
const ICW4_UPM: u8 = 1 << 0;
const ICW4_AEOI: u8 = 1 << 1;
const ICW4_SFNM: u8 = 1 << 4;
// OCW3 bits (A0 = 0, D4 = 0, D3 = 1).
const OCW3_SELECT: u8 = 1 << 3;
const OCW3_RIS: u8 = 1 << 0;
const OCW3_RR: u8 = 1 << 1;
const OCW3_P: u8 = 1 << 2;
const OCW3_SMM: u8 = 1 << 5;
const OCW3_ESMM: u8 = 1 << 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Init {
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    /// IR input levels as last driven (for edge detection).
    input: u8,
    /// PIIX ELCR: lines sensed by level. Reserved bits stay 0.
    elcr: u8,
    elcr_writable: u8,
    /// ICW1 LTIM: every line level-sensed (8259A); OR-ed with the ELCR.
    ltim: bool,
    vector_base: u8,
    icw3: u8,
    icw4: u8,
    single: bool,
    needs_icw4: bool,
    init: Init,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
    rotate_in_aeoi: bool,
    /// The line that currently has the highest priority (0 after ICW1;
    /// rotation makes the serviced line the lowest, i.e. this = line + 1).
    top: u8,
    master: bool,
}

impl Chip {
    fn new(master: bool) -> Self {
        Self {
            irr: 0,
            isr: 0,
            imr: 0xFF,
            input: 0,
            elcr: 0,
            // PIIX3 4.1.10: ELCR1 bits 0-2 (IRQ0, 1, 2) and ELCR2 bits 0 and
            // 5 (IRQ8, IRQ13) are reserved, always edge.
            elcr_writable: if master { 0xF8 } else { 0xDE },
            ltim: false,
            vector_base: if master { 0x08 } else { 0x70 },
            icw3: if master { 1 << CASCADE_IR } else { CASCADE_IR },
            icw4: ICW4_UPM,
            single: false,
            needs_icw4: true,
            init: Init::Ready,
            read_isr: false,
            poll: false,
            special_mask: false,
            rotate_in_aeoi: false,
            top: 0,
            master,
        }
    }

    fn level_lines(&self) -> u8 {
        if self.ltim {
            0xFF
        } else {
            self.elcr
        }
    }

    /// Drives IR `line` to `level`. Edge-sensed lines latch a rising edge into
    /// the IRR (it stays set until acknowledged, as the data sheet requires the
    /// input to stay high until INTA anyway); level-sensed lines make the IRR
    /// bit follow the input.
    fn set_input(&mut self, line: u8, level: bool) {
        let m = 1u8 << line;
        if self.level_lines() & m != 0 {
            if level {
                self.irr |= m;
            } else {
                self.irr &= !m;
            }
        } else if level && self.input & m == 0 {
            self.irr |= m;
        }
        if level {
            self.input |= m;
        } else {
            self.input &= !m;
        }
    }

    /// Priority rank of `line`: 0 is the highest.
    fn rank(&self, line: u8) -> u8 {
        line.wrapping_sub(self.top) & 7
    }

    /// The highest-priority line among `bits`.
    fn highest(&self, bits: u8) -> Option<u8> {
        (0..8)
            .map(|i| self.top.wrapping_add(i) & 7)
            .find(|&l| bits & (1 << l) != 0)
    }

    /// The line the priority resolver would present on INT, if any.
    fn int_line(&self) -> Option<u8> {
        let req = self.irr & !self.imr;
        if self.special_mask {
            // Special mask mode: every unmasked level that is not itself in
            // service may interrupt, lower as well as higher ("Special Mask
            // Mode").
            return self.highest(req & !self.isr);
        }
        let line = self.highest(req)?;
        match self.highest(self.isr) {
            None => Some(line),
            Some(s) if self.rank(line) < self.rank(s) => Some(line),
            // Special fully nested mode: the slave's IR2 is not locked out by
            // its own in-service bit, so higher requests within the slave get
            // through ("Special Fully Nested Mode").
            Some(s)
                if self.master
                    && self.icw4 & ICW4_SFNM != 0
                    && line == CASCADE_IR
                    && s == CASCADE_IR =>
            {
                Some(line)
            }
            Some(_) => None,
        }
    }

    /// INTA (or poll) for `line`: IRR to ISR, or auto-EOI.
    fn ack(&mut self, line: u8) {
        let m = 1u8 << line;
        if self.level_lines() & m == 0 {
            self.irr &= !m;
        }
        if self.icw4 & ICW4_AEOI != 0 {
            if self.rotate_in_aeoi {
                self.top = line.wrapping_add(1) & 7;
            }
        } else {
            self.isr |= m;
        }
    }

    fn icw1(&mut self, v: u8) {
        // Data sheet, ICW1: edge sense reset, IMR cleared, IR7 lowest
        // priority, special mask mode cleared, status read set to IRR, and
        // without IC4 all ICW4 functions zero.
        self.init = Init::Icw2;
        self.needs_icw4 = v & ICW1_IC4 != 0;
        self.single = v & ICW1_SNGL != 0;
        self.ltim = v & ICW1_LTIM != 0;
        self.imr = 0;
        self.isr = 0;
        self.irr = self.input & self.level_lines();
        self.top = 0;
        self.special_mask = false;
        self.read_isr = false;
        self.poll = false;
        self.rotate_in_aeoi = false;
        if !self.needs_icw4 {
            self.icw4 = 0;
        }
    }

    fn ocw2(&mut self, v: u8) {
        let level = v & 7;
        match v >> 5 {
            // Non-specific EOI, and rotate on non-specific EOI.
            0b001 | 0b101 => {
                if let Some(l) = self.highest(self.isr) {
                    self.isr &= !(1 << l);
                    if v >> 5 == 0b101 {
                        self.top = l.wrapping_add(1) & 7;
                    }
                }
            }
            // Specific EOI, and rotate on specific EOI.
            0b011 => self.isr &= !(1 << level),
            0b111 => {
                self.isr &= !(1 << level);
                self.top = level.wrapping_add(1) & 7;
            }
            // Set priority: `level` becomes the lowest.
            0b110 => self.top = level.wrapping_add(1) & 7,
            // Rotate in automatic EOI mode: set / clear.
            0b100 => self.rotate_in_aeoi = true,
            0b000 => self.rotate_in_aeoi = false,
            _ => {} // 0b010: no operation
        }
    }

    fn ocw3(&mut self, v: u8) {
        if v & OCW3_ESMM != 0 {
            self.special_mask = v & OCW3_SMM != 0;
        }
        if v & OCW3_P != 0 {
            self.poll = true;
        }
        if v & OCW3_RR != 0 {
            self.read_isr = v & OCW3_RIS != 0;
        }
    }

    fn write_cmd(&mut self, v: u8) {
        if v & ICW1_SELECT != 0 {
            self.icw1(v);
        } else if v & OCW3_SELECT != 0 {
            self.ocw3(v);
        } else {
            self.ocw2(v);
        }
    }

    fn write_data(&mut self, v: u8) {
        self.init = match self.init {
            Init::Icw2 => {
                // ICW2: T7-T3 of the vector; the low three bits are the line.
                self.vector_base = v & 0xF8;
                if !self.single {
                    Init::Icw3
                } else if self.needs_icw4 {
                    Init::Icw4
                } else {
                    Init::Ready
                }
            }
            Init::Icw3 => {
                self.icw3 = v;
                if self.needs_icw4 {
                    Init::Icw4
                } else {
                    Init::Ready
                }
            }
            Init::Icw4 => {
                self.icw4 = v;
                Init::Ready
            }
            Init::Ready => {
                // OCW1: the interrupt mask.
                self.imr = v;
                Init::Ready
            }
        };
    }

    fn write_elcr(&mut self, v: u8) {
        self.elcr = v & self.elcr_writable;
        // Lines now level-sensed follow their input at once.
        let lv = self.level_lines();
        self.irr = (self.irr & !lv) | (self.input & lv);
    }
}

/// The master/slave pair with the PIIX ELCRs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pic {
    master: Chip,
    slave: Chip,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    pub fn new() -> Self {
        Self {
            master: Chip::new(true),
            slave: Chip::new(false),
        }
    }

    fn chip(&mut self, line: u8) -> &mut Chip {
        if line < 8 {
            &mut self.master
        } else {
            &mut self.slave
        }
    }

    /// Drives ISA IRQ `line` (0..15). IRQ2 does not exist on the ISA bus (the
    /// cascade uses it) and is ignored, as are lines above 15.
    pub fn set_irq(&mut self, line: u8, level: bool) {
        if line >= 16 || line == CASCADE_IR {
            return;
        }
        self.chip(line).set_input(line & 7, level);
        self.update_cascade();
    }

    /// A rising edge on `line` that has already fallen again (a device's
    /// `IrqState::pulse`): latches the IRR of an edge-sensed line whatever the
    /// current input level is. A pulse on a level-sensed line is not kept.
    pub fn pulse_irq(&mut self, line: u8) {
        if line >= 16 || line == CASCADE_IR {
            return;
        }
        let c = self.chip(line);
        let m = 1u8 << (line & 7);
        if c.level_lines() & m == 0 {
            c.irr |= m;
        }
        self.update_cascade();
    }

    /// Applies reported IRQ state for the lines in `lines` (those the
    /// reporting devices own): each pulse as an edge, then the level as the
    /// new input. Lines outside `lines` are left alone, so devices can be
    /// polled one at a time.
    pub fn apply(&mut self, irqs: super::IrqState, lines: u16) {
        for line in 0..16u8 {
            let m = 1u16 << line;
            if lines & m == 0 {
                continue;
            }
            if irqs.pulse & m != 0 {
                self.pulse_irq(line);
            }
            self.set_irq(line, irqs.level & m != 0);
        }
    }

    /// The slave's INT output feeds master IR2. While it is high the master's
    /// IRR bit 2 is (re)latched, so a slave that still has a request after an
    /// INTA cycle interrupts again.
    fn update_cascade(&mut self) {
        let int = self.slave.int_line().is_some();
        let m = 1u8 << CASCADE_IR;
        if int {
            self.master.irr |= m;
            self.master.input |= m;
        } else {
            self.master.input &= !m;
            if self.master.level_lines() & m != 0 {
                self.master.irr &= !m;
            }
        }
    }

    /// Whether the master's INT output to the CPU is raised.
    pub fn pending(&self) -> bool {
        self.master.int_line().is_some()
    }

    fn cascaded(&self) -> bool {
        !self.master.single && self.master.icw3 & (1 << CASCADE_IR) != 0
    }

    /// The INTA cycle: returns the vector (ICW2 base + line) and moves the
    /// request from IRR to ISR (not with auto-EOI). Through the cascade the
    /// slave supplies the vector; if the slave's request went away after the
    /// master latched IR2, the slave answers with its IR7 vector (spurious
    /// IRQ15) and its ISR is left alone, while the master's IR2 is in service
    /// (the OS EOIs the master only). `None` means INT is low: the core must
    /// not inject anything (on hardware an INTA now would give the master's
    /// spurious IR7 vector, but no INTA happens without INT).
    pub fn acknowledge(&mut self) -> Option<u8> {
        let line = self.master.int_line()?;
        self.master.ack(line);
        let vector = if line == CASCADE_IR && self.cascaded() {
            match self.slave.int_line() {
                Some(s) => {
                    self.slave.ack(s);
                    self.slave.vector_base | s
                }
                None => self.slave.vector_base | 7,
            }
        } else {
            self.master.vector_base | line
        };
        // The INTA pulses drop master IR2's latch; a still-raised slave INT
        // relatches it.
        self.update_cascade();
        Some(vector)
    }

    /// The vector `acknowledge` would return for a line, for diagnostics.
    pub fn vector_of(&self, line: u8) -> u8 {
        if line < 8 {
            self.master.vector_base | line
        } else {
            self.slave.vector_base | (line & 7)
        }
    }

    /// IRR, ISR and IMR of both chips as 16-bit line masks (slave high).
    pub fn irr(&self) -> u16 {
        u16::from(self.master.irr) | u16::from(self.slave.irr) << 8
    }
    pub fn isr(&self) -> u16 {
        u16::from(self.master.isr) | u16::from(self.slave.isr) << 8
    }
    pub fn imr(&self) -> u16 {
        u16::from(self.master.imr) | u16::from(self.slave.imr) << 8
    }
    /// Level-sensed lines (ELCR, or all of a chip programmed with LTIM).
    pub fn level_triggered(&self) -> u16 {
        u16::from(self.master.level_lines()) | u16::from(self.slave.level_lines()) << 8
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        let c = match port {
            MASTER_CMD | MASTER_DATA => &mut self.master,
            SLAVE_CMD | SLAVE_DATA => &mut self.slave,
            ELCR1 => return self.master.elcr,
            ELCR2 => return self.slave.elcr,
            _ => return 0xFF,
        };
        if port & 1 != 0 {
            return c.imr;
        }
        if c.poll {
            // Poll command: this read is an interrupt acknowledge; the byte is
            // I (bit 7) and the level W2-W0 ("The Poll Command").
            c.poll = false;
            let v = match c.int_line() {
                Some(l) => {
                    c.ack(l);
                    0x80 | l
                }
                None => 0,
            };
            self.update_cascade();
            return v;
        }
        if c.read_isr {
            c.isr
        } else {
            c.irr
        }
    }

    fn write_byte(&mut self, port: u16, v: u8) {
        match port {
            MASTER_CMD => self.master.write_cmd(v),
            MASTER_DATA => self.master.write_data(v),
            SLAVE_CMD => self.slave.write_cmd(v),
            SLAVE_DATA => self.slave.write_data(v),
            ELCR1 => self.master.write_elcr(v),
            ELCR2 => self.slave.write_elcr(v),
            _ => {}
        }
        self.update_cascade();
    }
}

impl Pic {
    /// The I/O ports of the pair, as (first port, count).
    pub fn ports(&self) -> &'static [(u16, u16)] {
        &[(MASTER_CMD, 2), (SLAVE_CMD, 2), (ELCR1, 2)]
    }

    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let mut v = 0;
        for i in 0..u16::from(size.min(4)) {
            v |= u32::from(self.read_byte(port.wrapping_add(i))) << (i << 3);
        }
        v
    }

    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        for i in 0..u16::from(size.min(4)) {
            self.write_byte(port.wrapping_add(i), (value >> (i << 3)) as u8);
        }
    }
}

/// Accesses report a change of the INTR output (to the BSP's LINT0): an
/// EOI or an unmask can raise it, a mask or an acknowledging poll lower it.
impl PortDevice for Pic {
    fn name(&self) -> &'static str {
        "pic"
    }

    fn ports(&self) -> &'static [(u16, u16)] {
        Pic::ports(self)
    }

    fn io_read(&mut self, port: u16, size: u8, _now: u64) -> Effects {
        let before = self.pending();
        let mut fx = Effects::read(u64::from(self.read(port, size)));
        let after = self.pending();
        if after != before {
            fx.intr = Some(after);
        }
        fx
    }

    fn io_write(&mut self, port: u16, size: u8, value: u32, _now: u64) -> Effects {
        let before = self.pending();
        self.write(port, size, value);
        let after = self.pending();
        let mut fx = Effects::none();
        if after != before {
            fx.intr = Some(after);
        }
        fx
    }
}

crate::state::plain_state!(Pic, 1, |_me| Pic::new());

impl crate::state::Check for Pic {
    fn check(&self) -> Result<(), crate::state::StateError> {
        use crate::state::ensure;
        for (c, master) in [(&self.master, true), (&self.slave, false)] {
            let fresh = Chip::new(master);
            ensure(c.master == master, "8259 cascade role")?;
            ensure(c.elcr_writable == fresh.elcr_writable, "ELCR mask")?;
            ensure(c.elcr & !c.elcr_writable == 0, "ELCR reserved bits")?;
            ensure(c.vector_base & 7 == 0, "8259 vector base")?;
            ensure(c.top < 8, "8259 priority rotation")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's init_8259A(): ICW1 0x11, ICW2 0x30/0x38, ICW3 4/2, ICW4 1.
    fn linux_init(p: &mut Pic, auto_eoi: bool) {
        let icw4 = if auto_eoi { 3 } else { 1 };
        p.write(0x21, 1, 0xFF);
        p.write(0xA1, 1, 0xFF);
        p.write(0x20, 1, 0x11);
        p.write(0x21, 1, 0x30);
        p.write(0x21, 1, 0x04);
        p.write(0x21, 1, icw4);
        p.write(0xA0, 1, 0x11);
        p.write(0xA1, 1, 0x38);
        p.write(0xA1, 1, 0x02);
        p.write(0xA1, 1, 0x01);
    }

    fn unmask_all(p: &mut Pic) {
        p.write(0x21, 1, 0);
        p.write(0xA1, 1, 0);
    }

    #[test]
    fn power_on_is_masked_and_probe_reads_back_imr() {
        let mut p = Pic::new();
        assert_eq!(p.imr(), 0xFFFF);
        p.set_irq(0, true);
        assert!(!p.pending());
        // Linux's probe_8259A writes the mask and reads it back.
        p.write(0x21, 1, 0xFB);
        assert_eq!(p.read(0x21, 1), 0xFB);
        p.write(0xA1, 1, 0xFF);
        assert_eq!(p.read(0xA1, 1), 0xFF);
    }

    #[test]
    fn icw1_clears_imr_and_programs_vectors() {
        let mut p = Pic::new();
        p.write(0x20, 1, 0x11);
        assert_eq!(p.read(0x21, 1), 0, "ICW1 clears the IMR");
        p.write(0x21, 1, 0x30);
        p.write(0x21, 1, 0x04);
        p.write(0x21, 1, 0x01);
        // The next data write is OCW1 again.
        p.write(0x21, 1, 0xAA);
        assert_eq!(p.read(0x21, 1), 0xAA);
        assert_eq!(p.vector_of(3), 0x33);
        // ICW2's low three bits are ignored.
        p.write(0xA0, 1, 0x11);
        p.write(0xA1, 1, 0x3F);
        p.write(0xA1, 1, 0x02);
        p.write(0xA1, 1, 0x01);
        assert_eq!(p.vector_of(9), 0x39);
    }

    #[test]
    fn single_mode_without_icw4_skips_icw3_and_icw4() {
        let mut p = Pic::new();
        p.write(0x20, 1, 0x12); // SNGL, no IC4
        p.write(0x21, 1, 0x40); // ICW2
        p.write(0x21, 1, 0x55); // already OCW1
        assert_eq!(p.read(0x21, 1), 0x55);
    }

    #[test]
    fn edge_irq_is_acknowledged_and_eoied() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.set_irq(0, true);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), Some(0x30));
        assert!(!p.pending());
        assert_eq!(p.isr(), 1);
        // Still high: no new edge, no new request.
        p.set_irq(0, true);
        assert!(!p.pending());
        p.set_irq(0, false);
        p.set_irq(0, true);
        // A new edge is latched but IR0 is in service.
        assert_eq!(p.irr() & 1, 1);
        assert!(!p.pending());
        p.write(0x20, 1, 0x20); // non-specific EOI
        assert_eq!(p.isr(), 0);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), Some(0x30));
    }

    #[test]
    fn edge_latch_survives_the_line_dropping() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.set_irq(4, true);
        p.set_irq(4, false);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), Some(0x34));
    }

    #[test]
    fn pulse_latches_even_when_input_is_high() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.set_irq(8, true);
        assert_eq!(p.acknowledge(), Some(0x38));
        p.write(0xA0, 1, 0x20);
        p.write(0x20, 1, 0x20);
        assert!(!p.pending());
        p.pulse_irq(8);
        assert_eq!(p.acknowledge(), Some(0x38));
    }

    #[test]
    fn apply_feeds_pulses_and_levels() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.apply(super::super::IrqState { level: 0, pulse: 1 }, 1);
        assert_eq!(p.acknowledge(), Some(0x30));
        p.write(0x20, 1, 0x20);
        p.write(0x4D0, 1, 0x20); // IRQ5 level
        p.apply(
            super::super::IrqState {
                level: 1 << 5,
                pulse: 0,
            },
            1 << 5,
        );
        assert_eq!(p.acknowledge(), Some(0x35));
        p.set_irq(6, true);
        p.apply(super::super::IrqState::default(), 1 << 4);
        assert_eq!(p.irr() & (1 << 6), 1 << 6, "line 6 not touched");
        p.apply(super::super::IrqState::default(), 1 << 5);
        p.write(0x20, 1, 0x20);
        assert_eq!(p.acknowledge(), Some(0x36), "IRQ5's level dropped");
    }

    #[test]
    fn masked_line_is_held_in_irr() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        p.write(0x21, 1, 0x02); // mask IRQ1 only
        p.set_irq(1, true);
        assert!(!p.pending());
        assert_eq!(p.irr() & 2, 2);
        p.write(0x21, 1, 0);
        assert_eq!(p.acknowledge(), Some(0x31));
    }

    #[test]
    fn fully_nested_priority() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.set_irq(3, true);
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), Some(0x33));
        // IR5 is lower: blocked while IR3 in service.
        assert!(!p.pending());
        // IR1 is higher: nests.
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), Some(0x31));
        p.write(0x20, 1, 0x20); // EOI clears the highest ISR bit: IR1
        assert_eq!(p.isr(), 1 << 3);
        assert!(!p.pending());
        p.write(0x20, 1, 0x63); // specific EOI IR3
        assert_eq!(p.acknowledge(), Some(0x35));
    }

    #[test]
    fn specific_eoi_clears_only_that_level() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.set_irq(6, true);
        p.acknowledge();
        p.set_irq(4, true);
        p.acknowledge();
        assert_eq!(p.isr(), 0x50);
        p.write(0x20, 1, 0x66);
        assert_eq!(p.isr(), 0x10);
    }

    #[test]
    fn slave_interrupt_goes_through_cascade() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.set_irq(12, true);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), Some(0x3C));
        assert_eq!(p.isr(), (1 << 12) | (1 << 2));
        // Linux: specific EOI to slave, then to master's IR2.
        p.write(0xA0, 1, 0x64);
        p.write(0x20, 1, 0x62);
        assert_eq!(p.isr(), 0);
        assert!(!p.pending());
    }

    #[test]
    fn masked_cascade_blocks_slave() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        p.write(0x21, 1, 0x04);
        p.write(0xA1, 1, 0x00);
        p.set_irq(8, true);
        assert!(!p.pending());
        p.write(0x21, 1, 0x00);
        assert_eq!(p.acknowledge(), Some(0x38));
    }

    #[test]
    fn second_slave_request_after_eoi_interrupts_again() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.set_irq(9, true);
        p.set_irq(11, true);
        assert_eq!(p.acknowledge(), Some(0x39));
        assert!(!p.pending(), "IR11 is lower than IR9 in service");
        p.write(0xA0, 1, 0x20);
        p.write(0x20, 1, 0x20);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), Some(0x3B));
    }

    #[test]
    fn spurious_irq15_when_slave_request_withdrawn() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.write(0x4D1, 1, 0x08); // IRQ11 level-sensed
        p.set_irq(11, true);
        assert!(p.pending());
        // Master IR2 is latched; the level request disappears before INTA.
        p.set_irq(11, false);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), Some(0x3F));
        assert_eq!(
            p.isr(),
            1 << 2,
            "slave ISR untouched, master IR2 in service"
        );
    }

    #[test]
    fn no_request_means_no_inta() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        assert!(!p.pending());
        assert_eq!(p.acknowledge(), None);
    }

    #[test]
    fn level_line_follows_input_and_reasserts_after_eoi() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.write(0x4D1, 1, 0x02); // IRQ9 level (ACPI SCI)
        assert_eq!(p.level_triggered(), 1 << 9);
        assert_eq!(p.read(0x4D1, 1), 0x02);
        p.set_irq(9, true);
        assert_eq!(p.acknowledge(), Some(0x39));
        p.write(0xA0, 1, 0x20);
        p.write(0x20, 1, 0x20);
        // Still asserted: interrupts again.
        assert_eq!(p.acknowledge(), Some(0x39));
        p.set_irq(9, false);
        p.write(0xA0, 1, 0x20);
        p.write(0x20, 1, 0x20);
        assert!(!p.pending());
        assert_eq!(p.irr(), 0);
    }

    #[test]
    fn elcr_reserved_bits_stay_edge() {
        let mut p = Pic::new();
        p.write(0x4D0, 2, 0xFFFF);
        assert_eq!(p.read(0x4D0, 1), 0xF8);
        assert_eq!(p.read(0x4D1, 1), 0xDE);
        assert_eq!(p.read(0x4D0, 2), 0xDEF8);
    }

    #[test]
    fn ltim_makes_all_lines_level() {
        let mut p = Pic::new();
        p.write(0x20, 1, 0x19); // ICW1 with LTIM
        p.write(0x21, 1, 0x30);
        p.write(0x21, 1, 0x04);
        p.write(0x21, 1, 0x01);
        p.write(0xA0, 1, 0x11);
        p.write(0xA1, 1, 0x38);
        p.write(0xA1, 1, 0x02);
        p.write(0xA1, 1, 0x01);
        unmask_all(&mut p);
        p.set_irq(3, true);
        p.set_irq(3, false);
        assert!(!p.pending());
    }

    #[test]
    fn auto_eoi_leaves_isr_clear() {
        let mut p = Pic::new();
        linux_init(&mut p, true);
        unmask_all(&mut p);
        p.set_irq(0, true);
        assert_eq!(p.acknowledge(), Some(0x30));
        assert_eq!(p.isr() & 1, 0);
        p.set_irq(0, false);
        p.set_irq(0, true);
        assert_eq!(p.acknowledge(), Some(0x30));
    }

    #[test]
    fn rotate_in_auto_eoi_mode() {
        let mut p = Pic::new();
        linux_init(&mut p, true);
        unmask_all(&mut p);
        p.write(0x20, 1, 0x80); // rotate in AEOI: set
        p.set_irq(0, true);
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), Some(0x30));
        // IR0 now lowest: a new IR0 edge loses against IR1.
        p.set_irq(0, false);
        p.set_irq(0, true);
        assert_eq!(p.acknowledge(), Some(0x31));
        assert_eq!(p.acknowledge(), Some(0x30));
        p.write(0x20, 1, 0x00); // clear rotate
    }

    #[test]
    fn rotate_on_nonspecific_eoi() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), Some(0x34));
        p.write(0x20, 1, 0xA0); // rotate on non-specific EOI
                                // IR4 lowest: priority order 5,6,7,0,1,2,3,4.
        p.set_irq(3, true);
        p.set_irq(6, true);
        assert_eq!(p.acknowledge(), Some(0x36));
        // IR3 (rank 6) is lower than IR6 (rank 1) in service.
        assert!(!p.pending());
    }

    #[test]
    fn set_priority_and_rotate_on_specific_eoi() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.write(0x20, 1, 0xC5); // set priority: IR5 lowest, IR6 highest
        p.set_irq(1, true);
        p.set_irq(7, true);
        assert_eq!(p.acknowledge(), Some(0x37));
        p.write(0x20, 1, 0xE7); // rotate on specific EOI IR7: IR0 highest
        assert_eq!(p.isr(), 0);
        p.set_irq(7, false);
        p.set_irq(7, true);
        p.set_irq(0, true);
        assert_eq!(p.acknowledge(), Some(0x30));
    }

    #[test]
    fn read_irr_and_isr_via_ocw3() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        p.write(0x21, 1, 0xFF);
        p.set_irq(5, true);
        assert_eq!(p.read(0x20, 1), 0x20, "IRR is the default");
        p.write(0x21, 1, 0);
        p.acknowledge();
        p.write(0x20, 1, 0x0B); // read ISR
        assert_eq!(p.read(0x20, 1), 0x20);
        p.write(0x20, 1, 0x08); // RR=0: no change
        assert_eq!(p.read(0x20, 1), 0x20);
        p.write(0x20, 1, 0x0A); // read IRR
        assert_eq!(p.read(0x20, 1), 0x00);
    }

    #[test]
    fn poll_command_acknowledges() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.set_irq(6, true);
        p.write(0x20, 1, 0x0C); // OCW3 poll
        assert_eq!(p.read(0x20, 1), 0x86);
        assert_eq!(p.isr(), 0x40);
        p.write(0x20, 1, 0x0C);
        assert_eq!(p.read(0x20, 1), 0x00, "nothing requesting");
        // The poll is one-shot: the next read is the IRR again.
        assert_eq!(p.read(0x20, 1), 0x00);
    }

    #[test]
    fn special_mask_mode_enables_lower_levels() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), Some(0x33));
        p.set_irq(5, true);
        assert!(!p.pending());
        // The handler masks its own level and sets special mask mode.
        p.write(0x21, 1, 0x08);
        p.write(0x20, 1, 0x68);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), Some(0x35));
        p.write(0x20, 1, 0x48); // reset special mask
        assert!(!p.pending());
    }

    #[test]
    fn special_fully_nested_lets_higher_slave_irq_through() {
        let mut p = Pic::new();
        p.write(0x20, 1, 0x11);
        p.write(0x21, 1, 0x30);
        p.write(0x21, 1, 0x04);
        p.write(0x21, 1, 0x11); // ICW4: 8086, SFNM
        p.write(0xA0, 1, 0x11);
        p.write(0xA1, 1, 0x38);
        p.write(0xA1, 1, 0x02);
        p.write(0xA1, 1, 0x01);
        unmask_all(&mut p);
        p.set_irq(12, true);
        assert_eq!(p.acknowledge(), Some(0x3C));
        p.set_irq(9, true);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), Some(0x39));
    }

    #[test]
    fn icw1_resets_edge_sense() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.set_irq(1, true);
        linux_init(&mut p, false);
        unmask_all(&mut p);
        assert!(!p.pending(), "the latched request is dropped");
        p.set_irq(1, true);
        assert!(!p.pending(), "a high input needs a new rising edge");
        p.set_irq(1, false);
        p.set_irq(1, true);
        assert!(p.pending());
    }

    #[test]
    fn irq2_input_is_ignored() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        unmask_all(&mut p);
        p.set_irq(2, true);
        p.pulse_irq(2);
        p.set_irq(16, true);
        assert!(!p.pending());
    }

    #[test]
    fn port_map() {
        let p = Pic::new();
        assert_eq!(p.ports(), &[(0x20, 2), (0xA0, 2), (0x4D0, 2)]);
    }

    #[test]
    fn an_eoi_that_unblocks_a_pending_irq_reports_intr() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        p.write(0x21, 1, 0);
        p.set_irq(1, true);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), Some(0x31));
        // IRQ 3 comes while IRQ 1 is in service: it waits (lower priority).
        p.set_irq(3, true);
        assert!(!p.pending());
        // The EOI unblocks it: INTR rises, and the access says so.
        let fx = PortDevice::io_write(&mut p, 0x20, 1, 0x20, 0);
        assert_eq!(fx.intr, Some(true));
        // Masking it lowers INTR again; a write that changes nothing says nothing.
        assert_eq!(
            PortDevice::io_write(&mut p, 0x21, 1, 0x08, 0).intr,
            Some(false)
        );
        assert!(PortDevice::io_write(&mut p, 0x21, 1, 0x08, 0).is_quiet());
    }
}
