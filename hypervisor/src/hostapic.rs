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

/// Signals end of interrupt to the local APIC.
pub fn eoi() {
    if x2apic() {
        // SAFETY: the x2APIC EOI MSR exists in x2APIC mode; writing 0 ends the interrupt.
        unsafe { wrmsr(0x80B, 0) };
    } else {
        // SAFETY: the xAPIC page is identity-mapped; EOI is write-only.
        unsafe { ((mmio_base() + 0xB0) as *mut u32).write_volatile(0) };
    }
}

/// Masks the local APIC timer and LINT0/LINT1 and the legacy 8259 PICs, so
/// that firmware-programmed interrupt sources stay quiet after takeover.
pub fn quiesce() {
    // SAFETY: ports 0x21/0xA1 are the 8259 mask registers; masking all lines
    // only stops legacy interrupts, which the hypervisor doesn't use.
    unsafe {
        arch::regs::outb(0x21, 0xFF);
        arch::regs::outb(0xA1, 0xFF);
    }
    const MASKED: u32 = 1 << 16;
    for reg in [0x320u64, 0x350, 0x360] {
        if x2apic() {
            let m = 0x800 + (reg as u32 >> 4);
            // SAFETY: LVT MSRs exist in x2APIC mode; setting the mask bit is harmless.
            unsafe { wrmsr(m, u64::from(MASKED) | (rdmsr(m) & 0x700)) };
        } else {
            // SAFETY: LVT registers in the identity-mapped xAPIC page.
            unsafe {
                let p = (mmio_base() + reg) as *mut u32;
                p.write_volatile(p.read_volatile() | MASKED);
            }
        }
    }
    // Software-enable the APIC (spurious vector 0xFF) so fixed IPIs arrive.
    if x2apic() {
        // SAFETY: the spurious-interrupt vector register MSR in x2APIC mode.
        unsafe { wrmsr(0x80F, 0x1FF) };
    } else {
        // SAFETY: SVR in the identity-mapped xAPIC page.
        unsafe { ((mmio_base() + 0xF0) as *mut u32).write_volatile(0x1FF) };
    }
}

/// This CPU's local APIC ID as the APIC reports it.
pub fn id() -> u32 {
    if x2apic() {
        // SAFETY: the x2APIC ID MSR exists in x2APIC mode.
        unsafe { rdmsr(0x802) as u32 }
    } else {
        // SAFETY: the ID register in the identity-mapped xAPIC page.
        unsafe { ((mmio_base() + 0x20) as *const u32).read_volatile() >> 24 }
    }
}

/// Vector of the scheduler's wake-up IPI.
pub const WAKE_VECTOR: u8 = 0xF0;
