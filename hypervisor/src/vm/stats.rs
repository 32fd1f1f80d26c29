//! Per-VM figures for the management console and API: VM exits counted by
//! basic reason, run time, and where each vCPU last ran.
//!
//! Each vCPU has its own row of counters and only the CPU running that vCPU
//! writes it (a relaxed load and store, no locked instruction, no cache line
//! shared with another VM); readers sum the rows. Rates come from the
//! differences between two samples ([`Sample`]), taken about once a second
//! by CPU 0.
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Counter slots: basic exit reasons 0..=68 (SDM Vol. 3D Appendix C), the
/// last slot for any other value.
pub const SLOTS: usize = 70;
const OTHER: usize = SLOTS - 1;

/// One vCPU's exit counters, on cache lines of their own.
#[repr(align(64))]
pub struct Row(pub [AtomicU64; SLOTS]);

impl Row {
    /// Counts one exit with basic reason `reason` (see [`VmStats::count`]).
    #[inline(always)]
    pub fn count(&self, reason: u32) {
        let c = &self.0[(reason as usize).min(OTHER)];
        c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }
}

impl Default for Row {
    fn default() -> Self {
        Row([const { AtomicU64::new(0) }; SLOTS])
    }
}

pub struct VmStats {
    rows: Vec<Row>,
    /// TSC ticks the VM's vCPUs spent in time slices (charged once a slice).
    pub run_tsc: AtomicU64,
    /// Per vCPU: 1 + the index of the physical CPU it last ran on, or 0.
    pub last_cpu: Vec<AtomicU32>,
    /// The last two samples (CPU 0's management tick writes them).
    pub samples: spin::Mutex<[Option<Sample>; 2]>,
}

/// The counters at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub tsc: u64,
    pub exits: [u64; SLOTS],
    pub run_tsc: u64,
}

/// What two samples say: exits per second by slot and the share of all
/// CPUs' time, in tenths of a percent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rates {
    pub per_sec: [u64; SLOTS],
    pub total_per_sec: u64,
    pub cpu_share_permille: u32,
}

/// The rates between `old` and `new` over `tsc_hz` ticks per second and
/// `cpus` physical CPUs (pure: unit-tested).
pub fn rates(old: &Sample, new: &Sample, tsc_hz: u64, cpus: u64) -> Rates {
    let dt = new.tsc.saturating_sub(old.tsc).max(1);
    let mut per_sec = [0u64; SLOTS];
    let mut total = 0u64;
    for (i, r) in per_sec.iter_mut().enumerate() {
        let d = new.exits[i].saturating_sub(old.exits[i]);
        *r = (u128::from(d) * u128::from(tsc_hz) / u128::from(dt)).min(u128::from(u64::MAX)) as u64;
        total = total.saturating_add(*r);
    }
    let ran = new.run_tsc.saturating_sub(old.run_tsc);
    let share = u128::from(ran) * 1000 / (u128::from(dt) * u128::from(cpus.max(1)));
    Rates {
        per_sec,
        total_per_sec: total,
        cpu_share_permille: share.min(1000) as u32,
    }
}

impl VmStats {
    pub fn new(vcpus: usize) -> Self {
        VmStats {
            rows: (0..vcpus).map(|_| Row::default()).collect(),
            run_tsc: AtomicU64::new(0),
            last_cpu: (0..vcpus).map(|_| AtomicU32::new(0)).collect(),
            samples: spin::Mutex::new([None, None]),
        }
    }

    /// Counts one exit of vCPU `vcpu` with basic reason `reason`. Only the
    /// CPU running that vCPU calls this, so a plain load and store suffice.
    #[inline(always)]
    pub fn count(&self, vcpu: usize, reason: u32) {
        if let Some(row) = self.row(vcpu) {
            row.count(reason);
        }
    }

    /// vCPU `vcpu`'s counters (the run loop looks them up once a slice).
    pub fn row(&self, vcpu: usize) -> Option<&Row> {
        self.rows.get(vcpu)
    }

    /// Every vCPU's counters summed.
    pub fn totals(&self) -> [u64; SLOTS] {
        let mut t = [0u64; SLOTS];
        for row in &self.rows {
            for (s, c) in t.iter_mut().zip(row.0.iter()) {
                *s = s.wrapping_add(c.load(Ordering::Relaxed));
            }
        }
        t
    }

    pub fn sample(&self, tsc: u64) -> Sample {
        Sample {
            tsc,
            exits: self.totals(),
            run_tsc: self.run_tsc.load(Ordering::Relaxed),
        }
    }

    /// Keeps `s` as the newest sample (the older one stays as the base).
    pub fn push_sample(&self, s: Sample) {
        let mut g = self.samples.lock();
        g[0] = g[1].take();
        if g[0].is_none() {
            g[0] = Some(Sample {
                tsc: 0,
                exits: [0; SLOTS],
                run_tsc: 0,
            });
        }
        g[1] = Some(s);
    }

    /// The rates over the last sampling interval (None before two samples).
    pub fn last_rates(&self, tsc_hz: u64, cpus: u64) -> Option<Rates> {
        let g = self.samples.lock();
        match (&g[0], &g[1]) {
            (Some(a), Some(b)) => Some(rates(a, b, tsc_hz, cpus)),
            _ => None,
        }
    }
}

/// A basic exit reason's name for people (`io_instruction`, `preemption_timer`).
pub fn reason_name(slot: usize) -> alloc::string::String {
    use alloc::string::String;
    let Some(r) = arch::vmx::exit::ExitReason::from_raw(slot as u32).filter(|_| slot < OTHER)
    else {
        return if slot >= OTHER {
            String::from("other")
        } else {
            alloc::format!("reason_{slot}")
        };
    };
    let camel = alloc::format!("{r:?}");
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tsc: u64, io: u64, hlt: u64, run: u64) -> Sample {
        let mut exits = [0; SLOTS];
        exits[30] = io;
        exits[12] = hlt;
        Sample {
            tsc,
            exits,
            run_tsc: run,
        }
    }

    #[test]
    fn counters_are_per_vcpu_and_summed() {
        let s = VmStats::new(2);
        s.count(0, 30);
        s.count(1, 30);
        s.count(1, 12);
        s.count(1, 0xFFFF); // out of range: "other"
        s.count(5, 30); // no such vCPU: ignored
        let t = s.totals();
        assert_eq!((t[30], t[12], t[OTHER]), (2, 1, 1));
        assert_eq!(t.iter().sum::<u64>(), 4);
    }

    #[test]
    fn rates_between_two_samples() {
        // 1000 ticks per second, 2 CPUs; half a second apart.
        let a = sample(1000, 10, 0, 0);
        let b = sample(1500, 60, 5, 250);
        let r = rates(&a, &b, 1000, 2);
        assert_eq!(r.per_sec[30], 100);
        assert_eq!(r.per_sec[12], 10);
        assert_eq!(r.total_per_sec, 110);
        // 250 of 2 × 500 CPU ticks: 25.0 %.
        assert_eq!(r.cpu_share_permille, 250);
        // Counters never go backwards; if they seem to, no negative rates.
        let r = rates(&b, &a, 1000, 2);
        assert_eq!((r.total_per_sec, r.cpu_share_permille), (0, 0));
        // Share is capped at 100 %.
        assert_eq!(
            rates(&a, &sample(1500, 10, 0, 5000), 1000, 1).cpu_share_permille,
            1000
        );
    }

    #[test]
    fn samples_roll() {
        let s = VmStats::new(1);
        assert_eq!(s.last_rates(1000, 1), None);
        s.count(0, 30);
        s.push_sample(s.sample(1000));
        // First sample: rates since start (tsc 0).
        assert_eq!(s.last_rates(1000, 1).unwrap().per_sec[30], 1);
        for _ in 0..4 {
            s.count(0, 30);
        }
        s.push_sample(s.sample(2000));
        assert_eq!(s.last_rates(1000, 1).unwrap().per_sec[30], 4);
    }

    #[test]
    fn reason_names() {
        assert_eq!(reason_name(30), "io_instruction");
        assert_eq!(reason_name(52), "preemption_timer");
        assert_eq!(reason_name(12), "hlt");
        assert_eq!(reason_name(0), "exception_or_nmi");
        assert_eq!(reason_name(35), "reason_35");
        assert_eq!(reason_name(OTHER), "other");
    }
}
