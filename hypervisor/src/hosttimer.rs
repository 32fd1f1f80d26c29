//! The host's own timer, used only to end an idle CPU's HLT when a sleeping
//! vCPU's timer is due: the local APIC in TSC-deadline mode (SDM 11.5.4.1).
//! Without TSC-deadline support an idle CPU with a due time polls instead.
use arch::cpuid::{cpuid, leaf1_ecx};
use arch::msr::{rdmsr, wrmsr, IA32_TSC_DEADLINE};

pub const TIMER_VECTOR: u8 = 0xF1;

pub fn tsc_deadline_supported() -> bool {
    cpuid(1, 0).ecx & leaf1_ecx::TSC_DEADLINE != 0
}

fn x2apic() -> bool {
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC.
    unsafe { rdmsr(arch::msr::IA32_APIC_BASE) & (1 << 10) != 0 }
}

/// Programs this CPU's LVT timer for TSC-deadline interrupts on TIMER_VECTOR.
pub fn init_this_cpu() {
    if !tsc_deadline_supported() {
        return;
    }
    let lvt = u32::from(TIMER_VECTOR) | (2 << 17);
    if x2apic() {
        // SAFETY: the LVT timer MSR exists in x2APIC mode.
        unsafe { wrmsr(0x832, u64::from(lvt)) };
    } else {
        // SAFETY: the LVT timer register in the identity-mapped xAPIC page.
        unsafe {
            let base = rdmsr(arch::msr::IA32_APIC_BASE) & 0xF_FFFF_F000;
            ((base + 0x320) as *mut u32).write_volatile(lvt);
        }
    }
}

/// Arms (or with `None` disarms) the deadline. Returns false when the CPU
/// can't, in which case the caller must not sleep past `deadline`.
pub fn arm(deadline: Option<u64>) -> bool {
    if !tsc_deadline_supported() {
        return deadline.is_none();
    }
    // SAFETY: IA32_TSC_DEADLINE exists when CPUID reports TSC-deadline; 0 disarms.
    unsafe { wrmsr(IA32_TSC_DEADLINE, deadline.map_or(0, |d| d.max(1))) };
    true
}
