//! The host page tables: an identity map of all physical memory (and at least
//! the low 4 GiB, for MMIO) with 2 MiB pages, built once and shared by all CPUs.
use crate::mm;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
const HUGE: u64 = 1 << 7;
const TWO_MIB: u64 = 0x20_0000;
const ONE_GIB: u64 = 0x4000_0000;

/// Bytes of host page tables (for the memory report).
pub static TABLE_BYTES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Builds the identity map covering `[0, top)` (rounded up to 1 GiB, at least
/// 4 GiB) and returns the PML4's physical address (below 4 GiB, so APs can
/// load it from 32-bit code).
pub fn build_identity(top: u64) -> Option<mm::Hpa> {
    let top = top.max(4 * ONE_GIB).div_ceil(ONE_GIB) * ONE_GIB;
    let top = top.min(512 * ONE_GIB);
    let pml4 = mm::alloc_zeroed_below(4096, 4 * ONE_GIB)?;
    let pdpt = mm::alloc_zeroed_below(4096, 4 * ONE_GIB)?;
    // SAFETY: the tables are freshly allocated, zeroed, identity-mapped pages.
    unsafe {
        pml4.as_mut_ptr::<u64>().write(pdpt.0 | PRESENT | WRITABLE);
        for g in 0..top / ONE_GIB {
            let pd = mm::alloc_zeroed_below(4096, 4 * ONE_GIB)?;
            for i in 0..512u64 {
                let addr = g * ONE_GIB + i * TWO_MIB;
                pd.as_mut_ptr::<u64>()
                    .add(i as usize)
                    .write(addr | PRESENT | WRITABLE | HUGE);
            }
            pdpt.as_mut_ptr::<u64>()
                .add(g as usize)
                .write(pd.0 | PRESENT | WRITABLE);
        }
    }
    TABLE_BYTES.store(
        (2 + top / ONE_GIB) * 4096,
        core::sync::atomic::Ordering::Relaxed,
    );
    Some(pml4)
}

/// Page-level cache disable and write-through: with the power-on PAT this
/// selects PAT entry 3, UC (SDM Vol. 3A 12.12.3).
const PCD_PWT: u64 = (1 << 4) | (1 << 3);
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Makes `[start, start + len)` uncached in the identity map (for device
/// MMIO such as a NIC's BAR; the 2 MiB pages covering it become UC). Returns
/// false where the range lies outside the map. Call before other CPUs run or
/// while none of them touches the range: only this CPU's TLB is flushed.
pub fn set_uncached(start: u64, len: u64) -> bool {
    let cr3 = arch::regs::read_cr3() & !0xfff;
    let end = start.saturating_add(len.max(1));
    let mut addr = start & !(TWO_MIB - 1);
    while addr < end {
        let (g, i) = (addr / ONE_GIB, (addr % ONE_GIB) / TWO_MIB);
        if g >= 512 {
            return false;
        }
        // SAFETY: the tables are the identity map built above (identity
        // mapped themselves); only present entries are followed and only the
        // cache bits of a present 2 MiB entry change.
        unsafe {
            let pml4e = (cr3 as *const u64).read();
            if pml4e & PRESENT == 0 {
                return false;
            }
            let pdpte = ((pml4e & ADDR_MASK) as *const u64).add(g as usize).read();
            if pdpte & PRESENT == 0 {
                return false;
            }
            let pde = ((pdpte & ADDR_MASK) as *mut u64).add(i as usize);
            if pde.read() & (PRESENT | HUGE) != PRESENT | HUGE {
                return false;
            }
            pde.write(pde.read() | PCD_PWT);
        }
        addr += TWO_MIB;
    }
    // SAFETY: reloading CR3 with its own value only flushes this CPU's TLB.
    unsafe { arch::regs::write_cr3(arch::regs::read_cr3()) };
    true
}
