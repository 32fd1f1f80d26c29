//! XSETBV: validated against the components guests are offered (those CPUID
//! leaf 0DH reports, see `xsave::Layout`) and the architectural
//! rules (SDM Vol. 1 13.3); anything invalid injects #GP.
use super::outcome::Inject;
use super::vmexit::{Exit, Info};
use super::{Guest, Outcome};
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

/// XSETBV (SDM Vol. 2C XSETBV): XCR0 loaded, or #GP.
// Not inlined into the dispatcher: its Outcome is then built in the
// caller's return slot, not copied there.
#[inline(never)]
pub fn handle<G: Guest>(g: &mut G, e: &Exit) -> Outcome {
    let Info::Cpl(cpl) = e.info else {
        return super::wrong_info(e);
    };
    let gpr = g.gprs();
    let index = gpr[RCX] as u32;
    let value = (gpr[RDX] << 32) | (gpr[RAX] & 0xFFFF_FFFF);
    if index != 0 || cpl != 0 || !valid_xcr0(value, g.xcr0_supported()) {
        return Outcome::fault(Inject::GP0);
    }
    g.load_xcr0(value);
    Outcome::advance(e.len)
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
