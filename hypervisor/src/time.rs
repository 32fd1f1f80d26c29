//! TSC calibration against the 8254 PIT (channel 2, gated through port 0x61).
use arch::regs::{inb, outb, rdtsc};
use core::sync::atomic::{AtomicU64, Ordering};

const PIT_HZ: u64 = 1_193_182;
static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
/// ns per TSC tick and TSC ticks per ns as 32.32 fixed point: conversions on
/// the exit path multiply instead of dividing.
static NS_PER_TSC_32: AtomicU64 = AtomicU64::new(1 << 32);
static TSC_PER_NS_32: AtomicU64 = AtomicU64::new(1 << 32);

/// TSC ticks to nanoseconds.
pub fn tsc_to_ns(tsc: u64) -> u64 {
    ((u128::from(tsc) * u128::from(NS_PER_TSC_32.load(Ordering::Relaxed))) >> 32) as u64
}

/// Nanoseconds to TSC ticks.
pub fn ns_to_tsc(ns: u64) -> u64 {
    ((u128::from(ns) * u128::from(TSC_PER_NS_32.load(Ordering::Relaxed))) >> 32) as u64
}

/// Measures the TSC rate over ~10 ms of PIT time. Call once on the BSP before
/// other CPUs run (it owns the PIT meanwhile).
pub fn calibrate() -> u64 {
    let ticks: u64 = PIT_HZ / 100; // 10 ms
                                   // SAFETY: ports 0x61/0x42/0x43 are the standard PC speaker gate and PIT
                                   // channel 2; nothing else uses them at this point.
    let tsc_delta = unsafe {
        let gate = inb(0x61);
        outb(0x61, (gate & !0x02) | 0x01); // gate on, speaker off
        outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        outb(0x42, ticks as u8);
        outb(0x42, (ticks >> 8) as u8);
        let start = rdtsc();
        let mut spins = 0u64;
        // OUT2 goes high when the count reaches zero.
        while inb(0x61) & 0x20 == 0 {
            spins += 1;
            if spins > 100_000_000 {
                break;
            }
        }
        let end = rdtsc();
        outb(0x61, gate);
        end - start
    };
    let khz = (tsc_delta / 10).max(1000);
    TSC_KHZ.store(khz, Ordering::Release);
    NS_PER_TSC_32.store(
        ((1_000_000u128 << 32) / u128::from(khz)) as u64,
        Ordering::Release,
    );
    TSC_PER_NS_32.store(
        ((u128::from(khz) << 32) / 1_000_000) as u64,
        Ordering::Release,
    );
    khz
}

pub fn tsc_khz() -> u64 {
    match TSC_KHZ.load(Ordering::Acquire) {
        0 => 1_000_000,
        k => k,
    }
}

/// Busy-waits for `us` microseconds of TSC time.
pub fn delay_us(us: u64) {
    let end = rdtsc() + us * tsc_khz() / 1000;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// TSC ticks for `us` microseconds.
pub fn us_to_tsc(us: u64) -> u64 {
    us * tsc_khz() / 1000
}
