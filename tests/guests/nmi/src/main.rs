//! Conformance guest for NMI delivery (SDM Vol. 3A 6.7.1, 11.6.1; Vol. 3C
//! 25.3, 26.3): self-NMIs through the local APIC's ICR must each be
//! delivered, one after the other, and an NMI sent while the NMI handler runs
//! must wait until the handler's IRET and then be delivered (never nested).
//! Exits 0 on PASS, 1 on FAIL.
#![no_std]
#![no_main]

use core::arch::global_asm;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use guest_rt::println;

guest_rt::entry!(main);

const APIC: u64 = 0xFEE0_0000;
const ICR_LOW: u64 = APIC + 0x300;
const ICR_HIGH: u64 = APIC + 0x310;
/// Delivery mode NMI (100b), level assert, no shorthand, physical destination.
const ICR_NMI: u32 = (0b100 << 8) | (1 << 14);

#[unsafe(no_mangle)]
static NMI_COUNT: AtomicU64 = AtomicU64::new(0);
#[unsafe(no_mangle)]
static NMI_ACTIVE: AtomicU8 = AtomicU8::new(0);
#[unsafe(no_mangle)]
static NMI_NESTED: AtomicU8 = AtomicU8::new(0);
/// Set: the handler sends one more NMI to this vCPU, then spins a while.
#[unsafe(no_mangle)]
static NMI_SEND_INSIDE: AtomicU8 = AtomicU8::new(0);
#[unsafe(no_mangle)]
static NMI_ICR_HIGH: AtomicU64 = AtomicU64::new(0);

global_asm!(
    ".pushsection .text.nmi_handler, \"ax\"",
    ".globl nmi_handler",
    "nmi_handler:",
    "push rax",
    "push rcx",
    "push rdx",
    "lock inc qword ptr [rip + NMI_COUNT]",
    "cmp byte ptr [rip + NMI_ACTIVE], 0",
    "je 1f",
    "mov byte ptr [rip + NMI_NESTED], 1",
    "1:",
    "mov byte ptr [rip + NMI_ACTIVE], 1",
    "cmp byte ptr [rip + NMI_SEND_INSIDE], 0",
    "je 3f",
    "mov byte ptr [rip + NMI_SEND_INSIDE], 0",
    "mov rdx, qword ptr [rip + NMI_ICR_HIGH]",
    "mov rax, {icr_high}",
    "mov dword ptr [rax], edx",
    "mov rax, {icr_low}",
    "mov dword ptr [rax], {icr_nmi}",
    // Long enough for a wrongly nested NMI to arrive.
    "mov ecx, 20000",
    "2:",
    "pause",
    "dec ecx",
    "jnz 2b",
    "3:",
    "mov byte ptr [rip + NMI_ACTIVE], 0",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "iretq",
    ".popsection",
    icr_high = const ICR_HIGH,
    icr_low = const ICR_LOW,
    icr_nmi = const ICR_NMI,
);

unsafe extern "C" {
    fn nmi_handler();
}

fn send_self_nmi() {
    // SAFETY: the local APIC's MMIO page is mapped (identity map); writing
    // the ICR sends an NMI to this vCPU only.
    unsafe {
        (ICR_HIGH as *mut u32).write_volatile(NMI_ICR_HIGH.load(Ordering::Relaxed) as u32);
        (ICR_LOW as *mut u32).write_volatile(ICR_NMI);
    }
}

fn wait_for(count: u64) -> bool {
    for _ in 0..5_000_000u32 {
        if NMI_COUNT.load(Ordering::SeqCst) >= count {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

fn main(_cmdline: &'static str, _ram_size: u64) -> i32 {
    // SAFETY: reads the APIC ID register of this vCPU's local APIC.
    let id = unsafe { ((APIC + 0x20) as *const u32).read_volatile() } >> 24;
    NMI_ICR_HIGH.store(u64::from(id) << 24, Ordering::Relaxed);
    // SAFETY: the handler saves what it uses and returns with IRETQ.
    unsafe { guest_rt::idt::set_exception_gate(2, nmi_handler as *const () as u64) };
    let mut failures = 0;
    for n in 1..=3 {
        send_self_nmi();
        if wait_for(n) {
            println!("nmi: self-NMI {} delivered", n);
        } else {
            println!(
                "nmi: FAIL self-NMI {} never delivered (count {})",
                n,
                NMI_COUNT.load(Ordering::SeqCst)
            );
            failures += 1;
        }
    }
    NMI_SEND_INSIDE.store(1, Ordering::SeqCst);
    let start = NMI_COUNT.load(Ordering::SeqCst);
    send_self_nmi();
    if wait_for(start + 2) {
        println!("nmi: NMI sent inside the handler delivered after its IRET");
    } else {
        println!(
            "nmi: FAIL NMI sent inside the handler: count {} want {}",
            NMI_COUNT.load(Ordering::SeqCst),
            start + 2
        );
        failures += 1;
    }
    if NMI_NESTED.load(Ordering::SeqCst) != 0 {
        println!("nmi: FAIL an NMI arrived while the NMI handler ran");
        failures += 1;
    }
    if failures == 0 {
        println!("nmi: PASS");
        0
    } else {
        println!("nmi: FAIL {} checks", failures);
        1
    }
}
