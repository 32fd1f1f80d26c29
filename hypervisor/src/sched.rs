//! Scheduling: a run queue of vCPUs shared by all physical CPUs, time slices
//! bounded by the VMX-preemption timer, idle CPUs halted until a wake-up IPI.
//!
//! Lock order: SCHED, then a VM's `shared` lock; FRAMES is a leaf.
use crate::vm::vcpu::{SliceEnd, Vcpu};
use crate::vm::{Vm, VmEnd};
use crate::{lapic, percpu, println};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use spin::Mutex;

struct Sched {
    runq: VecDeque<Box<Vcpu>>,
    sleeping: Vec<Box<Vcpu>>,
    vms: Vec<Arc<Vm>>,
    /// vCPUs still alive per VM id.
    alive: Vec<(usize, usize)>,
}

static SCHED: Mutex<Sched> = Mutex::new(Sched {
    runq: VecDeque::new(),
    sleeping: Vec::new(),
    vms: Vec::new(),
    alive: Vec::new(),
});
static LIVE_VMS: AtomicUsize = AtomicUsize::new(0);
static SLICE_TSC: AtomicU64 = AtomicU64::new(10_000_000);
static IDLE: AtomicU64 = AtomicU64::new(0);
static POWEROFF_WHEN_DONE: AtomicBool = AtomicBool::new(true);
static FINISHED: AtomicBool = AtomicBool::new(false);

pub fn configure(slice_tsc: u64, poweroff_when_done: bool) {
    SLICE_TSC.store(slice_tsc.max(1000), Ordering::Relaxed);
    POWEROFF_WHEN_DONE.store(poweroff_when_done, Ordering::Relaxed);
}

/// Adds a VM and queues its vCPUs.
pub fn add_vm(vm: Arc<Vm>, vcpus: Vec<Box<Vcpu>>) {
    LIVE_VMS.fetch_add(1, Ordering::AcqRel);
    {
        let mut s = SCHED.lock();
        s.alive.push((vm.id, vcpus.len()));
        s.vms.push(vm);
        s.runq.extend(vcpus);
    }
    kick_idle();
}

/// Called once all VMs are queued: if there are none, finish right away.
pub fn start() {
    if LIVE_VMS.load(Ordering::Acquire) == 0 {
        finish();
    }
}

fn kick_idle() {
    let idle = IDLE.load(Ordering::Acquire);
    if idle == 0 {
        return;
    }
    let me = percpu::current_index();
    for i in 0..64 {
        if idle & (1 << i) != 0 && i != me {
            if let Some(c) = percpu::get(i) {
                lapic::send_ipi(c.apic_id, u32::from(lapic::WAKE_VECTOR));
                return;
            }
        }
    }
}

/// The loop every physical CPU runs once the guests are set up.
pub fn cpu_loop() -> ! {
    let me = percpu::current_index();
    loop {
        let next = SCHED.lock().runq.pop_front();
        match next {
            Some(mut v) => {
                let end = v.run_slice(SLICE_TSC.load(Ordering::Relaxed));
                after_slice(v, end);
            }
            None => idle(me),
        }
    }
}

fn idle(me: usize) {
    IDLE.fetch_or(1 << me, Ordering::AcqRel);
    if SCHED.lock().runq.is_empty() {
        // SAFETY: STI's one-instruction shadow makes HLT start before any
        // pending interrupt is taken, so a wake-up IPI can't be lost.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    IDLE.fetch_and(!(1 << me), Ordering::AcqRel);
}

fn after_slice(v: Box<Vcpu>, end: SliceEnd) {
    match end {
        SliceEnd::Preempted | SliceEnd::Yielded => {
            SCHED.lock().runq.push_back(v);
            kick_idle();
        }
        SliceEnd::Halted => SCHED.lock().sleeping.push(v),
        SliceEnd::VmEnded => vcpu_done(v),
    }
}

/// A vCPU left because its VM ended. The last one out restarts the VM or
/// reports it finished.
fn vcpu_done(v: Box<Vcpu>) {
    let vm = v.vm.clone();
    if !vm.ended() {
        // The machine is stopping; nothing to report.
        return;
    }
    let last = {
        let mut s = SCHED.lock();
        let mut dropped = 1;
        s.sleeping.retain(|o| {
            let same = Arc::ptr_eq(&o.vm, &vm);
            dropped += usize::from(same);
            !same
        });
        let entry = s.alive.iter_mut().find(|(id, _)| *id == vm.id);
        match entry {
            Some((_, n)) => {
                *n = n.saturating_sub(dropped);
                *n == 0
            }
            None => true,
        }
    };
    drop(v);
    if !last {
        return;
    }
    if vm.wants_restart() {
        match vm.restart() {
            Ok(()) => {
                let vcpus: Vec<Box<Vcpu>> = (0..vm.config.vcpus as usize)
                    .map(|i| Box::new(Vcpu::new(vm.clone(), i)))
                    .collect();
                let mut s = SCHED.lock();
                if let Some((_, n)) = s.alive.iter_mut().find(|(id, _)| *id == vm.id) {
                    *n = vcpus.len();
                }
                s.runq.extend(vcpus);
                drop(s);
                println!("vm {}: started (restart)", vm.name);
                kick_idle();
                return;
            }
            Err(e) => {
                vm.end(VmEnd::Stopped(alloc::format!("restart failed: {e}")));
            }
        }
    }
    drop(vm);
    if LIVE_VMS.fetch_sub(1, Ordering::AcqRel) == 1 {
        finish();
    }
}

/// Every VM has ended: print the summary and, in test runs, power off.
fn finish() {
    if FINISHED.swap(true, Ordering::AcqRel) {
        return;
    }
    let vms: Vec<Arc<Vm>> = SCHED.lock().vms.clone();
    let mut line = String::new();
    let _ = write!(
        line,
        "hv: summary: {} guest{}",
        vms.len(),
        if vms.len() == 1 { "" } else { "s" }
    );
    for (i, vm) in vms.iter().enumerate() {
        let what = match vm.outcome() {
            Some(VmEnd::Exited(c)) => alloc::format!("exited code={c}"),
            Some(VmEnd::PoweredOff) => "exited code=0 (powered off)".into(),
            Some(VmEnd::Reset) => "stopped (reset requested, restart budget used up)".into(),
            Some(VmEnd::Crashed(r)) | Some(VmEnd::Stopped(r)) => alloc::format!("stopped ({r})"),
            None => "running".into(),
        };
        let restarts = vm.restarts.load(Ordering::Acquire);
        let _ = write!(
            line,
            "{} {} {}",
            if i == 0 { ":" } else { "," },
            vm.name,
            what
        );
        if restarts > 0 {
            let _ = write!(
                line,
                " after {restarts} restart{}",
                if restarts == 1 { "" } else { "s" }
            );
        }
    }
    println!("{line}");
    // Free the VMs' memory (it is scrubbed on the way back to the allocator).
    SCHED.lock().vms.clear();
    drop(vms);
    println!(
        "hv: {} MiB free after all guests ended",
        crate::mm::free_bytes() >> 20
    );
    if POWEROFF_WHEN_DONE.load(Ordering::Relaxed) {
        crate::fatal_stop_quiet();
    }
}
