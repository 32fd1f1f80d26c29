//! Pausing a VM: every vCPU out of guest mode at an instruction boundary and
//! kept off the CPUs until resumed. A paused VM's timers don't fire into it
//! (its vCPUs, which poll them, don't run); its guest TSC runs on, as a
//! stopped-clock pause would need a TSC-offset change on every vCPU.
use super::Vm;
use crate::sched::{self, PauseError};
use alloc::sync::Arc;

/// How long a pause waits for the vCPUs to stop: a slice on each CPU is
/// far less (10 ms by default).
const TIMEOUT_US: u64 = 2_000_000;

/// The VM named `name`, if the scheduler knows it.
pub fn find(name: &str) -> Option<Arc<Vm>> {
    sched::vms().into_iter().find(|v| v.name == name)
}

/// Pauses `vm`; returns once every vCPU has left guest mode and is parked.
pub fn pause(vm: &Vm) -> Result<(), PauseError> {
    sched::pause_vm(vm, crate::time::us_to_tsc(TIMEOUT_US))
}

/// Lets a paused `vm` run again (nothing if it is not paused).
pub fn resume(vm: &Vm) {
    sched::resume_vm(vm)
}

impl core::fmt::Display for PauseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PauseError::Ended => write!(f, "the VM has ended"),
            PauseError::Timeout => write!(
                f,
                "its vCPUs did not all stop within {} s (it runs on)",
                TIMEOUT_US / 1_000_000
            ),
            PauseError::AlreadyPaused => write!(f, "the VM is paused already"),
        }
    }
}
