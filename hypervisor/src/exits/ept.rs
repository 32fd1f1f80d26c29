//! EPT violations and misconfigurations (SDM Vol. 3C 29.3.3). A violation is
//! an access to guest-physical memory that isn't the guest's RAM: a device
//! page (local APIC, I/O APIC) is emulated by the MMIO path; anything else is
//! the empty bus of a PC, where reads return all-ones and writes are dropped
//! (the manifest's `unmapped_access = "ignore"`, the default), or the guest
//! is stopped (`"stop"`). Accesses above MAXPHYADDR never get here: the
//! guest's own page walk faults first (reserved bit).
//!
//! Instruction fetch from the empty bus: a PC would execute the all-ones
//! bytes, and 0xFF 0xFF (FF /7) is undefined (SDM Vol. 2 Table A-6), so the
//! guest gets #UD at that RIP, as it would there. An instruction that starts
//! in RAM and runs into an empty page ends the guest with a diagnostic
//! instead (its decode would depend on how many bytes it took from the bus).
use super::outcome::Inject;
use super::vmexit::{EptExit, Exit, Info};
use super::{Guest, Outcome};
use crate::vm::{Vm, VmEnd};
use loader::manifest::UnmappedAccess;

/// Distinct pages logged per guest before further ones are only counted.
pub const LOGGED_PAGES: usize = 8;

/// Unmapped accesses of one guest: counted, and logged once per page for the
/// first [`LOGGED_PAGES`] pages.
#[derive(Debug, Default)]
pub struct UnmappedLog {
    pages: [u64; LOGGED_PAGES],
    logged: usize,
    overflowed: bool,
    /// Accesses ignored so far.
    pub count: u64,
}

/// What to print for one access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// First access to this page: one line.
    Page,
    /// The first page beyond the logged ones: one line saying logging stops.
    Overflow,
    Quiet,
}

impl UnmappedLog {
    pub const fn new() -> Self {
        UnmappedLog {
            pages: [0; LOGGED_PAGES],
            logged: 0,
            overflowed: false,
            count: 0,
        }
    }

    /// Counts an access at `gpa` and says what to log.
    pub fn record(&mut self, gpa: u64) -> Note {
        self.count += 1;
        let page = gpa & !0xFFF;
        if self.pages[..self.logged].contains(&page) {
            return Note::Quiet;
        }
        if self.logged < LOGGED_PAGES {
            self.pages[self.logged] = page;
            self.logged += 1;
            return Note::Page;
        }
        if self.overflowed {
            return Note::Quiet;
        }
        self.overflowed = true;
        Note::Overflow
    }
}

/// Where a guest-physical address lies, for diagnostics.
pub fn region(gpa: u64) -> &'static str {
    if (crate::vm::memory::MMIO_HOLE_START..crate::vm::memory::FOUR_GIB).contains(&gpa) {
        "MMIO hole, no device there"
    } else {
        "beyond guest RAM"
    }
}

/// An access to the empty bus at `gpa`: under "ignore" counted and logged
/// (the caller reads all-ones / drops the write), under "stop" the reason
/// the guest ends.
pub fn unmapped(vm: &Vm, gpa: u64, write: bool, rip: u64) -> Result<(), VmEnd> {
    let what = if write { "write" } else { "read" };
    if vm.config.unmapped_access == UnmappedAccess::Stop {
        return Err(VmEnd::Crashed(alloc::format!(
            "EPT violation: {what} at guest-physical {gpa:#x} ({}), rip {rip:#x}",
            region(gpa)
        )));
    }
    let note = vm.unmapped.lock().record(gpa);
    match note {
        Note::Page => crate::println!(
            "vm {}: unmapped {what} at guest-physical {gpa:#x} (ignored)",
            vm.name
        ),
        Note::Overflow => crate::println!(
            "vm {}: unmapped accesses on more than {LOGGED_PAGES} pages; further pages are counted, not logged",
            vm.name
        ),
        Note::Quiet => {}
    }
    Ok(())
}

/// An EPT violation: a device page or the empty bus.
// Not inlined into the dispatcher: its Outcome is then built in the
// caller's return slot, not copied there.
#[inline(never)]
pub fn violation<G: Guest>(g: &mut G, e: &Exit) -> Outcome {
    let Info::Ept(x) = &e.info else {
        return super::wrong_info(e);
    };
    // The device lookup only where its answer matters: an access to a
    // device finds its device again in `mmio::handle`.
    if x.q.fetch && !g.device_at(x.gpa) {
        return fetch_unmapped(g, e, x);
    }
    if g.unmapped_stop() && !g.device_at(x.gpa) {
        // Stop at the access itself, before anything is emulated.
        return match g.unmapped(x.gpa, x.q.write, e.rip) {
            Err(end) => Outcome::end(end),
            Ok(()) => Outcome::resume(),
        };
    }
    super::mmio::handle(g, e, x)
}

/// Instruction fetch from a guest-physical address with nothing behind it.
fn fetch_unmapped<G: Guest>(g: &mut G, e: &Exit, x: &EptExit) -> Outcome {
    let gpa = x.gpa;
    if let Err(end) = g.unmapped(gpa, false, e.rip) {
        return Outcome::end(end);
    }
    if x.rip_gpa.is_some_and(|pa| pa >> 12 == gpa >> 12) {
        return Outcome::fault(Inject::UD);
    }
    Outcome::end(VmEnd::Crashed(alloc::format!(
        "instruction at rip {:#x} runs into guest-physical {gpa:#x} ({}), which has nothing behind it",
        e.rip,
        region(gpa)
    )))
}

pub fn misconfig(e: &Exit) -> Outcome {
    let gpa = match e.info {
        Info::EptMisconfig { gpa } => gpa,
        _ => return super::wrong_info(e),
    };
    Outcome::end(VmEnd::Crashed(alloc::format!(
        "EPT misconfiguration at guest-physical {gpa:#x}, rip {:#x}",
        e.rip
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_each_page_once_then_stops_logging() {
        let mut l = UnmappedLog::new();
        assert_eq!(l.record(0x1_0000_0000), Note::Page);
        assert_eq!(l.record(0x1_0000_0ff8), Note::Quiet, "same page");
        for i in 1..LOGGED_PAGES as u64 {
            assert_eq!(l.record(0x1_0000_0000 + i * 0x1000), Note::Page);
        }
        assert_eq!(l.record(0x2_0000_0000), Note::Overflow);
        assert_eq!(l.record(0x3_0000_0000), Note::Quiet);
        assert_eq!(l.record(0x1_0000_0000), Note::Quiet);
        assert_eq!(l.count, LOGGED_PAGES as u64 + 4);
    }

    #[test]
    fn regions() {
        assert_eq!(region(0xD000_0000), "MMIO hole, no device there");
        assert_eq!(region(0x1_0000_0000), "beyond guest RAM");
    }
}
