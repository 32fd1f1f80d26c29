//! In-memory snapshots of running VMs: take, list, roll back, clone, delete.
//!
//! A snapshot is taken with every vCPU of the VM paused at an instruction
//! boundary ([`super::pause`]); it holds every vCPU's architectural state,
//! every device model and the guest's non-zero RAM pages, serialized into one
//! versioned byte string (format: `docs/snapshots.md`), kept in hypervisor
//! memory and accounted against it. The management console and API call
//! these functions (VMs and snapshots by name).
use super::pause;
use super::snapshot_format::{self as fmt_, FormatError, Ident, Meta, VcpuImage};
use super::vcpu::Vcpu;
use super::Vm;
use crate::{mm, println, sched};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use arch::addr::Gpa;
use arch::regs::rdtsc;
use core::fmt;
use core::sync::atomic::Ordering;
use devices::snapshot::VmDevices;
use spin::Mutex;

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
    /// The snapshot can't be taken now (disk requests that did not finish
    /// in time).
    Unsupported(String),
    /// Anything else, with the reason.
    Failed(String),
}

impl fmt::Display for SnapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
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
            SnapError::Unsupported(why) => write!(f, "can't snapshot: {why}"),
            SnapError::Failed(why) => write!(f, "{why}"),
        }
    }
}

impl From<FormatError> for SnapError {
    fn from(e: FormatError) -> Self {
        SnapError::Incompatible(format!("{e}"))
    }
}

/// Hypervisor memory a snapshot may not take: VMs being created, cloned or
/// restarted need frames too.
const RESERVE: u64 = 8 << 20;

/// A snapshot's bytes, in frames of hypervisor memory (the heap is far too
/// small for guest RAM), freed (scrubbed) when dropped.
struct Blob {
    start: mm::Hpa,
    len: usize,
}

impl Blob {
    fn alloc(len: usize) -> Result<Blob, SnapError> {
        let size = (len as u64).div_ceil(mm::PAGE) * mm::PAGE;
        let free = mm::free_bytes();
        let oom = SnapError::OutOfMemory { needed: size, free };
        if size.saturating_add(RESERVE) > free {
            return Err(oom);
        }
        let start = mm::alloc_zeroed(size.max(mm::PAGE), mm::PAGE).ok_or(oom)?;
        Ok(Blob { start, len })
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: the frames are this blob's own, identity-mapped, `len` long.
        unsafe { core::slice::from_raw_parts(self.start.as_ptr::<u8>(), self.len) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.start.as_mut_ptr::<u8>(), self.len) }
    }
    fn size(&self) -> u64 {
        (self.len as u64).div_ceil(mm::PAGE) * mm::PAGE
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        mm::free_zeroed(self.start, self.size().max(mm::PAGE));
    }
}

struct Stored {
    /// Unique for the hypervisor's run (names can be reused after a delete).
    id: u64,
    info: SnapshotInfo,
    blob: Arc<Blob>,
}

// SAFETY: a Blob is a plain owned range of frames; nothing in it is tied to
// a CPU.
unsafe impl Send for Blob {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for Blob {}

/// Every snapshot, oldest first. Lock order: after the scheduler's locks
/// (it is never held while pausing or while a VM lock is taken).
static STORE: Mutex<Vec<Stored>> = Mutex::new(Vec::new());
static NEXT: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(1);
static NEXT_ID: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

/// This build and CPU, as a snapshot records them.
pub fn ident() -> Ident {
    let v = arch::cpuid::cpuid(0, 0);
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&v.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&v.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&v.ecx.to_le_bytes());
    Ident {
        build: format!(
            "ferrovisor {} snapshot format {}",
            env!("CARGO_PKG_VERSION"),
            fmt_::VERSION
        ),
        vendor,
        signature: arch::cpuid::cpuid(1, 0).eax,
        vmcs_revision: crate::vmx::caps().basic.revision_id,
        xsave_mask: crate::xsave::host_mask(),
        xsave_size: super::vcpu::vcpu_state::xsave_len() as u32,
    }
}

fn us(ticks: u64) -> u64 {
    crate::time::tsc_to_ns(ticks) / 1000
}

fn uptime_ms() -> u64 {
    crate::time::tsc_to_ns(rdtsc().saturating_sub(super::MANIFEST_TSC.load(Ordering::Relaxed)))
        / 1_000_000
}

/// A VM with an NBD disk is never snapshotted, rolled back or cloned: its
/// blocks live on the server, which no snapshot can take back.
fn refuse_nbd(v: &Vm) -> Result<(), SnapError> {
    let n = v.config.disks.iter().filter(|d| d.nbd.is_some()).count();
    if n == 0 {
        return Ok(());
    }
    Err(SnapError::Unsupported(format!(
        "VM `{}` has {n} NBD disk(s): their blocks live on the NBD server, which a snapshot can't hold or roll back",
        v.name
    )))
}

fn find_vm(name: &str) -> Result<Arc<Vm>, SnapError> {
    pause::find(name).ok_or_else(|| SnapError::NoSuchVm(name.into()))
}

/// Pauses `vm` unless it is paused already; the guard resumes it when it
/// was not.
struct Paused {
    vm: Arc<Vm>,
    resume: bool,
}

impl Paused {
    fn new(vm: &Arc<Vm>) -> Result<Paused, SnapError> {
        if vm.is_paused() {
            return Ok(Paused {
                vm: vm.clone(),
                resume: false,
            });
        }
        match pause::pause(vm) {
            Ok(()) => Ok(Paused {
                vm: vm.clone(),
                resume: true,
            }),
            Err(sched::PauseError::Ended) => Err(SnapError::VmEnded(vm.name.clone())),
            Err(sched::PauseError::Timeout) => Err(SnapError::PauseTimeout(vm.name.clone())),
            Err(sched::PauseError::AlreadyPaused) => Err(SnapError::Failed(format!(
                "VM `{}` is being paused by another command",
                vm.name
            ))),
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if self.resume {
            pause::resume(&self.vm);
        }
    }
}

/// The guest RAM of a paused (or not yet started) VM, page by page.
struct Ram<'a> {
    vm: &'a Vm,
}

impl Ram<'_> {
    fn pages(&self) -> u64 {
        self.vm
            .mem
            .ranges
            .iter()
            .map(|r| (r.gpa.0 + r.size) / mm::PAGE)
            .max()
            .unwrap_or(0)
    }
    /// Page `n`, if it is RAM. No vCPU of the VM runs meanwhile.
    fn page(&self, n: u64) -> Option<&[u8]> {
        let h = self.vm.mem.host_range(Gpa(n * mm::PAGE), mm::PAGE).ok()?;
        // SAFETY: a page of this VM's RAM; its vCPUs are paused (or not yet
        // scheduled), so nothing writes it while the slice lives.
        Some(unsafe { core::slice::from_raw_parts(h.as_ptr::<u8>(), mm::PAGE as usize) })
    }
}

/// Captures paused `vm` (its parked vCPUs given, by index) into a snapshot.
#[allow(clippy::vec_box)]
fn capture(vm: &Vm, vcpus: &mut [(Box<Vcpu>, bool)]) -> Result<Blob, SnapError> {
    if vcpus.len() != vm.config.vcpus as usize {
        return Err(SnapError::Failed(format!(
            "{} of {} vCPUs parked",
            vcpus.len(),
            vm.config.vcpus
        )));
    }
    let offset = vm.tsc_offset.load(Ordering::Acquire);
    let guest_tsc = vm.guest_tsc();
    let mut images = Vec::new();
    for (v, asleep) in vcpus.iter_mut() {
        let mut img = v.capture(offset).map_err(SnapError::Failed)?;
        img.halted = *asleep && !img.wait_sipi && !img.halted_noirq;
        let m = &vm.mailbox[v.index];
        img.nmi = m.nmi.load(Ordering::Acquire);
        img.init = m.init.load(Ordering::Acquire);
        img.sipi = m.sipi.load(Ordering::Acquire);
        images.push(img.encode());
    }
    // The bus stays locked until the blob is written: the disk sections
    // borrow the overlays' chunks from it (the vCPUs are parked anyway).
    let mut s = vm.shared.lock();
    let devices = {
        let mut guards: Vec<_> = vm.lapics.iter().map(|l| l.lock()).collect();
        let mut lapics: Vec<&mut devices::lapic::VLapic> =
            guards.iter_mut().map(|g| &mut **g).collect();
        VmDevices {
            bus: &mut s.io,
            lapics: &mut lapics,
        }
        .save()
        .map_err(|e| match e {
            devices::state::BytesError::Busy { .. } => {
                SnapError::Unsupported(format!("VM `{}`: {e}", vm.name))
            }
            _ => SnapError::Failed(format!("device state: {e}")),
        })?
    };
    let disks = super::disks::save_disks(&s.io, &vm.config.disks);
    let meta = Meta {
        vm: vm.name.clone(),
        vcpus: vm.config.vcpus,
        memory: vm.config.memory,
        guest_tsc,
        taken_at_ms: uptime_ms(),
    }
    .encode();
    let mut small: Vec<fmt_::Section> = alloc::vec![(fmt_::META, 0, alloc::vec![&meta[..]])];
    for (i, img) in images.iter().enumerate() {
        small.push((fmt_::VCPU, i as u32, alloc::vec![&img[..]]));
    }
    small.push((fmt_::DEVICES, 0, alloc::vec![&devices[..]]));
    for (i, d) in disks.iter().enumerate() {
        let mut parts: Vec<&[u8]> = alloc::vec![&d.head[..]];
        parts.extend(d.chunks.iter().copied());
        small.push((fmt_::DISK, i as u32, parts));
    }
    let ram = Ram { vm };
    let total = ram.pages();
    let runs = fmt_::runs(total, |p| ram.page(p).is_some_and(|b| !fmt_::is_zero(b)));
    let id = ident();
    let len = fmt_::total_len(&id, &small, &runs);
    let mut blob = Blob::alloc(len)?;
    fmt_::write(blob.bytes_mut(), &id, &small, total, &runs, |p| {
        ram.page(p).unwrap_or(&[0; 4096])
    });
    drop(small);
    drop(disks);
    drop(s);
    Ok(blob)
}

/// A checked snapshot, decoded.
struct Decoded<'a> {
    meta: Meta,
    vcpus: Vec<VcpuImage>,
    devices: &'a [u8],
    /// One per virtio disk, in attach order.
    disks: Vec<&'a [u8]>,
    ram: &'a [u8],
}

fn decode(bytes: &[u8]) -> Result<Decoded<'_>, SnapError> {
    let p = fmt_::parse(bytes, &ident())?;
    let meta = Meta::decode(p.one(fmt_::META)?)?;
    let vcpus = p
        .indexed(fmt_::VCPU)?
        .into_iter()
        .map(VcpuImage::decode)
        .collect::<Result<Vec<_>, _>>()?;
    if vcpus.len() != meta.vcpus as usize {
        return Err(FormatError::Invalid("vcpu count").into());
    }
    Ok(Decoded {
        meta,
        vcpus,
        devices: p.one(fmt_::DEVICES)?,
        disks: p.indexed(fmt_::DISK)?,
        ram: p.one(fmt_::RAM)?,
    })
}

/// Whether decoded snapshot `d` fits `vm`: its vCPUs, memory size and RAM
/// layout; returns the RAM section's pages and runs.
fn check_fits<'a>(vm: &Vm, d: &Decoded<'a>) -> Result<(u64, fmt_::RunData<'a>), SnapError> {
    if d.meta.vcpus != vm.config.vcpus || d.meta.memory != vm.config.memory {
        return Err(SnapError::Incompatible(format!(
            "snapshot of {} vCPUs and {} MiB, the VM has {} and {} MiB",
            d.meta.vcpus,
            d.meta.memory >> 20,
            vm.config.vcpus,
            vm.config.memory >> 20
        )));
    }
    let ram = Ram { vm };
    let (total, runs) = fmt_::ram_runs(d.ram)?;
    if total != ram.pages() {
        return Err(FormatError::Invalid("guest RAM size").into());
    }
    for &(first, data) in &runs {
        let n = (data.len() / fmt_::PAGE) as u64;
        if (first..first + n).any(|p| ram.page(p).is_none()) {
            return Err(FormatError::Invalid("ram run outside RAM").into());
        }
    }
    Ok((total, runs))
}

/// Everything [`apply`] would check, without changing anything: the RAM
/// layout, the device set (kinds, instances, layout versions) and the
/// disks (same gold images, overlays that fit the heap).
fn check_all(vm: &Vm, d: &Decoded) -> Result<(), SnapError> {
    check_fits(vm, d)?;
    let s = vm.shared.lock();
    let prepared = super::disks::prepare_disks(&s.io, &vm.config.disks, &d.disks)
        .map_err(SnapError::Incompatible)?;
    drop(prepared);
    let mut guards: Vec<_> = vm.lapics.iter().map(|l| l.lock()).collect();
    let lapics: Vec<&devices::lapic::VLapic> = guards.iter_mut().map(|g| &**g).collect();
    let mut list = s.io.states();
    list.extend(lapics.iter().map(|l| *l as &dyn devices::state::Stateful));
    devices::snapshot::check(d.devices, &list)
        .map_err(|e| SnapError::Incompatible(format!("device state: {e}")))
}

/// Puts snapshot `d` into `vm` (paused, or not yet scheduled), whose vCPUs
/// are `vcpus` (index order, released). The device state is restored first
/// (all or nothing), so that a refusal leaves the VM as it was.
fn apply(vm: &Vm, d: &Decoded, id: u64, vcpus: &mut [&mut Vcpu]) -> Result<(), SnapError> {
    let ram = Ram { vm };
    let (total, runs) = check_fits(vm, d)?;
    {
        let mut s = vm.shared.lock();
        // The disks' overlays are built first (nothing changes if they
        // don't fit), put in place once the devices took their state.
        let disks = super::disks::prepare_disks(&s.io, &vm.config.disks, &d.disks)
            .map_err(SnapError::Incompatible)?;
        {
            let mut guards: Vec<_> = vm.lapics.iter().map(|l| l.lock()).collect();
            let mut lapics: Vec<&mut devices::lapic::VLapic> =
                guards.iter_mut().map(|g| &mut **g).collect();
            VmDevices {
                bus: &mut s.io,
                lapics: &mut lapics,
            }
            .restore(d.devices)
            .map_err(|e| SnapError::Incompatible(format!("device state: {e}")))?;
        }
        super::disks::install_disks(&mut s.io, disks);
    }
    // Frames queued at the NICs' switch ports were for the guest as it was:
    // dropped (a detach empties a port's queue and what it learned).
    for p in &vm.nics {
        p.net.set_attached(p.port, false);
        p.net.set_attached(p.port, true);
    }
    vm.net_rx.store(0, Ordering::Release);
    // RAM: the snapshot's pages, every other non-zero page zeroed; when RAM
    // was last made equal to this very snapshot, only in the regions
    // written since.
    let only = if id != 0 && vm.ram_baseline.load(Ordering::Acquire) == id {
        vm.mem.take_dirty()
    } else {
        None
    };
    let per_region = super::memory::dirty::REGION / mm::PAGE;
    let mut next = runs.iter().peekable();
    for p in 0..total {
        if only
            .as_ref()
            .is_some_and(|set| !super::memory::dirty::contains(set, p / per_region))
        {
            continue;
        }
        while next
            .peek()
            .is_some_and(|&&(f, d)| p >= f + (d.len() / fmt_::PAGE) as u64)
        {
            next.next();
        }
        let Some(page) = ram.page(p) else { continue };
        let gpa = Gpa(p * mm::PAGE);
        match next.peek() {
            Some(&&(f, data)) if p >= f => {
                let off = ((p - f) * mm::PAGE) as usize;
                let _ = vm.mem.write(gpa, &data[off..off + fmt_::PAGE]);
            }
            _ if !fmt_::is_zero(page) => {
                let _ = vm.mem.write(gpa, &[0; fmt_::PAGE]);
            }
            _ => {}
        }
    }
    if only.is_none() {
        // A new dirty-log period from here.
        let _ = vm.mem.take_dirty();
    }
    let baseline = if vm.mem.dirty_log_enabled() { id } else { 0 };
    vm.ram_baseline.store(baseline, Ordering::Release);
    // The guest's clocks continue from the snapshot's TSC: every deadline
    // the device models and local APICs hold is in guest TSC, so they keep
    // their distance (see docs/snapshots.md).
    let offset = d.meta.guest_tsc.wrapping_sub(rdtsc());
    vm.tsc_offset.store(offset, Ordering::Release);
    for (m, img) in vm.mailbox.iter().zip(&d.vcpus) {
        m.init.store(img.init, Ordering::Release);
        m.sipi.store(img.sipi, Ordering::Release);
        m.nmi.store(img.nmi, Ordering::Release);
        let stuck = if img.wait_sipi {
            super::irq::WAIT_SIPI
        } else if img.halted_noirq {
            super::irq::HALT_NOIRQ
        } else {
            super::irq::RUNNABLE
        };
        m.stuck.store(stuck, Ordering::SeqCst);
        m.check_irq.store(true, Ordering::Release);
        m.timers_dirty.store(true, Ordering::Release);
    }
    for (v, img) in vcpus.iter_mut().zip(&d.vcpus) {
        v.restore_image(img, offset).map_err(SnapError::Failed)?;
    }
    Ok(())
}

/// How long a snapshot waits for disk requests in flight to finish.
const DRAIN_NS: u64 = 1_000_000_000;

/// Lets the virtio backends finish the requests they hold (the VM is
/// paused, so no new ones come), for at most [`DRAIN_NS`]; a device still
/// busy then refuses the snapshot with the reason (nothing changed).
fn drain_disks(v: &Vm) -> Result<(), SnapError> {
    let t0 = rdtsc();
    let limit = crate::time::ns_to_tsc(DRAIN_NS);
    loop {
        let Some((dev, why)) = v.shared.lock().io.virtio_busy() else {
            return Ok(());
        };
        if rdtsc().wrapping_sub(t0) > limit {
            return Err(SnapError::Unsupported(format!(
                "VM `{}`: {dev}: {why} after {} ms (nothing changed)",
                v.name,
                DRAIN_NS / 1_000_000
            )));
        }
        let _ = v.poll_devices();
        core::hint::spin_loop();
    }
}

/// Takes a snapshot of running VM `vm` named `name` (without one:
/// `VM-N`). The VM is paused for the copy and resumes afterwards (a VM the
/// operator paused stays paused).
pub fn take(vm: &str, name: Option<&str>) -> Result<SnapshotInfo, SnapError> {
    let v = find_vm(vm)?;
    refuse_nbd(&v)?;
    if v.ended() {
        return Err(SnapError::VmEnded(vm.into()));
    }
    let name: String = match name {
        Some(n) => n.into(),
        None => format!("{vm}-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
    };
    if STORE.lock().iter().any(|s| s.info.name == name) {
        return Err(SnapError::SnapshotExists(name));
    }
    let t0 = rdtsc();
    let paused = Paused::new(&v)?;
    let mut vcpus = sched::take_paused(&v);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let r = drain_disks(&v).and_then(|()| capture(&v, &mut vcpus));
    if r.is_ok() && v.mem.take_dirty().is_some() {
        // RAM equals this snapshot now (the vCPUs drop their cached EPT
        // translations before they run: `capture`).
        v.ram_baseline.store(id, Ordering::Release);
    }
    sched::put_paused(vcpus);
    drop(paused);
    let blob = r?;
    let t = rdtsc() - t0;
    let info = SnapshotInfo {
        name: name.clone(),
        vm: vm.into(),
        size_bytes: blob.size(),
        taken_at_ms: uptime_ms(),
    };
    println!(
        "hv: snapshot {name} of vm {vm}: {} KiB in {} us",
        blob.size() >> 10,
        us(t)
    );
    let mut st = STORE.lock();
    if st.iter().any(|s| s.info.name == name) {
        return Err(SnapError::SnapshotExists(name));
    }
    st.push(Stored {
        id,
        info: info.clone(),
        blob: Arc::new(blob),
    });
    Ok(info)
}

/// All snapshots, or those of `vm`, oldest first.
pub fn list(vm: Option<&str>) -> Vec<SnapshotInfo> {
    STORE
        .lock()
        .iter()
        .filter(|s| vm.is_none_or(|v| s.info.vm == v))
        .map(|s| s.info.clone())
        .collect()
}

fn blob_of(name: &str) -> Result<(u64, SnapshotInfo, Arc<Blob>), SnapError> {
    STORE
        .lock()
        .iter()
        .find(|s| s.info.name == name)
        .map(|s| (s.id, s.info.clone(), s.blob.clone()))
        .ok_or_else(|| SnapError::NoSuchSnapshot(name.into()))
}

/// Restores snapshot `name` (taken of `vm`) into the running VM `vm`: it
/// continues at the saved instruction, its clocks continuing from the
/// snapshot's guest TSC.
pub fn rollback(vm: &str, name: &str) -> Result<(), SnapError> {
    let v = find_vm(vm)?;
    refuse_nbd(&v)?;
    let (id, info, blob) = blob_of(name)?;
    if info.vm != vm {
        return Err(SnapError::OtherVm {
            snapshot: name.into(),
            of: info.vm,
            vm: vm.into(),
        });
    }
    if v.ended() {
        return Err(SnapError::VmEnded(vm.into()));
    }
    let t0 = rdtsc();
    let d = decode(blob.bytes())?;
    let paused = Paused::new(&v)?;
    let mut vcpus = sched::take_paused(&v);
    let r = if vcpus.len() == d.vcpus.len() {
        let mut refs: Vec<&mut Vcpu> = vcpus.iter_mut().map(|(c, _)| &mut **c).collect();
        apply(&v, &d, id, &mut refs)
    } else {
        Err(SnapError::Failed(format!(
            "{} of {} vCPUs parked",
            vcpus.len(),
            d.vcpus.len()
        )))
    };
    if r.is_ok() {
        for ((c, asleep), img) in vcpus.iter_mut().zip(&d.vcpus) {
            // A parked sleeper wakes when it wants to run (signals included).
            *asleep = img.wait_sipi || img.halted || img.halted_noirq;
            c.start_halted = false;
        }
    }
    sched::put_paused(vcpus);
    drop(paused);
    r?;
    println!(
        "hv: vm {vm}: rolled back to snapshot {name} in {} us",
        us(rdtsc() - t0)
    );
    Ok(())
}

/// A stored snapshot's file, to be sent out ([`export`]); its frames stay
/// while this lives, even if the snapshot is deleted meanwhile.
pub struct FileOut {
    blob: Arc<Blob>,
}

impl FileOut {
    /// The file's length in bytes.
    pub fn size(&self) -> u64 {
        self.blob.len as u64
    }
    /// Copies the file's bytes at `offset` into `buf`; returns how many.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        let rest = usize::try_from(offset)
            .ok()
            .and_then(|o| self.blob.bytes().get(o..))
            .unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        n
    }
}

/// Snapshot `name`'s file (format: docs/snapshots.md), exactly as kept;
/// with `vm`, it must be a snapshot of that VM.
pub fn export(name: &str, vm: Option<&str>) -> Result<FileOut, SnapError> {
    let (_, info, blob) = blob_of(name)?;
    if let Some(vm) = vm {
        find_vm(vm)?;
        if info.vm != vm {
            return Err(SnapError::OtherVm {
                snapshot: name.into(),
                of: info.vm,
                vm: vm.into(),
            });
        }
    }
    Ok(FileOut { blob })
}

/// A snapshot file arriving ([`import`]): written into frames reserved for
/// its whole length, checked whole by [`FileIn::finish`] before it is kept.
pub struct FileIn {
    blob: Blob,
    at: usize,
    vm: String,
    name: String,
}

impl FileIn {
    /// The next bytes (any beyond the announced length are dropped; the
    /// HTTP framing never passes them).
    pub fn write(&mut self, bytes: &[u8]) {
        let at = self.at;
        let dst = self.blob.bytes_mut();
        let n = bytes.len().min(dst.len().saturating_sub(at));
        dst[at..at + n].copy_from_slice(&bytes[..n]);
        self.at += n;
    }

    /// Checks the whole file (header, CRCs, build and CPU, then that it fits
    /// the VM: vCPUs, memory, RAM layout, devices, disks) and keeps it as a
    /// snapshot of the VM; nothing is kept on any error.
    pub fn finish(self) -> Result<SnapshotInfo, SnapError> {
        if self.at != self.blob.len {
            return Err(FormatError::Truncated("upload").into());
        }
        let v = find_vm(&self.vm)?;
        let d = decode(self.blob.bytes())?;
        check_all(&v, &d)?;
        let info = SnapshotInfo {
            name: self.name.clone(),
            vm: self.vm.clone(),
            size_bytes: self.blob.size(),
            taken_at_ms: uptime_ms(),
        };
        let mut st = STORE.lock();
        if st.iter().any(|s| s.info.name == self.name) {
            return Err(SnapError::SnapshotExists(self.name));
        }
        println!(
            "hv: snapshot {} of vm {}: imported, {} KiB (taken of vm {} at {} ms)",
            info.name,
            info.vm,
            info.size_bytes >> 10,
            d.meta.vm,
            d.meta.taken_at_ms
        );
        st.push(Stored {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            info: info.clone(),
            blob: Arc::new(self.blob),
        });
        Ok(info)
    }
}

/// Reserves hypervisor memory for a snapshot file of `len` bytes to be
/// kept as snapshot `name` of VM `vm`: refused at once when there is no
/// such VM, the name is taken or the file would not fit.
pub fn import(vm: &str, name: &str, len: u64) -> Result<FileIn, SnapError> {
    find_vm(vm)?;
    if STORE.lock().iter().any(|s| s.info.name == name) {
        return Err(SnapError::SnapshotExists(name.into()));
    }
    let free = mm::free_bytes();
    let len = usize::try_from(len).map_err(|_| SnapError::OutOfMemory { needed: len, free })?;
    Ok(FileIn {
        blob: Blob::alloc(len)?,
        at: 0,
        vm: vm.into(),
        name: name.into(),
    })
}

/// Starts snapshot `snapshot` as a new VM named `new_name`, with the
/// original's manifest entry (but its own name and console); returns its name.
pub fn clone_vm(snapshot: &str, new_name: &str) -> Result<String, SnapError> {
    let (id, info, blob) = blob_of(snapshot)?;
    let vms = sched::vms();
    if vms.iter().any(|v| v.name == new_name) {
        return Err(SnapError::VmExists(new_name.into()));
    }
    if vms.len() + 1 >= crate::console::MAX_SOURCES {
        return Err(SnapError::NoSlot);
    }
    let orig = vms
        .iter()
        .find(|v| v.name == info.vm)
        .ok_or_else(|| SnapError::NoSuchVm(info.vm.clone()))?;
    refuse_nbd(orig)?;
    let t0 = rdtsc();
    let d = decode(blob.bytes())?;
    let mut cfg = orig.config.clone();
    cfg.name = new_name.into();
    // Its own switch ports, each NIC with the MAC derived from the new name.
    let mut nics = Vec::new();
    for (i, p) in orig.nics.iter().enumerate() {
        let mac = loader::manifest::derive_mac(new_name, i as u32);
        match p.net.add_port_now(mac.0, new_name, i) {
            Ok(port) => nics.push(crate::net::NetPort { net: p.net, port }),
            Err(e) => {
                for n in &nics {
                    n.net.set_attached(n.port, false);
                }
                return Err(SnapError::Failed(format!(
                    "creating vm {new_name}: nic {i}: no port on network {}: {e:?}",
                    p.net.name
                )));
            }
        }
        if let Some(n) = cfg.nics.get_mut(i) {
            n.mac = mac;
            n.mac_source = loader::manifest::MacSource::Derived;
        }
    }
    let ports: Vec<crate::net::NetPort> = nics.clone();
    let vm_id = vms.iter().map(|v| v.id).max().unwrap_or(0) + 1;
    let created = Vm::create_with_nics(vm_id, cfg, orig.image, orig.initrd, nics)
        .map_err(|e| SnapError::Failed(format!("creating vm {new_name}: {e}")))
        .and_then(|(vm, vcpus)| {
            // Its own disks over the same gold images, which take the
            // snapshot's overlays as their own copies (`apply`); then its
            // NICs (the _PRT order: disks, then NICs).
            let copies = super::disks::empty_copies(&orig.shared.lock().io);
            super::disks::attach_copies(vm_id, &mut vm.shared.lock().io, &vm.config.disks, copies)
                .map_err(|e| SnapError::Failed(format!("creating vm {new_name}: {e}")))?;
            vm.attach_nics_to_bus()
                .map_err(|e| SnapError::Failed(format!("creating vm {new_name}: {e}")))?;
            Ok((vm, vcpus))
        });
    let (vm, mut vcpus) = match created {
        Ok(x) => x,
        Err(e) => {
            for n in &ports {
                n.net.set_attached(n.port, false);
            }
            return Err(e);
        }
    };
    {
        let mut refs: Vec<&mut Vcpu> = vcpus.iter_mut().map(|c| &mut **c).collect();
        if let Err(e) = apply(&vm, &d, id, &mut refs) {
            vm.attach_nics(false);
            return Err(e);
        }
    }
    println!(
        "vm {new_name}: started (clone of snapshot {snapshot} of vm {}, {} MiB, in {} us)",
        info.vm,
        vm.config.memory >> 20,
        us(rdtsc() - t0)
    );
    sched::add_vm(vm, vcpus);
    Ok(new_name.into())
}

/// Deletes snapshot `name`, giving its memory back.
pub fn delete(name: &str) -> Result<(), SnapError> {
    let removed = {
        let mut st = STORE.lock();
        let i = st
            .iter()
            .position(|s| s.info.name == name)
            .ok_or_else(|| SnapError::NoSuchSnapshot(name.into()))?;
        st.remove(i)
    };
    // Freed (scrubbed) here, or by the last rollback still reading it.
    drop(removed);
    Ok(())
}

/// The snapshot files guests start from (manifest `snapshot =`), by VM id:
/// their restarts start from them again.
static BOOT: Mutex<Vec<(usize, &'static [u8])>> = Mutex::new(Vec::new());

/// Puts snapshot file `file` (the manifest's `snapshot =`, on the ESP) into
/// newly created `vm` and its fresh `vcpus`, after checking it whole (header,
/// CRCs, build and CPU, vCPUs, memory, devices, disks); from then on its
/// restarts start from it too. Nothing is changed on an error.
#[allow(clippy::vec_box)]
pub fn start_from_file(
    vm: &Vm,
    file: &'static [u8],
    vcpus: &mut [Box<Vcpu>],
) -> Result<(), SnapError> {
    // An NBD disk's blocks are the server's now, not the snapshot's.
    refuse_nbd(vm)?;
    let d = decode(file)?;
    check_all(vm, &d)?;
    let mut refs: Vec<&mut Vcpu> = vcpus.iter_mut().map(|c| &mut **c).collect();
    apply(vm, &d, 0, &mut refs)?;
    let mut b = BOOT.lock();
    if !b.iter().any(|&(id, _)| id == vm.id) {
        b.push((vm.id, file));
    }
    Ok(())
}

/// `vm`'s start: fresh vCPUs at the loader's start state, or at the state of
/// the snapshot file it starts from (after [`Vm::restart`] reloaded it).
#[allow(clippy::vec_box)]
pub fn fresh_vcpus(vm: &Arc<Vm>) -> Result<Vec<Box<Vcpu>>, SnapError> {
    let mut vcpus: Vec<Box<Vcpu>> = (0..vm.config.vcpus as usize)
        .map(|i| Box::new(Vcpu::new(vm.clone(), i)))
        .collect();
    let file = BOOT
        .lock()
        .iter()
        .find(|&&(id, _)| id == vm.id)
        .map(|&(_, f)| f);
    if let Some(file) = file {
        let t0 = rdtsc();
        let d = decode(file)?;
        let mut refs: Vec<&mut Vcpu> = vcpus.iter_mut().map(|c| &mut **c).collect();
        apply(vm, &d, 0, &mut refs)?;
        crate::console::println_after(
            vm.console,
            format_args!(
                "vm {}: started from snapshot file \\hv\\{} again in {} us",
                vm.name,
                vm.config.snapshot.as_deref().unwrap_or("?"),
                us(rdtsc() - t0)
            ),
        );
    }
    Ok(vcpus)
}

/// `on_crash = "rollback"`: restores the latest snapshot of crashed `vm`
/// (all its vCPUs gone) into fresh vCPUs; None when it has no snapshot.
/// Prints how long the restore took beside what a cold restart costs.
#[allow(clippy::vec_box)]
pub fn rollback_after_crash(vm: &Arc<Vm>) -> Option<Result<Vec<Box<Vcpu>>, SnapError>> {
    let (id, info, blob) = {
        let st = STORE.lock();
        let s = st.iter().rev().find(|s| s.info.vm == vm.name)?;
        (s.id, s.info.clone(), s.blob.clone())
    };
    let t0 = rdtsc();
    let r = (|| {
        let d = decode(blob.bytes())?;
        let mut vcpus: Vec<Box<Vcpu>> = (0..vm.config.vcpus as usize)
            .map(|i| Box::new(Vcpu::new(vm.clone(), i)))
            .collect();
        let mut refs: Vec<&mut Vcpu> = vcpus.iter_mut().map(|c| &mut **c).collect();
        apply(vm, &d, id, &mut refs)?;
        Ok((vcpus, d.meta.guest_tsc))
    })();
    let (vcpus, at) = match r {
        Ok(x) => x,
        Err(e) => return Some(Err(e)),
    };
    let n = vm.restarts.fetch_add(1, Ordering::AcqRel) + 1;
    {
        let mut s = vm.shared.lock();
        s.end = None;
    }
    vm.ending.store(false, Ordering::Release);
    let restore = us(rdtsc() - t0);
    crate::console::println_after(
        vm.console,
        format_args!(
            "vm {}: rolled back to snapshot {} after a crash ({n} of at most {}): restored in {restore} us; a cold restart: reload {} us + {} us of guest run time to reach that state",
            vm.name,
            info.name,
            vm.config.max_restarts,
            us(vm.cold_load_tsc.load(Ordering::Relaxed)),
            crate::time::tsc_to_ns(at) / 1000,
        ),
    );
    Some(Ok(vcpus))
}
