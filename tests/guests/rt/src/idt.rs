//! IDT for the 32 exception vectors: each prints
//! `exception: vector=<n> error=<e> rip=<rip>` and exits with 0x80 + vector.

use crate::println;
use crate::start::exit;
use core::arch::{asm, global_asm};

const VECTORS: usize = 32;

#[repr(C, align(16))]
struct Idt([u64; VECTORS * 2]);

static mut IDT: Idt = Idt([0; VECTORS * 2]);

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

// Stubs push a dummy error code where the CPU pushes none, then the vector.
global_asm!(
    ".pushsection .text.guest_isr, \"ax\"",
    ".irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31",
    "guest_isr_\\v:",
    "push 0",
    "push \\v",
    "jmp guest_isr_common",
    ".endr",
    ".irp v, 8,10,11,12,13,14,17,21,29,30",
    "guest_isr_\\v:",
    "push \\v",
    "jmp guest_isr_common",
    ".endr",
    "guest_isr_common:",
    "mov rdi, [rsp]",
    "mov rsi, [rsp + 8]",
    "mov rdx, [rsp + 16]",
    "and rsp, -16",
    "call {handler}",
    "ud2",
    ".popsection",
    ".pushsection .rodata.guest_isr_table, \"a\"",
    ".balign 8",
    ".globl guest_isr_table",
    "guest_isr_table:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".quad guest_isr_\\v",
    ".endr",
    ".popsection",
    handler = sym exception,
);

unsafe extern "C" {
    static guest_isr_table: [u64; VECTORS];
}

extern "C" fn exception(vector: u64, error: u64, rip: u64) -> ! {
    println!(
        "exception: vector={} error={:#x} rip={:#x}",
        vector, error, rip
    );
    exit(0x80 + vector as u8)
}

/// Fills and loads the IDT (64-bit interrupt gates, current CS).
pub(crate) fn init() {
    let cs: u16;
    // SAFETY: reads the CS selector only.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    let idt = &raw mut IDT;
    // SAFETY: the table is read-only data emitted above.
    let handlers = unsafe { &guest_isr_table };
    for (v, &handler) in handlers.iter().enumerate() {
        let low = (handler & 0xFFFF)
            | (u64::from(cs) << 16)
            | (0x8E00 << 32) // present, DPL 0, interrupt gate
            | ((handler >> 16) & 0xFFFF) << 48;
        // SAFETY: single-threaded init before any exception can be handled;
        // nothing else references IDT.
        unsafe {
            (*idt).0[2 * v] = low;
            (*idt).0[2 * v + 1] = handler >> 32;
        }
    }
    let pointer = Pointer {
        limit: (VECTORS * 16 - 1) as u16,
        base: idt as u64,
    };
    // SAFETY: IDT is a static with valid gates for every vector it covers.
    unsafe {
        asm!("lidt [{0}]", in(reg) &raw const pointer, options(readonly, nostack, preserves_flags))
    };
}
