//! The world switch: load guest GPRs, VMLAUNCH/VMRESUME, and on VM exit save
//! them again and return to Rust as if from a call (SDM Vol. 3C 28.5, 31.3).
//! The host RSP in the VMCS points just below the saved callee-saved registers.

/// Guest general-purpose registers, indexed by the SDM's register numbers
/// (0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP (unused: RSP lives in the VMCS), 5 RBP,
/// 6 RSI, 7 RDI, 8..15 R8..R15), as used in exit qualifications.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestRegs {
    pub gpr: [u64; 16],
}

pub const RAX: usize = 0;
pub const RCX: usize = 1;
pub const RDX: usize = 2;
pub const RBX: usize = 3;
pub const RSP: usize = 4;
pub const RBP: usize = 5;
pub const RSI: usize = 6;
pub const RDI: usize = 7;

core::arch::global_asm!(
    r#"
.section .text
.global hv_vmx_run
hv_vmx_run:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rdi
    mov rax, 0x6C14
    vmwrite rax, rsp
    jbe 3f
    mov rax, rdi
    mov rcx, [rax + 8*1]
    mov rdx, [rax + 8*2]
    mov rbx, [rax + 8*3]
    mov rbp, [rax + 8*5]
    mov r8,  [rax + 8*8]
    mov r9,  [rax + 8*9]
    mov r10, [rax + 8*10]
    mov r11, [rax + 8*11]
    mov r12, [rax + 8*12]
    mov r13, [rax + 8*13]
    mov r14, [rax + 8*14]
    mov r15, [rax + 8*15]
    test rsi, rsi
    mov rsi, [rax + 8*6]
    mov rdi, [rax + 8*7]
    mov rax, [rax + 8*0]
    jz 2f
    vmresume
    jmp 3f
2:
    vmlaunch
3:
    // VMfail: the instruction fell through; report it.
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    mov eax, 1
    ret

.global hv_vmx_exit
hv_vmx_exit:
    push rax
    mov rax, [rsp + 8]
    mov [rax + 8*1], rcx
    mov [rax + 8*2], rdx
    mov [rax + 8*3], rbx
    mov [rax + 8*5], rbp
    mov [rax + 8*6], rsi
    mov [rax + 8*7], rdi
    mov [rax + 8*8], r8
    mov [rax + 8*9], r9
    mov [rax + 8*10], r10
    mov [rax + 8*11], r11
    mov [rax + 8*12], r12
    mov [rax + 8*13], r13
    mov [rax + 8*14], r14
    mov [rax + 8*15], r15
    pop rcx
    mov [rax + 8*0], rcx
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    xor eax, eax
    ret
"#
);

unsafe extern "sysv64" {
    fn hv_vmx_run(regs: *mut GuestRegs, launched: u64) -> u64;
    fn hv_vmx_exit();
}

/// The host RIP to put in the VMCS.
pub fn exit_rip() -> u64 {
    hv_vmx_exit as *const () as u64
}

/// VMLAUNCH/VMRESUME failed; VM_INSTRUCTION_ERROR says why.
#[derive(Debug)]
pub struct EntryFailed;

/// Enters the guest of the current VMCS. Returns `Ok(())` after a VM exit,
/// `Err(EntryFailed)` when VMLAUNCH/VMRESUME failed.
///
/// # Safety
/// A fully initialised VMCS must be current on this CPU, with HOST_RIP =
/// [`exit_rip`] and the host state of this CPU.
pub unsafe fn enter(regs: &mut GuestRegs, launched: bool) -> Result<(), EntryFailed> {
    // SAFETY: forwarded to the caller; the stub preserves all callee-saved registers.
    match unsafe { hv_vmx_run(regs, u64::from(launched)) } {
        0 => Ok(()),
        _ => Err(EntryFailed),
    }
}
