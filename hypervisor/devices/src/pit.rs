//! 8254 programmable interval timer (Intel 82C54 data sheet, order no.
//! 231244) at 0x40-0x43, clocked at 1.193182 MHz, plus port 0x61 (PIIX3 data
//! sheet 4.7.2, NMI status and control: counter 2 gate, speaker enable,
//! refresh toggle, OUT2 status).
//!
//! Counting is not simulated clock by clock: every counter remembers the
//! clock tick at which its counting element was loaded and derives its count
//! and OUT from the current tick. Counter 0's OUT drives ISA IRQ 0; its
//! rising edges are reported as `pulse` bit 0 by [`Pit::poll`].
//!
//! Time: guest TSC ticks, converted to input clocks with the [`Clock`] given
//! to [`Pit::new`]. Every [`PortDevice`] access carries the time (Linux's
//! calibration loops read the counters and OUT2 back to back and need a
//! fresh time on every read) and reports IRQ 0 and, when it moved, the next
//! edge as the deadline.
use super::clocked::{self, Clocked};
use super::{Clock, Effects, IrqState, PortDevice};

/// The input clock (14.31818 MHz / 12).
pub const PIT_HZ: u64 = 1_193_182;
pub const IRQ: u8 = 0;
pub const PORT_COUNTER0: u16 = 0x40;
pub const PORT_CONTROL: u16 = 0x43;
pub const PORT_B: u16 = 0x61;

// Port 0x61 bits (PIIX3 4.7.2).
const B_GATE2: u8 = 1 << 0;
const B_SPKR: u8 = 1 << 1;
const B_WRITABLE: u8 = 0x0F;
const B_REFRESH: u8 = 1 << 4;
const B_OUT2: u8 = 1 << 5;
/// PC/AT DRAM refresh: counter 1 in mode 2 with count 18, so the refresh
/// toggle flips every 18 input clocks (about 15.09 µs).
const REFRESH_TICKS: u64 = 18;

/// `a % m`; every modulus and period here is at least 2.
fn rem(a: u64, m: u64) -> u64 {
    a.checked_rem(m).unwrap_or(0)
}

fn bcd_decode(raw: u16) -> u32 {
    let mut v = 0u32;
    for shift in [12, 8, 4, 0] {
        // A nibble above 9 is not a BCD digit; it counts as 9.
        // Four digits: at most 9999.
        v = v
            .saturating_mul(10)
            .saturating_add(u32::from((raw >> shift) & 0xF).min(9));
    }
    v
}

fn bcd_encode(v: u32) -> u16 {
    let v = v % 10_000;
    ((v / 1000) << 12 | (v / 100 % 10) << 8 | (v / 10 % 10) << 4 | (v % 10)) as u16
}

/// Where the counting element is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Run {
    /// Not counting: after a control word, in mode 0 between the two bytes of
    /// a count, waiting for a gate trigger (modes 1, 5), or stopped by a low
    /// gate (modes 2, 3).
    Idle,
    /// The count `n` was loaded at tick `load` and has been counting since.
    Counting { load: u64 },
    /// Modes 0 and 4 with the gate low: `counted` clocks so far.
    Paused { counted: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Counter {
    /// Operating mode 0-5 (6 and 7 are read as 2 and 3).
    mode: u8,
    /// The mode bits as written (for the status byte).
    mode_bits: u8,
    /// RW1 RW0: 1 = LSB only, 2 = MSB only, 3 = LSB then MSB.
    rw: u8,
    bcd: bool,
    gate: bool,
    /// The count in the counting element's current cycle, 1..=modulus.
    n: u32,
    /// The last complete count written to the count register.
    cr: Option<u32>,
    run: Run,
    /// Modes 2/3: a count written while counting, taken over at the given
    /// tick (the end of the current period).
    pending: Option<(u32, u64)>,
    /// Shown while idle: what the counting element last held.
    idle_value: u32,
    write_msb_next: bool,
    write_lsb: u8,
    read_msb_next: bool,
    latch: Option<u16>,
    latch_msb_next: bool,
    status: Option<u8>,
    /// NULL COUNT: set by a control word or count write, cleared when the
    /// count reaches the counting element (tick in `null_clear`).
    null: bool,
    null_clear: Option<u64>,
}

impl Counter {
    fn new(gate: bool) -> Self {
        Self {
            mode: 0,
            mode_bits: 0,
            rw: 3,
            bcd: false,
            gate,
            n: 0x1_0000,
            cr: None,
            run: Run::Idle,
            pending: None,
            idle_value: 0,
            write_msb_next: false,
            write_lsb: 0,
            read_msb_next: false,
            latch: None,
            latch_msb_next: false,
            status: None,
            null: false,
            null_clear: None,
        }
    }

    fn modulus(&self) -> u32 {
        if self.bcd {
            10_000
        } else {
            0x1_0000
        }
    }

    /// The period of modes 2 and 3 (a count of 1 is illegal there; it is
    /// treated as 2).
    fn period(&self, n: u32) -> u64 {
        u64::from(n.max(2))
    }

    /// Takes over a pending mode 2/3 count whose period boundary has passed.
    fn sync(&mut self, t: u64) {
        if let Some((n, at)) = self.pending {
            if t >= at {
                self.n = n;
                self.run = Run::Counting { load: at };
                self.pending = None;
            }
        }
    }

    /// The counting element at tick `t` (binary, 0..modulus).
    fn value(&self, t: u64) -> u32 {
        // Counts and the modulus are at most 2^16: n + m - (c mod m) is exact.
        let m = u64::from(self.modulus());
        let n = u64::from(self.n);
        let wrap = |c: u64| rem(n.wrapping_add(m).wrapping_sub(rem(c, m)), m) as u32;
        match self.run {
            Run::Idle => self.idle_value,
            Run::Paused { counted } => wrap(counted),
            Run::Counting { load } if t < load => rem(n, m) as u32,
            Run::Counting { load } => {
                // t >= load (the arm above).
                let c = t.wrapping_sub(load);
                match self.mode {
                    2 => {
                        let p = self.period(self.n);
                        rem(p.wrapping_sub(rem(c, p)), m) as u32
                    }
                    3 => {
                        // Counts down by two; odd counts load N-1 and give
                        // the high half one clock more ("Mode 3").
                        let p = self.period(self.n);
                        let pos = rem(c, p);
                        let high = p.div_ceil(2);
                        let start = p & !1;
                        let step = pos.checked_sub(high).unwrap_or(pos);
                        // 2 * min(step, start / 2) <= start.
                        rem(start.wrapping_sub(step.min(start / 2) << 1), m) as u32
                    }
                    _ => wrap(c),
                }
            }
        }
    }

    /// OUT at tick `t`.
    fn out(&self, t: u64) -> bool {
        let n = u64::from(self.n);
        match self.run {
            // "When a Control Word is written, OUT goes to a known initial
            // state": low in mode 0, high otherwise.
            Run::Idle => self.mode != 0,
            Run::Paused { counted } => match self.mode {
                0 => counted >= n,
                _ => counted != n,
            },
            Run::Counting { load } if t < load => self.mode != 0,
            Run::Counting { load } => {
                // t >= load (the arm above).
                let c = t.wrapping_sub(load);
                match self.mode {
                    // Low until terminal count, then high.
                    0 | 1 => c >= n,
                    // Low for the one clock with count 1.
                    2 => {
                        let p = self.period(self.n);
                        rem(c, p) != p.wrapping_sub(1)
                    }
                    // High for ceil(N/2) clocks, low for floor(N/2).
                    3 => {
                        let p = self.period(self.n);
                        rem(c, p) < p.div_ceil(2)
                    }
                    // A one-clock low strobe at terminal count.
                    _ => c != n,
                }
            }
        }
    }

    /// The first rising edge of OUT strictly after tick `t`.
    fn next_rise_after(&self, t: u64) -> Option<u64> {
        let (n, run) = match self.pending {
            Some((pn, at)) if t >= at => (pn, Run::Counting { load: at }),
            _ => (self.n, self.run),
        };
        let Run::Counting { load } = run else {
            return None;
        };
        let n64 = u64::from(n);
        let once = |r: u64| (r > t).then_some(r);
        match self.mode {
            0 | 1 => once(load.saturating_add(n64)),
            2 | 3 => {
                // A pending count only applies at a boundary of the current
                // period, which is itself a rising edge, so the old period
                // gives the right answer before it.
                let p = self.period(n);
                let first = load.saturating_add(p);
                if t < first {
                    Some(first)
                } else {
                    let periods =
                        (t.saturating_sub(load).checked_div(p).unwrap_or(0)).saturating_add(1);
                    Some(load.saturating_add(p.saturating_mul(periods)))
                }
            }
            _ => once(load.saturating_add(n64).saturating_add(1)),
        }
    }

    fn null_count(&self, t: u64) -> bool {
        self.null && !matches!(self.null_clear, Some(at) if t >= at)
    }

    fn status_byte(&self, t: u64) -> u8 {
        u8::from(self.out(t)) << 7
            | u8::from(self.null_count(t)) << 6
            | self.rw << 4
            | self.mode_bits << 1
            | u8::from(self.bcd)
    }

    fn control(&mut self, v: u8, t: u64) {
        self.sync(t);
        let rw = (v >> 4) & 3;
        if rw == 0 {
            // Counter latch command; ignored while a latch is unread.
            if self.latch.is_none() {
                self.latch = Some(self.encode(self.value(t)));
                self.latch_msb_next = false;
            }
            return;
        }
        self.idle_value = self.value(t);
        self.mode_bits = (v >> 1) & 7;
        // Mode bits 110b and 111b are modes 2 and 3.
        self.mode = if self.mode_bits >= 6 {
            self.mode_bits & 3
        } else {
            self.mode_bits
        };
        self.rw = rw;
        self.bcd = v & 1 != 0;
        self.run = Run::Idle;
        self.pending = None;
        self.cr = None;
        self.write_msb_next = false;
        self.read_msb_next = false;
        self.latch = None;
        self.status = None;
        self.null = true;
        self.null_clear = None;
    }

    fn encode(&self, v: u32) -> u16 {
        if self.bcd {
            bcd_encode(v)
        } else {
            v as u16
        }
    }

    fn write(&mut self, v: u8, t: u64) {
        self.sync(t);
        match self.rw {
            1 => self.load(u16::from(v), t),
            2 => self.load(u16::from(v) << 8, t),
            _ => {
                if self.write_msb_next {
                    self.write_msb_next = false;
                    self.load(u16::from(self.write_lsb) | u16::from(v) << 8, t);
                } else {
                    self.write_msb_next = true;
                    self.write_lsb = v;
                    // Mode 0: "writing the first byte disables counting; OUT
                    // is set low immediately".
                    if self.mode == 0 {
                        self.idle_value = self.value(t);
                        self.run = Run::Idle;
                    }
                }
            }
        }
    }

    /// A complete count written to the count register.
    fn load(&mut self, raw: u16, t: u64) {
        let m = self.modulus();
        let mut n = if self.bcd {
            bcd_decode(raw)
        } else {
            u32::from(raw)
        };
        if n == 0 {
            // 0 is the largest count: 2^16, or 10^4 in BCD.
            n = m;
        }
        self.cr = Some(n);
        self.null = true;
        match self.mode {
            // Loaded on the next clock; counting while the gate is high.
            0 | 4 => {
                self.n = n;
                self.null_clear = Some(t.saturating_add(1));
                self.run = if self.gate {
                    Run::Counting {
                        load: t.saturating_add(1),
                    }
                } else {
                    Run::Paused { counted: 0 }
                };
            }
            // Waits for a gate trigger; a running one-shot is not affected.
            1 | 5 => self.null_clear = None,
            _ => match self.run {
                Run::Counting { load } if t >= load => {
                    // Taken over at the end of the current period ("if a new
                    // count is written during counting, it will be loaded at
                    // the end of the current period"; mode 3 strictly at the
                    // end of the half-cycle, here at the end of the period).
                    let at = self.next_rise_after(t).unwrap_or(t.saturating_add(1));
                    self.pending = Some((n, at));
                    self.null_clear = Some(at);
                }
                Run::Counting { .. } => {
                    // Written again before the first load: replace it.
                    self.n = n;
                }
                _ => {
                    self.n = n;
                    if self.gate {
                        self.run = Run::Counting {
                            load: t.saturating_add(1),
                        };
                        self.null_clear = Some(t.saturating_add(1));
                    } else {
                        self.null_clear = None;
                    }
                }
            },
        }
    }

    fn set_gate(&mut self, gate: bool, t: u64) {
        self.sync(t);
        if gate == self.gate {
            return;
        }
        self.gate = gate;
        match self.mode {
            // GATE low suspends counting, high resumes it.
            0 | 4 => match (gate, self.run) {
                (false, Run::Counting { load }) => {
                    self.run = Run::Paused {
                        counted: t.saturating_sub(load),
                    };
                }
                (true, Run::Paused { counted }) => {
                    self.run = Run::Counting {
                        load: t.saturating_add(1).saturating_sub(counted),
                    };
                }
                _ => {}
            },
            // A rising edge triggers: the count is loaded on the next clock.
            1 | 5 => {
                if let (true, Some(cr)) = (gate, self.cr) {
                    self.n = cr;
                    self.run = Run::Counting {
                        load: t.saturating_add(1),
                    };
                    self.null_clear = Some(t.saturating_add(1));
                }
            }
            // Low stops counting and forces OUT high; a rising edge reloads
            // the count on the next clock.
            _ => {
                if gate {
                    if let Some(cr) = self.cr {
                        self.n = cr;
                        self.pending = None;
                        self.run = Run::Counting {
                            load: t.saturating_add(1),
                        };
                        self.null_clear = Some(t.saturating_add(1));
                    }
                } else {
                    self.idle_value = self.value(t);
                    self.pending = None;
                    self.run = Run::Idle;
                }
            }
        }
    }

    fn read(&mut self, t: u64) -> u8 {
        self.sync(t);
        if let Some(s) = self.status.take() {
            return s;
        }
        if let Some(l) = self.latch {
            let [lo, hi] = l.to_le_bytes();
            return match self.rw {
                1 => {
                    self.latch = None;
                    lo
                }
                2 => {
                    self.latch = None;
                    hi
                }
                _ if self.latch_msb_next => {
                    self.latch = None;
                    self.latch_msb_next = false;
                    hi
                }
                _ => {
                    self.latch_msb_next = true;
                    lo
                }
            };
        }
        let [lo, hi] = self.encode(self.value(t)).to_le_bytes();
        match self.rw {
            1 => lo,
            2 => hi,
            _ => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    lo
                } else {
                    hi
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pit {
    counters: [Counter; 3],
    /// Port 0x61 bits 0-3 as written.
    port_b: u8,
    /// Guest TSC as last set.
    now: u64,
    clock: Clock,
    /// The tick up to which IRQ 0 edges have been reported.
    reported_tick: u64,
    /// A rising edge of OUT0 seen before a reprogramming, not yet reported.
    irq_latched: bool,
}

impl Pit {
    /// Power-on: the data sheet leaves mode and count undefined. Here every
    /// counter is idle in mode 0 (OUT low, so no IRQ 0 until programmed);
    /// counters 0 and 1 have their gates tied high as in a PC, counter 2's
    /// gate is port 0x61 bit 0 (low).
    pub fn new(clock: Clock) -> Self {
        Self {
            counters: [Counter::new(true), Counter::new(true), Counter::new(false)],
            port_b: 0,
            now: 0,
            clock,
            reported_tick: 0,
            irq_latched: false,
        }
    }

    /// Brings the model's clock to guest TSC `now` (monotonic; earlier
    /// times are ignored). Call before every port access.
    pub fn set_time(&mut self, now: u64) {
        self.now = self.now.max(now);
    }

    /// Input clocks (1.193182 MHz) since power-on.
    fn tick(&self) -> u64 {
        self.clock.count(self.now, PIT_HZ)
    }

    /// Remembers an IRQ 0 edge that happened before counter 0 is changed.
    fn before_change(&mut self, t: u64) {
        if let Some(r) = self.counters[0].next_rise_after(self.reported_tick) {
            if r <= t {
                self.irq_latched = true;
                self.reported_tick = t;
            }
        }
    }

    /// OUT of counter `i` now.
    pub fn out(&mut self, i: usize) -> bool {
        let t = self.tick();
        let Some(c) = self.counters.get_mut(i) else {
            return false;
        };
        c.sync(t);
        c.out(t)
    }

    /// Whether counter 2's output reaches the speaker (OUT2 and 0x61 bit 1).
    pub fn speaker_on(&mut self) -> bool {
        self.port_b & B_SPKR != 0 && self.out(2)
    }

    fn write_control(&mut self, v: u8, t: u64) {
        if v >> 6 == 3 {
            // Read-back command: D5 = !COUNT, D4 = !STATUS, D3-D1 counters.
            for (i, c) in self.counters.iter_mut().enumerate() {
                if v & (2 << i) == 0 {
                    continue;
                }
                c.sync(t);
                if v & 0x20 == 0 && c.latch.is_none() {
                    c.latch = Some(c.encode(c.value(t)));
                    c.latch_msb_next = false;
                }
                if v & 0x10 == 0 && c.status.is_none() {
                    c.status = Some(c.status_byte(t));
                }
            }
            return;
        }
        let i = usize::from(v >> 6);
        if i == 0 {
            self.before_change(t);
        }
        if let Some(c) = self.counters.get_mut(i) {
            c.control(v, t);
        }
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        let t = self.tick();
        match port {
            0x40..=0x42 => self
                .counters
                .get_mut(usize::from(port & 3))
                .map_or(0xFF, |c| c.read(t)),
            PORT_B => {
                let c = &mut self.counters[2];
                c.sync(t);
                let refresh = if (t / REFRESH_TICKS) & 1 != 0 {
                    B_REFRESH
                } else {
                    0
                };
                let out2 = if c.out(t) { B_OUT2 } else { 0 };
                (self.port_b & B_WRITABLE) | refresh | out2
            }
            // The control word register cannot be read.
            _ => 0xFF,
        }
    }

    fn write_byte(&mut self, port: u16, v: u8) {
        let t = self.tick();
        match port {
            0x40 => {
                self.before_change(t);
                self.counters[0].write(v, t);
            }
            0x41 | 0x42 => {
                if let Some(c) = self.counters.get_mut(usize::from(port & 3)) {
                    c.write(v, t);
                }
            }
            PORT_CONTROL => self.write_control(v, t),
            PORT_B => {
                self.port_b = v & B_WRITABLE;
                self.counters[2].set_gate(v & B_GATE2 != 0, t);
            }
            _ => {}
        }
    }
}

/// Register-level access (the bus goes through [`PortDevice`]).
impl Pit {
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let mut v = 0;
        for i in 0..u16::from(size.min(4)) {
            let p = port.wrapping_add(i);
            let b = if (0x40..=0x43).contains(&p) || p == PORT_B {
                self.read_byte(p)
            } else {
                0xFF
            };
            v |= u32::from(b) << (i << 3);
        }
        v
    }

    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        for i in 0..u16::from(size.min(4)) {
            self.write_byte(port.wrapping_add(i), (value >> (i << 3)) as u8);
        }
    }

    /// IRQ 0 is reported only as `pulse` (a rising edge of OUT0 since the last
    /// poll; several edges in one interval collapse into one, as an
    /// edge-triggered IRR would); `level` stays 0.
    pub fn poll(&mut self, now: u64) -> IrqState {
        self.set_time(now);
        let t = self.tick();
        let mut st = IrqState::default();
        let edge =
            matches!(self.counters[0].next_rise_after(self.reported_tick), Some(r) if r <= t);
        if edge || self.irq_latched {
            st.pulse |= 1 << IRQ;
        }
        self.irq_latched = false;
        self.reported_tick = self.reported_tick.max(t);
        for c in &mut self.counters {
            c.sync(t);
        }
        st
    }

    /// The time of counter 0's next OUT rising edge after the last poll.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.irq_latched {
            return Some(self.now);
        }
        self.counters[0]
            .next_rise_after(self.reported_tick)
            .map(|t| self.clock.at(t, PIT_HZ))
    }
}

impl Clocked for Pit {
    const IRQ: u8 = IRQ;
    fn set_time(&mut self, now: u64) {
        Pit::set_time(self, now);
    }
    fn read(&mut self, port: u16, size: u8) -> u32 {
        Pit::read(self, port, size)
    }
    fn write(&mut self, port: u16, size: u8, value: u32) {
        Pit::write(self, port, size, value);
    }
    fn poll(&mut self, now: u64) -> IrqState {
        Pit::poll(self, now)
    }
    fn next_deadline(&self) -> Option<u64> {
        Pit::next_deadline(self)
    }
}

/// Every access reports the IRQ line (`1 << IRQ`) and, when it moved, the
/// next deadline; time-driven changes come from [`PortDevice::advance`].
impl PortDevice for Pit {
    fn name(&self) -> &'static str {
        "pit"
    }
    fn ports(&self) -> &'static [(u16, u16)] {
        &[(PORT_COUNTER0, 4), (PORT_B, 1)]
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

// Power-on: counters unprogrammed, guest time back at 0 (a power cycle
// restarts the guest clock too).
crate::state::plain_state!(Pit, 1, |me| Pit::new(me.clock));

impl crate::state::Check for Pit {
    fn check(&self) -> Result<(), crate::state::StateError> {
        use crate::state::ensure;
        let count = |n: u32| (1..=0x1_0000).contains(&n);
        for c in &self.counters {
            ensure(c.mode <= 5 && c.mode_bits <= 7, "PIT counter mode")?;
            ensure((1..=3).contains(&c.rw), "PIT read/write mode")?;
            ensure(count(c.n), "PIT count")?;
            ensure(c.cr.is_none_or(count), "PIT count register")?;
            ensure(c.pending.is_none_or(|(n, _)| count(n)), "PIT pending count")?;
        }
        ensure(self.port_b & !B_WRITABLE == 0, "port 0x61 bits")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pit_ns(tick: u64) -> u64 {
        crate::NS_CLOCK.at(tick, PIT_HZ)
    }

    /// ns of `ticks` input clocks, rounded up so that the tick is reached.
    fn at(ticks: u64) -> u64 {
        pit_ns(ticks)
    }

    fn w(p: &mut Pit, now_ticks: u64, port: u16, v: u8) {
        p.set_time(at(now_ticks));
        p.write(port, 1, u32::from(v));
    }

    fn r(p: &mut Pit, now_ticks: u64, port: u16) -> u8 {
        p.set_time(at(now_ticks));
        p.read(port, 1) as u8
    }

    /// Reads counter `i` with a latch command, LSB then MSB.
    fn latched(p: &mut Pit, t: u64, i: u16) -> u16 {
        w(p, t, 0x43, (i as u8) << 6);
        let lo = r(p, t, 0x40 + i);
        let hi = r(p, t, 0x40 + i);
        u16::from(lo) | u16::from(hi) << 8
    }

    #[test]
    fn time_conversion_round_trips() {
        assert_eq!(crate::NS_CLOCK.count(1_000_000_000, PIT_HZ), PIT_HZ);
        for t in [0, 1, 2, 1193, 65536, 1_000_000_007] {
            assert_eq!(crate::NS_CLOCK.count(pit_ns(t), PIT_HZ), t);
            assert!(crate::NS_CLOCK.count(pit_ns(t).saturating_sub(1), PIT_HZ) < t.max(1));
        }
    }

    #[test]
    fn power_on_is_quiet() {
        let mut p = Pit::new(crate::NS_CLOCK);
        assert_eq!(p.poll(1_000_000_000), IrqState::default());
        assert_eq!(p.next_deadline(), None);
        assert_eq!(r(&mut p, 100, 0x61) & B_OUT2, 0);
    }

    #[test]
    fn mode2_periodic_irq0() {
        // Linux's periodic clockevent: 0x34, LATCH = 1193 (HZ=1000).
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 1000, 0x43, 0x34);
        w(&mut p, 1000, 0x40, (1193 & 0xFF) as u8);
        w(&mut p, 1000, 0x40, (1193u16 >> 8) as u8);
        // Loaded at tick 1001; first rising edge one period later.
        assert_eq!(p.next_deadline(), Some(at(1001 + 1193)));
        assert_eq!(p.poll(at(1001 + 1192)).pulse, 0);
        assert_eq!(p.poll(at(1001 + 1193)).pulse, 1);
        assert_eq!(p.next_deadline(), Some(at(1001 + 2 * 1193)));
        assert_eq!(p.poll(at(1001 + 2 * 1193 - 1)).pulse, 0);
        // Several periods late: one pulse.
        assert_eq!(p.poll(at(1001 + 10 * 1193)).pulse, 1);
        assert_eq!(p.poll(at(1001 + 10 * 1193)).pulse, 0);
        assert_eq!(p.next_deadline(), Some(at(1001 + 11 * 1193)));
    }

    #[test]
    fn mode2_count_and_out() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0x34);
        w(&mut p, 0, 0x40, 10);
        w(&mut p, 0, 0x40, 0);
        // Load at tick 1: 10, 9, ..., 1, 10, ...
        assert_eq!(latched(&mut p, 1, 0), 10);
        assert_eq!(latched(&mut p, 5, 0), 6);
        assert_eq!(latched(&mut p, 10, 0), 1);
        assert!(!p.out(0), "low while the count is 1");
        assert_eq!(latched(&mut p, 11, 0), 10);
        assert!(p.out(0));
    }

    #[test]
    fn mode2_new_count_waits_for_period_end() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0x34);
        w(&mut p, 0, 0x40, 100);
        w(&mut p, 0, 0x40, 0);
        p.poll(at(50));
        w(&mut p, 50, 0x40, 10);
        w(&mut p, 50, 0x40, 0);
        // The current period (load 1, edge at 101) is not affected.
        assert_eq!(latched(&mut p, 60, 0), 100 - 59);
        assert_eq!(p.next_deadline(), Some(at(101)));
        assert_eq!(p.poll(at(101)).pulse, 1);
        assert_eq!(latched(&mut p, 102, 0), 9);
        assert_eq!(p.next_deadline(), Some(at(111)));
        assert_eq!(p.poll(at(111)).pulse, 1);
    }

    #[test]
    fn mode4_oneshot_irq0() {
        // Linux's oneshot clockevent: 0x38 then LSB, MSB.
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0x38);
        p.poll(at(0));
        assert_eq!(p.next_deadline(), None);
        w(&mut p, 10, 0x40, 100);
        w(&mut p, 10, 0x40, 0);
        // Loaded at 11, terminal count at 111, strobe ends (rising) at 112.
        assert_eq!(p.next_deadline(), Some(at(112)));
        p.set_time(at(111));
        assert!(!p.out(0));
        assert_eq!(p.poll(at(111)).pulse, 0);
        assert_eq!(p.poll(at(112)).pulse, 1);
        assert_eq!(p.next_deadline(), None);
        assert_eq!(p.poll(at(100_000)).pulse, 0);
        // Re-arm.
        w(&mut p, 100_000, 0x40, 5);
        w(&mut p, 100_000, 0x40, 0);
        assert_eq!(p.next_deadline(), Some(at(100_007)));
    }

    #[test]
    fn mode0_oneshot_irq0_and_stop() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0x30);
        w(&mut p, 0, 0x40, 50);
        assert!(!p.out(0));
        // The first byte stops counting; nothing scheduled.
        assert_eq!(p.next_deadline(), None);
        w(&mut p, 0, 0x40, 0);
        assert_eq!(p.next_deadline(), Some(at(51)));
        assert_eq!(p.poll(at(51)).pulse, 1);
        p.set_time(at(60));
        assert!(p.out(0), "OUT stays high after terminal count");
        // Counting continues through zero (wraps).
        assert_eq!(latched(&mut p, 61, 0), 0xFFF6);
        assert_eq!(p.poll(at(1_000_000)).pulse, 0);
        // Linux's shutdown: control word only stops it, OUT low.
        w(&mut p, 1_000_000, 0x43, 0x30);
        assert!(!p.out(0));
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn reprogramming_keeps_an_edge_that_already_happened() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0x34);
        w(&mut p, 0, 0x40, 100);
        w(&mut p, 0, 0x40, 0);
        p.poll(at(0));
        // The edge at 101 happens, then the guest reprograms before a poll.
        w(&mut p, 150, 0x43, 0x30);
        assert_eq!(p.next_deadline(), Some(at(150)));
        assert_eq!(p.poll(at(150)).pulse, 1);
        assert_eq!(p.poll(at(151)).pulse, 0);
    }

    #[test]
    fn calibration_counter2_mode0_via_port_61() {
        // pit_calibrate_tsc(): gate high, speaker off, 0xB0, 10 ms latch,
        // poll 0x61 bit 5.
        let latch: u16 = (PIT_HZ / 100) as u16;
        let mut p = Pit::new(crate::NS_CLOCK);
        let b = r(&mut p, 0, 0x61);
        w(&mut p, 0, 0x61, (b & !0x02) | 0x01);
        w(&mut p, 0, 0x43, 0xB0);
        w(&mut p, 0, 0x42, latch as u8);
        w(&mut p, 0, 0x42, (latch >> 8) as u8);
        let mut t = 0;
        let mut loops = 0;
        while r(&mut p, t, 0x61) & 0x20 == 0 {
            t += 5; // one read every ~4 µs
            loops += 1;
        }
        assert_eq!(t, 11935, "OUT2 rises N+1 clocks after the count write");
        assert!(loops > 1000);
        // No IRQ from counter 2.
        assert_eq!(p.poll(at(t)).pulse, 0);
    }

    #[test]
    fn quick_pit_calibrate_sees_msb_count_down() {
        // quick_pit_calibrate(): mode 0 from 0xFFFF, reads LSB/MSB unlatched.
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x61, 0x01);
        w(&mut p, 0, 0x43, 0xB0);
        w(&mut p, 0, 0x42, 0xFF);
        w(&mut p, 0, 0x42, 0xFF);
        let read16 = |p: &mut Pit, t| {
            let lo = r(p, t, 0x42);
            let hi = r(p, t, 0x42);
            (lo, hi)
        };
        assert_eq!(read16(&mut p, 0).1, 0xFF);
        assert_eq!(read16(&mut p, 100).1, 0xFF);
        // MSB 0xFE after 256 counted clocks.
        assert_eq!(read16(&mut p, 1 + 255).1, 0xFF);
        assert_eq!(read16(&mut p, 1 + 256), (0xFF, 0xFE));
        assert_eq!(read16(&mut p, 1 + 256 * 10).1, 0xF5);
    }

    #[test]
    fn gate_low_pauses_mode0() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x61, 0x01);
        w(&mut p, 0, 0x43, 0xB0);
        w(&mut p, 0, 0x42, 100);
        w(&mut p, 0, 0x42, 0);
        assert_eq!(latched(&mut p, 41, 2), 60);
        w(&mut p, 41, 0x61, 0x00);
        assert_eq!(latched(&mut p, 500, 2), 60);
        w(&mut p, 500, 0x61, 0x01);
        assert_eq!(latched(&mut p, 511, 2), 50);
        assert_eq!(r(&mut p, 560, 0x61) & 0x20, 0);
        assert_eq!(r(&mut p, 561, 0x61) & 0x20, 0x20);
    }

    #[test]
    fn count_written_with_gate_low_waits_for_gate() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0xB0);
        w(&mut p, 0, 0x42, 10);
        w(&mut p, 0, 0x42, 0);
        assert_eq!(r(&mut p, 1000, 0x61) & 0x20, 0);
        w(&mut p, 1000, 0x61, 0x01);
        assert_eq!(r(&mut p, 1010, 0x61) & 0x20, 0);
        assert_eq!(r(&mut p, 1011, 0x61) & 0x20, 0x20);
    }

    #[test]
    fn mode1_hardware_oneshot_retriggers() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0xB2); // counter 2, lohi, mode 1
        w(&mut p, 0, 0x42, 20);
        w(&mut p, 0, 0x42, 0);
        assert!(p.out(2), "waiting for a trigger: OUT high");
        w(&mut p, 100, 0x61, 0x01);
        p.set_time(at(101));
        assert!(!p.out(2));
        p.set_time(at(110));
        assert!(!p.out(2));
        // Retrigger before terminal count restarts it (load at 119).
        w(&mut p, 115, 0x61, 0x00);
        w(&mut p, 118, 0x61, 0x01);
        p.set_time(at(125));
        assert!(!p.out(2), "without the retrigger it would be high at 121");
        p.set_time(at(138));
        assert!(!p.out(2));
        p.set_time(at(139));
        assert!(p.out(2));
    }

    #[test]
    fn mode3_square_wave() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0x36); // counter 0, lohi, mode 3
        w(&mut p, 0, 0x40, 10);
        w(&mut p, 0, 0x40, 0);
        // Loaded at 1: high for 5 clocks, low for 5; the count goes down by
        // two.
        assert_eq!(p.next_deadline(), Some(at(11)));
        assert_eq!(latched(&mut p, 1, 0), 10);
        assert_eq!(latched(&mut p, 3, 0), 6);
        for (t, high) in [(4, true), (5, true), (6, false), (10, false), (11, true)] {
            p.set_time(at(t));
            assert_eq!(p.out(0), high, "tick {t}");
        }
        assert_eq!(latched(&mut p, 12, 0), 8);
        // Odd count: high one clock longer.
        w(&mut p, 100, 0x43, 0x36);
        w(&mut p, 100, 0x40, 7);
        w(&mut p, 100, 0x40, 0);
        for (t, high) in [
            (101, true),
            (104, true),
            (105, false),
            (107, false),
            (108, true),
        ] {
            p.set_time(at(t));
            assert_eq!(p.out(0), high, "tick {t}");
        }
    }

    #[test]
    fn mode3_gate_low_forces_out_high_and_retriggers() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x61, 0x01);
        w(&mut p, 0, 0x43, 0xB6);
        w(&mut p, 0, 0x42, 10);
        w(&mut p, 0, 0x42, 0);
        p.set_time(at(7));
        assert!(!p.out(2));
        w(&mut p, 7, 0x61, 0x00);
        assert!(p.out(2));
        w(&mut p, 50, 0x61, 0x01);
        assert_eq!(latched(&mut p, 51, 2), 10);
        // Speaker: OUT2 and bit 1.
        w(&mut p, 52, 0x61, 0x03);
        assert!(p.speaker_on());
        assert_eq!(r(&mut p, 52, 0x61) & 0x0F, 0x03);
    }

    #[test]
    fn mode5_strobe_on_trigger() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0x9A); // counter 2, LSB only, mode 5
        w(&mut p, 0, 0x42, 4);
        p.set_time(at(100));
        assert!(p.out(2));
        w(&mut p, 100, 0x61, 0x01);
        p.set_time(at(105));
        assert!(!p.out(2), "strobe at terminal count");
        p.set_time(at(106));
        assert!(p.out(2));
    }

    #[test]
    fn lsb_only_and_msb_only_access() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0x14); // counter 0, LSB only, mode 2
        w(&mut p, 0, 0x40, 200);
        assert_eq!(r(&mut p, 1, 0x40), 200);
        assert_eq!(r(&mut p, 2, 0x40), 199);
        w(&mut p, 10, 0x43, 0x24); // MSB only, mode 2
        w(&mut p, 10, 0x40, 0x02);
        assert_eq!(r(&mut p, 11, 0x40), 0x02);
        assert_eq!(p.next_deadline(), Some(at(11 + 0x200)));
    }

    #[test]
    fn count_zero_is_65536() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0x34);
        w(&mut p, 0, 0x40, 0);
        w(&mut p, 0, 0x40, 0);
        assert_eq!(p.next_deadline(), Some(at(1 + 65536)));
        assert_eq!(latched(&mut p, 1, 0), 0);
        assert_eq!(latched(&mut p, 2, 0), 0xFFFF);
    }

    #[test]
    fn latch_holds_value_until_read() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0x34);
        w(&mut p, 0, 0x40, 0x00);
        w(&mut p, 0, 0x40, 0x10);
        w(&mut p, 17, 0x43, 0x00);
        // A second latch before reading is ignored.
        w(&mut p, 30, 0x43, 0x00);
        assert_eq!(r(&mut p, 40, 0x40), 0xF0);
        assert_eq!(r(&mut p, 50, 0x40), 0x0F);
        // Now unlatched: live value.
        assert_eq!(latched(&mut p, 60, 0), 0x1000 - 59);
    }

    #[test]
    fn unlatched_reads_alternate_lsb_msb() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0x30);
        w(&mut p, 0, 0x40, 0x34);
        w(&mut p, 0, 0x40, 0x12);
        assert_eq!(r(&mut p, 1, 0x40), 0x34);
        assert_eq!(r(&mut p, 1, 0x40), 0x12);
        assert_eq!(r(&mut p, 2, 0x40), 0x33);
    }

    #[test]
    fn read_back_status_and_count() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0xB0); // counter 2 mode 0 lohi binary
                                  // Status: OUT low, null count, RW=3, mode 0.
        w(&mut p, 0, 0x43, 0xE8); // read-back status of counter 2
        assert_eq!(r(&mut p, 0, 0x42), 0x70);
        w(&mut p, 0, 0x61, 0x01);
        w(&mut p, 0, 0x42, 0x00);
        w(&mut p, 0, 0x42, 0x01);
        w(&mut p, 0, 0x43, 0xE8);
        assert_eq!(r(&mut p, 0, 0x42), 0x70, "not loaded yet: null count");
        // Both status and count: status first.
        w(&mut p, 5, 0x43, 0xC8);
        assert_eq!(r(&mut p, 9, 0x42), 0x30);
        assert_eq!(r(&mut p, 9, 0x42), 0xFC);
        assert_eq!(r(&mut p, 9, 0x42), 0x00);
        // Count only, several counters.
        w(&mut p, 0x101, 0x43, 0xD8);
        assert_eq!(r(&mut p, 0x300, 0x42), 0x00);
        assert_eq!(r(&mut p, 0x300, 0x42), 0x00);
        w(&mut p, 0x300, 0x43, 0xE8);
        assert_eq!(
            r(&mut p, 0x300, 0x42),
            0xB0,
            "OUT high after terminal count"
        );
    }

    #[test]
    fn bcd_counting() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0x35); // counter 0, lohi, mode 2, BCD
        w(&mut p, 0, 0x40, 0x00);
        w(&mut p, 0, 0x40, 0x10); // 1000
        assert_eq!(p.next_deadline(), Some(at(1001)));
        assert_eq!(latched(&mut p, 2, 0), 0x0999);
        w(&mut p, 10, 0x43, 0x31); // mode 0, BCD, count 0 = 10000
        w(&mut p, 10, 0x40, 0);
        w(&mut p, 10, 0x40, 0);
        assert_eq!(latched(&mut p, 12, 0), 0x9999);
        assert_eq!(p.next_deadline(), Some(at(11 + 10_000)));
        assert_eq!(bcd_decode(0x1234), 1234);
        assert_eq!(bcd_decode(0x00FA), 99, "invalid digits count as 9");
        assert_eq!(bcd_encode(10_000), 0);
    }

    #[test]
    fn refresh_toggle_flips_every_15us() {
        let mut p = Pit::new(crate::NS_CLOCK);
        let a = r(&mut p, 0, 0x61) & B_REFRESH;
        let b = r(&mut p, 17, 0x61) & B_REFRESH;
        let c = r(&mut p, 18, 0x61) & B_REFRESH;
        let d = r(&mut p, 36, 0x61) & B_REFRESH;
        assert_eq!(a, b);
        assert_ne!(b, c);
        assert_ne!(c, d);
    }

    #[test]
    fn port_61_keeps_only_writable_bits() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x61, 0xFF);
        assert_eq!(r(&mut p, 0, 0x61) & 0xCF, 0x0F);
        assert_eq!(r(&mut p, 0, 0x43), 0xFF);
    }

    #[test]
    fn mode6_and_7_alias_2_and_3() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0x3C); // mode bits 110 -> mode 2
        w(&mut p, 0, 0x40, 10);
        w(&mut p, 0, 0x40, 0);
        assert_eq!(p.next_deadline(), Some(at(11)));
        assert_eq!(p.poll(at(11)).pulse, 1);
        assert_eq!(p.poll(at(21)).pulse, 1);
        w(&mut p, 30, 0x43, 0xE2); // read-back status counter 0
        assert_eq!(
            r(&mut p, 30, 0x40) & 0x0E,
            0x0C,
            "status shows bits as written"
        );
    }

    #[test]
    fn earlier_time_is_ignored() {
        let mut p = Pit::new(crate::NS_CLOCK);
        w(&mut p, 0, 0x43, 0x30);
        w(&mut p, 0, 0x40, 0);
        w(&mut p, 0, 0x40, 1);
        assert_eq!(latched(&mut p, 101, 0), 156);
        p.set_time(0);
        assert_eq!(latched(&mut p, 0, 0), 156);
    }

    #[test]
    fn a_reprogram_reports_the_new_deadline() {
        let mut p = Pit::new(crate::NS_CLOCK);
        // Mode 2, LSB/MSB, count 100 at tick 0: the first edge at tick 101.
        assert_eq!(
            PortDevice::io_write(&mut p, 0x43, 1, 0x34, 0).deadline,
            None
        );
        assert!(PortDevice::io_write(&mut p, 0x40, 1, 100, 0)
            .deadline
            .is_none());
        let fx = PortDevice::io_write(&mut p, 0x40, 1, 0, 0);
        assert_eq!(fx.deadline, Some(Some(at(101))));
        // A new count takes effect at the end of the period: the next
        // edge is still at 101, so the deadline doesn't move...
        let _ = PortDevice::io_write(&mut p, 0x40, 1, 50, at(10));
        assert_eq!(
            PortDevice::io_write(&mut p, 0x40, 1, 0, at(10)).deadline,
            None
        );
        // ...and a one-shot (mode 0) moves it to the new count.
        let _ = PortDevice::io_write(&mut p, 0x43, 1, 0x30, at(20));
        let _ = PortDevice::io_write(&mut p, 0x40, 1, 30, at(20));
        let fx = PortDevice::io_write(&mut p, 0x40, 1, 0, at(20));
        assert_eq!(fx.deadline, Some(Some(at(51))));
        assert_eq!(PortDevice::deadline(&p), Some(at(51)));
    }
}
