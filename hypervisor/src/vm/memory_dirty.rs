//! Which parts of guest RAM were written since a point in time (the last
//! snapshot or restore), per 2 MiB region: the EPT's dirty flags record the
//! guest's writes (SDM Vol. 3C 29.3.5, with EPTP bit 6 set), a bitmap the
//! hypervisor's own (`GuestMemory::write`). A restore to the snapshot the
//! RAM was last made equal to then touches only the regions written since.
use super::{ept, Gpa, GuestMemory};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Bytes per tracked region (an EPT 2 MiB leaf).
pub const REGION: u64 = 0x20_0000;
/// EPT entry bits: large page, dirty (SDM Vol. 3C Tables 29-4, 29-6).
const DIRTY: u64 = 1 << 9;
/// EPTP bit 6: enable accessed and dirty flags (SDM Vol. 3C 25.6.11).
const EPTP_AD: u64 = 1 << 6;

pub struct DirtyLog {
    /// The CPU sets the EPT's dirty flags (enabled before the first entry).
    enabled: AtomicBool,
    /// Regions the hypervisor wrote (bit n of word n / 64).
    host: Vec<AtomicU64>,
    regions: u64,
}

impl DirtyLog {
    pub fn new(span: u64) -> Self {
        let regions = span.div_ceil(REGION);
        DirtyLog {
            enabled: AtomicBool::new(false),
            host: (0..regions.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            regions,
        }
    }

    pub fn eptp_bits(&self) -> u64 {
        if self.enabled.load(Ordering::Relaxed) {
            EPTP_AD
        } else {
            0
        }
    }

    pub fn host_wrote(&self, gpa: Gpa, len: u64) {
        if len == 0 {
            return;
        }
        let (first, last) = (gpa.0 / REGION, (gpa.0 + len - 1) / REGION);
        for r in first..=last.min(self.regions.saturating_sub(1)) {
            self.host[(r / 64) as usize].fetch_or(1 << (r % 64), Ordering::Relaxed);
        }
    }
}

/// Regions written: bit n of word n / 64.
pub type Regions = Vec<u64>;

/// Whether region `r` is in `set`.
pub fn contains(set: &Regions, r: u64) -> bool {
    set.get((r / 64) as usize)
        .is_some_and(|w| w & (1 << (r % 64)) != 0)
}

impl GuestMemory {
    /// Turns the EPT's dirty flags on (before any vCPU of the guest is
    /// configured: the EPTP carries the enable bit).
    pub fn enable_dirty_log(&self) {
        self.dirty.enabled.store(true, Ordering::Relaxed);
    }

    pub fn dirty_log_enabled(&self) -> bool {
        self.dirty.enabled.load(Ordering::Relaxed)
    }

    /// The regions written since the last call, which starts a new period
    /// (clears the EPT's dirty flags and the host bitmap); None without
    /// dirty logging. No vCPU of the guest may run meanwhile, and each must
    /// drop its cached EPT translations (INVEPT) before it runs again: a
    /// translation cached with the dirty flag set would not set it again.
    pub fn take_dirty(&self) -> Option<Regions> {
        if !self.dirty_log_enabled() {
            return None;
        }
        let mut out: Regions = self
            .dirty
            .host
            .iter()
            .map(|w| w.swap(0, Ordering::Relaxed))
            .collect();
        self.walk(self.pml4, 4, 0, &mut out);
        Some(out)
    }

    /// Clears the dirty flags of the leaves under the table at `level`
    /// mapping from `base`, marking their regions in `out`.
    fn walk(&self, table: super::Hpa, level: u32, base: u64, out: &mut Regions) {
        if table.0 == 0 {
            return;
        }
        let span = 1u64 << (12 + 9 * (level - 1));
        for i in 0..512u64 {
            let slot = table.as_mut_ptr::<u64>().wrapping_add(i as usize);
            // SAFETY: `table` is one of this guest's EPT pages (identity-
            // mapped), and no vCPU of the guest runs (the caller's promise).
            let e = unsafe { slot.read_volatile() };
            if e & ept::RWX == 0 {
                continue;
            }
            let gpa = base + i * span;
            if level == 1 || e & ept::LARGE != 0 {
                if e & DIRTY != 0 {
                    // SAFETY: as above.
                    unsafe { slot.write_volatile(e & !DIRTY) };
                    let first = gpa / REGION;
                    let last = (gpa + span - 1) / REGION;
                    for r in first..=last {
                        if let Some(w) = out.get_mut((r / 64) as usize) {
                            *w |= 1 << (r % 64);
                        }
                    }
                }
            } else {
                self.walk(ept::entry_addr(e), level - 1, gpa, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_writes_mark_their_regions() {
        let d = DirtyLog::new(5 * REGION);
        d.host_wrote(Gpa(REGION - 1), 2);
        d.host_wrote(Gpa(4 * REGION), 0);
        d.host_wrote(Gpa(4 * REGION + 5), 1);
        let set: Regions = d.host.iter().map(|w| w.load(Ordering::Relaxed)).collect();
        assert_eq!(
            (0..5).map(|r| contains(&set, r)).collect::<Vec<_>>(),
            [true, true, false, false, true]
        );
        assert!(!contains(&set, 1000));
    }
}
