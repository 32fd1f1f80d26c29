//! VMCALL: the hypercall ABI (documented in the README).
//!
//! RAX = call number, RBX/RCX/RDX = arguments, result in RAX. Errors are
//! negative: -1 unknown call, -2 bad address, -3 bad argument, -4 not allowed
//! from CPL > 0. Calls: 0 ABI_VERSION, 1 CONSOLE_WRITE(gpa, len <= 4096),
//! 2 YIELD, 3 SHUTDOWN(code).
use super::vmexit::{Exit, Info};
use super::{Guest, Outcome};
use crate::vm::vcpu::Flow;
use crate::vm::VmEnd;
use crate::vmx::run::{RAX, RBX, RCX};

pub const ABI_VERSION: u64 = 0;
pub const CONSOLE_WRITE: u64 = 1;
pub const YIELD: u64 = 2;
pub const SHUTDOWN: u64 = 3;

pub const ENOSYS: i64 = -1;
pub const EFAULT: i64 = -2;
pub const EINVAL: i64 = -3;
pub const EPERM: i64 = -4;
pub const MAX_WRITE: u64 = 4096;

/// A hypercall: the result in RAX, RIP past VMCALL.
// Inlined into its class path of `exits::run`, where the apply step then
// sees the Outcome's constant parts (no writes, the RIP advance).
#[inline(always)]
pub fn handle<G: Guest>(g: &mut G, e: &Exit) -> Outcome {
    let Info::Cpl(cpl) = e.info else {
        return super::wrong_info(e);
    };
    if cpl != 0 {
        g.gprs()[RAX] = EPERM as u64;
        return Outcome::advance(e.len);
    }
    let gpr = g.gprs();
    let (nr, a0, a1) = (gpr[RAX], gpr[RBX], gpr[RCX]);
    let (ret, flow) = match nr {
        ABI_VERSION => (i64::from(crate::exits::cpuid::ABI_VERSION), Flow::Continue),
        CONSOLE_WRITE => (console_write(g, a0, a1), Flow::Continue),
        YIELD => (0, Flow::Yield),
        SHUTDOWN => (0, Flow::End(VmEnd::Exited(a0 as u32))),
        _ => (ENOSYS, Flow::Continue),
    };
    g.gprs()[RAX] = ret as u64;
    Outcome::advance(e.len).with_flow(flow)
}

// Out of line: its 4 KiB buffer stays off the stack of the other calls.
#[inline(never)]
fn console_write<G: Guest>(g: &mut G, gpa: u64, len: u64) -> i64 {
    if len > MAX_WRITE {
        return EINVAL;
    }
    // A copy: another vCPU of this guest may change the buffer meanwhile.
    let mut buf = [0u8; MAX_WRITE as usize];
    let copy = &mut buf[..len as usize];
    if !g.read_ram(gpa, copy) {
        return EFAULT;
    }
    // Queued for the console (the oldest queued lines give way when it is
    // full): the call never waits for the serial port.
    g.console_write(copy);
    len as i64
}
