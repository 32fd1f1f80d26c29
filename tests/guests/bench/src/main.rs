//! Exit-cost benchmark for `cargo xtask bench`: times `iterations` rounds of
//! each kind of VM exit with RDTSC (fenced by LFENCE) and prints
//! `bench: <type> <total_tsc> <iterations> <per_iteration>` per type. Under
//! Bochs RDTSC counts instructions, so the numbers are instruction counts.
//!
//! Types, in order: `loop` (the empty timing loop, to subtract), `floor`
//! (VMCALL 0xFFFF0000, the hypervisor's benchmark-only call: exit, skip,
//! resume; `bench: floor unavailable` if it answers ENOSYS or VMCALL
//! faults), `cpuid` (leaf
//! 0), `vmcall` (ABI_VERSION), `pio_device` (IN from the UART LSR 0x3FD),
//! `pio_unclaimed` (IN from an unclaimed port), `rdmsr` (IA32_APIC_BASE),
//! `hlt` (only with `hlt=1`), then `mmio_device` (32-bit read of the local
//! APIC version register) last, announced by `bench: mmio_device start`
//! because a hypervisor without a local APIC model stops the guest there.
//! With `kernel=1` the loops of the core-handled exits and of port I/O then
//! run again the way a kernel runs them (`bench: kernel start`): interrupts
//! on and the local APIC timer ticking (periodic, about 250 Hz under
//! ferrovisor's 100 MHz APIC bus, as Linux's HZ=250), reported as
//! `kernel_floor`, `kernel_cpuid`, `kernel_vmcall`, `kernel_rdmsr`,
//! `kernel_pio_device`, then `bench: kernel timer ticks <n>`.
//! Ends with `bench: done`.
//!
//! `hlt=1` programs the legacy PIC (IRQ0 at vector 0x20) and the PIT at
//! about 1 kHz, then times HLTs with interrupts on (each lasts until the
//! next tick, at most 100 of them); it hangs if the platform has no PIT/PIC
//! to wake it, so it is announced by `bench: hlt start`.
//!
//! Command line: `iterations=<n>` (default 1000), `unclaimed=<hex port>`
//! (default 0x2f0), `hlt=1`, `kernel=1`. Exits 0, or 3 on a bad command line.
#![no_std]
#![no_main]

use core::arch::x86_64::__cpuid;
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::cpu::rdtsc_ordered;
use guest_rt::hypercall as hc;
use guest_rt::io::{inb, outb};
use guest_rt::{cmdline, idt, println, probe};

guest_rt::entry!(main);

const DEFAULT_ITERATIONS: u64 = 1000;
const DEFAULT_UNCLAIMED: u64 = 0x2F0;
/// The hypervisor's benchmark floor call (a `bench` feature build).
const FLOOR: u64 = 0xFFFF_0000;
const UART_LSR: u16 = 0x3FD;
const APIC_BASE_MSR: u32 = 0x1B;
/// Local APIC version register (xAPIC, default base).
const LAPIC_VERSION: u64 = 0xFEE0_0030;
const MAX_HLT: u64 = 100;
/// Vectors of the remapped legacy PICs.
const PIC_VECTORS: u8 = 0x20;
/// PIT input clock / 1193 ≈ 1 kHz.
const PIT_DIVISOR: u16 = 1193;

/// Runs `op` `n` times between two fenced RDTSCs; returns the ticks taken.
#[inline(always)]
fn time(n: u64, mut op: impl FnMut()) -> u64 {
    let start = rdtsc_ordered();
    for _ in 0..n {
        op();
    }
    rdtsc_ordered().wrapping_sub(start)
}

fn report(name: &str, total: u64, n: u64) {
    println!(
        "bench: {} {} {} {}",
        name,
        total,
        n,
        total.checked_div(n).unwrap_or(0)
    );
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR of an MSR this guest can read (checked by the caller).
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// One VMCALL with RAX = `nr`: the RAX it returns (ENOSYS for an unknown
/// call, `nr` itself for the floor call), or `None` where VMCALL faults (not
/// running under ferrovisor).
fn vmcall_probe(nr: u64) -> Option<u64> {
    let ret: u64;
    // SAFETY: VMCALL exits to the hypervisor, which for these calls reads no
    // memory and changes only RAX; elsewhere it raises #UD, which the probe
    // catches.
    let fault = unsafe { probe!("vmcall"; inout("rax") nr => ret, out("rcx") _, out("rdx") _) };
    fault.is_none().then_some(ret)
}

static TICKS: AtomicU64 = AtomicU64::new(0);
static APIC_TICKS: AtomicU64 = AtomicU64::new(0);

/// Local APIC registers (xAPIC, default base) for the kernel-like phase.
const LAPIC_EOI: u64 = 0xFEE0_00B0;
const LAPIC_SVR: u64 = 0xFEE0_00F0;
const LAPIC_LVT_TIMER: u64 = 0xFEE0_0320;
const LAPIC_TIMER_INIT: u64 = 0xFEE0_0380;
const LAPIC_TIMER_DCR: u64 = 0xFEE0_03E0;
const APIC_TIMER_VECTOR: u8 = 0xEF;
const APIC_SPURIOUS_VECTOR: u8 = 0xFF;
/// 4 ms of a 100 MHz APIC bus (divide by 1).
const APIC_PERIOD: u32 = 400_000;

// Local APIC timer interrupt: count, EOI, return.
global_asm!(
    ".pushsection .text.bench_apic_irq, \"ax\"",
    "bench_apic_irq:",
    "push rax",
    "lock inc qword ptr [rip + {ticks}]",
    // A 32-bit MOV zero-extends: the APIC page is above 2 GiB.
    "mov eax, {eoi}",
    "mov dword ptr [rax], 0",
    "pop rax",
    "iretq",
    "bench_apic_spurious:",
    "iretq",
    ".popsection",
    ticks = sym APIC_TICKS,
    eoi = const LAPIC_EOI,
);

// Timer interrupt: count, end the interrupt at both PICs, return.
global_asm!(
    ".pushsection .text.bench_irq, \"ax\"",
    "bench_irq:",
    "push rax",
    "lock inc qword ptr [rip + {ticks}]",
    "mov al, 0x20",
    "out 0xA0, al",
    "out 0x20, al",
    "pop rax",
    "iretq",
    ".popsection",
    ticks = sym TICKS,
);

unsafe extern "C" {
    fn bench_irq();
    fn bench_apic_irq();
    fn bench_apic_spurious();
}

fn lapic_write(reg: u64, value: u32) {
    // SAFETY: a local APIC register of the default xAPIC page, identity-mapped
    // by the runtime; writing it only configures this CPU's APIC.
    unsafe { core::ptr::write_volatile(reg as *mut u32, value) };
}

/// Enables the local APIC and starts its timer, periodic, then turns
/// interrupts on.
fn start_kernel_timer() {
    // SAFETY: both handlers save what they change (nothing but flags and
    // memory) and return with IRETQ; interrupts are off until the STI below.
    unsafe {
        idt::set_gate(APIC_TIMER_VECTOR, bench_apic_irq as *const () as u64);
        idt::set_gate(
            APIC_SPURIOUS_VECTOR,
            bench_apic_spurious as *const () as u64,
        );
    }
    lapic_write(LAPIC_SVR, 0x100 | u32::from(APIC_SPURIOUS_VECTOR));
    lapic_write(LAPIC_TIMER_DCR, 0b1011);
    lapic_write(LAPIC_LVT_TIMER, (1 << 17) | u32::from(APIC_TIMER_VECTOR));
    lapic_write(LAPIC_TIMER_INIT, APIC_PERIOD);
    // SAFETY: the timer's handler is installed.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

fn stop_kernel_timer() {
    // SAFETY: CLI only masks interrupts.
    unsafe { asm!("cli", options(nomem, nostack)) };
    lapic_write(LAPIC_TIMER_INIT, 0);
    lapic_write(LAPIC_LVT_TIMER, 1 << 16);
}

/// The loops of the core-handled exits and port I/O again, with interrupts on
/// and the APIC timer ticking.
fn kernel_phase(n: u64, floor: bool) {
    println!("bench: kernel start");
    start_kernel_timer();
    if floor {
        report(
            "kernel_floor",
            time(n, || {
                hc::hypercall(FLOOR, 0, 0, 0);
            }),
            n,
        );
    }
    report(
        "kernel_cpuid",
        time(n, || {
            __cpuid(0);
        }),
        n,
    );
    report(
        "kernel_vmcall",
        time(n, || {
            hc::abi_version();
        }),
        n,
    );
    report(
        "kernel_rdmsr",
        time(n, || {
            rdmsr(APIC_BASE_MSR);
        }),
        n,
    );
    report(
        "kernel_pio_device",
        time(n, || {
            inb(UART_LSR);
        }),
        n,
    );
    stop_kernel_timer();
    println!(
        "bench: kernel timer ticks {}",
        APIC_TICKS.load(Ordering::Relaxed)
    );
}

/// Remaps the PICs to vectors 0x20..0x2F with only IRQ0 unmasked and starts
/// the PIT's channel 0 at about 1 kHz.
fn start_timer() {
    for v in PIC_VECTORS..PIC_VECTORS + 16 {
        // SAFETY: `bench_irq` saves what it changes and returns with IRETQ;
        // interrupts are off, so none of these vectors can arrive yet.
        unsafe { idt::set_gate(v, bench_irq as *const () as u64) };
    }
    // ICW1 (edge, cascade, ICW4), ICW2 (vector base), ICW3 (cascade on
    // IRQ2), ICW4 (8086 mode), then the masks.
    for (port, value) in [
        (0x20, 0x11),
        (0xA0, 0x11),
        (0x21, PIC_VECTORS),
        (0xA1, PIC_VECTORS + 8),
        (0x21, 0x04),
        (0xA1, 0x02),
        (0x21, 0x01),
        (0xA1, 0x01),
        (0x21, 0xFE),
        (0xA1, 0xFF),
    ] {
        outb(port, value);
    }
    // Channel 0, low then high byte, mode 2 (rate generator).
    outb(0x43, 0x34);
    let [lo, hi] = PIT_DIVISOR.to_le_bytes();
    outb(0x40, lo);
    outb(0x40, hi);
}

fn stop_timer() {
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);
}

fn hlt_once() {
    // SAFETY: STI's one-instruction delay makes STI; HLT wait for the next
    // interrupt without missing it; the handler (bench_irq) returns here and
    // CLI turns interrupts off again.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

fn main(cmd: &'static str, _ram_size: u64) -> i32 {
    let unclaimed = cmdline::get(cmd, "unclaimed")
        .map_or(Some(DEFAULT_UNCLAIMED), cmdline::parse_hex)
        .and_then(|p| u16::try_from(p).ok());
    let (Some(n), Some(unclaimed)) = (
        cmdline::number(cmd, "iterations", DEFAULT_ITERATIONS),
        unclaimed,
    ) else {
        println!("bench: FAIL bad command line");
        return 3;
    };

    report(
        "loop",
        time(n, || {
            // SAFETY: an empty asm statement: keeps the loop, does nothing.
            unsafe { asm!("", options(nomem, nostack, preserves_flags)) }
        }),
        n,
    );

    let has_floor = vmcall_probe(FLOOR) == Some(FLOOR);
    if !has_floor {
        println!("bench: floor unavailable");
    } else {
        report(
            "floor",
            time(n, || {
                hc::hypercall(FLOOR, 0, 0, 0);
            }),
            n,
        );
    }

    report(
        "cpuid",
        time(n, || {
            __cpuid(0);
        }),
        n,
    );

    if vmcall_probe(hc::ABI_VERSION).is_none() {
        println!("bench: vmcall unavailable");
    } else {
        report(
            "vmcall",
            time(n, || {
                hc::abi_version();
            }),
            n,
        );
    }

    report(
        "pio_device",
        time(n, || {
            inb(UART_LSR);
        }),
        n,
    );

    report(
        "pio_unclaimed",
        time(n, || {
            inb(unclaimed);
        }),
        n,
    );

    // SAFETY: RDMSR only reads an MSR or faults; the probe catches faults.
    let fault = unsafe { probe!("rdmsr"; in("ecx") APIC_BASE_MSR, out("eax") _, out("edx") _) };
    if fault.is_some() {
        println!("bench: rdmsr unavailable");
    } else {
        report(
            "rdmsr",
            time(n, || {
                rdmsr(APIC_BASE_MSR);
            }),
            n,
        );
    }

    if cmdline::flag(cmd, "hlt") {
        println!("bench: hlt start");
        start_timer();
        hlt_once(); // align to a tick
        let m = n.min(MAX_HLT);
        let before = TICKS.load(Ordering::Relaxed);
        let total = time(m, hlt_once);
        stop_timer();
        let woken = TICKS.load(Ordering::Relaxed) - before;
        report("hlt", total, m);
        if woken < m {
            println!("bench: hlt woken by {} ticks for {} halts", woken, m);
        }
    }

    println!("bench: mmio_device start");
    report(
        "mmio_device",
        time(n, || {
            // SAFETY: a read of the local APIC version register, which has no
            // side effects (or, without an APIC model, stops the guest).
            unsafe { core::ptr::read_volatile(LAPIC_VERSION as *const u32) };
        }),
        n,
    );

    if cmdline::flag(cmd, "kernel") {
        kernel_phase(n, has_floor);
    }

    println!("bench: done");
    0
}
