//! Bring-up of the whole machine after ExitBootServices: memory, page tables,
//! descriptor tables, CPUs, VMX; then the guests.
use crate::bootinfo::{BootInfo, MemoryKind};
use crate::{fatal, mm, paging, percpu, println, smp, time, vmx};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Below this much free RAM the hypervisor refuses to run.
const MIN_FREE_RAM: u64 = 64 << 20;

static VMX_READY: AtomicUsize = AtomicUsize::new(0);
static HOST_CR3: AtomicUsize = AtomicUsize::new(0);

/// A CPU to bring up.
#[derive(Clone, Copy, Debug)]
pub struct Cpu {
    pub apic_id: u32,
}

pub fn start(info: &'static BootInfo, stack_top: u64) -> ! {
    crate::console::init();
    println!(
        "hv: firmware: {} (revision {:#x})",
        info.firmware_vendor, info.firmware_revision
    );
    let (family, model, stepping) = arch::cpuid::family_model_stepping();
    let vendor = arch::cpuid::vendor();
    println!(
        "hv: cpu: {} family {:#x} model {:#x} stepping {}",
        core::str::from_utf8(&vendor).unwrap_or("?"),
        family,
        model,
        stepping
    );

    // Free RAM first; firmware boot-services memory only once nothing of the
    // firmware's (page tables, GDT, IDT, stack) is in use any more.
    let mut top = 0u64;
    let (mut free, mut boot, mut loader) = (0u64, 0u64, 0u64);
    {
        let mut frames = mm::FRAMES.lock();
        for r in &info.memory_map {
            let len = r.pages * mm::PAGE;
            match r.kind {
                MemoryKind::Free => {
                    free += len;
                    add_free(&mut frames, r.start, len);
                }
                MemoryKind::BootServices => boot += len,
                MemoryKind::Loader => loader += len,
                _ => {}
            }
            if r.kind != MemoryKind::Reserved {
                top = top.max(r.end());
            }
        }
    }
    println!(
        "hv: memory: {} regions, {} MiB free, {} MiB firmware boot services, {} MiB loader, top {:#x}",
        info.memory_map.len(),
        free >> 20,
        boot >> 20,
        loader >> 20,
        top
    );
    println!(
        "hv: acpi: {}, smbios: {}",
        info.rsdp.map_or_else(
            || alloc::string::String::from("none"),
            |a| alloc::format!("RSDP at {a:#x}")
        ),
        if info.smbios { "present" } else { "none" }
    );

    let Some(cr3) = paging::build_identity(top).map(u64::from) else {
        fatal(format_args!("out of memory building the host page tables"));
    };
    // SAFETY: the new tables identity-map all RAM and the low 4 GiB, so code,
    // data and stack stay at the same addresses.
    unsafe { arch::regs::write_cr3(cr3) };
    HOST_CR3.store(cr3 as usize, Ordering::Release);
    crate::interrupts::init();
    let bsp_apic = arch::cpuid::apic_id();
    percpu::init_this_cpu(0, bsp_apic, stack_top);
    {
        let mut frames = mm::FRAMES.lock();
        for r in info
            .memory_map
            .iter()
            .filter(|r| r.kind == MemoryKind::BootServices)
        {
            add_free(&mut frames, r.start, r.pages * mm::PAGE);
        }
    }
    let free = mm::free_bytes();
    if free < MIN_FREE_RAM {
        fatal(format_args!(
            "too little memory: {} MiB free after takeover, ferrovisor needs at least {} MiB",
            free >> 20,
            MIN_FREE_RAM >> 20
        ));
    }

    let platform = crate::firmware::discover(info, top.max(4 << 30));
    let cpus = platform.cpus(info, bsp_apic);
    println!(
        "hv: cpus: {} (apic ids {}) from {}",
        cpus.len(),
        join_ids(&cpus),
        platform.cpu_source
    );

    let caps = match vmx::probe() {
        Ok(c) => c,
        Err(e) => fatal(format_args!("{e}")),
    };
    if !crate::xsave::supported() || crate::xsave::area_size() > 8192 {
        fatal(format_args!("this CPU lacks XSAVE (or needs more than 8 KiB for it), which guest FPU/SIMD isolation uses"));
    }
    print_caps(&caps);
    vmx::set_caps(caps);
    let date = host_date();
    println!(
        "hv: rtc: {:04}-{:02}-{:02} {:02}:{:02}:{:02} (host CMOS clock; guests' RTCs start from it)",
        date.year, date.month, date.day, date.hour, date.minute, date.second
    );
    let khz = time::calibrate();
    crate::console::set_byte_time();
    println!("hv: tsc: {} kHz (calibrated against the PIT)", khz);
    // Before the other CPUs start: it owns the PCI ports and page tables.
    crate::nic::init();

    enable_vmx_or_die(0);
    for (index, cpu) in (1..).zip(cpus.iter().filter(|c| c.apic_id != bsp_apic)) {
        if index >= percpu::MAX_CPUS {
            println!(
                "hv: cpu with apic id {} ignored: more than {} cpus",
                cpu.apic_id,
                percpu::MAX_CPUS
            );
            continue;
        }
        if !smp::start_ap(info.trampoline_page, cr3, index, cpu.apic_id, ap_entry) {
            println!("hv: cpu{index}: did not start (apic id {})", cpu.apic_id);
        }
    }
    let expected = percpu::online();
    let mut waited = 0;
    while VMX_READY.load(Ordering::Acquire) < expected && waited < 2000 {
        time::delay_us(1000);
        waited += 1;
    }
    println!(
        "hv: {} of {} cpus in VMX root operation",
        VMX_READY.load(Ordering::Acquire),
        cpus.len()
    );
    let (heap_used, heap_free) = crate::heap::usage();
    println!(
        "hv: memory: loader data (image, heap, stacks, ESP files) {} KiB (heap {} KiB used of {} KiB), host page tables {} KiB, {} MiB free for guests",
        loader >> 10,
        heap_used >> 10,
        (heap_used + heap_free) >> 10,
        paging::TABLE_BYTES.load(Ordering::Relaxed) >> 10,
        mm::free_bytes() >> 20
    );

    crate::run_guests(info)
}

fn add_free(frames: &mut mm::frames::FrameAllocator, start: u64, len: u64) {
    // The first MiB stays with real-mode structures (trampoline, BIOS data).
    let lo = start.max(0x10_0000);
    let end = start + len;
    if end > lo {
        if let Err(e) = frames.add_free(mm::Hpa(lo), end - lo) {
            println!("hv: memory map range {start:#x}+{len:#x} not usable: {e:?}");
        }
    }
}

fn join_ids(cpus: &[Cpu]) -> alloc::string::String {
    let ids: Vec<alloc::string::String> = cpus
        .iter()
        .map(|c| alloc::format!("{}", c.apic_id))
        .collect();
    ids.join(", ")
}

fn print_caps(c: &vmx::VmxCaps) {
    use arch::vmx::vmcs::bits;
    let fc = c.feature_control;
    println!(
        "hv: vmx: revision {:#x}, true controls {}, ept {} (2M {} 1G {}), vpid {}, unrestricted guest {}, preemption timer {} (tsc/{})",
        c.basic.revision_id,
        yes(c.basic.true_controls),
        yes(c.secondary.supports(bits::secondary::ENABLE_EPT)),
        yes(c.ept.pages_2m),
        yes(c.ept.pages_1g),
        yes(c.vpid),
        yes(c.secondary.supports(bits::secondary::UNRESTRICTED_GUEST)),
        yes(c.pin.supports(bits::pin::PREEMPTION_TIMER)),
        c.misc.tsc_ticks_per_timer_tick()
    );
    println!(
        "hv: vmx: IA32_FEATURE_CONTROL {:#x} ({}, vmx outside smx {})",
        fc,
        if fc & 1 != 0 {
            "locked"
        } else {
            "unlocked: the hypervisor sets and locks it"
        },
        if fc & 4 != 0 { "on" } else { "off" }
    );
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn enable_vmx_or_die(index: usize) {
    crate::hostapic::quiesce();
    crate::hosttimer::init_this_cpu();
    if crate::xsave::supported() {
        crate::xsave::enable_on_this_cpu();
    }
    match vmx::enable_on_this_cpu() {
        Ok(region) => {
            let cpu = percpu::current();
            cpu.vmxon_region = region;
            println!(
                "cpu{index}: entered VMX root operation (apic id {})",
                cpu.apic_id
            );
            VMX_READY.fetch_add(1, Ordering::AcqRel);
        }
        Err(e) => fatal(format_args!(
            "cpu{index}: cannot enter VMX root operation: {e}"
        )),
    }
}

extern "sysv64" fn ap_entry(index: u64) -> ! {
    let index = index as usize;
    let rsp: u64;
    // SAFETY: reading RSP has no side effects.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp) };
    percpu::init_this_cpu(index, arch::cpuid::apic_id(), rsp);
    smp::report_started();
    enable_vmx_or_die(index);
    crate::ap_idle(index)
}

static HOST_DATE: spin::Once<devices::rtc::DateTime> = spin::Once::new();

/// The wall-clock date and time read from the host's CMOS RTC at start-up
/// (MC146818: wait for UIP to clear, then read the time registers).
pub fn read_host_rtc() -> devices::rtc::DateTime {
    use arch::regs::{inb, outb};
    let rd = |i: u8| -> u8 {
        // SAFETY: ports 0x70/0x71 are the CMOS index/data ports; reading
        // the clock registers has no side effects (bit 7 keeps NMIs masked
        // as they are).
        unsafe {
            outb(0x70, i);
            inb(0x71)
        }
    };
    for _ in 0..1_000_000 {
        if rd(0x0A) & 0x80 == 0 {
            break;
        }
    }
    let mut regs = [0u8; 10];
    for (i, r) in regs.iter_mut().enumerate() {
        *r = rd(i as u8);
    }
    devices::rtc::parse_cmos_time(regs, rd(0x0B), rd(0x32))
}

/// The host date, read once.
pub fn host_date() -> devices::rtc::DateTime {
    *HOST_DATE.call_once(read_host_rtc)
}
