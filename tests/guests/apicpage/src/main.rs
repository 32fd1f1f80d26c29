//! The xAPIC page is per vCPU (SDM Vol. 3A 11.4.5): with two vCPUs, the BSP
//! moves its own page with IA32_APIC_BASE. Its accesses follow the move and
//! the old address no longer reaches its APIC, while the AP's page stays at
//! the default address and answers with the AP's ID; the BSP's new address
//! reaches no APIC for the AP. Addresses that reach no APIC are the empty
//! bus: reads give all-ones (the default `unmapped_access`).
//!
//! Prints one line per check and `apicpage: PASS`; exits 0, or 1 on a failed check.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU32, Ordering};
use guest_rt::println;

guest_rt::entry!(main);

const XAPIC: u64 = 0xFEE0_0000;
/// Below the I/O APIC page, identity mapped like it.
const RELOCATED: u64 = 0xFEB0_0000;
const ID: u64 = 0x20;
const APIC_BASE: u32 = 0x1B;
const BASE_BSP: u64 = 1 << 8;
const BASE_EN: u64 = 1 << 11;
const EMPTY: u32 = 0xFFFF_FFFF;

/// 1: the AP read its page; 2: the BSP has moved its page; 3: the AP is done.
static STEP: AtomicU32 = AtomicU32::new(0);
static AP_BEFORE: AtomicU32 = AtomicU32::new(0);
static AP_AFTER: AtomicU32 = AtomicU32::new(0);
static AP_AT_RELOCATED: AtomicU32 = AtomicU32::new(0);

#[repr(C, align(16))]
struct Stack([u8; 16384]);
static mut AP_STACK: Stack = Stack([0; 16384]);

fn mmio_read(addr: u64) -> u32 {
    // SAFETY: an identity-mapped local APIC register or an empty-bus address
    // (reads have no side effects there).
    unsafe { (addr as *const u32).read_volatile() }
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// # Safety
/// The new APIC base must keep the guest working (nothing else uses the page).
unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: per the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack))
    };
}

fn wait_for(step: u32) -> bool {
    let t = guest_rt::cpu::rdtsc();
    while STEP.load(Ordering::Acquire) < step {
        if guest_rt::cpu::rdtsc().wrapping_sub(t) > 2_000_000_000 {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

extern "C" fn ap_main() -> ! {
    AP_BEFORE.store(mmio_read(XAPIC + ID), Ordering::Release);
    STEP.store(1, Ordering::Release);
    if wait_for(2) {
        AP_AFTER.store(mmio_read(XAPIC + ID), Ordering::Release);
        AP_AT_RELOCATED.store(mmio_read(RELOCATED + ID), Ordering::Release);
        STEP.store(3, Ordering::Release);
    }
    guest_rt::halt_forever()
}

fn main(_cmd: &'static str, _ram_size: u64) -> i32 {
    let mut ok = true;
    let mut check = |what: &str, got: u32, want: u32| {
        let pass = got == want;
        ok &= pass;
        println!(
            "apicpage: {} {what}: {got:#x} (expected {want:#x})",
            if pass { "ok" } else { "FAIL" }
        );
    };
    let top = (&raw const AP_STACK) as u64 + core::mem::size_of::<Stack>() as u64;
    // SAFETY: the trampoline page is unused low RAM; the stack is the AP's
    // alone; `ap_main` never returns.
    unsafe { guest_rt::smp::start_ap(1, ap_main, top) };
    if !wait_for(1) {
        println!("apicpage: FAIL the second vCPU did not start");
        return 1;
    }
    check(
        "AP's ID at the default page",
        AP_BEFORE.load(Ordering::Acquire),
        1 << 24,
    );
    check("BSP's ID at the default page", mmio_read(XAPIC + ID), 0);
    let base = rdmsr(APIC_BASE);
    // SAFETY: only this function touches the BSP's page until it moves back.
    unsafe { wrmsr(APIC_BASE, RELOCATED | BASE_EN | BASE_BSP) };
    check("BSP's ID at its moved page", mmio_read(RELOCATED + ID), 0);
    check(
        "BSP at the old page (empty bus)",
        mmio_read(XAPIC + ID),
        EMPTY,
    );
    STEP.store(2, Ordering::Release);
    if !wait_for(3) {
        println!("apicpage: FAIL the second vCPU did not finish");
        return 1;
    }
    check(
        "AP's ID at the default page after the BSP moved",
        AP_AFTER.load(Ordering::Acquire),
        1 << 24,
    );
    check(
        "AP at the BSP's moved page (empty bus)",
        AP_AT_RELOCATED.load(Ordering::Acquire),
        EMPTY,
    );
    // SAFETY: back to where it was.
    unsafe { wrmsr(APIC_BASE, base) };
    check(
        "BSP's ID at the default page again",
        mmio_read(XAPIC + ID),
        0,
    );
    if ok {
        println!("apicpage: PASS");
        0
    } else {
        1
    }
}
