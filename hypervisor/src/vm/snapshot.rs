//! In-memory snapshots of running VMs: take, list, roll back, clone, delete.
//!
//! A snapshot is taken with every vCPU of the VM paused at an instruction
//! boundary ([`super::pause`]); it holds every vCPU's architectural state,
//! every device model and the guest's non-zero RAM pages, serialized into one
//! versioned byte string (format: `docs/snapshots.md`), kept in hypervisor
//! memory and accounted against it. The management console and API call
//! these functions (VMs and snapshots by name).
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// What `snapshots` lists about one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    /// The VM it was taken of.
    pub vm: String,
    /// Bytes of hypervisor memory it holds.
    pub size_bytes: u64,
    /// Milliseconds since the hypervisor started.
    pub taken_at_ms: u64,
}

/// Why a snapshot operation failed; `Display` gives the operator's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapError {
    /// Not implemented yet (API skeleton only).
    NotYet,
    NoSuchVm(String),
    NoSuchSnapshot(String),
    SnapshotExists(String),
    VmExists(String),
    /// The VM has ended (or is restarting): nothing to snapshot or roll back.
    VmEnded(String),
    /// `rollback VM NAME` with a snapshot of another VM.
    OtherVm {
        snapshot: String,
        of: String,
        vm: String,
    },
    /// Not enough hypervisor memory (bytes needed, bytes free).
    OutOfMemory {
        needed: u64,
        free: u64,
    },
    /// No free VM slot for a clone.
    NoSlot,
    /// The VM's vCPUs did not all stop in time.
    PauseTimeout(String),
    /// The snapshot can't be used here (format, checksum, CPU or build mismatch).
    Incompatible(String),
    /// Anything else, with the reason.
    Failed(String),
}

impl fmt::Display for SnapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapError::NotYet => write!(f, "snapshots are not implemented yet"),
            SnapError::NoSuchVm(n) => write!(f, "no VM `{n}`"),
            SnapError::NoSuchSnapshot(n) => write!(f, "no snapshot `{n}`"),
            SnapError::SnapshotExists(n) => write!(f, "a snapshot `{n}` exists already"),
            SnapError::VmExists(n) => write!(f, "a VM `{n}` exists already"),
            SnapError::VmEnded(n) => write!(f, "VM `{n}` has ended"),
            SnapError::OtherVm { snapshot, of, vm } => write!(
                f,
                "snapshot `{snapshot}` was taken of vm `{of}`, not `{vm}` (clone it instead)"
            ),
            SnapError::OutOfMemory { needed, free } => write!(
                f,
                "not enough hypervisor memory for the snapshot: {} KiB needed, {} KiB free",
                needed.div_ceil(1024),
                free / 1024
            ),
            SnapError::NoSlot => write!(f, "no free VM slot for the clone"),
            SnapError::PauseTimeout(n) => {
                write!(
                    f,
                    "VM `{n}`: its vCPUs did not stop in time (nothing changed)"
                )
            }
            SnapError::Incompatible(why) => write!(f, "snapshot refused: {why}"),
            SnapError::Failed(why) => write!(f, "{why}"),
        }
    }
}

/// Takes a snapshot of running VM `vm` named `name` (without one:
/// `VM-N`). The VM is paused for the copy and resumes afterwards.
pub fn take(vm: &str, name: Option<&str>) -> Result<SnapshotInfo, SnapError> {
    let _ = (vm, name);
    Err(SnapError::NotYet)
}

/// All snapshots, or those of `vm`, oldest first.
pub fn list(vm: Option<&str>) -> Vec<SnapshotInfo> {
    let _ = vm;
    Vec::new()
}

/// Restores snapshot `name` (taken of `vm`) into the running VM `vm`: it
/// continues at the saved instruction.
pub fn rollback(vm: &str, name: &str) -> Result<(), SnapError> {
    let _ = (vm, name);
    Err(SnapError::NotYet)
}

/// Starts snapshot `snapshot` as a new VM named `new_name`; returns its name.
pub fn clone_vm(snapshot: &str, new_name: &str) -> Result<String, SnapError> {
    let _ = (snapshot, new_name);
    Err(SnapError::NotYet)
}

/// Deletes snapshot `name`, giving its memory back.
pub fn delete(name: &str) -> Result<(), SnapError> {
    let _ = name;
    Err(SnapError::NotYet)
}
