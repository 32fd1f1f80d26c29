//! Scheduling: per-CPU run queues ordered by weighted run time, time slices
//! bounded by the VMX-preemption timer, push migration for balance, halted
//! vCPUs parked until an interrupt or timer is due, idle CPUs halted.
//!
//! A vCPU in a CPU's queue keeps its VMCS active on that CPU; only that CPU
//! VMCLEARs it, before it moves elsewhere (SDM Vol. 3C 25.11.1).
//!
//! Lock order: a CPU queue, then SLEEPING, then PAUSED, then GLOBAL, then a
//! VM's `shared` lock; FRAMES is a leaf. At most one CPU queue is held at a time.
use crate::vm::vcpu::{SliceEnd, Vcpu};
use crate::vm::{Vm, VmEnd};
use crate::{hostapic, percpu, println};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use arch::regs::rdtsc;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use spin::Mutex;

const MAX: usize = percpu::MAX_CPUS;

struct Global {
    vms: Vec<Arc<Vm>>,
    /// vCPUs still alive per VM id.
    alive: Vec<(usize, usize)>,
    /// VMs whose last vCPU has left for good (no restart): the operator may revive them.
    done: Vec<usize>,
    /// The last VM has ended: nothing may be revived any more.
    all_done: bool,
}

// vCPUs are boxed so that moving one between queues moves a pointer.
#[allow(clippy::vec_box)]
static QUEUES: [Mutex<Vec<Box<Vcpu>>>; MAX] = [const { Mutex::new(Vec::new()) }; MAX];
/// Runnable vCPUs per CPU, the running one included (read without the lock).
static LOAD: [AtomicUsize; MAX] = [const { AtomicUsize::new(0) }; MAX];
/// Lowest vruntime among the vCPUs a CPU holds, published for balancing.
static MIN_VRT: [AtomicU64; MAX] = [const { AtomicU64::new(u64::MAX) }; MAX];
#[allow(clippy::vec_box)]
static SLEEPING: Mutex<Vec<Box<Vcpu>>> = Mutex::new(Vec::new());
/// vCPUs of paused VMs (VMCLEARed, so any CPU may load them), each with
/// whether it goes back to sleep (halted, waiting for SIPI) on resume.
#[allow(clippy::vec_box)]
static PAUSED: Mutex<Vec<(Box<Vcpu>, bool)>> = Mutex::new(Vec::new());
/// VMs with a pause requested: while 0 the scheduler looks no further.
static PAUSING: AtomicUsize = AtomicUsize::new(0);
static GLOBAL: Mutex<Global> = Mutex::new(Global {
    vms: Vec::new(),
    alive: Vec::new(),
    done: Vec::new(),
    all_done: false,
});
static LIVE_VMS: AtomicUsize = AtomicUsize::new(0);
static SLICE_TSC: AtomicU64 = AtomicU64::new(10_000_000);
static IDLE: AtomicU64 = AtomicU64::new(0);
static POWEROFF_WHEN_DONE: AtomicBool = AtomicBool::new(true);
static FINISHED: AtomicBool = AtomicBool::new(false);
static NEXT_CPU: AtomicUsize = AtomicUsize::new(0);

pub fn configure(slice_tsc: u64, poweroff_when_done: bool) {
    SLICE_TSC.store(slice_tsc.max(1000), Ordering::Relaxed);
    POWEROFF_WHEN_DONE.store(poweroff_when_done, Ordering::Relaxed);
}

fn cpus() -> usize {
    percpu::online().max(1)
}

/// Counts a vCPU in (or out of) its VM's runnable vCPUs, over which the VM's
/// weight is split.
fn set_runnable(v: &mut Vcpu, on: bool) {
    if v.counted_runnable != on {
        v.counted_runnable = on;
        if on {
            v.vm.runnable.fetch_add(1, Ordering::AcqRel);
        } else {
            v.vm.runnable.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Weighted run time charged for `used` TSC ticks of one vCPU whose VM has
/// weight `vm_weight` and `runnable` runnable vCPUs: each of them runs with
/// weight `vm_weight / runnable`, so a VM gets its share however many vCPUs
/// it has (as Xen's credit scheduler and ESXi's shares split a VM's weight).
pub fn charge(used: u64, vm_weight: u64, runnable: usize) -> u64 {
    let n = runnable.max(1) as u128;
    let w = vm_weight.max(1) as u128;
    (u128::from(used) * 100 * n / w).min(u128::from(u64::MAX)) as u64
}

/// Index of the lowest key (the scheduler's choice: least weighted run time;
/// ties go to the first).
pub fn lowest_key(keys: impl Iterator<Item = u64>) -> Option<usize> {
    keys.enumerate().min_by_key(|&(_, k)| k).map(|(i, _)| i)
}

/// Parks a vCPU that can't run (halted, waiting for SIPI).
fn sleep(mut v: Box<Vcpu>) {
    set_runnable(&mut v, false);
    SLEEPING.lock().push(v);
}

/// Queues a released vCPU on `cpu` and wakes that CPU if it idles.
fn enqueue(cpu: usize, mut v: Box<Vcpu>) {
    set_runnable(&mut v, true);
    let vrt = v.vruntime;
    QUEUES[cpu].lock().push(v);
    LOAD[cpu].fetch_add(1, Ordering::AcqRel);
    MIN_VRT[cpu].fetch_min(vrt, Ordering::AcqRel);
    kick(cpu);
}

fn kick(cpu: usize) {
    if cpu != percpu::current_index() && IDLE.load(Ordering::Acquire) & (1 << cpu) != 0 {
        if let Some(c) = percpu::get(cpu) {
            hostapic::send_ipi(c.apic_id, u32::from(hostapic::WAKE_VECTOR));
        }
    }
}

/// The least loaded CPU (ties: round robin).
fn least_loaded() -> usize {
    let n = cpus();
    let start = NEXT_CPU.fetch_add(1, Ordering::Relaxed);
    (0..n)
        .map(|i| (start + i) % n)
        .min_by_key(|&c| LOAD[c].load(Ordering::Acquire))
        .unwrap_or(0)
}

/// Adds a VM and spreads its vCPUs over the CPUs.
pub fn add_vm(vm: Arc<Vm>, vcpus: Vec<Box<Vcpu>>) {
    LIVE_VMS.fetch_add(1, Ordering::AcqRel);
    {
        let mut g = GLOBAL.lock();
        g.alive.push((vm.id, vcpus.len()));
        g.vms.push(vm);
    }
    place(vcpus);
}

/// A VM's fresh vCPUs: the BSP is queued, APs wait for their SIPI asleep.
#[allow(clippy::vec_box)] // boxed vCPUs move between queues as pointers
fn place(vcpus: Vec<Box<Vcpu>>) {
    for mut v in vcpus {
        if v.wait_sipi || v.start_halted {
            // Restored from a snapshot in HLT: asleep until an interrupt.
            v.start_halted = false;
            sleep(v);
        } else {
            enqueue(least_loaded(), v);
        }
    }
}

/// Takes a released vCPU of a VM being paused out of scheduling.
/// A pause undone meanwhile (the flag is checked under the PAUSED lock,
/// which `resume_vm` takes after clearing it) leaves it scheduled.
fn park(mut v: Box<Vcpu>, asleep: bool) {
    set_runnable(&mut v, false);
    {
        let mut p = PAUSED.lock();
        if v.vm.pause_requested() {
            p.push((v, asleep));
            return;
        }
    }
    if asleep {
        sleep(v);
    } else {
        enqueue(least_loaded(), v);
    }
}

/// Parks the queued vCPUs of VMs being paused that CPU `me` holds (their
/// VMCS is active here, so only this CPU may VMCLEAR them).
fn park_paused_in(me: usize) {
    if PAUSING.load(Ordering::Acquire) == 0 {
        return;
    }
    let mut out = Vec::new();
    {
        let mut q = QUEUES[me].lock();
        let mut i = 0;
        while i < q.len() {
            if q[i].vm.pause_requested() && !q[i].vm.ended() {
                out.push(q.swap_remove(i));
            } else {
                i += 1;
            }
        }
        if !out.is_empty() {
            MIN_VRT[me].store(queue_min(&q), Ordering::Release);
        }
    }
    for mut v in out {
        v.release();
        LOAD[me].fetch_sub(1, Ordering::AcqRel);
        park(v, false);
    }
}

/// Sleeping vCPUs of `vm` (already released) go to the paused list.
fn park_sleepers_of(vm: &Vm) {
    let out: Vec<Box<Vcpu>> = {
        let mut s = SLEEPING.lock();
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            if core::ptr::eq(&*s[i].vm, vm) {
                out.push(s.swap_remove(i));
            } else {
                i += 1;
            }
        }
        out
    };
    for v in out {
        park(v, true);
    }
}

/// How many of `vm`'s vCPUs are parked, and how many it has alive.
fn paused_count(vm: &Vm) -> (usize, usize) {
    let parked = PAUSED
        .lock()
        .iter()
        .filter(|(v, _)| core::ptr::eq(&*v.vm, vm))
        .count();
    let alive = GLOBAL
        .lock()
        .alive
        .iter()
        .find(|(id, _)| *id == vm.id)
        .map_or(0, |&(_, n)| n);
    (parked, alive)
}

/// Why a pause did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PauseError {
    /// The VM has ended (or ended while its vCPUs were being stopped).
    Ended,
    /// Its vCPUs did not all leave guest mode within the time limit; the
    /// VM runs on as before.
    Timeout,
    /// Paused already (by another command).
    AlreadyPaused,
}

/// Stops every vCPU of `vm` at an instruction boundary (a VM exit) and keeps
/// the scheduler from running them until [`resume_vm`]. A vCPU running on
/// another CPU is kicked out of guest mode; queued and sleeping ones are
/// taken out of their queues. Returns once all are parked (their VMCSs
/// VMCLEARed), or undoes the pause after `timeout_tsc` ticks.
pub fn pause_vm(vm: &Vm, timeout_tsc: u64) -> Result<(), PauseError> {
    if vm.ended() {
        return Err(PauseError::Ended);
    }
    if vm.pause_flag.swap(true, Ordering::AcqRel) {
        return Err(PauseError::AlreadyPaused);
    }
    PAUSING.fetch_add(1, Ordering::AcqRel);
    let me = percpu::current_index();
    let start = rdtsc();
    loop {
        park_paused_in(me);
        park_sleepers_of(vm);
        let (parked, alive) = paused_count(vm);
        if vm.ended() {
            resume_vm(vm);
            return Err(PauseError::Ended);
        }
        if parked >= alive {
            vm.paused.store(true, Ordering::Release);
            return Ok(());
        }
        if rdtsc().wrapping_sub(start) > timeout_tsc {
            resume_vm(vm);
            return Err(PauseError::Timeout);
        }
        // Running vCPUs exit at the IPI; idle CPUs look at their queues.
        for i in 0..vm.mailbox.len() {
            if vm.mailbox[i].running_on.load(Ordering::Acquire) != 0 {
                vm.kick(i);
            }
        }
        notify();
        core::hint::spin_loop();
    }
}

/// Lets a paused VM run again: its vCPUs go back to the run queues (or to
/// sleep, if they were halted). Also ends a pause that is under way.
pub fn resume_vm(vm: &Vm) {
    if !vm.pause_flag.swap(false, Ordering::AcqRel) {
        return;
    }
    vm.paused.store(false, Ordering::Release);
    PAUSING.fetch_sub(1, Ordering::AcqRel);
    let mine = take_paused(vm);
    for (v, asleep) in mine {
        if asleep && !vm.ended() {
            sleep(v);
        } else {
            enqueue(least_loaded(), v);
        }
    }
}

/// The parked vCPUs of paused `vm`, sorted by index, for a snapshot or a
/// rollback to work on; [`put_paused`] gives them back.
#[allow(clippy::vec_box)]
pub fn take_paused(vm: &Vm) -> Vec<(Box<Vcpu>, bool)> {
    let mut mine = Vec::new();
    let mut p = PAUSED.lock();
    let mut i = 0;
    while i < p.len() {
        if core::ptr::eq(&*p[i].0.vm, vm) {
            mine.push(p.swap_remove(i));
        } else {
            i += 1;
        }
    }
    drop(p);
    mine.sort_by_key(|(v, _)| v.index);
    mine
}

/// Returns vCPUs taken with [`take_paused`] to the paused list.
#[allow(clippy::vec_box)]
pub fn put_paused(vcpus: Vec<(Box<Vcpu>, bool)>) {
    PAUSED.lock().extend(vcpus);
}

/// Every VM, in manifest order (those that ended too).
pub fn vms() -> Vec<Arc<Vm>> {
    GLOBAL.lock().vms.clone()
}

/// The vCPUs of VM `id` still in the scheduler (0: it has ended for good).
pub fn alive_vcpus(id: usize) -> usize {
    let g = GLOBAL.lock();
    g.alive
        .iter()
        .find(|(i, _)| *i == id)
        .map_or(0, |&(_, n)| n)
}

/// Starts a VM that ended for good again from its manifest entry (the
/// operator's `restart` of a stopped VM). Refused while it still has vCPUs
/// in the scheduler, and once every VM has ended (the machine is stopping).
pub fn revive(vm: &Arc<Vm>) -> Result<(), String> {
    {
        let mut g = GLOBAL.lock();
        if g.all_done {
            return Err("every VM has ended; the hypervisor is stopping".into());
        }
        let Some(at) = g.done.iter().position(|&id| id == vm.id) else {
            return Err("it is still stopping".into());
        };
        g.done.swap_remove(at);
        LIVE_VMS.fetch_add(1, Ordering::AcqRel);
        if let Some((_, n)) = g.alive.iter_mut().find(|(id, _)| *id == vm.id) {
            *n = vm.config.vcpus as usize;
        }
    }
    if let Err(e) = vm.restart() {
        return Err(give_up(vm, alloc::format!("restart failed: {e}")));
    }
    let vcpus = crate::vm::snapshot::fresh_vcpus(vm).map_err(|e| {
        give_up(
            vm,
            alloc::format!("restart from its snapshot file failed: {e}"),
        )
    })?;
    crate::console::println_after(
        vm.console,
        format_args!("vm {}: started (restart)", vm.name),
    );
    place(vcpus);
    Ok(())
}

/// Ends a VM whose revival failed (`why`), returning it to the ended set, and stops the
/// machine if it was the last one; gives `why` back for the caller's error.
fn give_up(vm: &Arc<Vm>, why: String) -> String {
    vm.end(VmEnd::Stopped(why.clone()));
    let last = {
        let mut g = GLOBAL.lock();
        if let Some((_, n)) = g.alive.iter_mut().find(|(id, _)| *id == vm.id) {
            *n = 0;
        }
        g.done.push(vm.id);
        let last = LIVE_VMS.fetch_sub(1, Ordering::AcqRel) == 1;
        g.all_done |= last;
        last
    };
    if last {
        finish();
    }
    why
}

/// Called once all VMs are queued: if there are none, finish right away.
pub fn start() {
    if LIVE_VMS.load(Ordering::Acquire) == 0 {
        finish();
    }
}

/// Index of the queued vCPU with the lowest weighted run time.
fn lowest(q: &[Box<Vcpu>]) -> Option<usize> {
    lowest_key(q.iter().map(|v| v.vruntime))
}

/// The scheduler's pick from (weighted run time, timer due) pairs: a vCPU
/// whose timer is due goes first, so that its interrupt is injected on time,
/// unless it is more than a slice ahead of the lowest (a vCPU whose timer is
/// always due can't take more than its share that way); otherwise the lowest.
pub fn choose(keys: &[(u64, bool)], slice: u64) -> Option<usize> {
    let min = keys.iter().map(|k| k.0).min()?;
    let limit = min.saturating_add(slice);
    keys.iter()
        .enumerate()
        .filter(|(_, &(vrt, due))| due && vrt <= limit)
        .min_by_key(|(_, k)| k.0)
        .map(|(i, _)| i)
        .or_else(|| lowest_key(keys.iter().map(|k| k.0)))
}

/// How long the next slice may run: at most `slice`, and no longer than
/// until `next_wake` (the earliest timer of a vCPU waiting on this CPU or
/// asleep), so that one is taken up at its deadline rather than a whole slice
/// later; but never less than `slice / 16`, lest the CPU spin on slivers.
pub fn slice_until(now: u64, slice: u64, next_wake: Option<u64>) -> u64 {
    match next_wake {
        Some(t) => t
            .saturating_sub(now)
            .clamp((slice / 16).max(1), slice.max(1)),
        None => slice,
    }
}

/// A woken vCPU's weighted run time: no more than a slice behind the CPU's
/// lowest (a long sleeper can't monopolise the CPU), and, when it isn't more
/// than a slice ahead, the lowest itself, so that it runs next (its timer or
/// interrupt is what woke it).
pub fn wake_vruntime(own: u64, floor: u64, slice: u64) -> u64 {
    if floor == u64::MAX {
        return own;
    }
    if own <= floor.saturating_add(slice) {
        own.max(floor.saturating_sub(slice)).min(floor)
    } else {
        own
    }
}

/// The lowest weighted run time in a queue (u64::MAX when it is empty).
fn queue_min(q: &[Box<Vcpu>]) -> u64 {
    q.iter().map(|v| v.vruntime).min().unwrap_or(u64::MAX)
}

/// Most vCPUs one CPU's queue is searched for due timers (more are picked
/// by weighted run time alone).
const PICK_SCAN: usize = 32;

/// Takes the next vCPU from this CPU's queue (see [`choose`]) and the
/// earliest timer deadline still ahead of those left waiting there.
fn pick(me: usize, now: u64) -> Option<(Box<Vcpu>, Option<u64>)> {
    let mut q = QUEUES[me].lock();
    let i = if q.len() <= PICK_SCAN {
        let mut keys = [(0u64, false); PICK_SCAN];
        for (k, v) in keys.iter_mut().zip(q.iter()) {
            *k = (v.vruntime, v.timer_due(now));
        }
        choose(&keys[..q.len()], SLICE_TSC.load(Ordering::Relaxed))?
    } else {
        lowest(&q)?
    };
    let v = q.swap_remove(i);
    // Timers already due don't end the slice early again: those vCPUs were
    // just passed over for being ahead (`choose`), and will be again.
    let next = q
        .iter()
        .map(|w| w.cached_next_timer())
        .filter(|&t| t > now)
        .min();
    // The picked vCPU still belongs to this CPU while it runs.
    MIN_VRT[me].store(queue_min(&q).min(v.vruntime), Ordering::Release);
    Some((v, next))
}

/// How often an idle CPU 0 wakes up to look for console input.
fn console_poll_tsc() -> u64 {
    crate::time::us_to_tsc(20_000)
}

/// The loop every physical CPU runs once the guests are set up.
pub fn cpu_loop() -> ! {
    let me = percpu::current_index();
    // Guests may run from now on: their exits must not wait for the serial port.
    crate::console::go_async();
    loop {
        if me == 0 {
            // Console input, the management prompt and the rates it shows.
            crate::manage::tick(rdtsc());
            crate::nic::poll(rdtsc());
        }
        crate::console::pump(rdtsc());
        wake_sleepers(me);
        park_paused_in(me);
        let now = rdtsc();
        match pick(me, now) {
            Some((mut v, queued)) => {
                v.moved = false;
                let wake = match (queued, next_wake()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let slice = slice_until(now, SLICE_TSC.load(Ordering::Relaxed), wake);
                let t0 = rdtsc();
                let end = v.run_slice(slice);
                let used = rdtsc().saturating_sub(t0);
                v.vm.stats.run_tsc.fetch_add(used, Ordering::Relaxed);
                let runnable = v.vm.runnable.load(Ordering::Acquire);
                v.vruntime = v
                    .vruntime
                    .saturating_add(charge(used, v.weight(), runnable));
                after_slice(me, v, end);
                balance(me);
            }
            None => idle(me),
        }
    }
}

fn after_slice(me: usize, mut v: Box<Vcpu>, end: SliceEnd) {
    if end != SliceEnd::VmEnded && v.vm.pause_requested() && !v.vm.ended() {
        v.release();
        LOAD[me].fetch_sub(1, Ordering::AcqRel);
        park(v, end == SliceEnd::Halted);
        return;
    }
    match end {
        SliceEnd::Preempted | SliceEnd::Yielded => {
            let vrt = v.vruntime;
            QUEUES[me].lock().push(v);
            MIN_VRT[me].fetch_min(vrt, Ordering::AcqRel);
        }
        SliceEnd::Halted => {
            v.release();
            LOAD[me].fetch_sub(1, Ordering::AcqRel);
            sleep(v);
        }
        SliceEnd::VmEnded => {
            v.release();
            LOAD[me].fetch_sub(1, Ordering::AcqRel);
            set_runnable(&mut v, false);
            vcpu_done(v);
        }
    }
}

/// Push migration: when this CPU holds more runnable vCPUs than another and a
/// waiting one lags behind that CPU's, move it there (VMCLEAR here first).
/// This evens out both load and weighted run time across CPUs.
fn balance(me: usize) {
    let n = cpus();
    let my_load = LOAD[me].load(Ordering::Acquire);
    if my_load < 2 {
        return;
    }
    let slice = SLICE_TSC.load(Ordering::Relaxed);
    for d in (0..n).filter(|&d| d != me) {
        let their_load = LOAD[d].load(Ordering::Acquire);
        let their_min = MIN_VRT[d].load(Ordering::Acquire);
        let idle = IDLE.load(Ordering::Acquire) & (1 << d) != 0 || their_load == 0;
        if their_load + 1 > my_load && !idle {
            continue;
        }
        let mut q = QUEUES[me].lock();
        if q.is_empty() {
            return;
        }
        let cands = q.iter().map(|v| Candidate {
            vruntime: v.vruntime,
            moved: v.moved,
            weight: effective_weight(v.weight(), v.vm.runnable.load(Ordering::Acquire)),
        });
        let Some(i) = choose_push(my_load, their_load, idle, their_min, slice, cands) else {
            continue;
        };
        let mut v = q.swap_remove(i);
        v.moved = true;
        MIN_VRT[me].store(queue_min(&q), Ordering::Release);
        drop(q);
        LOAD[me].fetch_sub(1, Ordering::AcqRel);
        v.release();
        enqueue(d, v);
        return;
    }
}

/// A queued vCPU as the balancer sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub vruntime: u64,
    /// It was pushed here and has not run since.
    pub moved: bool,
    /// Its share of its VM's weight ([`effective_weight`]).
    pub weight: u64,
}

/// A vCPU's share of its VM's weight, ×1000 for precision.
pub fn effective_weight(vm_weight: u64, runnable: usize) -> u64 {
    vm_weight.max(1) * 1000 / runnable.max(1) as u64
}

/// Which queued vCPU (if any) a CPU with `my_load` runnable vCPUs pushes to
/// one with `their_load` (idle: `their_idle`) whose lowest weighted run time
/// is `their_min`. To an idle CPU, or to even out a load difference of two or
/// more: the one with the lowest weighted run time. Otherwise only vCPUs that
/// lag far behind what runs there, and of those the lightest (the smallest
/// share of its VM's weight): that evens out the weight the CPUs carry, not
/// just their vCPU counts — two half-weight vCPUs of one VM end up sharing a
/// CPU while a full-weight vCPU has the other, rather than one of them
/// pairing with it. A vCPU pushed for lagging is not pushed again before it
/// has run (it would be the lowest on both CPUs, and bounce unpicked).
pub fn choose_push(
    my_load: usize,
    their_load: usize,
    their_idle: bool,
    their_min: u64,
    slice: u64,
    cands: impl Iterator<Item = Candidate>,
) -> Option<usize> {
    if my_load < 2 {
        return None;
    }
    if their_idle || their_load + 1 < my_load {
        return cands
            .enumerate()
            .min_by_key(|(_, c)| c.vruntime)
            .map(|(i, _)| i);
    }
    if their_load >= my_load {
        return None;
    }
    cands
        .enumerate()
        .filter(|(_, c)| !c.moved && c.vruntime.saturating_add(2 * slice) < their_min)
        .min_by_key(|(_, c)| (c.weight, c.vruntime))
        .map(|(i, _)| i)
}

/// Moves halted vCPUs whose wake condition holds onto this CPU's queue.
fn wake_sleepers(me: usize) {
    let now = rdtsc();
    let woken: Vec<Box<Vcpu>> = {
        let mut s = SLEEPING.lock();
        if s.is_empty() {
            return;
        }
        let mut w = Vec::new();
        let mut i = 0;
        while i < s.len() {
            if s[i].vm.ended() || s[i].wants_to_run(now) {
                w.push(s.swap_remove(i));
            } else {
                i += 1;
            }
        }
        w
    };
    let floor = MIN_VRT[me].load(Ordering::Acquire);
    for mut v in woken {
        if v.vm.ended() {
            set_runnable(&mut v, false);
            vcpu_done(v);
            continue;
        }
        // A long sleeper doesn't get to monopolise the CPU afterwards, but
        // what woke it is taken up next.
        v.vruntime = wake_vruntime(v.vruntime, floor, SLICE_TSC.load(Ordering::Relaxed));
        LOAD[me].fetch_add(1, Ordering::AcqRel);
        set_runnable(&mut v, true);
        let vrt = v.vruntime;
        QUEUES[me].lock().push(v);
        MIN_VRT[me].fetch_min(vrt, Ordering::AcqRel);
    }
}

/// The earliest TSC at which a sleeping vCPU wants to run again.
fn next_wake() -> Option<u64> {
    SLEEPING
        .lock()
        .iter()
        .filter_map(|v| v.next_event_tsc())
        .min()
}

/// Wakes CPU 0 if it idles, to poll the NIC (an NBD request to send).
pub fn wake_poller() {
    kick(0);
}

/// A sleeping vCPU may have become runnable: wake idle CPUs to check.
pub fn notify() {
    for c in 0..cpus() {
        kick(c);
    }
}

fn idle(me: usize) {
    IDLE.fetch_or(1 << me, Ordering::AcqRel);
    if QUEUES[me].lock().is_empty() {
        let mut deadline = next_wake();
        if me == 0 {
            // NBD requests in flight or a network bridged to the NIC
            // (whose frames raise no interrupt): the NIC is polled every
            // millisecond.
            let every = if crate::nbd::busy() || crate::nic::bridged() {
                crate::time::us_to_tsc(1000)
            } else {
                console_poll_tsc()
            };
            let poll = rdtsc() + every;
            deadline = Some(deadline.map_or(poll, |d| d.min(poll)));
        }
        if let Some(t) = crate::console::next_pump_tsc() {
            // Queued console output: back when the serial port takes more.
            deadline = Some(deadline.map_or(t, |d| d.min(t)));
        }
        if crate::hosttimer::arm(deadline) {
            // SAFETY: STI's one-instruction shadow makes HLT start before any
            // pending interrupt is taken, so a wake-up IPI can't be lost.
            unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
            crate::hosttimer::arm(None);
        } else if let Some(d) = deadline {
            // No TSC-deadline timer: wait actively, but only until the deadline.
            while rdtsc() < d && QUEUES[me].lock().is_empty() {
                core::hint::spin_loop();
            }
        }
    }
    IDLE.fetch_and(!(1 << me), Ordering::AcqRel);
}

/// A vCPU left because its VM ended. The last one out restarts the VM or
/// reports it finished.
fn vcpu_done(v: Box<Vcpu>) {
    let vm = v.vm.clone();
    drop(v);
    if !vm.ended() {
        // The machine is stopping; nothing to report.
        return;
    }
    // Sleeping vCPUs of this VM leave too.
    let mut dropped = 1;
    {
        let mut s = SLEEPING.lock();
        let mut i = 0;
        while i < s.len() {
            if Arc::ptr_eq(&s[i].vm, &vm) {
                let o = s.swap_remove(i);
                drop(o);
                dropped += 1;
            } else {
                i += 1;
            }
        }
    }
    let last = {
        let mut g = GLOBAL.lock();
        match g.alive.iter_mut().find(|(id, _)| *id == vm.id) {
            Some((_, n)) => {
                *n = n.saturating_sub(dropped);
                *n == 0
            }
            None => true,
        }
    };
    if !last {
        return;
    }
    if vm.wants_rollback() {
        match crate::vm::snapshot::rollback_after_crash(&vm) {
            Some(Ok(vcpus)) => {
                if let Some((_, n)) = GLOBAL.lock().alive.iter_mut().find(|(id, _)| *id == vm.id) {
                    *n = vcpus.len();
                }
                place(vcpus);
                return;
            }
            Some(Err(e)) => crate::console::println_after(
                vm.console,
                format_args!("vm {}: rollback failed ({e}): cold restart", vm.name),
            ),
            None => crate::console::println_after(
                vm.console,
                format_args!("vm {}: no snapshot to roll back to: cold restart", vm.name),
            ),
        }
    }
    if vm.wants_restart() {
        match vm
            .restart()
            .map_err(|e| alloc::format!("restart failed: {e}"))
            .and_then(|()| {
                crate::vm::snapshot::fresh_vcpus(&vm)
                    .map_err(|e| alloc::format!("restart from its snapshot file failed: {e}"))
            }) {
            Ok(vcpus) => {
                if let Some((_, n)) = GLOBAL.lock().alive.iter_mut().find(|(id, _)| *id == vm.id) {
                    *n = vcpus.len();
                }
                crate::console::println_after(
                    vm.console,
                    format_args!("vm {}: started (restart)", vm.name),
                );
                place(vcpus);
                return;
            }
            Err(why) => {
                vm.end(VmEnd::Stopped(why));
            }
        }
    }
    let last = {
        let mut g = GLOBAL.lock();
        g.done.push(vm.id);
        let last = LIVE_VMS.fetch_sub(1, Ordering::AcqRel) == 1;
        g.all_done |= last;
        last
    };
    drop(vm);
    if last {
        finish();
    }
}

/// Every VM has ended: print the summary and, in test runs, power off.
fn finish() {
    if FINISHED.swap(true, Ordering::AcqRel) {
        return;
    }
    // Every guest has ended: their last lines go out before the summary.
    crate::console::flush_sync();
    let vms: Vec<Arc<Vm>> = GLOBAL.lock().vms.clone();
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
    for vm in &vms {
        println!(
            "vm {}: longest exit {} TSC ticks (reason {})",
            vm.name,
            vm.longest_exit.load(Ordering::Acquire),
            vm.longest_exit_reason.load(Ordering::Acquire)
        );
        if vm.timer_lateness.total() > 0 {
            println!("vm {}: timer lateness: {}", vm.name, vm.timer_lateness);
        }
    }
    crate::nic::report();
    // Free the VMs' memory (it is scrubbed on the way back to the allocator).
    GLOBAL.lock().vms.clear();
    drop(vms);
    println!(
        "hv: {} MiB free after all guests ended",
        crate::mm::free_bytes() >> 20
    );
    if POWEROFF_WHEN_DONE.load(Ordering::Relaxed) {
        crate::fatal_stop_quiet();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One CPU's choice over time for vCPUs given as (VM weight, VM), with
    /// `slice` ticks per pick; returns the ticks each VM got.
    fn simulate(vcpus: &[(u64, usize)], rounds: usize) -> Vec<u64> {
        let nvm = vcpus.iter().map(|v| v.1).max().unwrap() + 1;
        let runnable: Vec<usize> = (0..nvm)
            .map(|vm| vcpus.iter().filter(|v| v.1 == vm).count())
            .collect();
        let mut vrt = vec![0u64; vcpus.len()];
        let mut got = vec![0u64; nvm];
        let slice = 1_000_000;
        for _ in 0..rounds {
            let i = lowest_key(vrt.iter().copied()).unwrap();
            let (w, vm) = vcpus[i];
            got[vm] += slice;
            vrt[i] += charge(slice, w, runnable[vm]);
        }
        got
    }

    #[test]
    fn weight_is_per_vm_split_over_its_runnable_vcpus() {
        // A 1-vCPU and a 4-vCPU VM of equal weight: half the CPU each (per
        // vCPU weight would have given the 4-vCPU VM four fifths).
        let got = simulate(&[(100, 0), (100, 1), (100, 1), (100, 1), (100, 1)], 1000);
        assert_eq!(got[0], got[1]);
        // Weights 200 and 100 with 2 and 1 vCPUs: still 2:1 between the VMs.
        let got = simulate(&[(200, 0), (200, 0), (100, 1)], 900);
        assert_eq!(got[0], 2 * got[1]);
    }

    fn cand(vruntime: u64, moved: bool, weight: u64) -> Candidate {
        Candidate {
            vruntime,
            moved,
            weight,
        }
    }

    #[test]
    fn a_lagging_vcpu_is_pushed_once_then_runs() {
        let slice = 1000;
        let push = |my, their, idle, min, c: &[Candidate]| {
            choose_push(my, their, idle, min, slice, c.iter().copied())
        };
        // Lagging far behind the other CPU's vCPUs: pushed there.
        let lagging = cand(0, false, 100_000);
        let other = cand(50 * slice, false, 100_000);
        assert_eq!(push(2, 1, false, 10 * slice, &[other, lagging]), Some(1));
        // Arrived there and the same holds the other way round: not pushed
        // back before it ran (it used to bounce and never run).
        let arrived = cand(0, true, 100_000);
        assert_eq!(push(2, 1, false, 10 * slice, &[other, arrived]), None);
        // Load differences and idle CPUs still move the lowest.
        assert_eq!(push(3, 1, false, 0, &[other, arrived]), Some(1));
        assert_eq!(push(2, 1, true, 0, &[arrived, other]), Some(0));
        assert_eq!(push(1, 0, true, 0, &[lagging]), None);
        assert_eq!(push(2, 1, false, slice, &[lagging, other]), None);
        assert_eq!(push(2, 2, false, u64::MAX, &[lagging, other]), None);
        // Of two lagging vCPUs, the lighter goes.
        let half = cand(10, false, 50_000);
        assert_eq!(push(2, 1, false, 10 * slice, &[lagging, half]), Some(1));
    }

    /// Two CPUs running vCPUs given as (VM weight, VM) for `rounds` slices
    /// each, with the scheduler's pick, charge and push rules; returns the
    /// ticks each VM got. All start on CPU 0 (as if created while CPU 1 was
    /// busy elsewhere).
    fn simulate_two_cpus(vcpus: &[(u64, usize)], rounds: usize) -> Vec<u64> {
        let nvm = vcpus.iter().map(|v| v.1).max().unwrap() + 1;
        let runnable: Vec<usize> = (0..nvm)
            .map(|vm| vcpus.iter().filter(|v| v.1 == vm).count())
            .collect();
        let slice = 1000;
        let mut vrt = vec![0u64; vcpus.len()];
        let mut moved = vec![false; vcpus.len()];
        let mut q: [Vec<usize>; 2] = [(0..vcpus.len()).collect(), Vec::new()];
        let mut got = vec![0u64; nvm];
        for _ in 0..rounds {
            for me in 0..2 {
                let Some(k) = lowest_key(q[me].iter().map(|&i| vrt[i])) else {
                    continue;
                };
                let i = q[me][k];
                moved[i] = false;
                let (w, vm) = vcpus[i];
                got[vm] += slice;
                vrt[i] += charge(slice, w, runnable[vm]);
                let other = 1 - me;
                let their_min = q[other].iter().map(|&j| vrt[j]).min().unwrap_or(u64::MAX);
                let cands = q[me].iter().map(|&j| Candidate {
                    vruntime: vrt[j],
                    moved: moved[j],
                    weight: effective_weight(vcpus[j].0, runnable[vcpus[j].1]),
                });
                let (my_load, their_load) = (q[me].len(), q[other].len());
                if let Some(k) = choose_push(
                    my_load,
                    their_load,
                    their_load == 0,
                    their_min,
                    slice,
                    cands,
                ) {
                    let j = q[me].swap_remove(k);
                    moved[j] = true;
                    q[other].push(j);
                }
            }
        }
        got
    }

    fn shares(got: &[u64]) -> Vec<f64> {
        let total: u64 = got.iter().sum();
        got.iter().map(|&g| g as f64 / total as f64).collect()
    }

    #[test]
    fn a_1_vcpu_and_a_2_vcpu_guest_of_equal_weight_share_two_cpus_evenly() {
        let s = shares(&simulate_two_cpus(&[(100, 0), (100, 1), (100, 1)], 4000));
        assert!((s[0] - 0.5).abs() < 0.02, "{s:?}");
        let s = shares(&simulate_two_cpus(&[(100, 1), (100, 1), (100, 0)], 4000));
        assert!((s[0] - 0.5).abs() < 0.02, "{s:?}");
    }

    #[test]
    fn weighted_1_vcpu_guests_on_two_cpus() {
        let s = shares(&simulate_two_cpus(
            &[(200, 0), (200, 1), (100, 2), (100, 3)],
            6000,
        ));
        for (got, want) in s.iter().zip([1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0]) {
            assert!((got - want).abs() < 0.02, "{s:?}");
        }
        let s = shares(&simulate_two_cpus(
            &[(100, 0), (100, 1), (100, 2), (100, 3)],
            6000,
        ));
        assert!(s.iter().all(|x| (x - 0.25).abs() < 0.02), "{s:?}");
    }

    #[test]
    fn a_due_timer_is_picked_first_within_a_slice() {
        let slice = 1000;
        // The lowest runs when no timer is due.
        assert_eq!(
            choose(&[(500, false), (100, false), (300, false)], slice),
            Some(1)
        );
        // A due vCPU less than a slice ahead goes first.
        assert_eq!(
            choose(&[(500, false), (100, false), (900, true)], slice),
            Some(2)
        );
        // Ties with the lowest: the due one.
        assert_eq!(choose(&[(100, false), (100, true)], slice), Some(1));
        // More than a slice ahead: its share first, the lowest runs.
        assert_eq!(choose(&[(1200, true), (100, false)], slice), Some(1));
        // Two due: the lower of them.
        assert_eq!(
            choose(&[(700, true), (100, false), (400, true)], slice),
            Some(2)
        );
        assert_eq!(choose(&[], slice), None);
    }

    #[test]
    fn a_slice_ends_at_the_next_wake_up() {
        let slice = 16_000;
        assert_eq!(slice_until(100, slice, None), slice);
        assert_eq!(slice_until(100, slice, Some(5100)), 5000);
        assert_eq!(slice_until(100, slice, Some(1_000_000)), slice);
        // Due now or past: the shortest slice, not none.
        assert_eq!(slice_until(100, slice, Some(50)), 1000);
        assert_eq!(slice_until(100, 8, Some(50)), 1);
    }

    #[test]
    fn a_woken_vcpu_runs_next_but_keeps_its_debt() {
        let slice = 1000;
        // Slept long: a slice behind the lowest, no more.
        assert_eq!(wake_vruntime(0, 10_000, slice), 9000);
        assert_eq!(wake_vruntime(9500, 10_000, slice), 9500);
        // Ahead by less than a slice: the lowest, so it runs next.
        assert_eq!(wake_vruntime(10_800, 10_000, slice), 10_000);
        // Far ahead: it waits for the others.
        assert_eq!(wake_vruntime(12_000, 10_000, slice), 12_000);
        // An empty CPU.
        assert_eq!(wake_vruntime(12_000, u64::MAX, slice), 12_000);
    }

    #[test]
    fn charge_scales_with_runnable_vcpus_and_weight() {
        assert_eq!(charge(1000, 100, 1), 1000);
        assert_eq!(charge(1000, 100, 2), 2000);
        assert_eq!(charge(1000, 200, 2), 1000);
        assert_eq!(charge(1000, 50, 0), 2000, "0 runnable counts as 1");
        assert_eq!(charge(u64::MAX, 1, 64), u64::MAX, "saturates");
        assert_eq!(lowest_key([5, 3, 3, 9].into_iter()), Some(1));
        assert_eq!(lowest_key(core::iter::empty()), None);
    }
}
