//! Conformance guest: the state an application processor starts in after
//! INIT-SIPI-SIPI (SDM Vol. 3A Table 10-1, INIT column; 9.4.4.2 for CS).
//! The BSP starts AP 1 through the runtime's trampoline, which records the
//! AP's registers at its first real-mode instruction; the BSP prints them
//! and checks each against the table.
#![no_std]
#![no_main]

use core::arch::x86_64::__cpuid;
use core::sync::atomic::{AtomicBool, Ordering};
use guest_rt::cpu::rdtsc;
use guest_rt::{println, smp};

guest_rt::entry!(main);

static AP_UP: AtomicBool = AtomicBool::new(false);

#[repr(C, align(16))]
struct Stack([u8; 16384]);
static mut AP_STACK: Stack = Stack([0; 16384]);

extern "C" fn ap_main() -> ! {
    AP_UP.store(true, Ordering::Release);
    guest_rt::halt_forever()
}

fn check(failures: &mut u32, what: &str, got: u32, want: u32) {
    if got == want {
        println!("apstate: {} = {:#x} ok", what, got);
    } else {
        println!("apstate: FAIL {} = {:#x}, want {:#x}", what, got, want);
        *failures += 1;
    }
}

fn main(_cmd: &'static str, _ram_size: u64) -> i32 {
    // The processor signature as this guest's CPUID gives it.
    let signature = __cpuid(1).eax;
    let top = (&raw const AP_STACK) as u64 + core::mem::size_of::<Stack>() as u64;
    // SAFETY: the trampoline page is unused low RAM; the stack is the AP's
    // alone; `ap_main` never returns.
    unsafe { smp::start_ap(1, ap_main, top) };
    let t = rdtsc();
    while !AP_UP.load(Ordering::Acquire) && rdtsc().wrapping_sub(t) < 200_000_000 {
        core::hint::spin_loop();
    }
    let Some(st) = smp::first_state() else {
        println!("apstate: FAIL the AP did not record its start state");
        return 1;
    };
    if !AP_UP.load(Ordering::Acquire) {
        println!("apstate: FAIL the AP did not reach long mode");
    }
    let mut f = 0;
    let vector = (smp::TRAMPOLINE >> 12) as u32;
    check(&mut f, "EDX (processor signature)", st.edx, signature);
    check(&mut f, "ESP", st.esp, 0);
    check(&mut f, "EAX (no BIST)", st.eax, 0);
    for (name, v) in [
        ("EBX", st.ebx),
        ("ECX", st.ecx),
        ("ESI", st.esi),
        ("EDI", st.edi),
        ("EBP", st.ebp),
    ] {
        check(&mut f, name, v, 0);
    }
    check(&mut f, "EFLAGS", st.eflags, 0x2);
    // CD and NW as after RESET (this AP never ran), ET; NE clear.
    check(&mut f, "CR0", st.cr0, 0x6000_0010);
    check(&mut f, "CR4", st.cr4, 0);
    check(&mut f, "DR6", st.dr6, 0xFFFF_0FF0);
    check(&mut f, "DR7", st.dr7, 0x400);
    check(&mut f, "CS", u32::from(st.sel[0]), vector << 8);
    // Base 0: a read at the probe's linear address gives the probe.
    for (i, (name, base)) in [
        ("DS", "DS base"),
        ("ES", "ES base"),
        ("SS", "SS base"),
        ("FS", "FS base"),
        ("GS", "GS base"),
    ]
    .into_iter()
    .enumerate()
    {
        check(&mut f, name, u32::from(st.sel[i + 1]), 0);
        check(&mut f, base, st.probe[i].wrapping_sub(smp::PROBE), 0);
    }
    check(&mut f, "GDTR limit", u32::from(st.gdtr.0), 0xFFFF);
    check(&mut f, "GDTR base", st.gdtr.1, 0);
    check(&mut f, "IDTR limit", u32::from(st.idtr.0), 0xFFFF);
    check(&mut f, "IDTR base", st.idtr.1, 0);
    if f == 0 && AP_UP.load(Ordering::Acquire) {
        println!("apstate: PASS");
        0
    } else {
        println!("apstate: {} checks failed", f);
        1
    }
}
