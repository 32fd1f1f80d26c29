//! Virtual machines: one per manifest entry, with its own RAM, EPT, I/O
//! space, bitmaps and vCPUs, and a life cycle that ends in exactly one
//! reported outcome (or a restart, as its policy says).
pub mod disks;
pub mod gwalk;
pub mod irq;
pub mod lateness;
pub mod memory;
pub mod nic;
pub mod pause;
pub mod platform;
pub mod snapshot;
pub mod snapshot_format;
pub mod stats;
pub mod vcpu;

use crate::mm;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use devices::ioapic::IoApic;
use devices::lapic::VLapic;
use devices::state::DeviceState;
use devices::{
    debug_exit::DebugExit, i8042::I8042, pci::Pci, pit::Pit, pm::Pm, post::PostCode, rtc::Rtc,
    uart::Uart, AddressMap, Bus,
};
use loader::manifest::{GuestConfig, Policy};
use memory::GuestMemory;
use spin::Mutex;

/// How a guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmEnd {
    /// The guest asked to end (debug-exit port, shutdown hypercall, ACPI).
    Exited(u32),
    /// The guest broke a rule or crashed; the reason names what happened.
    Crashed(String),
    /// Ended by the operator or the hypervisor (not the guest's fault).
    Stopped(String),
    /// The guest powered itself off (ACPI S5).
    PoweredOff,
    /// The guest asked for a reset (reboot): it restarts while its restart budget lasts.
    Reset,
}

/// How a guest's request to the platform ends it, if it does.
pub fn request_end(r: devices::Request) -> Option<VmEnd> {
    use devices::Request;
    match r {
        Request::None => None,
        Request::Exit(code) => Some(VmEnd::Exited(code)),
        Request::PowerOff => Some(VmEnd::PoweredOff),
        Request::Reset => Some(VmEnd::Reset),
    }
}

impl VmEnd {
    pub fn is_crash(&self) -> bool {
        matches!(self, VmEnd::Crashed(_))
    }
}

/// Mutable VM-wide state, behind the VM's own lock (never shared with another guest).
pub struct VmShared {
    /// The bus: every port and MMIO device, the 8259 pair and the I/O APIC.
    pub io: Bus,
    pub end: Option<VmEnd>,
}

pub struct Vm {
    pub id: usize,
    pub name: String,
    pub config: GuestConfig,
    pub mem: GuestMemory,
    pub image: &'static [u8],
    pub initrd: Option<&'static [u8]>,
    pub shared: Mutex<VmShared>,
    /// The bus's address decode (fixed at creation; a copy, so that MMIO is
    /// decoded without the VM lock).
    pub map: AddressMap,
    /// Set once the VM has ended; vCPUs leave at their next exit.
    pub ending: AtomicBool,
    pub restarts: AtomicU32,
    /// 4 KiB MSR bitmap and two 4 KiB I/O bitmaps (host-physical).
    pub msr_bitmap: u64,
    pub io_bitmaps: u64,
    /// The boot state, kept so a restart can start over.
    pub entry: Mutex<loader::EntryState>,
    /// Guest TSC = host TSC + this (one offset per VM; reset on restart).
    pub tsc_offset: AtomicU64,
    /// One local APIC per vCPU (index = vCPU index = APIC ID).
    pub lapics: Vec<Mutex<VLapic>>,
    pub mailbox: Vec<irq::Mailbox>,
    /// Set once the guest's first console byte has been reported.
    pub first_output: AtomicBool,
    /// Accesses to guest-physical memory with nothing behind it (ignored).
    pub unmapped: Mutex<crate::exits::ept::UnmappedLog>,
    /// This guest's console queue (see `console`).
    pub console: usize,
    /// vCPUs in a run queue or running (not halted, not waiting for SIPI):
    /// the VM's weight is split over them.
    pub runnable: core::sync::atomic::AtomicUsize,
    /// The longest exit so far (TSC ticks from VM exit to the next VM entry)
    /// and its basic exit reason.
    pub longest_exit: core::sync::atomic::AtomicU64,
    pub longest_exit_reason: AtomicU32,
    /// How late its local APIC timer expiries were noticed.
    pub timer_lateness: lateness::Lateness,
    /// Exits by reason, run time, where vCPUs ran (the management console's figures).
    pub stats: stats::VmStats,
    /// What the operator asked for when ending it ([`OP_STOP`], [`OP_RESTART`]; 0: nothing).
    pub operator: core::sync::atomic::AtomicU8,
    /// A pause is requested (or in effect): vCPUs leave guest mode at their
    /// next exit and the scheduler parks them (see `pause`).
    pub pause_flag: AtomicBool,
    /// Every vCPU is parked: the VM is paused.
    pub paused: AtomicBool,
    /// TSC ticks the last cold start took (RAM zeroed, image loaded), to
    /// compare a rollback with.
    pub cold_load_tsc: AtomicU64,
    /// Its NICs' switch ports, in manifest order, and their virtio-net
    /// functions' slots on the bus.
    pub nics: Vec<crate::net::NetPort>,
    /// Set by [`Vm::attach_nics_to_bus`] (after the disks).
    pub nic_slots: spin::Once<Vec<usize>>,
    /// NICs (bit per index) whose switch port has frames waiting: set by
    /// the senders' CPUs, drained by this VM (see `nic`).
    pub net_rx: AtomicU64,
    /// NBD disks (bit per disk index) with finished requests: set by the
    /// NIC poll, delivered by this VM (`disks::drain_disks`).
    pub disk_done: AtomicU64,
    /// Each disk's slot on the bus, in manifest order (set by `disks::attach`).
    pub disk_slots: spin::Once<Vec<usize>>,
    /// The snapshot (its id; 0: none) guest RAM equals but for the regions
    /// the dirty log shows written since (see `snapshot`).
    pub ram_baseline: AtomicU64,
}

/// `Vm::operator`: ended by the operator's `stop`: not restarted, whatever its policy.
pub const OP_STOP: u8 = 1;
/// `Vm::operator`: ended by the operator's `restart`: restarted outside its restart budget.
pub const OP_RESTART: u8 = 2;

/// TSC when the manifest was read (start-up figures are measured from here).
pub static MANIFEST_TSC: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

#[derive(Debug)]
pub enum CreateError {
    Memory(memory::MemError),
    Load(loader::LoadError),
    NoMemory,
    Bus(devices::BusError),
    Disk(disks::DiskError),
    FwCfg(devices::fw_cfg::FwCfgError),
    /// The manifest's `snapshot =` file can't be started from.
    Snapshot(String),
}

impl core::fmt::Display for CreateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CreateError::Memory(e) => write!(f, "{e}"),
            CreateError::Load(e) => write!(f, "{e}"),
            CreateError::NoMemory => write!(f, "not enough host memory for the VM's bitmaps"),
            CreateError::Bus(e) => write!(f, "device ranges: {e}"),
            CreateError::Disk(e) => write!(f, "{e}"),
            CreateError::FwCfg(e) => write!(f, "{e}"),
            CreateError::Snapshot(why) => write!(f, "{why}"),
        }
    }
}

/// TSC ticks per tick of the virtual APIC bus (a 100 MHz bus).
pub fn tsc_per_bus_tick() -> u64 {
    (crate::time::tsc_khz() / 100_000).max(1)
}

/// The device models' clock: guest TSC ticks at the host's TSC rate (the
/// guest's TSC runs at the host's, offset per VM).
fn device_clock() -> devices::Clock {
    devices::Clock::new(crate::time::tsc_khz().saturating_mul(1000))
}

/// The PC devices on the bus, in their power-on state (`vcpus` is the I/O
/// APIC's ID, after the local APICs'); the UART writes to console queue
/// `console`.
fn platform_bus(
    console: usize,
    vcpus: u32,
    fw_cfg: devices::fw_cfg::FwCfg,
) -> Result<Bus, devices::BusError> {
    let clock = device_clock();
    let mut io = Bus::new(IoApic::new(vcpus as u8));
    let console = devices::uart::ConsolePort {
        source: console,
        line: crate::console::guest_line,
        raw: crate::console::guest_raw,
        room: crate::console::has_room,
        focused: crate::console::is_focused,
    };
    io.register(Box::new(Uart::new(console, clock)))?;
    io.register(Box::new(DebugExit))?;
    io.register(Box::new(Pit::new(clock)))?;
    io.register(Box::new(Rtc::new(crate::machine::host_date(), 0, clock)))?;
    io.register(Box::new(Pci::new()))?;
    io.register(Box::new(I8042::new()))?;
    io.register(Box::new(Pm::new(loader::PM_BASE, clock)))?;
    io.register(Box::new(PostCode::new()))?;
    io.register(Box::new(fw_cfg))?;
    Ok(io)
}

/// What the guest's firmware configuration device (QEMU's fw_cfg) tells
/// it: its vCPUs, RAM and E820 map, the same values the loaders give.
fn fw_cfg_for(
    config: &GuestConfig,
    mem: &GuestMemory,
) -> Result<devices::fw_cfg::FwCfg, CreateError> {
    use loader::e820::GuestRam;
    let map = loader::guest_e820(config, &mem.ram_ranges()).map_err(CreateError::Load)?;
    let e820: Vec<(u64, u64, u32)> = map
        .entries()
        .iter()
        .map(|e| (e.addr, e.size, e.kind as u32))
        .collect();
    devices::fw_cfg::FwCfg::new(&devices::fw_cfg::FwCfgConfig {
        cpus: config.vcpus as u16,
        ram_bytes: config.memory,
        uuid: [0; 16],
        files: alloc::vec![("etc/e820".into(), devices::fw_cfg::e820_file(&e820))],
    })
    .map_err(CreateError::FwCfg)
}

/// A TSC offset that makes the guest's TSC start at 0 now (as after RESET).
fn power_on_tsc_offset() -> u64 {
    0u64.wrapping_sub(arch::regs::rdtsc())
}

impl Vm {
    /// Creates a VM: RAM and EPT, image loaded, devices registered, vCPUs built.
    pub fn create(
        id: usize,
        config: GuestConfig,
        image: &'static [u8],
        initrd: Option<&'static [u8]>,
    ) -> Result<(Arc<Vm>, Vec<Box<vcpu::Vcpu>>), CreateError> {
        Self::create_with_nics(id, config, image, initrd, crate::net::guest_ports(id))
    }

    /// [`Vm::create`] with the switch ports of its NICs given (a clone's).
    pub fn create_with_nics(
        id: usize,
        config: GuestConfig,
        image: &'static [u8],
        initrd: Option<&'static [u8]>,
        nics: Vec<crate::net::NetPort>,
    ) -> Result<(Arc<Vm>, Vec<Box<vcpu::Vcpu>>), CreateError> {
        let t0 = arch::regs::rdtsc();
        let mem = GuestMemory::new(config.memory).map_err(CreateError::Memory)?;
        if crate::vmx::caps().ept.accessed_dirty {
            // Snapshots restore only what was written since.
            mem.enable_dirty_log();
        }
        let entry = loader::load(&config, image, initrd, &mem).map_err(CreateError::Load)?;
        let cold = arch::regs::rdtsc().saturating_sub(t0);
        let msr_bitmap = mm::alloc_zeroed_page().ok_or(CreateError::NoMemory)?.0;
        let io_bitmaps = match mm::alloc_zeroed(2 * mm::PAGE, mm::PAGE) {
            Some(p) => p.0,
            None => {
                mm::free_zeroed(mm::Hpa(msr_bitmap), mm::PAGE);
                return Err(CreateError::NoMemory);
            }
        };
        vcpu::init_msr_bitmap(msr_bitmap);
        // Every port traps: guests reach only device models.
        // SAFETY: freshly allocated, identity-mapped pages owned by this VM.
        unsafe { core::ptr::write_bytes(io_bitmaps as *mut u8, 0xFF, 2 * mm::PAGE as usize) };
        let console = crate::console::register(&config.name);
        let fw_cfg = match fw_cfg_for(&config, &mem) {
            Ok(f) => f,
            Err(e) => {
                mm::free_zeroed(mm::Hpa(msr_bitmap), mm::PAGE);
                mm::free_zeroed(mm::Hpa(io_bitmaps), 2 * mm::PAGE);
                return Err(e);
            }
        };
        let io = match platform_bus(console, config.vcpus, fw_cfg) {
            Ok(io) => io,
            Err(e) => {
                mm::free_zeroed(mm::Hpa(msr_bitmap), mm::PAGE);
                mm::free_zeroed(mm::Hpa(io_bitmaps), 2 * mm::PAGE);
                return Err(CreateError::Bus(e));
            }
        };
        let vm = Arc::new(Vm {
            id,
            name: config.name.clone(),
            mem,
            image,
            initrd,
            map: io.map().clone(),
            shared: Mutex::new(VmShared { io, end: None }),
            ending: AtomicBool::new(false),
            restarts: AtomicU32::new(0),
            msr_bitmap,
            io_bitmaps,
            entry: Mutex::new(entry),
            tsc_offset: AtomicU64::new(power_on_tsc_offset()),
            first_output: AtomicBool::new(false),
            unmapped: Mutex::new(crate::exits::ept::UnmappedLog::new()),
            console,
            runnable: core::sync::atomic::AtomicUsize::new(0),
            longest_exit: core::sync::atomic::AtomicU64::new(0),
            longest_exit_reason: AtomicU32::new(0),
            timer_lateness: lateness::Lateness::default(),
            pause_flag: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            cold_load_tsc: AtomicU64::new(cold),
            nics,
            nic_slots: spin::Once::new(),
            net_rx: AtomicU64::new(0),
            disk_done: AtomicU64::new(0),
            disk_slots: spin::Once::new(),
            ram_baseline: AtomicU64::new(0),
            stats: stats::VmStats::new(config.vcpus as usize),
            operator: core::sync::atomic::AtomicU8::new(0),
            lapics: (0..config.vcpus)
                .map(|i| Mutex::new(VLapic::new(i, i == 0, tsc_per_bus_tick())))
                .collect(),
            mailbox: (0..config.vcpus).map(|_| irq::Mailbox::default()).collect(),
            config,
        });
        vm.firmware_lapic_setup();
        vm.power_on_mailboxes();
        vm.bind_nics();
        let mut vcpus = Vec::new();
        for i in 0..vm.config.vcpus {
            vcpus.push(Box::new(vcpu::Vcpu::new(vm.clone(), i as usize)));
        }
        Ok((vm, vcpus))
    }

    /// What firmware leaves for an OS: the BSP's local APIC enabled in
    /// virtual-wire mode (LINT0 = ExtINT from the 8259, LINT1 = NMI).
    fn firmware_lapic_setup(&self) {
        let now = self.guest_tsc();
        let mut l = self.lapics[0].lock();
        let _ = l.write_mmio(0xF0, 0x1FF, now);
        let _ = l.write_mmio(0x350, 0x700, now);
        let _ = l.write_mmio(0x360, 0x400, now);
    }

    /// No signals pending; application processors wait for a start-up IPI.
    fn power_on_mailboxes(&self) {
        for (i, m) in self.mailbox.iter().enumerate() {
            m.init.store(false, Ordering::Release);
            m.sipi.store(0, Ordering::Release);
            m.nmi.store(false, Ordering::Release);
            let state = if i == 0 {
                irq::RUNNABLE
            } else {
                irq::WAIT_SIPI
            };
            m.stuck.store(state, Ordering::SeqCst);
        }
    }

    /// Records how the VM ended; the first call wins and is logged.
    /// Returns true when this call ended it.
    pub fn end(&self, how: VmEnd) -> bool {
        let mut s = self.shared.lock();
        if s.end.is_some() {
            return false;
        }
        s.io.flush_all();
        // Queued after the guest's own output, so that it reads in order.
        let (name, c) = (&self.name, self.console);
        let say = |a: core::fmt::Arguments| crate::console::println_after(c, a);
        let ignored = self.unmapped.lock().count;
        if ignored > 0 {
            say(format_args!(
                "vm {name}: {ignored} unmapped accesses ignored (reads gave all-ones, writes dropped)"
            ));
        }
        match &how {
            VmEnd::Exited(code) => say(format_args!("vm {name}: exited code={code}")),
            VmEnd::Crashed(r) => say(format_args!("vm {name}: stopped: {r}")),
            VmEnd::Stopped(r) => say(format_args!("vm {name}: stopped: {r}")),
            VmEnd::PoweredOff => say(format_args!("vm {name}: exited code=0 (powered off)")),
            VmEnd::Reset => say(format_args!("vm {name}: reset requested")),
        }
        self.report_virtio_faults(&s.io);
        self.report_overlays(&mut s.io, "at the end");
        s.end = Some(how);
        self.ending.store(true, Ordering::Release);
        // After the guest's last lines: what its NICs' ports saw, then the
        // ports leave their switches (frames for them are dropped).
        self.report_nics(&say);
        true
    }

    /// Whether a pause is requested or in effect.
    pub fn pause_requested(&self) -> bool {
        self.pause_flag.load(Ordering::Acquire)
    }

    /// Whether every vCPU is parked by a pause.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn ended(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    /// Whether the ended VM should start over, per its policy and restart budget.
    pub fn wants_restart(&self) -> bool {
        match self.operator.load(Ordering::Acquire) {
            OP_STOP => return false,
            OP_RESTART => return true,
            _ => {}
        }
        let s = self.shared.lock();
        let policy = match &s.end {
            Some(VmEnd::Reset) => Policy::Restart,
            Some(e) if e.is_crash() => self.config.on_crash,
            Some(_) => self.config.on_exit,
            None => return false,
        };
        // A rollback without a snapshot to go back to is a cold restart.
        matches!(policy, Policy::Restart | Policy::Rollback)
            && self.restarts.load(Ordering::Acquire) < self.config.max_restarts
    }

    /// Whether the ended VM should go back to its latest snapshot (it
    /// crashed, its manifest says `on_crash = "rollback"` and its restart
    /// budget isn't used up).
    pub fn wants_rollback(&self) -> bool {
        let crashed = self
            .shared
            .lock()
            .end
            .as_ref()
            .is_some_and(|e| e.is_crash());
        crashed
            && self.config.on_crash == Policy::Rollback
            && self.restarts.load(Ordering::Acquire) < self.config.max_restarts
    }

    /// Reloads the image into zeroed RAM and clears the ended state.
    pub fn restart(&self) -> Result<(), loader::LoadError> {
        if self.operator.swap(0, Ordering::AcqRel) == OP_RESTART {
            // The operator's restart does not use up the guest's budget.
            crate::console::println_after(
                self.console,
                format_args!("vm {}: restarting (operator)", self.name),
            );
        } else {
            let n = self.restarts.fetch_add(1, Ordering::AcqRel) + 1;
            crate::console::println_after(
                self.console,
                format_args!(
                    "vm {}: restarting ({n} of at most {})",
                    self.name, self.config.max_restarts
                ),
            );
        }
        let t0 = arch::regs::rdtsc();
        self.ram_baseline.store(0, Ordering::Release);
        self.mem.zero();
        let entry = loader::load(&self.config, self.image, self.initrd, &self.mem)?;
        *self.entry.lock() = entry;
        self.cold_load_tsc
            .store(arch::regs::rdtsc().saturating_sub(t0), Ordering::Relaxed);
        // A restart is a power cycle: every device model goes back to its
        // power-on state through `reset()`, the guest's clocks start from 0
        // (its vCPUs are built anew by the scheduler). Nothing is rebuilt:
        // the manifest entry, and so the device set and its wiring (ports,
        // console, APIC IDs, bus clock), is the same for every run.
        let end = self.guest_tsc();
        self.tsc_offset
            .store(power_on_tsc_offset(), Ordering::Release);
        for l in &self.lapics {
            DeviceState::reset(&mut *l.lock());
        }
        self.firmware_lapic_setup();
        self.power_on_mailboxes();
        {
            let mut s = self.shared.lock();
            // Up to the end of the last run first: the battery-backed RTC
            // keeps the time it showed then.
            let _ = s.io.advance(end);
            self.restart_disks(&mut s.io);
            s.io.reset();
            s.end = None;
        }
        self.net_rx.store(0, Ordering::Release);
        self.attach_nics(true);
        self.ending.store(false, Ordering::Release);
        Ok(())
    }

    /// Console output of the CONSOLE_WRITE hypercall, into the guest's UART
    /// line assembly under one lock (no per-byte port access).
    pub fn console_write(&self, bytes: &[u8]) {
        self.shared.lock().io.console_write(bytes);
    }

    /// Records an exit that took `ticks` from VM exit to the next VM entry.
    pub fn note_exit_time(&self, ticks: u64, reason: u32) {
        if ticks > self.longest_exit.load(Ordering::Relaxed) {
            self.longest_exit.fetch_max(ticks, Ordering::AcqRel);
            self.longest_exit_reason.store(reason, Ordering::Release);
        }
    }

    /// A line per virtio device that a malformed queue or set-up broke
    /// (DEVICE_NEEDS_RESET) during the run.
    fn report_virtio_faults(&self, io: &Bus) {
        for s in io.slots() {
            if let Some(f) = s.last_fault {
                crate::console::println_after(
                    self.console,
                    format_args!(
                        "vm {}: {} 00:{:02x}.0: marked DEVICE_NEEDS_RESET {} time{}, last: {f:?}",
                        self.name,
                        s.name,
                        s.device,
                        s.faults,
                        if s.faults == 1 { "" } else { "s" }
                    ),
                );
            }
        }
    }

    pub fn outcome(&self) -> Option<VmEnd> {
        self.shared.lock().end.clone()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        mm::free_zeroed(mm::Hpa(self.msr_bitmap), mm::PAGE);
        mm::free_zeroed(mm::Hpa(self.io_bitmaps), 2 * mm::PAGE);
    }
}
