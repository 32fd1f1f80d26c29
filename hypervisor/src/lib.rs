//! The VMM core. Pure logic here is unit-tested on the host with `cargo test`;
//! hardware paths only run inside the UEFI image.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod acpi;
pub mod bootinfo;
pub mod console;
pub mod firmware;
pub mod heap;
pub mod interrupts;
pub mod lapic;
pub mod loader;
pub mod manifest;
pub mod mm;
pub mod paging;
pub mod percpu;
pub mod platform;
pub mod power;
pub mod smp;
pub mod time;
pub mod vmx;

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
    platform::start(info, stack_top)
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

/// Runs the guests of the manifest on the ESP, then powers off.
pub fn run_guests(info: &'static BootInfo) -> ! {
    match info.file("manifest.toml") {
        None => println!("hv: no manifest at \\hv\\manifest.toml: no guests to run"),
        Some(f) => println!("hv: manifest: {} bytes", f.len),
    }
    println!("hv: summary: 0 guests");
    power::poweroff()
}

/// What an application processor does when it has no vCPU to run.
pub fn ap_idle(_index: usize) -> ! {
    loop {
        arch::regs::hlt();
    }
}
