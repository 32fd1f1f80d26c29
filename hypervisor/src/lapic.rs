//! The host's local APIC, used for IPIs (INIT/SIPI, stop NMIs). Works in xAPIC
//! (MMIO) and x2APIC (MSR) mode, whichever the firmware left enabled (SDM 11.12).
use arch::msr::{rdmsr, wrmsr, IA32_APIC_BASE};

const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
const X2APIC_ICR: u32 = 0x830;
const DELIVERY_PENDING: u32 = 1 << 12;

pub const INIT: u32 = 0x0000_4500; // INIT, level assert
pub const STARTUP: u32 = 0x0000_4600;
pub const NMI: u32 = 0x0000_4400;
/// Destination shorthand "all excluding self".
pub const ALL_BUT_SELF: u32 = 0b11 << 18;

fn base_msr() -> u64 {
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC.
    unsafe { rdmsr(IA32_APIC_BASE) }
}

fn x2apic() -> bool {
    base_msr() & (1 << 10) != 0
}

fn mmio_base() -> u64 {
    base_msr() & 0xF_FFFF_F000
}

/// Sends an IPI: `low` is the ICR low word, `dest` the destination APIC ID.
pub fn send_ipi(dest: u32, low: u32) {
    if x2apic() {
        // SAFETY: the x2APIC ICR MSR exists in x2APIC mode.
        unsafe { wrmsr(X2APIC_ICR, (u64::from(dest) << 32) | u64::from(low)) };
        return;
    }
    let base = mmio_base();
    // SAFETY: the xAPIC page is identity-mapped; ICR writes send an IPI.
    unsafe {
        let hi = (base + ICR_HIGH) as *mut u32;
        let lo = (base + ICR_LOW) as *mut u32;
        hi.write_volatile(dest << 24);
        lo.write_volatile(low);
        let mut n = 0;
        while lo.read_volatile() & DELIVERY_PENDING != 0 && n < 1_000_000 {
            core::hint::spin_loop();
            n += 1;
        }
    }
}
