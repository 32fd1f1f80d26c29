//! The apply step: performs an [`Outcome`]'s guest-state writes, moves RIP
//! and queues the event, in that order. With `vmexit.rs` the only code of
//! the exit path that touches the VMCS.
use super::outcome::{Inject, Outcome, Rip, Write};
use super::vmexit::{rd, wr, Exit, VmcsError};
use crate::vm::vcpu::{is_fault, Flow, Vcpu};
use arch::vmx::vmcs::{bits, ctrl, guest};

const RFLAGS_RF: u64 = 1 << 16;

fn write(w: &Write) -> Result<(), VmcsError> {
    match *w {
        Write::None => {}
        Write::Rsp(v) => wr!(guest::RSP, v),
        Write::Rflags(v) => wr!(guest::RFLAGS, v),
        Write::Cr0 { shadow, real } => {
            wr!(ctrl::CR0_READ_SHADOW, shadow);
            wr!(guest::CR0, real);
        }
        Write::Cr4 { shadow, real } => {
            wr!(ctrl::CR4_READ_SHADOW, shadow);
            wr!(guest::CR4, real);
        }
        Write::Efer(v) => wr!(guest::IA32_EFER, v),
        Write::EntryIa32e(on) => {
            let c = rd!(ctrl::VMENTRY_CONTROLS);
            let n = if on {
                c | bits::entry::IA32E_MODE_GUEST
            } else {
                c & !bits::entry::IA32E_MODE_GUEST
            };
            if n != c {
                wr!(ctrl::VMENTRY_CONTROLS, n);
            }
        }
        Write::Pat(v) => wr!(guest::IA32_PAT, v),
        Write::SysenterCs(v) => wr!(guest::IA32_SYSENTER_CS, v),
        Write::SysenterEsp(v) => wr!(guest::IA32_SYSENTER_ESP, v),
        Write::SysenterEip(v) => wr!(guest::IA32_SYSENTER_EIP, v),
        Write::Pdptes([p0, p1, p2, p3]) => {
            wr!(guest::PDPTE0, p0);
            wr!(guest::PDPTE1, p1);
            wr!(guest::PDPTE2, p2);
            wr!(guest::PDPTE3, p3);
        }
        Write::TscOffset(v) => wr!(ctrl::TSC_OFFSET, v),
    }
    Ok(())
}

/// Applies `o` for exit `e` of `v`, whose VMCS is current; returns how the
/// run loop goes on. (Inlined into each class path: the handler's Outcome
/// is read where it was built.)
#[inline(always)]
pub fn apply(v: &mut Vcpu, e: &Exit, o: Outcome) -> Result<Flow, VmcsError> {
    for w in o.writes() {
        write(w)?;
    }
    if let Rip::Advance(len) = o.rip {
        if len != 0 {
            wr!(guest::RIP, e.rip.wrapping_add(len));
        }
        // Blocking by STI / MOV SS ends with the instruction (SDM Vol. 3C 25.4.2).
        let st = rd!(guest::INTERRUPTIBILITY_STATE);
        if st & 3 != 0 {
            wr!(guest::INTERRUPTIBILITY_STATE, st & !3);
        }
    }
    if let Some(i) = o.inject {
        let (vector, error_code, cr2) = match i {
            Inject::Exception { vector, error_code } => (vector, error_code, None),
            Inject::PageFault { cr2, code } => (14, Some(code), Some(cr2)),
        };
        v.queue_exception(vector, error_code, cr2);
        // A fault is delivered with RF set, as the CPU's own delivery would
        // (SDM Vol. 3A 6.15, 18.3.1.1).
        if is_fault(vector) {
            let rflags = rd!(guest::RFLAGS);
            wr!(guest::RFLAGS, rflags | RFLAGS_RF);
        }
    }
    Ok(o.flow)
}
