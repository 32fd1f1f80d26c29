//! Small CPU helpers: time stamp counter, control registers, XCRs.

use core::arch::asm;

/// CR0.MP: monitor coprocessor.
pub const CR0_MP: u64 = 1 << 1;
/// CR0.EM: x87 emulation (SSE raises #UD while set).
pub const CR0_EM: u64 = 1 << 2;
/// CR0.TS: task switched (FPU/SSE raise #NM while set).
pub const CR0_TS: u64 = 1 << 3;
/// CR4.OSFXSR: FXSAVE/FXRSTOR and SSE enabled.
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXMMEXCPT: unmasked SIMD floating-point exceptions raise #XM.
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// CR4.OSXSAVE: XSAVE, XGETBV/XSETBV enabled.
pub const CR4_OSXSAVE: u64 = 1 << 18;

/// RDTSC (not ordered against surrounding instructions).
#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads the time stamp counter only.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// RDTSC fenced with LFENCE on both sides, so that it neither starts before
/// earlier instructions finish nor lets later ones start before it.
#[inline]
pub fn rdtsc_ordered() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: LFENCE and RDTSC only order execution and read the TSC.
    unsafe {
        asm!("lfence", "rdtsc", "lfence", out("eax") lo, out("edx") hi, options(nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Reads CR0.
pub fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reads CR0 only.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Writes CR0.
///
/// # Safety
/// The value must keep the guest's paging and protection working.
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: per the caller.
    unsafe { asm!("mov cr0, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Reads CR4.
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reads CR4 only.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Writes CR4.
///
/// # Safety
/// The value must keep the guest's paging and protection working.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: per the caller.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// XGETBV of XCR `index`.
///
/// # Safety
/// CR4.OSXSAVE must be set and `index` valid (else #UD / #GP).
pub unsafe fn xgetbv(index: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: per the caller; XGETBV only reads an XCR.
    unsafe {
        asm!("xgetbv", in("ecx") index, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}
