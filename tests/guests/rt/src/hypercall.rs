//! ferrovisor hypercalls: VMCALL with RAX = number, RBX/RCX/RDX = arguments,
//! result in RAX (negative as i64 = error).

use crate::start::halt_forever;
use core::arch::asm;

pub const ABI_VERSION: u64 = 0;
pub const CONSOLE_WRITE: u64 = 1;
pub const YIELD: u64 = 2;
pub const SHUTDOWN: u64 = 3;

pub const ENOSYS: i64 = -1;
pub const EFAULT: i64 = -2;
pub const EINVAL: i64 = -3;
/// Hypercalls from CPL > 0.
pub const EPERM: i64 = -4;

/// Largest CONSOLE_WRITE length the hypervisor accepts.
pub const CONSOLE_WRITE_MAX: u64 = 4096;

/// Issues a raw hypercall and returns RAX.
pub fn hypercall(nr: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    let ret: u64;
    // SAFETY: VMCALL exits to the hypervisor, which may read guest memory
    // (the asm is not `nomem`, so buffers are in memory) but never writes
    // it. RBX is reserved by LLVM, so it is swapped in and out by hand.
    unsafe {
        asm!(
            "xchg {a1}, rbx",
            "vmcall",
            "xchg {a1}, rbx",
            a1 = inout(reg) a1 => _,
            inout("rax") nr => ret,
            inout("rcx") a2 => _,
            inout("rdx") a3 => _,
            options(nostack),
        );
    }
    ret
}

/// ABI_VERSION: the hypercall ABI version (1).
pub fn abi_version() -> i64 {
    hypercall(ABI_VERSION, 0, 0, 0) as i64
}

/// CONSOLE_WRITE of `len` bytes at guest-physical `addr`.
pub fn console_write_raw(addr: u64, len: u64) -> i64 {
    hypercall(CONSOLE_WRITE, addr, len, 0) as i64
}

/// CONSOLE_WRITE of a buffer (guest memory is identity mapped, so its
/// address is its guest-physical address).
pub fn console_write(buf: &[u8]) -> i64 {
    console_write_raw(buf.as_ptr() as u64, buf.len() as u64)
}

/// YIELD: returns 0.
pub fn yield_now() -> i64 {
    hypercall(YIELD, 0, 0, 0) as i64
}

/// SHUTDOWN with `code`; halts if the hypervisor returns anyway.
pub fn exit_hypercall(code: u8) -> ! {
    hypercall(SHUTDOWN, u64::from(code), 0, 0);
    halt_forever()
}
