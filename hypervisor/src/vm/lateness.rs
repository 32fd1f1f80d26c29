//! How late guest timer interrupts are noticed: for each local APIC timer
//! expiry, the time from its deadline to the moment the hypervisor polled it
//! (and so raised the interrupt), in buckets. The summary prints it per VM.
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

/// Bucket upper bounds in microseconds; the last bucket holds the rest.
pub const BOUNDS_US: [u64; 5] = [10, 100, 1000, 4000, 10_000];
const N: usize = BOUNDS_US.len() + 1;

/// The bucket of a lateness of `us` microseconds.
pub fn bucket(us: u64) -> usize {
    BOUNDS_US.iter().position(|&b| us < b).unwrap_or(N - 1)
}

#[derive(Default)]
pub struct Lateness {
    counts: [AtomicU64; N],
    max_us: AtomicU64,
}

impl Lateness {
    pub fn record(&self, us: u64) {
        self.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
        self.max_us.store(0, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// `<n> expiries, <10us a, <100us b, <1ms c, <4ms d, <10ms e, >=10ms f, max m us`
impl fmt::Display for Lateness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} expiries", self.total())?;
        let label = |us: u64, f: &mut fmt::Formatter<'_>| {
            if us >= 1000 {
                write!(f, "{}ms", us / 1000)
            } else {
                write!(f, "{us}us")
            }
        };
        for (i, c) in self.counts.iter().enumerate() {
            f.write_str(", ")?;
            match BOUNDS_US.get(i) {
                Some(&b) => {
                    f.write_str("<")?;
                    label(b, f)?;
                }
                None => {
                    f.write_str(">=")?;
                    label(BOUNDS_US[N - 2], f)?;
                }
            }
            write!(f, " {}", c.load(Ordering::Relaxed))?;
        }
        write!(f, ", max {} us", self.max_us.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn buckets_and_line() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(9), 0);
        assert_eq!(bucket(10), 1);
        assert_eq!(bucket(3999), 3);
        assert_eq!(bucket(4000), 4);
        assert_eq!(bucket(10_000), 5);
        assert_eq!(bucket(u64::MAX), 5);
        let l = Lateness::default();
        for us in [1, 2, 50, 700, 5000, 20_000] {
            l.record(us);
        }
        assert_eq!(
            format!("{l}"),
            "6 expiries, <10us 2, <100us 1, <1ms 1, <4ms 0, <10ms 1, >=10ms 1, max 20000 us"
        );
        l.reset();
        assert_eq!(l.total(), 0);
    }
}
