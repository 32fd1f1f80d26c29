//! Application-processor start-up: the hypervisor's own INIT-SIPI-SIPI
//! trampoline, run after ExitBootServices so that every CPU executes only
//! hypervisor code (SDM Vol. 3A 9.4.4). The trampoline goes real mode →
//! 32-bit protected mode → long mode on the host page tables.
use crate::{hostapic, percpu, time};
use core::sync::atomic::{AtomicBool, Ordering};

core::arch::global_asm!(
    r#"
.section .text
.global hv_tramp_start, hv_tramp_end, hv_tramp_gdtr, hv_tramp_far32, hv_tramp_far64
.global hv_tramp_cr3, hv_tramp_stack, hv_tramp_arg, hv_tramp_entry, hv_tramp_gdt
.global hv_tramp_prot32, hv_tramp_long64
.code16
hv_tramp_start:
    cli
    cld
    xorl %ebx, %ebx
    movw %cs, %bx
    shll $4, %ebx
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (hv_tramp_gdtr - hv_tramp_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl *(hv_tramp_far32 - hv_tramp_start)
.code32
hv_tramp_prot32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl (hv_tramp_cr3 - hv_tramp_start)(%ebx), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ljmpl *(hv_tramp_far64 - hv_tramp_start)(%ebx)
.code64
hv_tramp_long64:
    movl %ebx, %ebx
    movq (hv_tramp_stack - hv_tramp_start)(%rbx), %rsp
    movq (hv_tramp_arg - hv_tramp_start)(%rbx), %rdi
    movq (hv_tramp_entry - hv_tramp_start)(%rbx), %rax
    callq *%rax
1:  cli
    hlt
    jmp 1b
.align 8
hv_tramp_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
    .quad 0x00CF9B000000FFFF
hv_tramp_gdtr:
    .word 31
    .long 0
.align 4
hv_tramp_far32:
    .long 0
    .word 0x18
.align 4
hv_tramp_far64:
    .long 0
    .word 0x08
.align 4
hv_tramp_cr3:
    .long 0
.align 8
hv_tramp_stack:
    .quad 0
hv_tramp_arg:
    .quad 0
hv_tramp_entry:
    .quad 0
hv_tramp_end:
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static hv_tramp_start: u8;
    static hv_tramp_end: u8;
    static hv_tramp_gdt: u8;
    static hv_tramp_gdtr: u8;
    static hv_tramp_far32: u8;
    static hv_tramp_far64: u8;
    static hv_tramp_prot32: u8;
    static hv_tramp_long64: u8;
    static hv_tramp_cr3: u8;
    static hv_tramp_stack: u8;
    static hv_tramp_arg: u8;
    static hv_tramp_entry: u8;
}

static AP_STARTED: AtomicBool = AtomicBool::new(false);
const AP_STACK: usize = 64 * 1024;

fn off(sym: &u8) -> u64 {
    // SAFETY: only the address of the extern statics is taken.
    sym as *const u8 as u64 - unsafe { &hv_tramp_start as *const u8 as u64 }
}

/// Per-AP entry, called by the trampoline on the AP's own stack.
pub type ApEntry = extern "sysv64" fn(index: u64) -> !;

/// Starts the AP with APIC ID `apic_id` as CPU `index`. Returns whether it
/// reported in within a second.
pub fn start_ap(page: u64, cr3: u64, index: usize, apic_id: u32, entry: ApEntry) -> bool {
    let stack = alloc::boxed::Box::leak(alloc::vec![0u8; AP_STACK].into_boxed_slice());
    let stack_top = (stack.as_ptr() as u64 + AP_STACK as u64) & !0xF;
    // SAFETY: `page` is a loader-owned page below 1 MiB reserved for this
    // trampoline; the copied code is position-independent apart from the
    // fields patched here.
    unsafe {
        let start = &hv_tramp_start as *const u8;
        let len = (&hv_tramp_end as *const u8 as usize) - start as usize;
        core::ptr::copy_nonoverlapping(start, page as *mut u8, len);
        let w32 = |sym: &u8, v: u32| ((page + off(sym)) as *mut u32).write_unaligned(v);
        let w64 = |sym: &u8, v: u64| ((page + off(sym)) as *mut u64).write_unaligned(v);
        w32(
            &*(&hv_tramp_gdtr as *const u8).add(2),
            (page + off(&hv_tramp_gdt)) as u32,
        );
        w32(&hv_tramp_far32, (page + off(&hv_tramp_prot32)) as u32);
        w32(&hv_tramp_far64, (page + off(&hv_tramp_long64)) as u32);
        w32(&hv_tramp_cr3, cr3 as u32);
        w64(&hv_tramp_stack, stack_top);
        w64(&hv_tramp_arg, index as u64);
        w64(&hv_tramp_entry, entry as usize as u64);
    }
    AP_STARTED.store(false, Ordering::SeqCst);
    let vector = (page >> 12) as u32;
    hostapic::send_ipi(apic_id, hostapic::INIT);
    time::delay_us(10_000);
    for _ in 0..2 {
        hostapic::send_ipi(apic_id, hostapic::STARTUP | vector);
        time::delay_us(200);
        if AP_STARTED.load(Ordering::SeqCst) {
            break;
        }
    }
    for _ in 0..1000 {
        if AP_STARTED.load(Ordering::SeqCst) {
            return true;
        }
        time::delay_us(1000);
    }
    false
}

/// Called by an AP once it runs on its own stack and per-CPU state.
pub fn report_started() {
    AP_STARTED.store(true, Ordering::SeqCst);
}

/// Stops every other CPU with an NMI (their NMI handler halts).
pub fn stop_others() {
    crate::interrupts::STOPPING.store(true, Ordering::SeqCst);
    if percpu::online() > 1 {
        hostapic::send_ipi(0, hostapic::NMI | hostapic::ALL_BUT_SELF);
    }
}
