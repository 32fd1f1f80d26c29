//! MC146818A real-time clock and CMOS RAM (Motorola MC146818A data sheet) at
//! index port 0x70 / data port 0x71, as in a PC: 14 clock registers and 114
//! bytes of RAM, the century byte at 0x32 (the ACPI FADT `CENTURY` field).
//!
//! The clock keeps its registers in the guest-selected format (BCD or binary,
//! 12 or 24 hour) and performs the once-a-second update lazily from guest
//! time. Update boundaries are at `anchor + k * 1 s`; the update-in-progress
//! bit is raised for the 244 µs before each (data sheet, "Update Cycle").
//! Periodic, alarm and update-ended interrupts drive ISA IRQ 8.
//!
//! Time: guest TSC ticks (one second is the [`Clock`]'s frequency); every
//! [`PortDevice`] access carries the time.
use super::clocked::{self, Clocked};
use super::{Clock, Effects, IrqState, PortDevice};

pub const PORT_INDEX: u16 = 0x70;
pub const PORT_DATA: u16 = 0x71;
pub const IRQ: u8 = 8;
/// CMOS index of the century byte (put in the FADT `CENTURY` field).
pub const CENTURY_INDEX: u8 = 0x32;

pub const REG_SECONDS: u8 = 0x00;
pub const REG_SECONDS_ALARM: u8 = 0x01;
pub const REG_MINUTES: u8 = 0x02;
pub const REG_MINUTES_ALARM: u8 = 0x03;
pub const REG_HOURS: u8 = 0x04;
pub const REG_HOURS_ALARM: u8 = 0x05;
pub const REG_WEEKDAY: u8 = 0x06;
pub const REG_DAY: u8 = 0x07;
pub const REG_MONTH: u8 = 0x08;
pub const REG_YEAR: u8 = 0x09;
pub const REG_A: u8 = 0x0A;
pub const REG_B: u8 = 0x0B;
pub const REG_C: u8 = 0x0C;
pub const REG_D: u8 = 0x0D;

// Register A.
const A_UIP: u8 = 1 << 7;
const A_DV_MASK: u8 = 0x70;
/// DV2-DV0 = 11x holds the divider chain in reset.
const A_DV_RESET: u8 = 0x60;
const A_RS_MASK: u8 = 0x0F;
// Register B.
const B_SET: u8 = 1 << 7;
const B_PIE: u8 = 1 << 6;
const B_AIE: u8 = 1 << 5;
const B_UIE: u8 = 1 << 4;
const B_DM_BINARY: u8 = 1 << 2;
const B_24H: u8 = 1 << 1;
// Register C.
const C_IRQF: u8 = 1 << 7;
const C_PF: u8 = 1 << 6;
const C_AF: u8 = 1 << 5;
const C_UF: u8 = 1 << 4;
// Register D.
const D_VRT: u8 = 1 << 7;

/// UIP is raised this long before an update (data sheet: tBUC = 244 µs).
const UIP_WINDOW_NS: u64 = 244_000;
/// The 32.768 kHz time base.
const BASE_HZ: i128 = 32_768;
const SECS_PER_DAY: i64 = 86_400;

/// A calendar date and time of day (the RTC keeps no time zone; PCs keep
/// local time or UTC by convention, Linux guests usually UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    /// Full year, e.g. 2024.
    pub year: u16,
    /// 1-12.
    pub month: u8,
    /// 1-31.
    pub day: u8,
    /// 0-23.
    pub hour: u8,
    /// 0-59.
    pub minute: u8,
    /// 0-59.
    pub second: u8,
}

pub fn is_leap_year(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub fn days_in_month(y: i64, m: u8) -> u8 {
    match m {
        2 if is_leap_year(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date. Counts in
/// 400-year cycles of 146097 days, with the year starting in March so that
/// the leap day is the last day of the year.
///
/// Exact for any year a `u16` holds (and far beyond); saturates instead of
/// overflowing for absurd years.
pub fn days_from_civil(y: i64, m: u8, d: u8) -> i64 {
    // Month and day are bytes and year_of_cycle < 400: the small terms
    // below can't overflow; only the cycle count saturates.
    let (m, d) = (i64::from(m), i64::from(d));
    let y = if m <= 2 { y.saturating_sub(1) } else { y };
    let cycle = y.div_euclid(400);
    let year_of_cycle = y.rem_euclid(400);
    // March = 0; month lengths 31,30,31,30,31 repeat, so (153*m+2)/5 is the
    // day of the year at the start of month m.
    let mp = m.saturating_add(9) % 12;
    let day_of_year = (mp.saturating_mul(153).saturating_add(2) / 5)
        .saturating_add(d)
        .saturating_sub(1);
    let day_of_cycle = year_of_cycle
        .saturating_mul(365)
        .saturating_add(year_of_cycle / 4)
        .saturating_sub(year_of_cycle / 100)
        .saturating_add(day_of_year);
    // 719468 days from 0000-03-01 to 1970-01-01.
    cycle
        .saturating_mul(146_097)
        .saturating_add(day_of_cycle)
        .saturating_sub(719_468)
}

/// The inverse of [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    // Everything below the cycle count is smaller than 146097: only the
    // cycle's year saturates (for absurd inputs).
    let z = days.saturating_add(719_468);
    let cycle = z.div_euclid(146_097);
    let day_of_cycle = z.rem_euclid(146_097);
    // Years of the cycle: 365 days each, plus leap days every 4 years except
    // centuries (the last day of the cycle belongs to year 399).
    let year_of_cycle = day_of_cycle
        .saturating_sub(day_of_cycle / 1460)
        .saturating_add(day_of_cycle / 36_524)
        .saturating_sub(day_of_cycle / 146_096)
        / 365;
    let day_of_year = day_of_cycle.saturating_sub(
        year_of_cycle
            .saturating_mul(365)
            .saturating_add(year_of_cycle / 4)
            .saturating_sub(year_of_cycle / 100),
    );
    let mp = day_of_year.saturating_mul(5).saturating_add(2) / 153;
    let d = day_of_year
        .saturating_sub(mp.saturating_mul(153).saturating_add(2) / 5)
        .saturating_add(1);
    let m = if mp < 10 {
        mp.saturating_add(3)
    } else {
        mp.saturating_sub(9)
    };
    let y = cycle
        .saturating_mul(400)
        .saturating_add(year_of_cycle)
        .saturating_add(i64::from(m <= 2));
    (y, m as u8, d as u8)
}

impl DateTime {
    /// Clamps every field into its valid range.
    pub fn normalized(self) -> Self {
        let month = self.month.clamp(1, 12);
        Self {
            year: self.year,
            month,
            day: self
                .day
                .clamp(1, days_in_month(i64::from(self.year), month)),
            hour: self.hour.min(23),
            minute: self.minute.min(59),
            second: self.second.min(59),
        }
    }

    /// Seconds since 1970-01-01 00:00:00 (fields clamped first).
    pub fn to_unix(self) -> i64 {
        let t = self.normalized();
        // A u16 year's days times 86400 is far below i64::MAX.
        days_from_civil(i64::from(t.year), t.month, t.day)
            .saturating_mul(SECS_PER_DAY)
            .saturating_add(i64::from(t.hour).saturating_mul(3600))
            .saturating_add(i64::from(t.minute).saturating_mul(60))
            .saturating_add(i64::from(t.second))
    }

    pub fn from_unix(secs: i64) -> Self {
        let (y, month, day) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
        let s = secs.rem_euclid(SECS_PER_DAY);
        Self {
            year: y.clamp(0, i64::from(u16::MAX)) as u16,
            month,
            day,
            hour: (s / 3600) as u8,
            minute: (s / 60 % 60) as u8,
            second: (s % 60) as u8,
        }
    }

    /// Day of the week in the RTC's numbering: 1 = Sunday ... 7 = Saturday.
    pub fn weekday(self) -> u8 {
        let t = self.normalized();
        // 1970-01-01 was a Thursday (5).
        let days = days_from_civil(i64::from(t.year), t.month, t.day);
        (days.saturating_add(4).rem_euclid(7).saturating_add(1)) as u8
    }
}

fn to_bcd(v: u8) -> u8 {
    (v / 10) << 4 | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    // At most 15 * 10 + 15.
    (v >> 4).wrapping_mul(10).wrapping_add(v & 0x0F)
}

/// A register value in the format register B selects (DM bit).
fn encode(v: u8, reg_b: u8) -> u8 {
    if reg_b & B_DM_BINARY != 0 {
        v
    } else {
        to_bcd(v)
    }
}

fn decode(raw: u8, reg_b: u8) -> u8 {
    if reg_b & B_DM_BINARY != 0 {
        raw
    } else {
        from_bcd(raw)
    }
}

/// 12-hour mode: 1-12 with bit 7 = PM (data sheet, "Time, Calendar and Alarm
/// Locations").
fn encode_hour(h: u8, reg_b: u8) -> u8 {
    if reg_b & B_24H != 0 {
        return encode(h, reg_b);
    }
    let h12 = match h % 12 {
        0 => 12,
        x => x,
    };
    encode(h12, reg_b) | if h >= 12 { 0x80 } else { 0 }
}

fn decode_hour(raw: u8, reg_b: u8) -> u8 {
    if reg_b & B_24H != 0 {
        return decode(raw, reg_b);
    }
    let h12 = decode(raw & 0x7F, reg_b);
    // h12 % 12 < 12: the sum is below 24.
    (h12 % 12).wrapping_add(if raw & 0x80 != 0 { 12 } else { 0 })
}

/// Decodes raw clock registers 0x00-0x09 as read from a (host) MC146818:
/// `reg_b` gives the format, `century` is the raw byte at CMOS 0x32 in the same
/// format. A century outside 19-99 (an absent or unset byte) is taken as 19
/// for two-digit years 70-99 and 20 otherwise. Out-of-range fields are clamped.
pub fn parse_cmos_time(regs: [u8; 10], reg_b: u8, century: u8) -> DateTime {
    let raw = |r: u8| regs.get(usize::from(r)).copied().unwrap_or(0);
    let yy = decode(raw(REG_YEAR), reg_b).min(99);
    let cc = match decode(century, reg_b) {
        c @ 19..=99 => c,
        _ if yy >= 70 => 19,
        _ => 20,
    };
    DateTime {
        // cc <= 99 and yy <= 99.
        year: u16::from(cc).wrapping_mul(100).wrapping_add(u16::from(yy)),
        month: decode(raw(REG_MONTH), reg_b),
        day: decode(raw(REG_DAY), reg_b),
        hour: decode_hour(raw(REG_HOURS), reg_b),
        minute: decode(raw(REG_MINUTES), reg_b),
        second: decode(raw(REG_SECONDS), reg_b),
    }
    .normalized()
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rtc {
    /// Registers 0x00-0x0D and the RAM; 0x0A-0x0D hold the writable bits only
    /// (UIP, C and D are computed).
    #[serde(with = "crate::state::array")]
    ram: [u8; 128],
    /// Last value written to port 0x70 (bit 7: NMI disable, kept, ignored).
    index_reg: u8,
    /// Update boundaries are at `anchor + k * 1 s` (guest TSC), periodic
    /// ticks at multiples of the period counted from it (the divider
    /// chain's phase).
    anchor: i128,
    /// Time up to which updates and flags have been applied.
    synced: u64,
    now: u64,
    clock: Clock,
    /// Register C flags (PF, AF, UF).
    flags: u8,
    irq_reported: bool,
    pulse: bool,
}

impl Rtc {
    /// A clock showing `dt` at guest TSC `now`, taken as the instant of
    /// an update (the next one comes 1 s later). Format: BCD, 24-hour (what a
    /// PC BIOS sets); register A 0x26 (32.768 kHz time base, 1024 Hz rate);
    /// valid RAM and time (register D VRT).
    pub fn new(dt: DateTime, now: u64, clock: Clock) -> Self {
        let mut rtc = Self {
            ram: [0; 128],
            index_reg: 0,
            anchor: i128::from(now),
            synced: now,
            now,
            clock,
            flags: 0,
            irq_reported: false,
            pulse: false,
        };
        rtc.set_reg(REG_A, 0x26);
        rtc.set_reg(REG_B, B_24H);
        rtc.store_time(dt.normalized().to_unix(), dt.weekday());
        rtc
    }

    /// Brings the clock to guest TSC `now` (monotonic; earlier times are ignored).
    pub fn set_time(&mut self, now: u64) {
        self.now = self.now.max(now);
        self.sync();
    }

    /// TSC ticks per second.
    fn second(&self) -> i128 {
        i128::from(self.clock.hz())
    }

    /// Sets a CMOS RAM byte (0x0E-0x7F), e.g. for firmware-defined contents.
    pub fn set_ram(&mut self, index: u8, value: u8) {
        if (0x0E..0x80).contains(&index) {
            self.set_reg(index, value);
        }
    }

    /// The date and time the clock registers show now.
    pub fn datetime(&mut self) -> DateTime {
        self.sync();
        let (secs, _) = self.load_time();
        DateTime::from_unix(secs)
    }

    /// Register or RAM byte `i` (0..0x7F; callers mask the index).
    fn reg(&self, i: u8) -> u8 {
        self.ram.get(usize::from(i)).copied().unwrap_or(0xFF)
    }

    fn set_reg(&mut self, i: u8, v: u8) {
        if let Some(r) = self.ram.get_mut(usize::from(i)) {
            *r = v;
        }
    }

    fn running(&self) -> bool {
        self.reg(REG_A) & A_DV_MASK & A_DV_RESET != A_DV_RESET
    }

    /// Writes the clock registers for `secs` since 1970 and the weekday.
    fn store_time(&mut self, secs: i64, weekday: u8) {
        let b = self.reg(REG_B);
        let t = DateTime::from_unix(secs);
        self.set_reg(REG_SECONDS, encode(t.second, b));
        self.set_reg(REG_MINUTES, encode(t.minute, b));
        self.set_reg(REG_HOURS, encode_hour(t.hour, b));
        self.set_reg(REG_WEEKDAY, encode(weekday, b));
        self.set_reg(REG_DAY, encode(t.day, b));
        self.set_reg(REG_MONTH, encode(t.month, b));
        self.set_reg(REG_YEAR, encode((t.year % 100) as u8, b));
        self.set_reg(CENTURY_INDEX, encode((t.year / 100).min(99) as u8, b));
    }

    /// Reads the clock registers back (invalid contents clamped).
    fn load_time(&self) -> (i64, u8) {
        let mut regs = [0u8; 10];
        for (r, &v) in regs.iter_mut().zip(self.ram.iter()) {
            *r = v;
        }
        let b = self.reg(REG_B);
        let t = parse_cmos_time(regs, b, self.reg(CENTURY_INDEX));
        let weekday = decode(self.reg(REG_WEEKDAY), b).clamp(1, 7);
        (t.to_unix(), weekday)
    }

    /// Whether the alarm registers match the time `secs` (an alarm byte with
    /// its two high bits set, 0xC0-0xFF, matches anything: data sheet,
    /// "Alarm").
    fn alarm_matches(&self, secs: i64) -> bool {
        let b = self.reg(REG_B);
        let s = secs.rem_euclid(SECS_PER_DAY);
        let now = [
            (REG_SECONDS_ALARM, encode((s % 60) as u8, b)),
            (REG_MINUTES_ALARM, encode((s / 60 % 60) as u8, b)),
            (REG_HOURS_ALARM, encode_hour((s / 3600) as u8, b)),
        ];
        now.iter().all(|&(reg, cur)| {
            let a = self.reg(reg);
            a & 0xC0 == 0xC0 || a == cur
        })
    }

    /// How many boundaries of a period of `num / den` TSC ticks, counted
    /// from the anchor, fall in (from, to].
    fn crossings(&self, from: u64, to: u64, num: i128, den: i128) -> i128 {
        // Counting in units of num/den ticks from the anchor.
        // Times are u64 ticks and den is at most 32768: far inside i128.
        let idx = |t: u64| {
            i128::from(t)
                .saturating_sub(self.anchor)
                .saturating_mul(den)
                .checked_div_euclid(num)
                .unwrap_or(0)
        };
        idx(to).saturating_sub(idx(from))
    }

    /// Periodic interrupt period as a fraction of TSC ticks (num/den), from RS3-RS0
    /// with the 32.768 kHz time base (data sheet, Table "Periodic Interrupt
    /// Rate"): RS 1 and 2 give 3.90625 and 7.8125 ms, RS n >= 3 gives
    /// 2^(n-1) cycles of the time base.
    fn periodic(&self) -> Option<(i128, i128)> {
        let cycles: i128 = match self.reg(REG_A) & A_RS_MASK {
            0 => return None,
            1 => 128,
            2 => 256,
            // rs is 3..15 here.
            rs => 1 << rs.saturating_sub(1),
        };
        Some((cycles.saturating_mul(self.second()), BASE_HZ))
    }

    /// Applies updates and flags up to `now`.
    fn sync(&mut self) {
        let (from, to) = (self.synced, self.now);
        if to <= from {
            return;
        }
        self.synced = to;
        if !self.running() {
            return;
        }
        let updates = self.crossings(from, to, self.second(), 1);
        if updates > 0 && self.reg(REG_B) & B_SET == 0 {
            let (secs, weekday) = self.load_time();
            // One alarm check per update; a day covers every match.
            let alarm = (1..=updates.min(i128::from(SECS_PER_DAY)) as i64)
                .any(|k| self.alarm_matches(secs.saturating_add(k)));
            let new = secs.saturating_add(i64::try_from(updates).unwrap_or(i64::MAX));
            let days = new
                .div_euclid(SECS_PER_DAY)
                .saturating_sub(secs.div_euclid(SECS_PER_DAY));
            // weekday is 1..7.
            let weekday = i64::from(weekday)
                .saturating_sub(1)
                .saturating_add(days)
                .rem_euclid(7)
                .saturating_add(1) as u8;
            self.store_time(new, weekday);
            self.flags |= C_UF;
            if alarm {
                self.flags |= C_AF;
            }
        }
        if let Some((num, den)) = self.periodic() {
            if self.crossings(from, to, num, den) > 0 {
                self.flags |= C_PF;
            }
        }
        self.update_irq();
    }

    /// IRQF: a flag with its enable bit set (data sheet, "Register C").
    fn irqf(&self) -> bool {
        let b = self.reg(REG_B);
        (self.flags & C_PF != 0 && b & B_PIE != 0)
            || (self.flags & C_AF != 0 && b & B_AIE != 0)
            || (self.flags & C_UF != 0 && b & B_UIE != 0)
    }

    fn update_irq(&mut self) {
        let irq = self.irqf();
        if irq && !self.irq_reported {
            self.pulse = true;
        }
        self.irq_reported = irq;
    }

    /// Whether UIP is set now: within 244 µs before the next update.
    fn uip(&self) -> bool {
        if !self.running() || self.reg(REG_B) & B_SET != 0 {
            return false;
        }
        let second = self.second();
        let since = i128::from(self.now)
            .saturating_sub(self.anchor)
            .rem_euclid(second);
        // since is in 0..second.
        second.saturating_sub(since) <= i128::from(self.clock.from_ns(UIP_WINDOW_NS))
    }

    fn read_data(&mut self) -> u8 {
        self.sync();
        let i = self.index_reg & 0x7F;
        match i {
            REG_A => self.reg(REG_A) | if self.uip() { A_UIP } else { 0 },
            REG_C => {
                // Reading C clears all flags and IRQF.
                let v = self.flags | if self.irqf() { C_IRQF } else { 0 };
                self.flags = 0;
                self.update_irq();
                v
            }
            REG_D => D_VRT,
            _ => self.reg(i),
        }
    }

    fn write_data(&mut self, v: u8) {
        self.sync();
        let i = self.index_reg & 0x7F;
        match i {
            REG_A => {
                let was_running = self.running();
                self.set_reg(REG_A, v & !A_UIP);
                if !was_running && self.running() {
                    // Leaving divider reset: the first update comes 500 ms
                    // later (data sheet, "Divider Control").
                    self.anchor = i128::from(self.now).saturating_sub(self.second() / 2);
                }
            }
            REG_B => {
                let mut v = v;
                // "The SET bit going high clears the UIE bit."
                if v & B_SET != 0 && self.reg(REG_B) & B_SET == 0 {
                    v &= !B_UIE;
                }
                self.set_reg(REG_B, v);
            }
            REG_C | REG_D => {}
            _ => self.set_reg(i, v),
        }
        self.update_irq();
    }

    fn next_event(&self) -> Option<i128> {
        if self.irq_reported || !self.running() {
            // IRQ 8 only rises again after register C is read.
            return None;
        }
        let now = i128::from(self.now);
        let b = self.reg(REG_B);
        let after = |num: i128, den: i128| {
            let k = now
                .saturating_sub(self.anchor)
                .saturating_mul(den)
                .checked_div_euclid(num)
                .unwrap_or(0)
                .saturating_add(1);
            // den >= 1: BASE_HZ or 1.
            let ticks = k
                .saturating_mul(num)
                .saturating_add(den)
                .saturating_sub(1)
                .checked_div(den)
                .unwrap_or(0);
            self.anchor.saturating_add(ticks)
        };
        let mut next: Option<i128> = None;
        if b & (B_UIE | B_AIE) != 0 && b & B_SET == 0 {
            next = Some(after(self.second(), 1));
        }
        if b & B_PIE != 0 {
            if let Some((num, den)) = self.periodic() {
                let t = after(num, den);
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }
}

/// Register-level access (the bus goes through [`PortDevice`]).
impl Rtc {
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let mut v = 0;
        for i in 0..u16::from(size.min(4)) {
            let b = match port.wrapping_add(i) {
                PORT_INDEX => self.index_reg,
                PORT_DATA => self.read_data(),
                _ => 0xFF,
            };
            v |= u32::from(b) << (i << 3);
        }
        v
    }

    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        for i in 0..u16::from(size.min(4)) {
            let b = (value >> (i << 3)) as u8;
            match port.wrapping_add(i) {
                PORT_INDEX => self.index_reg = b,
                PORT_DATA => self.write_data(b),
                _ => {}
            }
        }
    }

    /// IRQ 8: `level` is IRQF (the chip's IRQ output, held until register C
    /// is read) and `pulse` marks each time it was raised since the last poll.
    pub fn poll(&mut self, now: u64) -> IrqState {
        self.set_time(now);
        let m = 1u16 << IRQ;
        let st = IrqState {
            level: if self.irq_reported { m } else { 0 },
            pulse: if self.pulse { m } else { 0 },
        };
        self.pulse = false;
        st
    }

    /// The next periodic tick (PIE) or update (UIE/AIE) while IRQF is clear.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.pulse {
            return Some(self.now);
        }
        self.next_event()
            .map(|t| t.clamp(0, i128::from(u64::MAX)) as u64)
    }
}

impl Clocked for Rtc {
    const IRQ: u8 = IRQ;
    fn set_time(&mut self, now: u64) {
        Rtc::set_time(self, now);
    }
    fn read(&mut self, port: u16, size: u8) -> u32 {
        Rtc::read(self, port, size)
    }
    fn write(&mut self, port: u16, size: u8, value: u32) {
        Rtc::write(self, port, size, value);
    }
    fn poll(&mut self, now: u64) -> IrqState {
        Rtc::poll(self, now)
    }
    fn next_deadline(&self) -> Option<u64> {
        Rtc::next_deadline(self)
    }
}

/// Every access reports the IRQ line (`1 << IRQ`) and, when it moved, the
/// next deadline; time-driven changes come from [`PortDevice::advance`].
impl PortDevice for Rtc {
    fn name(&self) -> &'static str {
        "rtc"
    }
    fn ports(&self) -> &'static [(u16, u16)] {
        &[(PORT_INDEX, 2)]
    }
    fn irq_lines(&self) -> u16 {
        1 << IRQ
    }
    fn io_read(&mut self, port: u16, size: u8, now: u64) -> Effects {
        clocked::io_read(self, port, size, now)
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32, now: u64) -> Effects {
        clocked::io_write(self, port, size, value, now)
    }
    fn advance(&mut self, now: u64) -> Effects {
        clocked::advance(self, now)
    }
    fn deadline(&self) -> Option<u64> {
        self.next_deadline()
    }
}

// The clock is battery-backed: a reset keeps the date and time it shows and
// brings the registers (and CMOS RAM) back to what `Rtc::new` sets. Guest
// time starts over at 0 with the power cycle, so the clock is anchored there.
crate::state::plain_state!(Rtc, 1, |me| Rtc::new(me.datetime(), 0, me.clock));

impl crate::state::Check for Rtc {
    fn check(&self) -> Result<(), crate::state::StateError> {
        crate::state::ensure(self.flags & !(C_PF | C_AF | C_UF) == 0, "RTC register C")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn dt(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> DateTime {
        DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        }
    }

    fn rd(r: &mut Rtc, now: u64, index: u8) -> u8 {
        r.set_time(now);
        r.write(0x70, 1, u32::from(index));
        r.read(0x71, 1) as u8
    }

    fn wr(r: &mut Rtc, now: u64, index: u8, v: u8) {
        r.set_time(now);
        r.write(0x70, 1, u32::from(index));
        r.write(0x71, 1, u32::from(v));
    }

    #[test]
    fn civil_date_arithmetic() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // Round trip over four centuries, day by day.
        let start = days_from_civil(1900, 1, 1);
        let (mut y, mut m, mut d) = (1900i64, 1u8, 1u8);
        for z in start..start + 146_097 {
            assert_eq!(civil_from_days(z), (y, m, d), "day {z}");
            assert_eq!(days_from_civil(y, m, d), z);
            d += 1;
            if d > days_in_month(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
        assert!(is_leap_year(2000) && is_leap_year(2024));
        assert!(!is_leap_year(1900) && !is_leap_year(2100) && !is_leap_year(2023));
    }

    #[test]
    fn unix_time_and_weekday() {
        let t = dt(2024, 2, 29, 13, 45, 30);
        assert_eq!(t.to_unix(), 1_709_214_330);
        assert_eq!(DateTime::from_unix(1_709_214_330), t);
        assert_eq!(t.weekday(), 5, "2024-02-29 was a Thursday");
        assert_eq!(dt(1970, 1, 1, 0, 0, 0).weekday(), 5);
        assert_eq!(dt(2023, 10, 1, 0, 0, 0).weekday(), 1, "a Sunday");
        assert_eq!(
            dt(2023, 2, 30, 25, 61, 99).normalized(),
            dt(2023, 2, 28, 23, 59, 59)
        );
    }

    #[test]
    fn initial_registers_bcd_24h() {
        let mut r = Rtc::new(dt(2024, 12, 31, 23, 59, 58), 0, crate::NS_CLOCK);
        assert_eq!(rd(&mut r, 0, 0x00), 0x58);
        assert_eq!(rd(&mut r, 0, 0x02), 0x59);
        assert_eq!(rd(&mut r, 0, 0x04), 0x23);
        assert_eq!(rd(&mut r, 0, 0x06), 0x03, "Tuesday");
        assert_eq!(rd(&mut r, 0, 0x07), 0x31);
        assert_eq!(rd(&mut r, 0, 0x08), 0x12);
        assert_eq!(rd(&mut r, 0, 0x09), 0x24);
        assert_eq!(rd(&mut r, 0, 0x32), 0x20);
        assert_eq!(rd(&mut r, 0, 0x0A), 0x26);
        assert_eq!(rd(&mut r, 0, 0x0B), 0x02);
        assert_eq!(rd(&mut r, 0, 0x0D), 0x80);
        assert_eq!(rd(&mut r, 0, 0x0C), 0x00);
    }

    #[test]
    fn clock_advances_across_year_end() {
        let mut r = Rtc::new(dt(2024, 12, 31, 23, 59, 58), 5 * S, crate::NS_CLOCK);
        assert_eq!(rd(&mut r, 6 * S - 1, 0x00), 0x58);
        assert_eq!(rd(&mut r, 6 * S, 0x00), 0x59);
        assert_eq!(rd(&mut r, 7 * S, 0x00), 0x00);
        assert_eq!(rd(&mut r, 7 * S, 0x09), 0x25);
        assert_eq!(rd(&mut r, 7 * S, 0x08), 0x01);
        assert_eq!(rd(&mut r, 7 * S, 0x07), 0x01);
        assert_eq!(rd(&mut r, 7 * S, 0x06), 0x04, "Wednesday");
        assert_eq!(r.datetime(), dt(2025, 1, 1, 0, 0, 0));
    }

    #[test]
    fn long_jump_and_century_rollover() {
        let mut r = Rtc::new(dt(2099, 12, 31, 23, 0, 0), 0, crate::NS_CLOCK);
        r.set_time(3600 * S);
        assert_eq!(r.datetime(), dt(2100, 1, 1, 0, 0, 0));
        assert_eq!(rd(&mut r, 3600 * S, 0x32), 0x21);
        assert_eq!(rd(&mut r, 3600 * S, 0x06), 0x06, "2100-01-01 is a Friday");
        // Leap day, then a year at once.
        let mut r = Rtc::new(dt(2024, 2, 28, 12, 0, 0), 0, crate::NS_CLOCK);
        r.set_time(86_400 * S);
        assert_eq!(r.datetime(), dt(2024, 2, 29, 12, 0, 0));
        r.set_time(86_400 * S * 366);
        assert_eq!(r.datetime(), dt(2025, 2, 28, 12, 0, 0));
        assert_eq!(rd(&mut r, 86_400 * S * 366, 0x06), 0x06);
    }

    #[test]
    fn binary_and_12_hour_formats() {
        let mut r = Rtc::new(dt(2024, 6, 15, 0, 30, 0), 0, crate::NS_CLOCK);
        // Switch format under SET and rewrite the time (as software must).
        wr(&mut r, 0, 0x0B, 0x80 | 0x04); // SET, binary, 12-hour
        wr(&mut r, 0, 0x04, 12); // 12 AM = midnight
        wr(&mut r, 0, 0x02, 30);
        wr(&mut r, 0, 0x00, 0);
        wr(&mut r, 0, 0x07, 15);
        wr(&mut r, 0, 0x08, 6);
        wr(&mut r, 0, 0x09, 24);
        wr(&mut r, 0, 0x32, 20);
        wr(&mut r, 0, 0x06, 7);
        wr(&mut r, 0, 0x0B, 0x04);
        assert_eq!(r.datetime(), dt(2024, 6, 15, 0, 30, 0));
        // 12 hours later: 12 PM.
        r.set_time(12 * 3600 * S);
        assert_eq!(rd(&mut r, 12 * 3600 * S, 0x04), 0x80 | 12);
        r.set_time(13 * 3600 * S);
        assert_eq!(rd(&mut r, 13 * 3600 * S, 0x04), 0x80 | 1);
        assert_eq!(rd(&mut r, 13 * 3600 * S, 0x09), 24);
        assert_eq!(r.datetime(), dt(2024, 6, 15, 13, 30, 0));
    }

    #[test]
    fn hour_encoding() {
        assert_eq!(encode_hour(0, 0), 0x12, "12 AM");
        assert_eq!(encode_hour(12, 0), 0x92, "12 PM");
        assert_eq!(encode_hour(9, B_DM_BINARY), 9);
        assert_eq!(encode_hour(23, 0), 0x91);
        assert_eq!(encode_hour(23, B_24H), 0x23);
        assert_eq!(decode_hour(0x12, 0), 0);
        assert_eq!(decode_hour(0x92, 0), 12);
        assert_eq!(decode_hour(0x81, B_DM_BINARY), 13);
    }

    #[test]
    fn set_bit_freezes_the_clock() {
        let mut r = Rtc::new(dt(2024, 1, 1, 0, 0, 0), 0, crate::NS_CLOCK);
        wr(&mut r, 0, 0x0B, 0x82 | B_UIE);
        assert_eq!(rd(&mut r, 0, 0x0B), 0x82, "SET going high clears UIE");
        assert_eq!(rd(&mut r, 5 * S, 0x00), 0x00);
        assert_eq!(rd(&mut r, 5 * S, 0x0A) & A_UIP, 0);
        wr(&mut r, 5 * S, 0x00, 0x30);
        wr(&mut r, 5 * S + 100 * MS, 0x0B, 0x02);
        // The divider kept its phase: next update at 6 s.
        assert_eq!(rd(&mut r, 6 * S - 1, 0x00), 0x30);
        assert_eq!(rd(&mut r, 6 * S, 0x00), 0x31);
    }

    #[test]
    fn uip_window_before_each_update() {
        let mut r = Rtc::new(dt(2024, 1, 1, 0, 0, 0), 0, crate::NS_CLOCK);
        assert_eq!(rd(&mut r, 0, 0x0A) & A_UIP, 0);
        assert_eq!(rd(&mut r, S - 244_001, 0x0A) & A_UIP, 0);
        assert_eq!(rd(&mut r, S - 244_000, 0x0A) & A_UIP, A_UIP);
        assert_eq!(rd(&mut r, S - 1, 0x0A) & A_UIP, A_UIP);
        assert_eq!(rd(&mut r, S - 1, 0x00), 0x00);
        assert_eq!(rd(&mut r, S, 0x0A) & A_UIP, 0);
        assert_eq!(rd(&mut r, S, 0x00), 0x01);
        // Writing A cannot set UIP.
        wr(&mut r, S, 0x0A, 0xA6);
        assert_eq!(rd(&mut r, S, 0x0A), 0x26);
    }

    #[test]
    fn linux_read_loop_terminates() {
        // mc146818_get_time(): wait for !UIP, read, re-check UIP and seconds.
        let mut r = Rtc::new(dt(2024, 5, 5, 5, 5, 5), 0, crate::NS_CLOCK);
        let mut now = S - 200_000; // inside the UIP window
        let mut polls = 0;
        while rd(&mut r, now, 0x0A) & A_UIP != 0 {
            now += 1_000; // ~1 µs per access
            polls += 1;
        }
        assert!(polls <= 245);
        let sec = rd(&mut r, now, 0x00);
        assert_eq!(rd(&mut r, now + 10_000, 0x0A) & A_UIP, 0);
        assert_eq!(rd(&mut r, now + 10_000, 0x00), sec);
        assert_eq!(sec, 0x06);
    }

    #[test]
    fn update_ended_interrupt() {
        let mut r = Rtc::new(dt(2024, 1, 1, 0, 0, 0), 0, crate::NS_CLOCK);
        assert_eq!(r.next_deadline(), None);
        wr(&mut r, 0, 0x0B, 0x02 | B_UIE);
        assert_eq!(r.next_deadline(), Some(S));
        assert_eq!(r.poll(S - 1), IrqState::default());
        let st = r.poll(S);
        assert_eq!(st.pulse, 1 << 8);
        assert_eq!(st.level, 1 << 8);
        assert_eq!(r.next_deadline(), None, "held until C is read");
        assert_eq!(r.poll(2 * S).pulse, 0);
        assert_eq!(rd(&mut r, 2 * S, 0x0C), C_IRQF | C_UF | C_PF);
        assert_eq!(rd(&mut r, 2 * S, 0x0C), 0);
        assert_eq!(r.poll(2 * S).level, 0);
        assert_eq!(r.next_deadline(), Some(3 * S));
    }

    #[test]
    fn update_flag_without_interrupt() {
        let mut r = Rtc::new(dt(2024, 1, 1, 0, 0, 0), 0, crate::NS_CLOCK);
        assert_eq!(rd(&mut r, S, 0x0C), C_UF | C_PF);
        assert_eq!(r.poll(S), IrqState::default());
    }

    #[test]
    fn periodic_interrupt_at_register_a_rate() {
        let mut r = Rtc::new(dt(2024, 1, 1, 0, 0, 0), 0, crate::NS_CLOCK);
        wr(&mut r, 0, 0x0A, 0x2F); // RS=15: 500 ms
        wr(&mut r, 0, 0x0B, 0x02 | B_PIE);
        assert_eq!(r.next_deadline(), Some(500 * MS));
        assert_eq!(r.poll(500 * MS - 1).pulse, 0);
        assert_eq!(r.poll(500 * MS).pulse, 1 << 8);
        assert_eq!(rd(&mut r, 600 * MS, 0x0C), C_IRQF | C_PF);
        assert_eq!(r.next_deadline(), Some(S));
        // 1024 Hz: 976.5625 µs, rounded up to whole ns.
        wr(&mut r, 600 * MS, 0x0A, 0x26);
        // 615 * 976562.5 ns, rounded up.
        assert_eq!(r.next_deadline(), Some(600_585_938));
        // 8192 Hz (RS 3) and RS 1 (256 Hz).
        wr(&mut r, 600 * MS, 0x0A, 0x23);
        assert_eq!(r.periodic(), Some((4 * 1_000_000_000, BASE_HZ)));
        wr(&mut r, 600 * MS, 0x0A, 0x21);
        assert_eq!(r.periodic(), Some((128 * 1_000_000_000, BASE_HZ)));
        wr(&mut r, 600 * MS, 0x0A, 0x20);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn alarm_interrupt() {
        let mut r = Rtc::new(dt(2024, 1, 1, 10, 0, 0), 0, crate::NS_CLOCK);
        wr(&mut r, 0, 0x01, 0x05);
        wr(&mut r, 0, 0x03, 0x00);
        wr(&mut r, 0, 0x05, 0xC0); // any hour
        wr(&mut r, 0, 0x0B, 0x02 | B_AIE);
        assert_eq!(r.poll(4 * S).pulse, 0);
        assert_eq!(r.poll(5 * S).pulse, 1 << 8);
        assert_eq!(rd(&mut r, 5 * S, 0x0C), C_IRQF | C_AF | C_UF | C_PF);
        // Next match one hour later, even if jumped over.
        assert_eq!(r.poll(3 * 3600 * S).pulse, 1 << 8);
        assert_eq!(rd(&mut r, 3 * 3600 * S, 0x0C) & C_AF, C_AF);
        assert_eq!(r.poll(3 * 3600 * S + 3 * S).pulse, 0);
    }

    #[test]
    fn enabling_an_already_set_flag_raises_irq() {
        let mut r = Rtc::new(dt(2024, 1, 1, 0, 0, 0), 0, crate::NS_CLOCK);
        r.set_time(S);
        assert_eq!(r.poll(S).level, 0);
        wr(&mut r, S, 0x0B, 0x02 | B_UIE);
        assert_eq!(r.poll(S).pulse, 1 << 8);
    }

    #[test]
    fn divider_reset_stops_and_restarts_half_second_later() {
        let mut r = Rtc::new(dt(2024, 1, 1, 0, 0, 0), 0, crate::NS_CLOCK);
        wr(&mut r, 100 * MS, 0x0A, 0x66); // divider reset
        assert_eq!(rd(&mut r, 5 * S, 0x00), 0x00);
        wr(&mut r, 5 * S, 0x0A, 0x26);
        assert_eq!(rd(&mut r, 5 * S + 499 * MS, 0x00), 0x00);
        assert_eq!(rd(&mut r, 5 * S + 500 * MS, 0x00), 0x01);
        assert_eq!(rd(&mut r, 6 * S + 500 * MS, 0x00), 0x02);
    }

    #[test]
    fn ram_index_and_nmi_bit() {
        let mut r = Rtc::new(dt(2024, 1, 1, 0, 0, 0), 0, crate::NS_CLOCK);
        wr(&mut r, 0, 0x80 | 0x40, 0xAB);
        assert_eq!(rd(&mut r, 0, 0x40), 0xAB);
        assert_eq!(r.read(0x70, 1), 0x40);
        r.set_ram(0x7F, 0x11);
        r.set_ram(0x05, 0x22);
        assert_eq!(rd(&mut r, 0, 0x7F), 0x11);
        assert_eq!(
            rd(&mut r, 0, 0x05),
            0x00,
            "set_ram leaves clock registers alone"
        );
        // D is read-only.
        wr(&mut r, 0, 0x0D, 0x00);
        assert_eq!(rd(&mut r, 0, 0x0D), 0x80);
    }

    #[test]
    fn parse_host_cmos() {
        // BCD 24h: 2023-07-04 18:09:59.
        let regs = [0x59, 0, 0x09, 0, 0x18, 0, 0x03, 0x04, 0x07, 0x23];
        assert_eq!(parse_cmos_time(regs, 0x02, 0x20), dt(2023, 7, 4, 18, 9, 59));
        // BCD 12h, 6 PM.
        let regs = [0x59, 0, 0x09, 0, 0x86, 0, 0x03, 0x04, 0x07, 0x23];
        assert_eq!(parse_cmos_time(regs, 0x00, 0x20), dt(2023, 7, 4, 18, 9, 59));
        // Binary 24h, missing century byte.
        let regs = [59, 0, 9, 0, 18, 0, 3, 4, 7, 23];
        assert_eq!(parse_cmos_time(regs, 0x06, 0xFF), dt(2023, 7, 4, 18, 9, 59));
        let regs = [0, 0, 0, 0, 0, 0, 1, 1, 1, 99];
        assert_eq!(parse_cmos_time(regs, 0x06, 0), dt(1999, 1, 1, 0, 0, 0));
    }

    #[test]
    fn time_never_goes_back() {
        let mut r = Rtc::new(dt(2024, 1, 1, 0, 0, 0), 10 * S, crate::NS_CLOCK);
        r.set_time(12 * S);
        r.set_time(11 * S);
        assert_eq!(rd(&mut r, 0, 0x00), 0x02);
    }
}
