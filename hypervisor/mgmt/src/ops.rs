//! The operations the core implements for the console and the API, with their results and
//! errors as values, and [`execute`] that runs one console [`Command`] against them.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

use crate::command::{help_text, Command, Name};

/// A VM's run state as the management interface shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Running,
    Paused,
    /// Ended (stopped, exited or crashed without restart).
    Stopped,
    /// Being restarted, rolled back or cloned.
    Starting,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
        }
    }
}

/// One row of `list` / `GET /vms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSummary {
    pub name: String,
    pub state: VmState,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// VM exits per second over the last measuring interval.
    pub exits_per_sec: u64,
    /// Share of all physical CPUs' time spent in this VM, in tenths of a percent.
    pub cpu_share_permille: u32,
}

/// Where one vCPU is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuInfo {
    pub index: u32,
    /// The physical CPU (APIC id) it runs on now, or last ran on; `None` before it first ran.
    pub cpu: Option<u32>,
}

/// Exits per second for one exit reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitRate {
    pub reason: String,
    pub per_sec: u64,
}

/// `info VM` / `GET /vms/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmInfo {
    #[serde(flatten)]
    pub summary: VmSummary,
    pub vcpu_list: Vec<VcpuInfo>,
    pub exits: Vec<ExitRate>,
}

/// One snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotInfo {
    pub name: String,
    /// The VM it was taken of.
    pub vm: String,
    pub size_bytes: u64,
    /// Milliseconds since the hypervisor started.
    pub taken_at_ms: u64,
}

/// Why an operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpError {
    NoSuchVm(Name),
    NoSuchSnapshot(Name),
    VmExists(Name),
    SnapshotExists(Name),
    /// The VM is in a state the operation does not apply to.
    WrongState {
        vm: Name,
        state: VmState,
    },
    /// `rollback VM NAME` with a snapshot taken of another VM (`of`); `clone` it instead.
    OtherVmsSnapshot {
        snapshot: Name,
        of: String,
        vm: Name,
    },
    /// Not enough hypervisor memory (bytes needed, bytes free).
    OutOfMemory {
        needed: u64,
        free: u64,
    },
    /// The core does not support this yet (the text says what).
    Unsupported(String),
    /// The request or an uploaded snapshot file is unusable (the text says why).
    Invalid(String),
    /// Can't be done now (a pause that timed out, disk requests in flight).
    Busy(String),
    /// Anything else, with the reason.
    Failed(String),
}

impl OpError {
    /// The HTTP status the API answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            OpError::NoSuchVm(_) | OpError::NoSuchSnapshot(_) => 404,
            OpError::VmExists(_)
            | OpError::SnapshotExists(_)
            | OpError::WrongState { .. }
            | OpError::OtherVmsSnapshot { .. } => 409,
            OpError::OutOfMemory { .. } => 507,
            OpError::Unsupported(_) => 501,
            OpError::Invalid(_) => 400,
            OpError::Busy(_) => 503,
            OpError::Failed(_) => 500,
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::NoSuchVm(n) => write!(f, "no VM `{n}`"),
            OpError::NoSuchSnapshot(n) => write!(f, "no snapshot `{n}`"),
            OpError::VmExists(n) => write!(f, "a VM `{n}` exists already"),
            OpError::SnapshotExists(n) => write!(f, "a snapshot `{n}` exists already"),
            OpError::WrongState { vm, state } => write!(f, "VM `{vm}` is {}", state.as_str()),
            OpError::OtherVmsSnapshot { snapshot, of, vm } => write!(
                f,
                "snapshot `{snapshot}` was taken of vm `{of}`, not `{vm}` (clone it instead)"
            ),
            OpError::OutOfMemory { needed, free } => write!(
                f,
                "not enough hypervisor memory: {} KiB needed, {} KiB free",
                needed.div_ceil(1024),
                free / 1024
            ),
            OpError::Unsupported(what) => write!(f, "not supported: {what}"),
            OpError::Invalid(why) => write!(f, "{why}"),
            OpError::Busy(why) => write!(f, "busy: {why}"),
            OpError::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// A snapshot file being sent (`GET /snapshots/NAME/file`): read piece by piece, so that
/// no more than one piece is ever copied to the heap.
pub trait SnapshotSource: Send {
    /// The file's length in bytes.
    fn size(&self) -> u64;
    /// Copies the bytes at `offset` into `buf`; returns how many (0 only at the end).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> usize;
}

/// A snapshot file being received (`PUT /snapshots/NAME/file?vm=VM`), in order, into storage
/// the core reserved for its announced length.
pub trait SnapshotSink: Send {
    /// The next bytes of the file.
    fn write(&mut self, bytes: &[u8]);
    /// Every announced byte is in: checks the whole file and keeps it as a snapshot (or,
    /// where the [`Ops`] keeps snapshots itself, says what to keep: [`Ops::import_done`]).
    fn finish(self: Box<Self>) -> Result<SnapshotInfo, OpError>;
}

/// The management operations, implemented by the core. Each runs while the guests keep
/// running (a pause waits for the VM's vCPUs to reach an instruction boundary).
pub trait Ops {
    fn list(&self) -> Vec<VmSummary>;
    fn info(&self, vm: &Name) -> Result<VmInfo, OpError>;
    fn pause(&mut self, vm: &Name) -> Result<(), OpError>;
    fn resume(&mut self, vm: &Name) -> Result<(), OpError>;
    fn stop(&mut self, vm: &Name) -> Result<(), OpError>;
    fn restart(&mut self, vm: &Name) -> Result<(), OpError>;
    /// Takes a snapshot; without a name the core picks one.
    fn snapshot(&mut self, vm: &Name, name: Option<&Name>) -> Result<SnapshotInfo, OpError>;
    /// All snapshots, or those of `vm` (then `NoSuchVm` when there is no such VM).
    fn snapshots(&self, vm: Option<&Name>) -> Result<Vec<SnapshotInfo>, OpError>;
    fn rollback(&mut self, vm: &Name, snapshot: &Name) -> Result<(), OpError>;
    /// Starts snapshot `snapshot` as new VM `new_vm`.
    fn clone_vm(&mut self, snapshot: &Name, new_vm: &Name) -> Result<VmSummary, OpError>;
    fn delete(&mut self, snapshot: &Name) -> Result<(), OpError>;
    /// Snapshot `snapshot`'s file (when `vm` is given, it must be a snapshot of that VM).
    fn export(
        &mut self,
        snapshot: &Name,
        vm: Option<&Name>,
    ) -> Result<Box<dyn SnapshotSource>, OpError> {
        let _ = (snapshot, vm);
        Err(OpError::Unsupported(String::from("snapshot export")))
    }
    /// Reserves room for a snapshot file of `len` bytes to be kept as `snapshot` of `vm`
    /// (refused at once: no such VM, the name in use, too large for the free memory).
    fn import(
        &mut self,
        vm: &Name,
        snapshot: &Name,
        len: u64,
    ) -> Result<Box<dyn SnapshotSink>, OpError> {
        let _ = (vm, snapshot, len);
        Err(OpError::Unsupported(String::from("snapshot import")))
    }
    /// The whole file of an [`Ops::import`] arrived.
    fn import_done(&mut self, sink: Box<dyn SnapshotSink>) -> Result<SnapshotInfo, OpError> {
        sink.finish()
    }
}

/// What a command produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Vms(Vec<VmSummary>),
    Vm(VmInfo),
    Snapshot(SnapshotInfo),
    Snapshots(Vec<SnapshotInfo>),
    /// A VM started by `clone`.
    Cloned(VmSummary),
    /// An action without a result: `what` is done (e.g. "vm a: paused").
    Done(String),
    Help(String),
}

/// Runs `cmd` against `ops`.
pub fn execute(ops: &mut dyn Ops, cmd: &Command) -> Result<Outcome, OpError> {
    use alloc::format;
    Ok(match cmd {
        Command::List => Outcome::Vms(ops.list()),
        Command::Info(vm) => Outcome::Vm(ops.info(vm)?),
        Command::Pause(vm) => {
            ops.pause(vm)?;
            Outcome::Done(format!("vm {vm}: paused"))
        }
        Command::Resume(vm) => {
            ops.resume(vm)?;
            Outcome::Done(format!("vm {vm}: resumed"))
        }
        Command::Stop(vm) => {
            ops.stop(vm)?;
            Outcome::Done(format!("vm {vm}: stopped"))
        }
        Command::Restart(vm) => {
            ops.restart(vm)?;
            Outcome::Done(format!("vm {vm}: restarted"))
        }
        Command::Snapshot { vm, name } => Outcome::Snapshot(ops.snapshot(vm, name.as_ref())?),
        Command::Snapshots(vm) => Outcome::Snapshots(ops.snapshots(vm.as_ref())?),
        Command::Rollback { vm, snapshot } => {
            ops.rollback(vm, snapshot)?;
            Outcome::Done(format!("vm {vm}: rolled back to {snapshot}"))
        }
        Command::Clone { snapshot, new_vm } => Outcome::Cloned(ops.clone_vm(snapshot, new_vm)?),
        Command::Delete(snapshot) => {
            ops.delete(snapshot)?;
            Outcome::Done(format!("snapshot {snapshot}: deleted"))
        }
        Command::Help(cmd) => Outcome::Help(help_text(*cmd)),
    })
}
