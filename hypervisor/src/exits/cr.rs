//! Control-register accesses that exit: CR0.NE/PG and every constrained CR4
//! bit (read shadows keep the guest's own view), and CR8, which is the local
//! APIC's TPR (SDM Vol. 3C 25.6.6, 28.1.3; Vol. 3A 11.8.6). Invalid values
//! inject #GP as the architecture would, never reach the VMCS.
use super::outcome::{Inject, Rip, Write};
use super::vmexit::{CrExit, Exit, Info};
use super::{Guest, Outcome};
use crate::vmx::run::RSP;
use arch::msr::{self, rdmsr};
use arch::regs::{cr0, cr4};
use arch::vmx::exit::CrAccessType;

fn fixed(lo: u32, hi: u32) -> (u64, u64) {
    // SAFETY: the fixed-bit MSRs exist in VMX operation.
    unsafe { (rdmsr(lo), rdmsr(hi)) }
}

/// CR4 bits the guest may not change on its own: fixed ones, VMX/SMX and
/// those of features hidden from it.
pub fn cr4_mask() -> u64 {
    let (f0, f1) = fixed(msr::IA32_VMX_CR4_FIXED0, msr::IA32_VMX_CR4_FIXED1);
    (f0 | !f1 | cr4::VMXE | cr4::SMXE | hidden_cr4()) & 0xFFFF_FFFF
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

/// CR4.LA57 and CR4.CET: no constants in `arch` for them yet.
const CR4_LA57: u64 = 1 << 12;
const CR4_CET: u64 = 1 << 23;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// CR4 bits of features CPUID hides from guests: setting them is #GP, so
/// they must exit (they are in the guest/host mask).
pub fn hidden_cr4() -> u64 {
    let l7 = arch::cpuid::cpuid(7, 0).ecx;
    let pke = if super::cpuid::pku_offered(l7, &crate::xsave::guest_layout()) {
        0
    } else {
        cr4::PKE
    };
    pke | CR4_CET
}

/// What the architectural checks of a MOV to CR0/CR4 depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrState {
    /// CR0 and CR4 as the guest sees them before the write.
    pub cr0: u64,
    pub cr4: u64,
    pub cr3: u64,
    pub efer: u64,
    /// CS.L: the guest is in 64-bit mode (with EFER.LMA).
    pub cs_l: bool,
}

/// MOV to CR0 (SDM Vol. 2B MOV; Vol. 3A 2.5, 10.8.5): the new EFER.LMA, or
/// None for #GP.
pub fn check_cr0(s: &CrState, val: u64) -> Option<bool> {
    if val >> 32 != 0
        || (val & cr0::PG != 0 && val & cr0::PE == 0)
        || (val & cr0::NW != 0 && val & cr0::CD == 0)
    {
        return None;
    }
    let lme = s.efer & EFER_LME != 0;
    let lma = s.efer & EFER_LMA != 0;
    let pg = val & cr0::PG != 0;
    let was_pg = s.cr0 & cr0::PG != 0;
    // Activating IA-32e mode needs PAE paging.
    if pg && !was_pg && lme && s.cr4 & cr4::PAE == 0 {
        return None;
    }
    // Leaving IA-32e mode: only from compatibility mode, with PCIDE clear.
    if !pg && lma && (s.cs_l || s.cr4 & cr4::PCIDE != 0) {
        return None;
    }
    Some(pg && lme)
}

/// MOV to CR4 (SDM Vol. 2B MOV; Vol. 3A 2.5, 4.10.1): whether it is allowed;
/// `allowed` are the bits this CPU may set for a guest.
pub fn check_cr4(s: &CrState, val: u64, allowed: u64) -> bool {
    let lma = s.efer & EFER_LMA != 0;
    let changed = s.cr4 ^ val;
    if val & !allowed != 0 {
        return false;
    }
    // IA-32e mode can't be left by clearing PAE, and LA57 can't change in it.
    if lma && (val & cr4::PAE == 0 || changed & CR4_LA57 != 0) {
        return false;
    }
    // PCIDE may be set only in IA-32e mode and with CR3[11:0] = 0.
    if changed & val & cr4::PCIDE != 0 && (!lma || s.cr3 & 0xFFF != 0) {
        return false;
    }
    true
}

/// MOV to CR8: TPR[7:4] = CR8[3:0], TPR[3:0] = 0; bits 63:4 are reserved
/// (SDM Vol. 3A 11.8.6.1, Vol. 2B MOV). None for #GP.
pub fn cr8_to_tpr(val: u64) -> Option<u8> {
    (val >> 4 == 0).then_some((val as u8) << 4)
}

/// MOV from CR8: CR8[3:0] = TPR[7:4].
pub fn tpr_to_cr8(tpr: u8) -> u64 {
    u64::from(tpr >> 4)
}

/// PAE PDPTE bits that must be 0 in a present entry: 2:1, 8:5 and those at
/// or above MAXPHYADDR (SDM Vol. 3A 4.4.1, Table 4-8).
pub fn pdptes_valid(p: &[u64; 4], maxphyaddr: u8) -> bool {
    let high = !0u64 << maxphyaddr.min(63);
    p.iter().all(|&e| e & 1 == 0 || e & (0x1E6 | high) == 0)
}

/// Whether `cr0`/`cr4`/`efer` select PAE paging (not IA-32e).
fn pae_paging(cr0: u64, cr4: u64, lma: bool) -> bool {
    cr0 & cr0::PG != 0 && cr4 & cr4::PAE != 0 && !lma
}

/// Reads the four PDPTEs the way a MOV to CR0/CR4 into PAE paging does
/// (SDM Vol. 3A 4.4.1): with EPT the next VM entry takes them from the VMCS
/// (SDM Vol. 3C 27.3.2.4), so they must be put there. None means #GP.
fn load_pdptes<G: Guest>(g: &G, cr3: u64, maxphyaddr: u8) -> Option<[u64; 4]> {
    let mut b = [0u8; 32];
    // Not RAM: an empty bus reads all-ones, which has reserved bits set.
    if !g.read_ram(cr3 & 0xFFFF_FFE0, &mut b) {
        return None;
    }
    let mut p = [0u64; 4];
    for (e, w) in p.iter_mut().zip(b.chunks_exact(8)) {
        let mut x = [0u8; 8];
        x.copy_from_slice(w);
        *e = u64::from_le_bytes(x);
    }
    pdptes_valid(&p, maxphyaddr).then_some(p)
}

/// The fixed bits of CR0/CR4 in VMX operation and what CR4 bits a guest may
/// set (SDM Vol. 3D A.7, A.8), and the guest's MAXPHYADDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrFixed {
    pub cr0_fixed0: u64,
    pub cr4_fixed0: u64,
    pub cr4_allowed: u64,
    pub maxphyaddr: u8,
}

impl CrFixed {
    /// This CPU's.
    pub fn host() -> Self {
        let (c0, _) = fixed(msr::IA32_VMX_CR0_FIXED0, msr::IA32_VMX_CR0_FIXED1);
        let (f0, f1) = fixed(msr::IA32_VMX_CR4_FIXED0, msr::IA32_VMX_CR4_FIXED1);
        CrFixed {
            cr0_fixed0: c0,
            cr4_fixed0: f0,
            cr4_allowed: f1 & !(cr4::VMXE | cr4::SMXE | hidden_cr4()),
            maxphyaddr: super::msr::maxphyaddr(),
        }
    }

    /// The CR0 the CPU runs with (PE/PG are free with unrestricted guest,
    /// SDM Vol. 3C 26.3.1.1).
    pub fn real_cr0(&self, v: u64) -> u64 {
        v | (self.cr0_fixed0 & !(cr0::PE | cr0::PG))
    }

    pub fn real_cr4(&self, v: u64) -> u64 {
        v | self.cr4_fixed0
    }
}

/// MOV to CR0 (also CLTS and LMSW): the writes, or None for #GP.
fn write_cr0<G: Guest>(g: &G, c: &CrExit, val: u64) -> Option<Outcome> {
    let s = &c.state;
    let lma = check_cr0(s, val)?;
    let mut o = Outcome::resume();
    let reload = (s.cr0 ^ val) & (cr0::PG | cr0::CD | cr0::NW) != 0;
    if reload && pae_paging(val, s.cr4, lma) {
        o.push(Write::Pdptes(load_pdptes(g, s.cr3, c.fixed.maxphyaddr)?));
    }
    o.push(Write::EntryIa32e(lma));
    o.push(Write::Efer(
        (s.efer & !EFER_LMA) | if lma { EFER_LMA } else { 0 },
    ));
    o.push(Write::Cr0 {
        shadow: val,
        real: c.fixed.real_cr0(val),
    });
    Some(o)
}

/// MOV to CR4: the writes, or None for #GP.
fn write_cr4<G: Guest>(g: &G, c: &CrExit, val: u64) -> Option<Outcome> {
    let s = &c.state;
    if !check_cr4(s, val, c.fixed.cr4_allowed) {
        return None;
    }
    let mut o = Outcome::resume();
    let paging_bits = cr4::PAE | cr4::PGE | cr4::PSE | cr4::PCIDE | cr4::SMEP;
    let lma = s.efer & EFER_LMA != 0;
    if (s.cr4 ^ val) & paging_bits != 0 && pae_paging(s.cr0, val, lma) {
        o.push(Write::Pdptes(load_pdptes(g, s.cr3, c.fixed.maxphyaddr)?));
    }
    o.push(Write::Cr4 {
        shadow: val,
        real: c.fixed.real_cr4(val),
    });
    Some(o)
}

/// A control-register exit: the writes and RIP past the instruction, or #GP.
// Not inlined into the dispatcher: its Outcome is then built in the
// caller's return slot, not copied there.
#[inline(never)]
pub fn handle<G: Guest>(g: &mut G, e: &Exit) -> Outcome {
    let Info::Cr(c) = &e.info else {
        return super::wrong_info(e);
    };
    let q = c.q;
    let reg = usize::from(q.gpr & 15);
    let src = if reg == RSP { c.rsp } else { g.gprs()[reg] };
    let shadow = c.state.cr0;
    let done = match (q.access, q.cr) {
        (CrAccessType::MovToCr, 0) => write_cr0(g, c, src),
        (CrAccessType::MovToCr, 4) => write_cr4(g, c, src),
        (CrAccessType::MovToCr, 8) => cr8_to_tpr(src).map(|tpr| {
            g.lapic().set_tpr(tpr);
            Outcome::resume()
        }),
        (CrAccessType::MovFromCr, 8) => {
            let val = tpr_to_cr8(g.lapic().tpr());
            Some(if reg == RSP {
                Outcome::resume().write(Write::Rsp(val))
            } else {
                g.gprs()[reg] = val;
                Outcome::resume()
            })
        }
        // LMSW loads PE, MP, EM, TS and can't clear PE.
        (CrAccessType::Lmsw, _) => write_cr0(
            g,
            c,
            (shadow & !0xE) | u64::from(q.lmsw_source & 0xF) | (shadow & cr0::PE),
        ),
        (CrAccessType::Clts, _) => write_cr0(g, c, shadow & !cr0::TS),
        _ => None,
    };
    match done {
        Some(o) => o.rip(Rip::Advance(e.len)),
        None => Outcome::fault(Inject::GP0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PE_PG: u64 = cr0::PE | cr0::PG | cr0::NE | cr0::ET;

    fn long64() -> CrState {
        CrState {
            cr0: PE_PG,
            cr4: cr4::PAE,
            cr3: 0x1000,
            efer: EFER_LME | EFER_LMA,
            cs_l: true,
        }
    }

    #[test]
    fn cr0_pg_in_ia32e_mode() {
        let s = long64();
        assert_eq!(check_cr0(&s, PE_PG), Some(true));
        assert_eq!(check_cr0(&s, PE_PG & !cr0::PG), None, "64-bit mode");
        let compat = CrState { cs_l: false, ..s };
        assert_eq!(check_cr0(&compat, PE_PG & !cr0::PG), Some(false));
        let pcid = CrState {
            cr4: cr4::PAE | cr4::PCIDE,
            ..compat
        };
        assert_eq!(check_cr0(&pcid, PE_PG & !cr0::PG), None, "PCIDE set");
    }

    #[test]
    fn cr0_basic_rules() {
        let real = CrState {
            cr0: cr0::ET,
            cr4: 0,
            cr3: 0,
            efer: 0,
            cs_l: false,
        };
        assert_eq!(check_cr0(&real, cr0::PE), Some(false));
        assert_eq!(check_cr0(&real, cr0::PG), None, "PG without PE");
        assert_eq!(check_cr0(&real, cr0::PE | cr0::NW), None, "NW without CD");
        assert_eq!(check_cr0(&real, 1 << 32 | cr0::PE), None);
        let lme = CrState {
            efer: EFER_LME,
            ..real
        };
        assert_eq!(check_cr0(&lme, PE_PG), None, "IA-32e needs PAE");
        let lme_pae = CrState {
            cr4: cr4::PAE,
            ..lme
        };
        assert_eq!(check_cr0(&lme_pae, PE_PG), Some(true));
    }

    #[test]
    fn cr4_pcide_pae_la57() {
        let all = !0;
        let s = long64();
        assert!(check_cr4(&s, cr4::PAE | cr4::PCIDE, all));
        assert!(!check_cr4(
            &CrState { cr3: 0x1001, ..s },
            cr4::PAE | cr4::PCIDE,
            all
        ));
        // Already set: CR3[11:0] is a PCID then, no check.
        let on = CrState {
            cr4: cr4::PAE | cr4::PCIDE,
            cr3: 0x1005,
            ..s
        };
        assert!(check_cr4(&on, cr4::PAE | cr4::PCIDE | cr4::PGE, all));
        assert!(check_cr4(&on, cr4::PAE, all), "clearing PCIDE is fine");
        assert!(!check_cr4(&s, 0, all), "PAE cleared in IA-32e mode");
        assert!(!check_cr4(&s, cr4::PAE | CR4_LA57, all));
        let legacy = CrState {
            cr0: cr0::PE,
            cr4: 0,
            cr3: 0,
            efer: 0,
            cs_l: false,
        };
        assert!(!check_cr4(&legacy, cr4::PCIDE, all), "PCIDE outside IA-32e");
        assert!(check_cr4(&legacy, cr4::PAE, all));
        assert!(
            !check_cr4(&legacy, cr4::PKE, all & !cr4::PKE),
            "unsupported bit"
        );
    }

    #[test]
    fn pae_pdpte_reserved_bits() {
        let ok = [0x1001, 0x2001, 0, 0x3000_0001];
        assert!(pdptes_valid(&ok, 36));
        // Not present: nothing else is checked.
        assert!(pdptes_valid(&[0xFFFF_FFFF_FFFF_FFFE, 0, 0, 0], 36));
        for bad in [0x1003, 0x1021, 0x1101, 0x10_0000_1001] {
            assert!(!pdptes_valid(&[0x1001, bad, 0, 0], 36), "{bad:#x}");
        }
        assert!(pdptes_valid(&[0x10_0000_1001, 0, 0, 0], 40));
        assert!(!pdptes_valid(&[!0, !0, !0, !0], 52), "all-ones (no RAM)");
    }

    #[test]
    fn cr8_is_tpr_priority_class() {
        assert_eq!(cr8_to_tpr(0), Some(0));
        assert_eq!(cr8_to_tpr(0xF), Some(0xF0));
        assert_eq!(cr8_to_tpr(0x5), Some(0x50));
        assert_eq!(cr8_to_tpr(0x10), None);
        assert_eq!(cr8_to_tpr(1 << 63), None);
        assert_eq!(tpr_to_cr8(0x5F), 5);
        assert_eq!(tpr_to_cr8(0xF0), 0xF);
    }
}
