//! A virtual local APIC, one per vCPU (SDM Vol. 3A ch. 11), with the xAPIC
//! view (a 4 KiB MMIO page at IA32_APIC_BASE, 0xFEE00000 by default) and the
//! x2APIC view (MSRs 0x800-0x8FF, SDM 11.12) of one register state.
//!
//! The model is pure: no hardware access, no locks. Time is the guest's TSC,
//! passed in as `now_tsc`; every call that takes it first brings the timer up
//! to date ([`VLapic::poll_timer`]). The timer counts one tick every
//! `divisor * tsc_per_bus_tick` TSC cycles (`tsc_per_bus_tick` is given to
//! [`VLapic::new`]).
//!
//! Wiring it into the exit path:
//! - xAPIC page: [`VLapic::read_mmio`] / [`VLapic::write_mmio`] with the offset
//!   inside the page; [`VLapic::mode`] says whether the page decodes at all.
//! - x2APIC MSRs: [`VLapic::read_msr`] / [`VLapic::write_msr`]; `None` /
//!   `Err(Gp)` mean "inject #GP".
//! - IA32_APIC_BASE (0x1B): [`VLapic::apic_base`] / [`VLapic::set_apic_base`].
//! - IA32_TSC_DEADLINE (0x6E0): [`VLapic::read_tsc_deadline`] /
//!   [`VLapic::write_tsc_deadline`].
//! - Accesses return an [`Effects`]: an EOI to forward to the I/O APIC
//!   (`eoi`, for level-triggered vectors), an IPI to route (`messages`: for
//!   each target vCPU, check [`VLapic::matches_destination`] and the
//!   shorthand, then call [`VLapic::accept`] for fixed interrupts or act on
//!   NMI/INIT/SIPI), and the timer's new deadline when it moved.
//! - Injection: [`VLapic::pending`] is the vector to inject once the guest can
//!   take an interrupt; after injecting it, call [`VLapic::ack`].
//! - Wake-ups: [`VLapic::next_timer_deadline`] is the TSC at which
//!   `poll_timer` next has work to do.

use crate::effects::{Effects, Message};

/// The default IA32_APIC_BASE address.
pub const DEFAULT_BASE: u64 = 0xFEE0_0000;
/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1B;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;
/// The x2APIC MSR range (SDM 11.12.1.2).
pub const X2APIC_MSRS: core::ops::RangeInclusive<u32> = 0x800..=0x8FF;
/// Version register: version 0x14, max LVT entry 5 (SDM 11.4.8).
pub const VERSION: u32 = 0x0005_0014;

// IA32_APIC_BASE bits (SDM 11.4.4, 11.12.1).
const BASE_BSP: u64 = 1 << 8;
const BASE_EXTD: u64 = 1 << 10;
const BASE_EN: u64 = 1 << 11;
const BASE_ADDR: u64 = 0x000F_FFFF_FFFF_F000;
const BASE_RESERVED: u64 = 0xFF | (1 << 9) | !0x000F_FFFF_FFFF_FFFF;

// xAPIC register offsets (SDM Table 11-1); x2APIC MSR = 0x800 + offset / 16.
const ID: u32 = 0x020;
const VER: u32 = 0x030;
const TPR: u32 = 0x080;
const APR: u32 = 0x090;
const PPR: u32 = 0x0A0;
const EOI: u32 = 0x0B0;
const RRD: u32 = 0x0C0;
const LDR: u32 = 0x0D0;
const DFR: u32 = 0x0E0;
const SVR: u32 = 0x0F0;
const ISR0: u32 = 0x100;
const TMR0: u32 = 0x180;
const IRR0: u32 = 0x200;
const ESR: u32 = 0x280;
const LVT_CMCI: u32 = 0x2F0;
const ICR_LO: u32 = 0x300;
const ICR_HI: u32 = 0x310;
const LVT_TIMER: u32 = 0x320;
const LVT_ERROR: u32 = 0x370;
const TIMER_ICR: u32 = 0x380;
const TIMER_CCR: u32 = 0x390;
const TIMER_DCR: u32 = 0x3E0;
const SELF_IPI: u32 = 0x3F0;

// ESR bits (SDM 11.5.3).
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
pub const ESR_RECV_ILLEGAL_VECTOR: u32 = 1 << 6;
pub const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

const SVR_ENABLE: u32 = 1 << 8;
/// Vector, software enable, focus checking (no EOI-broadcast suppression: version bit 24 is 0).
const SVR_WRITABLE: u32 = 0x3FF;
const LVT_MASKED: u32 = 1 << 16;
const ICR_WRITABLE: u32 = 0x000C_CFFF;
const DCR_WRITABLE: u32 = 0xB;

// LVT slots, in SDM Table 11-1 order with CMCI first.
const CMCI: usize = 0;
const TIMER: usize = 1;
const LINT0: usize = 4;
const ERROR: usize = 6;
const LVT_COUNT: usize = 7;

/// (bits software may set, bits that are not reserved) per LVT slot
/// (SDM Figure 11-8). Delivery status (bit 12) and remote IRR (bit 14) are
/// read-only; everything else outside the second mask is reserved.
const LVT_BITS: [(u32, u32); LVT_COUNT] = [
    (0x0001_07FF, 0x0001_17FF), // CMCI
    (0x0007_00FF, 0x0007_10FF), // timer
    (0x0001_07FF, 0x0001_17FF), // thermal
    (0x0001_07FF, 0x0001_17FF), // performance counters
    (0x0001_A7FF, 0x0001_F7FF), // LINT0
    (0x0001_A7FF, 0x0001_F7FF), // LINT1
    (0x0001_00FF, 0x0001_10FF), // error
];

/// Where an APIC stands (IA32_APIC_BASE EN and EXTD, SDM 11.12.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// Globally disabled: no MMIO page, no MSRs, accepts nothing.
    Disabled,
    XApic,
    X2Apic,
}

/// Timer mode, LVT timer bits 18:17 (SDM 11.5.4). The reserved value 11b
/// behaves as one-shot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

/// Delivery modes of the ICR, LVT and I/O APIC redirection entries
/// (SDM 11.5.1, 11.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    Startup,
    ExtInt,
}

impl DeliveryMode {
    /// Decodes a 3-bit delivery-mode field (011b is reserved everywhere).
    /// Which modes a given register may use is the caller's check.
    pub fn from_bits(bits: u32) -> Option<Self> {
        Some(match bits & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            6 => Self::Startup,
            7 => Self::ExtInt,
            _ => return None,
        })
    }
}

/// ICR destination shorthand, bits 19:18 (SDM 11.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    /// Use `dest` and `dest_mode_logical`.
    None,
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// The access raises #GP(0) in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gp;

/// How an unmasked LINT0/LINT1 pin delivers (its LVT entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LintDelivery {
    pub mode: DeliveryMode,
    pub vector: u8,
    pub level_triggered: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Timer {
    initial: u32,
    /// One-shot/periodic countdown running.
    armed: bool,
    /// The count was `base_count` at `base_tsc`.
    base_tsc: u64,
    base_count: u32,
    /// IA32_TSC_DEADLINE; 0 = disarmed.
    deadline: u64,
}

/// A virtual local APIC. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VLapic {
    /// Initial APIC ID; the x2APIC ID.
    id: u32,
    /// xAPIC ID register bits 31:24 (writable in xAPIC mode).
    xapic_id: u8,
    bsp: bool,
    base: u64,
    tpr: u8,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    /// Errors visible in the ESR, and those collected since the last ESR write.
    esr: u32,
    esr_pending: u32,
    /// ICR; in xAPIC mode the destination lives in bits 63:56.
    icr: u64,
    lvt: [u32; LVT_COUNT],
    dcr: u32,
    timer: Timer,
    tsc_per_bus_tick: u64,
}

fn bit_get(bits: &[u32; 8], v: u8) -> bool {
    bits.get(usize::from(v >> 5))
        .is_some_and(|w| w & (1 << (v & 31)) != 0)
}

fn bit_set(bits: &mut [u32; 8], v: u8, on: bool) {
    let Some(w) = bits.get_mut(usize::from(v >> 5)) else {
        return;
    };
    if on {
        *w |= 1 << (v & 31);
    } else {
        *w &= !(1 << (v & 31));
    }
}

fn highest(bits: &[u32; 8]) -> Option<u8> {
    let (i, w) = bits.iter().enumerate().rev().find(|&(_, &w)| w != 0)?;
    // i < 8 and the bit index < 32: the vector fits in a u8.
    Some(((i as u32) << 5 | w.checked_ilog2()?) as u8)
}

/// Logical x2APIC ID derived from the x2APIC ID (SDM 11.12.10.2).
fn x2apic_ldr(id: u32) -> u32 {
    ((id >> 4) << 16) | (1 << (id & 0xF))
}

impl VLapic {
    /// A local APIC in its power-up state: xAPIC mode at [`DEFAULT_BASE`],
    /// software-disabled. The timer ticks every `tsc_per_bus_tick` TSC cycles
    /// before the divider (0 is taken as 1).
    pub fn new(apic_id: u32, bsp: bool, tsc_per_bus_tick: u64) -> Self {
        let mut a = Self {
            id: apic_id,
            xapic_id: apic_id as u8,
            bsp,
            base: DEFAULT_BASE | BASE_EN | if bsp { BASE_BSP } else { 0 },
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvt: [0; LVT_COUNT],
            dcr: 0,
            timer: Timer::default(),
            tsc_per_bus_tick: tsc_per_bus_tick.max(1),
        };
        a.reset_registers();
        a
    }

    /// The initial (x2APIC) APIC ID.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The ID this APIC answers to in physical destination mode.
    pub fn physical_id(&self) -> u32 {
        match self.mode() {
            ApicMode::X2Apic => self.id,
            _ => u32::from(self.xapic_id),
        }
    }

    pub fn mode(&self) -> ApicMode {
        match (self.base & BASE_EN != 0, self.base & BASE_EXTD != 0) {
            (false, _) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        }
    }

    /// SVR bit 8 (SDM 11.4.7.2).
    pub fn is_software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    fn enabled(&self) -> bool {
        self.mode() != ApicMode::Disabled && self.is_software_enabled()
    }

    /// Power-up register values (SDM 11.4.7.1); ID, base and mode are kept.
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = if self.mode() == ApicMode::X2Apic {
            x2apic_ldr(self.id)
        } else {
            0
        };
        self.dfr = 0xFFFF_FFFF;
        self.svr = 0xFF;
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.icr = 0;
        self.lvt = [LVT_MASKED; LVT_COUNT];
        self.dcr = 0;
        self.timer = Timer::default();
    }

    /// INIT (SDM 11.4.7.3): every register back to its power-up value except
    /// the APIC ID; IA32_APIC_BASE (and so the mode) is unchanged (SDM 11.12.5.1).
    pub fn reset_on_init(&mut self) {
        self.reset_registers();
    }

    // ---- IA32_APIC_BASE ----

    pub fn apic_base(&self) -> u64 {
        self.base
    }

    /// The MMIO page address from IA32_APIC_BASE.
    pub fn mmio_base(&self) -> u64 {
        self.base & BASE_ADDR
    }

    /// WRMSR IA32_APIC_BASE. `Err` = #GP: reserved bits, EXTD without EN,
    /// x2APIC to xAPIC, or disabled to x2APIC (SDM 11.12.5). Disabling resets
    /// every register to its power-up value. The BSP bit is read-only here.
    pub fn set_apic_base(&mut self, value: u64) -> Result<(), Gp> {
        if value & BASE_RESERVED != 0 {
            return Err(Gp);
        }
        let new = match (value & BASE_EN != 0, value & BASE_EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(Gp),
        };
        let old = self.mode();
        if matches!(
            (old, new),
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic)
        ) {
            return Err(Gp);
        }
        self.base =
            (value & (BASE_ADDR | BASE_EN | BASE_EXTD)) | if self.bsp { BASE_BSP } else { 0 };
        if new == ApicMode::Disabled && old != ApicMode::Disabled {
            self.xapic_id = self.id as u8;
            self.reset_registers();
        }
        if old == ApicMode::XApic && new == ApicMode::X2Apic {
            self.ldr = x2apic_ldr(self.id);
        }
        Ok(())
    }

    // ---- priorities and interrupt state (SDM 11.8) ----

    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Sets the TPR (a MOV to CR8 writes TPR[7:4] = CR8[3:0], SDM 11.8.6).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
    }

    /// Processor priority (SDM 11.8.3.1).
    pub fn ppr(&self) -> u8 {
        let isrv = highest(&self.isr).unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    /// A fixed interrupt arrives: sets its IRR bit and records the trigger
    /// mode in the TMR (SDM 11.8.4). Vectors 0-15 are illegal and set ESR
    /// bit 6 instead (SDM 11.5.3). A disabled APIC (globally or by software)
    /// drops it. Returns whether it was accepted.
    pub fn accept(&mut self, vector: u8, level_triggered: bool) -> bool {
        if !self.enabled() {
            return false;
        }
        if vector < 16 {
            self.signal_error(ESR_RECV_ILLEGAL_VECTOR);
            return false;
        }
        bit_set(&mut self.irr, vector, true);
        bit_set(&mut self.tmr, vector, level_triggered);
        true
    }

    /// The vector to inject next: the highest IRR vector whose priority class
    /// is above PPR[7:4] (SDM 11.8.3.1), when the APIC is enabled.
    pub fn pending(&self) -> Option<u8> {
        if !self.enabled() {
            return None;
        }
        let v = highest(&self.irr)?;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// The interrupt was delivered to the vCPU: IRR bit to ISR bit (SDM 11.8.4).
    pub fn ack(&mut self, vector: u8) {
        if bit_get(&self.irr, vector) {
            bit_set(&mut self.irr, vector, false);
            bit_set(&mut self.isr, vector, true);
        }
    }

    /// End of interrupt: clears the highest ISR bit (SDM 11.8.5).
    /// A level-triggered vector's EOI goes on to the I/O APIC (`eoi`).
    pub fn eoi(&mut self) -> Effects {
        let mut fx = Effects::none();
        if let Some(vector) = highest(&self.isr) {
            bit_set(&mut self.isr, vector, false);
            if bit_get(&self.tmr, vector) {
                fx.eoi = Some(vector);
            }
        }
        fx
    }

    pub fn irr_bit(&self, vector: u8) -> bool {
        bit_get(&self.irr, vector)
    }

    pub fn isr_bit(&self, vector: u8) -> bool {
        bit_get(&self.isr, vector)
    }

    /// Records an error; the error LVT raises an interrupt for a new one
    /// (SDM 11.5.3).
    fn signal_error(&mut self, bit: u32) {
        let new = bit & !self.esr_pending;
        self.esr_pending |= bit;
        let lvt = self.lvt[ERROR];
        let vector = lvt as u8;
        if new != 0 && lvt & LVT_MASKED == 0 && vector >= 16 && self.enabled() {
            bit_set(&mut self.irr, vector, true);
            bit_set(&mut self.tmr, vector, false);
        }
    }

    /// LINT0/LINT1 (`pin` 0 or 1) as programmed, or `None` when masked. A
    /// globally disabled APIC passes LINT0 through as INTR (ExtINT) and LINT1
    /// as NMI (SDM 11.4.3).
    pub fn lint(&self, pin: u8) -> Option<LintDelivery> {
        if pin > 1 {
            return None;
        }
        if self.mode() == ApicMode::Disabled {
            let mode = if pin == 0 {
                DeliveryMode::ExtInt
            } else {
                DeliveryMode::Nmi
            };
            return Some(LintDelivery {
                mode,
                vector: 0,
                level_triggered: false,
            });
        }
        let lvt = *self.lvt.get(LINT0.checked_add(usize::from(pin))?)?;
        if lvt & LVT_MASKED != 0 {
            return None;
        }
        Some(LintDelivery {
            mode: DeliveryMode::from_bits(lvt >> 8)?,
            vector: lvt as u8,
            // LINT1 is always edge-triggered (SDM 11.5.1).
            level_triggered: pin == 0 && lvt & (1 << 15) != 0,
        })
    }

    // ---- destinations (SDM 11.6.2) ----

    /// Whether an interrupt message addressed to `dest` reaches this APIC.
    /// `x2apic_mode` gives the message format: 32-bit x2APIC destinations
    /// (broadcast 0xFFFFFFFF, logical cluster in bits 31:16 and member bitmap
    /// in bits 15:0, SDM 11.12.10.2) or 8-bit xAPIC ones (broadcast 0xFF,
    /// logical flat or cluster model per the DFR, SDM 11.6.2.2). A globally
    /// disabled APIC matches nothing. Shorthands are the router's job.
    pub fn matches_destination(&self, dest: u32, logical: bool, x2apic_mode: bool) -> bool {
        if self.mode() == ApicMode::Disabled {
            return false;
        }
        if x2apic_mode {
            if dest == u32::MAX {
                return true;
            }
            if !logical {
                return dest == self.physical_id();
            }
            return dest >> 16 == self.ldr >> 16 && dest & self.ldr & 0xFFFF != 0;
        }
        let d = dest & 0xFF;
        if d == 0xFF {
            return true;
        }
        if !logical {
            return d == self.physical_id();
        }
        let l = (self.ldr >> 24) as u8;
        let d = d as u8;
        match self.dfr >> 28 {
            0xF => l & d != 0,
            0x0 => l >> 4 == d >> 4 && l & d & 0xF != 0,
            _ => false,
        }
    }

    // ---- timer (SDM 11.5.4) ----

    pub fn timer_mode(&self) -> TimerMode {
        match (self.lvt[TIMER] >> 17) & 3 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        }
    }

    /// DCR bits 3,1:0 (SDM Figure 11-10): 000b = 2 ... 110b = 128, 111b = 1.
    fn divisor(&self) -> u64 {
        let i = (self.dcr & 3) | ((self.dcr >> 1) & 4);
        if i == 7 {
            1
        } else {
            2 << i
        }
    }

    fn ticks_to_tsc(&self, ticks: u64) -> u64 {
        ticks.saturating_mul(self.divisor().saturating_mul(self.tsc_per_bus_tick))
    }

    fn count_expiry(&self) -> Option<u64> {
        let t = &self.timer;
        t.armed.then(|| {
            t.base_tsc
                .saturating_add(self.ticks_to_tsc(u64::from(t.base_count)))
        })
    }

    /// Current count; call after `poll_timer(now_tsc)`.
    fn current_count(&self, now_tsc: u64) -> u32 {
        let t = &self.timer;
        if !t.armed || self.timer_mode() == TimerMode::TscDeadline {
            return 0;
        }
        // No TSC ticks per bus tick (never configured so) counts down at once.
        let ticks = now_tsc
            .saturating_sub(t.base_tsc)
            .checked_div(self.ticks_to_tsc(1))
            .unwrap_or(u64::MAX);
        u64::from(t.base_count).saturating_sub(ticks) as u32
    }

    /// Fires the timer if it is due: sets the LVT timer vector in the IRR
    /// unless the entry is masked, rearms a periodic count (missed periods
    /// are coalesced into one interrupt) and disarms the others. Returns
    /// whether an interrupt was set in the IRR.
    pub fn poll_timer(&mut self, now_tsc: u64) -> bool {
        if self.mode() == ApicMode::Disabled {
            return false;
        }
        if self.timer_mode() == TimerMode::TscDeadline {
            // The deadline clears itself when it fires (SDM 11.5.4.1).
            if self.timer.deadline == 0 || now_tsc < self.timer.deadline {
                return false;
            }
            self.timer.deadline = 0;
            return self.fire_timer();
        }
        let Some(expiry) = self.count_expiry() else {
            return false;
        };
        if now_tsc < expiry {
            return false;
        }
        if self.timer_mode() == TimerMode::Periodic {
            let period = self.ticks_to_tsc(u64::from(self.timer.initial)).max(1);
            // period >= 1 (max above).
            let missed = now_tsc
                .saturating_sub(expiry)
                .checked_div(period)
                .unwrap_or(0);
            self.timer.base_tsc = expiry.saturating_add(missed.saturating_mul(period));
            self.timer.base_count = self.timer.initial;
        } else {
            self.timer.armed = false;
        }
        self.fire_timer()
    }

    fn fire_timer(&mut self) -> bool {
        let lvt = self.lvt[TIMER];
        lvt & LVT_MASKED == 0 && self.accept(lvt as u8, false)
    }

    /// The TSC at which `poll_timer` next sets an interrupt, if the timer is
    /// running and its LVT entry unmasked.
    pub fn next_timer_deadline(&self) -> Option<u64> {
        if self.mode() == ApicMode::Disabled || self.lvt[TIMER] & LVT_MASKED != 0 {
            return None;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => (self.timer.deadline != 0).then_some(self.timer.deadline),
            _ => self.count_expiry(),
        }
    }

    /// RDMSR IA32_TSC_DEADLINE: zero unless in TSC-deadline mode (SDM 11.5.4.1).
    pub fn read_tsc_deadline(&mut self, now_tsc: u64) -> u64 {
        self.poll_timer(now_tsc);
        if self.timer_mode() == TimerMode::TscDeadline {
            self.timer.deadline
        } else {
            0
        }
    }

    /// WRMSR IA32_TSC_DEADLINE: arms (0 disarms) in TSC-deadline mode and is
    /// ignored in the other modes (SDM 11.5.4.1). A deadline already past
    /// fires at the next poll.
    pub fn write_tsc_deadline(&mut self, tsc: u64, now_tsc: u64) -> Effects {
        let before = self.next_timer_deadline();
        self.poll_timer(now_tsc);
        if self.timer_mode() == TimerMode::TscDeadline {
            self.timer.deadline = tsc;
        }
        Effects::none().with_deadline(before, self.next_timer_deadline())
    }

    fn write_initial_count(&mut self, value: u32, now_tsc: u64) {
        // Ignored in TSC-deadline mode (SDM 11.5.4.1); 0 stops the timer.
        if self.timer_mode() == TimerMode::TscDeadline {
            return;
        }
        self.timer.initial = value;
        self.timer.armed = value != 0;
        self.timer.base_tsc = now_tsc;
        self.timer.base_count = value;
    }

    fn write_dcr(&mut self, value: u32, now_tsc: u64) {
        // A running count continues from its current value at the new rate.
        let cur = self.current_count(now_tsc);
        self.dcr = value & DCR_WRITABLE;
        if self.timer.armed {
            self.timer.base_tsc = now_tsc;
            self.timer.base_count = cur.max(1);
        }
    }

    fn write_lvt(&mut self, slot: usize, value: u32) {
        let old = self.timer_mode();
        let Some(&(writable, _)) = LVT_BITS.get(slot) else {
            return;
        };
        let mut v = value & writable;
        if !self.is_software_enabled() {
            // Masks stay set while software-disabled (SDM 11.4.7.2).
            v |= LVT_MASKED;
        }
        if let Some(l) = self.lvt.get_mut(slot) {
            *l = v;
        }
        if slot == TIMER {
            let new = self.timer_mode();
            // Switching to or from TSC-deadline mode disarms (SDM 11.5.4.1).
            if (old == TimerMode::TscDeadline) != (new == TimerMode::TscDeadline) {
                self.timer = Timer::default();
            }
        }
    }

    fn write_svr(&mut self, value: u32) {
        self.svr = value & SVR_WRITABLE;
        if !self.is_software_enabled() {
            for l in &mut self.lvt {
                *l |= LVT_MASKED;
            }
        }
    }

    fn write_esr(&mut self) {
        // A write latches the errors seen since the last one (SDM 11.5.3).
        self.esr = self.esr_pending;
        self.esr_pending = 0;
    }

    /// Decodes the ICR into an IPI (SDM 11.6.1). Reserved delivery modes and
    /// INIT level de-assert (unsupported since the Pentium 4) send nothing;
    /// an illegal fixed vector sets ESR bit 5 and sends nothing.
    fn send_ipi(&mut self) -> Effects {
        let lo = self.icr as u32;
        let vector = lo as u8;
        let level = lo & (1 << 14) != 0;
        let trigger_level = lo & (1 << 15) != 0;
        let delivery = match DeliveryMode::from_bits(lo >> 8) {
            None | Some(DeliveryMode::ExtInt) => return Effects::none(),
            Some(d) => d,
        };
        if delivery == DeliveryMode::Init && !level && trigger_level {
            return Effects::none();
        }
        if matches!(delivery, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.signal_error(ESR_SEND_ILLEGAL_VECTOR);
            return Effects::none();
        }
        let x2apic = self.mode() == ApicMode::X2Apic;
        let dest_shorthand = match (lo >> 18) & 3 {
            0 => Shorthand::None,
            1 => Shorthand::SelfOnly,
            2 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        };
        let m = Message {
            dest_shorthand,
            dest: if x2apic {
                (self.icr >> 32) as u32
            } else {
                (self.icr >> 56) as u32
            },
            dest_mode_logical: lo & (1 << 11) != 0,
            x2apic,
            delivery,
            vector,
            level,
            trigger_level,
            source: self.physical_id(),
        };
        Effects {
            messages: alloc::vec![m],
            ..Effects::none()
        }
    }

    /// Register value by xAPIC offset, shared by both views; `None` for
    /// offsets with no register.
    fn read_reg(&self, off: u32, now_tsc: u64) -> Option<u32> {
        let i = ((off >> 4) & 7) as usize;
        Some(match off {
            ID => u32::from(self.xapic_id) << 24,
            VER => VERSION,
            TPR => u32::from(self.tpr),
            APR | RRD | EOI => 0,
            PPR => u32::from(self.ppr()),
            LDR => self.ldr,
            DFR => self.dfr,
            SVR => self.svr,
            ISR0..=0x170 => *self.isr.get(i)?,
            TMR0..=0x1F0 => *self.tmr.get(i)?,
            IRR0..=0x270 => *self.irr.get(i)?,
            ESR => self.esr,
            LVT_CMCI => *self.lvt.get(CMCI)?,
            ICR_LO => self.icr as u32,
            ICR_HI => (self.icr >> 32) as u32,
            LVT_TIMER..=LVT_ERROR => *self.lvt.get(Self::lvt_slot(off)?)?,
            TIMER_ICR => self.timer.initial,
            TIMER_CCR => self.current_count(now_tsc),
            TIMER_DCR => self.dcr,
            _ => return None,
        })
    }

    fn lvt_slot(off: u32) -> Option<usize> {
        match off {
            LVT_CMCI => Some(CMCI),
            LVT_TIMER..=LVT_ERROR => TIMER.checked_add((off.checked_sub(LVT_TIMER)? >> 4) as usize),
            _ => None,
        }
    }

    // ---- xAPIC view ----

    /// A read of the xAPIC page at `offset` (0..4096). Registers sit at
    /// 16-byte boundaries; a read at byte 1-3 of one returns it shifted
    /// right, bytes 4-15 read 0. The page does not decode outside xAPIC mode
    /// (SDM 11.12.1.2): reads give all-ones. Unknown offsets set ESR bit 7.
    pub fn read_mmio(&mut self, offset: u32, now_tsc: u64) -> u32 {
        if self.mode() != ApicMode::XApic {
            return u32::MAX;
        }
        let byte = offset & 0xF;
        if byte >= 4 {
            return 0;
        }
        self.poll_timer(now_tsc);
        match self.read_reg(offset & 0xFF0, now_tsc) {
            Some(v) => v >> (byte << 3),
            None => {
                self.signal_error(ESR_ILLEGAL_REGISTER);
                0
            }
        }
    }

    /// A 32-bit write to the xAPIC page at `offset`. Writes not at a 16-byte
    /// boundary, writes outside xAPIC mode and writes to read-only registers
    /// are dropped; unknown offsets set ESR bit 7. Writing ICR low sends the IPI.
    /// The timer's deadline comes back in the effects when the write moved it.
    pub fn write_mmio(&mut self, offset: u32, value: u32, now_tsc: u64) -> Effects {
        let before = self.next_timer_deadline();
        let fx = self.write_mmio_reg(offset, value, now_tsc);
        fx.with_deadline(before, self.next_timer_deadline())
    }

    fn write_mmio_reg(&mut self, offset: u32, value: u32, now_tsc: u64) -> Effects {
        if self.mode() != ApicMode::XApic || offset & 0xF != 0 {
            return Effects::none();
        }
        self.poll_timer(now_tsc);
        let off = offset & 0xFF0;
        if let Some(slot) = Self::lvt_slot(off) {
            self.write_lvt(slot, value);
            return Effects::none();
        }
        match off {
            ID => self.xapic_id = (value >> 24) as u8,
            TPR => self.tpr = value as u8,
            EOI => return self.eoi(),
            LDR => self.ldr = value & 0xFF00_0000,
            DFR => self.dfr = value | 0x0FFF_FFFF,
            SVR => self.write_svr(value),
            ESR => self.write_esr(),
            ICR_LO => {
                self.icr = (self.icr & !0xFFFF_FFFF) | u64::from(value & ICR_WRITABLE);
                return self.send_ipi();
            }
            ICR_HI => {
                self.icr = (self.icr & 0xFFFF_FFFF) | (u64::from(value & 0xFF00_0000) << 32);
            }
            TIMER_ICR => self.write_initial_count(value, now_tsc),
            TIMER_DCR => self.write_dcr(value, now_tsc),
            VER | APR | PPR | RRD | TIMER_CCR => {}
            ISR0..=0x270 => {}
            _ => self.signal_error(ESR_ILLEGAL_REGISTER),
        }
        Effects::none()
    }

    // ---- x2APIC view (SDM 11.12.1) ----

    /// RDMSR of an x2APIC MSR. `None` = #GP: not in x2APIC mode, no register
    /// there, or a write-only one (EOI, SELF IPI).
    pub fn read_msr(&mut self, msr: u32, now_tsc: u64) -> Option<u64> {
        if self.mode() != ApicMode::X2Apic || !X2APIC_MSRS.contains(&msr) {
            return None;
        }
        self.poll_timer(now_tsc);
        let off = msr.checked_sub(0x800)? << 4;
        match off {
            ID => Some(u64::from(self.id)),
            ICR_LO => Some(self.icr),
            // No DFR, APR, RRD or ICR high in x2APIC mode; EOI is write-only.
            DFR | APR | RRD | ICR_HI | EOI | SELF_IPI => None,
            _ => self.read_reg(off, now_tsc).map(u64::from),
        }
    }

    /// WRMSR of an x2APIC MSR. `Err` = #GP: not in x2APIC mode, no register
    /// there, a read-only register, or a reserved bit set (reserved bits are
    /// checked, SDM 11.12.1.3; EOI and ESR take only 0).
    /// The timer's deadline comes back in the effects when the write moved it.
    pub fn write_msr(&mut self, msr: u32, value: u64, now_tsc: u64) -> Result<Effects, Gp> {
        let before = self.next_timer_deadline();
        let fx = self.write_msr_reg(msr, value, now_tsc)?;
        Ok(fx.with_deadline(before, self.next_timer_deadline()))
    }

    fn write_msr_reg(&mut self, msr: u32, value: u64, now_tsc: u64) -> Result<Effects, Gp> {
        if self.mode() != ApicMode::X2Apic || !X2APIC_MSRS.contains(&msr) {
            return Err(Gp);
        }
        let off = msr.checked_sub(0x800).ok_or(Gp)? << 4;
        if off != ICR_LO && value >> 32 != 0 {
            return Err(Gp);
        }
        self.poll_timer(now_tsc);
        let v = value as u32;
        let check = |ok: bool| if ok { Ok(()) } else { Err(Gp) };
        if let Some(slot) = Self::lvt_slot(off) {
            let &(_, allowed) = LVT_BITS.get(slot).ok_or(Gp)?;
            check(v & !allowed == 0)?;
            check(slot != TIMER || (v >> 17) & 3 != 3)?;
            self.write_lvt(slot, v);
            return Ok(Effects::none());
        }
        match off {
            TPR => {
                check(v <= 0xFF)?;
                self.tpr = v as u8;
            }
            EOI => {
                check(v == 0)?;
                return Ok(self.eoi());
            }
            SVR => {
                check(v & !SVR_WRITABLE == 0)?;
                self.write_svr(v);
            }
            ESR => {
                check(v == 0)?;
                self.write_esr();
            }
            ICR_LO => {
                // Delivery status (bit 12) does not exist in x2APIC mode.
                check(v & !ICR_WRITABLE == 0)?;
                self.icr = value;
                return Ok(self.send_ipi());
            }
            TIMER_ICR => self.write_initial_count(v, now_tsc),
            TIMER_DCR => {
                check(v & !DCR_WRITABLE == 0)?;
                self.write_dcr(v, now_tsc);
            }
            SELF_IPI => {
                // SDM 11.12.11: an edge-triggered fixed interrupt to this APIC.
                check(v <= 0xFF)?;
                self.accept(v as u8, false);
            }
            _ => return Err(Gp),
        }
        Ok(Effects::none())
    }
}

// Power-on keeps the APIC ID, the BSP flag and the bus clock (the
// platform's wiring).
/// The xAPIC page of this vCPU (the bus's per-vCPU window): an 8-byte read
/// reads two registers' worth; writes take the low 32 bits.
impl crate::MmioDevice for VLapic {
    fn mmio_read(&mut self, offset: u64, size: u8, now: u64) -> Effects {
        let before = self.next_timer_deadline();
        let off = (offset & 0xFFF) as u32;
        let lo = u64::from(self.read_mmio(off, now));
        let v = if size > 4 {
            lo | (u64::from(self.read_mmio(off.wrapping_add(4), now)) << 32)
        } else {
            lo
        };
        Effects::read(v & crate::all_ones64(size)).with_deadline(before, self.next_timer_deadline())
    }

    fn mmio_write(&mut self, offset: u64, _size: u8, value: u64, now: u64) -> Effects {
        self.write_mmio((offset & 0xFFF) as u32, value as u32, now)
    }
}

crate::state::plain_state!(VLapic, 1, |me| VLapic::new(
    me.id,
    me.bsp,
    me.tsc_per_bus_tick
));

impl crate::state::Check for VLapic {
    fn check(&self) -> Result<(), crate::state::StateError> {
        use crate::state::ensure;
        ensure(
            self.dcr & !DCR_WRITABLE == 0,
            "APIC timer divide configuration",
        )?;
        ensure(self.tsc_per_bus_tick >= 1, "APIC bus clock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipi(m: Message) -> Effects {
        Effects {
            messages: alloc::vec![m],
            ..Effects::none()
        }
    }

    /// 10 TSC cycles per bus tick.
    const TPB: u64 = 10;

    fn enabled() -> VLapic {
        let mut a = VLapic::new(3, true, TPB);
        assert_eq!(a.write_mmio(SVR, 0x1FF, 0), Effects::none());
        a
    }

    fn x2() -> VLapic {
        let mut a = enabled();
        a.set_apic_base(DEFAULT_BASE | BASE_EN | BASE_EXTD).unwrap();
        a
    }

    fn msr(off: u32) -> u32 {
        0x800 + (off >> 4)
    }

    #[test]
    fn power_up_state() {
        let mut a = VLapic::new(3, true, TPB);
        assert_eq!(a.apic_base(), 0xFEE0_0900);
        assert_eq!(VLapic::new(1, false, TPB).apic_base(), 0xFEE0_0800);
        assert_eq!(a.mode(), ApicMode::XApic);
        assert_eq!(a.read_mmio(ID, 0), 3 << 24);
        assert_eq!(a.read_mmio(VER, 0), 0x0005_0014);
        assert_eq!(a.read_mmio(DFR, 0), 0xFFFF_FFFF);
        assert_eq!(a.read_mmio(SVR, 0), 0xFF);
        for off in [LVT_CMCI, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370] {
            assert_eq!(a.read_mmio(off, 0), LVT_MASKED, "{off:#x}");
        }
        assert!(!a.is_software_enabled());
        // Software-disabled: nothing accepted, nothing pending.
        assert!(!a.accept(0x40, false));
        assert_eq!(a.pending(), None);
    }

    #[test]
    fn xapic_register_read_write() {
        let mut a = enabled();
        let _ = a.write_mmio(ID, 0x0700_00FF, 0);
        assert_eq!(a.read_mmio(ID, 0), 0x0700_0000);
        let _ = a.write_mmio(TPR, 0x1234, 0);
        assert_eq!(a.read_mmio(TPR, 0), 0x34);
        let _ = a.write_mmio(LDR, 0x1234_5678, 0);
        assert_eq!(a.read_mmio(LDR, 0), 0x1200_0000);
        let _ = a.write_mmio(DFR, 0x0000_0000, 0);
        assert_eq!(a.read_mmio(DFR, 0), 0x0FFF_FFFF);
        let _ = a.write_mmio(0x350, 0xFFFF_FFFF, 0);
        assert_eq!(a.read_mmio(0x350, 0), 0x0001_A7FF);
        let _ = a.write_mmio(0x320, 0xFFFF_FFFF, 0);
        assert_eq!(a.read_mmio(0x320, 0), 0x0007_00FF);
        let _ = a.write_mmio(TIMER_DCR, 0xFF, 0);
        assert_eq!(a.read_mmio(TIMER_DCR, 0), 0xB);
        let _ = a.write_mmio(ICR_HI, 0xFFFF_FFFF, 0);
        assert_eq!(a.read_mmio(ICR_HI, 0), 0xFF00_0000);
        // Read-only registers ignore writes.
        let _ = a.write_mmio(VER, 0, 0);
        assert_eq!(a.read_mmio(VER, 0), VERSION);
        // Byte reads inside a register, and the unused bytes 4..15.
        assert_eq!(a.read_mmio(VER + 2, 0), 0x5);
        assert_eq!(a.read_mmio(VER + 4, 0), 0);
        // Unaligned writes are dropped.
        let _ = a.write_mmio(TPR + 1, 0x77, 0);
        assert_eq!(a.read_mmio(TPR, 0), 0x34);
    }

    #[test]
    fn illegal_register_sets_esr_after_latch() {
        let mut a = enabled();
        assert_eq!(a.read_mmio(0x3A0, 0), 0);
        // Not visible until the ESR is written (SDM 11.5.3).
        assert_eq!(a.read_mmio(ESR, 0), 0);
        let _ = a.write_mmio(ESR, 0, 0);
        assert_eq!(a.read_mmio(ESR, 0), ESR_ILLEGAL_REGISTER);
        let _ = a.write_mmio(ESR, 0, 0);
        assert_eq!(a.read_mmio(ESR, 0), 0);
    }

    #[test]
    fn error_lvt_raises_interrupt() {
        let mut a = enabled();
        let _ = a.write_mmio(LVT_ERROR, 0xFE, 0);
        assert!(!a.accept(5, false));
        assert_eq!(a.pending(), Some(0xFE));
        let _ = a.write_mmio(ESR, 0, 0);
        assert_eq!(a.read_mmio(ESR, 0), ESR_RECV_ILLEGAL_VECTOR);
    }

    #[test]
    fn software_disable_masks_lvts() {
        let mut a = enabled();
        let _ = a.write_mmio(0x320, 0x30, 0);
        assert_eq!(a.read_mmio(0x320, 0), 0x30);
        let _ = a.write_mmio(SVR, 0xFF, 0);
        assert_eq!(a.read_mmio(0x320, 0), 0x30 | LVT_MASKED);
        // Masks can't be cleared while software-disabled (SDM 11.4.7.2).
        let _ = a.write_mmio(0x320, 0x30, 0);
        assert_eq!(a.read_mmio(0x320, 0), 0x30 | LVT_MASKED);
    }

    #[test]
    fn tpr_and_ppr_gate_delivery() {
        let mut a = enabled();
        assert!(a.accept(0x51, false));
        assert_eq!(a.pending(), Some(0x51));
        a.set_tpr(0x50);
        assert_eq!(a.ppr(), 0x50);
        // Class 5 is not above PPR class 5.
        assert_eq!(a.pending(), None);
        a.set_tpr(0x4F);
        assert_eq!(a.pending(), Some(0x51));
        a.set_tpr(0);
        a.ack(0x51);
        assert_eq!(a.ppr(), 0x50);
        assert!(a.accept(0x5F, false));
        assert_eq!(a.pending(), None, "same class as in service");
        assert!(a.accept(0x60, false));
        assert_eq!(a.pending(), Some(0x60));
        // TPR above ISR class: PPR = TPR.
        a.set_tpr(0x72);
        assert_eq!(a.ppr(), 0x72);
        assert_eq!(a.pending(), None);
    }

    #[test]
    fn irr_isr_eoi_order() {
        let mut a = enabled();
        assert!(a.accept(0x30, false));
        assert!(a.accept(0x80, true));
        assert!(a.accept(0x41, false));
        assert_eq!(a.read_mmio(IRR0 + 0x40, 0), 1 << 0);
        assert_eq!(a.read_mmio(TMR0 + 0x40, 0), 1 << 0);
        assert_eq!(a.pending(), Some(0x80));
        a.ack(0x80);
        assert!(a.isr_bit(0x80) && !a.irr_bit(0x80));
        assert_eq!(a.read_mmio(ISR0 + 0x40, 0), 1);
        assert_eq!(a.pending(), None, "lower classes wait for EOI");
        assert_eq!(a.read_mmio(PPR, 0), 0x80);
        assert_eq!(
            a.write_mmio(EOI, 0, 0),
            Effects {
                eoi: Some(0x80),
                ..Effects::none()
            }
        );
        assert_eq!(a.pending(), Some(0x41));
        a.ack(0x41);
        // A higher vector nests above the one in service.
        assert!(a.accept(0x90, false));
        assert_eq!(a.pending(), Some(0x90));
        a.ack(0x90);
        assert_eq!(a.eoi(), Effects::none());
        assert_eq!(a.eoi(), Effects::none());
        assert_eq!(a.pending(), Some(0x30));
        a.ack(0x30);
        let _ = a.eoi();
        assert_eq!(a.eoi(), Effects::none());
        // ack of a vector not in the IRR does nothing.
        a.ack(0x99);
        assert!(!a.isr_bit(0x99));
    }

    #[test]
    fn illegal_vectors_rejected() {
        let mut a = enabled();
        assert!(!a.accept(15, false));
        assert_eq!(a.pending(), None);
        assert!(a.accept(16, false));
    }

    #[test]
    fn one_shot_timer() {
        let mut a = enabled();
        let _ = a.write_mmio(TIMER_DCR, 0b1011, 0); // divide by 1
        let _ = a.write_mmio(0x320, 0x40, 0);
        let _ = a.write_mmio(TIMER_ICR, 100, 1000);
        assert_eq!(a.next_timer_deadline(), Some(1000 + 100 * TPB));
        assert_eq!(a.read_mmio(TIMER_CCR, 1000), 100);
        assert_eq!(a.read_mmio(TIMER_CCR, 1000 + 25 * TPB + 3), 75);
        assert!(!a.poll_timer(1000 + 100 * TPB - 1));
        assert!(a.poll_timer(1000 + 100 * TPB));
        assert_eq!(a.pending(), Some(0x40));
        assert_eq!(a.read_mmio(TIMER_CCR, 5000), 0);
        assert_eq!(a.next_timer_deadline(), None);
        assert!(!a.poll_timer(1_000_000));
        // Divide by 2 (DCR 0): twice as long.
        let _ = a.write_mmio(TIMER_DCR, 0, 0);
        let _ = a.write_mmio(TIMER_ICR, 10, 0);
        assert_eq!(a.next_timer_deadline(), Some(10 * 2 * TPB));
        // Writing 0 stops it.
        let _ = a.write_mmio(TIMER_ICR, 0, 5);
        assert_eq!(a.next_timer_deadline(), None);
        assert_eq!(a.read_mmio(TIMER_CCR, 5), 0);
    }

    #[test]
    fn masked_timer_counts_but_does_not_interrupt() {
        let mut a = enabled();
        let _ = a.write_mmio(0x320, 0x40 | LVT_MASKED, 0);
        let _ = a.write_mmio(TIMER_ICR, 10, 0);
        assert_eq!(a.next_timer_deadline(), None);
        assert_eq!(a.read_mmio(TIMER_CCR, 5 * 2 * TPB), 5);
        assert!(!a.poll_timer(100 * TPB));
        assert_eq!(a.pending(), None);
        assert_eq!(a.read_mmio(TIMER_CCR, 100 * TPB), 0);
    }

    #[test]
    fn periodic_timer_rearms_and_coalesces() {
        let mut a = enabled();
        let _ = a.write_mmio(TIMER_DCR, 0b1011, 0);
        let _ = a.write_mmio(0x320, 0x41 | (1 << 17), 0);
        assert_eq!(a.timer_mode(), TimerMode::Periodic);
        let _ = a.write_mmio(TIMER_ICR, 50, 0);
        let period = 50 * TPB;
        assert!(a.poll_timer(period));
        assert_eq!(a.next_timer_deadline(), Some(2 * period));
        assert_eq!(a.read_mmio(TIMER_CCR, period + 10 * TPB), 40);
        a.ack(0x41);
        let _ = a.eoi();
        // Three periods late: one interrupt, next deadline on the grid.
        assert!(a.poll_timer(4 * period + 5));
        assert_eq!(a.next_timer_deadline(), Some(5 * period));
        assert_eq!(a.pending(), Some(0x41));
        // Changing the divider keeps the current count.
        let _ = a.write_mmio(TIMER_DCR, 0, 4 * period + 20 * TPB);
        assert_eq!(a.read_mmio(TIMER_CCR, 4 * period + 20 * TPB), 30);
        assert_eq!(
            a.next_timer_deadline(),
            Some(4 * period + 20 * TPB + 30 * 2 * TPB)
        );
    }

    #[test]
    fn tsc_deadline_timer() {
        let mut a = enabled();
        // Ignored outside TSC-deadline mode.
        a.write_tsc_deadline(500, 0);
        assert_eq!(a.read_tsc_deadline(0), 0);
        let _ = a.write_mmio(TIMER_ICR, 100, 0);
        let _ = a.write_mmio(0x320, 0x42 | (2 << 17), 0);
        // The mode switch disarmed the count.
        assert_eq!(a.read_mmio(TIMER_ICR, 0), 0);
        assert_eq!(a.next_timer_deadline(), None);
        // Initial-count writes are ignored in this mode.
        let _ = a.write_mmio(TIMER_ICR, 100, 0);
        assert_eq!(a.read_mmio(TIMER_CCR, 0), 0);
        assert_eq!(a.next_timer_deadline(), None);
        a.write_tsc_deadline(5000, 10);
        assert_eq!(a.read_tsc_deadline(10), 5000);
        assert_eq!(a.next_timer_deadline(), Some(5000));
        assert!(!a.poll_timer(4999));
        assert!(a.poll_timer(5000));
        assert_eq!(a.pending(), Some(0x42));
        assert_eq!(a.read_tsc_deadline(5001), 0, "clears when it fires");
        // 0 disarms; a past deadline fires at once.
        a.write_tsc_deadline(9000, 6000);
        a.write_tsc_deadline(0, 6000);
        assert!(!a.poll_timer(10_000));
        a.write_tsc_deadline(100, 10_000);
        assert!(a.poll_timer(10_000));
        // Switching back to one-shot clears the deadline.
        a.write_tsc_deadline(20_000, 10_000);
        let _ = a.write_mmio(0x320, 0x42, 10_000);
        assert_eq!(a.next_timer_deadline(), None);
        let _ = a.write_mmio(0x320, 0x42 | (2 << 17), 10_000);
        assert_eq!(a.read_tsc_deadline(10_000), 0);
    }

    #[test]
    fn overdue_deadline_is_not_lost_on_rewrite() {
        let mut a = enabled();
        let _ = a.write_mmio(0x320, 0x43 | (2 << 17), 0);
        a.write_tsc_deadline(100, 0);
        // The guest writes a new deadline after the old one passed, unpolled.
        a.write_tsc_deadline(900, 200);
        assert_eq!(a.pending(), Some(0x43));
    }

    #[test]
    fn xapic_icr_decoding() {
        let mut a = enabled();
        let _ = a.write_mmio(ICR_HI, 0x0500_0000, 0);
        let e = a.write_mmio(ICR_LO, 0x0000_4031, 0);
        assert_eq!(
            e,
            ipi(Message {
                dest_shorthand: Shorthand::None,
                dest: 5,
                dest_mode_logical: false,
                x2apic: false,
                delivery: DeliveryMode::Fixed,
                vector: 0x31,
                level: true,
                trigger_level: false,
                source: 3,
            })
        );
        // INIT assert to all excluding self, then SIPI vector 0x9A.
        let [i] = a.write_mmio(ICR_LO, 0x000C_4500, 0).messages[..] else {
            panic!()
        };
        assert_eq!(i.delivery, DeliveryMode::Init);
        assert_eq!(i.dest_shorthand, Shorthand::AllExcludingSelf);
        let [i] = a.write_mmio(ICR_LO, 0x0000_469A, 0).messages[..] else {
            panic!()
        };
        assert_eq!((i.delivery, i.vector), (DeliveryMode::Startup, 0x9A));
        // Logical NMI.
        let [i] = a.write_mmio(ICR_LO, 0x0000_4C00, 0).messages[..] else {
            panic!()
        };
        assert!(i.dest_mode_logical);
        assert_eq!(i.delivery, DeliveryMode::Nmi);
        // INIT de-assert and reserved modes send nothing.
        assert_eq!(a.write_mmio(ICR_LO, 0x0000_8500, 0), Effects::none());
        assert_eq!(a.write_mmio(ICR_LO, 0x0000_4300, 0), Effects::none());
        assert_eq!(a.write_mmio(ICR_LO, 0x0000_4700, 0), Effects::none());
        // Illegal fixed vector: ESR bit 5, nothing sent.
        assert_eq!(a.write_mmio(ICR_LO, 0x0000_4005, 0), Effects::none());
        let _ = a.write_mmio(ESR, 0, 0);
        assert_eq!(a.read_mmio(ESR, 0), ESR_SEND_ILLEGAL_VECTOR);
        // Delivery status always reads idle.
        assert_eq!(a.read_mmio(ICR_LO, 0) & (1 << 12), 0);
    }

    #[test]
    fn x2apic_icr_decoding() {
        let mut a = x2();
        let e = a
            .write_msr(0x830, (0x1_0203u64 << 32) | 0x0004_80FE, 0)
            .unwrap();
        assert_eq!(
            e,
            ipi(Message {
                dest_shorthand: Shorthand::SelfOnly,
                dest: 0x1_0203,
                dest_mode_logical: false,
                x2apic: true,
                delivery: DeliveryMode::Fixed,
                vector: 0xFE,
                level: false,
                trigger_level: true,
                source: 3,
            })
        );
        assert_eq!(
            a.read_msr(0x830, 0),
            Some((0x1_0203u64 << 32) | 0x0004_80FE)
        );
        // Delivery status and other reserved bits: #GP.
        assert_eq!(a.write_msr(0x830, 1 << 12, 0), Err(Gp));
        assert_eq!(a.write_msr(0x830, 1 << 20, 0), Err(Gp));
        // No ICR high register in x2APIC mode.
        assert_eq!(a.read_msr(0x831, 0), None);
        assert_eq!(a.write_msr(0x831, 0, 0), Err(Gp));
    }

    #[test]
    fn x2apic_msr_mapping() {
        let mut a = x2();
        assert_eq!(a.read_msr(0x802, 0), Some(3));
        assert_eq!(a.read_msr(0x803, 0), Some(u64::from(VERSION)));
        assert_eq!(a.read_msr(0x80D, 0), Some(1 << 3));
        assert_eq!(a.read_msr(0x80F, 0), Some(0x1FF));
        assert_eq!(a.write_msr(msr(TPR), 0x20, 0), Ok(Effects::none()));
        assert_eq!(a.read_msr(0x808, 0), Some(0x20));
        assert_eq!(a.read_msr(0x80A, 0), Some(0x20));
        assert_eq!(a.write_msr(0x832, 0x0002_0050, 0), Ok(Effects::none()));
        assert_eq!(a.timer_mode(), TimerMode::Periodic);
        assert_eq!(a.write_msr(0x83E, 0xB, 0), Ok(Effects::none()));
        // Starting the timer reports its deadline: 7 ticks of TPB cycles.
        assert_eq!(
            a.write_msr(0x838, 7, 0).map(|fx| fx.deadline),
            Ok(Some(Some(7 * TPB)))
        );
        assert_eq!(a.read_msr(0x838, 0), Some(7));
        assert_eq!(a.read_msr(0x839, 2 * TPB), Some(5));
        assert_eq!(a.read_msr(0x83E, 0), Some(0xB));
        // Self IPI goes straight into the IRR.
        assert_eq!(a.write_msr(0x83F, 0x66, 0), Ok(Effects::none()));
        assert_eq!(a.read_msr(0x820 + 3, 0), Some(1 << 6));
        assert_eq!(a.pending(), Some(0x66));
        a.ack(0x66);
        assert_eq!(a.read_msr(0x810 + 3, 0), Some(1 << 6));
        assert_eq!(a.write_msr(0x80B, 0, 0), Ok(Effects::none()));
        // LVTs, CMCI included.
        assert_eq!(a.write_msr(0x82F, 0x0001_0033, 0), Ok(Effects::none()));
        assert_eq!(a.read_msr(0x82F, 0), Some(0x0001_0033));
        assert_eq!(a.write_msr(0x835, 0x0000_0700, 0), Ok(Effects::none()));
        assert_eq!(
            a.lint(0),
            Some(LintDelivery {
                mode: DeliveryMode::ExtInt,
                vector: 0,
                level_triggered: false
            })
        );
    }

    #[test]
    fn x2apic_gp_cases() {
        let mut a = x2();
        // Write-only registers read as #GP; read-only ones write as #GP.
        assert_eq!(a.read_msr(0x80B, 0), None);
        assert_eq!(a.read_msr(0x83F, 0), None);
        for m in [0x802, 0x803, 0x80A, 0x80D, 0x810, 0x818, 0x820, 0x839] {
            assert_eq!(a.write_msr(m, 0, 0), Err(Gp), "{m:#x}");
        }
        // Registers that don't exist in x2APIC mode.
        for m in [0x800, 0x809, 0x80C, 0x80E, 0x840, 0x8FF] {
            assert_eq!(a.read_msr(m, 0), None, "{m:#x}");
        }
        // Reserved bits.
        assert_eq!(a.write_msr(0x808, 0x100, 0), Err(Gp));
        assert_eq!(a.write_msr(0x80B, 1, 0), Err(Gp));
        assert_eq!(a.write_msr(0x828, 1, 0), Err(Gp));
        assert_eq!(a.write_msr(0x80F, 0x1000, 0), Err(Gp));
        assert_eq!(a.write_msr(0x832, 3 << 17, 0), Err(Gp));
        assert_eq!(a.write_msr(0x837, 0x700, 0), Err(Gp));
        assert_eq!(a.write_msr(0x83E, 0x4, 0), Err(Gp));
        assert_eq!(a.write_msr(0x83F, 0x100, 0), Err(Gp));
        assert_eq!(a.write_msr(0x838, 1 << 32, 0), Err(Gp));
        assert!(a.write_msr(0x828, 0, 0).is_ok());
        // Not an x2APIC MSR at all.
        assert_eq!(a.read_msr(0x1B, 0), None);
        // MMIO doesn't decode in x2APIC mode.
        assert_eq!(a.read_mmio(VER, 0), u32::MAX);
        assert_eq!(a.write_mmio(TPR, 0x10, 0), Effects::none());
        assert_eq!(a.tpr(), 0);
        // And the MSRs don't in xAPIC mode.
        let mut b = enabled();
        assert_eq!(b.read_msr(0x802, 0), None);
        assert_eq!(b.write_msr(0x808, 0, 0), Err(Gp));
    }

    #[test]
    fn apic_base_transitions() {
        let mut a = enabled();
        let _ = a.write_mmio(TPR, 0x30, 0);
        // Reserved bits and EXTD without EN.
        assert_eq!(a.set_apic_base(DEFAULT_BASE | BASE_EN | 1), Err(Gp));
        assert_eq!(a.set_apic_base(DEFAULT_BASE | BASE_EN | (1 << 52)), Err(Gp));
        assert_eq!(a.set_apic_base(DEFAULT_BASE | BASE_EXTD), Err(Gp));
        // xAPIC -> x2APIC keeps state and derives the LDR.
        a.set_apic_base(DEFAULT_BASE | BASE_EN | BASE_EXTD).unwrap();
        assert_eq!(a.mode(), ApicMode::X2Apic);
        assert_eq!(a.apic_base(), DEFAULT_BASE | BASE_EN | BASE_EXTD | BASE_BSP);
        assert_eq!(a.tpr(), 0x30);
        // x2APIC -> xAPIC directly is illegal.
        assert_eq!(a.set_apic_base(DEFAULT_BASE | BASE_EN), Err(Gp));
        // x2APIC -> disabled resets; disabled -> x2APIC is illegal.
        a.set_apic_base(DEFAULT_BASE).unwrap();
        assert_eq!(a.mode(), ApicMode::Disabled);
        assert_eq!(a.tpr(), 0);
        assert!(!a.is_software_enabled());
        assert_eq!(a.set_apic_base(DEFAULT_BASE | BASE_EN | BASE_EXTD), Err(Gp));
        // Disabled: LINT pins pass through, nothing matches or is accepted.
        assert_eq!(a.lint(1).map(|l| l.mode), Some(DeliveryMode::Nmi));
        assert!(!a.matches_destination(0xFF, false, false));
        assert!(!a.accept(0x40, false));
        // Disabled -> xAPIC at a relocated base.
        a.set_apic_base(0xFED0_0000 | BASE_EN).unwrap();
        assert_eq!(a.mode(), ApicMode::XApic);
        assert_eq!(a.mmio_base(), 0xFED0_0000);
        assert_eq!(a.read_mmio(SVR, 0), 0xFF);
        // The BSP bit is not writable.
        assert_eq!(a.apic_base() & BASE_BSP, BASE_BSP);
    }

    #[test]
    fn init_resets_all_but_id_and_base() {
        let mut a = x2();
        assert_eq!(a.write_msr(0x808, 0x40, 0), Ok(Effects::none()));
        assert!(a.accept(0x70, true));
        assert_eq!(a.write_msr(0x838, 100, 0), Ok(Effects::none()));
        a.reset_on_init();
        assert_eq!(a.mode(), ApicMode::X2Apic);
        assert_eq!(a.read_msr(0x802, 0), Some(3));
        assert_eq!(a.read_msr(0x80D, 0), Some(1 << 3));
        assert_eq!(a.read_msr(0x808, 0), Some(0));
        assert_eq!(a.read_msr(0x80F, 0), Some(0xFF));
        assert_eq!(a.read_msr(0x827, 0), Some(0));
        assert_eq!(a.read_msr(0x838, 0), Some(0));
        assert_eq!(a.read_msr(0x832, 0), Some(u64::from(LVT_MASKED)));
        assert_eq!(a.next_timer_deadline(), None);
    }

    #[test]
    fn physical_destinations() {
        let mut a = enabled();
        assert!(a.matches_destination(3, false, false));
        assert!(!a.matches_destination(4, false, false));
        assert!(a.matches_destination(0xFF, false, false));
        let _ = a.write_mmio(ID, 0x0900_0000, 0);
        assert!(a.matches_destination(9, false, false));
        assert!(!a.matches_destination(3, false, false));
        let b = x2();
        assert!(b.matches_destination(3, false, true));
        assert!(b.matches_destination(u32::MAX, false, true));
        assert!(!b.matches_destination(0x103, false, true));
        let big = {
            let mut l = VLapic::new(0x1_0002, false, TPB);
            l.set_apic_base(DEFAULT_BASE | BASE_EN | BASE_EXTD).unwrap();
            l
        };
        assert!(big.matches_destination(0x1_0002, false, true));
        assert!(!big.matches_destination(2, false, true));
    }

    #[test]
    fn logical_flat_and_cluster() {
        let mut a = enabled();
        // Flat model: LDR is a bit mask.
        let _ = a.write_mmio(LDR, 0x0400_0000, 0);
        assert!(a.matches_destination(0x04, true, false));
        assert!(a.matches_destination(0x0C, true, false));
        assert!(!a.matches_destination(0x03, true, false));
        assert!(a.matches_destination(0xFF, true, false));
        // Cluster model: cluster 2, member bit 1.
        let _ = a.write_mmio(DFR, 0x0FFF_FFFF, 0);
        let _ = a.write_mmio(LDR, 0x2200_0000, 0);
        assert!(a.matches_destination(0x22, true, false));
        assert!(a.matches_destination(0x27, true, false));
        assert!(!a.matches_destination(0x32, true, false));
        assert!(!a.matches_destination(0x21, true, false));
        // x2APIC logical: ID 0x23 is cluster 2, bit 3.
        let mut b = VLapic::new(0x23, false, TPB);
        let _ = b.write_mmio(SVR, 0x1FF, 0);
        b.set_apic_base(DEFAULT_BASE | BASE_EN | BASE_EXTD).unwrap();
        assert_eq!(b.read_msr(0x80D, 0), Some(0x0002_0008));
        assert!(b.matches_destination(0x0002_0008, true, true));
        assert!(b.matches_destination(0x0002_000F, true, true));
        assert!(!b.matches_destination(0x0002_0007, true, true));
        assert!(!b.matches_destination(0x0001_0008, true, true));
        assert!(b.matches_destination(u32::MAX, true, true));
    }

    #[test]
    fn delivery_mode_bits() {
        assert_eq!(DeliveryMode::from_bits(0), Some(DeliveryMode::Fixed));
        assert_eq!(DeliveryMode::from_bits(3), None);
        assert_eq!(DeliveryMode::from_bits(7), Some(DeliveryMode::ExtInt));
    }
}
