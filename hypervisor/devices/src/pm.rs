//! ACPI fixed-hardware power management registers (ACPI 6.5, 4.8 "ACPI
//! Hardware Specification" and 4.8.3 "Fixed Hardware Registers") in I/O space
//! at a base port chosen by the core:
//!
//! | offset | block        | FADT length | registers                       |
//! |--------|--------------|-------------|---------------------------------|
//! | 0x00   | PM1a_EVT_BLK | 4           | PM1_STS (+0), PM1_EN (+2)       |
//! | 0x04   | PM1a_CNT_BLK | 2           | PM1_CNT                         |
//! | 0x08   | PM_TMR_BLK   | 4           | PM_TMR, 32 bits (TMR_VAL_EXT=1) |
//! | 0x20   | GPE0_BLK     | 4           | GPE0_STS (+0), GPE0_EN (+2)     |
//!
//! The system is always in ACPI mode (FADT SMI_CMD = 0), so SCI_EN reads 1.
//! Writing SLP_EN with SLP_TYP = [`SLP_TYP_S5`] powers off; other sleep types
//! are ignored. The SCI (ISA IRQ [`SCI_IRQ`]) is level, reported as `level`
//! plus a `pulse` on each rise.
//!
//! Time: the core calls [`Pm::set_time`] (or `poll`) before each access so the
//! PM timer reads current.
use super::{Clock, Effects, IrqState, PortDevice, Request};
use alloc::boxed::Box;

/// Register offsets from the base.
pub const PM1_STS: u16 = 0x00;
pub const PM1_EN: u16 = 0x02;
pub const PM1_CNT: u16 = 0x04;
pub const PM_TMR: u16 = 0x08;
pub const GPE0_STS: u16 = 0x20;
pub const GPE0_EN: u16 = 0x22;
/// Block offsets and lengths for the FADT.
pub const PM1_EVT_BLK: u16 = 0x00;
pub const PM1_EVT_LEN: u8 = 4;
pub const PM1_CNT_BLK: u16 = 0x04;
pub const PM1_CNT_LEN: u8 = 2;
pub const PM_TMR_BLK: u16 = 0x08;
pub const PM_TMR_LEN: u8 = 4;
pub const GPE0_BLK: u16 = 0x20;
pub const GPE0_BLK_LEN: u8 = 4;

/// The PM timer's clock (ACPI 4.8.3.3).
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The timer is 32 bits wide: set FADT flag TMR_VAL_EXT (bit 8).
pub const TMR_VAL_EXT: bool = true;
/// The SCI's ISA IRQ (FADT SCI_INT).
pub const SCI_IRQ: u8 = 9;
/// The SLP_TYP value that means S5 (the DSDT's \_S5 package: 5, 5).
pub const SLP_TYP_S5: u16 = 5;

// PM1_STS / PM1_EN bits (ACPI 4.8.3.1, tables 4.16 and 4.17).
pub const TMR_STS: u16 = 1 << 0;
pub const BM_STS: u16 = 1 << 4;
pub const GBL_STS: u16 = 1 << 5;
pub const PWRBTN_STS: u16 = 1 << 8;
pub const SLPBTN_STS: u16 = 1 << 9;
pub const RTC_STS: u16 = 1 << 10;
pub const PCIEXP_WAKE_STS: u16 = 1 << 14;
pub const WAK_STS: u16 = 1 << 15;
const PM1_STS_BITS: u16 =
    TMR_STS | BM_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS | PCIEXP_WAKE_STS | WAK_STS;
/// Enable bits: TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN, PCIEXP_WAKE_DIS.
const PM1_EN_BITS: u16 = 0x4721;
/// Status bits that raise the SCI when enabled.
const PM1_SCI_BITS: u16 = TMR_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS;

// PM1_CNT bits (ACPI 4.8.3.2.1, table 4.18).
pub const SCI_EN: u16 = 1 << 0;
const BM_RLD: u16 = 1 << 1;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 7 << SLP_TYP_SHIFT;
pub const SLP_EN: u16 = 1 << 13;

pub struct Pm {
    base: u16,
    ports: &'static [(u16, u16)],
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe0_sts: u16,
    gpe0_en: u16,
    /// Guest TSC as last set.
    now: u64,
    clock: Clock,
    /// Timer ticks up to which TMR_STS has been evaluated.
    synced_ticks: u64,
    sci: bool,
    pulse: bool,
}

impl Pm {
    /// The block at `base` (PM1a_EVT_BLK = base, PM1a_CNT_BLK = base + 4,
    /// PM_TMR_BLK = base + 8, GPE0_BLK = base + 0x20).
    pub fn new(base: u16, clock: Clock) -> Self {
        // `PortDevice::ports` wants a 'static slice; this small table lives
        // as long as the VM's bus (leaked once per device instance).
        // The manifest and the ACPI tables keep the block below 0xFFD0, so
        // these port numbers don't wrap.
        let ports: &'static [(u16, u16)] = Box::leak(Box::new([
            (
                base.wrapping_add(PM1_EVT_BLK),
                u16::from(PM1_EVT_LEN + PM1_CNT_LEN),
            ),
            (base.wrapping_add(PM_TMR_BLK), u16::from(PM_TMR_LEN)),
            (base.wrapping_add(GPE0_BLK), u16::from(GPE0_BLK_LEN)),
        ]));
        Self {
            base,
            ports,
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: SCI_EN,
            gpe0_sts: 0,
            gpe0_en: 0,
            now: 0,
            clock,
            synced_ticks: 0,
            sci: false,
            pulse: false,
        }
    }

    pub fn base(&self) -> u16 {
        self.base
    }

    /// Brings the timer to guest TSC `now` (monotonic; earlier times are ignored).
    pub fn set_time(&mut self, now: u64) {
        self.now = self.now.max(now);
        let t = self.clock.count(self.now, PM_TIMER_HZ);
        // TMR_STS is set whenever bit 31 of the counter changes (4.8.3.3).
        if t >> 31 != self.synced_ticks >> 31 {
            self.pm1_sts |= TMR_STS;
        }
        self.synced_ticks = t;
        self.update_sci();
    }

    /// The PM timer value now (32 bits).
    pub fn timer(&self) -> u32 {
        self.clock.count(self.now, PM_TIMER_HZ) as u32
    }

    /// A press of the fixed-feature power button (FADT PWR_BUTTON flag = 0):
    /// sets PWRBTN_STS, which raises the SCI when PWRBTN_EN is set, so the
    /// OS can shut down cleanly.
    pub fn press_power_button(&mut self) {
        self.pm1_sts |= PWRBTN_STS;
        self.update_sci();
    }

    /// Sets general-purpose event status bit `n` (0-15).
    pub fn raise_gpe(&mut self, n: u8) {
        if n < 16 {
            self.gpe0_sts |= 1 << n;
            self.update_sci();
        }
    }

    fn sci_level(&self) -> bool {
        self.pm1_cnt & SCI_EN != 0
            && (self.pm1_sts & self.pm1_en & PM1_SCI_BITS != 0 || self.gpe0_sts & self.gpe0_en != 0)
    }

    fn update_sci(&mut self) {
        let s = self.sci_level();
        if s && !self.sci {
            self.pulse = true;
        }
        self.sci = s;
    }

    fn read_byte(&self, off: u16) -> u8 {
        let reg = |v: u16| {
            if off & 1 == 0 {
                v as u8
            } else {
                (v >> 8) as u8
            }
        };
        match off {
            0x00..=0x01 => reg(self.pm1_sts),
            0x02..=0x03 => reg(self.pm1_en),
            // SLP_EN and GBL_RLS are write-only and read as 0.
            0x04..=0x05 => reg(self.pm1_cnt),
            0x08..=0x0B => (self.timer() >> ((off & 3) << 3)) as u8,
            0x20..=0x21 => reg(self.gpe0_sts),
            0x22..=0x23 => reg(self.gpe0_en),
            _ => 0xFF,
        }
    }

    fn write_byte(&mut self, off: u16, v: u8) -> Request {
        let shift = (off & 1) << 3;
        let bits = u16::from(v) << shift;
        let lane = 0xFFu16 << shift;
        let merge = |old: u16, mask: u16| (old & !(lane & mask)) | (bits & mask);
        match off {
            // Status bits are cleared by writing 1 (4.8.3.1.1).
            0x00..=0x01 => self.pm1_sts &= !(bits & PM1_STS_BITS),
            0x02..=0x03 => self.pm1_en = merge(self.pm1_en, PM1_EN_BITS),
            0x04..=0x05 => {
                self.pm1_cnt = merge(self.pm1_cnt, BM_RLD | SLP_TYP_MASK) | SCI_EN;
                if bits & SLP_EN != 0 {
                    let typ = (self.pm1_cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
                    if typ == SLP_TYP_S5 {
                        return Request::PowerOff;
                    }
                    // S1-S4 are not supported: the write is ignored and the
                    // OS sees the system never slept.
                }
            }
            0x20..=0x21 => self.gpe0_sts &= !bits,
            0x22..=0x23 => self.gpe0_en = merge(self.gpe0_en, 0xFFFF),
            _ => {}
        }
        Request::None
    }
}

/// Register-level access (the bus goes through [`PortDevice`]).
impl Pm {
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let off = port.wrapping_sub(self.base);
        (0..u16::from(size.min(4))).fold(0, |v, i| {
            v | u32::from(self.read_byte(off.wrapping_add(i))) << (i << 3)
        })
    }

    pub fn write(&mut self, port: u16, size: u8, value: u32) -> Request {
        let off = port.wrapping_sub(self.base);
        let mut action = Request::None;
        for i in 0..u16::from(size.min(4)) {
            let a = self.write_byte(off.wrapping_add(i), (value >> (i << 3)) as u8);
            if a != Request::None {
                action = a;
            }
        }
        self.update_sci();
        action
    }

    pub fn poll(&mut self, now: u64) -> IrqState {
        self.set_time(now);
        let m = 1u16 << SCI_IRQ;
        let st = IrqState {
            level: if self.sci { m } else { 0 },
            pulse: if self.pulse { m } else { 0 },
        };
        self.pulse = false;
        st
    }

    /// With TMR_EN set, the next change of timer bit 31.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.pulse {
            return Some(self.now);
        }
        if self.pm1_en & TMR_STS == 0 || self.pm1_sts & TMR_STS != 0 {
            return None;
        }
        let next = (self.synced_ticks >> 31).saturating_add(1) << 31;
        Some(self.clock.at(next, PM_TIMER_HZ))
    }
}

/// Every access reports the IRQ line (`1 << SCI_IRQ`) and, when it moved, the
/// next deadline; time-driven changes come from [`PortDevice::advance`].
impl PortDevice for Pm {
    fn name(&self) -> &'static str {
        "acpi-pm"
    }
    fn ports(&self) -> &'static [(u16, u16)] {
        self.ports
    }
    fn irq_lines(&self) -> u16 {
        1 << SCI_IRQ
    }
    fn io_read(&mut self, port: u16, size: u8, now: u64) -> Effects {
        self.set_time(now);
        let before = self.next_deadline();
        let fx = Effects::read(u64::from(self.read(port, size)));
        let lines = self.poll(now).lines(1 << SCI_IRQ);
        fx.with_lines(lines)
            .with_deadline(before, self.next_deadline())
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32, now: u64) -> Effects {
        self.set_time(now);
        let before = self.next_deadline();
        let r = self.write(port, size, value);
        let fx = Effects::request(r);
        let lines = self.poll(now).lines(1 << SCI_IRQ);
        fx.with_lines(lines)
            .with_deadline(before, self.next_deadline())
    }
    fn advance(&mut self, now: u64) -> Effects {
        let lines = self.poll(now).lines(1 << SCI_IRQ);
        Effects {
            deadline: Some(self.next_deadline()),
            ..Effects::none().with_lines(lines)
        }
    }
    fn deadline(&self) -> Option<u64> {
        self.next_deadline()
    }
}

/// The PM block's registers and its view of time (the base port is the
/// platform's wiring, not state).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PmState {
    pub pm1_sts: u16,
    pub pm1_en: u16,
    pub pm1_cnt: u16,
    pub gpe0_sts: u16,
    pub gpe0_en: u16,
    /// Guest TSC.
    pub now: u64,
    pub synced_ticks: u64,
    pub sci: bool,
    pub pulse: bool,
}

impl crate::state::DeviceState for Pm {
    type Data = PmState;
    const VERSION: u32 = 1;
    fn save(&self) -> crate::state::State<PmState> {
        crate::state::State {
            version: 1,
            data: PmState {
                pm1_sts: self.pm1_sts,
                pm1_en: self.pm1_en,
                pm1_cnt: self.pm1_cnt,
                gpe0_sts: self.gpe0_sts,
                gpe0_en: self.gpe0_en,
                now: self.now,
                synced_ticks: self.synced_ticks,
                sci: self.sci,
                pulse: self.pulse,
            },
        }
    }
    fn restore(
        &mut self,
        state: &crate::state::State<PmState>,
    ) -> Result<(), crate::state::StateError> {
        crate::state::check_version(state.version, 1)?;
        let s = &state.data;
        let cnt = BM_RLD | SLP_TYP_MASK | SCI_EN;
        crate::state::ensure(s.pm1_en & !PM1_EN_BITS == 0, "PM1 enable bits")?;
        crate::state::ensure(s.pm1_cnt & !cnt == 0, "PM1 control bits")?;
        self.pm1_sts = s.pm1_sts;
        self.pm1_en = s.pm1_en;
        self.pm1_cnt = s.pm1_cnt;
        self.gpe0_sts = s.gpe0_sts;
        self.gpe0_en = s.gpe0_en;
        self.now = s.now;
        self.synced_ticks = s.synced_ticks;
        self.sci = s.sci;
        self.pulse = s.pulse;
        Ok(())
    }
    fn reset(&mut self) {
        // Field by field: `Pm::new` would leak another port table.
        self.pm1_sts = 0;
        self.pm1_en = 0;
        self.pm1_cnt = SCI_EN;
        self.gpe0_sts = 0;
        self.gpe0_en = 0;
        self.now = 0;
        self.synced_ticks = 0;
        self.sci = false;
        self.pulse = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticks_to_ns(t: u64) -> u64 {
        crate::NS_CLOCK.at(t, PM_TIMER_HZ)
    }

    const BASE: u16 = 0x600;

    #[test]
    fn port_ranges_follow_base() {
        let p = Pm::new(BASE, crate::NS_CLOCK);
        assert_eq!(p.ports(), &[(0x600, 6), (0x608, 4), (0x620, 4)]);
        assert_eq!(p.base(), 0x600);
    }

    #[test]
    fn sci_en_reads_one_from_reset() {
        let mut p = Pm::new(BASE, crate::NS_CLOCK);
        assert_eq!(p.read(BASE + PM1_CNT, 2), 1);
        p.write(BASE + PM1_CNT, 2, 0);
        assert_eq!(p.read(BASE + PM1_CNT, 2) & 1, 1, "always ACPI mode");
    }

    #[test]
    fn timer_counts_at_3_579545_mhz() {
        let mut p = Pm::new(BASE, crate::NS_CLOCK);
        p.set_time(1_000_000_000);
        assert_eq!(p.read(BASE + PM_TMR, 4), 3_579_545);
        p.set_time(1_000_001_000);
        assert_eq!(p.read(BASE + PM_TMR, 4), 3_579_548);
        // Byte and word reads see parts of the same value.
        assert_eq!(p.read(BASE + PM_TMR, 2), 3_579_548 & 0xFFFF);
        assert_eq!(p.read(BASE + PM_TMR + 2, 1), (3_579_548 >> 16) & 0xFF);
        // Writes are ignored.
        p.write(BASE + PM_TMR, 4, 0);
        assert_eq!(p.read(BASE + PM_TMR, 4), 3_579_548);
    }

    #[test]
    fn timer_is_32_bits_and_wraps() {
        let mut p = Pm::new(BASE, crate::NS_CLOCK);
        let wrap_ns = ticks_to_ns(1 << 32);
        p.set_time(wrap_ns - 1_000);
        assert!(p.read(BASE + PM_TMR, 4) > 0xFFFF_0000);
        p.set_time(wrap_ns);
        assert_eq!(p.read(BASE + PM_TMR, 4), 0);
        p.set_time(0);
        assert_eq!(p.timer(), 0, "time never goes back");
    }

    #[test]
    fn tmr_sts_on_bit31_change_and_sci() {
        let mut p = Pm::new(BASE, crate::NS_CLOCK);
        p.write(BASE + PM1_EN, 2, u32::from(TMR_STS));
        let half = ticks_to_ns(1 << 31);
        assert_eq!(p.next_deadline(), Some(half));
        assert_eq!(p.poll(half - 1), IrqState::default());
        let st = p.poll(half);
        assert_eq!(st.level, 1 << 9);
        assert_eq!(st.pulse, 1 << 9);
        assert_eq!(p.read(BASE + PM1_STS, 2) & 1, 1);
        assert_eq!(p.next_deadline(), None);
        // Write 1 to clear.
        p.write(BASE + PM1_STS, 2, 1);
        assert_eq!(p.read(BASE + PM1_STS, 2), 0);
        assert_eq!(p.poll(half).level, 0);
        assert_eq!(p.next_deadline(), Some(ticks_to_ns(2 << 31)));
    }

    #[test]
    fn status_is_write_one_to_clear() {
        let mut p = Pm::new(BASE, crate::NS_CLOCK);
        p.press_power_button();
        assert_eq!(p.read(BASE + PM1_STS, 2), u32::from(PWRBTN_STS));
        p.write(BASE + PM1_STS, 2, 0);
        assert_eq!(p.read(BASE + PM1_STS, 2), u32::from(PWRBTN_STS));
        p.write(BASE + PM1_STS, 1, 0xFF);
        assert_eq!(
            p.read(BASE + PM1_STS, 2),
            u32::from(PWRBTN_STS),
            "other byte"
        );
        p.write(BASE + PM1_STS + 1, 1, 0x01);
        assert_eq!(p.read(BASE + PM1_STS, 2), 0);
    }

    #[test]
    fn power_button_raises_sci_when_enabled() {
        let mut p = Pm::new(BASE, crate::NS_CLOCK);
        p.press_power_button();
        assert_eq!(p.poll(0), IrqState::default());
        p.write(BASE + PM1_EN, 2, u32::from(PWRBTN_STS));
        assert_eq!(p.read(BASE + PM1_EN, 2), u32::from(PWRBTN_STS));
        let st = p.poll(0);
        assert_eq!((st.level, st.pulse), (1 << 9, 1 << 9));
        p.write(BASE + PM1_STS, 2, u32::from(PWRBTN_STS));
        assert_eq!(p.poll(0), IrqState::default());
    }

    #[test]
    fn enable_register_keeps_defined_bits() {
        let mut p = Pm::new(BASE, crate::NS_CLOCK);
        p.write(BASE + PM1_EN, 2, 0xFFFF);
        assert_eq!(p.read(BASE + PM1_EN, 2), 0x4721);
        p.write(BASE + PM1_EN + 1, 1, 0);
        assert_eq!(p.read(BASE + PM1_EN, 2), 0x0021);
    }

    #[test]
    fn s5_powers_off() {
        let mut p = Pm::new(BASE, crate::NS_CLOCK);
        // Linux writes SLP_TYP first, then SLP_TYP | SLP_EN.
        let typ = u32::from(SLP_TYP_S5 << 10);
        assert_eq!(p.write(BASE + PM1_CNT, 2, typ | 1), Request::None);
        assert_eq!(p.read(BASE + PM1_CNT, 2), typ | 1, "SLP_TYP reads back");
        assert_eq!(
            p.write(BASE + PM1_CNT, 2, typ | 1 | (1 << 13)),
            Request::PowerOff
        );
        // Byte write of the high half does it too.
        let mut p = Pm::new(BASE, crate::NS_CLOCK);
        assert_eq!(
            p.write(BASE + PM1_CNT + 1, 1, (typ | (1 << 13)) >> 8),
            Request::PowerOff
        );
    }

    #[test]
    fn other_sleep_states_are_ignored() {
        let mut p = Pm::new(BASE, crate::NS_CLOCK);
        for typ in [0u32, 1, 2, 3, 4, 6, 7] {
            assert_eq!(
                p.write(BASE + PM1_CNT, 2, typ << 10 | 1 << 13 | 1),
                Request::None
            );
            assert_eq!(p.read(BASE + PM1_CNT, 2) & (1 << 13), 0, "SLP_EN reads 0");
        }
        // SLP_TYP = 5 without SLP_EN does nothing.
        assert_eq!(p.write(BASE + PM1_CNT, 2, 5 << 10), Request::None);
    }

    #[test]
    fn gpe_block() {
        let mut p = Pm::new(BASE, crate::NS_CLOCK);
        p.raise_gpe(3);
        assert_eq!(p.read(BASE + GPE0_STS, 2), 8);
        assert_eq!(p.poll(0), IrqState::default());
        p.write(BASE + GPE0_EN, 2, 8);
        assert_eq!(p.read(BASE + GPE0_EN, 2), 8);
        assert_eq!(p.read(BASE + GPE0_STS, 4), 0x0008_0008);
        assert_eq!(p.poll(0).level, 1 << 9);
        p.write(BASE + GPE0_STS, 1, 8);
        assert_eq!(p.poll(0).level, 0);
        p.raise_gpe(16);
        assert_eq!(p.read(BASE + GPE0_STS, 2), 0);
    }

    #[test]
    fn unused_offsets_read_ones() {
        let mut p = Pm::new(BASE, crate::NS_CLOCK);
        assert_eq!(p.read(BASE + 6, 1), 0xFF);
        assert_eq!(p.read(BASE + 4, 4), 0xFFFF_0001);
    }
}
