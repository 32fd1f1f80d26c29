//! VMCALL: the hypercall ABI (documented in the README).
//!
//! RAX = call number, RBX/RCX/RDX = arguments, result in RAX. Errors are
//! negative: -1 unknown call, -2 bad address, -3 bad argument, -4 not allowed
//! from CPL > 0. Calls: 0 ABI_VERSION, 1 CONSOLE_WRITE(gpa, len <= 4096),
//! 2 YIELD, 3 SHUTDOWN(code).
use crate::vm::vcpu::{Flow, Vcpu};
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

pub fn handle(v: &mut Vcpu) -> Flow {
    v.advance_rip();
    if v.cpl() != 0 {
        v.regs.gpr[RAX] = EPERM as u64;
        return Flow::Continue;
    }
    let (nr, a0, a1) = (v.regs.gpr[RAX], v.regs.gpr[RBX], v.regs.gpr[RCX]);
    let (ret, flow) = match nr {
        ABI_VERSION => (i64::from(crate::exits::cpuid::ABI_VERSION), Flow::Continue),
        CONSOLE_WRITE => (console_write(v, a0, a1), Flow::Continue),
        YIELD => (0, Flow::Yield),
        SHUTDOWN => (0, Flow::End(VmEnd::Exited(a0 as u32))),
        _ => (ENOSYS, Flow::Continue),
    };
    v.regs.gpr[RAX] = ret as u64;
    flow
}

fn console_write(v: &mut Vcpu, gpa: u64, len: u64) -> i64 {
    if len > MAX_WRITE {
        return EINVAL;
    }
    let vm = v.vm.clone();
    // A copy: another vCPU of this guest may change the buffer meanwhile.
    let mut buf = [0u8; MAX_WRITE as usize];
    let copy = &mut buf[..len as usize];
    if vm.mem.read_into(crate::vm::memory::Gpa(gpa), copy).is_err() {
        return EFAULT;
    }
    // Queued for the console (the oldest queued lines give way when it is
    // full): the call never waits for the serial port.
    vm.console_write(copy);
    len as i64
}
