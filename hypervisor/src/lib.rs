//! The VMM core. Pure logic here is unit-tested on the host with `cargo test`;
//! hardware paths only run inside the UEFI image.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

#[cfg(test)]
mod acpi_gen_tests;
pub mod bootinfo;
pub mod console;
pub mod exits;
pub mod firmware;
pub mod heap;
pub mod hostacpi;
pub mod hostapic;
pub mod hosttimer;
pub mod interrupts;
pub mod machine;
pub mod manage;
pub mod mm;
pub mod nbd;
pub mod net;
pub mod nic;
pub mod paging;
pub mod percpu;
pub mod power;
pub mod sched;
pub mod smp;
pub mod time;
pub mod vm;
pub mod vmx;
pub mod xsave;

pub use bootinfo::BootInfo;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The first line the hypervisor prints.
pub fn banner() {
    println!("hv: ferrovisor {VERSION} starting");
}

/// Switches to the hypervisor's own stack and runs [`start`].
pub fn enter(info: &'static BootInfo, stack_top: u64) -> ! {
    // SAFETY: `stack_top` is the 16-byte aligned top of a loader-owned stack
    // that nothing else uses; `start_on_stack` never returns.
    unsafe {
        core::arch::asm!(
            "mov rsp, {st}",
            "xor ebp, ebp",
            "call {f}",
            "ud2",
            st = in(reg) stack_top,
            f = sym start_on_stack,
            in("rdi") info,
            in("rsi") stack_top,
            options(noreturn)
        )
    }
}

extern "sysv64" fn start_on_stack(info: &'static BootInfo, stack_top: u64) -> ! {
    machine::start(info, stack_top)
}

/// Prints a fatal error, stops the other CPUs and powers off.
pub fn fatal(args: core::fmt::Arguments) -> ! {
    println!("hv: fatal: {args}");
    fatal_stop()
}

/// Stops every other CPU, then powers off.
pub fn fatal_stop() -> ! {
    smp::stop_others();
    power::poweroff()
}

/// The panic path: print where, stop everything.
pub fn on_panic(info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the machine is being stopped; the lock holder may be this CPU.
    unsafe { console::force_unlock() };
    println!("hv: fatal: cpu{}: panic: {}", percpu::current_index(), info);
    fatal_stop()
}

/// Stops the other CPUs and powers off (the normal end of a test run).
pub fn fatal_stop_quiet() -> ! {
    smp::stop_others();
    power::poweroff()
}

/// Runs the guests of the manifest on the ESP; every CPU ends up in the scheduler.
pub fn run_guests(info: &'static BootInfo) -> ! {
    vm::MANIFEST_TSC.store(arch::regs::rdtsc(), core::sync::atomic::Ordering::Relaxed);
    let manifest = match info.file("manifest.toml") {
        None => {
            println!("hv: no manifest at \\hv\\manifest.toml: no guests to run");
            None
        }
        Some(f) => match core::str::from_utf8(f.data()) {
            Err(e) => {
                println!(
                    "hv: manifest: hv/manifest.toml is not UTF-8 text (byte {})",
                    e.valid_up_to()
                );
                None
            }
            Ok(text) => match loader::manifest::parse("hv/manifest.toml", text) {
                // The disk images must be there, in whole sectors, before
                // any guest starts (a manifest with an error runs none).
                Ok(m) => match loader::manifest::validate_files("hv/manifest.toml", &m, |n| {
                    info.file(n).map(|f| f.len as u64)
                }) {
                    Ok(()) => Some(m),
                    Err(e) => {
                        println!("hv: manifest: {e}");
                        None
                    }
                },
                Err(e) => {
                    println!("hv: manifest: {e}");
                    None
                }
            },
        },
    };
    let (hv, guests, networks) = match manifest {
        Some(m) => (m.hypervisor, m.guests, m.networks),
        None => (
            loader::manifest::HvConfig::default(),
            alloc::vec::Vec::new(),
            alloc::vec::Vec::new(),
        ),
    };
    net::setup(&networks, &guests);
    if let Some(a) = hv.address {
        nic::set_static(a, hv.gateway);
    }
    manage::api::configure(hv.api_port, hv.api_token.as_deref(), nic::present());
    sched::configure(
        time::us_to_tsc(u64::from(hv.timeslice_us)),
        hv.poweroff_when_done,
    );
    println!(
        "hv: manifest: {} guest{}, time slice {} us",
        guests.len(),
        if guests.len() == 1 { "" } else { "s" },
        hv.timeslice_us
    );
    for (id, cfg) in guests.into_iter().enumerate() {
        let name = cfg.name.clone();
        let Some(file) = info.file(&cfg.image) else {
            println!("vm {name}: not started: image file \\hv\\{} not found on the ESP (manifest line {})", cfg.image, cfg.line);
            continue;
        };
        let initrd = match &cfg.initrd {
            None => None,
            Some(n) => match info.file(n) {
                Some(f) => Some(f.data()),
                None => {
                    println!("vm {name}: not started: initrd file \\hv\\{n} not found on the ESP (manifest line {})", cfg.line);
                    continue;
                }
            },
        };
        let snapshot = match &cfg.snapshot {
            None => None,
            Some(n) => match info.file(n) {
                Some(f) => Some(f.data()),
                None => {
                    println!("vm {name}: not started: snapshot file \\hv\\{n} not found on the ESP (manifest line {})", cfg.snapshot_line);
                    continue;
                }
            },
        };
        let desc = loader::describe(&cfg.kind);
        let (mem, vcpus) = (cfg.memory, cfg.vcpus);
        let (free0, heap0) = (mm::free_bytes(), heap::usage().0 as u64);
        let created = vm::Vm::create(id, cfg, file.data(), initrd).and_then(|(vm, v)| {
            // The disks, before the overhead is measured: their devices count.
            let disks = vm.config.disks.clone();
            vm::disks::attach(id, &vm, &disks, &|n| info.file(n).map(|f| f.data()))
                .map_err(vm::CreateError::Disk)?;
            // Then the NICs (the guest's ACPI _PRT lists disks, then NICs).
            vm.attach_nics_to_bus().map_err(|e| {
                nbd::release(&alloc::sync::Arc::downgrade(&vm));
                vm::CreateError::Bus(e)
            })?;
            let mut v = v;
            if let Some(file) = snapshot {
                // Started from the snapshot's state instead of the loader's.
                vm::snapshot::start_from_file(&vm, file, &mut v).map_err(|e| {
                    nbd::release(&alloc::sync::Arc::downgrade(&vm));
                    vm::CreateError::Snapshot(alloc::format!(
                        "snapshot file \\hv\\{} (manifest line {}): {e}",
                        vm.config.snapshot.as_deref().unwrap_or(""),
                        vm.config.snapshot_line
                    ))
                })?;
                println!(
                    "vm {}: starts from snapshot file \\hv\\{} (manifest line {})",
                    vm.name,
                    vm.config.snapshot.as_deref().unwrap_or(""),
                    vm.config.snapshot_line
                );
            }
            Ok((vm, v))
        });
        match created {
            Ok((vm, vcpus_v)) => {
                let frames = free0
                    .saturating_sub(mm::free_bytes())
                    .saturating_sub(vm.mem.size());
                let heap_used = (heap::usage().0 as u64).saturating_sub(heap0);
                let ept = vm.mem.ept_bytes();
                println!(
                    "vm {name}: memory overhead {} KiB for {} MiB of RAM (EPT {} KiB, VMCS+XSAVE+bitmaps {} KiB, heap {} KiB)",
                    (frames + heap_used) >> 10,
                    mem >> 20,
                    ept >> 10,
                    frames.saturating_sub(ept) >> 10,
                    heap_used >> 10
                );
                let host = vm.mem.ranges.first().map_or(0, |r| r.host.0);
                println!(
                    "vm {name}: started ({} MiB at host {:#x}, {} vcpu{}, {}, image {} bytes, EPT {} KiB)",
                    mem >> 20,
                    host,
                    vcpus,
                    if vcpus == 1 { "" } else { "s" },
                    desc,
                    file.len,
                    vm.mem.ept_bytes() >> 10
                );
                vm.report_disks_attached();
                sched::add_vm(vm, vcpus_v);
            }
            Err(e) => println!("vm {name}: not started: {e}"),
        }
    }
    vm::disks::report_gold();
    sched::start();
    sched::cpu_loop()
}

/// What an application processor does once it is in VMX root operation.
pub fn ap_idle(_index: usize) -> ! {
    sched::cpu_loop()
}
