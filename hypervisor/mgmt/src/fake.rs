//! An in-memory [`Ops`] that keeps VMs and snapshots in lists: a test double for the console
//! and the API (host tests, `cargo xtask ctl`'s tests), and a model of the semantics the core
//! must give each operation.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::command::Name;
use crate::ops::{
    ExitRate, OpError, Ops, SnapshotInfo, SnapshotSink, SnapshotSource, VcpuInfo, VmInfo, VmState,
    VmSummary,
};

/// See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct FakeOps {
    pub vms: Vec<VmSummary>,
    pub snapshots: Vec<SnapshotInfo>,
    /// Bytes of snapshot memory left (a snapshot takes 1 KiB per MiB of guest memory).
    pub free_bytes: u64,
    clock_ms: u64,
}

impl FakeOps {
    /// VMs `(name, vcpus, memory_mib)`, all running.
    pub fn new(vms: &[(&str, u32, u64)]) -> Self {
        FakeOps {
            vms: vms
                .iter()
                .map(|&(name, vcpus, memory_mib)| VmSummary {
                    name: String::from(name),
                    state: VmState::Running,
                    vcpus,
                    memory_mib,
                    exits_per_sec: 1200,
                    cpu_share_permille: 125,
                })
                .collect(),
            snapshots: Vec::new(),
            free_bytes: 1 << 20,
            clock_ms: 1000,
        }
    }

    fn vm_mut(&mut self, vm: &Name) -> Result<&mut VmSummary, OpError> {
        self.vms
            .iter_mut()
            .find(|v| v.name == vm.as_str())
            .ok_or_else(|| OpError::NoSuchVm(vm.clone()))
    }

    fn snap(&self, name: &Name) -> Result<&SnapshotInfo, OpError> {
        self.snapshots
            .iter()
            .find(|s| s.name == name.as_str())
            .ok_or_else(|| OpError::NoSuchSnapshot(name.clone()))
    }

    fn set_state(&mut self, vm: &Name, from: &[VmState], to: VmState) -> Result<(), OpError> {
        let v = self.vm_mut(vm)?;
        if !from.contains(&v.state) {
            return Err(OpError::WrongState {
                vm: vm.clone(),
                state: v.state,
            });
        }
        v.state = to;
        Ok(())
    }
}

/// The fake's snapshot file: `FAKESNAP`, the VM's name, a NUL, then byte `i` = `i mod 251`
/// up to `size_bytes`.
pub fn fake_file(vm: &str, len: u64) -> Vec<u8> {
    let mut v = Vec::from(&b"FAKESNAP"[..]);
    v.extend_from_slice(vm.as_bytes());
    v.push(0);
    let start = v.len() as u64;
    v.extend((start..len.max(start)).map(|i| (i % 251) as u8));
    v
}

struct FakeSource {
    bytes: Vec<u8>,
}

impl SnapshotSource for FakeSource {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> usize {
        let rest = usize::try_from(offset)
            .ok()
            .and_then(|o| self.bytes.get(o..))
            .unwrap_or_default();
        let n = rest.len().min(buf.len());
        if let (Some(d), Some(s)) = (buf.get_mut(..n), rest.get(..n)) {
            d.copy_from_slice(s);
        }
        n
    }
}

struct FakeSink {
    vm: String,
    name: String,
    memory_mib: u64,
    bytes: Vec<u8>,
}

impl SnapshotSink for FakeSink {
    fn write(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }
    fn finish(self: Box<Self>) -> Result<SnapshotInfo, OpError> {
        let len = self.bytes.len() as u64;
        if !self.bytes.starts_with(b"FAKESNAP") {
            return Err(OpError::Invalid(String::from(
                "snapshot refused: not a ferrovisor snapshot (bad magic)",
            )));
        }
        let want = self.memory_mib.saturating_mul(1024);
        if len != want {
            return Err(OpError::Invalid(format!(
                "snapshot refused: {len} bytes, a snapshot of vm `{}` has {want}",
                self.vm
            )));
        }
        let body_ok = self
            .bytes
            .iter()
            .enumerate()
            .skip_while(|&(_, &b)| b != 0)
            .skip(1)
            .all(|(i, &b)| b == (i % 251) as u8);
        if !body_ok {
            return Err(OpError::Invalid(String::from(
                "snapshot refused: section ram #0: checksum mismatch",
            )));
        }
        Ok(SnapshotInfo {
            name: self.name,
            vm: self.vm,
            size_bytes: len,
            taken_at_ms: 0,
        })
    }
}

impl Ops for FakeOps {
    fn list(&self) -> Vec<VmSummary> {
        self.vms.clone()
    }

    fn info(&self, vm: &Name) -> Result<VmInfo, OpError> {
        let v = self
            .vms
            .iter()
            .find(|v| v.name == vm.as_str())
            .ok_or_else(|| OpError::NoSuchVm(vm.clone()))?;
        let running = v.state == VmState::Running;
        Ok(VmInfo {
            summary: v.clone(),
            vcpu_list: (0..v.vcpus)
                .map(|index| VcpuInfo {
                    index,
                    cpu: running.then_some(index),
                })
                .collect(),
            exits: Vec::from([
                ExitRate {
                    reason: String::from("io"),
                    per_sec: 1000,
                },
                ExitRate {
                    reason: String::from("ept-violation"),
                    per_sec: 200,
                },
            ]),
        })
    }

    fn pause(&mut self, vm: &Name) -> Result<(), OpError> {
        self.set_state(vm, &[VmState::Running], VmState::Paused)
    }

    fn resume(&mut self, vm: &Name) -> Result<(), OpError> {
        self.set_state(vm, &[VmState::Paused], VmState::Running)
    }

    fn stop(&mut self, vm: &Name) -> Result<(), OpError> {
        self.set_state(vm, &[VmState::Running, VmState::Paused], VmState::Stopped)
    }

    fn restart(&mut self, vm: &Name) -> Result<(), OpError> {
        let v = self.vm_mut(vm)?;
        v.state = VmState::Running;
        Ok(())
    }

    fn snapshot(&mut self, vm: &Name, name: Option<&Name>) -> Result<SnapshotInfo, OpError> {
        let v = self.vm_mut(vm)?;
        if v.state == VmState::Stopped {
            return Err(OpError::WrongState {
                vm: vm.clone(),
                state: v.state,
            });
        }
        let size = v.memory_mib.saturating_mul(1024);
        let name = match name {
            Some(n) => String::from(n.as_str()),
            None => format!("{}-{}", vm, self.snapshots.len().saturating_add(1)),
        };
        if self.snapshots.iter().any(|s| s.name == name) {
            return Err(OpError::SnapshotExists(
                Name::parse(&name).map_err(|e| OpError::Failed(format!("{e}")))?,
            ));
        }
        if size > self.free_bytes {
            return Err(OpError::OutOfMemory {
                needed: size,
                free: self.free_bytes,
            });
        }
        self.free_bytes = self.free_bytes.saturating_sub(size);
        self.clock_ms = self.clock_ms.saturating_add(250);
        let s = SnapshotInfo {
            name,
            vm: String::from(vm.as_str()),
            size_bytes: size,
            taken_at_ms: self.clock_ms,
        };
        self.snapshots.push(s.clone());
        Ok(s)
    }

    fn snapshots(&self, vm: Option<&Name>) -> Result<Vec<SnapshotInfo>, OpError> {
        if let Some(vm) = vm {
            if !self.vms.iter().any(|v| v.name == vm.as_str()) {
                return Err(OpError::NoSuchVm(vm.clone()));
            }
        }
        Ok(self
            .snapshots
            .iter()
            .filter(|s| vm.is_none_or(|vm| s.vm == vm.as_str()))
            .cloned()
            .collect())
    }

    fn rollback(&mut self, vm: &Name, snapshot: &Name) -> Result<(), OpError> {
        let of = self.snap(snapshot)?.vm.clone();
        let v = self.vm_mut(vm)?;
        if of != v.name {
            return Err(OpError::OtherVmsSnapshot {
                snapshot: snapshot.clone(),
                of,
                vm: vm.clone(),
            });
        }
        v.state = VmState::Running;
        Ok(())
    }

    fn clone_vm(&mut self, snapshot: &Name, new_vm: &Name) -> Result<VmSummary, OpError> {
        let of = self.snap(snapshot)?.vm.clone();
        if self.vms.iter().any(|v| v.name == new_vm.as_str()) {
            return Err(OpError::VmExists(new_vm.clone()));
        }
        let mut v = self
            .vms
            .iter()
            .find(|v| v.name == of)
            .cloned()
            .ok_or_else(|| OpError::Failed(format!("vm `{of}` is gone")))?;
        v.name = String::from(new_vm.as_str());
        v.state = VmState::Running;
        self.vms.push(v.clone());
        Ok(v)
    }

    fn delete(&mut self, snapshot: &Name) -> Result<(), OpError> {
        let size = self.snap(snapshot)?.size_bytes;
        self.snapshots.retain(|s| s.name != snapshot.as_str());
        self.free_bytes = self.free_bytes.saturating_add(size);
        Ok(())
    }

    fn export(
        &mut self,
        snapshot: &Name,
        vm: Option<&Name>,
    ) -> Result<Box<dyn SnapshotSource>, OpError> {
        let s = self.snap(snapshot)?;
        if let Some(vm) = vm {
            if s.vm != vm.as_str() {
                return Err(OpError::OtherVmsSnapshot {
                    snapshot: snapshot.clone(),
                    of: s.vm.clone(),
                    vm: vm.clone(),
                });
            }
        }
        Ok(Box::new(FakeSource {
            bytes: fake_file(&s.vm, s.size_bytes),
        }))
    }

    fn import(
        &mut self,
        vm: &Name,
        snapshot: &Name,
        len: u64,
    ) -> Result<Box<dyn SnapshotSink>, OpError> {
        let memory_mib = self.vm_mut(vm)?.memory_mib;
        if self.snapshots.iter().any(|s| s.name == snapshot.as_str()) {
            return Err(OpError::SnapshotExists(snapshot.clone()));
        }
        if len > self.free_bytes {
            return Err(OpError::OutOfMemory {
                needed: len,
                free: self.free_bytes,
            });
        }
        Ok(Box::new(FakeSink {
            vm: String::from(vm.as_str()),
            name: String::from(snapshot.as_str()),
            memory_mib,
            bytes: Vec::new(),
        }))
    }

    fn import_done(&mut self, sink: Box<dyn SnapshotSink>) -> Result<SnapshotInfo, OpError> {
        let mut info = sink.finish()?;
        if self.snapshots.iter().any(|s| s.name == info.name) {
            return Err(OpError::Failed(format!(
                "a snapshot `{}` was taken meanwhile",
                info.name
            )));
        }
        if info.size_bytes > self.free_bytes {
            return Err(OpError::OutOfMemory {
                needed: info.size_bytes,
                free: self.free_bytes,
            });
        }
        self.free_bytes = self.free_bytes.saturating_sub(info.size_bytes);
        self.clock_ms = self.clock_ms.saturating_add(250);
        info.taken_at_ms = self.clock_ms;
        self.snapshots.push(info.clone());
        Ok(info)
    }
}
