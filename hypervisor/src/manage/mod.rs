//! The management console and API wired into the core (issue 13 items 4
//! and 5): [`CoreOps`] implements hv-mgmt's `Ops` over the scheduler's VMs,
//! [`console`] runs the Ctrl-A : prompt on the serial console, [`api`] serves
//! the HTTP API on the network endpoint. Everything here runs on CPU 0 from
//! its scheduler loop, between time slices: never inside a guest's exit, and
//! no lock is held across another VM's run.
pub mod api;
pub mod console;

use crate::sched;
use crate::vm::snapshot;
use crate::vm::{Vm, VmEnd, OP_RESTART, OP_STOP};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use mgmt::command::Name;
use mgmt::ops::{
    ExitRate, OpError, Ops, SnapshotInfo, SnapshotSink, SnapshotSource, VcpuInfo, VmInfo, VmState,
    VmSummary,
};

/// The core's management operations (stateless: the state is the VMs').
pub struct CoreOps;

fn find(vm: &Name) -> Result<Arc<Vm>, OpError> {
    sched::vms()
        .into_iter()
        .find(|v| v.name == vm.as_str())
        .ok_or_else(|| OpError::NoSuchVm(vm.clone()))
}

/// A VM's state as the console shows it.
pub fn state(vm: &Vm) -> VmState {
    if vm.ended() {
        if vm.operator.load(Ordering::Acquire) == OP_RESTART
            || (sched::alive_vcpus(vm.id) > 0 && vm.wants_restart())
        {
            VmState::Starting
        } else {
            VmState::Stopped
        }
    } else if paused(vm) {
        VmState::Paused
    } else {
        VmState::Running
    }
}

fn paused(vm: &Vm) -> bool {
    pausing::is_paused(vm)
}

/// The VM pause primitive (the snapshot engine's, `crate::vm::pause`).
mod pausing {
    use crate::vm::Vm;
    use alloc::string::String;
    use core::sync::atomic::Ordering;

    pub fn is_paused(vm: &Vm) -> bool {
        vm.paused.load(Ordering::Acquire)
    }

    pub fn pause(vm: &Vm) -> Result<(), String> {
        crate::vm::pause::pause(vm).map_err(|e| alloc::format!("{e}"))
    }

    pub fn resume(vm: &Vm) {
        crate::vm::pause::resume(vm)
    }
}

fn summary(vm: &Vm) -> VmSummary {
    let rates = vm.stats.last_rates(tsc_hz(), cpus());
    VmSummary {
        name: vm.name.clone(),
        state: state(vm),
        vcpus: vm.config.vcpus,
        memory_mib: vm.config.memory >> 20,
        exits_per_sec: rates.as_ref().map_or(0, |r| r.total_per_sec),
        cpu_share_permille: rates.as_ref().map_or(0, |r| r.cpu_share_permille),
    }
}

fn tsc_hz() -> u64 {
    crate::time::tsc_khz().saturating_mul(1000).max(1)
}

fn cpus() -> u64 {
    crate::percpu::online().max(1) as u64
}

fn wrong_state(vm: &Name, v: &Vm) -> OpError {
    OpError::WrongState {
        vm: vm.clone(),
        state: state(v),
    }
}

/// The APIC id of physical CPU `index`.
fn apic_id(index: usize) -> u32 {
    crate::percpu::get(index).map_or(index as u32, |c| c.apic_id)
}

impl Ops for CoreOps {
    fn list(&self) -> Vec<VmSummary> {
        sched::vms().iter().map(|v| summary(v)).collect()
    }

    fn info(&self, name: &Name) -> Result<VmInfo, OpError> {
        let vm = find(name)?;
        let vcpu_list = (0..vm.config.vcpus as usize)
            .map(|i| {
                // Where it runs now, else where it ran last.
                let on = vm.mailbox[i].running_on.load(Ordering::Acquire);
                let last = vm.stats.last_cpu[i].load(Ordering::Relaxed) as usize;
                let cpu = if on != 0 {
                    Some(on - 1)
                } else {
                    last.checked_sub(1)
                };
                VcpuInfo {
                    index: i as u32,
                    cpu: cpu.map(apic_id),
                }
            })
            .collect();
        let mut exits = Vec::new();
        if let Some(r) = vm.stats.last_rates(tsc_hz(), cpus()) {
            let mut by: Vec<(usize, u64)> = r
                .per_sec
                .iter()
                .copied()
                .enumerate()
                .filter(|&(_, n)| n > 0)
                .collect();
            by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            exits = by
                .into_iter()
                .map(|(slot, per_sec)| ExitRate {
                    reason: crate::vm::stats::reason_name(slot),
                    per_sec,
                })
                .collect();
        }
        Ok(VmInfo {
            summary: summary(&vm),
            vcpu_list,
            exits,
        })
    }

    fn pause(&mut self, name: &Name) -> Result<(), OpError> {
        let vm = find(name)?;
        if state(&vm) != VmState::Running {
            return Err(wrong_state(name, &vm));
        }
        pausing::pause(&vm).map_err(OpError::Failed)?;
        crate::println!("hv: vm {}: paused by the operator", vm.name);
        Ok(())
    }

    fn resume(&mut self, name: &Name) -> Result<(), OpError> {
        let vm = find(name)?;
        if state(&vm) != VmState::Paused {
            return Err(wrong_state(name, &vm));
        }
        pausing::resume(&vm);
        crate::println!("hv: vm {}: resumed by the operator", vm.name);
        Ok(())
    }

    fn stop(&mut self, name: &Name) -> Result<(), OpError> {
        let vm = find(name)?;
        if vm.ended() {
            return Err(wrong_state(name, &vm));
        }
        vm.operator.store(OP_STOP, Ordering::Release);
        if !vm.end(VmEnd::Stopped(String::from("stopped by the operator"))) {
            return Err(wrong_state(name, &vm));
        }
        crate::println!("hv: vm {}: stopped by the operator", vm.name);
        leave_pause(&vm);
        kick_all(&vm);
        Ok(())
    }

    fn restart(&mut self, name: &Name) -> Result<(), OpError> {
        let vm = find(name)?;
        if vm.ended() {
            if sched::alive_vcpus(vm.id) > 0 {
                // Its vCPUs are still leaving (or it restarts by itself).
                return Err(wrong_state(name, &vm));
            }
            vm.operator.store(OP_RESTART, Ordering::Release);
            crate::println!("hv: vm {}: restarted by the operator", vm.name);
            return sched::revive(&vm).map_err(|e| {
                vm.operator.store(0, Ordering::Release);
                OpError::Failed(e)
            });
        }
        vm.operator.store(OP_RESTART, Ordering::Release);
        if !vm.end(VmEnd::Stopped(String::from(
            "restart requested by the operator",
        ))) {
            vm.operator.store(0, Ordering::Release);
            return Err(wrong_state(name, &vm));
        }
        crate::println!("hv: vm {}: restarted by the operator", vm.name);
        leave_pause(&vm);
        kick_all(&vm);
        Ok(())
    }

    fn snapshot(&mut self, vm: &Name, name: Option<&Name>) -> Result<SnapshotInfo, OpError> {
        let info = snapshot::take(vm.as_str(), name.map(Name::as_str)).map_err(op_error)?;
        Ok(snap_info(info))
    }

    fn snapshots(&self, vm: Option<&Name>) -> Result<Vec<SnapshotInfo>, OpError> {
        if let Some(vm) = vm {
            find(vm)?;
        }
        Ok(snapshot::list(vm.map(Name::as_str))
            .into_iter()
            .map(snap_info)
            .collect())
    }

    fn rollback(&mut self, vm: &Name, snap: &Name) -> Result<(), OpError> {
        snapshot::rollback(vm.as_str(), snap.as_str()).map_err(op_error)
    }

    fn clone_vm(&mut self, snap: &Name, new_vm: &Name) -> Result<VmSummary, OpError> {
        let name = snapshot::clone_vm(snap.as_str(), new_vm.as_str()).map_err(op_error)?;
        let vm = sched::vms()
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| OpError::Failed(format!("the clone `{name}` did not start")))?;
        Ok(summary(&vm))
    }

    fn delete(&mut self, snap: &Name) -> Result<(), OpError> {
        snapshot::delete(snap.as_str()).map_err(op_error)
    }

    fn export(
        &mut self,
        snap: &Name,
        vm: Option<&Name>,
    ) -> Result<Box<dyn SnapshotSource>, OpError> {
        let f = snapshot::export(snap.as_str(), vm.map(Name::as_str)).map_err(op_error)?;
        Ok(Box::new(Source(f)))
    }

    fn import(
        &mut self,
        vm: &Name,
        snap: &Name,
        len: u64,
    ) -> Result<Box<dyn SnapshotSink>, OpError> {
        let f = snapshot::import(vm.as_str(), snap.as_str(), len).map_err(op_error)?;
        Ok(Box::new(Sink(f)))
    }
}

struct Source(snapshot::FileOut);

impl SnapshotSource for Source {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> usize {
        self.0.read_at(offset, buf)
    }
}

struct Sink(snapshot::FileIn);

impl SnapshotSink for Sink {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }
    fn finish(self: Box<Self>) -> Result<SnapshotInfo, OpError> {
        self.0.finish().map(snap_info).map_err(op_error)
    }
}

fn snap_info(s: snapshot::SnapshotInfo) -> SnapshotInfo {
    SnapshotInfo {
        name: s.name,
        vm: s.vm,
        size_bytes: s.size_bytes,
        taken_at_ms: s.taken_at_ms,
    }
}

/// The snapshot engine's errors as the console's and API's.
pub fn op_error(e: snapshot::SnapError) -> OpError {
    use snapshot::SnapError as S;
    let name = |n: &str| Name::parse(n).map_err(|_| OpError::Failed(format!("{e}")));
    let r = match &e {
        S::NoSuchVm(n) => name(n).map(OpError::NoSuchVm),
        S::NoSuchSnapshot(n) => name(n).map(OpError::NoSuchSnapshot),
        S::SnapshotExists(n) => name(n).map(OpError::SnapshotExists),
        S::VmExists(n) => name(n).map(OpError::VmExists),
        S::VmEnded(n) => name(n).map(|vm| OpError::WrongState {
            vm,
            state: VmState::Stopped,
        }),
        S::OtherVm { snapshot, of, vm } => match (name(snapshot), name(vm)) {
            (Ok(snapshot), Ok(vm)) => Ok(OpError::OtherVmsSnapshot {
                snapshot,
                of: of.clone(),
                vm,
            }),
            _ => Ok(OpError::Failed(format!("{e}"))),
        },
        S::OutOfMemory { needed, free } => Ok(OpError::OutOfMemory {
            needed: *needed,
            free: *free,
        }),
        S::NoSlot | S::PauseTimeout(_) | S::Unsupported(_) => Ok(OpError::Busy(format!("{e}"))),
        S::Incompatible(_) => Ok(OpError::Invalid(format!("{e}"))),
        S::Failed(_) => Ok(OpError::Failed(format!("{e}"))),
    };
    r.unwrap_or_else(|e| e)
}

/// A paused VM that is stopped or restarted must still be let go by the
/// pause so that its vCPUs can leave.
fn leave_pause(vm: &Vm) {
    if paused(vm) {
        pausing::resume(vm);
    }
}

/// Makes every vCPU of `vm` notice that it has ended: running ones exit,
/// sleeping ones are woken to leave.
fn kick_all(vm: &Vm) {
    for i in 0..vm.mailbox.len() {
        vm.kick(i);
    }
    sched::notify();
}

/// When the per-VM rates were last sampled (TSC).
static LAST_SAMPLE: AtomicU64 = AtomicU64::new(0);

/// How often the rates are sampled: per-second rates over the last quarter
/// of a second (recent enough to show a pause at once).
const SAMPLES_PER_SEC: u64 = 4;

/// CPU 0's management tick, from its scheduler loop: samples every VM's
/// counters every quarter second (the console's and API's rates are over the
/// last such interval), then serves console input.
pub fn tick(now: u64) {
    let last = LAST_SAMPLE.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= tsc_hz() / SAMPLES_PER_SEC {
        LAST_SAMPLE.store(now, Ordering::Relaxed);
        for vm in sched::vms() {
            vm.stats.push_sample(vm.stats.sample(now));
        }
    }
    console::poll();
}
