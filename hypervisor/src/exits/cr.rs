//! Control-register accesses that exit: CR0.NE/PG and every constrained CR4
//! bit (read shadows keep the guest's own view), and CR8 (SDM Vol. 3C 25.6.6,
//! 28.1.3). Invalid values inject #GP as the architecture would.
use super::GP;
use crate::vm::vcpu::{Flow, Vcpu};
use crate::vmx::run::RSP;
use arch::msr::{self, rdmsr};
use arch::regs::{cr0, cr4};
use arch::vmx::exit::{CrAccessType, CrQualification};
use arch::vmx::vmcs::{ctrl, guest, ro};

fn fixed(lo: u32, hi: u32) -> (u64, u64) {
    // SAFETY: the fixed-bit MSRs exist in VMX operation.
    unsafe { (rdmsr(lo), rdmsr(hi)) }
}

/// CR4 bits the guest may not change on its own: fixed ones and VMX/SMX.
pub fn cr4_mask() -> u64 {
    let (f0, f1) = fixed(msr::IA32_VMX_CR4_FIXED0, msr::IA32_VMX_CR4_FIXED1);
    (f0 | !f1 | cr4::VMXE | cr4::SMXE) & 0xFFFF_FFFF
}

/// The CR4 the CPU runs with for a guest value.
pub fn real_cr4(v: u64) -> u64 {
    let (f0, _) = fixed(msr::IA32_VMX_CR4_FIXED0, msr::IA32_VMX_CR4_FIXED1);
    v | f0
}

/// The CR0 the CPU runs with for a guest value (PE/PG are free with
/// unrestricted guest, SDM 26.3.1.1).
pub fn real_cr0(v: u64) -> u64 {
    let (f0, _) = fixed(msr::IA32_VMX_CR0_FIXED0, msr::IA32_VMX_CR0_FIXED1);
    v | (f0 & !(cr0::PE | cr0::PG))
}

/// CR0 as the guest sees it: its own bits where the mask gives them to the
/// guest, the read shadow where the hypervisor owns them (SDM 25.6.6).
pub fn visible_cr0() -> u64 {
    let mask = ctrl::CR0_GUEST_HOST_MASK.read().unwrap_or(0);
    (guest::CR0.read().unwrap_or(0) & !mask) | (ctrl::CR0_READ_SHADOW.read().unwrap_or(0) & mask)
}

/// CR4 as the guest sees it.
pub fn visible_cr4() -> u64 {
    let mask = ctrl::CR4_GUEST_HOST_MASK.read().unwrap_or(0);
    (guest::CR4.read().unwrap_or(0) & !mask) | (ctrl::CR4_READ_SHADOW.read().unwrap_or(0) & mask)
}

fn gpr(v: &Vcpu, n: u8) -> u64 {
    if usize::from(n) == RSP {
        guest::RSP.read().unwrap_or(0)
    } else {
        v.regs.gpr[usize::from(n)]
    }
}

fn set_gpr(v: &mut Vcpu, n: u8, val: u64) {
    if usize::from(n) == RSP {
        // SAFETY: the vCPU's VMCS is current.
        let _ = unsafe { guest::RSP.write(val) };
    } else {
        v.regs.gpr[usize::from(n)] = val;
    }
}

/// PDPTE reserved bits (SDM Vol. 3A 4.4.1, Table 4-8): 2:1, 8:5 and 63:52
/// (MAXPHYADDR taken as 52, as the guest page walker does).
const PDPTE_RSVD: u64 = 0x1E6 | 0xFFF0_0000_0000_0000;

/// Loads the four PDPTEs for PAE paging (CR0.PG = 1, CR4.PAE = 1, not
/// IA-32e) after an emulated MOV to CR0 or CR4: with EPT, VM entry takes
/// them from the guest-state area (SDM Vol. 3C 27.3.2.4), so the hypervisor
/// reads them from guest memory as the MOV would have (SDM Vol. 3A 4.4.1).
/// `false` when a present PDPTE has a reserved bit set: the MOV raises #GP
/// and changes nothing. Other paging modes need nothing.
fn load_pdptes(v: &Vcpu, cr0v: u64, cr4v: u64, lma: bool) -> bool {
    if cr0v & cr0::PG == 0 || cr4v & cr4::PAE == 0 || lma {
        return true;
    }
    let cr3 = guest::CR3.read().unwrap_or(0);
    let Some(e) = read_pdptes(cr3, |gpa| v.vm.mem.read_u64(gpa)) else {
        return false;
    };
    // SAFETY: the vCPU's VMCS is current.
    unsafe {
        let _ = guest::PDPTE0.write(e[0]);
        let _ = guest::PDPTE1.write(e[1]);
        let _ = guest::PDPTE2.write(e[2]);
        let _ = guest::PDPTE3.write(e[3]);
    }
    true
}

/// The PDPTEs at CR3[31:5] (PAE paging), read through `read`; `None` if a
/// present one has a reserved bit set (the load faults with #GP).
fn read_pdptes(cr3: u64, read: impl Fn(u64) -> Option<u64>) -> Option<[u64; 4]> {
    let base = cr3 & 0xFFFF_FFE0;
    let mut e = [0u64; 4];
    for (i, slot) in e.iter_mut().enumerate() {
        // Outside RAM reads as all-ones, as an empty bus would: reserved.
        *slot = read(base + 8 * i as u64).unwrap_or(u64::MAX);
        if *slot & 1 != 0 && *slot & PDPTE_RSVD != 0 {
            return None;
        }
    }
    Some(e)
}

fn write_cr0(v: &mut Vcpu, val: u64) -> bool {
    if val >> 32 != 0
        || (val & cr0::PG != 0 && val & cr0::PE == 0)
        || (val & cr0::NW != 0 && val & cr0::CD == 0)
    {
        return false;
    }
    let efer = guest::IA32_EFER.read().unwrap_or(0);
    let cr4v = visible_cr4();
    let lme = efer & (1 << 8) != 0;
    let pg = val & cr0::PG != 0;
    if pg && lme && cr4v & cr4::PAE == 0 {
        return false;
    }
    let lma = pg && lme;
    if !load_pdptes(v, val, cr4v, lma) {
        return false;
    }
    v.set_entry_ia32e(lma);
    // SAFETY: the vCPU's VMCS is current.
    unsafe {
        let _ = guest::IA32_EFER.write((efer & !(1 << 10)) | if lma { 1 << 10 } else { 0 });
        let _ = ctrl::CR0_READ_SHADOW.write(val);
        let _ = guest::CR0.write(real_cr0(val));
    }
    true
}

fn write_cr4(v: &Vcpu, val: u64) -> bool {
    let (_, f1) = fixed(msr::IA32_VMX_CR4_FIXED0, msr::IA32_VMX_CR4_FIXED1);
    let allowed = f1 & !(cr4::VMXE | cr4::SMXE);
    if val & !allowed != 0 {
        return false;
    }
    let efer = guest::IA32_EFER.read().unwrap_or(0);
    let lma = efer & (1 << 10) != 0;
    if lma && val & cr4::PAE == 0 {
        return false;
    }
    if !load_pdptes(v, visible_cr0(), val, lma) {
        return false;
    }
    // SAFETY: the vCPU's VMCS is current.
    unsafe {
        let _ = ctrl::CR4_READ_SHADOW.write(val);
        let _ = guest::CR4.write(real_cr4(val));
    }
    true
}

pub fn handle(v: &mut Vcpu) -> Flow {
    let q = CrQualification::decode(ro::EXIT_QUALIFICATION.read().unwrap_or(0));
    let ok = match (q.access, q.cr) {
        (CrAccessType::MovToCr, 0) => write_cr0(v, gpr(v, q.gpr)),
        (CrAccessType::MovToCr, 4) => write_cr4(v, gpr(v, q.gpr)),
        (CrAccessType::MovToCr, 8) => {
            let val = gpr(v, q.gpr);
            v.cr8 = val & 0xF;
            val >> 4 == 0
        }
        (CrAccessType::MovFromCr, 8) => {
            set_gpr(v, q.gpr, v.cr8);
            true
        }
        (CrAccessType::Lmsw, _) => {
            let shadow = visible_cr0();
            // LMSW loads PE, MP, EM, TS and can't clear PE.
            let new = (shadow & !0xE) | u64::from(q.lmsw_source & 0xF) | (shadow & cr0::PE);
            write_cr0(v, new)
        }
        (CrAccessType::Clts, _) => {
            let shadow = visible_cr0();
            write_cr0(v, shadow & !cr0::TS)
        }
        _ => false,
    };
    if ok {
        v.advance_rip();
    } else {
        v.inject_exception(GP, Some(0));
    }
    Flow::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdptes_from_cr3_with_reserved_bits_checked() {
        // A PDPT at 0x5c6_0020 (32-byte aligned; CR3's low 5 bits ignored).
        // Bits 11:9 are ignored, not reserved.
        let table = [0x1001u64, 0, 0x3E01, 0x4000_0001];
        let read = |gpa: u64| {
            let i = gpa.checked_sub(0x5c6_0020)? / 8;
            table.get(i as usize).copied()
        };
        assert_eq!(read_pdptes(0x5c6_0020 | 0x18, read), Some(table));
        // A present entry with bit 1 (reserved in a PDPTE) set faults...
        let bad = [0x1003u64, 0, 0, 0];
        assert_eq!(
            read_pdptes(0x1000, |g| bad.get(((g - 0x1000) / 8) as usize).copied()),
            None
        );
        // ...a non-present one with junk does not.
        let junk = [0x1001u64, 0xFFFF_FFFF_FFFF_FFFE, 0, 0];
        assert!(read_pdptes(0x1000, |g| junk.get(((g - 0x1000) / 8) as usize).copied()).is_some());
        // A PDPT outside RAM reads as all-ones: present with reserved bits.
        assert_eq!(read_pdptes(0x1000, |_| None), None);
    }
}
