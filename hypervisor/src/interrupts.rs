//! Host exception handling: one IDT shared by all CPUs, a stub per vector that
//! saves the registers, and a handler that prints everything and stops the
//! machine. NMIs are also how one CPU stops the others.
use crate::percpu;
use arch::desc::{IdtEntry, KERNEL_CS};
use arch::regs::{read_cr2, read_cr3, read_cr4, DescriptorTablePointer};
use core::sync::atomic::{AtomicBool, Ordering};

/// Set before a CPU sends the "stop" NMI to the others.
pub static STOPPING: AtomicBool = AtomicBool::new(false);

/// The registers saved by the stubs, in stack order.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// Vectors whose exceptions push an error code (SDM Vol. 3A Table 6-1).
core::arch::global_asm!(
    r#"
.macro HV_ISR n, err
    .align 16
hv_isr_\n:
    .if \err == 0
    push 0
    .endif
    push \n
    jmp hv_isr_common
.endm

.section .text
.global hv_isr_table, hv_isr_irq_base
hv_isr_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    mov rbx, rsp
    and rsp, -16
    call {handler}
    mov rsp, rbx
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq

HV_ISR 0, 0
HV_ISR 1, 0
HV_ISR 2, 0
HV_ISR 3, 0
HV_ISR 4, 0
HV_ISR 5, 0
HV_ISR 6, 0
HV_ISR 7, 0
HV_ISR 8, 1
HV_ISR 9, 0
HV_ISR 10, 1
HV_ISR 11, 1
HV_ISR 12, 1
HV_ISR 13, 1
HV_ISR 14, 1
HV_ISR 15, 0
HV_ISR 16, 0
HV_ISR 17, 1
HV_ISR 18, 0
HV_ISR 19, 0
HV_ISR 20, 0
HV_ISR 21, 1
HV_ISR 22, 0
HV_ISR 23, 0
HV_ISR 24, 0
HV_ISR 25, 0
HV_ISR 26, 0
HV_ISR 27, 0
HV_ISR 28, 0
HV_ISR 29, 1
HV_ISR 30, 1
HV_ISR 31, 0

    .align 16
hv_isr_irq_base:
    .set hv_vec, 32
    .rept 224
    .align 16
    push 0
    push hv_vec
    jmp hv_isr_common
    .set hv_vec, hv_vec + 1
    .endr

.section .rdata
.align 8
hv_isr_table:
    .quad hv_isr_0, hv_isr_1, hv_isr_2, hv_isr_3, hv_isr_4, hv_isr_5, hv_isr_6, hv_isr_7
    .quad hv_isr_8, hv_isr_9, hv_isr_10, hv_isr_11, hv_isr_12, hv_isr_13, hv_isr_14, hv_isr_15
    .quad hv_isr_16, hv_isr_17, hv_isr_18, hv_isr_19, hv_isr_20, hv_isr_21, hv_isr_22, hv_isr_23
    .quad hv_isr_24, hv_isr_25, hv_isr_26, hv_isr_27, hv_isr_28, hv_isr_29, hv_isr_30, hv_isr_31
.section .text
"#,
    handler = sym exception_handler,
);

unsafe extern "C" {
    static hv_isr_table: [u64; 32];
    static hv_isr_irq_base: u8;
}

#[repr(C, align(16))]
struct Idt([IdtEntry; 256]);

static IDT: spin::Once<&'static Idt> = spin::Once::new();

const NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved 15",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD exception",
    "#VE virtualization exception",
    "#CP control protection",
    "reserved 22",
    "reserved 23",
    "reserved 24",
    "reserved 25",
    "reserved 26",
    "reserved 27",
    "#HV",
    "#VC",
    "#SX",
    "reserved 31",
];

/// Builds the IDT once; every CPU loads it with [`load`]. NMI and #DF use IST1.
pub fn init() {
    IDT.call_once(|| {
        let mut idt = alloc::boxed::Box::new(Idt([IdtEntry::default(); 256]));
        // SAFETY: hv_isr_table is a constant table emitted by the asm above.
        let table = unsafe { &hv_isr_table };
        for (v, &handler) in table.iter().enumerate() {
            let ist = if v == 2 || v == 8 { 1 } else { 0 };
            idt.0[v] = IdtEntry::interrupt_gate(handler, KERNEL_CS, ist);
        }
        // SAFETY: only the address of the stub block is taken.
        let irq_base = unsafe { &hv_isr_irq_base as *const u8 as u64 };
        for v in 32..256 {
            idt.0[v] = IdtEntry::interrupt_gate(irq_base + 16 * (v as u64 - 32), KERNEL_CS, 0);
        }
        alloc::boxed::Box::leak(idt)
    });
}

/// Loads the shared IDT on this CPU.
pub fn load() {
    let idt = IDT.get().expect("IDT built before use");
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: idt.0.as_ptr() as u64,
    };
    // SAFETY: the IDT is 'static and its gates point at the stubs above.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &ptr, options(nostack)) };
}

/// The IDT's base and limit, for the VMCS host state.
pub fn idt_base() -> u64 {
    IDT.get().map_or(0, |i| i.0.as_ptr() as u64)
}

extern "sysv64" fn exception_handler(frame: &mut ExceptionFrame) {
    if frame.vector >= 32 {
        // Wake-up IPIs and stray interrupts: nothing to do but end them.
        if frame.vector != 0xFF {
            crate::hostapic::eoi();
        }
        return;
    }
    let cpu = percpu::current_index();
    if frame.vector == 2 && STOPPING.load(Ordering::Acquire) {
        // Another CPU is stopping the machine.
        arch::regs::halt_forever();
    }
    let name = NAMES.get(frame.vector as usize).copied().unwrap_or("?");
    // The CPU that faulted may have held the console lock.
    // SAFETY: the machine is being stopped; interleaving is acceptable.
    unsafe { crate::console::force_unlock() };
    crate::println!(
        "hv: fatal: cpu{cpu}: exception {} ({name}) error={:#x} rip={:#x} cs={:#x} rflags={:#x} rsp={:#x} cr2={:#x} cr3={:#x} cr4={:#x}",
        frame.vector, frame.error_code, frame.rip, frame.cs, frame.rflags, frame.rsp, read_cr2(), read_cr3(), read_cr4()
    );
    crate::println!(
        "hv: fatal: rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}",
        frame.rax,
        frame.rbx,
        frame.rcx,
        frame.rdx,
        frame.rsi,
        frame.rdi,
        frame.rbp
    );
    crate::println!(
        "hv: fatal: r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}",
        frame.r8,
        frame.r9,
        frame.r10,
        frame.r11,
        frame.r12,
        frame.r13,
        frame.r14,
        frame.r15
    );
    crate::fatal_stop();
}
