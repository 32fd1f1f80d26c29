//! Extended processor state: the host turns XSAVE on so guest FPU/SSE/AVX
//! state can be saved and restored when vCPUs switch (SDM Vol. 1 13).
use arch::cpuid::{cpuid, leaf1_ecx};
use core::sync::atomic::{AtomicU64, Ordering};

static HOST_MASK: AtomicU64 = AtomicU64::new(0);

/// User-state components the hypervisor switches: x87, SSE, AVX, MPX, AVX-512, PKRU.
const SWITCHED: u64 = 0x2FF;

/// Whether this CPU can XSAVE at all.
pub fn supported() -> bool {
    cpuid(1, 0).ecx & leaf1_ecx::XSAVE != 0
}

/// Every XCR0 component the CPU supports that the hypervisor switches.
pub fn host_mask() -> u64 {
    HOST_MASK.load(Ordering::Relaxed)
}

/// Enables CR4.OSXSAVE on this CPU (the BSP also records the mask).
pub fn enable_on_this_cpu() {
    let l = cpuid(0xD, 0);
    let mask = ((u64::from(l.edx) << 32) | u64::from(l.eax)) & SWITCHED;
    HOST_MASK.store(mask, Ordering::Relaxed);
    // SAFETY: XSAVE is supported (checked by the caller); setting OSXSAVE
    // and loading a supported XCR0 changes no memory mapping.
    unsafe {
        arch::regs::write_cr4(arch::regs::read_cr4() | arch::regs::cr4::OSXSAVE);
        arch::regs::xsetbv(0, mask);
    }
}

/// The bytes needed for an XSAVE area holding every supported component.
pub fn area_size() -> u32 {
    cpuid(0xD, 0).ecx
}
