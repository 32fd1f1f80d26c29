//! XSETBV: validated against the components guests are offered (those CPUID
//! leaf 0DH reports, see `xsave::Layout`) and the architectural
//! rules (SDM Vol. 1 13.3); anything invalid injects #GP.
use super::GP;
use crate::vm::vcpu::{Flow, Vcpu};
use crate::vmx::run::{RAX, RCX, RDX};

/// Whether `value` is a valid XCR0 given the supported components.
pub fn valid_xcr0(value: u64, supported: u64) -> bool {
    let x87 = value & 1 != 0;
    let sse = value & 2 != 0;
    let avx = value & 4 != 0;
    let bndregs = value & 8 != 0;
    let bndcsr = value & 16 != 0;
    let avx512 = (value >> 5) & 7;
    x87 && value & !supported == 0
        && (!avx || sse)
        && bndregs == bndcsr
        && (avx512 == 0 || (avx512 == 7 && avx))
}

pub fn handle(v: &mut Vcpu) -> Flow {
    let index = v.regs.gpr[RCX] as u32;
    let value = (v.regs.gpr[RDX] << 32) | (v.regs.gpr[RAX] & 0xFFFF_FFFF);
    if index != 0 || v.cpl() != 0 || !valid_xcr0(value, crate::xsave::guest_mask()) {
        v.inject_exception(GP, Some(0));
        return Flow::Continue;
    }
    v.xcr0 = value;
    // SAFETY: the value passed the architectural checks for this CPU; the host
    // itself uses no extended state, so the guest's XCR0 stays loaded.
    unsafe { arch::regs::xsetbv(0, value) };
    v.advance_rip();
    Flow::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xcr0_rules() {
        let sup = 0x2E7;
        assert!(valid_xcr0(1, sup));
        assert!(valid_xcr0(7, sup));
        assert!(valid_xcr0(0xE7, sup));
        assert!(!valid_xcr0(0, sup), "x87 must be set");
        assert!(!valid_xcr0(5, sup), "AVX needs SSE");
        assert!(!valid_xcr0(0x27, sup), "AVX-512 all or nothing");
        assert!(!valid_xcr0(0xE3, sup), "AVX-512 needs AVX");
        assert!(!valid_xcr0(0x1_0000_0003, sup), "unsupported bit");
        assert!(!valid_xcr0(0xB, 0x2FF), "MPX state bits together");
    }
}
